//! Limits against abuse, against the real server: grains per request, live streams in
//! total and per credential, a slow-loris upload, a subscriber or a reader that stops
//! reading, and a client that never finishes its request head.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use grainstore::config::{AuthMode, Secret, TokenConfig};
use serde_json::Value;
use support::{App, PATIENCE, ndjson, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use uuid::Uuid;

async fn post_ndjson(app: &App, flow: Uuid, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/flows/{flow}/grains")))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("POST")
}

async fn count_grains(app: &App, flow: Uuid) -> usize {
    let text = app
        .client
        .get(app.url(&format!("/flows/{flow}/grains?payload=none")))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().count()
}

/// A gauge's value on `/metrics`.
async fn gauge(app: &App, name: &str) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge {name} on /metrics"))
}

async fn sessions_active(app: &App) -> u64 {
    gauge(app, "grainstore_store_sessions_active").await
}

async fn live_streams_open(app: &App) -> u64 {
    gauge(app, "grainstore_live_streams_open").await
}

#[tokio::test]
async fn grains_per_request_are_bounded_and_the_rest_is_kept() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.limits.max_grains_per_request = 5).await;
    let (flow, source) = app.create_flow(None).await;
    let response = post_ndjson(&app, flow, ndjson(flow, source, 0..8, 10)).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:grainstore:problem:too-large");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("limits.max_grains_per_request"),
        "{problem}"
    );
    assert_eq!(problem["committed"], 5, "{problem}");
    assert!(problem["offset"].as_u64().unwrap() > 0);
    assert_eq!(count_grains(&app, flow).await, 5);
    // At the limit exactly is fine.
    let response = post_ndjson(&app, flow, ndjson(flow, source, 10..15, 10)).await;
    assert_eq!(response.status(), 201);
}

fn sse_request(app: &App, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = app
        .client
        .get(app.url(path))
        .header("accept", "text/event-stream");
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

#[tokio::test]
async fn live_streams_are_bounded_per_credential_and_in_total() {
    let _shared = MEASURING.read().await;
    let alice = format!("alice-{}", Uuid::new_v4().simple());
    let bob = format!("bob-{}", Uuid::new_v4().simple());
    let (a, b) = (alice.clone(), bob.clone());
    let app = spawn(move |c| {
        c.live.max_streams = 3;
        c.live.max_streams_per_credential = 2;
        c.live.keepalive_secs = 1;
        c.auth.mode = AuthMode::Token;
        c.auth.tokens = [("alice", a), ("bob", b)]
            .into_iter()
            .map(|(name, token)| TokenConfig {
                name: name.into(),
                token: Secret::new(token),
                token_sha256: String::new(),
                scopes: vec!["admin".into()],
            })
            .collect();
    })
    .await;
    let (flow, _) = app.create_flow(Some(&alice)).await;
    let sse = format!("/flows/{flow}/grains");
    let follow = format!("/flows/{flow}/grains?follow=true&timerange=_");

    // Alice: an SSE subscription and a follow read, then she is at her limit.
    let a1 = sse_request(&app, &sse, Some(&alice)).send().await.unwrap();
    assert_eq!(a1.status(), 200);
    let a2 = app
        .client
        .get(app.url(&follow))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(a2.status(), 200);
    let refused = sse_request(&app, "/events", Some(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("live.max_streams_per_credential")
    );
    // Ordinary reads are not live streams.
    assert_eq!(
        app.client
            .get(app.url(&format!("/flows/{flow}/grains")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Bob takes the last place of the service; then everyone is refused with 503.
    let b1 = sse_request(&app, "/events", Some(&bob))
        .send()
        .await
        .unwrap();
    assert_eq!(b1.status(), 200);
    let refused = sse_request(&app, &sse, Some(&bob)).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("live.max_streams")
    );

    // A stream that ends gives its place back.
    drop(a1);
    let started = Instant::now();
    loop {
        let response = sse_request(&app, &sse, Some(&alice)).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the place was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a2, b1));
}

#[tokio::test]
async fn without_auth_only_the_total_applies() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| {
        c.live.max_streams = 3;
        c.live.max_streams_per_credential = 1;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let response = sse_request(&app, "/events", None).send().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    assert_eq!(
        sse_request(&app, "/events", None)
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

/// A client sending one byte at a time, never fast enough to finish a grain, is ended
/// by the body idle timeout; what it completed stays, and its session is released.
#[tokio::test]
async fn slow_loris_upload_is_ended_by_the_body_idle_timeout() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.server.body_idle_timeout_ms = 1000).await;
    slow_loris_is_ended(&app, Duration::from_millis(300)).await;
}

/// The same with bytes coming faster than a (long) commit linger: the linger waits for
/// the body's next bytes, but not past the idle deadline.
#[tokio::test]
async fn slow_loris_upload_inside_the_commit_linger_is_ended_too() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| {
        c.server.body_idle_timeout_ms = 1000;
        c.server.commit_linger_ms = 60_000;
    })
    .await;
    slow_loris_is_ended(&app, Duration::from_millis(50)).await;
}

/// Uploads a grain, then one byte of the next every `every`: the upload must end with
/// 408 within seconds, the first grain committed, the session released.
async fn slow_loris_is_ended(app: &App, every: Duration) {
    let (flow, source) = app.create_flow(None).await;
    let mut body = ndjson(flow, source, 0..1, 10);
    let first = body.len();
    body.extend(ndjson(flow, source, 1..2, 10_000));
    // The first grain at once, then one byte at a time: never silent for the timeout,
    // never completing the second grain.
    let chunks = futures::stream::unfold(0usize, move |at| {
        let body = body.clone();
        async move {
            if at >= body.len() {
                return None;
            }
            let end = if at == 0 { first } else { at + 1 };
            if at > 0 {
                tokio::time::sleep(every).await;
            }
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&body[at..end])),
                end,
            ))
        }
    });
    let started = Instant::now();
    let request = app
        .client
        .post(app.url(&format!("/flows/{flow}/grains")))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the server ends the upload")
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()["connection"], "close");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:grainstore:problem:body-idle");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("server.body_idle_timeout_ms")
    );
    assert_eq!(problem["committed"], 1);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(count_grains(app, flow).await, 1);
    let mut active = u64::MAX;
    for _ in 0..100 {
        active = sessions_active(app).await;
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active, 0, "the upload's session was released");
}

/// Taken for writing by the test that measures the process's memory, and for reading by
/// every other: tests of one binary share a process, so the measurement must not run
/// beside another test's traffic.
static MEASURING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap()
}

/// A subscriber that never reads costs the server a bounded amount of memory however
/// much is written: its feed reads from the store only when the connection takes more.
/// Waits until `probe` says `want`; panics after [`PATIENCE`].
async fn eventually<F: Future<Output = u64>>(what: &str, want: u64, probe: impl Fn() -> F) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = probe().await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `GET path` with `accept` on a connection whose receive buffer is small (so that
/// a response it does not read fills the server's send buffer soon), reads the response
/// head, which must be a 200, and returns the connection without reading more.
async fn get_and_stop_reading(app: &App, path: &str, accept: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    stream
}

#[tokio::test]
async fn a_range_read_whose_client_stops_reading_is_cut_off_and_releases_its_session() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.server.send_stall_timeout_ms = 2000).await;
    let (flow, source) = app.create_flow(None).await;
    // 24 MiB: far more than the socket buffers between the server and the client.
    for batch in 0..8u64 {
        let body = ndjson(flow, source, batch * 48..(batch + 1) * 48, 64 << 10);
        assert_eq!(post_ndjson(&app, flow, body).await.status(), 201);
    }
    let mut stalled =
        get_and_stop_reading(&app, &format!("/flows/{flow}/grains"), "application/x-gsf").await;
    // The response holds its read session while it waits on the client...
    assert_eq!(sessions_active(&app).await, 1);
    // ...until the client has read nothing for the limit: then the connection ends and
    // the session is released.
    eventually("store sessions", 0, || sessions_active(&app)).await;
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
    assert!(
        rest.len() < 24 << 20,
        "the whole body was sent ({} bytes) to a client that did not read",
        rest.len()
    );
    // Everything is still there for a client that reads.
    assert_eq!(count_grains(&app, flow).await, 8 * 48);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_grow_memory() {
    // Alone: the resident size it measures is the whole test process's.
    let _alone = MEASURING.write().await;
    let app = spawn(|c| {
        c.live.inline_max_bytes = 65536;
        // Longer than the writes below take, so memory is measured with the stream open.
        c.server.send_stall_timeout_ms = 30_000;
    })
    .await;
    let (flow, source) = app.create_flow(None).await;
    let stalled = get_and_stop_reading(
        &app,
        &format!("/flows/{flow}/grains?from=0:0"),
        "text/event-stream",
    )
    .await;

    let before = resident_bytes();
    // 96 MiB of grains of 48 KiB, each inlined in its SSE event as base64.
    for batch in 0..32u64 {
        let body = ndjson(flow, source, batch * 64..(batch + 1) * 64, 48 << 10);
        let response = post_ndjson(&app, flow, body).await;
        assert_eq!(response.status(), 201);
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the process grew by {} MiB while a subscriber did not read 96 MiB of grains",
        grown >> 20
    );
    // The server goes on serving.
    assert_eq!(count_grains(&app, flow).await, 32 * 64);
    assert_eq!(live_streams_open(&app).await, 1);
    drop(stalled);
    eventually("live streams", 0, || live_streams_open(&app)).await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_its_place_freed() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.server.send_stall_timeout_ms = 1000).await;
    let (flow, source) = app.create_flow(None).await;
    // Held, unread, to the end of the test.
    let _stalled =
        get_and_stop_reading(&app, &format!("/flows/{flow}/grains"), "text/event-stream").await;
    assert_eq!(live_streams_open(&app).await, 1);
    // 16 MiB of events the subscriber does not read.
    for batch in 0..8u64 {
        let body = ndjson(flow, source, batch * 64..(batch + 1) * 64, 32 << 10);
        assert_eq!(post_ndjson(&app, flow, body).await.status(), 201);
    }
    eventually("live streams", 0, || live_streams_open(&app)).await;
}

/// A client that never finishes its request head is disconnected by the header read
/// timeout.
#[tokio::test]
async fn an_unfinished_request_head_is_cut_off() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.server.header_read_timeout_ms = 500).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Whatever hyper answers (nothing, or 408), it is not the health check.
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

/// Past `server.max_concurrent_requests` requests in their handlers, a request is
/// refused at once with 503 and `Retry-After`; the place comes back when one ends.
#[tokio::test]
async fn requests_past_the_concurrency_limit_are_shed_at_once() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| c.server.max_concurrent_requests = 1).await;
    let (flow, source) = app.create_flow(None).await;
    // An upload whose body stays open holds the one place while it is in its handler.
    let start_upload = || {
        let (more, body) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        more.try_send(Ok(ndjson(flow, source, 0..1, 10).into()))
            .unwrap();
        let request = app
            .client
            .post(app.url(&format!("/flows/{flow}/grains")))
            .header("content-type", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(body),
            ));
        (
            more,
            tokio::spawn(async move { request.send().await.unwrap() }),
        )
    };
    let deadline = Instant::now() + PATIENCE;
    let (refused, more, upload) = 'upload: loop {
        let (more, upload) = start_upload();
        loop {
            assert!(Instant::now() < deadline, "no request was refused");
            if upload.is_finished() {
                // Refused itself, while one of these requests held the place: again.
                assert_eq!(upload.await.unwrap().status(), 503);
                continue 'upload;
            }
            let response = app.client.get(app.url("/flows")).send().await.unwrap();
            if response.status() == 503 {
                break 'upload (response, more, upload);
            }
            assert_eq!(response.status(), 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:grainstore:problem:overloaded");
    // The refusal cost the upload nothing; once it ends, the place is free again.
    more.send(Ok(ndjson(flow, source, 1..2, 10).into()))
        .await
        .unwrap();
    drop(more);
    assert_eq!(upload.await.unwrap().status(), 201);
    assert_eq!(count_grains(&app, flow).await, 2);
}

/// A request body other than an upload's (a flow's JSON here) is not bounded by the
/// body idle timeout but by the response deadline; a client that sends half of it and
/// stalls is the one at fault, so the deadline answers it 408 (`body-idle`, no
/// `Retry-After`), not the server's 503, and nothing is stored.
#[tokio::test]
async fn a_stalled_json_body_gets_408_at_the_response_deadline() {
    let _shared = MEASURING.read().await;
    const DEADLINE_MS: u64 = 500;
    let app = spawn(|c| {
        c.server.response_headers_timeout_ms = DEADLINE_MS;
        c.server.body_idle_timeout_ms = 60_000;
    })
    .await;
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let body = serde_json::json!({"source_id": source, "format": "urn:x-nmos:format:data"})
        .to_string()
        .into_bytes();
    let (response, waited, more) = half_and_stall(&app, &format!("/flows/{flow}"), &body).await;
    assert!(
        waited >= Duration::from_millis(DEADLINE_MS),
        "answered after {waited:?}, before the deadline"
    );
    assert_eq!(response.status(), 408);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:grainstore:problem:body-idle",
        "{problem}"
    );
    assert_eq!(problem["status"], 408, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("server.response_headers_timeout_ms"),
        "{problem}"
    );
    drop(more);
    // Nothing was stored; the service goes on serving.
    let response = app
        .client
        .get(app.url(&format!("/flows/{flow}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    app.create_flow(None).await;
}

/// After a 408 the rest of the request's body may still come, so the server says
/// `Connection: close` and ends the connection: the body's remaining bytes, and a
/// request sent after them on the same connection, get no answer.
#[tokio::test]
async fn a_408_closes_the_connection() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| {
        c.server.response_headers_timeout_ms = 500;
        c.server.body_idle_timeout_ms = 60_000;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let sent = b"{\"source_id\":";
    let head = format!(
        "PUT /flows/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 200\r\n\r\n",
        Uuid::new_v4()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    // The answer: its head, then as many bytes as its Content-Length says.
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let whole = |buf: &[u8]| {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))?
            .trim()
            .parse()
            .ok()?;
        (buf.len() >= end + length).then_some(())
    };
    tokio::time::timeout(PATIENCE, async {
        while whole(&buf).is_none() {
            let n = stream.read(&mut piece).await.unwrap();
            assert!(n > 0, "closed before the whole answer");
            buf.extend_from_slice(&piece[..n]);
        }
    })
    .await
    .expect("an answer at the response deadline");
    let answer = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    // The rest of the body, then a request of its own: on a connection kept open it
    // would be answered.
    let mut rest = vec![b' '; 200 - sent.len()];
    rest.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    // The server may have closed already: a failed write is the expected end too.
    let _ = stream.write_all(&rest).await;
    let mut after = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut after)).await;
    let after = String::from_utf8_lossy(&after);
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the connection stayed open after the 408; read: {after}"),
    }
    assert!(after.is_empty(), "answered after the 408: {after}");
}

/// A single-grain PUT is an upload: a body that keeps arriving is not cut by the response
/// deadline, however long it takes within the body idle timeout; one that stalls is
/// ended by that timeout with 408, and nothing is stored.
#[tokio::test]
async fn a_single_grain_put_is_bounded_by_the_body_idle_timeout() {
    let _shared = MEASURING.read().await;
    let app = spawn(|c| {
        c.server.response_headers_timeout_ms = 600;
        c.server.body_idle_timeout_ms = 5_000;
    })
    .await;
    let (flow, source) = app.create_flow(None).await;
    let url = app.url(&format!("/flows/{flow}/grains/1700000000:0"));
    let body = support::ndjson(flow, source, 0..1, 20_000);
    // Twenty pieces 100 ms apart: two seconds in all, over three times the response
    // deadline.
    let pieces: Vec<bytes::Bytes> = body
        .chunks(body.len().div_ceil(20))
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let steady = futures::StreamExt::then(futures::stream::iter(pieces), |piece| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let started = Instant::now();
    let response = app
        .client
        .put(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(steady))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1_900));
    let status = response.status();
    assert_eq!(status, 201, "{}", response.text().await.unwrap());

    // Half a grain, then nothing: 408 at the idle timeout.
    let app = spawn(|c| {
        c.server.response_headers_timeout_ms = 60_000;
        c.server.body_idle_timeout_ms = 500;
    })
    .await;
    let (flow, source) = app.create_flow(None).await;
    let body = support::ndjson(flow, source, 0..1, 20_000);
    let path = format!("/flows/{flow}/grains/1700000000:0");
    let (response, waited, more) = half_and_stall(&app, &path, &body).await;
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}"
    );
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()["connection"], "close");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:grainstore:problem:body-idle",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("server.body_idle_timeout_ms"),
        "{problem}"
    );
    drop(more);
    let response = app
        .client
        .get(app.url(&format!("/flows/{flow}/grains/1700000000:0")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// A JSON `PUT` of `path` that sends the first half of `body` and then nothing: the
/// answer, which must come while the body is still open, how long it took, and the
/// sender that holds the body open.
async fn half_and_stall(
    app: &App,
    path: &str,
    body: &[u8],
) -> (
    reqwest::Response,
    Duration,
    tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) {
    let (more, rest) = tokio::sync::mpsc::channel(1);
    more.try_send(Ok(bytes::Bytes::copy_from_slice(&body[..body.len() / 2])))
        .unwrap();
    let started = Instant::now();
    let request = app
        .client
        .put(app.url(path))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rest),
        ))
        .send();
    let response = tokio::time::timeout(PATIENCE, request)
        .await
        .expect("answered while the body is still open")
        .unwrap();
    (response, started.elapsed(), more)
}

//! PostgreSQL killed under two running replicas and started again: meanwhile every
//! request that needs the database answers 503 with `Retry-After` at once (no hang, no
//! 500, no panic), and afterwards the replicas recover by themselves — readiness,
//! writes, reads, stored grains intact, and live streams opened before the outage that
//! go on through it, fed across replicas by the `LISTEN` connection that reconnected.
//! And PostgreSQL frozen (no process answers, no connection closes): requests answer
//! 503 in bounded time, not when the database comes back.

use std::future::Future;
use std::time::{Duration, Instant};

use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use grainstore::time::TimeRange;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;
use crate::instance::PrivatePostgres;
use crate::{Machine, server_panics};

/// How long the service may take to recover once the database is back.
const RECOVERY: Duration = Duration::from_secs(30);

/// `request`'s response, which must come within [`PATIENCE`]: an answer, not a hang.
async fn answered<F: Future<Output = reqwest::Response>>(
    what: &str,
    request: F,
) -> reqwest::Response {
    tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: no answer within {PATIENCE:?} while the database is down")
        })
}

/// Asserts a `503 Service Unavailable` problem with a `Retry-After`.
async fn assert_unavailable(what: &str, response: reqwest::Response) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{what}"
    );
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "{what}: Retry-After {retry_after:?}"
    );
    let problem: Value = serde_json::from_str(&body).expect("problem JSON");
    assert!(problem["title"].is_string(), "{what}: {problem}");
}

/// Waits until `server` is ready again, for at most [`RECOVERY`].
async fn ready_again(server: &TestServer) {
    let started = Instant::now();
    loop {
        let status = server
            .client
            .get(server.url("/readyz"))
            .timeout(PATIENCE)
            .send()
            .await
            .map(|r| r.status());
        if matches!(status, Ok(StatusCode::OK)) {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY,
            "not ready within {RECOVERY:?} of the database's restart: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_gsf(server: &TestServer, flow: Uuid) -> Vec<Grain> {
    let response = server
        .get(&format!("/flows/{flow}/grains"), "application/x-gsf")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    GsfDecoder::decode_all(response.bytes().await.expect("body"))
        .expect("a valid GSF body")
        .into_iter()
        .filter_map(|event| match event {
            GsfEvent::Grain { grain, .. } => Some(grain),
            _ => None,
        })
        .collect()
}

/// Reads `n` grain events and checks they are frames `first..first + n`, in order.
async fn expect_frames(sse: &mut Sse, written: &[Grain], first: u64, n: u64) {
    for k in first..first + n {
        let (id, got) = sse.next_grain().await;
        assert_eq!(
            id,
            frame_time(k).to_string(),
            "frame {k}: in order, none missed"
        );
        assert_same_grains(&[got], &written[k as usize..=k as usize]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_answer_503_while_postgres_is_down_and_the_replicas_recover_without_restart() {
    let Some(machine) = Machine::detect("postgres outage") else {
        return;
    };
    let pg =
        tokio::task::block_in_place(|| PrivatePostgres::create(machine.bindir.clone(), "", &[]));
    let prefix = format!("outage-{}", Uuid::new_v4().simple());
    let a = machine.server(&pg.url(), &prefix).await;
    let b = machine.server(&pg.url(), &prefix).await;
    let (flow, source) = a.create_flow().await;
    // Small payloads live in PostgreSQL, larger ones in S3 objects (all small enough
    // to be inline in SSE events).
    let mut written = frames(flow, source, 0..4, 300);
    written.extend(frames(flow, source, 4..8, 20_000));
    written.extend(frames(flow, source, 8..12, 300));
    written.extend(frames(flow, source, 12..16, 20_000));
    written.extend(frames(flow, source, 16..20, 300));
    a.post(flow, &written[..6]).await;

    // Live on A, fed by grains written through B.
    let mut sse = a.subscribe(flow, "", None).await;
    assert_eq!(sse.status, StatusCode::OK);
    let mut events = a.events("", None).await;
    assert_eq!(events.status, StatusCode::OK);
    b.post(flow, &written[6..8]).await;
    expect_frames(&mut sse, &written, 6, 2).await;
    events.next_of("flows/grains_added").await;

    tokio::task::block_in_place(|| pg.stop_immediate());

    for (name, server) in [("A", &a), ("B", &b)] {
        let response = answered("GET /readyz", server.get("/readyz", "application/json")).await;
        assert_unavailable(&format!("{name}: GET /readyz"), response).await;
        let response = answered("POST grains", server.post_raw(flow, &written[8..10])).await;
        assert_unavailable(&format!("{name}: POST /flows/{{id}}/grains"), response).await;
        let path = format!("/flows/{flow}/grains");
        let response = answered("GET grains", server.get(&path, "application/x-gsf")).await;
        assert_unavailable(&format!("{name}: GET /flows/{{id}}/grains"), response).await;
        let path = format!("/flows/{flow}");
        let response = answered("GET flow", server.get(&path, "application/json")).await;
        assert_unavailable(&format!("{name}: GET /flows/{{id}}"), response).await;
        // The /healthz liveness probe does not depend on the database.
        let response = answered("GET /healthz", server.get("/healthz", "text/plain")).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}: GET /healthz");
    }
    // The failed requests gave their sessions back.
    for server in [&a, &b] {
        let sessions = server.state.store.sessions();
        let started = Instant::now();
        while sessions.active() != 0 {
            assert!(
                started.elapsed() < PATIENCE,
                "sessions left open: {}",
                sessions.active()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    tokio::task::block_in_place(|| pg.start());
    ready_again(&a).await;
    ready_again(&b).await;

    // Through B, seen live on A (A's listener reconnected), then through A itself.
    b.post(flow, &written[8..14]).await;
    expect_frames(&mut sse, &written, 8, 6).await;
    a.post(flow, &written[14..]).await;
    expect_frames(&mut sse, &written, 14, 6).await;
    assert!(
        sse.next_within(Duration::from_millis(500)).await.is_err(),
        "nothing twice"
    );
    // /events on A goes on: the grains written through B after the restart (a POST
    // may commit in several batches, each with its event).
    loop {
        let (_, data) = events.next_of("flows/grains_added").await;
        let range: TimeRange = data["event"]["timerange"]
            .as_str()
            .expect("timerange")
            .parse()
            .expect("a timerange");
        if range.contains(frame_time(8)) {
            break;
        }
        assert!(!range.contains(frame_time(9)), "{data}");
    }

    // What was stored before the outage is intact, and the rest follows it.
    assert_same_grains(&read_gsf(&a, flow).await, &written);
    assert_same_grains(&read_gsf(&b, flow).await, &written);
    assert_eq!(server_panics(), 0, "a server task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_answer_503_while_postgres_is_frozen_and_the_service_recovers() {
    let Some(machine) = Machine::detect("postgres frozen") else {
        return;
    };
    let pg =
        tokio::task::block_in_place(|| PrivatePostgres::create(machine.bindir.clone(), "", &[]));
    let prefix = format!("frozen-{}", Uuid::new_v4().simple());
    // Shorter than the default (5 s), so that the answer's time shows the key at work.
    let answer_within = Duration::from_millis(1000);
    let a = spawn_server(|config| {
        machine.configure(config, &pg.url(), &prefix);
        config.storage.postgres_answer_timeout_ms = answer_within.as_millis() as u64;
    })
    .await;
    let (flow, source) = a.create_flow().await;
    let written = frames(flow, source, 0..8, 300);
    a.post(flow, &written[..4]).await;

    pg.signal_all("STOP");
    let started = Instant::now();
    let response = answered("GET /readyz", a.get("/readyz", "application/json")).await;
    let waited = started.elapsed();
    eprintln!("readyz {:?} after {waited:?}", response.status());
    assert_unavailable("GET /readyz", response).await;
    // Not a speed check: the readiness check waits for the database for the configured
    // time (the pool's idle-connection check, then the query), and it must have given
    // up on it long before the default of 5 s would have.
    assert!(
        waited >= answer_within && waited < Duration::from_millis(4500),
        "readyz answered after {waited:?} with storage.postgres_answer_timeout_ms = {}",
        answer_within.as_millis()
    );
    let started = Instant::now();
    let path = format!("/flows/{flow}/grains");
    let response = answered("GET grains", a.get(&path, "application/x-gsf")).await;
    eprintln!("read {:?} after {:?}", response.status(), started.elapsed());
    assert_unavailable("GET /flows/{id}/grains", response).await;
    let started = Instant::now();
    let response = answered("POST grains", a.post_raw(flow, &written[4..6])).await;
    eprintln!(
        "write {:?} after {:?}",
        response.status(),
        started.elapsed()
    );
    assert_unavailable("POST /flows/{id}/grains", response).await;
    pg.signal_all("CONT");

    ready_again(&a).await;
    a.post(flow, &written[4..]).await;
    assert_same_grains(&read_gsf(&a, flow).await, &written);
    assert_eq!(server_panics(), 0, "a server task panicked");
}

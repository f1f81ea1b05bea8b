//! `POST /flows/{id}/grains`: GSF and NDJSON uploads, safe retries, conflicts, faults
//! half-way with what was committed, limits, and streamed uploads seen live.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    PATIENCE, TestApp, eventually, flow_body, grain, grains, gsf, gsf_pieces, inclusive, json_body,
    ndjson, payload, problem, spawn_app, spawn_app_with, ts, without_creation,
};

#[tokio::test]
async fn gsf_upload_is_stored_and_summarised() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..5, 1000);
    let summary = json_body(
        app.post_grains_gsf(flow, gsf(&sent)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        summary,
        json!({"written": 5, "unchanged": 0, "timerange": inclusive(0, 4)})
    );
    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, sent);
}

#[tokio::test]
async fn ndjson_upload_is_stored_and_summarised() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..4, 300);
    let summary = json_body(
        app.post_grains_ndjson(flow, ndjson(&sent)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        summary,
        json!({"written": 4, "unchanged": 0, "timerange": inclusive(0, 3)})
    );
    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, sent);

    // Blank lines, CRLF and a last line without newline are fine.
    let more = grains(flow, source, 4..6, 10);
    let mut body = b"\r\n".to_vec();
    body.extend_from_slice(&more[0].to_json(true));
    body.extend_from_slice(b"\r\n\n");
    body.extend_from_slice(&more[1].to_json(true));
    let summary = json_body(
        app.post_grains_ndjson(flow, body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(summary["written"], 2);
}

#[tokio::test]
async fn ndjson_keeps_a_given_creation_timestamp() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let mut sent = grain(flow, source, 0, payload(0, 10));
    let created = "1600000000:5".parse().expect("timestamp");
    sent.set_creation_timestamp(Some(created));
    let response = app
        .post_grains_ndjson(flow, ndjson(std::slice::from_ref(&sent)))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored = app.read_ndjson(flow, "").await;
    assert_eq!(
        stored[0]["meta"]["grain"]["creation_timestamp"],
        created.to_string()
    );
}

#[tokio::test]
async fn identical_resends_are_successful_no_ops() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..5, 100);
    let response = app.post_grains_gsf(flow, gsf(&sent)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let first = app.read_gsf(flow, "").await;

    let summary = json_body(app.post_grains_gsf(flow, gsf(&sent)).await, StatusCode::OK).await;
    assert_eq!(
        summary,
        json!({"written": 0, "unchanged": 5, "timerange": "()"})
    );
    // The same grains as NDJSON are identical too.
    let summary = json_body(
        app.post_grains_ndjson(flow, ndjson(&sent)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(summary["unchanged"], 5);

    // An overlapping upload writes only what is new.
    let overlap = grains(flow, source, 3..8, 100);
    let summary = json_body(
        app.post_grains_gsf(flow, gsf(&overlap)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        summary,
        json!({"written": 3, "unchanged": 2, "timerange": inclusive(5, 7)})
    );

    // Creation timestamps set at the first write are kept.
    let again = app.read_gsf(flow, "count=5").await;
    assert_eq!(again, first);
}

/// Byte offsets of each grain in a GSF body made by `gsf`.
fn grain_offsets(sent: &[grainstore::grain::Grain]) -> Vec<u64> {
    let (head, bodies, _) = gsf_pieces(sent);
    let mut offsets = Vec::new();
    let mut at = head.len() as u64;
    for body in bodies {
        offsets.push(at);
        at += body.len() as u64;
    }
    offsets
}

#[tokio::test]
async fn a_different_grain_at_an_occupied_timestamp_is_a_conflict() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let mut stored = grains(flow, source, 0..5, 50);
    stored.push(grain(flow, source, 7, payload(7, 50)));
    let response = app.post_grains_gsf(flow, gsf(&stored)).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // 5 and 6 are new, 7 differs from the stored one, 8 and 9 come after it.
    let mut upload = grains(flow, source, 5..10, 50);
    upload[2] = grain(flow, source, 7, payload(70, 50));
    let p = problem(
        app.post_grains_gsf(flow, gsf(&upload)).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["timestamp"], ts(7).to_string());
    assert!(
        p["detail"].as_str().unwrap().contains(&ts(7).to_string()),
        "{p}"
    );
    assert_eq!(p["committed"], 2);
    assert_eq!(p["offset"], grain_offsets(&upload)[2]);

    let now: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    let mut expected = grains(flow, source, 0..7, 50);
    expected.push(grain(flow, source, 7, payload(7, 50)));
    assert_eq!(now, expected, "5 and 6 stored, 7 kept, 8 and 9 not stored");

    // The same through NDJSON and through a re-send of stored grains first.
    let mut upload = grains(flow, source, 6..9, 50);
    upload[1] = grain(flow, source, 7, payload(71, 50));
    let p = problem(
        app.post_grains_ndjson(flow, ndjson(&upload)).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["timestamp"], ts(7).to_string());
    assert_eq!(p["committed"], 1);
    assert_eq!(p["offset"], upload[0].to_json(true).len() + 1);
    assert_eq!(app.read_gsf(flow, "").await.len(), 8);
}

#[tokio::test]
async fn grains_of_another_flow_are_refused_after_committing_those_before() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let mut upload = grains(flow, source, 0..3, 20);
    upload.push(grain(Uuid::new_v4(), source, 3, payload(3, 20)));
    upload.push(grain(flow, source, 4, payload(4, 20)));
    // The GSF has one segment; the stray grain's own flow_id is what counts.
    let (head, bodies, end) = gsf_pieces(&upload[..3]);
    let (_, stray, _) = gsf_pieces(&upload[3..4]);
    let (_, after, _) = gsf_pieces(&upload[4..]);
    let mut body = head.to_vec();
    let mut offset = head.len();
    for piece in &bodies {
        body.extend_from_slice(piece);
        offset += piece.len();
    }
    body.extend_from_slice(&stray[0]);
    body.extend_from_slice(&after[0]);
    body.extend_from_slice(&end);
    let p = problem(
        app.post_grains_gsf(flow, body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["committed"], 3);
    assert_eq!(p["offset"], offset);
    assert!(p["detail"].as_str().unwrap().contains("flow"), "{p}");
    assert_eq!(app.read_gsf(flow, "").await.len(), 3);

    // NDJSON: the same.
    let (other, _) = app.create_flow().await;
    let mut lines = ndjson(&grains(other, source, 0..2, 20));
    let first_bad = lines.len();
    lines.extend(ndjson(&upload[3..]));
    let p = problem(
        app.post_grains_ndjson(other, lines).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["committed"], 2);
    assert_eq!(p["offset"], first_bad);
    assert_eq!(app.read_gsf(other, "").await.len(), 2);
}

#[tokio::test]
async fn a_gsf_body_cut_half_way_keeps_the_complete_grains_before_it() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..6, 4000);
    let body = gsf(&sent);
    let offsets = grain_offsets(&sent);
    let cut = offsets[4] as usize + 2000;
    let p = problem(
        app.post_grains_gsf(flow, body[..cut].to_vec()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["committed"], 4, "{p}");
    let offset = p["offset"].as_u64().expect("offset");
    assert!(
        (offsets[4]..=cut as u64).contains(&offset),
        "offset {offset} in {p}"
    );
    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, sent[..4]);

    // Garbage in place of a grain: the same, with the offset of the garbage.
    let (other, _) = app.create_flow().await;
    let sent = grains(other, source, 0..3, 100);
    let mut body = gsf(&sent[..2]);
    let end = body.len() - 8;
    body.truncate(end);
    body.extend_from_slice(b"JUNK\xff\xff\x00\x00JUNKJUNK");
    let len = body.len() as u64;
    let p = problem(
        app.post_grains_gsf(other, body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["committed"], 2);
    // GSF skips unknown blocks: this one is cut short by the end of the body.
    let offset = p["offset"].as_u64().expect("offset");
    assert!(
        (end as u64..=len).contains(&offset),
        "offset {offset} in {p}"
    );

    // A malformed NDJSON line.
    let (third, _) = app.create_flow().await;
    let mut body = ndjson(&grains(third, source, 0..2, 10));
    let bad = body.len();
    body.extend_from_slice(b"{\"meta\": 1}\n");
    body.extend_from_slice(&ndjson(&grains(third, source, 2..3, 10)));
    let p = problem(
        app.post_grains_ndjson(third, body).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["committed"], 2);
    assert_eq!(p["offset"], bad);
}

#[tokio::test]
async fn gsf_without_terminator_is_accepted_on_a_grain_boundary() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..3, 100);
    let body = gsf(&sent);
    let unterminated = body[..body.len() - 8].to_vec();
    let summary = json_body(
        app.post_grains_gsf(flow, unterminated).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(summary["written"], 3);
    // A head alone is a valid, empty upload.
    let (head, _, _) = gsf_pieces(&sent);
    let summary = json_body(
        app.post_grains_gsf(flow, head.to_vec()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        summary,
        json!({"written": 0, "unchanged": 0, "timerange": "()"})
    );
}

#[tokio::test]
async fn bad_uploads_are_refused() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let body = gsf(&grains(flow, source, 0..1, 10));

    problem(
        app.post_grains_gsf(flow, Vec::new()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.post_grains_ndjson(flow, Vec::new()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.post_grains_gsf(Uuid::new_v4(), body.clone()).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let p = problem(
        app.post_grains(flow, "application/octet-stream", body.clone())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("application/x-gsf"),
        "{p}"
    );
    let response = app
        .client
        .post(app.url(&format!("/flows/{flow}/grains")))
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    problem(
        app.post_grains_gsf(flow, b"not a gsf file at all".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Content-Type parameters and case do not matter.
    let response = app
        .post_grains(flow, "Application/X-GSF; charset=binary", body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(app.read_gsf(flow, "").await.len() == 1);
}

#[tokio::test]
async fn a_read_only_flow_refuses_writes() {
    let app = spawn_app().await;
    let (flow, source) = (Uuid::new_v4(), Uuid::new_v4());
    let mut body = flow_body(source, "video");
    body["read_only"] = json!(true);
    assert_eq!(
        app.put_flow(flow, &body).await.status(),
        StatusCode::CREATED
    );
    let sent = grains(flow, source, 0..2, 10);
    let p = problem(
        app.post_grains_gsf(flow, gsf(&sent)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("read_only"), "{p}");
    problem(
        app.put_grain(
            flow,
            &ts(0).to_string(),
            "application/json",
            sent[0].to_json(true),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        app.delete_range(flow, "timerange=_").await,
        StatusCode::FORBIDDEN,
    )
    .await;

    // Clearing the flag allows writes again.
    body["read_only"] = json!(false);
    assert_eq!(
        app.put_flow(flow, &body).await.status(),
        StatusCode::NO_CONTENT
    );
    let response = app.post_grains_gsf(flow, gsf(&sent)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_grain_over_the_size_limit_is_413_naming_the_limit() {
    let app = spawn_app_with(|c| c.limits.max_grain_bytes = 4096).await;
    let (flow, source) = app.create_flow().await;
    let mut sent = grains(flow, source, 0..2, 4096);
    sent.push(grain(flow, source, 2, payload(2, 4097)));
    for (format, body) in [("GSF", gsf(&sent)), ("NDJSON", ndjson(&sent))] {
        let response = if format == "GSF" {
            app.post_grains_gsf(flow, body).await
        } else {
            app.post_grains_ndjson(flow, body).await
        };
        let p = problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("limits.max_grain_bytes"), "{format}: {p}");
        assert_eq!(p["committed"], 2, "{format}: {p}");
    }
    assert_eq!(app.read_gsf(flow, "").await.len(), 2);
    // The same limit for a single grain.
    let at = ts(2).to_string();
    for (media, body) in [
        ("application/json", sent[2].to_json(true)),
        ("application/x-gsf", gsf(&sent[2..])),
    ] {
        let p = problem(
            app.put_grain(flow, &at, media, body).await,
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("limits.max_grain_bytes"),
            "{media}: {p}"
        );
    }
    // A payload far over the limit is refused without reading it all.
    let big = vec![grain(flow, source, 3, payload(3, 1 << 20))];
    problem(
        app.post_grains_gsf(flow, gsf(&big)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_visible_while_it_is_still_arriving() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..6, 2000);
    let (head, bodies, end) = gsf_pieces(&sent);
    let (tx, upload) = streamed_upload(&app, flow);
    tx.send(Ok(head)).await.expect("send");
    for piece in &bodies[..3] {
        tx.send(Ok(piece.clone())).await.expect("send");
    }
    // The body pauses here: the server commits what it has, and readers see it.
    let seen = eventually("the first grains of an upload in progress", || async {
        let lines = app.read_ndjson(flow, "payload=none").await;
        (lines.len() == 3).then_some(lines)
    })
    .await;
    assert_eq!(
        seen[2]["meta"]["grain"]["origin_timestamp"],
        ts(2).to_string()
    );
    assert!(!upload.is_finished(), "the upload is still open");

    let summary = finish_upload(tx, &bodies[3..], end, upload).await;
    assert_eq!(summary["written"], 6);
    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_commit_linger_commits_nothing() {
    let app = spawn_app_with(|c| c.server.commit_linger_ms = 5_000).await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..6, 2000);
    let (head, bodies, end) = gsf_pieces(&sent);
    let (tx, upload) = streamed_upload(&app, flow);
    tx.send(Ok(head)).await.expect("send");
    for piece in &bodies[..3] {
        tx.send(Ok(piece.clone())).await.expect("send");
    }
    // A pause of half a second, inside the linger: the server waits for the rest of
    // the body instead of committing the first three grains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.read_ndjson(flow, "payload=none").await.is_empty());
    let summary = finish_upload(tx, &bodies[3..], end, upload).await;
    assert_eq!(summary["written"], 6);
    assert_eq!(app.read_ndjson(flow, "payload=none").await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_pauses_for_the_linger_is_still_committed_within_it() {
    // Grains every 100 ms against a 400 ms linger: the body never pauses for the
    // linger, yet what it staged starts committing 400 ms after its first pause.
    let app = spawn_app_with(|c| c.server.commit_linger_ms = 400).await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..40, 100);
    let (head, bodies, end) = gsf_pieces(&sent);
    let (tx, upload) = streamed_upload(&app, flow);
    let writer = tokio::spawn(async move {
        tx.send(Ok(head)).await.expect("send");
        for piece in bodies {
            tx.send(Ok(piece)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tx.send(Ok(end)).await.expect("send");
    });
    // Seen long before the 4 s the body takes.
    eventually(
        "grains of an upload that never pauses for the linger",
        || async { (!app.read_ndjson(flow, "payload=none").await.is_empty()).then_some(()) },
    )
    .await;
    assert!(
        !writer.is_finished(),
        "seen while the body is still arriving"
    );
    writer.await.expect("writer");
    let response = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the upload ends")
        .expect("task")
        .expect("response");
    assert_eq!(
        json_body(response, StatusCode::CREATED).await["written"],
        40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_in_odd_chunks_equals_one_in_a_piece() {
    let app = spawn_app().await;
    let (flow, source) = app.create_flow().await;
    let sent = grains(flow, source, 0..20, 3000);
    let body = Bytes::from(gsf(&sent));
    // Chunks of 7 bytes up to a few KiB, cutting through every block boundary.
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut size = 7;
    while at < body.len() {
        let next = (at + size).min(body.len());
        chunks.push(Ok::<_, std::io::Error>(body.slice(at..next)));
        at = next;
        size = size * 3 % 5003 + 1;
    }
    let stream = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_micros(50)).await;
        chunk
    });
    let response = app
        .post_grains_gsf(flow, reqwest::Body::wrap_stream(stream))
        .await;
    let summary = json_body(response, StatusCode::CREATED).await;
    assert_eq!(summary["written"], 20);
    let stored: Vec<_> = app
        .read_gsf(flow, "")
        .await
        .into_iter()
        .map(without_creation)
        .collect();
    assert_eq!(stored, sent);
}

/// A GSF POST to `flow` whose body is what is sent down the channel, until it is dropped;
/// the task ends with the response.
fn streamed_upload(
    app: &TestApp,
    flow: Uuid,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let client = app.client.clone();
    let url = app.url(&format!("/flows/{flow}/grains"));
    let upload = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/x-gsf")
            .body(body)
            .send()
            .await
    });
    (tx, upload)
}

/// Sends the `rest` of a [`streamed_upload`]'s body and its `end`, ends the body and
/// returns the summary of the upload, which must have stored something.
async fn finish_upload(
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    rest: &[Bytes],
    end: Bytes,
    upload: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) -> serde_json::Value {
    for piece in rest {
        tx.send(Ok(piece.clone())).await.expect("send");
    }
    tx.send(Ok(end)).await.expect("send");
    drop(tx);
    let response = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the upload ends")
        .expect("task")
        .expect("response");
    json_body(response, StatusCode::CREATED).await
}

//! `follow=true` reads: the stored range, then new grains as they are committed, in
//! NDJSON and GSF, ended by the range's end, a count, or the flow's deletion.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use grainstore::grain::Grain;
use grainstore::gsf::{GsfDecoder, GsfEvent};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::*;

/// A follow read's body, decoded grain by grain as it arrives.
struct FollowBody {
    chunks: BoxStream<'static, reqwest::Result<Bytes>>,
    format: Format,
    ndjson: BytesMut,
    gsf: GsfDecoder,
    /// Whether the GSF terminator came.
    terminated: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Ndjson,
    Gsf,
}

impl FollowBody {
    async fn open(server: &TestServer, flow: Uuid, query: &str, format: Format) -> FollowBody {
        let accept = match format {
            Format::Ndjson => "application/x-ndjson",
            Format::Gsf => "application/x-gsf",
        };
        let response = server
            .get(&format!("/flows/{flow}/grains?follow=true&{query}"), accept)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        FollowBody {
            chunks: response.bytes_stream().boxed(),
            format,
            ndjson: BytesMut::new(),
            gsf: GsfDecoder::new(),
            terminated: false,
        }
    }

    /// The next grain; `None` when the body ended. Panics if nothing comes in time.
    async fn next(&mut self) -> Option<Grain> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(grain) = self.decoded() {
                return Some(grain);
            }
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Err(_) => panic!("the follow body stalled"),
                Ok(None) => {
                    assert!(self.ndjson.is_empty(), "the body ended inside a line");
                    if self.format == Format::Gsf {
                        self.gsf
                            .finish()
                            .expect("the GSF body ends on a block boundary");
                        assert!(self.terminated, "the GSF body ends with its terminator");
                    }
                    return None;
                }
                Ok(Some(chunk)) => {
                    let chunk = chunk.expect("body chunk");
                    match self.format {
                        Format::Ndjson => self.ndjson.extend_from_slice(&chunk),
                        Format::Gsf => self.gsf.push(chunk),
                    }
                }
            }
        }
    }

    fn decoded(&mut self) -> Option<Grain> {
        match self.format {
            Format::Ndjson => {
                let end = self.ndjson.iter().position(|&b| b == b'\n')?;
                let line = self.ndjson.split_to(end + 1);
                Some(Grain::from_json(&line[..end]).expect("an NDJSON grain"))
            }
            Format::Gsf => loop {
                match self.gsf.next_event().expect("valid GSF")? {
                    GsfEvent::Grain { grain, .. } => return Some(grain),
                    GsfEvent::End => self.terminated = true,
                    GsfEvent::Head(_) => {}
                }
            },
        }
    }

    /// `n` grains.
    async fn take(&mut self, n: usize) -> Vec<Grain> {
        let mut grains = Vec::with_capacity(n);
        for _ in 0..n {
            grains.push(self.next().await.expect("a grain, not the end of the body"));
        }
        grains
    }
}

#[tokio::test]
async fn follow_reads_the_range_then_tails_until_the_flow_is_deleted() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..6, 200);
    server.post(flow, &written[..3]).await;
    for format in [Format::Ndjson, Format::Gsf] {
        let mut body = FollowBody::open(&server, flow, "", format).await;
        assert_same_grains(&body.take(3).await, &written[..3]);
        if format == Format::Ndjson {
            server.post(flow, &written[3..]).await;
        }
        assert_same_grains(&body.take(3).await, &written[3..]);
        if format == Format::Gsf {
            let response = server
                .client
                .delete(server.url(&format!("/flows/{flow}")))
                .send()
                .await
                .expect("delete");
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            assert!(body.next().await.is_none(), "the body ends with the flow");
        }
    }
}

#[tokio::test]
async fn follow_with_payload_none_drops_payloads_in_ndjson_only() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..2, 50);
    server.post(flow, &written).await;
    let mut ndjson = FollowBody::open(&server, flow, "payload=none", Format::Ndjson).await;
    let mut gsf = FollowBody::open(&server, flow, "payload=none", Format::Gsf).await;
    for want in &written {
        let got = ndjson.next().await.expect("grain");
        assert!(got.payload().is_empty());
        assert_eq!(got.origin_timestamp(), want.origin_timestamp());
        assert_same_grains(
            &[gsf.next().await.expect("grain")],
            std::slice::from_ref(want),
        );
    }
}

#[tokio::test]
async fn a_bounded_follow_ends_when_a_grain_past_its_end_arrives() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..8, 64);
    server.post(flow, &written[..2]).await;
    let range = format!("timerange=[{}_{})", frame_time(1), frame_time(5));
    let mut ndjson = FollowBody::open(&server, flow, &range, Format::Ndjson).await;
    let mut gsf = FollowBody::open(&server, flow, &range, Format::Gsf).await;
    for body in [&mut ndjson, &mut gsf] {
        assert_same_grains(&body.take(1).await, &written[1..2]);
    }
    server.post(flow, &written[2..4]).await;
    for body in [&mut ndjson, &mut gsf] {
        assert_same_grains(&body.take(2).await, &written[2..4]);
    }
    // The range is not over before a grain shows it is: 5 and beyond end it.
    server.post(flow, &written[4..7]).await;
    for body in [&mut ndjson, &mut gsf] {
        assert_same_grains(&body.take(1).await, &written[4..5]);
        assert!(body.next().await.is_none(), "the body ends past the range");
    }
}

#[tokio::test]
async fn a_follow_with_a_count_ends_after_that_many_grains() {
    let server = spawn_server(|_| {}).await;
    let (flow, source) = server.create_flow().await;
    let written = frames(flow, source, 0..8, 64);
    server.post(flow, &written[..2]).await;
    let mut body = FollowBody::open(&server, flow, "count=5", Format::Gsf).await;
    assert_same_grains(&body.take(2).await, &written[..2]);
    server.post(flow, &written[2..]).await;
    assert_same_grains(&body.take(3).await, &written[2..5]);
    assert!(body.next().await.is_none());
}

#[tokio::test]
async fn follow_refusals() {
    let server = spawn_server(|_| {}).await;
    let (flow, _) = server.create_flow().await;
    for query in [
        "follow=true&reverse_order=true",
        "follow=true&timerange=()",
        "follow=maybe",
        "follow=true&from=0:0",
    ] {
        let response = server
            .get(
                &format!("/flows/{flow}/grains?{query}"),
                "application/x-ndjson",
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let problem: serde_json::Value = response.json().await.expect("problem+json");
        assert!(problem["detail"].is_string(), "{problem}");
    }
    let unknown = Uuid::new_v4();
    let response = server
        .get(
            &format!("/flows/{unknown}/grains?follow=true"),
            "application/x-gsf",
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

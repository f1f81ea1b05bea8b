//! [`FlowReader`]: bounded, time-addressed reads that continue where the last one ended,
//! range reads, and the endless grain generator that catches up and then follows the
//! flow live, across disconnects, restarts and replicas.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::Method;
use reqwest::header::ACCEPT;

use super::decode::{GrainStream, body, gsf_grains, ndjson_grains, with_idle_timeout};
use super::error::{ClientError, ClientResult};
use super::http::Connection;
use super::sse::{SseEvent, events};
use crate::grain::Grain;
use crate::store::FlowId;
use crate::time::{Bound, TimeRange, Timestamp};

/// Where a reader starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadStart {
    /// At the flow's first grain.
    #[default]
    Beginning,
    /// At this timestamp, included.
    At(Timestamp),
    /// Just after this timestamp (the grain there is not read).
    After(Timestamp),
    /// After the newest grain stored when the reader is opened: only what comes next.
    Now,
}

/// How a [`FlowReader`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadConfig {
    /// Where the first read starts.
    pub start: ReadStart,
    /// Whether grains carry their payloads (`false`: headers only, empty payloads).
    pub payload: bool,
    /// Whether a live payload too large for the event stream (sent as a `data_url`) is
    /// fetched, so that every grain arrives whole; otherwise it arrives empty.
    pub fetch_data_urls: bool,
    /// Grains per request while [`FlowReader::grains`] catches up on stored grains.
    pub catch_up_page: u64,
    /// A live stream that sends nothing (not even its keep-alive) for this long is taken
    /// for dead and reconnected.
    pub live_idle_timeout: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            start: ReadStart::Beginning,
            payload: true,
            fetch_data_urls: true,
            catch_up_page: 1024,
            live_idle_timeout: Duration::from_secs(45),
        }
    }
}

impl ReadConfig {
    /// This configuration starting at `start`.
    pub fn starting(mut self, start: ReadStart) -> Self {
        self.start = start;
        self
    }
}

/// Reads one flow; opened by [`FlowProvider::open_read`](super::FlowProvider::open_read).
pub struct FlowReader {
    conn: Arc<Connection>,
    flow: FlowId,
    config: ReadConfig,
    /// Where the next [`read`](Self::read) starts: after the last grain read.
    position: Bound,
}

impl FlowReader {
    pub(crate) async fn open(
        conn: Arc<Connection>,
        flow: FlowId,
        config: ReadConfig,
    ) -> ClientResult<FlowReader> {
        let position = match config.start {
            ReadStart::Beginning => Bound::Unbounded,
            ReadStart::At(t) => Bound::Inclusive(t),
            ReadStart::After(t) => Bound::Exclusive(t),
            ReadStart::Now => match newest(&conn, flow).await? {
                Some(t) => Bound::Exclusive(t),
                None => Bound::Unbounded,
            },
        };
        if config.start != ReadStart::Now {
            // Fails early for an unknown flow, as opening a session does on the server.
            let path = format!("flows/{flow}");
            conn.send(|| conn.request(Method::HEAD, &path)).await?;
        }
        Ok(FlowReader {
            conn,
            flow,
            config,
            position,
        })
    }

    /// The flow read.
    pub fn flow_id(&self) -> FlowId {
        self.flow
    }

    /// Where the next [`read`](Self::read) starts.
    pub fn position(&self) -> Bound {
        self.position
    }

    /// Reads up to `count` grains from the position on, in time order, and moves the
    /// position past the last one (the next read asks for `(LAST_`). An empty result
    /// means nothing is stored after the position yet.
    pub async fn read(&mut self, count: u64) -> ClientResult<Vec<Grain>> {
        let range = TimeRange::new(self.position, Bound::Unbounded);
        let mut grains = range_read(
            &self.conn,
            self.flow,
            &range,
            Some(count),
            self.config.payload,
        )
        .await?;
        let mut out = Vec::new();
        while let Some(grain) = grains.next().await {
            out.push(grain?);
        }
        if let Some(last) = out.last() {
            self.position = Bound::Exclusive(last.origin_timestamp());
        }
        Ok(out)
    }

    /// The grains of `range`, in time order, as they arrive (the position is not moved).
    pub async fn read_range(&self, range: &TimeRange) -> ClientResult<GrainStream> {
        range_read(&self.conn, self.flow, range, None, self.config.payload).await
    }

    /// Every grain from the position on, then every grain committed after it, for ever:
    /// the stream catches up on stored grains with range reads, then follows the flow
    /// live (server-sent events). When the connection drops, the server restarts or
    /// shuts down, or a replica goes away, it reconnects with backoff and resumes after
    /// the last grain it gave out (`Last-Event-ID`): nothing is missed or repeated.
    ///
    /// It ends only with the provider's close, or with an error it cannot get past (the
    /// flow was deleted, access refused), which is its last item. Passing failures are
    /// logged (tracing, warn) and retried.
    pub fn grains(&self) -> GrainStream {
        let live = Live {
            conn: self.conn.clone(),
            flow: self.flow,
            config: self.config.clone(),
            position: self.position,
            phase: Phase::CatchUp,
            failures: 0,
        };
        futures::stream::unfold(Some(live), |live| async move {
            let mut live = live?;
            let closed = live.conn.closed.clone();
            let next = tokio::select! {
                next = live.next() => next,
                // Whatever it was waiting for, the stream ends with the provider.
                () = closed.cancelled() => None,
            };
            match next {
                Some(Ok(grain)) => Some((Ok(grain), Some(live))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
        .boxed()
    }
}

/// `GET /flows/{id}/grains?timerange=&count=` as a grain stream: GSF (payloads always
/// included) or, without payloads, NDJSON with `payload=none`.
async fn range_read(
    conn: &Connection,
    flow: FlowId,
    range: &TimeRange,
    count: Option<u64>,
    payload: bool,
) -> ClientResult<GrainStream> {
    let path = format!("flows/{flow}/grains");
    let mut query = vec![("timerange", range.to_string())];
    if let Some(count) = count {
        query.push(("count", count.to_string()));
    }
    let accept = if payload {
        "application/x-gsf"
    } else {
        query.push(("payload", "none".into()));
        "application/x-ndjson"
    };
    let response = conn
        .send(|| {
            Ok(conn
                .request_with(Method::GET, &path, &query)?
                .header(ACCEPT, accept))
        })
        .await?;
    Ok(if payload {
        gsf_grains(body(response))
    } else {
        ndjson_grains(body(response))
    })
}

/// The origin timestamp of the flow's newest grain.
async fn newest(conn: &Connection, flow: FlowId) -> ClientResult<Option<Timestamp>> {
    let path = format!("flows/{flow}/grains");
    let response = conn
        .send(|| {
            Ok(conn
                .request_with(
                    Method::GET,
                    &path,
                    &[
                        ("reverse_order", "true"),
                        ("count", "1"),
                        ("payload", "none"),
                    ],
                )?
                .header(ACCEPT, "application/x-ndjson"))
        })
        .await?;
    let mut grains = ndjson_grains(body(response));
    Ok(grains
        .next()
        .await
        .transpose()?
        .map(|g| g.origin_timestamp()))
}

/// What the live generator is doing.
enum Phase {
    /// About to read (or reading) stored grains after the position.
    CatchUp,
    /// Reading a page of stored grains; `left` is how many the page may still hold.
    Page { grains: GrainStream, left: u64 },
    /// About to subscribe to the live stream.
    Subscribe,
    /// Reading the live stream.
    Live(BoxStream<'static, ClientResult<SseEvent>>),
    /// Waiting before the next attempt.
    Backoff,
}

/// The state of [`FlowReader::grains`].
struct Live {
    conn: Arc<Connection>,
    flow: FlowId,
    config: ReadConfig,
    position: Bound,
    phase: Phase,
    /// Failures since the last grain; sets the backoff.
    failures: u32,
}

/// What to do after a failure.
enum After {
    /// Try again after a backoff, catching up first.
    Retry,
    /// Give up: the failure is the stream's last item.
    Stop(ClientError),
}

impl Live {
    /// The next grain, an error that ends the stream, or `None` once the provider closed.
    async fn next(&mut self) -> Option<ClientResult<Grain>> {
        loop {
            if self.conn.closed.is_cancelled() {
                return None;
            }
            let failure = match std::mem::replace(&mut self.phase, Phase::Backoff) {
                Phase::Backoff => {
                    let wait = self.conn.retry.backoff(self.failures.min(16), None);
                    if self.conn.pause(wait).await.is_err() {
                        return None;
                    }
                    self.phase = Phase::CatchUp;
                    continue;
                }
                Phase::CatchUp => {
                    let range = TimeRange::new(self.position, Bound::Unbounded);
                    let page = self.config.catch_up_page.max(1);
                    match range_read(
                        &self.conn,
                        self.flow,
                        &range,
                        Some(page),
                        self.config.payload,
                    )
                    .await
                    {
                        Ok(grains) => {
                            self.phase = Phase::Page { grains, left: page };
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Phase::Page { mut grains, left } => match grains.next().await {
                    Some(Ok(grain)) => {
                        self.phase = Phase::Page {
                            grains,
                            left: left.saturating_sub(1),
                        };
                        if let Some(grain) = self.accept(grain) {
                            return Some(Ok(grain));
                        }
                        continue;
                    }
                    Some(Err(e)) => e,
                    // A full page: there may be more stored; a short one: caught up.
                    None if left == 0 => {
                        self.phase = Phase::CatchUp;
                        continue;
                    }
                    None => {
                        self.phase = Phase::Subscribe;
                        continue;
                    }
                },
                Phase::Subscribe => {
                    match subscribe(&self.conn, self.flow, &self.config, self.position).await {
                        Ok(events) => {
                            self.phase = Phase::Live(events);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Phase::Live(mut events) => match events.next().await {
                    Some(Ok(event)) => match self.event(event).await {
                        Ok(Some(grain)) => {
                            self.phase = Phase::Live(events);
                            return Some(Ok(grain));
                        }
                        Ok(None) => {
                            self.phase = Phase::Live(events);
                            continue;
                        }
                        Err(e) => e,
                    },
                    Some(Err(e)) => e,
                    None => ClientError::Protocol("the live stream ended".into()),
                },
            };
            match self.after(failure) {
                After::Retry => self.phase = Phase::Backoff,
                After::Stop(e) => return Some(Err(e)),
            }
        }
    }

    /// Decides what a failure means for the stream.
    fn after(&mut self, e: ClientError) -> After {
        match &e {
            ClientError::Closed => After::Stop(e),
            ClientError::FlowDeleted(_) => After::Stop(e),
            ClientError::Problem(p) if p.status == 404 => {
                After::Stop(ClientError::FlowDeleted(self.flow))
            }
            ClientError::Problem(p) if !matches!(p.status, 429 | 500..=599) => After::Stop(e),
            ClientError::Unavailable { .. }
            | ClientError::Problem(_)
            | ClientError::Transport(_)
            | ClientError::Protocol(_)
            | ClientError::Gsf(_) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(flow_id = %self.flow, failures = self.failures, error = %e, "live grain stream interrupted; reconnecting");
                After::Retry
            }
            _ => After::Stop(e),
        }
    }

    /// Moves the position past `grain`, or drops a grain at or before it (a duplicate).
    fn accept(&mut self, grain: Grain) -> Option<Grain> {
        let timestamp = grain.origin_timestamp();
        let after_position = match self.position {
            Bound::Unbounded => true,
            Bound::Inclusive(p) => timestamp >= p,
            Bound::Exclusive(p) => timestamp > p,
        };
        if !after_position {
            return None;
        }
        self.position = Bound::Exclusive(timestamp);
        self.failures = 0;
        Some(grain)
    }

    /// The grain an event carries, if any.
    async fn event(&mut self, event: SseEvent) -> ClientResult<Option<Grain>> {
        match event.event.as_str() {
            "grain" => {
                let grain = live_grain(&self.conn, &self.config, &event.data).await?;
                Ok(self.accept(grain))
            }
            "flow_deleted" => Err(ClientError::FlowDeleted(self.flow)),
            "shutdown" => Err(ClientError::Protocol("the server is shutting down".into())),
            "error" => Err(ClientError::Protocol(format!(
                "the live stream reported an error: {}",
                event.data
            ))),
            _ => Ok(None),
        }
    }
}

/// Subscribes to the live stream of `flow` from `position`.
async fn subscribe(
    conn: &Connection,
    flow: FlowId,
    config: &ReadConfig,
    position: Bound,
) -> ClientResult<BoxStream<'static, ClientResult<SseEvent>>> {
    let path = format!("flows/{flow}/grains");
    let payload = if config.payload { "inline" } else { "none" };
    let mut query = vec![("payload", payload.to_owned())];
    match position {
        Bound::Inclusive(t) => query.push(("from", t.to_string())),
        Bound::Unbounded => query.push(("from", "earliest".to_owned())),
        Bound::Exclusive(_) => {}
    }
    let response = conn
        .send(|| {
            let request = conn
                .request_with(Method::GET, &path, &query)?
                .header(ACCEPT, "text/event-stream");
            Ok(match position {
                Bound::Exclusive(t) => request.header("last-event-id", t.to_string()),
                _ => request,
            })
        })
        .await?;
    let body = with_idle_timeout(body(response), config.live_idle_timeout);
    Ok(events(body))
}

/// Parses a grain event's JSON, fetching a payload sent as a `data_url`.
async fn live_grain(conn: &Connection, config: &ReadConfig, data: &str) -> ClientResult<Grain> {
    {
        let invalid = |e: &dyn std::fmt::Display| {
            ClientError::Protocol(format!("a live grain event does not parse: {e}"))
        };
        let value: serde_json::Value = serde_json::from_str(data).map_err(|e| invalid(&e))?;
        let data_url = value.get("data_url").and_then(|u| u.as_str());
        let payload = match data_url {
            Some(url) if config.fetch_data_urls && config.payload => Some(fetch(conn, url).await?),
            _ => None,
        };
        match payload {
            Some(payload) => Grain::from_meta(&value["meta"], Some(payload)),
            None => Grain::from_json(data.as_bytes()),
        }
        .map_err(|e| invalid(&e))
    }
}

/// Fetches a payload by its `data_url`.
async fn fetch(conn: &Connection, url: &str) -> ClientResult<Bytes> {
    {
        let response = conn
            .send(|| {
                Ok(conn
                    .request(Method::GET, url)?
                    .header(ACCEPT, "application/octet-stream"))
            })
            .await?;
        Ok(response.bytes().await?)
    }
}

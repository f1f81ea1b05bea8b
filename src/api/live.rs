//! Live grain streams: the live grain generator behind SSE subscriptions and
//! `follow=true` reads, and the service-wide `/events` stream.
//!
//! A live feed keeps no grains of its own beyond the page it is sending: it waits on the
//! flow's commit notification, then reads what was committed after its position from a
//! fresh read snapshot, a page at a time. A consumer slower than the writer simply falls
//! behind and catches up from the store; it never makes the server buffer for it. Its
//! position is the origin timestamp of the last grain it sent, so resuming after it
//! (`Last-Event-ID`, `after=`) misses nothing and repeats nothing. Grains committed with
//! timestamps before the position (backfill) are not sent live; `/events` reports them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::Principal;
use super::fanout::{FanoutItem, FlowFanout};
use super::metrics::Metrics;
use super::params::{QueryParams, parse_timestamp};
use super::{ApiError, ApiResult, AppState};
use crate::config::LiveConfig;
use crate::grain::Grain;
use crate::store::{
    CommitWatch, EventId, FlowId, GrainQuery, Order, Resume, Store, StoreError, StoreEvent,
};
use crate::time::{Bound, TimeRange, Timestamp};

/// Bounds on the live streams open at once, in total and per credential, so that no
/// client (or crowd of clients) can hold an unbounded number of them.
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_credential: usize,
    /// (streams open, streams open per principal id). A std mutex: held for one update.
    open: Mutex<(usize, HashMap<Arc<str>, usize>)>,
}

/// One open live stream's place; dropping it (when the response body ends, however it
/// ends) frees the place.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    /// The principal counted, or `None` when per-credential counting does not apply.
    principal: Option<Arc<str>>,
}

impl StreamLimits {
    /// The limits of `live.max_streams` and `live.max_streams_per_credential`.
    pub fn new(config: &LiveConfig) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            max_total: config.max_streams,
            max_per_credential: config.max_streams_per_credential,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a place for a new stream of `principal`: 503 when the service is at
    /// `live.max_streams`, 429 when the credential is at its own limit. The anonymous
    /// principal (no access control) is only counted in the total.
    pub fn acquire(self: &Arc<Self>, principal: &Principal) -> ApiResult<StreamPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max_total {
            let mut problem = ApiError::overloaded(format!(
                "the service has {} live streams open, its limit (limit `live.max_streams`); retry shortly",
                self.max_total
            ));
            problem.retry_after = Some(5);
            return Err(problem);
        }
        let counted = (!principal.anonymous).then(|| principal.id.clone());
        if let Some(id) = &counted {
            let mine = open.1.get(id).copied().unwrap_or(0);
            if mine >= self.max_per_credential {
                return Err(ApiError::too_many(
                    "live.max_streams_per_credential",
                    format!(
                        "this credential has {mine} live streams open; close one before opening another"
                    ),
                ));
            }
            *open.1.entry(id.clone()).or_default() += 1;
        }
        open.0 += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            principal: counted,
        })
    }

    /// Live streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(id) = &self.principal
            && let Some(n) = open.1.get_mut(id)
        {
            *n -= 1;
            if *n == 0 {
                open.1.remove(id);
            }
        }
    }
}

/// Whether a request opens a live stream: `GET /events`, or a `GET` of a flow's grains
/// as `text/event-stream` or with `follow=true`.
pub fn is_live_request(
    route: Option<&str>,
    method: &axum::http::Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> bool {
    if method != axum::http::Method::GET {
        return false;
    }
    match route {
        Some("/events") => true,
        Some("/flows/{id}/grains") => {
            super::auth::is_event_stream(headers)
                || form_urlencoded::parse(query.unwrap_or("").as_bytes())
                    .any(|(name, value)| name == "follow" && value == "true")
        }
        _ => false,
    }
}

/// How many grains a live feed reads per snapshot.
const LIVE_PAGE: u64 = 256;
/// A live feed stops reading a snapshot once its grains' payloads reach this many bytes,
/// so that what a feed holds for a slow consumer stays small whatever the grain size.
const LIVE_PAGE_BYTES: usize = 4 << 20;

/// What a live feed produces.
#[derive(Debug)]
pub enum LiveItem {
    /// The next grain after the position (boxed: the other variants are tiny).
    Grain(Box<Grain>),
    /// The flow was deleted; the feed ends.
    FlowDeleted,
    /// The service is shutting down; the feed ends and the client should resume elsewhere.
    ShuttingDown,
}

/// The live grain generator of one flow.
pub struct LiveFeed {
    store: Arc<dyn Store>,
    flow: FlowId,
    /// Where the next read starts: after the last grain sent, or the requested start.
    start: Bound,
    /// The feed ends at the first grain past this bound (follow reads of bounded ranges).
    end: Bound,
    watch: CommitWatch,
    buffer: VecDeque<Grain>,
    shutdown: CancellationToken,
    with_payload: bool,
    done: bool,
}

impl LiveFeed {
    /// A feed of `flow` from `start` (inclusive or exclusive), up to `end`. Subscribes to
    /// commits first, so nothing committed after this call is missed.
    pub fn new(
        state: &AppState,
        flow: FlowId,
        start: Bound,
        end: Bound,
        with_payload: bool,
    ) -> LiveFeed {
        LiveFeed {
            store: state.store.clone(),
            flow,
            watch: state.store.watch(flow),
            start,
            end,
            buffer: VecDeque::new(),
            shutdown: state.shutdown.clone(),
            with_payload,
            done: false,
        }
    }

    /// A feed of what is committed after the newest grain stored now ("live from now").
    pub async fn from_now(
        state: &AppState,
        flow: FlowId,
        with_payload: bool,
    ) -> Result<LiveFeed, StoreError> {
        let start = newest_position(&*state.store, flow).await?;
        Ok(LiveFeed::new(
            state,
            flow,
            start,
            Bound::Unbounded,
            with_payload,
        ))
    }

    /// The position: after the last grain passed on, or the requested start.
    pub fn position(&self) -> Bound {
        self.start
    }

    /// Moves the position past a grain passed on by other means (a fan-out).
    fn advance(&mut self, timestamp: Timestamp) {
        self.buffer.clear();
        self.start = Bound::Exclusive(timestamp);
    }

    /// The next stored grain after the position, without waiting for commits: `None`
    /// when the store has nothing newer now.
    async fn next_stored(&mut self) -> Option<Result<Grain, StoreError>> {
        if self.buffer.is_empty() {
            match read_page(&*self.store, self.flow, self.start, self.with_payload).await {
                Ok(grains) => self.buffer.extend(grains),
                Err(e) => return Some(Err(e)),
            }
        }
        let grain = self.buffer.pop_front()?;
        self.start = Bound::Exclusive(grain.origin_timestamp());
        Some(Ok(grain))
    }

    /// The next item; waits for commits when caught up.
    pub async fn next(&mut self) -> Option<Result<LiveItem, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            // Checked before every grain, not only when caught up: a feed replaying a
            // backlog, or following a busy writer, must end at shutdown too.
            if self.shutdown.is_cancelled() {
                self.done = true;
                return Some(Ok(LiveItem::ShuttingDown));
            }
            if let Some(grain) = self.buffer.pop_front() {
                let timestamp = grain.origin_timestamp();
                if past_end(timestamp, self.end) {
                    self.done = true;
                    return None;
                }
                self.start = Bound::Exclusive(timestamp);
                return Some(Ok(LiveItem::Grain(Box::new(grain))));
            }
            // Mark the commits seen so far before reading, so one that lands during the
            // read wakes the wait below.
            self.watch.borrow_and_update();
            match self.fetch().await {
                Ok(grains) if !grains.is_empty() => {
                    self.buffer.extend(grains);
                    continue;
                }
                Ok(_) => {}
                Err(StoreError::FlowNotFound(_)) => {
                    self.done = true;
                    return Some(Ok(LiveItem::FlowDeleted));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            tokio::select! {
                changed = self.watch.changed() => {
                    if changed.is_err() {
                        // The notifier dropped this flow's channel: subscribe again.
                        self.watch = self.store.watch(self.flow);
                    }
                }
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Ok(LiveItem::ShuttingDown));
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Grain>, StoreError> {
        read_page(&*self.store, self.flow, self.start, self.with_payload).await
    }

    /// The feed as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<LiveItem, StoreError>> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            feed.next().await.map(|item| (item, feed))
        })
    }
}

/// Reads the page of grains after `start` from a fresh snapshot; the session is released
/// before the grains are passed on.
pub(super) async fn read_page(
    store: &dyn Store,
    flow: FlowId,
    start: Bound,
    with_payload: bool,
) -> Result<Vec<Grain>, StoreError> {
    let session = store.open_read(flow).await?;
    let stream = session.grains(GrainQuery {
        range: TimeRange::new(start, Bound::Unbounded),
        order: Order::Ascending,
        count: Some(LIVE_PAGE),
        with_payload,
    });
    drop(session);
    let mut stream = std::pin::pin!(stream);
    let mut grains = Vec::new();
    let mut bytes = 0;
    while bytes < LIVE_PAGE_BYTES {
        let Some(grain) = stream.next().await.transpose()? else {
            break;
        };
        bytes += grain.payload().len();
        grains.push(grain);
    }
    Ok(grains)
}

/// Whether a page from [`read_page`] holds as much as a page may (in grains or payload
/// bytes), so that more may follow it in the same snapshot; a shorter one ended there.
pub(super) fn page_is_full(grains: &[Grain]) -> bool {
    grains.len() as u64 >= LIVE_PAGE
        || grains.iter().map(|g| g.payload().len()).sum::<usize>() >= LIVE_PAGE_BYTES
}

/// The position "live from now": after the newest grain stored now.
pub(super) async fn newest_position(store: &dyn Store, flow: FlowId) -> Result<Bound, StoreError> {
    let session = store.open_read(flow).await?;
    let mut newest = session.grains(GrainQuery {
        range: TimeRange::eternity(),
        order: Order::Descending,
        count: Some(1),
        with_payload: false,
    });
    Ok(match newest.next().await.transpose()? {
        Some(grain) => Bound::Exclusive(grain.origin_timestamp()),
        None => Bound::Unbounded,
    })
}

fn past_end(timestamp: Timestamp, end: Bound) -> bool {
    match end {
        Bound::Unbounded => false,
        Bound::Inclusive(e) => timestamp > e,
        Bound::Exclusive(e) => timestamp >= e,
    }
}

/// How SSE events carry payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadMode {
    /// Inline up to the configured size, else a `data_url`.
    Inline,
    /// Always a `data_url`.
    Url,
    /// No payload.
    None,
}

/// `GET /flows/{id}/grains` with `Accept: text/event-stream`: a live subscription.
pub async fn subscribe(
    state: AppState,
    flow: FlowId,
    query: QueryParams,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let mode = match query.get("payload") {
        None | Some("inline") => PayloadMode::Inline,
        Some("url") => PayloadMode::Url,
        Some("none") => PayloadMode::None,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter `payload` must be `inline`, `url` or `none`, not {other:?}"
            )));
        }
    };
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("the Last-Event-ID header is not valid text"))
                .and_then(|text| parse_timestamp("Last-Event-ID", text.trim()))
        })
        .transpose()?;
    let after = query.timestamp("after")?;
    let from = match query.get("from") {
        Some("earliest") => Some(Bound::Unbounded),
        _ => query.timestamp("from")?.map(Bound::Inclusive),
    };
    if after.is_some() && from.is_some() {
        return Err(ApiError::bad_request("give `after` or `from`, not both"));
    }
    let position = match (last_event_id.or(after), from) {
        (Some(after), _) => {
            // Fails early with 404 for an unknown flow, before the stream starts.
            drop(state.store.open_read(flow).await?);
            Bound::Exclusive(after)
        }
        (None, Some(from)) => {
            drop(state.store.open_read(flow).await?);
            from
        }
        (None, None) => newest_position(&*state.store, flow).await?,
    };
    let subscription = Subscription {
        feed: LiveFeed::new(
            &state,
            flow,
            position,
            Bound::Unbounded,
            mode == PayloadMode::Inline,
        ),
        fanout: Some(state.fanouts.join(flow).await?),
        receiver: None,
        on_fanout: false,
        mode,
        inline_max: state.config.live.inline_max_bytes,
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
        stopping: Box::pin(state.shutdown.clone().cancelled_owned()),
        behind_since: None,
        max_lag: (state.config.live.max_lag_secs > 0)
            .then(|| Duration::from_secs(state.config.live.max_lag_secs)),
        done: false,
    };
    let greeting = Bytes::from(format!(
        "retry: {}\n: subscribed\n\n",
        state.config.live.retry_ms
    ));
    let keepalive = Duration::from_secs(state.config.live.keepalive_secs);
    Ok(sse_response(
        greeting,
        subscription.into_stream(),
        keepalive,
    ))
}

/// One SSE subscriber's grain generator. It catches up from the store (reading pages
/// after its position from fresh snapshots), then takes new grains from the flow's
/// fan-out, already encoded; if it falls behind the fan-out's ring it goes back to the
/// store, and if the fan-out stops it waits on commit notifications and reads the store
/// itself. Its position is always the last grain it sent.
struct Subscription {
    /// The store reader, which also keeps the position.
    feed: LiveFeed,
    /// `None` once the fan-out has stopped.
    fanout: Option<Arc<FlowFanout>>,
    /// Subscribed before each catch-up from the store, so that whatever the fan-out
    /// broadcasts after that catch-up's last read is received.
    receiver: Option<broadcast::Receiver<Arc<FanoutItem>>>,
    /// Caught up: taking grains from the receiver.
    on_fanout: bool,
    mode: PayloadMode,
    inline_max: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Completes at shutdown. Made once and kept: a fresh `cancelled()` per event would
    /// register with the service's one shutdown token every time, a lock shared by all
    /// subscribers.
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// When the subscriber fell behind the fan-out's ring, until it catches up again.
    behind_since: Option<Instant>,
    /// `live.max_lag_secs`; `None` when subscribers are never closed for lagging.
    max_lag: Option<Duration>,
    done: bool,
}

impl Subscription {
    /// The next SSE frame; waits for commits when caught up.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if self.shutdown.is_cancelled() {
                return self.end(shutdown_event());
            }
            if self.on_fanout {
                match self.next_from_fanout().await {
                    Some(frame) => return Some(frame),
                    None => continue,
                }
            }
            if let Some(fanout) = &self.fanout {
                if self.receiver.is_none() {
                    self.receiver = fanout.subscribe();
                }
                if self.receiver.is_none() {
                    self.fanout = None;
                    continue;
                }
                match self.feed.next_stored().await {
                    Some(Ok(grain)) => {
                        if let Some(lagging) = self.lagging_too_long() {
                            return self.end(lagging);
                        }
                        return Some(self.grain(&grain));
                    }
                    Some(Err(e)) => return self.failed(e),
                    None => {
                        self.on_fanout = true;
                        self.behind_since = None;
                    }
                }
                continue;
            }
            // No fan-out: the feed waits on commits and reads the store itself.
            return match self.feed.next().await? {
                Ok(LiveItem::Grain(grain)) => Some(self.grain(&grain)),
                Ok(LiveItem::FlowDeleted) => self.end(flow_deleted_event(self.feed.flow)),
                Ok(LiveItem::ShuttingDown) => self.end(shutdown_event()),
                Err(e) => self.failed(e),
            };
        }
    }

    /// The next frame from the fan-out, or `None` when the subscriber must go back to
    /// the store (it lagged, or the fan-out stopped).
    async fn next_from_fanout(&mut self) -> Option<Bytes> {
        let mut receiver = self.receiver.take()?;
        loop {
            let received = tokio::select! {
                biased;
                () = self.stopping.as_mut() => None,
                received = receiver.recv() => Some(received),
            };
            let Some(received) = received else {
                return self.end(shutdown_event());
            };
            match received {
                Ok(item) => match &*item {
                    FanoutItem::Grain(shared) => {
                        // Grains the catch-up already sent, and backfill behind the
                        // position, are skipped.
                        if !after_position(shared.timestamp(), self.feed.position()) {
                            continue;
                        }
                        self.feed.advance(shared.timestamp());
                        self.metrics.add_grains_read(1);
                        self.receiver = Some(receiver);
                        return Some(shared.event(self.mode));
                    }
                    FanoutItem::FlowDeleted => {
                        return self.end(flow_deleted_event(self.feed.flow));
                    }
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.behind_since = Some(Instant::now());
                }
                Err(broadcast::error::RecvError::Closed) => self.fanout = None,
            }
            self.on_fanout = false;
            return None;
        }
    }

    /// The final comment for a subscriber that fell behind the fan-out's ring and has
    /// not caught up within `live.max_lag_secs`; `None` while it may go on.
    fn lagging_too_long(&self) -> Option<Bytes> {
        let since = self.behind_since?;
        let limit = self.max_lag?;
        if since.elapsed() <= limit {
            return None;
        }
        tracing::info!(flow_id = %self.feed.flow, lag_secs = limit.as_secs(), "closing a live subscriber that stays behind");
        Some(Bytes::from(format!(
            ": closed: this subscriber has been behind the live edge for more than {} s (limit `live.max_lag_secs`); reconnect with Last-Event-ID to resume\n\n",
            limit.as_secs()
        )))
    }

    fn grain(&self, grain: &Grain) -> Bytes {
        self.metrics.add_grains_read(1);
        grain_event(self.feed.flow, grain, self.mode, self.inline_max)
    }

    fn failed(&mut self, error: StoreError) -> Option<Bytes> {
        if let StoreError::FlowNotFound(_) = error {
            return self.end(flow_deleted_event(self.feed.flow));
        }
        tracing::error!(flow_id = %self.feed.flow, error = %error, "live feed failed");
        self.end(sse_frame(
            Some("error"),
            None,
            &json!({ "detail": error.to_string() }).to_string(),
        ))
    }

    fn end(&mut self, frame: Bytes) -> Option<Bytes> {
        self.done = true;
        Some(frame)
    }

    fn into_stream(self) -> impl Stream<Item = Bytes> + Send + 'static {
        futures::stream::unfold(self, |mut sub| async move {
            sub.next().await.map(|frame| (frame, sub))
        })
    }
}

fn after_position(timestamp: Timestamp, position: Bound) -> bool {
    match position {
        Bound::Unbounded => true,
        Bound::Inclusive(p) => timestamp >= p,
        Bound::Exclusive(p) => timestamp > p,
    }
}

fn shutdown_event() -> Bytes {
    sse_frame(
        Some("shutdown"),
        None,
        &json!({ "detail": "the service is shutting down; reconnect with Last-Event-ID to resume" })
            .to_string(),
    )
}

fn flow_deleted_event(flow: FlowId) -> Bytes {
    sse_frame(
        Some("flow_deleted"),
        None,
        &json!({ "flow_id": flow }).to_string(),
    )
}

/// One SSE event: `event:`, `id:` and one `data:` line (`data` holds no line breaks:
/// it is compact JSON).
fn sse_frame(event: Option<&str>, id: Option<&str>, data: &str) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 64);
    if let Some(event) = event {
        frame.extend_from_slice(b"event: ");
        frame.extend_from_slice(event.as_bytes());
        frame.push(b'\n');
    }
    if let Some(id) = id {
        frame.extend_from_slice(b"id: ");
        frame.extend_from_slice(id.as_bytes());
        frame.push(b'\n');
    }
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(data.as_bytes());
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// An SSE response from ready-made frames: the greeting first, then the events, with a
/// keep-alive comment after `keepalive` without one.
fn sse_response(
    greeting: Bytes,
    events: impl Stream<Item = Bytes> + Send + 'static,
    keepalive: Duration,
) -> Response {
    let body = SseBody {
        greeting: Some(greeting),
        events: Box::pin(events),
        keepalive,
        timer: Box::pin(tokio::time::sleep(keepalive)),
        last_sent: tokio::time::Instant::now(),
    };
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    sse_headers(response.headers_mut());
    response
}

/// The body of an SSE response. The keep-alive timer is not reset for every event (a
/// timer registration per event and subscriber would cost more than the event): when
/// it fires, it is moved to `keepalive` after the last frame sent, and a comment is
/// sent only if that time has passed.
struct SseBody {
    greeting: Option<Bytes>,
    events: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    keepalive: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_sent: tokio::time::Instant,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(greeting) = this.greeting.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(greeting))));
        }
        match this.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.last_sent = tokio::time::Instant::now();
                return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let now = tokio::time::Instant::now();
            let due = this.last_sent + this.keepalive;
            if due > now {
                this.timer.as_mut().reset(due);
                continue;
            }
            this.last_sent = now;
            this.timer.as_mut().reset(now + this.keepalive);
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b":\n\n",
            )))));
        }
    }
}

fn sse_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// The SSE event of one grain: `event: grain`, `id:` its origin timestamp, `data:` its
/// JSON form with the payload inline or as a `data_url`.
pub(super) fn grain_event(
    flow: FlowId,
    grain: &Grain,
    mode: PayloadMode,
    inline_max: usize,
) -> Bytes {
    let timestamp = grain.origin_timestamp();
    let inline = mode == PayloadMode::Inline && grain.payload().len() <= inline_max;
    let mut json = grain.to_json(inline);
    if mode == PayloadMode::Url || (mode == PayloadMode::Inline && !inline) {
        // The JSON form is an object: add the field before its closing brace.
        if json.last() == Some(&b'}') {
            json.pop();
            json.extend_from_slice(
                format!(",\"data_url\":\"/flows/{flow}/grains/{timestamp}\"}}").as_bytes(),
            );
        }
    }
    let id = timestamp.to_string();
    let mut frame = Vec::with_capacity(json.len() + id.len() + 32);
    frame.extend_from_slice(b"event: grain\nid: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// `GET /events`: the service-wide event stream, filterable and resumable.
pub async fn events(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let query = QueryParams::parse(
        raw.as_deref(),
        &["flow_id", "source_id", "event_type", "after"],
        false,
    )?;
    let flow = query.uuid("flow_id")?;
    let source = query.uuid("source_id")?;
    let types: Option<Vec<String>> = query
        .get("event_type")
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).collect());
    if let Some(types) = &types {
        for t in types {
            if !EVENT_TYPES.contains(&t.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "query parameter `event_type`: unknown type {t:?}; known types: {}",
                    EVENT_TYPES.join(", ")
                )));
            }
        }
    }
    let header_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let after = match header_id.or(query.get("after")) {
        None => None,
        Some(text) => Some(text.parse::<EventId>().map_err(|()| {
            ApiError::bad_request(format!(
                "event id {text:?} is not one this service gave out (form: EPOCH-SEQ)"
            ))
        })?),
    };
    let filter = move |e: &StoreEvent| {
        flow.is_none_or(|f| e.flow_id == Some(f))
            && source.is_none_or(|s| e.source_id == Some(s))
            && types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|t| t == e.event_type))
    };
    let (resume, position, receiver) = state.store.events().subscribe(after);
    let feed = EventFeed {
        state: state.clone(),
        receiver,
        backlog: VecDeque::new(),
        last: position,
        reset_pending: false,
    };
    let feed = match resume {
        Resume::From(backlog) => EventFeed {
            backlog: backlog.into(),
            ..feed
        },
        Resume::Reset => EventFeed {
            reset_pending: true,
            ..feed
        },
    };
    let retry = Duration::from_millis(state.config.live.retry_ms);
    let greeting = futures::stream::once(async move {
        Ok::<_, Infallible>(Event::default().retry(retry).comment("subscribed"))
    });
    let stream = futures::stream::unfold(feed, move |mut feed| {
        let filter = filter.clone();
        async move {
            loop {
                match feed.next().await? {
                    EventItem::Reset => {
                        let event = Event::default().event("reset").data(
                            json!({"detail": "events since the given id are no longer retained; re-read the resources you follow"})
                                .to_string(),
                        );
                        return Some((Ok::<_, Infallible>(event), feed));
                    }
                    EventItem::Shutdown => {
                        let event = Event::default().event("shutdown").data(
                            json!({"detail": "the service is shutting down; reconnect with Last-Event-ID to resume"}).to_string(),
                        );
                        return Some((Ok(event), feed));
                    }
                    EventItem::Event(e) if filter(&e) => return Some((Ok(store_event(&e)), feed)),
                    EventItem::Event(_) => continue,
                }
            }
        }
    });
    let keepalive =
        KeepAlive::new().interval(Duration::from_secs(state.config.live.keepalive_secs));
    let mut response = Sse::new(greeting.chain(stream))
        .keep_alive(keepalive)
        .into_response();
    sse_headers(response.headers_mut());
    Ok(response)
}

/// The event types `/events` carries.
pub const EVENT_TYPES: &[&str] = &[
    "flows/created",
    "flows/updated",
    "flows/deleted",
    "flows/grains_added",
    "flows/grains_deleted",
    "sources/created",
    "sources/updated",
    "sources/deleted",
];

fn store_event(e: &StoreEvent) -> Event {
    let body = json!({
        "event_type": e.event_type,
        "event_timestamp": e.timestamp.to_string(),
        "event": e.body,
    });
    Event::default()
        .event(e.event_type)
        .id(e.id.to_string())
        .data(body.to_string())
}

enum EventItem {
    Event(StoreEvent),
    Reset,
    Shutdown,
}

struct EventFeed {
    state: AppState,
    receiver: broadcast::Receiver<StoreEvent>,
    backlog: VecDeque<StoreEvent>,
    /// The id of the last event passed on (whether or not the filter kept it).
    last: EventId,
    reset_pending: bool,
}

impl EventFeed {
    async fn next(&mut self) -> Option<EventItem> {
        if self.reset_pending {
            self.reset_pending = false;
            return Some(EventItem::Reset);
        }
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if e.id <= self.last {
                    continue;
                }
                self.last = e.id;
                return Some(EventItem::Event(e));
            }
            if self.state.shutdown.is_cancelled() {
                return None;
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(e) => self.backlog.push_back(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the broadcast: catch up from the retained window.
                        let (resume, position, receiver) =
                            self.state.store.events().subscribe(Some(self.last));
                        self.receiver = receiver;
                        self.last = position;
                        match resume {
                            Resume::From(backlog) => self.backlog = backlog.into(),
                            Resume::Reset => return Some(EventItem::Reset),
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = self.state.shutdown.cancelled() => return Some(EventItem::Shutdown),
            }
        }
    }
}

//! `/flows/{id}/grains` and `/flows/{id}/grains/{timestamp}`: grain reads as streams fed
//! by the read session's grain generator, uploads decoded and committed as they stream
//! in, single grains, and deletes.

use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawPathParams, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use serde_json::json;

use super::body::{gsf_body, gsf_frame, gsf_pages_body, ndjson_body};
use super::ingest::{BodyDecoder, BodyFormat, Decoded};
use super::params::{
    Accept, GrainMedia, Path, QueryParams, content_type, negotiate, parse_timestamp, parse_uuid,
    path_param,
};
use super::sessions::{FlowRead, FlowWrite};
use super::{ApiError, ApiResult, AppState, live};
use crate::grain::Grain;
use crate::store::{
    BatchOutcome, BatchResult, FlowId, GrainQuery, Order, ReadSession, StoreError, WriteSession,
};
use crate::time::{Bound, TimeRange, Timestamp};

/// `GET /flows/{id}/grains`: the grains of a timerange as a GSF or NDJSON stream.
pub async fn read(
    State(state): State<AppState>,
    FlowRead { flow, session }: FlowRead,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let query = QueryParams::parse(
        raw.as_deref(),
        &[
            "timerange",
            "count",
            "reverse_order",
            "payload",
            "follow",
            "after",
            "from",
        ],
        false,
    )?;
    let media = negotiate(
        headers.get(header::ACCEPT),
        &[GrainMedia::Gsf, GrainMedia::Ndjson, GrainMedia::EventStream],
    )?;
    if media == GrainMedia::EventStream {
        for name in ["timerange", "count", "reverse_order", "follow"] {
            if query.get(name).is_some() {
                return Err(ApiError::bad_request(format!(
                    "`{name}` does not apply to live subscriptions (text/event-stream); use `after`, `from` or Last-Event-ID"
                )));
            }
        }
        // A live feed opens a fresh snapshot for each read: the extractor's session has
        // done its part (the flow exists) and must not hold a place in the pool.
        drop(session);
        return live::subscribe(state, flow, query, &headers).await;
    }
    for name in ["after", "from"] {
        if query.get(name).is_some() {
            return Err(ApiError::bad_request(format!(
                "`{name}` applies to live subscriptions (Accept: text/event-stream); range reads use `timerange`"
            )));
        }
    }
    let range = query
        .timerange("timerange")?
        .unwrap_or_else(TimeRange::eternity);
    let count = query.u64("count")?;
    let order = match query.bool("reverse_order")? {
        Some(true) => Order::Descending,
        _ => Order::Ascending,
    };
    let follow = query.bool("follow")?.unwrap_or(false);
    if follow && order == Order::Descending {
        return Err(ApiError::bad_request(
            "`follow=true` reads forwards; it cannot be combined with `reverse_order=true`",
        ));
    }
    let with_payload = match query.get("payload") {
        None | Some("inline") => true,
        Some("none") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter `payload` must be `inline` or `none`, not {other:?}"
            )));
        }
    };
    // GSF always carries payloads: `payload=none` shapes the JSON forms only.
    let with_payload = with_payload || media == GrainMedia::Gsf;
    if media == GrainMedia::Gsf && !follow {
        // Grain blocks built by the store a page at a time, without a `Grain` each.
        let (local_id, start, end) = gsf_frame(flow)?;
        let pages = session
            .gsf_pages(
                GrainQuery {
                    range,
                    order,
                    count,
                    with_payload,
                },
                local_id,
            )
            .inspect(move |item| {
                if let Err(e) = item {
                    tracing::error!(flow_id = %flow, error = %e, "grain stream failed; the response is cut short");
                }
            });
        // The body owns the page stream, which owns the session.
        drop(session);
        let body = gsf_pages_body(start, pages, end, state.metrics.clone());
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(media.mime()))],
            Body::from_stream(body),
        )
            .into_response());
    }
    let grains: futures::stream::BoxStream<'static, Result<Grain, StoreError>> = if follow {
        drop(session);
        follow_stream(&state, flow, range, count, with_payload)?
    } else {
        let grains = session.grains(GrainQuery {
            range,
            order,
            count,
            with_payload,
        });
        // The body owns the grain stream, which owns the session: the session ends when
        // the response does, however it ends.
        drop(session);
        grains.boxed()
    };
    let metrics = state.metrics.clone();
    let logged = grains.inspect(move |item| {
        if let Err(e) = item {
            tracing::error!(flow_id = %flow, error = %e, "grain stream failed; the response is cut short");
        }
    });
    let body = match media {
        GrainMedia::Gsf => Body::from_stream(gsf_body(flow, logged, metrics)?),
        _ => Body::from_stream(ndjson_body(logged, with_payload, metrics)),
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(media.mime()))],
        body,
    )
        .into_response())
}

/// The grains of a `follow=true` read: the stored ones of the range, then new ones as
/// they are committed, until the range's end (if any) is passed or the flow is deleted.
fn follow_stream(
    state: &AppState,
    flow: FlowId,
    range: TimeRange,
    count: Option<u64>,
    with_payload: bool,
) -> ApiResult<futures::stream::BoxStream<'static, Result<Grain, StoreError>>> {
    let Some((start, end)) = range.bounds() else {
        return Err(ApiError::bad_request(
            "`follow=true` needs a non-empty timerange",
        ));
    };
    let feed = live::LiveFeed::new(state, flow, start, end, with_payload);
    let grains = feed
        .into_stream()
        .take_while(|item| {
            futures::future::ready(matches!(item, Ok(live::LiveItem::Grain(_)) | Err(_)))
        })
        .filter_map(|item| {
            futures::future::ready(match item {
                Ok(live::LiveItem::Grain(grain)) => Some(Ok(*grain)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    Ok(match count {
        Some(n) => grains
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .boxed(),
        None => grains.boxed(),
    })
}

/// `POST /flows/{id}/grains`: a GSF or NDJSON body of any length, decoded as it arrives
/// and committed in batches.
pub async fn write(
    State(state): State<AppState>,
    FlowWrite { mut session, .. }: FlowWrite,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let format = body_format(&headers)?;
    let mut upload = Upload {
        decoder: BodyDecoder::new(format, state.config.limits.max_grain_bytes),
        staged: Vec::new(),
        in_flight: None,
        commit_due: None,
        received: 0,
        grains: 0,
        max_grains: state.config.limits.max_grains_per_request,
    };
    let idle = Duration::from_millis(state.config.server.body_idle_timeout_ms);
    let linger = Duration::from_millis(state.config.server.commit_linger_ms);
    let mut chunks = body.into_data_stream();
    // The body must complete a grain at least every `idle`: a client trickling bytes
    // (slow loris) holds a write session as surely as a silent one.
    let mut progress_deadline = tokio::time::Instant::now() + idle;
    loop {
        // Whenever the body has nothing more for now, what is staged starts committing,
        // so live readers see the grains within milliseconds even from a slow, long
        // upload. The commit is not waited for: the body goes on being received while
        // the batch is made durable, and a batch staged meanwhile starts committing as
        // soon as the one before it is done. A body that pauses only for its next
        // packet is still arriving: the commit starts `server.commit_linger_ms` after
        // the first pause with grains staged (or when the batch is full), so that a fast
        // upload is committed in a few full batches, not in a small one per pause (each
        // commit costs a sync, or a transaction); the delay is counted once per batch,
        // however often the body pauses, and never outlasts the idle deadline.
        let next = match chunks.next().now_or_never() {
            Some(next) => next,
            None => {
                let waited = loop {
                    if upload.in_flight.is_none() && session.staged() > 0 {
                        let now = tokio::time::Instant::now();
                        let due = *upload.commit_due.get_or_insert(now + linger);
                        if now < due {
                            let until = due.min(progress_deadline);
                            if let Ok(next) = tokio::time::timeout_at(until, chunks.next()).await {
                                break Ok(next);
                            }
                            if tokio::time::Instant::now() >= progress_deadline {
                                break Err(());
                            }
                        }
                        upload.start(&mut session);
                    }
                    let Some((pending, _)) = upload.in_flight.as_mut() else {
                        break tokio::time::timeout_at(progress_deadline, chunks.next())
                            .await
                            .map_err(|_| ());
                    };
                    tokio::select! {
                        next = tokio::time::timeout_at(progress_deadline, chunks.next()) => {
                            break next.map_err(|_| ());
                        }
                        joined = pending => upload.absorb(&mut session, joined)?,
                    }
                };
                match waited {
                    Ok(next) => next,
                    Err(_) => {
                        let problem = ApiError::body_idle(
                            "server.body_idle_timeout_ms",
                            format!("the body completed no grain for {} ms", idle.as_millis()),
                        );
                        return Err(upload.fault(&mut session, problem).await);
                    }
                }
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                let problem = ApiError::bad_body(format!("the body could not be read: {e}"));
                return Err(upload.fault(&mut session, problem).await);
            }
            Some(Ok(chunk)) => {
                upload.received += chunk.len() as u64;
                state.metrics.add_received(chunk.len() as u64);
                upload.decoder.push(chunk);
                loop {
                    match upload.decoder.next_grain() {
                        Ok(Some(decoded)) => {
                            upload.stage(&mut session, decoded).await?;
                            progress_deadline = tokio::time::Instant::now() + idle;
                        }
                        Ok(None) => break,
                        Err(problem) => return Err(upload.fault(&mut session, problem).await),
                    }
                }
            }
        }
    }
    if upload.received == 0 {
        return Err(ApiError::bad_body(
            "the body is empty; send a GSF stream or NDJSON grains",
        ));
    }
    match upload.decoder.finish() {
        Ok(Some(decoded)) => upload.stage(&mut session, decoded).await?,
        Ok(None) => {}
        Err(problem) => return Err(upload.fault(&mut session, problem).await),
    }
    upload.commit(&mut session).await?;
    let totals = session.totals();
    state.metrics.add_grains_written(totals.written);
    // 201 when anything new was stored; 200 when every grain was an identical re-send.
    let status = if totals.written > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(write_summary(&totals))).into_response())
}

/// The success body of a write.
fn write_summary(totals: &BatchOutcome) -> serde_json::Value {
    let timerange = match (totals.first, totals.last) {
        (Some(first), Some(last)) => {
            TimeRange::new(Bound::Inclusive(first), Bound::Inclusive(last))
        }
        _ => TimeRange::empty(),
    };
    json!({
        "written": totals.written,
        "unchanged": totals.unchanged,
        "timerange": timerange.to_string(),
    })
}

fn body_format(headers: &HeaderMap) -> ApiResult<BodyFormat> {
    match content_type(headers).as_deref() {
        Some("application/x-gsf") => Ok(BodyFormat::Gsf),
        Some("application/x-ndjson") => Ok(BodyFormat::Ndjson),
        Some(other) => Err(ApiError::unsupported_media(format!(
            "grains are written as application/x-gsf or application/x-ndjson, not {other}"
        ))),
        None => Err(ApiError::unsupported_media(
            "Content-Type is missing; grains are written as application/x-gsf or application/x-ndjson",
        )),
    }
}

/// The state of one upload.
struct Upload {
    decoder: BodyDecoder,
    /// (origin timestamp, body offset) of the grains staged and not yet committed, to
    /// say where a conflicting grain was.
    staged: Vec<(Timestamp, u64)>,
    /// The commit in flight, if any, and the (timestamp, offset) of its grains: a full
    /// batch is made durable while the next one is received and decoded, so receiving
    /// and syncing overlap instead of taking turns.
    in_flight: Option<(PendingCommit, Vec<(Timestamp, u64)>)>,
    /// When the staged grains start committing if the body pauses: set at the first
    /// pause after they were staged, cleared when they start committing.
    commit_due: Option<tokio::time::Instant>,
    received: u64,
    grains: u64,
    /// `limits.max_grains_per_request`; 0 for no limit.
    max_grains: u64,
}

/// A commit started (as its own task, so it proceeds while the body is read) and not
/// yet awaited.
type PendingCommit = tokio::task::JoinHandle<Result<BatchResult, StoreError>>;

impl Upload {
    async fn stage(&mut self, session: &mut WriteSession, decoded: Decoded) -> ApiResult<()> {
        let Decoded { grain, offset } = decoded;
        let timestamp = grain.origin_timestamp();
        if self.max_grains > 0 && self.grains >= self.max_grains {
            let problem = ApiError::too_large(
                "limits.max_grains_per_request",
                format!(
                    "the request holds more than {} grains; send the rest in another request",
                    self.max_grains
                ),
            )
            .with_offset(offset);
            return Err(self.fault(session, problem).await);
        }
        if let Err(e) = session.stage(grain) {
            let problem = ApiError::from(e).with_offset(offset);
            return Err(self.fault(session, problem).await);
        }
        self.grains += 1;
        self.staged.push((timestamp, offset));
        if session.should_commit() {
            // At most one commit in flight: wait for the previous batch, then start
            // this one and go back to the body.
            self.settle(session).await?;
            self.start(session);
        }
        Ok(())
    }

    /// Starts committing what is staged, as its own task. The caller has settled the
    /// commit before it.
    fn start(&mut self, session: &mut WriteSession) {
        debug_assert!(self.in_flight.is_none());
        self.commit_due = None;
        let pending: PendingCommit = tokio::spawn(session.start_commit());
        self.in_flight = Some((pending, std::mem::take(&mut self.staged)));
    }

    /// Waits for the commit in flight, if any.
    async fn settle(&mut self, session: &mut WriteSession) -> ApiResult<()> {
        let Some((pending, _)) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = pending.await;
        self.absorb(session, joined)
    }

    /// Takes the result of the commit in flight, which has finished with `joined`.
    fn absorb(
        &mut self,
        session: &mut WriteSession,
        joined: Result<Result<BatchResult, StoreError>, tokio::task::JoinError>,
    ) -> ApiResult<()> {
        let Some((_, staged)) = self.in_flight.take() else {
            return Ok(());
        };
        let joined = joined
            .map_err(|e| StoreError::Unavailable(format!("commit task failed: {e}")))
            .and_then(|result| result);
        let result = session.finish_commit(joined);
        Self::report(session, result, &staged)
    }

    /// Commits everything received so far and waits until it is durable.
    async fn commit(&mut self, session: &mut WriteSession) -> ApiResult<()> {
        self.settle(session).await?;
        let result = session.commit().await;
        let staged = std::mem::take(&mut self.staged);
        Self::report(session, result, &staged)
    }

    /// Turns a commit's result into the request's error, naming the offset of a
    /// conflicting grain.
    fn report(
        session: &WriteSession,
        result: Result<BatchOutcome, StoreError>,
        staged: &[(Timestamp, u64)],
    ) -> ApiResult<()> {
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict {
                timestamp,
                committed,
            }) => {
                let offset = staged
                    .iter()
                    .find(|(t, _)| *t == timestamp)
                    .map(|(_, o)| *o);
                let problem = ApiError::from(StoreError::Conflict {
                    timestamp,
                    committed,
                });
                Err(match offset {
                    Some(offset) => problem.with_offset(offset),
                    None => problem,
                })
            }
            Err(e) => Err(ApiError::from(e).with_committed(session.totals().committed())),
        }
    }

    /// Commits every complete grain before a fault, then reports the fault with how many
    /// grains the request committed.
    async fn fault(&mut self, session: &mut WriteSession, problem: ApiError) -> ApiError {
        if let Err(commit_problem) = self.commit(session).await {
            return commit_problem;
        }
        problem.with_committed(session.totals().committed())
    }
}

/// `DELETE /flows/{id}/grains?timerange=`: deletes the grains of a range.
pub async fn delete_range(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let query = QueryParams::parse(raw.as_deref(), &["timerange"], false)?;
    let flow = parse_uuid("flow id", &id)?;
    let range = query.timerange("timerange")?.ok_or_else(|| {
        ApiError::bad_request(
            "query parameter `timerange` is required; give `_` to delete every grain of the flow",
        )
    })?;
    let deleted = state.store.delete_grains(flow, &range).await?;
    Ok(Json(
        json!({ "deleted": deleted, "timerange": range.to_string() }),
    ))
}

fn path_grain(id: &str, timestamp: &str) -> ApiResult<(FlowId, Timestamp)> {
    Ok((
        parse_uuid("flow id", id)?,
        parse_timestamp("timestamp", timestamp)?,
    ))
}

/// `GET /flows/{id}/grains/{timestamp}`: one grain, by default its raw payload with its
/// header fields in `Grain-*` headers.
pub async fn get_one(
    State(state): State<AppState>,
    FlowRead { flow, session }: FlowRead,
    path: RawPathParams,
    RawQuery(raw): RawQuery,
    Accept(accept): Accept,
) -> ApiResult<Response> {
    let timestamp = path_param(&path, "timestamp").unwrap_or("");
    read_one(
        &state,
        flow,
        session,
        timestamp,
        raw.as_deref(),
        accept.as_ref(),
    )
    .await
}

/// The single-grain read once its flow's session is open: of [`get_one`], and of the
/// same route served without the router (see [`super::direct`]).
pub async fn read_one(
    state: &AppState,
    flow: FlowId,
    session: ReadSession,
    timestamp: &str,
    query: Option<&str>,
    accept: Option<&HeaderValue>,
) -> ApiResult<Response> {
    QueryParams::parse(query, &[], false)?;
    let timestamp = parse_timestamp("timestamp", timestamp)?;
    let media = negotiate(
        accept,
        &[
            GrainMedia::Raw,
            GrainMedia::Json,
            GrainMedia::Gsf,
            GrainMedia::Ndjson,
        ],
    )?;
    let grain = session
        .get(timestamp, true)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("flow {flow} has no grain at {timestamp}")))?;
    drop(session);
    state.metrics.add_grains_read(1);
    let response = match media {
        GrainMedia::Raw => {
            let mut response = Body::from(grain.payload().clone()).into_response();
            *response.headers_mut() = grain_headers(&grain);
            response
        }
        GrainMedia::Json | GrainMedia::Ndjson => {
            let mut body = grain.to_json(true);
            if media == GrainMedia::Ndjson {
                body.push(b'\n');
            }
            let mut response = Body::from(body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(media.mime()));
            response
        }
        _ => {
            let stream = futures::stream::iter([Ok::<_, StoreError>(grain)]);
            let body = gsf_body(flow, stream, state.metrics.clone())?;
            let mut response = Body::from_stream(body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(media.mime()));
            response
        }
    };
    Ok(response)
}

/// The response headers of a raw single-grain read, names and order fixed: filled in
/// for each grain by [`grain_headers`]; with and without `Grain-Creation-Timestamp`.
static GRAIN_HEADERS: LazyLock<[HeaderMap; 2]> = LazyLock::new(|| {
    let names: &[&'static str] = &[
        "grain-type",
        "grain-flow-id",
        "grain-source-id",
        "grain-origin-timestamp",
        "grain-sync-timestamp",
        "grain-creation-timestamp",
        "grain-rate",
        "grain-duration",
    ];
    let map = |creation: bool| {
        let mut headers = HeaderMap::with_capacity(16);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        for name in names {
            if creation || *name != "grain-creation-timestamp" {
                headers.insert(HeaderName::from_static(name), HeaderValue::from_static(""));
            }
        }
        headers
    };
    [map(true), map(false)]
});

/// `Content-Type: application/octet-stream` and the `Grain-*` headers of `grain`.
///
/// On the path of every single-grain read: the map is a copy of one made at start (no
/// name hashed, no entry inserted), its values are written into one buffer that they
/// all share, and hyper and the middleware add theirs after.
fn grain_headers(grain: &Grain) -> HeaderMap {
    let mut text = BytesMut::with_capacity(256);
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let mut slice = |value: &[u8]| {
        let start = text.len();
        text.extend_from_slice(value);
        start..text.len()
    };
    let flow = slice(
        grain
            .flow_id()
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    let source = slice(
        grain
            .source_id()
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    let origin = slice(grain.origin_timestamp().text().as_str().as_bytes());
    let sync = slice(grain.sync_timestamp().text().as_str().as_bytes());
    let creation = grain
        .creation_timestamp()
        .map(|created| slice(created.text().as_str().as_bytes()));
    let mut ratio = [0u8; 48];
    let rate = grain.rate();
    let rate = slice(ratio_text(&mut ratio, rate.numerator, rate.denominator));
    let duration = grain.duration();
    let duration = slice(ratio_text(
        &mut ratio,
        duration.numerator,
        duration.denominator,
    ));
    let text = text.freeze();
    let value = |range: &std::ops::Range<usize>| {
        HeaderValue::from_maybe_shared(text.slice(range.clone()))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    };
    let mut headers = GRAIN_HEADERS[usize::from(creation.is_none())].clone();
    for (name, slot) in headers.iter_mut() {
        *slot = match name.as_str() {
            "grain-type" => HeaderValue::from_static(grain.grain_type().as_str()),
            "grain-flow-id" => value(&flow),
            "grain-source-id" => value(&source),
            "grain-origin-timestamp" => value(&origin),
            "grain-sync-timestamp" => value(&sync),
            "grain-creation-timestamp" => match &creation {
                Some(range) => value(range),
                None => continue,
            },
            "grain-rate" => value(&rate),
            "grain-duration" => value(&duration),
            _ => continue,
        };
    }
    headers
}

/// `n/d` written into `buf`.
fn ratio_text(buf: &mut [u8; 48], n: i64, d: i64) -> &[u8] {
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (n, d) = (a.format(n).as_bytes(), b.format(d).as_bytes());
    buf[..n.len()].copy_from_slice(n);
    buf[n.len()] = b'/';
    buf[n.len() + 1..n.len() + 1 + d.len()].copy_from_slice(d);
    &buf[..n.len() + 1 + d.len()]
}

/// `PUT /flows/{id}/grains/{timestamp}`: one grain, as a JSON grain (`application/json`)
/// or a GSF stream holding exactly that grain. 201 when stored, 200 when identical to the
/// stored one, 409 when a different grain is there.
pub async fn put_one(
    State(state): State<AppState>,
    Path((id, timestamp)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let (flow, timestamp) = path_grain(&id, &timestamp)?;
    let format = match content_type(&headers).as_deref() {
        Some("application/json" | "application/x-ndjson") => BodyFormat::Ndjson,
        Some("application/x-gsf") => BodyFormat::Gsf,
        other => {
            return Err(ApiError::unsupported_media(format!(
                "a single grain is written as application/json or application/x-gsf, not {}",
                other.unwrap_or("a body without Content-Type")
            )));
        }
    };
    let max = state.config.limits.max_grain_bytes;
    let limit = max / 3 * 4 + (128 << 10);
    // An upload, so not under the deadline for response headers: the grain must arrive
    // whole within the body idle timeout, as each grain of a POST must.
    let idle = Duration::from_millis(state.config.server.body_idle_timeout_ms);
    let read = tokio::time::timeout(idle, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(ApiError::body_idle(
            "server.body_idle_timeout_ms",
            format!(
                "the grain did not arrive whole within {} ms",
                idle.as_millis()
            ),
        ));
    };
    let bytes = read.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::too_large("limits.max_grain_bytes", "the grain is too large")
        } else {
            ApiError::bad_body(format!("cannot read the body: {e}"))
        }
    })?;
    state.metrics.add_received(bytes.len() as u64);
    let mut decoder = BodyDecoder::new(format, max);
    decoder.push(bytes);
    let mut grains = Vec::new();
    while let Some(decoded) = decoder.next_grain()? {
        grains.push(decoded.grain);
    }
    if let Some(decoded) = decoder.finish()? {
        grains.push(decoded.grain);
    }
    let grain = match <[Grain; 1]>::try_from(grains) {
        Ok([grain]) => grain,
        Err(grains) => {
            return Err(ApiError::bad_body(format!(
                "the body must hold exactly one grain, not {}",
                grains.len()
            )));
        }
    };
    if grain.origin_timestamp() != timestamp {
        return Err(ApiError::bad_body(format!(
            "the grain's origin_timestamp {} is not the timestamp of the path {timestamp}",
            grain.origin_timestamp()
        )));
    }
    let mut session = state.store.open_write(flow).await?;
    session.stage(grain)?;
    let outcome = session.commit().await?;
    state.metrics.add_grains_written(outcome.written);
    let status = if outcome.written > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(write_summary(&outcome))).into_response())
}

/// `DELETE /flows/{id}/grains/{timestamp}`: one grain.
pub async fn delete_one(
    State(state): State<AppState>,
    Path((id, timestamp)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    QueryParams::parse(raw.as_deref(), &[], false)?;
    let (flow, timestamp) = path_grain(&id, &timestamp)?;
    let range = TimeRange::new(Bound::Inclusive(timestamp), Bound::Inclusive(timestamp));
    match state.store.delete_grains(flow, &range).await? {
        0 => Err(ApiError::not_found(format!(
            "flow {flow} has no grain at {timestamp}"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

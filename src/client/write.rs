//! [`FlowWriter`]: grains streamed into chunked GSF POSTs, committed by the server as
//! they arrive, with what was committed reported by `flush` and `close`.
//!
//! Each request is one `POST /flows/{id}/grains` whose body is fed by a channel
//! (`reqwest::Body::wrap_stream`): `write` encodes the grain (header chunk + the payload
//! `Bytes`, not copied) and sends it down the channel, so a slow server slows the writer
//! instead of growing its memory. Small chunks already queued when the connection takes
//! the next are joined into one body frame (`coalesced`). A request ends at `flush`, at
//! `close`, or when it reaches the configured batch size, and the next `write` starts
//! another.
//!
//! Retries are safe because re-sending a grain identical to a stored one is a no-op on
//! the server: the writer keeps the chunks of the request in flight (references, not
//! copies) and, when the request fails for a passing reason (503, a reset connection),
//! sends them again in a new request after a backoff.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::{ClientError, ClientResult};
use super::http::{Connection, check};
use crate::grain::Grain;
use crate::gsf::{GsfDateTime, GsfEncoder};
use crate::store::FlowId;
use crate::time::TimeRange;

/// How a [`FlowWriter`] sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteConfig {
    /// End a request (and wait for its commit) once its body holds this many bytes;
    /// `None`: one request until `flush` or `close`.
    pub batch_bytes: Option<u64>,
    /// End a request once it holds this many grains; `None`: no limit.
    pub batch_grains: Option<u64>,
    /// Keep the chunks of the request in flight to send them again after a passing
    /// failure. Without it, such a failure is reported (grains re-sent later are safe).
    pub replay: bool,
    /// Chunks queued between `write` and the connection (two per grain).
    pub queue_chunks: usize,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            batch_bytes: Some(64 << 20),
            batch_grains: None,
            replay: true,
            queue_chunks: 64,
        }
    }
}

/// What the server committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// Grains stored anew.
    pub written: u64,
    /// Grains identical to stored ones (safe re-sends).
    pub unchanged: u64,
    /// The origin timestamps of the grains accepted, first to last; `()` when none.
    pub timerange: TimeRange,
}

impl Default for WriteSummary {
    fn default() -> Self {
        WriteSummary {
            written: 0,
            unchanged: 0,
            timerange: TimeRange::empty(),
        }
    }
}

impl WriteSummary {
    /// Grains accepted: written or unchanged.
    pub fn committed(&self) -> u64 {
        self.written + self.unchanged
    }

    fn add(&mut self, other: &WriteSummary) {
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.timerange = if self.timerange.is_empty() {
            other.timerange
        } else if other.timerange.is_empty() {
            self.timerange
        } else {
            self.timerange.extend_to_encompass(&other.timerange)
        };
    }
}

/// The success body of a write, as sent.
#[derive(Deserialize)]
struct SummaryBody {
    written: u64,
    unchanged: u64,
    timerange: TimeRange,
}

/// Writes one flow; opened by [`FlowProvider::open_write`](super::FlowProvider::open_write).
///
/// Call [`close`](Self::close) to learn what was committed. A writer dropped without it
/// abandons its request in flight (logged as a warning): the server keeps every
/// complete grain it had received, and nothing tells the caller how many that was.
pub struct FlowWriter {
    conn: Arc<Connection>,
    flow: FlowId,
    config: WriteConfig,
    request: Option<Request>,
    /// What earlier requests committed.
    totals: WriteSummary,
    /// Grains given to `write` and not yet acknowledged by a response.
    unacknowledged: u64,
    closed: bool,
}

/// One POST in flight.
struct Request {
    /// Feeds the body; dropped to end it.
    sender: Option<mpsc::Sender<io::Result<Bytes>>>,
    /// Set before the sender is dropped on purpose: a body whose sender goes away
    /// without it (a dropped writer) ends in error, so that the server does not take it
    /// for a complete upload.
    complete: Arc<AtomicBool>,
    /// The request and its response.
    task: JoinHandle<ClientResult<WriteSummary>>,
    /// Chunks sent, for a resend; `None` once replay is off.
    sent: Option<Vec<Bytes>>,
    /// Bytes in the body so far.
    bytes: u64,
    /// Grains in the body so far.
    grains: u64,
}

/// Frames of the body are joined up to this size from small queued chunks.
const FRAME_BYTES: usize = 64 << 10;

/// The body's chunks as they are queued, with the small ones already waiting behind one
/// joined into a single frame of up to [`FRAME_BYTES`]: a writer ahead of the connection
/// sends fewer, larger frames (the server handles a small grain's header and payload,
/// two chunks, in one), and one that is not loses no time, since nothing waits to be
/// joined. A chunk of `FRAME_BYTES` or more goes alone, uncopied.
fn coalesced(
    receiver: mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    type Held = Option<io::Result<Bytes>>;
    futures::stream::unfold(
        (receiver, None::<io::Result<Bytes>>),
        |(mut receiver, held): (mpsc::Receiver<io::Result<Bytes>>, Held)| async move {
            let first = match held {
                Some(item) => item,
                None => receiver.recv().await?,
            };
            let first = match first {
                Ok(chunk) if chunk.len() < FRAME_BYTES => chunk,
                other => return Some((other, (receiver, None))),
            };
            let mut frame: Option<bytes::BytesMut> = None;
            let mut held = None;
            while let Ok(next) = receiver.try_recv() {
                let len = frame.as_ref().map_or(first.len(), |f| f.len());
                match next {
                    Ok(chunk) if len + chunk.len() <= FRAME_BYTES => {
                        let frame = frame.get_or_insert_with(|| {
                            let size = (first.len() + chunk.len()).max(FRAME_BYTES / 16);
                            let mut joined = bytes::BytesMut::with_capacity(size);
                            joined.extend_from_slice(&first);
                            joined
                        });
                        frame.extend_from_slice(&chunk);
                    }
                    other => {
                        held = Some(other);
                        break;
                    }
                }
            }
            let out = frame.map_or(first, bytes::BytesMut::freeze);
            Some((Ok(out), (receiver, held)))
        },
    )
}

impl Request {
    fn start(conn: &Arc<Connection>, flow: FlowId, config: &WriteConfig) -> ClientResult<Request> {
        let guard = conn.in_flight()?;
        let (sender, receiver) = mpsc::channel(config.queue_chunks.max(2));
        let complete = Arc::new(AtomicBool::new(false));
        let ended = complete.clone();
        let end = futures::stream::once(async move {
            (!ended.load(Ordering::Acquire)).then(|| {
                Err(io::Error::other(
                    "the flow writer was dropped without close()",
                ))
            })
        })
        .filter_map(futures::future::ready);
        let body = coalesced(receiver).chain(end);
        let request = conn
            .request(Method::POST, &format!("flows/{flow}/grains"))?
            .header(CONTENT_TYPE, "application/x-gsf")
            .body(reqwest::Body::wrap_stream(body));
        let task = tokio::spawn(async move {
            let _in_flight = guard;
            let response = check(request.send().await?).await?;
            let body: SummaryBody = super::flows::json(response).await?;
            Ok(WriteSummary {
                written: body.written,
                unchanged: body.unchanged,
                timerange: body.timerange,
            })
        });
        Ok(Request {
            sender: Some(sender),
            complete,
            task,
            sent: config.replay.then(Vec::new),
            bytes: 0,
            grains: 0,
        })
    }

    /// Sends a chunk down the body; `false` when the request has ended (its outcome says
    /// why).
    async fn send(&mut self, chunk: Bytes) -> bool {
        match &self.sender {
            Some(sender) => sender.send(Ok(chunk)).await.is_ok(),
            None => false,
        }
    }

    /// Ends the body and waits for the response.
    async fn outcome(&mut self) -> ClientResult<WriteSummary> {
        self.complete.store(true, Ordering::Release);
        self.sender = None;
        match (&mut self.task).await {
            Ok(outcome) => outcome,
            Err(e) => Err(ClientError::Protocol(format!(
                "the write request failed: {e}"
            ))),
        }
    }
}

impl FlowWriter {
    pub(crate) fn new(conn: Arc<Connection>, flow: FlowId, config: WriteConfig) -> FlowWriter {
        FlowWriter {
            conn,
            flow,
            config,
            request: None,
            totals: WriteSummary::default(),
            unacknowledged: 0,
            closed: false,
        }
    }

    /// The flow written.
    pub fn flow_id(&self) -> FlowId {
        self.flow
    }

    /// What the requests finished so far committed.
    pub fn committed(&self) -> &WriteSummary {
        &self.totals
    }

    /// Sends a grain. It is stored once the server commits it (within milliseconds for
    /// a steady stream); [`flush`](Self::flush) waits for that. The grain must belong to
    /// the writer's flow.
    pub async fn write(&mut self, grain: &Grain) -> ClientResult<()> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if grain.flow_id() != self.flow {
            return Err(ClientError::InvalidInput(format!(
                "the grain at {} belongs to flow {}, not to the writer's flow {}",
                grain.origin_timestamp(),
                grain.flow_id(),
                self.flow
            )));
        }
        if self.request.is_none() {
            let mut encoder = GsfEncoder::new(uuid::Uuid::new_v4(), GsfDateTime::now());
            encoder.add_flow_segment(self.flow)?;
            let head = encoder.start()?;
            self.request = Some(Request::start(&self.conn, self.flow, &self.config)?);
            self.send(head).await?;
        }
        let chunks = crate::gsf::encode_grain(1, grain);
        self.send(chunks.header).await?;
        self.send(chunks.payload).await?;
        self.unacknowledged += 1;
        let full = self.request.as_mut().is_some_and(|r| {
            r.grains += 1;
            self.config.batch_bytes.is_some_and(|b| r.bytes >= b)
                || self.config.batch_grains.is_some_and(|g| r.grains >= g)
        });
        if full {
            self.finish_request().await?;
        }
        Ok(())
    }

    /// Ends the request in flight and waits until the server has committed every grain
    /// written so far.
    pub async fn flush(&mut self) -> ClientResult<()> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        self.finish_request().await
    }

    /// Flushes and ends the writer; returns what every request of the writer committed.
    /// A failure is [`ClientError::PartialWrite`] (how many grains were committed, where
    /// the body went wrong) or the failure of the transport.
    pub async fn close(mut self) -> ClientResult<WriteSummary> {
        let result = self.finish_request().await;
        self.closed = true;
        result.map(|()| self.totals)
    }

    /// Sends a chunk of the current request, recovering from a request that ended early.
    async fn send(&mut self, chunk: Bytes) -> ClientResult<()> {
        let Some(request) = self.request.as_mut() else {
            return Err(ClientError::Protocol("no write request in flight".into()));
        };
        request.bytes += chunk.len() as u64;
        if let Some(sent) = &mut request.sent {
            sent.push(chunk.clone());
            if self.config.batch_bytes.is_none() && request.bytes > 256 << 20 {
                // Without batches the request may grow without end: stop keeping it.
                request.sent = None;
            }
        }
        if request.send(chunk).await {
            return Ok(());
        }
        let failure = match request.outcome().await {
            Err(e) => e,
            Ok(_) => {
                ClientError::Protocol("the server answered before the body was complete".into())
            }
        };
        self.recover(failure).await
    }

    /// Ends the body of the request in flight and takes in its outcome.
    async fn finish_request(&mut self) -> ClientResult<()> {
        if self.request.is_none() {
            return Ok(());
        }
        let terminator = Bytes::from_static(b"grai\0\0\0\0");
        self.send(terminator).await?;
        loop {
            let Some(request) = self.request.as_mut() else {
                return Ok(());
            };
            match request.outcome().await {
                Ok(summary) => {
                    self.request = None;
                    self.totals.add(&summary);
                    self.unacknowledged = 0;
                    return Ok(());
                }
                Err(e) => self.recover(e).await?,
            }
        }
    }

    /// After the request in flight failed: sends it again (all of it, safe since
    /// identical grains are no-ops) in a new request after a backoff when the failure is
    /// a passing one and the chunks were kept; otherwise returns the failure, typed.
    async fn recover(&mut self, mut failure: ClientError) -> ClientResult<()> {
        let mut attempt = 0u32;
        loop {
            let old = self.request.take();
            let sent = old.and_then(|r| r.sent);
            let Some(sent) = sent.filter(|_| failure.is_retryable()) else {
                return Err(self.typed(failure));
            };
            attempt += 1;
            if attempt >= self.conn.retry.max_attempts {
                return Err(ClientError::Unavailable {
                    attempts: attempt,
                    last: Box::new(self.typed(failure)),
                });
            }
            let wait = self.conn.retry.backoff(attempt - 1, failure.retry_after());
            tracing::debug!(flow_id = %self.flow, attempt, wait_ms = wait.as_millis() as u64, error = %failure, "write request failed; sending it again");
            self.conn.pause(wait).await?;
            let mut request = Request::start(&self.conn, self.flow, &self.config)?;
            let mut complete = true;
            for chunk in &sent {
                request.bytes += chunk.len() as u64;
                if !request.send(chunk.clone()).await {
                    complete = false;
                    break;
                }
            }
            request.grains = self.unacknowledged;
            request.sent = Some(sent);
            if complete {
                self.request = Some(request);
                return Ok(());
            }
            failure = match request.outcome().await {
                Err(e) => e,
                Ok(_) => {
                    ClientError::Protocol("the server answered before the body was complete".into())
                }
            };
            self.request = Some(request);
        }
    }

    /// A refusal of a write as [`ClientError::PartialWrite`], counting what every request
    /// of the writer committed.
    fn typed(&mut self, failure: ClientError) -> ClientError {
        self.unacknowledged = 0;
        match failure {
            ClientError::Problem(problem) => ClientError::PartialWrite {
                committed: self.totals.committed() + problem.committed.unwrap_or(0),
                offset: problem.offset,
                timestamp: problem.timestamp.clone(),
                problem,
            },
            other => other,
        }
    }
}

impl Drop for FlowWriter {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Some(request) = self.request.take() {
            // Abandon the request: its body ends in error, not as a complete upload.
            request.task.abort();
            tracing::warn!(
                flow_id = %self.flow,
                grains = self.unacknowledged,
                "flow writer dropped without close(): its last request was abandoned; the server keeps the complete grains it received, but how many is unknown"
            );
        } else if self.totals.committed() > 0 {
            tracing::warn!(
                flow_id = %self.flow,
                committed = self.totals.committed(),
                "flow writer dropped without close(); everything written had been flushed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames `coalesced` makes of `chunks`, all queued before it is read.
    async fn frames(chunks: &[Bytes]) -> Vec<Bytes> {
        let (sender, receiver) = mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            sender.send(Ok(chunk.clone())).await.unwrap();
        }
        drop(sender);
        coalesced(receiver)
            .map(|frame| frame.expect("no errors queued"))
            .collect()
            .await
    }

    #[tokio::test]
    async fn queued_small_chunks_become_one_frame_and_large_ones_go_alone() {
        let small = |n: usize, b: u8| Bytes::from(vec![b; n]);
        let large = Bytes::from(vec![9u8; FRAME_BYTES]);
        let chunks = vec![
            small(100, 1),
            small(200, 2),
            small(300, 3),
            large.clone(),
            small(FRAME_BYTES - 10, 4),
            small(20, 5),
            small(5, 6),
        ];
        let got = frames(&chunks).await;
        let lens: Vec<usize> = got.iter().map(Bytes::len).collect();
        assert_eq!(lens, [600, FRAME_BYTES, FRAME_BYTES - 10, 25]);
        // The large chunk is sent as it was given, not copied.
        assert_eq!(got[1].as_ptr(), large.as_ptr());
        // Every byte, in order.
        assert_eq!(got.concat(), chunks.concat());
    }

    #[tokio::test]
    async fn a_chunk_alone_is_sent_at_once() {
        let (sender, receiver) = mpsc::channel(4);
        let mut frames = Box::pin(coalesced(receiver));
        sender.send(Ok(Bytes::from_static(b"grain"))).await.unwrap();
        let first = frames.next().await.unwrap().unwrap();
        assert_eq!(first, Bytes::from_static(b"grain"));
        sender.send(Ok(Bytes::from_static(b"next"))).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), "next");
        drop(sender);
        assert!(frames.next().await.is_none());
    }
}

//! Response bodies built from grain generators: GSF and NDJSON streams.
//!
//! Small grains are coalesced into chunks of up to [`COALESCE_BYTES`] so that a read of
//! millions of event grains is not millions of tiny writes; a chunk goes out as soon as
//! the generator has to wait for the store, so nothing sits in a buffer while the client
//! could be reading it. Large payloads pass through as the `Bytes` the store produced,
//! never copied.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::metrics::Metrics;
use crate::grain::Grain;
use crate::gsf::{GsfDateTime, GsfEncoder};
use crate::store::{FlowId, GsfPage, StoreError};

/// Pieces smaller than this are copied into the coalescing buffer.
const SMALL: usize = 16 << 10;
/// A coalesced chunk is sent once it reaches this size.
pub const COALESCE_BYTES: usize = 64 << 10;

/// A stream of body pieces, each either copied into a shared chunk or sent as is.
pub struct Coalesce<S> {
    inner: S,
    buffer: BytesMut,
    /// A large piece waiting to go out after the buffer is flushed.
    pending: Option<Bytes>,
    done: bool,
    metrics: Arc<Metrics>,
}

impl<S> Coalesce<S> {
    /// Coalesces the pieces of `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Coalesce<S> {
        Coalesce {
            inner,
            buffer: BytesMut::new(),
            pending: None,
            done: false,
            metrics,
        }
    }

    fn emit(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, StoreError>>> {
        self.metrics.add_sent(chunk.len() as u64);
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream<Item = Result<Vec<Bytes>, StoreError>> + Unpin,
{
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.buffer.is_empty() {
                if let Some(big) = this.pending.take() {
                    return this.emit(big);
                }
            }
            if this.done {
                if this.buffer.is_empty() {
                    return Poll::Ready(None);
                }
                let chunk = this.buffer.split().freeze();
                return this.emit(chunk);
            }
            if this.pending.is_some() || this.buffer.len() >= COALESCE_BYTES {
                let chunk = this.buffer.split().freeze();
                return this.emit(chunk);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(pieces))) => {
                    for piece in pieces {
                        if piece.len() < SMALL && this.pending.is_none() {
                            this.buffer.extend_from_slice(&piece);
                        } else if this.pending.is_none() {
                            this.pending = Some(piece);
                        } else {
                            // Two large pieces in one item (a GSF header chunk is small,
                            // so this is a payload after a payload): keep order by
                            // copying the first into the buffer.
                            if let Some(first) = this.pending.take() {
                                this.buffer.extend_from_slice(&first);
                            }
                            this.pending = Some(piece);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if this.buffer.is_empty() {
                        return Poll::Pending;
                    }
                    // The generator must wait: send what is ready.
                    let chunk = this.buffer.split().freeze();
                    return this.emit(chunk);
                }
            }
        }
    }
}

/// What frames a GSF stream of `flow`'s grains: the local id of its one segment, the
/// file's start (header and `head`) and its terminator.
pub fn gsf_frame(flow: FlowId) -> Result<(u16, Bytes, Bytes), StoreError> {
    let mut encoder = GsfEncoder::new(uuid::Uuid::new_v4(), GsfDateTime::now());
    let encoding_error =
        |e: crate::gsf::GsfError| StoreError::Unavailable(format!("gsf encoding: {e}"));
    let local_id = encoder.add_flow_segment(flow).map_err(encoding_error)?;
    let start = encoder.start().map_err(encoding_error)?;
    Ok((local_id, start, encoder.finish()))
}

/// A GSF file of `flow`'s grains: head, grains, terminator.
pub fn gsf_body<S>(
    flow: FlowId,
    grains: S,
    metrics: Arc<Metrics>,
) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static, StoreError>
where
    S: Stream<Item = Result<Grain, StoreError>> + Send + Unpin + 'static,
{
    let (local_id, start, end) = gsf_frame(flow)?;
    let counter = metrics.clone();
    let grains = grains.map(move |grain| {
        let grain = grain?;
        counter.add_grains_read(1);
        let chunks = crate::gsf::encode_grain(local_id, &grain);
        Ok(vec![chunks.header, chunks.payload])
    });
    Ok(framed(start, grains, end, metrics))
}

/// A GSF file of grain blocks that a read session builds a page at a time
/// ([`crate::store::ReadSession::gsf_pages`], with the local id of [`gsf_frame`]).
pub fn gsf_pages_body<S>(
    start: Bytes,
    pages: S,
    end: Bytes,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static
where
    S: Stream<Item = Result<GsfPage, StoreError>> + Send + Unpin + 'static,
{
    let counter = metrics.clone();
    // One piece per item: `Coalesce` passes a large piece on as it is only when it is
    // the one large piece of its item.
    let pieces = pages
        .map(move |page| match page {
            Ok(page) => {
                counter.add_grains_read(page.grains as u64);
                futures::stream::iter(page.pieces.into_iter().map(|piece| Ok(vec![piece])))
                    .left_stream()
            }
            Err(e) => futures::stream::iter([Err(e)]).right_stream(),
        })
        .flatten();
    framed(start, pieces, end, metrics)
}

/// `start`, the pieces of `body`, `end`, coalesced.
fn framed<S>(
    start: Bytes,
    body: S,
    end: Bytes,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static
where
    S: Stream<Item = Result<Vec<Bytes>, StoreError>> + Send + Unpin + 'static,
{
    let pieces = futures::stream::once(async move { Ok(vec![start]) })
        .chain(body)
        .chain(futures::stream::once(async move { Ok(vec![end]) }));
    Coalesce::new(Box::pin(pieces), metrics)
}

/// NDJSON: one JSON grain per line.
pub fn ndjson_body<S>(
    grains: S,
    with_payload: bool,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static
where
    S: Stream<Item = Result<Grain, StoreError>> + Send + Unpin + 'static,
{
    let counter = metrics.clone();
    let lines = grains.map(move |grain| {
        let grain = grain?;
        counter.add_grains_read(1);
        let mut line = grain.to_json(with_payload);
        line.push(b'\n');
        Ok(vec![Bytes::from(line)])
    });
    Coalesce::new(Box::pin(lines), metrics)
}

//! Response bodies built from grain generators: GSF and NDJSON streams.
//!
//! Small grains are coalesced into chunks of up to [`COALESCE_BYTES`] so that a read of
//! millions of event grains is not millions of tiny writes; a chunk goes out as soon as
//! the generator has to wait for the store, so nothing sits in a buffer while the client
//! could be reading it. Pieces of 16 KiB or more (large payloads, or large parts of
//! them) pass through as the `Bytes` the store produced, never copied.

use std::collections::VecDeque;
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
    /// Pieces waiting, in order, to go out as they are after the buffer is flushed: a
    /// large piece and whatever came after it in the same item.
    pending: VecDeque<Bytes>,
    done: bool,
    metrics: Arc<Metrics>,
}

impl<S> Coalesce<S> {
    /// Coalesces the pieces of `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Coalesce<S> {
        Coalesce {
            inner,
            buffer: BytesMut::new(),
            pending: VecDeque::new(),
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
            if this.buffer.is_empty()
                && let Some(next) = this.pending.pop_front()
            {
                return this.emit(next);
            }
            if this.done {
                if this.buffer.is_empty() {
                    return Poll::Ready(None);
                }
                let chunk = this.buffer.split().freeze();
                return this.emit(chunk);
            }
            if !this.pending.is_empty() || this.buffer.len() >= COALESCE_BYTES {
                let chunk = this.buffer.split().freeze();
                return this.emit(chunk);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(pieces))) => {
                    for piece in pieces {
                        if piece.len() < SMALL && this.pending.is_empty() {
                            this.buffer.extend_from_slice(&piece);
                        } else {
                            // Behind a large piece, everything keeps its place in line.
                            this.pending.push_back(piece);
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
    let pages = pages.map(move |page| {
        let page = page?;
        counter.add_grains_read(page.grains as u64);
        Ok(page.pieces)
    });
    framed(start, pages, end, metrics)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(items: Vec<Vec<Bytes>>) -> Vec<Bytes> {
        let inner = futures::stream::iter(items.into_iter().map(Ok::<_, StoreError>));
        let coalesced = Coalesce::new(inner, Arc::new(Metrics::default()));
        futures::executor::block_on(coalesced.map(|c| c.unwrap()).collect())
    }

    #[test]
    fn large_pieces_pass_through_uncopied_and_in_order() {
        let big = |b: u8| Bytes::from(vec![b; SMALL]);
        let (a, b) = (big(1), big(2));
        let out = pieces(vec![
            vec![Bytes::from_static(b"head")],
            vec![
                Bytes::from_static(b"x"),
                a.clone(),
                Bytes::from_static(b"y"),
                b.clone(),
            ],
            vec![Bytes::from_static(b"z")],
        ]);
        let joined: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
        let mut want = b"headx".to_vec();
        want.extend_from_slice(&a);
        want.push(b'y');
        want.extend_from_slice(&b);
        want.push(b'z');
        assert_eq!(joined, want);
        // Both large pieces went out as the very `Bytes` they came in.
        for large in [&a, &b] {
            assert!(
                out.iter()
                    .any(|c| c.as_ptr() == large.as_ptr() && c.len() == large.len())
            );
        }
    }

    #[test]
    fn small_pieces_are_sent_together() {
        let out = pieces(vec![
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            vec![Bytes::from_static(b"c")],
        ]);
        assert_eq!(out, vec![Bytes::from_static(b"abc")]);
    }
}

//! Grain streams decoded from response bodies as they arrive: GSF (`application/x-gsf`)
//! and NDJSON (`application/x-ndjson`), never buffering more than a grain.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::error::{ClientError, ClientResult};
use crate::grain::Grain;
use crate::gsf::{GsfDecoder, GsfEvent};

/// A stream of grains, as the client hands them out.
pub type GrainStream = BoxStream<'static, ClientResult<Grain>>;

/// The grains of a GSF body.
pub(crate) fn gsf_grains(
    body: impl Stream<Item = ClientResult<Bytes>> + Send + 'static,
) -> GrainStream {
    struct State<S> {
        body: std::pin::Pin<Box<S>>,
        decoder: GsfDecoder,
        ready: VecDeque<Grain>,
        done: bool,
    }
    let state = State {
        body: Box::pin(body),
        // The server bounds grains by its own limit; accept anything GSF can carry.
        decoder: GsfDecoder::new().with_max_grain_size(u32::MAX as usize),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(grain) = state.ready.pop_front() {
                return Some((Ok(grain), state));
            }
            if state.done {
                return None;
            }
            loop {
                match state.decoder.next_event() {
                    Ok(Some(GsfEvent::Grain { grain, .. })) => state.ready.push_back(grain),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        state.done = true;
                        return Some((Err(ClientError::Gsf(e)), state));
                    }
                }
            }
            if !state.ready.is_empty() {
                continue;
            }
            match state.body.next().await {
                Some(Ok(chunk)) => state.decoder.push(chunk),
                Some(Err(e)) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
                None => {
                    state.done = true;
                    if let Err(e) = state.decoder.finish() {
                        return Some((Err(ClientError::Gsf(e)), state));
                    }
                }
            }
        }
    })
    .boxed()
}

/// The grains of an NDJSON body (one JSON grain per line).
pub(crate) fn ndjson_grains(
    body: impl Stream<Item = ClientResult<Bytes>> + Send + 'static,
) -> GrainStream {
    lines(body, false)
        .map(|line| {
            let line = line?;
            Grain::from_json(&line)
                .map_err(|e| ClientError::Protocol(format!("an NDJSON grain does not parse: {e}")))
        })
        .boxed()
}

/// The lines of a body, without their line ends; empty ones only with `keep_empty`
/// (SSE needs them: an empty line ends an event).
pub(crate) fn lines(
    body: impl Stream<Item = ClientResult<Bytes>> + Send + 'static,
    keep_empty: bool,
) -> BoxStream<'static, ClientResult<Bytes>> {
    struct State<S> {
        body: std::pin::Pin<Box<S>>,
        buffer: BytesMut,
        done: bool,
    }
    let state = State {
        body: Box::pin(body),
        buffer: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(end) = state.buffer.iter().position(|&b| b == b'\n') {
                let mut line = state.buffer.split_to(end + 1).freeze();
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.is_empty() && !keep_empty {
                    continue;
                }
                return Some((Ok(line), state));
            }
            if state.done {
                if state.buffer.is_empty() {
                    return None;
                }
                let rest = state.buffer.split().freeze();
                return Some((Ok(rest), state));
            }
            match state.body.next().await {
                Some(Ok(chunk)) => state.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    state.done = true;
                    state.buffer.clear();
                    return Some((Err(e), state));
                }
                None => state.done = true,
            }
        }
    })
    .boxed()
}

/// A response's body as a stream of chunks.
pub(crate) fn body(
    response: reqwest::Response,
) -> impl Stream<Item = ClientResult<Bytes>> + Send + 'static {
    response
        .bytes_stream()
        .map(|chunk| chunk.map_err(ClientError::from))
}

/// A body that fails when it sends nothing for `idle` (a dead connection that was never
/// closed; live streams send keep-alive comments well within it).
pub(crate) fn with_idle_timeout(
    body: impl Stream<Item = ClientResult<Bytes>> + Send + 'static,
    idle: std::time::Duration,
) -> impl Stream<Item = ClientResult<Bytes>> + Send + 'static {
    futures::stream::unfold(Some(Box::pin(body)), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(ClientError::Protocol(format!(
                    "the live stream sent nothing for {} s",
                    idle.as_secs()
                ))),
                None,
            )),
        }
    })
}

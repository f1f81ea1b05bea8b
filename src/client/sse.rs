//! A server-sent events parser (the WHATWG event stream format) over a response body:
//! `event:`, `id:`, `data:` lines, comments, and an empty line ending each event.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::decode::lines;
use super::error::ClientResult;

/// One event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:` of this event, when it had one.
    pub id: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// The events of an SSE body, as they arrive.
pub(crate) fn events(
    body: impl Stream<Item = ClientResult<Bytes>> + Send + 'static,
) -> BoxStream<'static, ClientResult<SseEvent>> {
    let mut pending = Pending::default();
    lines(body, true)
        .filter_map(move |line| {
            let out = match line {
                Ok(line) => pending.line(&line).map(Ok),
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
        .boxed()
}

/// The fields of the event being read.
#[derive(Default)]
struct Pending {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl Pending {
    /// Takes one line; returns the event an empty line completes.
    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            // An event without data is not dispatched (the standard's rule).
            return data.map(|data| SseEvent {
                event: event.unwrap_or_else(|| "message".into()),
                id,
                data,
            });
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_events_comments_and_multiline_data() {
        let body = ": subscribed\nretry: 1000\n\nevent: grain\nid: 1:0\ndata: {\"a\":\ndata: 1}\n\n:keep\n\nevent: shutdown\r\ndata: x\r\n\r\n";
        let chunks: Vec<ClientResult<Bytes>> = body
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let got: Vec<SseEvent> = events(futures::stream::iter(chunks))
            .map(|e| e.expect("event"))
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "grain".into(),
                    id: Some("1:0".into()),
                    data: "{\"a\":\n1}".into()
                },
                SseEvent {
                    event: "shutdown".into(),
                    id: None,
                    data: "x".into()
                },
            ]
        );
    }
}

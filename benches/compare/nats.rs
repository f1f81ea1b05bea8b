//! A minimal NATS client speaking the text protocol directly: core publish and
//! subscribe, request/reply, and the JetStream API subjects (stream and consumer
//! create, publish with acks, push-consumer replay).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A delivered message.
pub struct Msg {
    pub subject: Bytes,
    pub sid: u64,
    /// Where to acknowledge it (JetStream deliveries).
    pub reply: Option<String>,
    pub payload: Bytes,
}

/// One connection.
pub struct Nats {
    stream: TcpStream,
    buffer: BytesMut,
    out: Vec<u8>,
    next_sid: u64,
    inbox: String,
    inbox_sid: u64,
    next_request: u64,
    /// Messages that arrived while a request waited for its reply.
    held: std::collections::VecDeque<Msg>,
}

impl Nats {
    pub async fn connect(port: u16) -> Nats {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to nats");
        let _ = stream.set_nodelay(true);
        let mut nats = Nats {
            stream,
            buffer: BytesMut::with_capacity(4 << 10),
            out: Vec::new(),
            next_sid: 1,
            inbox: format!("_INBOX.gsbench{}", uuid::Uuid::new_v4().simple()),
            inbox_sid: 0,
            next_request: 0,
            held: std::collections::VecDeque::new(),
        };
        nats.out.extend_from_slice(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"lang\":\"rust\",\"version\":\"0\"}\r\n",
        );
        nats.ping().await;
        nats.inbox_sid = nats.subscribe(&format!("{}.*", nats.inbox));
        nats
    }

    /// Subscribes (queued until the next flush); returns the subscription id.
    pub fn subscribe(&mut self, subject: &str) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.out
            .extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
        sid
    }

    /// Queues an unsubscribe.
    pub fn unsubscribe(&mut self, sid: u64) {
        self.out
            .extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
    }

    /// Queues a publish.
    pub fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A reply subject under this connection's inbox.
    pub fn reply_subject(&mut self) -> String {
        self.next_request += 1;
        format!("{}.{}", self.inbox, self.next_request)
    }

    pub async fn flush(&mut self) {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.expect("nats write");
            self.out.clear();
        }
    }

    /// Flushes and waits for the server's PONG: everything sent before was processed.
    pub async fn ping(&mut self) {
        self.out.extend_from_slice(b"PING\r\n");
        self.flush().await;
        while self.next_event().await.is_some() {}
    }

    /// The next message; answers server PINGs on the way.
    pub async fn next_msg(&mut self) -> Msg {
        if let Some(msg) = self.held.pop_front() {
            return msg;
        }
        self.next_event()
            .await
            .expect("nats: PONG while waiting for a message")
    }

    /// The next message, or `None` at a PONG.
    async fn next_event(&mut self) -> Option<Msg> {
        loop {
            match self.parse() {
                Some(Some(Event::Msg(m))) => return Some(m),
                Some(Some(Event::Pong)) => return None,
                Some(Some(Event::Ping)) => {
                    self.stream
                        .write_all(b"PONG\r\n")
                        .await
                        .expect("nats write");
                }
                Some(None) => {}
                None => {
                    // Grows by doubling: idle connections stay small, bulk replies read in big reads.
                    if self.buffer.capacity() - self.buffer.len() < 4 << 10 {
                        let more = self.buffer.len().max(8 << 10);
                        self.buffer.reserve(more);
                    }
                    let n = self
                        .stream
                        .read_buf(&mut self.buffer)
                        .await
                        .expect("nats read");
                    assert!(n > 0, "nats closed the connection");
                }
            }
        }
    }

    /// `None`: incomplete; `Some(None)`: a line that needs nothing (+OK, INFO).
    fn parse(&mut self) -> Option<Option<Event>> {
        let end = self.buffer.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&self.buffer[..end]).expect("nats protocol line");
        let mut words = line.split_ascii_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        match op.as_str() {
            "MSG" | "HMSG" => {
                let parts: Vec<&str> = words.collect();
                let total: usize = parts.last().and_then(|n| n.parse().ok()).expect("size");
                let header_len: usize = if op == "HMSG" {
                    parts[parts.len() - 2].parse().expect("header size")
                } else {
                    0
                };
                if self.buffer.len() < end + 2 + total + 2 {
                    return None;
                }
                let subject = Bytes::copy_from_slice(parts[0].as_bytes());
                let sid = parts[1].parse().expect("sid");
                let with_reply = if op == "HMSG" { 5 } else { 4 };
                let reply = (parts.len() == with_reply).then(|| parts[2].to_string());
                self.buffer.advance(end + 2);
                let mut body = self.buffer.split_to(total + 2).freeze();
                body.truncate(total);
                let payload = body.slice(header_len..);
                Some(Some(Event::Msg(Msg {
                    subject,
                    sid,
                    reply,
                    payload,
                })))
            }
            other => {
                let event = match other {
                    "PING" => Some(Event::Ping),
                    "PONG" => Some(Event::Pong),
                    "-ERR" => panic!("nats: {line}"),
                    _ => None,
                };
                self.buffer.advance(end + 2);
                Some(event)
            }
        }
    }

    /// A request to `subject`; returns the reply's payload.
    pub async fn request(&mut self, subject: &str, payload: &[u8]) -> Bytes {
        let reply = self.reply_subject();
        self.publish(subject, Some(&reply), payload);
        self.flush().await;
        loop {
            let msg = self
                .next_event()
                .await
                .expect("nats: PONG while waiting for a reply");
            if msg.subject.as_ref() == reply.as_bytes() {
                return msg.payload;
            }
            self.held.push_back(msg);
        }
    }

    /// A JetStream API request; panics on an API error.
    pub async fn js_api(&mut self, subject: &str, payload: serde_json::Value) -> serde_json::Value {
        let reply = self.request(subject, payload.to_string().as_bytes()).await;
        let value: serde_json::Value = serde_json::from_slice(&reply).expect("jetstream json");
        if let Some(error) = value.get("error") {
            panic!("jetstream {subject}: {error}");
        }
        value
    }
}

enum Event {
    Msg(Msg),
    Ping,
    Pong,
}

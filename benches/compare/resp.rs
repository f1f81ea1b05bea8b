//! A minimal Redis client speaking RESP2 directly: pipelined commands, replies parsed
//! from one buffer. Enough for XADD, XRANGE and XREAD BLOCK.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP reply.
#[derive(Debug)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Int,
    Bulk(Option<Bytes>),
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(Some(v)) => v,
            _ => &[],
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Value::Bulk(Some(b)) | Value::Simple(b) => b,
            _ => &[],
        }
    }
}

/// One connection.
pub struct Redis {
    stream: TcpStream,
    buffer: BytesMut,
    out: Vec<u8>,
}

impl Redis {
    pub async fn connect(port: u16) -> Redis {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to redis");
        let _ = stream.set_nodelay(true);
        Redis {
            stream,
            buffer: BytesMut::with_capacity(4 << 10),
            out: Vec::new(),
        }
    }

    /// Queues a command (sent by [`Redis::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode(&mut self.out, args);
    }

    /// Queues commands encoded beforehand with [`encode`].
    pub fn queue_raw(&mut self, commands: &[u8]) {
        self.out.extend_from_slice(commands);
    }

    pub async fn flush(&mut self) {
        self.stream.write_all(&self.out).await.expect("redis write");
        self.out.clear();
    }

    /// The next reply.
    pub async fn read(&mut self) -> Value {
        loop {
            if let Some((value, used)) = parse(&self.buffer) {
                self.buffer.advance(used);
                return value;
            }
            // Grows by doubling: idle connections stay small, bulk replies read in big reads.
            if self.buffer.capacity() - self.buffer.len() < 4 << 10 {
                let more = self.buffer.len().max(8 << 10);
                self.buffer.reserve(more);
            }
            let n = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .expect("redis read");
            assert!(n > 0, "redis closed the connection");
        }
    }

    /// Sends one command and returns its reply; panics on an error reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Value {
        self.queue(args);
        self.flush().await;
        let value = self.read().await;
        if let Value::Error(e) = &value {
            panic!("redis: {}", String::from_utf8_lossy(e));
        }
        value
    }
}

/// Appends a command in RESP to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one complete value at the start of `buf`: the value and the bytes it used.
fn parse(buf: &[u8]) -> Option<(Value, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[1..end];
    let mut used = end + 2;
    let number = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
    let value = match *buf.first()? {
        b'+' => Value::Simple(Bytes::copy_from_slice(line)),
        b'-' => Value::Error(Bytes::copy_from_slice(line)),
        b':' => {
            number()?;
            Value::Int
        }
        b'$' => {
            let n = number()?;
            if n < 0 {
                Value::Bulk(None)
            } else {
                let n = n as usize;
                if buf.len() < used + n + 2 {
                    return None;
                }
                let data = Bytes::copy_from_slice(&buf[used..used + n]);
                used += n + 2;
                Value::Bulk(Some(data))
            }
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                Value::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let (item, len) = parse(&buf[used..])?;
                    used += len;
                    items.push(item);
                }
                Value::Array(Some(items))
            }
        }
        other => panic!("unexpected RESP type byte {other:#x}"),
    };
    Some((value, used))
}

//! A lean HTTP/1.1 client over hyper's connection API: one keep-alive connection per
//! task, bodies counted rather than kept, so the client spends as little of the shared
//! CPUs as it can.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One keep-alive connection.
pub struct Conn {
    port: u16,
    sender: SendRequest<Body>,
}

impl Conn {
    pub async fn open(port: u16) -> Conn {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Conn { port, sender }
    }

    /// Sends a request; the response's body is left to the caller.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(body).expect("request");
        self.sender.ready().await.expect("connection ready");
        self.sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a request and reads the whole response, returning status and body bytes
    /// (for small bodies).
    pub async fn fetch(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (u16, Bytes) {
        let response = self.send(method, path, headers, body).await;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        (status, body)
    }
}

/// Reads a response body to its end; returns its length.
pub async fn drain(response: Response<Incoming>) -> u64 {
    let mut body = response.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A streamed (chunked) body of `chunks`.
pub fn streamed(chunks: impl Stream<Item = Bytes> + Send + 'static) -> Body {
    StreamBody::new(chunks.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

//! A connection that gives up on a client that stops reading.
//!
//! A response body (a range read, a live stream) is written as fast as the client reads
//! it. A client that stops reading without closing its connection would hold the
//! connection, its response stream and whatever that stream owns (a read session, a
//! live stream's place) for as long as it likes. [`StallTimeout`] wraps the socket: once
//! a write has made no progress for the limit, the write fails and the connection ends,
//! so the response stream is dropped and everything it holds is released. A live stream
//! that has nothing to send writes nothing and so is never cut by this; neither is a
//! client that reads slowly but steadily.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A socket whose writes fail after making no progress for a limit.
pub struct StallTimeout<T> {
    io: T,
    limit: Duration,
    /// Running while a write is blocked on a full send buffer; boxed so the wrapper
    /// stays `Unpin`.
    timer: Pin<Box<Sleep>>,
    /// Whether the timer measures a blocked write now.
    armed: bool,
}

impl<T> StallTimeout<T> {
    /// Wraps `io`; a write blocked for `limit` fails with [`io::ErrorKind::TimedOut`].
    pub fn new(io: T, limit: Duration) -> StallTimeout<T> {
        StallTimeout {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// What a write that returned `Pending` becomes: still pending, or timed out.
    fn blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} ms (limit `server.send_stall_timeout_ms`)",
                    self.limit.as_millis()
                ),
            ))),
        }
    }

    fn progressed<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => self.blocked(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progressed(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.progressed(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progressed(result, cx)
    }
}

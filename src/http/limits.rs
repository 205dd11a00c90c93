//! Connection limits: at most `max_connections` open connections (one over the limit is
//! closed at once), each holding its place until it closes; and an idle timeout: a connection
//! that sends nothing for `idle` when a request is due (right after it opens, after each
//! answer) is closed. Slow clients are further bounded by the server's header-read timeout
//! (headers trickling in) and by the request and body timeouts of the router.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

#[derive(Clone)]
pub struct LimitAcceptor {
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl LimitAcceptor {
    pub fn new(max_connections: usize, idle: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            idle,
        }
    }
}

/// A connection that gives its place back when it closes, and is closed when it idles while
/// a request is due.
pub struct Limited<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    /// Armed while the next bytes from the client are due.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes were written since the last flush (an answer is going out).
    wrote: bool,
}

impl<S> Limited<S> {
    fn arm(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        match &mut self.deadline {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for LimitAcceptor
where
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Limited<I>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Limited<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let mut conn = Limited {
                    inner: stream,
                    _permit: permit,
                    idle: self.idle,
                    deadline: None,
                    wrote: false,
                };
                conn.arm();
                Ok((conn, service))
            }
            Err(_) => {
                tracing::warn!("connection refused: the connection limit is reached");
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let idled = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if idled {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }

    /// An answer has gone out: the client's next request is due. (The server also flushes
    /// with nothing written, while a request is being handled: that arms nothing, so a long
    /// request is never cut.)
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && self.wrote {
            self.wrote = false;
            self.arm();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

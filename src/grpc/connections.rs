//! Accepting connections with bounds a client cannot lift: a connection limit, and an idle
//! timeout for connections that send nothing.
//!
//! The server pings every HTTP/2 connection (`server.keepalive_interval_ms`) and a live peer
//! answers, so a connection from which no byte arrives for `server.idle_timeout_ms` is a TCP
//! connection that never spoke HTTP/2 or a peer that is gone: it is closed. Without this, each
//! such socket holds a file descriptor for ever, and enough of them starve health checks and
//! new subscribers. Past `server.max_connections` a new connection is closed at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// How long accepting pauses after an accept error (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Least time between two warnings about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The listener's connections, each guarded. Never yields an error: accept errors are logged
/// and accepting goes on after a pause, so one bad moment does not stop the server.
pub fn incoming(listener: TcpListener, limits: Limits) -> impl Stream<Item = io::Result<Guarded>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let state = (listener, permits, None::<Instant>);
    futures::stream::unfold(state, move |(listener, permits, mut warned)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warn!(limit = limits.max_connections, "connection limit reached; new connections are closed");
                    warned = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%error, "cannot set TCP_NODELAY");
            }
            let guarded = Guarded::new(stream, limits.idle_timeout, permit);
            return Some((Ok(guarded), (listener, permits, warned)));
        }
    })
}

/// A connection that fails its reads once nothing has arrived for the idle timeout, which makes
/// the server close it. Holds a place under the connection limit until dropped.
pub struct Guarded {
    inner: TcpStream,
    idle: Duration,
    last_read: Instant,
    /// Fires at `last_read + idle` or later; moved on lazily, not on every read.
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(inner: TcpStream, idle: Duration, permit: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Self { inner, idle, last_read: now, deadline: Box::pin(tokio::time::sleep_until(now + idle)), _permit: permit }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => loop {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = self.last_read + self.idle;
                if Instant::now() >= due {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing received within the idle timeout",
                    )));
                }
                // Bytes arrived since the deadline was set: move it and wait again.
                self.deadline.as_mut().reset(due);
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! A cap on open connections: every accepted socket holds a permit until it closes (TLS
//! handshake included); a socket accepted with no permit left is closed at once, so idle or
//! half-open connections cannot take every file descriptor from the callers and the HSM.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A connection that counts against the cap while it is open.
pub struct Limited<S> {
    io: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts with `accept` until the returned stream is dropped, at most `max` connections
/// open at once. Accept errors (EMFILE included) pause the loop briefly instead of spinning.
pub fn incoming<S, F, Fut>(
    max: usize,
    mut accept: F,
) -> ReceiverStream<Result<Limited<S>, std::io::Error>>
where
    S: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
{
    let permits = Arc::new(Semaphore::new(max));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        let mut refused: u64 = 0;
        loop {
            let io = tokio::select! {
                _ = tx.closed() => return,
                r = accept() => r,
            };
            let io = match io {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                drop(io);
                refused += 1;
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        refused_so_far = refused,
                        "{max} connections are open (server.max_connections): closed a new one at accept"
                    );
                }
                continue;
            };
            let limited = Limited {
                io,
                _permit: permit,
            };
            if tx.send(Ok(limited)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

//! Connections that cannot starve the API: at most [`MAX_CONNECTIONS`] open at once, each
//! closed after [`IDLE_TIMEOUT`] without a byte read or written, and a new client always
//! served: when the table is full, the connection idle the longest is closed to make room.
//! (Idle keep-alive clients used to hold file descriptors until the daemon had none left, and
//! then nobody, unauthenticated TCP clients included, could be served.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections open at once, per listener.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no traffic for this long is closed (event streams send a keep-alive more
/// often than this).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct ConnState {
    /// Milliseconds since the listener's start at the last byte in or out.
    last_ms: AtomicU64,
    /// Closed to make room for a new client.
    evicted: AtomicBool,
    /// The reader's waker, to wake it when evicted.
    waker: Mutex<Option<Waker>>,
}

/// A listener whose connections are bounded in number and idle time.
pub struct Guarded<L> {
    inner: L,
    epoch: Instant,
    conns: Vec<Weak<ConnState>>,
    max: usize,
    idle: Duration,
}

impl<L: Listener> Guarded<L> {
    /// Wraps `inner`: at most `max` connections, each closed after `idle` without traffic.
    pub fn new(inner: L, max: usize, idle: Duration) -> Guarded<L> {
        Guarded {
            inner,
            epoch: Instant::now(),
            conns: Vec::new(),
            max: max.max(1),
            idle,
        }
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<L: Listener> Listener for Guarded<L> {
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        self.conns.retain(|w| w.strong_count() > 0);
        while self.conns.len() >= self.max {
            // Make room: the connection idle the longest goes.
            let victim = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.upgrade().map(|c| (i, c)))
                .min_by_key(|(_, c)| c.last_ms.load(Ordering::Relaxed));
            let Some((i, c)) = victim else { break };
            c.evicted.store(true, Ordering::Release);
            if let Some(w) = c
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                w.wake();
            }
            self.conns.swap_remove(i);
        }
        let state = Arc::new(ConnState {
            last_ms: AtomicU64::new(millis(self.epoch)),
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        self.conns.push(Arc::downgrade(&state));
        let io = GuardedIo {
            inner: io,
            state,
            epoch: self.epoch,
            idle: self.idle,
            sleep: Box::pin(tokio::time::sleep(self.idle)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One guarded connection: reads end (EOF) once it is evicted or idle too long.
pub struct GuardedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    epoch: Instant,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<S> GuardedIo<S> {
    fn touch(&mut self) {
        self.state
            .last_ms
            .store(millis(self.epoch), Ordering::Relaxed);
        self.sleep.as_mut().reset(Instant::now() + self.idle);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.evicted.load(Ordering::Acquire) {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending => {
                *this
                    .state
                    .waker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
                if this.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_full_table_closes_the_most_idle_connection_and_idle_ones_time_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut g = Guarded::new(l, 2, Duration::from_millis(300));
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (io, _) = g.accept().await;
            served.push(io);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The first (idle the longest) was closed for the third: its reads end.
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(1), served[0].read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        // The third is served.
        clients[2].write_all(b"hi").await.unwrap();
        let n = served[2].read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        // An idle connection ends after the timeout.
        let t = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(2), served[1].read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert!(t.elapsed() < Duration::from_millis(1_500));
    }
}

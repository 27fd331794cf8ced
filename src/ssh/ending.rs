//! Ending a session at once, whatever its peers do.
//!
//! A limit (`max_session`, `idle_timeout`), a shutdown, or any other decision
//! to end a session must hold within a second, even when the user's client
//! stopped reading and every queue towards it is full. Polite messages go
//! through those queues, so they are best-effort only; the end itself does
//! not wait for them:
//!
//! - [`Ending::stop_input`] is checked by the relay before anything the user
//!   sends goes to the target: from the decision on, nothing more reaches it.
//! - [`Ending::kill`] makes every stream wrapped with [`Ending::wrap`] fail:
//!   reads return end-of-file, writes fail, pending ones are woken. The
//!   target connection and (for a jump) the inner SSH session's stream are
//!   wrapped, so both end without waiting on any window.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The end switch of one session; cheap to clone, all clones are one switch.
#[derive(Clone, Debug)]
pub struct Ending {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    input_stopped: AtomicBool,
    killed: watch::Sender<bool>,
    finished: watch::Sender<bool>,
}

impl Default for Ending {
    fn default() -> Self {
        Ending::new()
    }
}

impl Ending {
    pub fn new() -> Ending {
        Ending {
            inner: Arc::new(Inner {
                input_stopped: AtomicBool::new(false),
                killed: watch::channel(false).0,
                finished: watch::channel(false).0,
            }),
        }
    }

    /// From now on, nothing the user sends is forwarded to the target.
    pub fn stop_input(&self) {
        self.inner.input_stopped.store(true, Ordering::SeqCst);
    }

    /// True once the session was ended (input is no longer forwarded).
    pub fn input_stopped(&self) -> bool {
        self.inner.input_stopped.load(Ordering::SeqCst)
    }

    /// Fails every wrapped stream now (and stops input).
    pub fn kill(&self) {
        self.stop_input();
        self.inner.killed.send_replace(true);
    }

    /// True once [`Ending::kill`] was called.
    pub fn is_killed(&self) -> bool {
        *self.inner.killed.borrow()
    }

    /// Marks the user's side of the session as gone (its SSH session ended).
    pub fn set_finished(&self) {
        self.inner.finished.send_replace(true);
    }

    /// Waits until [`Ending::set_finished`] was called.
    pub async fn finished(&self) {
        let mut rx = self.inner.finished.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    fn killed_future(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.inner.killed.subscribe();
        Box::pin(async move {
            // An Err means the switch is gone; a stream without a switch is dead too.
            let _ = rx.wait_for(|v| *v).await;
        })
    }

    /// Wraps a stream so that [`Ending::kill`] ends it.
    pub fn wrap<S>(&self, stream: S) -> Killable<S> {
        Killable {
            inner: stream,
            read_killed: self.killed_future(),
            write_killed: self.killed_future(),
            dead: false,
        }
    }
}

/// A stream that fails once its [`Ending`] is killed, also while a read or
/// write is pending (a write waiting for a peer's window is woken and fails).
pub struct Killable<S> {
    inner: S,
    read_killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    write_killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "session ended by gatehouse")
}

impl<S> Killable<S> {
    fn poll_dead_read(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.read_killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
    fn poll_dead_write(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.write_killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_dead_read(cx) {
            // End of file: the peer's session loop ends.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_dead_write(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_dead_write(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_dead_write(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_blocked_on_a_full_peer_fails_when_killed() {
        // A duplex pipe whose reader never reads: the second write blocks.
        let (a, _b) = tokio::io::duplex(16);
        let ending = Ending::new();
        let mut s = ending.wrap(a);
        s.write_all(&[0u8; 16]).await.expect("fits the buffer");
        let e2 = ending.clone();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            e2.kill();
        });
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), s.write_all(&[0u8; 16]))
            .await
            .expect("the blocked write is woken");
        assert!(r.is_err());
        assert!(ending.input_stopped());
        killer.await.expect("killer");
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).await.expect("eof"), 0);
    }
}

//! A tunnelled TCP connection as an ordinary async byte stream.
//!
//! Reads and writes go straight to the connection's socket buffers in the
//! userspace stack (no extra queue, no copy onto a bus). A full send buffer
//! makes `poll_write` wait until the peer acknowledges data — backpressure
//! all the way to the writer. Dropping the stream closes the connection
//! gracefully (FIN); a peer that does not finish closing is reset later.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stack::Shared;

/// One accepted connection through the tunnel.
pub struct TunnelStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("handle", &self.handle)
            .finish()
    }
}

impl TunnelStream {
    pub(super) fn new(shared: Arc<Shared>, handle: SocketHandle) -> TunnelStream {
        TunnelStream { shared, handle }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_read(self.handle, cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.shared.poll_write(self.handle, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is in the socket's buffer and the tunnel thread was
        // woken to send it; there is nothing further to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.shutdown(self.handle);
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.shared.release(self.handle);
    }
}

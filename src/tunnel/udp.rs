//! The tunnel's one UDP socket: IPv4 and IPv6, large kernel buffers, and
//! batched I/O (recvmmsg with GRO, sendmsg with GSO) through quinn-udp,
//! which keeps the `unsafe` system calls inside that crate.
//!
//! Why large buffers: smoltcp has no SACK, so every datagram the kernel
//! drops for lack of buffer space costs a retransmission round; with
//! default buffers, gateway-to-client throughput collapses under load.
//! SO_RCVBUFFORCE / SO_SNDBUFFORCE (root or CAP_NET_ADMIN) lift the limit;
//! without the capability the plain options are used, capped by
//! `net.core.rmem_max` / `wmem_max`, and a warning says how to raise them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Requested kernel buffer size, each direction.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Below this the warning is logged.
const SOCKET_BUFFER_WARN: usize = 1024 * 1024;

/// Binds the socket (non-blocking). `[::]:port` takes IPv4 too.
pub fn bind(listen: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        // Dual stack whatever net.ipv6.bindv6only says.
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    size_buffers(&s);
    s.bind(&listen.into())?;
    Ok(s.into())
}

fn size_buffers(s: &Socket) {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, SOCKET_BUFFER).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if rustix::net::sockopt::set_socket_send_buffer_size_force(s, SOCKET_BUFFER).is_err() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    }
    // The kernel reports double the usable size.
    let rcv = s.recv_buffer_size().unwrap_or(0) / 2;
    let snd = s.send_buffer_size().unwrap_or(0) / 2;
    if rcv < SOCKET_BUFFER_WARN || snd < SOCKET_BUFFER_WARN {
        tracing::warn!(
            recv_buffer = rcv,
            send_buffer = snd,
            "WireGuard UDP socket buffers are small (no CAP_NET_ADMIN?); throughput will suffer. \
             Raise them with: sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}"
        );
    } else {
        tracing::debug!(
            recv_buffer = rcv,
            send_buffer = snd,
            "WireGuard UDP socket buffers"
        );
    }
}

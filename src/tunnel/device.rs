//! The smoltcp device between the WireGuard sessions and the TCP/IP stack:
//! two bounded packet queues and a pool of reusable buffers.
//!
//! Decrypted packets are written by boringtun straight into a pooled buffer
//! and queued here; smoltcp reads them in place. Outgoing packets are built
//! by smoltcp in a pooled buffer and encrypted from it into the UDP send
//! batch. In steady state nothing is allocated per packet and nothing is
//! copied onto a shared bus.
//!
//! Backpressure: when the outgoing queue is full, `transmit` returns `None`
//! and smoltcp keeps the data in its socket buffers until the next poll —
//! the sender slows down instead of packets being dropped.

use std::cell::RefCell;
use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::packet::TcpSyn;

/// Size of every pooled buffer: the largest datagram accepted from a peer
/// (its decryption must fit) and the largest packet the stack sends.
pub const BUF_SIZE: usize = 4096;

/// The IP MTU of the tunnel, as WireGuard clients configure it (1420): the
/// stack's MSS follows from it, so peers' TCP segments always fit.
pub const MTU: usize = 1420;

/// Outgoing packets queued before smoltcp is told to wait.
pub const TX_QUEUE: usize = 512;

/// Decrypted packets queued before the UDP socket is left unread for a turn.
pub const RX_QUEUE: usize = 1024;

/// Buffers kept for reuse; more are freed (bounds memory after a burst).
const POOL_KEEP: usize = RX_QUEUE + TX_QUEUE + 256;

/// One packet in a pooled buffer.
pub struct Buf {
    data: Box<[u8]>,
    len: usize,
    /// For received packets: the peer it came from and, for a connection
    /// attempt, its ports.
    pub peer: usize,
    pub syn: Option<TcpSyn>,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: vec![0u8; BUF_SIZE].into_boxed_slice(),
            len: 0,
            peer: 0,
            syn: None,
        }
    }

    /// The whole buffer, for writing a packet into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The packet.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or_default()
    }

    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.data.len());
    }
}

/// The device: queues and pool. Owned by the tunnel thread.
pub struct Device {
    pub rx: VecDeque<Buf>,
    tx: VecDeque<Buf>,
    pool: RefCell<Vec<Buf>>,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            rx: VecDeque::with_capacity(RX_QUEUE),
            tx: VecDeque::with_capacity(TX_QUEUE + 64),
            pool: RefCell::new(Vec::with_capacity(POOL_KEEP)),
        }
    }
}

impl Device {
    /// A buffer from the pool (allocated only while the pool warms up).
    pub fn take(&self) -> Buf {
        take(&self.pool)
    }

    /// Returns a buffer to the pool.
    pub fn give(&self, buf: Buf) {
        give(&self.pool, buf)
    }

    /// The next outgoing packet.
    pub fn pop_tx(&mut self) -> Option<Buf> {
        self.tx.pop_front()
    }

    /// Puts an outgoing packet back at the front (the UDP socket was full).
    pub fn unpop_tx(&mut self, buf: Buf) {
        self.tx.push_front(buf)
    }

    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }
}

fn take(pool: &RefCell<Vec<Buf>>) -> Buf {
    let mut b = pool.borrow_mut().pop().unwrap_or_else(Buf::new);
    b.len = 0;
    b.syn = None;
    b
}

fn give(pool: &RefCell<Vec<Buf>>, buf: Buf) {
    let mut p = pool.borrow_mut();
    if p.len() < POOL_KEEP {
        p.push(buf);
    }
}

/// Receives one queued packet; the buffer goes back to the pool after.
pub struct RxToken<'a> {
    buf: Buf,
    pool: &'a RefCell<Vec<Buf>>,
}

/// Queues one outgoing packet.
pub struct TxToken<'a> {
    tx: &'a mut VecDeque<Buf>,
    pool: &'a RefCell<Vec<Buf>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.buf.bytes());
        give(self.pool, self.buf);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = take(self.pool);
        buf.set_len(len);
        let r = f(buf.data.get_mut(..buf.len).unwrap_or_default());
        self.tx.push_back(buf);
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        // A reply to a received packet (an ACK, a RST, an echo reply) may
        // exceed the queue limit by one: the limit is for bulk data.
        Some((
            RxToken {
                buf,
                pool: &self.pool,
            },
            TxToken {
                tx: &mut self.tx,
                pool: &self.pool,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.len() >= TX_QUEUE {
            return None;
        }
        Some(TxToken {
            tx: &mut self.tx,
            pool: &self.pool,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // Every packet reaching the stack was authenticated by WireGuard's
        // AEAD, which is stronger than any checksum: checking again on
        // receive only costs CPU. Sent packets get real checksums (the
        // peer's kernel verifies them).
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        ck.icmpv6 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

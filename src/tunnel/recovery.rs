//! Loss recovery for the tunnel's TCP, beside smoltcp.
//!
//! smoltcp has no SACK, its fast retransmit resends one segment per three
//! duplicate ACKs, and its retransmission timeout is at least one second.
//! A burst that overflows a client's UDP socket (Debian 12's wireguard-go
//! keeps the kernel's 208 KiB) loses several consecutive segments; smoltcp
//! repairs the first and then waits a whole second for the rest, and a
//! download through the tunnel runs at half of what kernel TCP reaches.
//! smoltcp exposes neither its retransmission queue nor its timers, so this
//! module adds what it lacks from outside, on the tunnel thread:
//!
//! * every TCP data segment the stack sends to a peer is kept (a copy of
//!   the IP packet) until the peer acknowledges it — bounded per
//!   connection and in total; beyond the bounds segments are simply not
//!   kept and smoltcp's own recovery applies;
//! * three duplicate ACKs start recovery (RFC 5681's test: no data, same
//!   ACK, same window): the segment at the ACK point is sent again at once;
//! * while in recovery, each partial ACK (one that moves but stays below
//!   the highest sequence sent when recovery began) sends the next missing
//!   segment at once — NewReno (RFC 6582) without touching smoltcp's
//!   congestion window, which smoltcp still lowers on its own dup ACKs;
//! * a resend that is itself lost is repeated after twice the smoothed RTT
//!   (measured here from first transmissions, Karn's rule), at the latest
//!   on the next duplicate ACK after that.
//!
//! The packets sent again are byte for byte what smoltcp already sent, so
//! the receiver sees at worst a duplicate, which TCP discards; nothing here
//! changes what a connection carries, and a peer can only make gatehouse
//! resend data it was sent anyway (at most one resend per ACK it sends).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::{self, TcpSegment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Duplicate ACKs that mean a segment was lost (RFC 5681).
const DUP_ACK_THRESHOLD: u32 = 3;
/// Most data kept for one connection (its send buffer is at most 256 KiB;
/// the rest is headroom for headers and smoltcp's own retransmissions).
const FLOW_MAX_BYTES: usize = 512 * 1024;
/// Most data kept for all connections together.
const TOTAL_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Spare buffers kept for reuse.
const SPARE_MAX: usize = 1024;
/// Floor of the wait before a lost resend is resent.
const RESEND_FLOOR: Duration = Duration::from_millis(2);
/// RTT assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Floor of the probe timeout (Linux's tail loss probe uses the same).
const PROBE_FLOOR: Duration = Duration::from_millis(10);
/// Added when a single segment is outstanding: the receiver may be
/// delaying its ACK (Linux does for up to 40 ms).
const DELAYED_ACK_ALLOWANCE: Duration = Duration::from_millis(40);
/// Probes without progress before the connection is left to smoltcp's own
/// retransmission timer (the probe timeout doubles each time).
const MAX_PROBES: u32 = 6;

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

/// A connection: the peer's tunnel address and port, the gateway's port.
type Key = (IpAddr, u16, u16);

/// One data segment sent and not yet acknowledged.
struct Kept {
    seq: u32,
    end: u32,
    sent: Instant,
    resent: bool,
    packet: Vec<u8>,
}

#[derive(Default)]
struct Flow {
    kept: VecDeque<Kept>,
    bytes: usize,
    /// End of the highest data sent, once any was.
    high: Option<u32>,
    last_ack: Option<(u32, u16)>,
    dup_acks: u32,
    /// In recovery until the peer acknowledges this.
    recover: Option<u32>,
    /// The last resend: its sequence number and when.
    resent: Option<(u32, Instant)>,
    srtt: Option<Duration>,
    /// When the peer last acknowledged new data (or data became
    /// outstanding): the probe timer runs from here.
    progress: Option<Instant>,
    /// Probes sent since the last progress.
    probes: u32,
}

impl Flow {
    fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(INITIAL_RTT)
    }

    /// When the front segment is probed if no ACK moves before.
    fn probe_at(&self) -> Option<Instant> {
        let front = self.kept.front()?;
        if self.probes >= MAX_PROBES {
            return None;
        }
        // Only the segment at the ACK point can unblock the peer; when a
        // bound left a hole before what is kept, smoltcp's timer repairs it.
        if self.last_ack.is_some_and(|(ack, _)| ack != front.seq) {
            return None;
        }
        let mut pto = (self.rtt() * 2).max(PROBE_FLOOR);
        if self.kept.len() == 1 {
            pto += DELAYED_ACK_ALLOWANCE;
        }
        Some(self.progress? + pto * (1 << self.probes))
    }
}

/// Counters for the status file.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryStats {
    /// Segments sent again by this module.
    pub resent: u64,
    /// Recoveries started (three duplicate ACKs).
    pub recoveries: u64,
    /// Probes: the front segment sent again because no ACK came (a lost
    /// tail, or a lost resend, gets no duplicate ACKs).
    pub probes: u64,
}

/// The kept segments of every connection.
#[derive(Default)]
pub struct Recovery {
    flows: HashMap<Key, Flow>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
    pub stats: RecoveryStats,
}

impl Recovery {
    /// A packet the stack is about to send to a peer: a data segment with
    /// new data is kept. A SYN starts a connection afresh, a RST ends it.
    pub fn on_send(&mut self, pkt: &[u8], now: Instant) {
        let Some(seg) = packet::tcp_segment(pkt) else {
            return;
        };
        let key = (seg.dst, seg.dst_port, seg.src_port);
        if seg.flags & TCP_RST != 0 {
            self.forget(key);
            return;
        }
        if seg.flags & TCP_SYN != 0 {
            self.forget(key);
            return;
        }
        let len = seg.payload_len as u32 + u32::from(seg.flags & TCP_FIN != 0);
        if len == 0 {
            return;
        }
        let end = seg.seq.wrapping_add(len);
        let room = self.bytes.saturating_add(pkt.len()) <= TOTAL_MAX_BYTES;
        let mut buf = self.spare.pop().unwrap_or_default();
        let flow = self.flows.entry(key).or_default();
        // Only new data: smoltcp's own retransmissions are copies of what
        // is kept already.
        if flow.high.is_some_and(|h| seq_le(end, h)) {
            self.spare.push(buf);
            return;
        }
        let contiguous = flow.high.is_none_or(|h| h == seg.seq);
        flow.high = Some(end);
        if !contiguous {
            // Something was not kept (a bound was reached, or smoltcp
            // resegmented): what is kept must be the data right after the
            // ACK point, so start over from here.
            self.bytes = self.bytes.saturating_sub(flow.bytes);
            self.spare.extend(flow.kept.drain(..).map(|k| k.packet));
            flow.bytes = 0;
        }
        if !room || flow.bytes.saturating_add(pkt.len()) > FLOW_MAX_BYTES {
            self.spare.push(buf);
            // A hole in what is kept: nothing after it is useful either.
            flow.high = None;
            self.bytes = self.bytes.saturating_sub(flow.bytes);
            self.spare.extend(flow.kept.drain(..).map(|k| k.packet));
            flow.bytes = 0;
            self.spare.truncate(SPARE_MAX);
            return;
        }
        buf.clear();
        buf.extend_from_slice(pkt);
        if flow.kept.is_empty() {
            flow.progress = Some(now);
            flow.probes = 0;
        }
        flow.bytes = flow.bytes.saturating_add(buf.len());
        self.bytes = self.bytes.saturating_add(buf.len());
        flow.kept.push_back(Kept {
            seq: seg.seq,
            end,
            sent: now,
            resent: false,
            packet: buf,
        });
    }

    /// A packet from a peer, already accepted for the stack. Returns a
    /// segment to send again at once, if the peer's ACKs say it was lost.
    pub fn on_receive(&mut self, pkt: &[u8], now: Instant) -> Option<&[u8]> {
        let seg = packet::tcp_segment(pkt)?;
        let key = (seg.src, seg.src_port, seg.dst_port);
        if seg.flags & TCP_RST != 0 {
            self.forget(key);
            return None;
        }
        if seg.flags & TCP_ACK == 0 {
            return None;
        }
        let flow = self.flows.get_mut(&key)?;
        let freed = Self::acknowledge(flow, &mut self.spare, seg.ack, now);
        self.bytes = self.bytes.saturating_sub(freed);
        if freed > 0 {
            flow.progress = Some(now);
            flow.probes = 0;
        }
        let was_recovering = flow.recover.is_some();
        let resend = Self::decide(flow, &seg, now);
        if !was_recovering && flow.recover.is_some() {
            self.stats.recoveries += 1;
        }
        flow.last_ack = Some((seg.ack, seg.window));
        if !resend {
            return None;
        }
        let first = flow.kept.front_mut()?;
        if first.seq != seg.ack {
            return None;
        }
        first.resent = true;
        flow.resent = Some((first.seq, now));
        self.stats.resent += 1;
        Some(first.packet.as_slice())
    }

    /// Drops what `ack` acknowledges; samples the RTT. Returns bytes freed.
    fn acknowledge(flow: &mut Flow, spare: &mut Vec<Vec<u8>>, ack: u32, now: Instant) -> usize {
        let mut freed = 0;
        while let Some(k) = flow.kept.front() {
            if !seq_le(k.end, ack) {
                break;
            }
            if let Some(k) = flow.kept.pop_front() {
                if !k.resent {
                    let sample = now.saturating_duration_since(k.sent);
                    flow.srtt = Some(match flow.srtt {
                        Some(s) => (s * 7 + sample) / 8,
                        None => sample,
                    });
                }
                freed += k.packet.len();
                if spare.len() < SPARE_MAX {
                    spare.push(k.packet);
                }
            }
        }
        flow.bytes = flow.bytes.saturating_sub(freed);
        freed
    }

    /// Whether the segment at the ACK point must be sent again now.
    fn decide(flow: &mut Flow, seg: &TcpSegment, now: Instant) -> bool {
        let ack = seg.ack;
        let Some((last, window)) = flow.last_ack else {
            return false;
        };
        if seq_lt(last, ack) {
            flow.dup_acks = 0;
            // A partial ACK in recovery: the next hole, at once.
            return match flow.recover {
                Some(r) if seq_lt(ack, r) => true,
                Some(_) => {
                    flow.recover = None;
                    flow.resent = None;
                    false
                }
                None => false,
            };
        }
        let duplicate = ack == last
            && seg.payload_len == 0
            && seg.window == window
            && seg.flags & (TCP_SYN | TCP_FIN) == 0
            && !flow.kept.is_empty();
        if !duplicate {
            return false;
        }
        flow.dup_acks = flow.dup_acks.saturating_add(1);
        if flow.recover.is_none() {
            if flow.dup_acks < DUP_ACK_THRESHOLD {
                return false;
            }
            flow.recover = flow.high;
            return true;
        }
        // In recovery and still stuck here: was the resend lost too?
        let wait = (flow.rtt() * 2).max(RESEND_FLOOR);
        match flow.resent {
            Some((s, at)) if s == ack => now.saturating_duration_since(at) >= wait,
            _ => true,
        }
    }

    /// The probe timer: for every connection whose ACKs have not moved for
    /// its probe timeout (twice the smoothed RTT, at least 10 ms, doubling
    /// with each probe), sends the front segment again through `send` and
    /// enters recovery, so that the partial ACKs that follow repair the
    /// rest at once. Returns when to call again (None: nothing outstanding).
    pub fn poll(&mut self, now: Instant, mut send: impl FnMut(&[u8])) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for flow in self.flows.values_mut() {
            let Some(at) = flow.probe_at() else {
                continue;
            };
            if at <= now {
                if let Some(first) = flow.kept.front_mut() {
                    first.resent = true;
                    flow.resent = Some((first.seq, now));
                    send(first.packet.as_slice());
                    self.stats.probes += 1;
                    self.stats.resent += 1;
                }
                flow.probes = flow.probes.saturating_add(1);
                if flow.recover.is_none() {
                    flow.recover = flow.high;
                }
            }
            if let Some(at) = flow.probe_at() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }

    /// Forgets a connection (closed, reset, or a new one on its ports).
    pub fn forget(&mut self, key: (IpAddr, u16, u16)) {
        if let Some(flow) = self.flows.remove(&key) {
            self.bytes = self.bytes.saturating_sub(flow.bytes);
            for k in flow.kept {
                if self.spare.len() < SPARE_MAX {
                    self.spare.push(k.packet);
                }
            }
        }
    }

    /// Bytes kept (tests, status).
    pub fn kept_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const GW: [u8; 4] = [10, 77, 0, 1];
    const PEER: [u8; 4] = [10, 77, 0, 2];
    const MSS: usize = 1000;

    /// An IPv4 TCP packet (checksums are not looked at here).
    #[allow(clippy::too_many_arguments)]
    fn tcp(
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: usize,
    ) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&ports.0.to_be_bytes());
        p[22..24].copy_from_slice(&ports.1.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&window.to_be_bytes());
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        p
    }

    /// Data segment `n` (of MSS bytes) from the gateway's port 22.
    fn data(n: u32) -> Vec<u8> {
        tcp(
            GW,
            PEER,
            (22, 40000),
            1 + n * MSS as u32,
            1,
            TCP_ACK,
            512,
            MSS,
        )
    }

    /// The peer's ACK of everything before segment `n`.
    fn ack(n: u32, window: u16) -> Vec<u8> {
        tcp(
            PEER,
            GW,
            (40000, 22),
            1,
            1 + n * MSS as u32,
            TCP_ACK,
            window,
            0,
        )
    }

    fn sent(r: &mut Recovery, n: u32, t: Instant) {
        for i in 0..n {
            r.on_send(&data(i), t);
        }
    }

    #[test]
    fn three_duplicate_acks_resend_the_lost_segment_byte_for_byte() {
        let t = Instant::now();
        let mut r = Recovery::default();
        sent(&mut r, 10, t);
        assert_eq!(r.on_receive(&ack(2, 900), t), None);
        // Segment 2 was lost: 3, 4, 5 arrive and each is acknowledged at 2.
        assert_eq!(r.on_receive(&ack(2, 900), t), None);
        assert_eq!(r.on_receive(&ack(2, 900), t), None);
        let again = r.on_receive(&ack(2, 900), t).map(<[u8]>::to_vec);
        assert_eq!(again, Some(data(2)));
        assert_eq!((r.stats.resent, r.stats.recoveries), (1, 1));
        // More duplicates right after are not another resend.
        assert_eq!(r.on_receive(&ack(2, 900), t), None);
    }

    #[test]
    fn partial_acks_in_recovery_resend_each_next_hole_at_once() {
        let t = Instant::now();
        let mut r = Recovery::default();
        sent(&mut r, 20, t);
        r.on_receive(&ack(5, 900), t);
        for _ in 0..2 {
            assert_eq!(r.on_receive(&ack(5, 900), t), None);
        }
        assert_eq!(
            r.on_receive(&ack(5, 900), t).map(<[u8]>::to_vec),
            Some(data(5))
        );
        // 5 and 6 to 8 were lost in one burst: each repair uncovers the next.
        for hole in 6..9 {
            let again = r.on_receive(&ack(hole, 900), t).map(<[u8]>::to_vec);
            assert_eq!(again, Some(data(hole)), "hole {hole}");
        }
        // Everything sent before recovery began is acknowledged: done.
        assert_eq!(r.on_receive(&ack(20, 900), t), None);
        assert_eq!(r.kept_bytes(), 0, "acknowledged segments are dropped");
        // A later ACK that moves is an ordinary ACK again.
        sent(&mut r, 25, t);
        assert_eq!(r.on_receive(&ack(22, 900), t), None);
    }

    #[test]
    fn window_updates_and_data_are_not_duplicate_acks() {
        let t = Instant::now();
        let mut r = Recovery::default();
        sent(&mut r, 10, t);
        r.on_receive(&ack(2, 900), t);
        for w in [901, 902, 903, 904] {
            assert_eq!(r.on_receive(&ack(2, w), t), None, "window update");
        }
        let with_data = tcp(
            PEER,
            GW,
            (40000, 22),
            1,
            1 + 2 * MSS as u32,
            TCP_ACK,
            904,
            10,
        );
        for _ in 0..4 {
            assert_eq!(r.on_receive(&with_data, t), None, "carries data");
        }
        assert_eq!(r.stats.resent, 0);
    }

    #[test]
    fn a_lost_resend_is_resent_after_twice_the_rtt() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        sent(&mut r, 10, t0);
        // An RTT sample of 10 ms.
        r.on_receive(&ack(1, 900), t0 + Duration::from_millis(10));
        for _ in 0..3 {
            r.on_receive(&ack(1, 900), t0 + Duration::from_millis(11));
        }
        assert_eq!(r.stats.resent, 1);
        assert_eq!(
            r.on_receive(&ack(1, 900), t0 + Duration::from_millis(20)),
            None
        );
        let again = r.on_receive(&ack(1, 900), t0 + Duration::from_millis(32));
        assert_eq!(again.map(<[u8]>::to_vec), Some(data(1)));
    }

    #[test]
    fn what_is_kept_is_bounded_and_a_reset_forgets_it() {
        let t = Instant::now();
        let mut r = Recovery::default();
        sent(&mut r, 2000, t); // 2 MB sent, never acknowledged
        assert!(r.kept_bytes() <= FLOW_MAX_BYTES, "{}", r.kept_bytes());
        sent(&mut r, 5, t); // smoltcp retransmitting old data: not kept again
        assert!(r.kept_bytes() <= FLOW_MAX_BYTES);
        let rst = tcp(PEER, GW, (40000, 22), 1, 0, TCP_RST, 0, 0);
        assert_eq!(r.on_receive(&rst, t), None);
        assert_eq!(r.kept_bytes(), 0);
        // Another connection's ACKs never resend this one's data.
        let mut r = Recovery::default();
        sent(&mut r, 10, t);
        let other = |n: u32| {
            tcp(
                PEER,
                GW,
                (40001, 22),
                1,
                1 + n * MSS as u32,
                TCP_ACK,
                900,
                0,
            )
        };
        for _ in 0..5 {
            assert_eq!(r.on_receive(&other(2), t), None);
        }
    }

    #[test]
    fn a_lost_tail_is_probed_after_twice_the_rtt_then_backs_off() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Recovery::default();
        sent(&mut r, 10, t0);
        // 20 ms RTT; then the last segments are lost: no duplicate ACKs.
        r.on_receive(&ack(7, 900), t0 + ms(20));
        let mut out = Vec::new();
        let due = r.poll(t0 + ms(21), |p| out.push(p.to_vec()));
        assert!(out.is_empty(), "nothing before the probe timeout");
        assert_eq!(
            due,
            Some(t0 + ms(20) + ms(40)),
            "2 x RTT after the last progress"
        );
        r.poll(t0 + ms(60), |p| out.push(p.to_vec()));
        assert_eq!(out, vec![data(7)], "the front segment, once");
        // The probe started recovery: the partial ACK it brings repairs the
        // next hole at once.
        let again = r.on_receive(&ack(8, 900), t0 + ms(80)).map(<[u8]>::to_vec);
        assert_eq!(again, Some(data(8)));
        // A peer that went away: probes back off, then stop.
        let mut times = Vec::new();
        let mut t = t0 + ms(80);
        for _ in 0..2000 {
            t += ms(5);
            r.poll(t, |_| times.push(t));
        }
        assert_eq!(times.len() as u32, MAX_PROBES, "{times:?}");
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|g| g[1] >= g[0] * 2 - ms(10)),
            "{gaps:?}"
        );
        assert_eq!(r.stats.probes, 1 + u64::from(MAX_PROBES));
    }

    #[test]
    fn nothing_is_probed_when_what_is_kept_does_not_start_at_the_ack_point() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        r.on_send(&data(0), t0);
        r.on_receive(&ack(1, 900), t0);
        // Segment 1 was never kept (say a bound was reached): 2 and 3 are.
        r.on_send(&data(2), t0);
        r.on_send(&data(3), t0);
        let mut out = Vec::new();
        r.poll(t0 + Duration::from_secs(5), |p| out.push(p.to_vec()));
        assert!(out.is_empty(), "segment 2 would not unblock the peer");
        // With the front at the ACK point it is probed.
        let mut r = Recovery::default();
        sent(&mut r, 3, t0);
        r.on_receive(&ack(1, 900), t0);
        r.poll(t0 + Duration::from_secs(5), |p| out.push(p.to_vec()));
        assert_eq!(out, vec![data(1)]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert!(seq_lt(u32::MAX - 5, 3));
        assert!(!seq_lt(3, u32::MAX - 5));
        assert!(seq_le(7, 7));
    }
}

//! What a decrypted packet may be: the filter between a peer's tunnel and
//! the userspace stack.
//!
//! Security behaviour: a packet reaches the stack only if it is a well-formed
//! IPv4 or IPv6 packet whose source is exactly the sending peer's tunnel
//! address (bound to its key), whose destination is the gateway's tunnel
//! address, and which is TCP or an ICMP echo request. Everything else is
//! dropped here and counted by [`Verdict`]; nothing is ever routed onward.
//! A malformed packet is dropped on its own: it closes no connection and
//! changes no state. Parsing never panics and never indexes unchecked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the filter knows.
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER_MIN: usize = 20;

/// The decision for one decrypted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// TCP (or ICMP echo) from the peer to the gateway: hand to the stack.
    Accept(Accepted),
    /// The inner source is not the sending peer's address: one peer posing
    /// as another (or as anything else). Dropped and audited.
    Spoofed(IpAddr),
    /// Addressed to something other than the gateway: nothing is routed.
    NotForGateway(IpAddr),
    /// A protocol other than TCP / ICMP echo (UDP, fragments, options...).
    Protocol(u8),
    /// Not a well-formed IP packet.
    Malformed,
}

/// What the stack is about to see, for connection accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Set for a TCP segment with SYN and without ACK (a connection attempt).
    pub syn: Option<TcpSyn>,
}

/// A TCP connection attempt's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSyn {
    pub src_port: u16,
    pub dst_port: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let hi = *b.get(at)?;
    let lo = *b.get(at.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at.checked_add(4)?)?;
    let a: [u8; 4] = s.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

fn ipv6_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s = b.get(at..at.checked_add(16)?)?;
    let a: [u8; 16] = s.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// Classifies `packet`, decrypted from the peer whose tunnel address is
/// `peer`, for a gateway at `gateway`.
pub fn classify(packet: &[u8], peer: IpAddr, gateway: IpAddr) -> Verdict {
    let Some(first) = packet.first() else {
        return Verdict::Malformed;
    };
    let parsed = match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        _ => None,
    };
    let Some(p) = parsed else {
        return Verdict::Malformed;
    };
    // Source first: a spoofed packet is reported as spoofed whatever else
    // is wrong with it.
    if p.src != peer {
        return Verdict::Spoofed(p.src);
    }
    if p.dst != gateway {
        return Verdict::NotForGateway(p.dst);
    }
    match p.kind {
        Kind::Tcp { syn } => Verdict::Accept(Accepted { syn }),
        Kind::Echo => Verdict::Accept(Accepted { syn: None }),
        Kind::Other(proto) => Verdict::Protocol(proto),
        Kind::Bad => Verdict::Malformed,
    }
}

/// The destination address of an outgoing packet (for routing to a peer).
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => ipv4_at(packet, 16).map(IpAddr::V4),
        6 => ipv6_at(packet, 24).map(IpAddr::V6),
        _ => None,
    }
}

/// The source address of a packet (already classified as accepted).
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => ipv4_at(packet, 12).map(IpAddr::V4),
        6 => ipv6_at(packet, 8).map(IpAddr::V6),
        _ => None,
    }
}

/// The TCP fields of a packet that loss recovery ([`super::recovery`])
/// follows, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Bytes of payload after the TCP header.
    pub payload_len: usize,
}

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

/// The TCP segment in `packet` (IPv4 without fragments, or IPv6 with TCP as
/// the first next header), or None for anything else or anything malformed.
pub fn tcp_segment(packet: &[u8]) -> Option<TcpSegment> {
    let (src, dst, tcp) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let total = usize::from(be16(packet, 2)?);
            let frag = be16(packet, 6)?;
            if ihl < IPV4_HEADER_MIN
                || total < ihl
                || *packet.get(9)? != PROTO_TCP
                || frag & 0x2000 != 0
                || frag & 0x1fff != 0
            {
                return None;
            }
            (
                IpAddr::V4(ipv4_at(packet, 12)?),
                IpAddr::V4(ipv4_at(packet, 16)?),
                packet.get(ihl..total)?,
            )
        }
        6 => {
            let end = IPV6_HEADER.checked_add(usize::from(be16(packet, 4)?))?;
            if *packet.get(6)? != PROTO_TCP {
                return None;
            }
            (
                IpAddr::V6(ipv6_at(packet, 8)?),
                IpAddr::V6(ipv6_at(packet, 24)?),
                packet.get(IPV6_HEADER..end)?,
            )
        }
        _ => return None,
    };
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    if data_offset < TCP_HEADER_MIN || data_offset > tcp.len() {
        return None;
    }
    Some(TcpSegment {
        src,
        dst,
        src_port: be16(tcp, 0)?,
        dst_port: be16(tcp, 2)?,
        seq: be32(tcp, 4)?,
        ack: be32(tcp, 8)?,
        flags: *tcp.get(13)?,
        window: be16(tcp, 14)?,
        payload_len: tcp.len().saturating_sub(data_offset),
    })
}

struct Parsed {
    src: IpAddr,
    dst: IpAddr,
    kind: Kind,
}

enum Kind {
    Tcp { syn: Option<TcpSyn> },
    Echo,
    Other(u8),
    Bad,
}

fn parse_v4(p: &[u8]) -> Option<Parsed> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    let total = usize::from(be16(p, 2)?);
    if ihl < IPV4_HEADER_MIN || total < ihl || total > p.len() {
        return None;
    }
    let src = IpAddr::V4(ipv4_at(p, 12)?);
    let dst = IpAddr::V4(ipv4_at(p, 16)?);
    let proto = *p.get(9)?;
    let frag = be16(p, 6)?;
    // More-fragments flag or a fragment offset: TCP from a peer is never
    // fragmented (the stack's MSS fits the tunnel MTU); reassembly is work
    // an attacker could make us do, so fragments are simply dropped.
    let fragmented = frag & 0x2000 != 0 || frag & 0x1fff != 0;
    let payload = p.get(ihl..total)?;
    let kind = if fragmented {
        Kind::Other(proto)
    } else {
        transport(proto, payload, PROTO_ICMP, ICMP_ECHO_REQUEST)
    };
    Some(Parsed { src, dst, kind })
}

fn parse_v6(p: &[u8]) -> Option<Parsed> {
    let payload_len = usize::from(be16(p, 4)?);
    let end = IPV6_HEADER.checked_add(payload_len)?;
    if end > p.len() {
        return None;
    }
    let src = IpAddr::V6(ipv6_at(p, 8)?);
    let dst = IpAddr::V6(ipv6_at(p, 24)?);
    let next = *p.get(6)?;
    let payload = p.get(IPV6_HEADER..end)?;
    // Extension headers are not followed: anything but TCP or ICMPv6 as the
    // first next-header is dropped.
    let kind = transport(next, payload, PROTO_ICMPV6, ICMPV6_ECHO_REQUEST);
    Some(Parsed { src, dst, kind })
}

fn transport(proto: u8, payload: &[u8], icmp_proto: u8, echo_type: u8) -> Kind {
    if proto == PROTO_TCP {
        let Some(offset_byte) = payload.get(12) else {
            return Kind::Bad;
        };
        let data_offset = usize::from(offset_byte >> 4) * 4;
        if payload.len() < TCP_HEADER_MIN
            || data_offset < TCP_HEADER_MIN
            || data_offset > payload.len()
        {
            return Kind::Bad;
        }
        let (Some(src_port), Some(dst_port), Some(flags)) =
            (be16(payload, 0), be16(payload, 2), payload.get(13))
        else {
            return Kind::Bad;
        };
        let syn = flags & 0x02 != 0 && flags & 0x10 == 0 && flags & 0x04 == 0;
        return Kind::Tcp {
            syn: syn.then_some(TcpSyn { src_port, dst_port }),
        };
    }
    if proto == icmp_proto {
        return match payload.first() {
            Some(t) if *t == echo_type && payload.len() >= 8 => Kind::Echo,
            Some(_) => Kind::Other(proto),
            None => Kind::Bad,
        };
    }
    Kind::Other(proto)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11));
    const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));

    fn v4(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            panic!("v4 only")
        };
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        p.extend_from_slice(payload);
        p
    }

    fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&src_port.to_be_bytes());
        t.extend_from_slice(&dst_port.to_be_bytes());
        t.extend_from_slice(&[0; 8]);
        t.push(5 << 4);
        t.push(flags);
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    #[test]
    fn a_syn_from_the_peer_to_the_gateway_is_accepted() {
        let p = v4(PEER, GW, PROTO_TCP, &tcp(40000, 22, 0x02));
        assert_eq!(
            classify(&p, PEER, GW),
            Verdict::Accept(Accepted {
                syn: Some(TcpSyn {
                    src_port: 40000,
                    dst_port: 22
                })
            })
        );
        let ack = v4(PEER, GW, PROTO_TCP, &tcp(40000, 22, 0x10));
        assert_eq!(
            classify(&ack, PEER, GW),
            Verdict::Accept(Accepted { syn: None })
        );
        let synack = v4(PEER, GW, PROTO_TCP, &tcp(40000, 22, 0x12));
        assert_eq!(
            classify(&synack, PEER, GW),
            Verdict::Accept(Accepted { syn: None })
        );
    }

    #[test]
    fn a_packet_with_another_peers_source_is_spoofed() {
        let p = v4(OTHER, GW, PROTO_TCP, &tcp(40000, 22, 0x02));
        assert_eq!(classify(&p, PEER, GW), Verdict::Spoofed(OTHER));
        // Even when it is malformed past the addresses or not TCP.
        let u = v4(OTHER, GW, 17, &[0; 8]);
        assert_eq!(classify(&u, PEER, GW), Verdict::Spoofed(OTHER));
    }

    #[test]
    fn nothing_is_routed_past_the_gateway() {
        let target = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let p = v4(PEER, target, PROTO_TCP, &tcp(40000, 22, 0x02));
        assert_eq!(classify(&p, PEER, GW), Verdict::NotForGateway(target));
        let other_in_range = v4(PEER, OTHER, PROTO_TCP, &tcp(40000, 22, 0x02));
        assert_eq!(
            classify(&other_in_range, PEER, GW),
            Verdict::NotForGateway(OTHER)
        );
    }

    #[test]
    fn only_tcp_and_icmp_echo_are_accepted() {
        let udp = v4(PEER, GW, 17, &[0, 53, 0, 53, 0, 8, 0, 0]);
        assert_eq!(classify(&udp, PEER, GW), Verdict::Protocol(17));
        let echo = v4(PEER, GW, PROTO_ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            classify(&echo, PEER, GW),
            Verdict::Accept(Accepted { syn: None })
        );
        let unreachable = v4(PEER, GW, PROTO_ICMP, &[3, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            classify(&unreachable, PEER, GW),
            Verdict::Protocol(PROTO_ICMP)
        );
        let gre = v4(PEER, GW, 47, &[0; 4]);
        assert_eq!(classify(&gre, PEER, GW), Verdict::Protocol(47));
    }

    #[test]
    fn fragments_are_dropped() {
        let mut p = v4(PEER, GW, PROTO_TCP, &tcp(40000, 22, 0x02));
        p[6] = 0x20; // more fragments
        assert_eq!(classify(&p, PEER, GW), Verdict::Protocol(PROTO_TCP));
        p[6] = 0;
        p[7] = 8; // offset
        assert_eq!(classify(&p, PEER, GW), Verdict::Protocol(PROTO_TCP));
    }

    #[test]
    fn malformed_packets_are_dropped_without_panicking() {
        let good = v4(PEER, GW, PROTO_TCP, &tcp(40000, 22, 0x02));
        // Every truncation of a good packet is handled.
        for n in 0..good.len() {
            let v = classify(&good[..n], PEER, GW);
            assert!(!matches!(v, Verdict::Accept(_)), "prefix {n} accepted");
        }
        assert_eq!(classify(&[], PEER, GW), Verdict::Malformed);
        assert_eq!(classify(&[0x15; 40], PEER, GW), Verdict::Malformed);
        // Total length larger than the packet.
        let mut long = good.clone();
        long[2] = 0xff;
        assert_eq!(classify(&long, PEER, GW), Verdict::Malformed);
        // Header length below 20.
        let mut ihl = good.clone();
        ihl[0] = 0x44;
        assert_eq!(classify(&ihl, PEER, GW), Verdict::Malformed);
        // TCP data offset past the end.
        let mut off = good.clone();
        off[20 + 12] = 0xf0;
        assert_eq!(classify(&off, PEER, GW), Verdict::Malformed);
        // Garbage of every length never panics.
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = classify(&bytes, PEER, GW);
            let _ = destination(&bytes);
        }
    }

    #[test]
    fn ipv6_is_filtered_alike() {
        let peer: IpAddr = "fd00::10".parse().unwrap();
        let gw: IpAddr = "fd00::1".parse().unwrap();
        let (IpAddr::V6(s), IpAddr::V6(d)) = (peer, gw) else {
            unreachable!()
        };
        let t = tcp(40000, 22, 0x02);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(t.len() as u16).to_be_bytes());
        p.extend_from_slice(&[PROTO_TCP, 64]);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        p.extend_from_slice(&t);
        assert!(matches!(classify(&p, peer, gw), Verdict::Accept(_)));
        assert_eq!(destination(&p), Some(gw));
        let other: IpAddr = "fd00::11".parse().unwrap();
        assert_eq!(classify(&p, other, gw), Verdict::Spoofed(peer));
        p[6] = 17;
        assert_eq!(classify(&p, peer, gw), Verdict::Protocol(17));
        p[6] = 0; // hop-by-hop extension header: not followed
        assert_eq!(classify(&p, peer, gw), Verdict::Protocol(0));
    }
}

/// Property tests: whatever a peer's packet holds, the filter and the
/// parsers never panic, and nothing is accepted that does not come from
/// the peer's own address to the gateway's. Cases: proptest's default
/// (256), or `PROPTEST_CASES` for a longer run.
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10));
    const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));

    fn peer6() -> IpAddr {
        "fd00::10".parse().unwrap()
    }

    fn gw6() -> IpAddr {
        "fd00::1".parse().unwrap()
    }

    /// Everything the tunnel calls on a decrypted packet.
    fn all_parsers(p: &[u8], peer: IpAddr, gw: IpAddr) -> Verdict {
        let v = classify(p, peer, gw);
        let _ = destination(p);
        let _ = source(p);
        if let Some(seg) = tcp_segment(p) {
            assert!(seg.payload_len <= p.len());
        }
        v
    }

    fn assert_accept_is_from_peer_to_gateway(p: &[u8], v: Verdict, peer: IpAddr, gw: IpAddr) {
        if let Verdict::Accept(a) = v {
            assert_eq!(source(p), Some(peer));
            assert_eq!(destination(p), Some(gw));
            if let Some(syn) = a.syn {
                let seg = tcp_segment(p).expect("an accepted SYN is a TCP segment");
                assert_eq!((seg.src_port, seg.dst_port), (syn.src_port, syn.dst_port));
                assert_eq!(seg.flags & (TCP_SYN | TCP_ACK | TCP_RST), TCP_SYN);
            }
        }
    }

    /// A packet whose IP header looks plausible (version, addresses from a
    /// small set so that matches happen), with arbitrary other fields.
    fn v4_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..16,
            any::<u16>(),
            any::<u16>(),
            prop::sample::select(vec![1u8, 6, 17, 58, 0]),
            prop::sample::select(vec![[10u8, 77, 0, 10], [10, 77, 0, 11], [10, 77, 0, 1]]),
            prop::sample::select(vec![[10u8, 77, 0, 1], [10, 77, 0, 9], [192, 0, 2, 1]]),
            prop::collection::vec(any::<u8>(), 0..120),
            any::<bool>(),
        )
            .prop_map(|(ihl, total, frag, proto, src, dst, payload, fix_len)| {
                let mut p = vec![0x40 | ihl, 0];
                let len = if fix_len {
                    (20 + payload.len()) as u16
                } else {
                    total
                };
                p.extend_from_slice(&len.to_be_bytes());
                p.extend_from_slice(&[0, 0]);
                p.extend_from_slice(&frag.to_be_bytes());
                p.extend_from_slice(&[64, proto, 0, 0]);
                p.extend_from_slice(&src);
                p.extend_from_slice(&dst);
                p.extend_from_slice(&payload);
                p
            })
    }

    fn v6_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u16>(),
            prop::sample::select(vec![6u8, 58, 17, 0, 44]),
            prop::sample::select(vec!["fd00::10", "fd00::11", "fd00::1"]),
            prop::sample::select(vec!["fd00::1", "fd00::9", "2001:db8::1"]),
            prop::collection::vec(any::<u8>(), 0..120),
            any::<bool>(),
        )
            .prop_map(|(plen, next, src, dst, payload, fix_len)| {
                let src: Ipv6Addr = src.parse().unwrap();
                let dst: Ipv6Addr = dst.parse().unwrap();
                let mut p = vec![0x60, 0, 0, 0];
                let len = if fix_len { payload.len() as u16 } else { plen };
                p.extend_from_slice(&len.to_be_bytes());
                p.extend_from_slice(&[next, 64]);
                p.extend_from_slice(&src.octets());
                p.extend_from_slice(&dst.octets());
                p.extend_from_slice(&payload);
                p
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(p in prop::collection::vec(any::<u8>(), 0..4096)) {
            let v = all_parsers(&p, PEER, GW);
            assert_accept_is_from_peer_to_gateway(&p, v, PEER, GW);
            let v = all_parsers(&p, peer6(), gw6());
            assert_accept_is_from_peer_to_gateway(&p, v, peer6(), gw6());
        }

        #[test]
        fn ipv4_headers_with_arbitrary_fields_never_panic(p in v4_packet()) {
            let v = all_parsers(&p, PEER, GW);
            assert_accept_is_from_peer_to_gateway(&p, v, PEER, GW);
        }

        #[test]
        fn ipv6_headers_with_arbitrary_fields_never_panic(p in v6_packet()) {
            let v = all_parsers(&p, peer6(), gw6());
            assert_accept_is_from_peer_to_gateway(&p, v, peer6(), gw6());
        }

        #[test]
        fn every_truncation_and_byte_flip_of_a_syn_is_handled(
            cut in 0usize..60,
            at in 0usize..40,
            byte in any::<u8>(),
        ) {
            let mut p = vec![
                0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0, 10, 77, 0, 10, 10, 77, 0, 1,
            ];
            p.extend_from_slice(&[0x9c, 0x40, 0, 22, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            p[at] = byte;
            p.truncate(cut.min(p.len()));
            let v = all_parsers(&p, PEER, GW);
            assert_accept_is_from_peer_to_gateway(&p, v, PEER, GW);
        }
    }
}

//! Link and network layers of captured packets: link headers (Ethernet with VLAN tags, Linux
//! cooked v1/v2, raw IP, BSD loopback), IPv4 and IPv6 (extension headers skipped), fragment
//! reassembly with bounded memory, then UDP datagrams out and TCP segments on to `tcp`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use super::tcp::{Segment, Streams};
use super::{CaptureStats, Captured, Transport};

/// Link-layer header types (tcpdump.org/linktypes.html).
mod link {
    pub const NULL: u16 = 0;
    pub const ETHERNET: u16 = 1;
    /// DLT_RAW as written by most systems.
    pub const RAW_12: u16 = 12;
    /// DLT_RAW as written by OpenBSD.
    pub const RAW_14: u16 = 14;
    pub const RAW: u16 = 101;
    pub const LOOP: u16 = 108;
    pub const LINUX_SLL: u16 = 113;
    pub const IPV4: u16 = 228;
    pub const IPV6: u16 = 229;
    pub const LINUX_SLL2: u16 = 276;
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86DD;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88A8;
const ETH_QINQ_OLD: u16 = 0x9100;
const ETH_PPPOE_SESSION: u16 = 0x8864;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Why a packet yields nothing; each maps to one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    NonIp,
    Other,
    Truncated,
    Malformed,
}

/// Turns packet records into [`Captured`] items: sans-IO, packets and their times in.
#[derive(Default)]
pub(super) struct Decoder {
    defrag: Defrag,
    tcp: Streams,
}

impl Decoder {
    /// One packet record of the given link type.
    pub(super) fn packet(
        &mut self,
        at: SystemTime,
        link: u16,
        data: &[u8],
        out: &mut VecDeque<Captured>,
        stats: &mut CaptureStats,
    ) {
        let result = link_payload(link, data).and_then(|ip| self.ip(at, ip, out, stats));
        match result {
            Ok(()) => {}
            Err(Skip::NonIp) => stats.skipped_non_ip += 1,
            Err(Skip::Other) => stats.skipped_other += 1,
            Err(Skip::Truncated) => stats.truncated += 1,
            Err(Skip::Malformed) => stats.malformed += 1,
        }
    }

    /// End of capture: incomplete fragment sets are dropped, held TCP data is framed.
    pub(super) fn finish(&mut self, out: &mut VecDeque<Captured>, stats: &mut CaptureStats) {
        stats.fragments_dropped += self.defrag.sets.len() as u64;
        self.defrag = Defrag::default();
        self.tcp.finish(out, stats);
    }

    fn ip(
        &mut self,
        at: SystemTime,
        data: &[u8],
        out: &mut VecDeque<Captured>,
        stats: &mut CaptureStats,
    ) -> Result<(), Skip> {
        let pkt = parse_ip(data)?;
        let Some(frag) = pkt.frag else {
            return self.transport(at, pkt.src, pkt.dst, pkt.proto, pkt.payload, out, stats);
        };
        stats.fragments += 1;
        let key = FragKey {
            src: pkt.src,
            dst: pkt.dst,
            proto: pkt.proto,
            id: frag.id,
        };
        let Some(whole) = self.defrag.push(at, key, frag, pkt.payload, stats) else {
            return Ok(());
        };
        stats.fragments_reassembled += 1;
        // An IPv6 fragmentable part may begin with more extension headers.
        let (proto, start) = match pkt.src {
            IpAddr::V4(_) => (pkt.proto, 0),
            IpAddr::V6(_) => match walk_ipv6_ext(pkt.proto, &whole, 0)? {
                Ext::Upper { proto, at } => (proto, at),
                Ext::Fragment { .. } => return Err(Skip::Malformed),
            },
        };
        self.transport(at, pkt.src, pkt.dst, proto, &whole[start..], out, stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn transport(
        &mut self,
        at: SystemTime,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        data: &[u8],
        out: &mut VecDeque<Captured>,
        stats: &mut CaptureStats,
    ) -> Result<(), Skip> {
        match proto {
            PROTO_UDP => {
                if data.len() < 8 {
                    return Err(Skip::Truncated);
                }
                let sport = be16(data, 0);
                let dport = be16(data, 2);
                let len = usize::from(be16(data, 4));
                // 0: IPv6 jumbogram or a segmentation-offload capture; the IP length bounds it.
                let end = match len {
                    0 => data.len(),
                    1..=7 => return Err(Skip::Malformed),
                    _ if len > data.len() => return Err(Skip::Truncated),
                    _ => len,
                };
                stats.udp += 1;
                out.push_back(Captured {
                    at,
                    transport: Transport::Udp,
                    src: SocketAddr::new(src, sport),
                    dst: SocketAddr::new(dst, dport),
                    payload: data[8..end].to_vec(),
                });
                Ok(())
            }
            PROTO_TCP => {
                if data.len() < 20 {
                    return Err(Skip::Truncated);
                }
                let off = usize::from(data[12] >> 4) * 4;
                if off < 20 {
                    return Err(Skip::Malformed);
                }
                if off > data.len() {
                    return Err(Skip::Truncated);
                }
                stats.tcp_segments += 1;
                let seg = Segment {
                    src: SocketAddr::new(src, be16(data, 0)),
                    dst: SocketAddr::new(dst, be16(data, 2)),
                    seq: be32(data, 4),
                    flags: data[13],
                    payload: &data[off..],
                };
                self.tcp.segment(at, seg, out, stats);
                Ok(())
            }
            _ => Err(Skip::Other),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Strips the link-layer header: the IP packet inside, or why there is none.
fn link_payload(link: u16, data: &[u8]) -> Result<&[u8], Skip> {
    match link {
        link::ETHERNET => {
            if data.len() < 14 {
                return Err(Skip::Truncated);
            }
            ethertype_payload(be16(data, 12), &data[14..])
        }
        // Linux cooked v1: packet type, ARPHRD, address length, 8 address bytes, protocol.
        link::LINUX_SLL => {
            if data.len() < 16 {
                return Err(Skip::Truncated);
            }
            ethertype_payload(be16(data, 14), &data[16..])
        }
        // Linux cooked v2: protocol, reserved, ifindex, ARPHRD, packet type, address length,
        // 8 address bytes.
        link::LINUX_SLL2 => {
            if data.len() < 20 {
                return Err(Skip::Truncated);
            }
            ethertype_payload(be16(data, 0), &data[20..])
        }
        link::RAW | link::RAW_12 | link::RAW_14 | link::IPV4 | link::IPV6 => Ok(data),
        // BSD loopback: the address family in the capturing host's byte order (NULL) or in
        // network order (LOOP).
        link::NULL | link::LOOP => {
            if data.len() < 4 {
                return Err(Skip::Truncated);
            }
            let raw = [data[0], data[1], data[2], data[3]];
            let family = if link == link::LOOP {
                u32::from_be_bytes(raw)
            } else {
                // Families are small numbers: whichever order makes it small is the right one.
                let le = u32::from_le_bytes(raw);
                if le > 0xFFFF {
                    le.swap_bytes()
                } else {
                    le
                }
            };
            match family {
                // AF_INET; AF_INET6 of Linux, NetBSD/OpenBSD, FreeBSD, macOS.
                2 | 10 | 24 | 28 | 30 => Ok(&data[4..]),
                _ => Err(Skip::NonIp),
            }
        }
        _ => Err(Skip::NonIp),
    }
}

/// The IP packet behind an ethertype, through VLAN tags (802.1Q, QinQ) and PPPoE sessions.
fn ethertype_payload(mut ethertype: u16, mut data: &[u8]) -> Result<&[u8], Skip> {
    // A bounded number of tags: a crafted frame cannot make this loop long.
    for _ in 0..8 {
        match ethertype {
            ETH_IPV4 | ETH_IPV6 => return Ok(data),
            ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD => {
                if data.len() < 4 {
                    return Err(Skip::Truncated);
                }
                ethertype = be16(data, 2);
                data = &data[4..];
            }
            ETH_PPPOE_SESSION => {
                // Version/type, code, session id, length, then the PPP protocol.
                if data.len() < 8 {
                    return Err(Skip::Truncated);
                }
                return match be16(data, 6) {
                    0x0021 | 0x0057 => Ok(&data[8..]),
                    _ => Err(Skip::NonIp),
                };
            }
            _ => return Err(Skip::NonIp),
        }
    }
    Err(Skip::Malformed)
}

/// Where a fragment goes in its datagram.
#[derive(Debug, Clone, Copy)]
struct Frag {
    id: u32,
    offset: usize,
    more: bool,
}

/// An IP packet's addresses and what it carries.
struct IpPacket<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// Upper-layer protocol (for an IPv6 fragment: the fragment header's next header).
    proto: u8,
    /// Upper-layer bytes (for a fragment: this fragment's share of the fragmentable part).
    payload: &'a [u8],
    frag: Option<Frag>,
}

fn parse_ip(data: &[u8]) -> Result<IpPacket<'_>, Skip> {
    match data.first().map(|b| b >> 4) {
        Some(4) => parse_ipv4(data),
        Some(6) => parse_ipv6(data),
        Some(_) => Err(Skip::Malformed),
        None => Err(Skip::Truncated),
    }
}

fn parse_ipv4(data: &[u8]) -> Result<IpPacket<'_>, Skip> {
    if data.len() < 20 {
        return Err(Skip::Truncated);
    }
    let ihl = usize::from(data[0] & 0x0F) * 4;
    if ihl < 20 {
        return Err(Skip::Malformed);
    }
    // Total length 0: a segmentation-offload packet captured before the NIC split it.
    let total = match usize::from(be16(data, 2)) {
        0 => data.len(),
        n => n,
    };
    if total < ihl {
        return Err(Skip::Malformed);
    }
    // Shorter than announced: cut by the snap length. Longer: Ethernet padding or an FCS,
    // which the total length leaves out.
    if total > data.len() {
        return Err(Skip::Truncated);
    }
    let flags_offset = be16(data, 6);
    let more = flags_offset & 0x2000 != 0;
    let offset = usize::from(flags_offset & 0x1FFF) * 8;
    let frag = (more || offset > 0).then_some(Frag {
        id: u32::from(be16(data, 4)),
        offset,
        more,
    });
    Ok(IpPacket {
        src: IpAddr::V4(Ipv4Addr::new(data[12], data[13], data[14], data[15])),
        dst: IpAddr::V4(Ipv4Addr::new(data[16], data[17], data[18], data[19])),
        proto: data[9],
        payload: &data[ihl..total],
        frag,
    })
}

fn parse_ipv6(data: &[u8]) -> Result<IpPacket<'_>, Skip> {
    if data.len() < 40 {
        return Err(Skip::Truncated);
    }
    // 0: jumbogram (RFC 2675) or a segmentation-offload capture; take what was captured.
    let end = match usize::from(be16(data, 4)) {
        0 => data.len(),
        n => 40 + n,
    };
    if end > data.len() {
        return Err(Skip::Truncated);
    }
    let data = &data[..end];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&data[8..24]);
    dst.copy_from_slice(&data[24..40]);
    let (src, dst) = (
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
    );
    match walk_ipv6_ext(data[6], data, 40)? {
        Ext::Upper { proto, at } => Ok(IpPacket {
            src,
            dst,
            proto,
            payload: &data[at..],
            frag: None,
        }),
        Ext::Fragment { next, frag, at } => Ok(IpPacket {
            src,
            dst,
            proto: next,
            payload: &data[at..],
            frag: Some(frag),
        }),
    }
}

/// Where an IPv6 extension-header chain ends.
enum Ext {
    /// The upper-layer header `proto` starts at byte `at`.
    Upper { proto: u8, at: usize },
    /// A (non-atomic) fragment header: the fragmentable part, starting with header `next`,
    /// begins at byte `at`.
    Fragment { next: u8, frag: Frag, at: usize },
}

/// Skips IPv6 extension headers (RFC 8200 §4) starting with header `next` at `data[at..]`.
fn walk_ipv6_ext(mut next: u8, data: &[u8], mut at: usize) -> Result<Ext, Skip> {
    // RFC 8200 allows each header once (destination options twice); a longer chain is hostile.
    for _ in 0..16 {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: length in
            // 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                if data.len() < at + 2 {
                    return Err(Skip::Truncated);
                }
                next = data[at];
                at += (usize::from(data[at + 1]) + 1) * 8;
            }
            // Authentication header: length in 4-octet units, not counting the first 2.
            51 => {
                if data.len() < at + 2 {
                    return Err(Skip::Truncated);
                }
                next = data[at];
                at += (usize::from(data[at + 1]) + 2) * 4;
            }
            // Fragment header.
            44 => {
                if data.len() < at + 8 {
                    return Err(Skip::Truncated);
                }
                let after = data[at];
                let off_flags = be16(data, at + 2);
                let frag = Frag {
                    id: be32(data, at + 4),
                    offset: usize::from(off_flags & 0xFFF8),
                    more: off_flags & 1 != 0,
                };
                at += 8;
                if frag.offset == 0 && !frag.more {
                    // Atomic fragment (RFC 6946): a whole packet.
                    next = after;
                    continue;
                }
                return Ok(Ext::Fragment {
                    next: after,
                    frag,
                    at,
                });
            }
            // No next header; ESP and the rest are not for us.
            _ => {
                if at > data.len() {
                    return Err(Skip::Truncated);
                }
                return Ok(Ext::Upper { proto: next, at });
            }
        }
        if at > data.len() {
            return Err(Skip::Truncated);
        }
    }
    Err(Skip::Malformed)
}

/// Identifies the datagram a fragment belongs to (RFC 791 §3.2, RFC 8200 §4.5). For IPv6 the
/// protocol is the fragment header's next header, the same in every fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

/// Fragments held for one datagram.
struct FragSet {
    /// Capture time of the first fragment seen: the set expires [`FRAG_TIMEOUT`] later.
    started: SystemTime,
    /// The datagram's bytes so far (gaps are zero until filled).
    data: Vec<u8>,
    /// Received byte ranges, sorted and merged.
    have: Vec<(usize, usize)>,
    /// Known once the last fragment (no "more" flag) arrived.
    total: Option<usize>,
}

/// Reassembly gives up on a datagram after this much capture time (Linux's ipfrag_time).
const FRAG_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many datagrams in reassembly at once; the oldest is dropped to make room.
const FRAG_MAX_SETS: usize = 256;
/// At most this many bytes held in all sets together.
const FRAG_MAX_BYTES: usize = 8 << 20;
/// An IP datagram's payload cannot be longer.
const FRAG_MAX_DATAGRAM: usize = 65_535;

#[derive(Default)]
struct Defrag {
    sets: HashMap<FragKey, FragSet>,
    bytes: usize,
}

impl Defrag {
    /// Adds a fragment; returns the datagram's payload once it is complete.
    fn push(
        &mut self,
        at: SystemTime,
        key: FragKey,
        frag: Frag,
        piece: &[u8],
        stats: &mut CaptureStats,
    ) -> Option<Vec<u8>> {
        self.expire(at, stats);
        let end = frag.offset + piece.len();
        if end > FRAG_MAX_DATAGRAM {
            // No datagram is that long: give the set up (counted once even if it had no
            // fragments yet).
            if self.sets.contains_key(&key) {
                self.drop_set(&key, stats);
            } else {
                stats.fragments_dropped += 1;
            }
            return None;
        }
        if !self.sets.contains_key(&key) {
            while self.sets.len() >= FRAG_MAX_SETS || self.bytes + end > FRAG_MAX_BYTES {
                let Some(oldest) = self
                    .sets
                    .iter()
                    .min_by_key(|(_, s)| s.started)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                self.drop_set(&oldest, stats);
            }
        }
        let set = self.sets.entry(key).or_insert_with(|| FragSet {
            started: at,
            data: Vec::new(),
            have: Vec::new(),
            total: None,
        });
        if !frag.more {
            if set.total.is_some_and(|t| t != end) || set.have.last().is_some_and(|r| r.1 > end) {
                // Two different "last" fragments, or data beyond the end: not one datagram.
                self.drop_set(&key, stats);
                return None;
            }
            set.total = Some(end);
        } else if set.total.is_some_and(|t| end > t) {
            self.drop_set(&key, stats);
            return None;
        }
        if set.data.len() < end {
            self.bytes += end - set.data.len();
            set.data.resize(end, 0);
        }
        // Overlaps (RFC 5722 forbids them for IPv6) keep the later copy; a real sender repeats
        // the same bytes.
        set.data[frag.offset..end].copy_from_slice(piece);
        insert_range(&mut set.have, (frag.offset, end));
        let complete = set
            .total
            .is_some_and(|t| set.have.len() == 1 && set.have[0] == (0, t));
        if !complete {
            return None;
        }
        let set = self.sets.remove(&key)?;
        self.bytes -= set.data.len();
        Some(set.data)
    }

    fn drop_set(&mut self, key: &FragKey, stats: &mut CaptureStats) {
        if let Some(set) = self.sets.remove(key) {
            self.bytes -= set.data.len();
            stats.fragments_dropped += 1;
        }
    }

    fn expire(&mut self, now: SystemTime, stats: &mut CaptureStats) {
        let before = self.sets.len();
        let mut freed = 0;
        self.sets.retain(|_, set| {
            let keep = now
                .duration_since(set.started)
                .map_or(true, |age| age <= FRAG_TIMEOUT);
            if !keep {
                freed += set.data.len();
            }
            keep
        });
        self.bytes -= freed;
        stats.fragments_dropped += (before - self.sets.len()) as u64;
    }
}

/// Adds `[start, end)` to sorted, disjoint, non-adjacent ranges.
fn insert_range(ranges: &mut Vec<(usize, usize)>, (mut start, mut end): (usize, usize)) {
    if start >= end {
        return;
    }
    let mut i = 0;
    while i < ranges.len() {
        let (s, e) = ranges[i];
        if e < start {
            i += 1;
        } else if end < s {
            break;
        } else {
            start = start.min(s);
            end = end.max(e);
            ranges.remove(i);
        }
    }
    ranges.insert(i, (start, end));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut r = Vec::new();
        insert_range(&mut r, (10, 20));
        insert_range(&mut r, (30, 40));
        assert_eq!(r, [(10, 20), (30, 40)]);
        insert_range(&mut r, (0, 5));
        assert_eq!(r, [(0, 5), (10, 20), (30, 40)]);
        insert_range(&mut r, (5, 10));
        assert_eq!(r, [(0, 20), (30, 40)]);
        insert_range(&mut r, (15, 35));
        assert_eq!(r, [(0, 40)]);
        insert_range(&mut r, (3, 3));
        assert_eq!(r, [(0, 40)]);
    }

    #[test]
    fn null_link_family_in_either_byte_order() {
        let ip = [0x45u8; 1];
        for family in [[2, 0, 0, 0], [0, 0, 0, 2], [30, 0, 0, 0], [0, 0, 0, 24]] {
            let mut pkt = family.to_vec();
            pkt.extend_from_slice(&ip);
            assert_eq!(link_payload(link::NULL, &pkt), Ok(&ip[..]));
        }
        assert_eq!(
            link_payload(link::NULL, &[7, 0, 0, 0, 0x45]),
            Err(Skip::NonIp)
        );
        assert_eq!(link_payload(link::LOOP, &[0, 0, 0, 2, 0x45]), Ok(&ip[..]));
    }

    #[test]
    fn ethernet_through_vlan_tags_and_pppoe() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0xA8, 0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00, 0x45]);
        assert_eq!(link_payload(link::ETHERNET, &f), Ok(&[0x45u8][..]));
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 2, 0x00, 0x57, 0x60]);
        assert_eq!(link_payload(link::ETHERNET, &f), Ok(&[0x60u8][..]));
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x06, 0, 1]);
        assert_eq!(link_payload(link::ETHERNET, &f), Err(Skip::NonIp));
    }
}

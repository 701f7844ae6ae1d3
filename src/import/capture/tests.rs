//! Tests of the capture reader: real captures from `fixtures/pcap/` (expected figures taken with
//! tshark/capinfos 4.0), synthetic files for every format, link type and reassembly case the
//! fixtures lack, damaged files, and property tests that nothing panics.

use super::*;
use crate::sip::msg::Message;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::UNIX_EPOCH;

// ---------------------------------------------------------------------------------------------
// Helpers

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pcap")
        .join(name)
}

fn read_fixture(name: &str) -> (Vec<Captured>, CaptureStats) {
    read_capture(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn read_bytes(bytes: &[u8]) -> Result<(Vec<Captured>, CaptureStats), CaptureError> {
    read_capture_from(Cursor::new(bytes))
}

/// `INVITE`, `200/INVITE`... for a SIP message, `None` for anything else.
fn sip_label(payload: &[u8]) -> Option<String> {
    let (msg, _) = Message::parse(payload).ok()?;
    Some(match msg.status() {
        Some(code) => format!("{code}/{}", msg.cseq()?.1),
        None => msg.method()?.to_string(),
    })
}

fn sip_counts(items: &[Captured], transport: Transport) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for c in items.iter().filter(|c| c.transport == transport) {
        if let Some(label) = sip_label(&c.payload) {
            *counts.entry(label).or_default() += 1;
        }
    }
    counts
}

fn expect_counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// UDP datagrams from `src` to `dst`.
fn flow(items: &[Captured], src: &str, dst: &str) -> usize {
    let (src, dst) = (sa(src), sa(dst));
    items
        .iter()
        .filter(|c| c.transport == Transport::Udp && c.src == src && c.dst == dst)
        .count()
}

/// UDP datagrams from `src` to `dst` that are RTP version 2 with this SSRC.
fn rtp_ssrc(items: &[Captured], src: &str, dst: &str, ssrc: u32) -> usize {
    let (src, dst) = (sa(src), sa(dst));
    items
        .iter()
        .filter(|c| c.transport == Transport::Udp && c.src == src && c.dst == dst)
        .filter(|c| c.payload.len() >= 12 && c.payload[0] >> 6 == 2)
        .filter(|c| {
            u32::from_be_bytes([c.payload[8], c.payload[9], c.payload[10], c.payload[11]]) == ssrc
        })
        .count()
}

/// Checks what every fixture must satisfy: sorted, times inside the capture, the counters add up.
fn check_common(items: &[Captured], stats: &CaptureStats, packets: u64, first: u64, last: u64) {
    assert_eq!(stats.packets, packets);
    assert_eq!(micros(stats.first.unwrap()), first);
    assert_eq!(micros(stats.last.unwrap()), last);
    assert_eq!(stats.duration().as_micros() as u64, last - first);
    assert!(
        items.windows(2).all(|w| w[0].at <= w[1].at),
        "sorted by time"
    );
    assert!(items
        .iter()
        .all(|c| c.at >= stats.first.unwrap() && c.at <= stats.last.unwrap()));
    let udp = items
        .iter()
        .filter(|c| c.transport == Transport::Udp)
        .count() as u64;
    let tcp = items
        .iter()
        .filter(|c| c.transport == Transport::Tcp)
        .count() as u64;
    assert_eq!(udp, stats.udp);
    assert_eq!(tcp, stats.tcp_messages);
    // Every record is accounted for once (a reassembled datagram is its last fragment).
    assert_eq!(
        stats.udp + stats.tcp_segments + stats.fragments - stats.fragments_reassembled
            + stats.skipped_non_ip
            + stats.skipped_other
            + stats.truncated
            + stats.malformed,
        stats.packets
    );
    assert_eq!(stats.truncated_records, 0);
}

// ---------------------------------------------------------------------------------------------
// Real captures (fixtures/pcap/SOURCE.md)

#[test]
fn sip_over_tcp_frames_whole_messages_in_order() {
    let (items, stats) = read_fixture("sip-over-tcp.pcap");
    check_common(&items, &stats, 84, 1311857686556175, 1311857693090341);
    assert_eq!(stats.format, Some(CaptureFormat::Pcap));
    assert_eq!(stats.tcp_segments, 16);
    assert_eq!(stats.tcp_messages, 7);
    assert_eq!(stats.udp, 68);
    assert_eq!(
        stats.tcp_gaps + stats.tcp_unframable + stats.tcp_incomplete,
        0
    );
    assert_eq!(stats.tcp_non_sip_streams, 0);
    let tcp: Vec<_> = items
        .iter()
        .filter(|c| c.transport == Transport::Tcp)
        .collect();
    let got: Vec<_> = tcp
        .iter()
        .map(|c| {
            (
                sip_label(&c.payload).unwrap(),
                micros(c.at),
                c.payload.len(),
            )
        })
        .collect();
    // Times and lengths: the frames carrying each message (3, 5, 7, 9, 11, 81, 83).
    let want = [
        ("INVITE", 1311857686562096, 788),
        ("100/INVITE", 1311857686602589, 447),
        ("180/INVITE", 1311857686621123, 499),
        ("200/INVITE", 1311857690905636, 752),
        ("ACK", 1311857690933132, 536),
        ("BYE", 1311857693057152, 536),
        ("200/BYE", 1311857693088359, 477),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(l, t, n)| (l.to_string(), *t, *n))
        .collect();
    assert_eq!(got, want);
    let (caller, proxy) = (sa("10.33.6.100:64802"), sa("10.33.6.101:5060"));
    assert_eq!((tcp[0].src, tcp[0].dst), (caller, proxy));
    assert_eq!((tcp[1].src, tcp[1].dst), (proxy, caller));
    assert_eq!((tcp[5].src, tcp[5].dst), (proxy, caller));
    // Each payload is exactly one message: it parses as a stream with nothing left over.
    for c in &tcp {
        let (_, n) = Message::parse_stream(&c.payload).unwrap();
        assert_eq!(n, c.payload.len());
    }
    // RTP (PCMA + CN) both ways, plus two RTCP packets.
    assert_eq!(flow(&items, "10.33.6.101:6050", "10.33.6.100:6000"), 42);
    assert_eq!(flow(&items, "10.33.6.100:6000", "10.33.6.101:6050"), 24);
    assert_eq!(
        rtp_ssrc(&items, "10.33.6.100:6000", "10.33.6.101:6050", 0x5A3361B3),
        24
    );
    assert_eq!(
        rtp_ssrc(&items, "10.33.6.101:6050", "10.33.6.100:6000", 0x42F433D4),
        42
    );
}

#[test]
fn sip_rtp_g711_two_calls_one_way_media() {
    let (items, stats) = read_fixture("sip-rtp-g711.pcap");
    check_common(&items, &stats, 852, 1480171979666393, 1480171996569179);
    assert_eq!(stats.udp, 852);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("INVITE", 2),
            ("100/INVITE", 2),
            ("200/INVITE", 2),
            ("ACK", 2),
            ("BYE", 1),
            ("200/BYE", 1),
        ])
    );
    assert_eq!(
        rtp_ssrc(&items, "10.0.2.15:27942", "10.0.2.20:6000", 0x343DA99B),
        425
    );
    assert_eq!(
        rtp_ssrc(&items, "10.0.2.15:28102", "10.0.2.20:6000", 0x343FFA34),
        414
    );
    assert_eq!(flow(&items, "10.0.2.20:6000", "10.0.2.15:27942"), 0);
}

#[test]
fn sip_rtp_g722_one_call() {
    let (items, stats) = read_fixture("sip-rtp-g722.pcap");
    check_common(&items, &stats, 433, 1480172906214942, 1480172914718702);
    assert_eq!(stats.udp, 433);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("INVITE", 1),
            ("100/INVITE", 1),
            ("200/INVITE", 1),
            ("ACK", 1),
            ("BYE", 1),
            ("200/BYE", 1),
        ])
    );
    assert_eq!(
        rtp_ssrc(&items, "10.0.2.15:17472", "10.0.2.20:6000", 0x043DAABA),
        425
    );
}

#[test]
fn invite_opus_bye_loopback() {
    let (items, stats) = read_fixture("invite-opus-bye.pcap");
    // The capture's clock was set to 2026.
    check_common(&items, &stats, 311, 1782336735418517, 1782336738426559);
    assert_eq!(stats.udp, 311);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("INVITE", 1),
            ("100/INVITE", 1),
            ("180/INVITE", 1),
            ("200/INVITE", 1),
            ("ACK", 1),
            ("BYE", 1),
            ("200/BYE", 1),
        ])
    );
    // Both directions use the same SSRC.
    assert_eq!(
        rtp_ssrc(&items, "127.0.0.1:5084", "127.0.0.1:5094", 0x0EEF0001),
        152
    );
    assert_eq!(
        rtp_ssrc(&items, "127.0.0.1:5094", "127.0.0.1:5084", 0x0EEF0001),
        152
    );
}

#[test]
fn codec_negotiation_reinvite() {
    let (items, stats) = read_fixture("codec-negotiation.pcap");
    check_common(&items, &stats, 614, 1782326787811597, 1782326793824278);
    assert_eq!(stats.udp, 614);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("INVITE", 2),
            ("100/INVITE", 1),
            ("180/INVITE", 1),
            ("200/INVITE", 2),
            ("ACK", 2),
            ("BYE", 1),
            ("200/BYE", 1),
        ])
    );
    // PCMU, then G.722 after the re-INVITE: a new SSRC, the same in both directions.
    for (a, b) in [
        ("127.0.0.1:5084", "127.0.0.1:5094"),
        ("127.0.0.1:5094", "127.0.0.1:5084"),
    ] {
        assert_eq!(rtp_ssrc(&items, a, b, 0x0E330AF3), 151);
        assert_eq!(rtp_ssrc(&items, a, b, 0x2D374E76), 151);
    }
    let labels: Vec<_> = items.iter().filter_map(|c| sip_label(&c.payload)).collect();
    assert_eq!(labels[..2], ["INVITE", "100/INVITE"]);
    assert_eq!(labels[labels.len() - 2..], ["BYE", "200/BYE"]);
}

#[test]
fn sip_dtmf2_register_decline_and_call() {
    let (items, stats) = read_fixture("SIP_DTMF2.cap");
    check_common(&items, &stats, 1360, 1126267345330945, 1126267445367724);
    assert_eq!(stats.udp, 1360);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("REGISTER", 5),
            ("100/REGISTER", 5),
            ("200/REGISTER", 5),
            ("INVITE", 3),
            ("100/INVITE", 3),
            ("180/INVITE", 2),
            ("200/INVITE", 2),
            ("603/INVITE", 1),
            ("ACK", 3),
        ])
    );
    // Asymmetric RTP ports: 4376 -> 4376 one way, 4374 -> 4376 the other.
    assert_eq!(
        rtp_ssrc(
            &items,
            "192.168.105.172:4376",
            "192.168.105.110:4376",
            0x5711BF84
        ),
        666
    );
    assert_eq!(
        rtp_ssrc(
            &items,
            "192.168.105.110:4374",
            "192.168.105.172:4376",
            0x9A7B5382
        ),
        665
    );
}

#[test]
fn opus_linux_cooked_capture() {
    let (items, stats) = read_fixture("opus-2013785496.pcap");
    check_common(&items, &stats, 765, 1701110726946982, 1701110742226461);
    assert_eq!(stats.udp, 765);
    assert_eq!(
        rtp_ssrc(&items, "10.0.0.51:4002", "10.0.0.45:12906", 0x1C2C77CA),
        765
    );
    assert!(sip_counts(&items, Transport::Udp).is_empty());
}

#[test]
fn opus_fec_pcapng() {
    let (items, stats) = read_fixture("16_bit_48khz_60_fec_rtp.pcapng");
    check_common(&items, &stats, 3000, 1482167074843890, 1482167134826912);
    assert_eq!(stats.format, Some(CaptureFormat::PcapNg));
    assert_eq!(stats.udp, 3000);
    assert_eq!(
        rtp_ssrc(
            &items,
            "10.24.17.53:12668",
            "10.24.17.123:16596",
            0x3760BFAA
        ),
        3000
    );
}

#[test]
fn srtp_call_with_fragmented_invite_and_background_noise() {
    let (items, stats) = read_fixture("SIP-SRTP-Normal_Call_two_parties.pcap");
    check_common(&items, &stats, 4753, 1523308438395512, 1523308482146782);
    // IPv4 UDP 4691 (one of them reassembled from two fragments) + IPv6 UDP (LLMNR) 10.
    assert_eq!(stats.udp, 4701);
    assert_eq!(stats.fragments, 2);
    assert_eq!(stats.fragments_reassembled, 1);
    assert_eq!(stats.fragments_dropped, 0);
    assert_eq!(stats.skipped_non_ip, 14, "ARP");
    assert_eq!(stats.skipped_other, 12, "ICMP");
    // SYNs to port 80/443 and to 5060 (answered by RST: the phone then sent its INVITE over
    // UDP, fragmented); none carries data.
    assert_eq!(stats.tcp_segments, 25);
    assert_eq!(stats.tcp_messages, 0);
    assert_eq!(
        sip_counts(&items, Transport::Udp),
        expect_counts(&[
            ("REGISTER", 8),
            ("401/REGISTER", 4),
            ("200/REGISTER", 4),
            ("OPTIONS", 2),
            ("200/OPTIONS", 2),
            ("NOTIFY", 4),
            ("200/NOTIFY", 4),
            ("INVITE", 3),
            ("401/INVITE", 1),
            ("100/INVITE", 2),
            ("180/INVITE", 3),
            ("200/INVITE", 2),
            ("ACK", 3),
            ("UPDATE", 1),
            ("200/UPDATE", 1),
            ("BYE", 2),
            ("200/BYE", 2),
        ])
    );
    // The reassembled INVITE (frames 58 + 59): 1717 bytes of SIP, stamped with frame 59.
    let big = items
        .iter()
        .find(|c| c.payload.len() > 1500)
        .expect("reassembled datagram");
    assert_eq!(micros(big.at), 1523308449736326);
    assert_eq!(big.payload.len(), 1717);
    assert_eq!(sip_label(&big.payload).as_deref(), Some("INVITE"));
    let (msg, _) = Message::parse(&big.payload).unwrap();
    assert_eq!(
        msg.body().len(),
        msg.header("Content-Length")
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    );
    assert_eq!(
        (big.src, big.dst),
        (sa("192.168.20.132:56330"), sa("192.168.20.130:5060"))
    );
    // SRTP both ways on both legs.
    assert_eq!(
        flow(&items, "192.168.20.132:4000", "192.168.20.130:14708"),
        1135
    );
    assert_eq!(
        flow(&items, "192.168.20.130:14708", "192.168.20.132:4000"),
        1135
    );
    assert_eq!(
        flow(&items, "192.168.20.1:4000", "192.168.20.130:14904"),
        1135
    );
    assert_eq!(
        flow(&items, "192.168.20.130:14904", "192.168.20.1:4000"),
        1135
    );
    let v6 = items.iter().filter(|c| c.src.is_ipv6()).count();
    assert_eq!(v6, 10);
}

#[test]
fn streaming_form_yields_file_order_and_final_stats() {
    let bytes = std::fs::read(fixture("sip-over-tcp.pcap")).unwrap();
    let mut capture = Capture::new(Cursor::new(&bytes)).unwrap();
    let items: Vec<_> = capture.by_ref().map(Result::unwrap).collect();
    assert_eq!(items.len(), 75);
    assert_eq!(capture.stats().packets, 84);
    let (sorted, stats) = read_bytes(&bytes).unwrap();
    assert_eq!(&stats, capture.stats());
    assert_eq!(sorted, items, "this file is already in time order");
}

#[test]
fn dtmf_fixtures_already_in_repo_read() {
    let (items, stats) = read_fixture("g711a.pcap");
    assert_eq!((stats.packets, stats.udp, items.len()), (236, 236, 236));
    let (items, stats) = read_fixture("dtmf_2833_1.pcap");
    assert_eq!((stats.packets, stats.udp, items.len()), (10, 10, 10));
}

// ---------------------------------------------------------------------------------------------
// Synthetic capture builders

fn put16(v: &mut Vec<u8>, big: bool, x: u16) {
    v.extend_from_slice(&if big {
        x.to_be_bytes()
    } else {
        x.to_le_bytes()
    });
}

fn put32(v: &mut Vec<u8>, big: bool, x: u32) {
    v.extend_from_slice(&if big {
        x.to_be_bytes()
    } else {
        x.to_le_bytes()
    });
}

/// Classic pcap file.
struct PcapFile {
    bytes: Vec<u8>,
    big: bool,
}

impl PcapFile {
    fn new(link: u32, big: bool, nanos: bool) -> PcapFile {
        let mut bytes = Vec::new();
        put32(
            &mut bytes,
            big,
            if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 },
        );
        put16(&mut bytes, big, 2);
        put16(&mut bytes, big, 4);
        put32(&mut bytes, big, 0);
        put32(&mut bytes, big, 0);
        put32(&mut bytes, big, 65535);
        put32(&mut bytes, big, link);
        PcapFile { bytes, big }
    }

    fn record(&mut self, secs: u32, frac: u32, data: &[u8]) -> &mut Self {
        let big = self.big;
        put32(&mut self.bytes, big, secs);
        put32(&mut self.bytes, big, frac);
        put32(&mut self.bytes, big, data.len() as u32);
        put32(&mut self.bytes, big, data.len() as u32);
        self.bytes.extend_from_slice(data);
        self
    }
}

/// Raw-IP pcap with records at the given milliseconds after 1.7e9 s.
fn raw_capture(packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut f = PcapFile::new(101, false, false);
    for (ms, p) in packets {
        f.record(
            1_700_000_000 + (ms / 1000) as u32,
            (ms % 1000) as u32 * 1000,
            p,
        );
    }
    f.bytes
}

fn t_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
}

/// pcapng file, one section at a time.
struct NgFile {
    bytes: Vec<u8>,
    big: bool,
}

impl NgFile {
    fn new(big: bool) -> NgFile {
        let mut f = NgFile {
            bytes: Vec::new(),
            big,
        };
        f.section(big);
        f
    }

    fn section(&mut self, big: bool) -> &mut Self {
        self.big = big;
        let mut body = Vec::new();
        put32(&mut body, big, 0x1A2B_3C4D);
        put16(&mut body, big, 1);
        put16(&mut body, big, 0);
        body.extend_from_slice(&[0xFF; 8]);
        self.block(0x0A0D_0D0A, &body)
    }

    fn block(&mut self, ty: u32, body: &[u8]) -> &mut Self {
        let big = self.big;
        let padded = (body.len() + 3) & !3;
        let total = 12 + padded as u32;
        put32(&mut self.bytes, big, ty);
        put32(&mut self.bytes, big, total);
        self.bytes.extend_from_slice(body);
        self.bytes.resize(self.bytes.len() + padded - body.len(), 0);
        put32(&mut self.bytes, big, total);
        self
    }

    fn interface(&mut self, link: u16, snaplen: u32, options: &[(u16, &[u8])]) -> &mut Self {
        let big = self.big;
        let mut body = Vec::new();
        put16(&mut body, big, link);
        put16(&mut body, big, 0);
        put32(&mut body, big, snaplen);
        for (code, value) in options {
            put16(&mut body, big, *code);
            put16(&mut body, big, value.len() as u16);
            body.extend_from_slice(value);
            body.resize((body.len() + 3) & !3, 0);
        }
        if !options.is_empty() {
            put32(&mut body, big, 0);
        }
        self.block(1, &body)
    }

    fn enhanced(&mut self, iface: u32, ts: u64, data: &[u8]) -> &mut Self {
        let big = self.big;
        let mut body = Vec::new();
        put32(&mut body, big, iface);
        put32(&mut body, big, (ts >> 32) as u32);
        put32(&mut body, big, ts as u32);
        put32(&mut body, big, data.len() as u32);
        put32(&mut body, big, data.len() as u32);
        body.extend_from_slice(data);
        self.block(6, &body)
    }

    fn simple(&mut self, data: &[u8]) -> &mut Self {
        let big = self.big;
        let mut body = Vec::new();
        put32(&mut body, big, data.len() as u32);
        body.extend_from_slice(data);
        self.block(3, &body)
    }

    fn obsolete(&mut self, iface: u16, ts: u64, data: &[u8]) -> &mut Self {
        let big = self.big;
        let mut body = Vec::new();
        put16(&mut body, big, iface);
        put16(&mut body, big, 0);
        put32(&mut body, big, (ts >> 32) as u32);
        put32(&mut body, big, ts as u32);
        put32(&mut body, big, data.len() as u32);
        put32(&mut body, big, data.len() as u32);
        body.extend_from_slice(data);
        self.block(2, &body)
    }
}

fn checksum_free_udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

fn tcp_segment(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&[0x50, flags | 0x10, 0xFF, 0xFF, 0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// Where an IPv4 packet sits in its datagram: identification, fragment offset, more fragments.
type FragPos = (u16, usize, bool);

/// IPv4 packet; `options` must be a multiple of 4 bytes.
fn ipv4_full(
    (src, dst): ([u8; 4], [u8; 4]),
    proto: u8,
    (id, offset, more): FragPos,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut v = vec![0x40 | (ihl / 4) as u8, 0];
    v.extend_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&[64, proto, 0, 0]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(options);
    v.extend_from_slice(payload);
    v
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_full((src, dst), proto, (1, 0, false), &[], payload)
}

/// IPv6 packet; `chain` is the extension headers (already built) before the upper layer.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, first: u8, chain_and_payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(chain_and_payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&[first, 64]);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(chain_and_payload);
    v
}

/// An IPv6 options-style extension header of `units` x 8 bytes.
fn ext_header(next: u8, units: usize) -> Vec<u8> {
    let mut v = vec![next, (units - 1) as u8];
    v.resize(units * 8, 0);
    // PadN option filling the rest (content does not matter to the reader).
    v[2] = 1;
    v[3] = (units * 8 - 4) as u8;
    v
}

fn frag_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

fn ethernet(ethertype: u16, tags: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

const V4_A: [u8; 4] = [192, 0, 2, 1];
const V4_B: [u8; 4] = [192, 0, 2, 2];

fn udp_v4(payload: &[u8]) -> Vec<u8> {
    ipv4(V4_A, V4_B, 17, &checksum_free_udp(5060, 5062, payload))
}

fn v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)
}

// ---------------------------------------------------------------------------------------------
// Formats and timestamps

#[test]
fn classic_pcap_in_both_byte_orders_and_resolutions() {
    let pkt = udp_v4(b"hello");
    for (big, nanos, frac, want_nanos) in [
        (false, false, 123_456, 123_456_000),
        (true, false, 123_456, 123_456_000),
        (false, true, 123_456_789, 123_456_789),
        (true, true, 123_456_789, 123_456_789),
    ] {
        let mut f = PcapFile::new(101, big, nanos);
        f.record(1_700_000_000, frac, &pkt);
        let (items, stats) = read_bytes(&f.bytes).unwrap();
        assert_eq!(items.len(), 1, "big={big} nanos={nanos}");
        let want = UNIX_EPOCH + Duration::new(1_700_000_000, want_nanos);
        assert_eq!(items[0].at, want);
        assert_eq!(items[0].payload, b"hello");
        assert_eq!(
            items[0].src,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(V4_A)), 5060)
        );
        assert_eq!(stats.packets, 1);
    }
}

#[test]
fn modified_pcap_records_have_longer_headers() {
    let pkt = udp_v4(b"kuznetzov");
    let mut bytes = PcapFile::new(101, false, false).bytes;
    bytes[..4].copy_from_slice(&0xA1B2_CD34u32.to_le_bytes());
    for secs in [1u32, 2] {
        put32(&mut bytes, false, secs);
        put32(&mut bytes, false, 0);
        put32(&mut bytes, false, pkt.len() as u32);
        put32(&mut bytes, false, pkt.len() as u32);
        bytes.extend_from_slice(&[0; 8]); // ifindex, protocol, packet type, padding
        bytes.extend_from_slice(&pkt);
    }
    let (items, _) = read_bytes(&bytes).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].at, UNIX_EPOCH + Duration::from_secs(2));
}

#[test]
fn pcapng_sections_interfaces_resolutions_and_block_kinds() {
    let pkt = udp_v4(b"x");
    let sll2 = {
        let mut v = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&pkt);
        v
    };
    let mut f = NgFile::new(true); // big-endian section first
    f.interface(1, 0, &[]) // Ethernet, microseconds by default
        .interface(101, 0, &[(9, &[9]), (2, b"raw0")]) // raw IP, nanoseconds, a name
        .interface(276, 0, &[(9, &[0x80 | 20]), (14, &10i64.to_be_bytes())]) // 2^-20 s, +10 s
        .block(4, &[0, 0, 0, 0]) // name resolution: skipped
        .block(0x0000_0BAD, &[1, 2, 3, 4, 5]) // custom: skipped
        .enhanced(0, 1_700_000_000_250_000, &ethernet(0x0800, &[], &pkt))
        .enhanced(1, 1_700_000_001_000_000_007, &pkt)
        .enhanced(2, (1_700_000_002u64 << 20) | (1 << 19), &sll2)
        .simple(&ethernet(0x0800, &[], &pkt))
        .obsolete(1, 1_700_000_003_000_000_000, &pkt);
    // A second section, little-endian, with its own interface numbering.
    f.section(false)
        .interface(101, 0, &[(9, &[3])]) // milliseconds
        .enhanced(0, 1_700_000_004_500, &pkt)
        .block(5, &[0; 12]); // interface statistics: skipped
    let (items, stats) = read_bytes(&f.bytes).unwrap();
    assert_eq!(stats.format, Some(CaptureFormat::PcapNg));
    assert_eq!(stats.packets, 6);
    assert_eq!(stats.udp, 6);
    let at = |s: u64, ns: u32| UNIX_EPOCH + Duration::new(s, ns);
    let times: Vec<_> = items.iter().map(|c| c.at).collect();
    assert_eq!(
        times,
        [
            at(1_700_000_000, 250_000_000),
            at(1_700_000_001, 7),
            at(1_700_000_003, 0),
            at(1_700_000_004, 500_000_000),
            at(1_700_000_012, 500_000_000),
            // The simple packet block has no time of its own: the previous packet's.
            at(1_700_000_012, 500_000_000),
        ]
    );
}

#[test]
fn simple_packet_block_is_cut_to_the_snap_length() {
    let pkt = udp_v4(&[7; 100]);
    let mut f = NgFile::new(false);
    f.interface(101, 60, &[]).simple(&pkt);
    let (items, stats) = read_bytes(&f.bytes).unwrap();
    assert!(items.is_empty());
    assert_eq!(stats.truncated, 1);
}

// ---------------------------------------------------------------------------------------------
// Link types and IP

#[test]
fn link_types_all_deliver_the_datagram() {
    let pkt = udp_v4(b"payload");
    let pkt6 = ipv6(v6(1), v6(2), 17, &checksum_free_udp(5060, 5062, b"payload"));
    let sll = |proto: u16, ip: &[u8]| {
        let mut v = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        v.extend_from_slice(&proto.to_be_bytes());
        v.extend_from_slice(ip);
        v
    };
    let sll2 = |proto: u16, ip: &[u8]| {
        let mut v = proto.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
        v.extend_from_slice(ip);
        v
    };
    let null = |family: [u8; 4], ip: &[u8]| {
        let mut v = family.to_vec();
        v.extend_from_slice(ip);
        v
    };
    let cases: Vec<(u32, Vec<u8>, &str)> = vec![
        (1, ethernet(0x0800, &[], &pkt), "ethernet"),
        (1, ethernet(0x0800, &[0x8100], &pkt), "802.1Q"),
        (1, ethernet(0x86DD, &[0x88A8, 0x8100], &pkt6), "QinQ, IPv6"),
        (1, ethernet(0x0800, &[0x9100, 0x8100], &pkt), "old QinQ"),
        (113, sll(0x0800, &pkt), "SLL"),
        (113, sll(0x86DD, &pkt6), "SLL IPv6"),
        (276, sll2(0x0800, &pkt), "SLL2"),
        (101, pkt.clone(), "raw"),
        (101, pkt6.clone(), "raw IPv6"),
        (12, pkt.clone(), "raw 12"),
        (14, pkt.clone(), "raw 14"),
        (228, pkt.clone(), "IPv4"),
        (229, pkt6.clone(), "IPv6"),
        (0, null([2, 0, 0, 0], &pkt), "null LE"),
        (0, null([0, 0, 0, 2], &pkt), "null BE"),
        (0, null([30, 0, 0, 0], &pkt6), "null macOS IPv6"),
        (108, null([0, 0, 0, 24], &pkt6), "loop"),
    ];
    for (link, frame, what) in cases {
        let mut f = PcapFile::new(link, false, false);
        // Ethernet padding/FCS after the IP packet must not reach the payload.
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0xEE; 4]);
        f.record(1, 0, &padded);
        let (items, stats) = read_bytes(&f.bytes).unwrap();
        assert_eq!(items.len(), 1, "{what}: {stats:?}");
        assert_eq!(items[0].payload, b"payload", "{what}");
        assert_eq!(items[0].dst.port(), 5062, "{what}");
    }
}

#[test]
fn non_ip_and_other_protocols_are_counted() {
    let mut f = PcapFile::new(1, false, false);
    f.record(1, 0, &ethernet(0x0806, &[], &[0; 28])) // ARP
        .record(1, 0, &ethernet(0x88CC, &[], &[0; 20])) // LLDP
        .record(
            1,
            0,
            &ethernet(0x0800, &[], &ipv4(V4_A, V4_B, 1, &[8, 0, 0, 0])),
        ) // ICMP
        .record(
            1,
            0,
            &ethernet(0x86DD, &[], &ipv6(v6(1), v6(2), 58, &[128, 0, 0, 0])),
        ) // ICMPv6
        .record(1, 0, &ethernet(0x86DD, &[], &ipv6(v6(1), v6(2), 59, &[]))) // no next header
        .record(1, 0, &[0; 10]) // shorter than an Ethernet header
        .record(1, 0, &ethernet(0x0800, &[], &[0x55; 20])); // IP version 5
    let mut cut = udp_v4(&[1; 200]);
    cut.truncate(100); // snap length
    f.record(1, 0, &ethernet(0x0800, &[], &cut));
    let (items, stats) = read_bytes(&f.bytes).unwrap();
    assert!(items.is_empty());
    assert_eq!(stats.skipped_non_ip, 2);
    assert_eq!(stats.skipped_other, 3);
    assert_eq!(stats.truncated, 2);
    assert_eq!(stats.malformed, 1);
    let mut f = PcapFile::new(147, false, false); // a user link type
    f.record(1, 0, &udp_v4(b"x"));
    assert_eq!(read_bytes(&f.bytes).unwrap().1.skipped_non_ip, 1);
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_skipped() {
    let udp = checksum_free_udp(5060, 5062, b"sip");
    // Options: router alert, three NOPs, end of list.
    let options = [0x94, 4, 0, 0, 1, 1, 1, 0];
    let v4 = ipv4_full((V4_A, V4_B), 17, (9, 0, false), &options, &udp);
    let mut chain = ext_header(43, 1); // hop-by-hop -> routing
    chain.extend(ext_header(60, 2)); // routing -> destination options
    chain.extend(ext_header(17, 1)); // destination options -> UDP
    chain.extend_from_slice(&udp);
    let v6pkt = ipv6(v6(1), v6(2), 0, &chain);
    // An atomic fragment (offset 0, no more fragments) is a whole packet.
    let mut atomic = frag_header(17, 0, false, 77);
    atomic.extend_from_slice(&udp);
    let v6atomic = ipv6(v6(1), v6(2), 44, &atomic);
    let (items, stats) = read_bytes(&raw_capture(&[(0, v4), (1, v6pkt), (2, v6atomic)])).unwrap();
    assert_eq!(items.len(), 3, "{stats:?}");
    assert!(items.iter().all(|c| c.payload == b"sip"));
    assert_eq!(items[1].src, SocketAddr::new(IpAddr::V6(v6(1)), 5060));
    assert_eq!(stats.fragments, 0);
}

// ---------------------------------------------------------------------------------------------
// Fragment reassembly

fn big_sip(len: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < len {
        body.extend_from_slice(format!("a=x-line:{}\r\n", body.len()).as_bytes());
    }
    let mut m = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKbig\r\n\
         From: <sip:a@a>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: big\r\n\
         CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    m.extend_from_slice(&body);
    m
}

/// Splits an IPv4 UDP datagram into fragments of at most `mtu_payload` bytes (multiple of 8).
fn fragment_v4(id: u16, udp: &[u8], mtu_payload: usize) -> Vec<Vec<u8>> {
    udp.chunks(mtu_payload)
        .enumerate()
        .map(|(i, piece)| {
            let offset = i * mtu_payload;
            let more = offset + piece.len() < udp.len();
            ipv4_full((V4_A, V4_B), 17, (id, offset, more), &[], piece)
        })
        .collect()
}

#[test]
fn ipv4_fragments_in_any_order_are_reassembled() {
    let sip = big_sip(3500);
    let udp = checksum_free_udp(5060, 5060, &sip);
    let frags = fragment_v4(0x1234, &udp, 1480);
    assert_eq!(frags.len(), 3);
    // Last first, then a duplicate of it, then the first, then the middle one.
    let order = [(10, 2), (11, 2), (20, 0), (30, 1)];
    let packets: Vec<_> = order
        .iter()
        .map(|&(ms, i)| (ms, frags[i].clone()))
        .collect();
    // Unrelated traffic in between.
    let mut packets = packets;
    packets.insert(1, (15, udp_v4(b"rtp")));
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].payload, sip);
    assert_eq!(items[1].at, t_ms(30), "time of the completing fragment");
    assert_eq!(stats.fragments, 4);
    assert_eq!(stats.fragments_reassembled, 1);
    assert_eq!(stats.fragments_dropped, 0);
    assert_eq!(sip_label(&items[1].payload).as_deref(), Some("INVITE"));
}

#[test]
fn ipv6_fragments_are_reassembled_including_headers_after_the_fragment_header() {
    let sip = big_sip(2000);
    // The fragmentable part: destination options, then UDP.
    let mut part = ext_header(17, 1);
    part.extend(checksum_free_udp(5060, 5060, &sip));
    let cut = 1232;
    let mut first = frag_header(60, 0, true, 0xABCD);
    first.extend_from_slice(&part[..cut]);
    let mut second = frag_header(60, cut, false, 0xABCD);
    second.extend_from_slice(&part[cut..]);
    // A hop-by-hop header before the fragment header (the unfragmentable part).
    let wrap = |frag: Vec<u8>| {
        let mut chain = ext_header(44, 1);
        chain.extend(frag);
        ipv6(v6(1), v6(2), 0, &chain)
    };
    let packets = [(5, wrap(second)), (6, wrap(first))];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(items.len(), 1, "{stats:?}");
    assert_eq!(items[0].payload, sip);
    assert_eq!(items[0].src, SocketAddr::new(IpAddr::V6(v6(1)), 5060));
    assert_eq!(stats.fragments_reassembled, 1);
}

#[test]
fn incomplete_fragment_sets_expire_and_memory_stays_bounded() {
    let udp = checksum_free_udp(5060, 5060, &big_sip(3000));
    let frags = fragment_v4(7, &udp, 1480);
    // The tail arrives 40 s after the head: too late, both sets are dropped.
    let packets = [
        (0, frags[0].clone()),
        (40_000, frags[1].clone()),
        (40_001, frags[2].clone()),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert!(items.is_empty());
    assert_eq!(stats.fragments_reassembled, 0);
    assert_eq!(stats.fragments_dropped, 2);

    // 1000 datagrams that never complete: at most 256 are held; all are counted dropped.
    let packets: Vec<_> = (0..1000u16)
        .map(|id| (u64::from(id), fragment_v4(id, &udp, 1480)[0].clone()))
        .collect();
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert!(items.is_empty());
    assert_eq!(stats.fragments, 1000);
    assert_eq!(stats.fragments_dropped, 1000);

    // Inconsistent: two different last fragments.
    let a = ipv4_full((V4_A, V4_B), 17, (9, 8, false), &[], &[0; 16]);
    let b = ipv4_full((V4_A, V4_B), 17, (9, 8, false), &[], &[0; 24]);
    let (_, stats) = read_bytes(&raw_capture(&[(0, a), (1, b)])).unwrap();
    assert_eq!(stats.fragments_dropped, 1);
}

// ---------------------------------------------------------------------------------------------
// TCP reassembly and SIP framing

const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 1], 40000);
const SERVER: ([u8; 4], u16) = ([10, 0, 0, 2], 5060);

fn sip_msg(first: &str, cseq: u32, method: &str, body: &str) -> Vec<u8> {
    format!(
        "{first}\r\nVia: SIP/2.0/TCP 10.0.0.1:40000;branch=z9hG4bK{cseq}\r\n\
         From: <sip:a@a>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: tcp-test\r\n\
         CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn request(cseq: u32, method: &str, body: &str) -> Vec<u8> {
    sip_msg(&format!("{method} sip:b@b SIP/2.0"), cseq, method, body)
}

/// A client-to-server segment at `ms` with sequence number `seq`.
fn seg(ms: u64, seq: u32, flags: u8, payload: &[u8]) -> (u64, Vec<u8>) {
    let tcp = tcp_segment(CLIENT.1, SERVER.1, seq, flags, payload);
    (ms, ipv4(CLIENT.0, SERVER.0, 6, &tcp))
}

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;

fn tcp_payloads(items: &[Captured]) -> Vec<Vec<u8>> {
    items
        .iter()
        .filter(|c| c.transport == Transport::Tcp)
        .map(|c| c.payload.clone())
        .collect()
}

#[test]
fn tcp_messages_split_across_and_joined_in_segments() {
    let m1 = request(1, "INVITE", "v=0\r\n");
    let m2 = request(2, "OPTIONS", "");
    let m3 = sip_msg("SIP/2.0 200 OK", 2, "OPTIONS", "hello");
    let mut stream = m1.clone();
    stream.extend_from_slice(b"\r\n\r\n"); // keep-alive
    stream.extend_from_slice(&m2);
    stream.extend_from_slice(&m3);
    let isn = 1000u32;
    let cuts = [0, 10, m1.len() - 5, m1.len() + 4 + 3, stream.len()];
    let mut packets = vec![seg(0, isn, SYN, &[])];
    for (i, w) in cuts.windows(2).enumerate() {
        packets.push(seg(
            10 * (i as u64 + 1),
            isn + 1 + w[0] as u32,
            0,
            &stream[w[0]..w[1]],
        ));
    }
    packets.push(seg(100, isn + 1 + stream.len() as u32, FIN, &[]));
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m1, m2, m3]);
    // m1 completes in the 3rd segment, m2 and m3 in the 4th.
    let times: Vec<_> = items.iter().map(|c| c.at).collect();
    assert_eq!(times, [t_ms(30), t_ms(40), t_ms(40)]);
    assert_eq!(
        items[0].src,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(CLIENT.0)), CLIENT.1)
    );
    assert_eq!(stats.tcp_messages, 3);
    assert_eq!(stats.tcp_segments, 6);
    assert_eq!(
        stats.tcp_incomplete + stats.tcp_gaps + stats.tcp_unframable,
        0
    );
}

#[test]
fn tcp_out_of_order_retransmitted_and_overlapping_segments() {
    let m1 = request(1, "INVITE", "body-one");
    let m2 = request(2, "BYE", "");
    let mut stream = m1.clone();
    stream.extend_from_slice(&m2);
    let isn = 5u32;
    let at = |off: usize| isn + 1 + off as u32;
    let a = 100;
    let b = m1.len() + 20;
    let packets = vec![
        seg(0, isn, SYN, &[]),
        seg(1, at(b), 0, &stream[b..]), // ahead of a hole: held
        seg(2, at(b), 0, &stream[b..]), // retransmission of the held one
        seg(3, at(0), 0, &stream[..a]), // in order
        seg(4, at(0), 0, &stream[..a]), // retransmission
        seg(5, at(a - 10), 0, &stream[a - 10..b]), // overlaps 10 old bytes, fills the hole
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m1, m2]);
    // Both complete when the hole fills.
    assert!(items.iter().all(|c| c.at == t_ms(5)));
    assert_eq!(stats.tcp_out_of_order, 1);
    assert_eq!(stats.tcp_retransmissions, 2);
    assert_eq!(stats.tcp_gaps, 0);
}

#[test]
fn tcp_gap_resynchronises_at_the_next_start_line() {
    let m1 = request(1, "INVITE", "one");
    let m2 = request(2, "INFO", "lost in the middle");
    let m3 = request(3, "BYE", "");
    let mut stream = m1.clone();
    stream.extend_from_slice(&m2);
    stream.extend_from_slice(&m3);
    let isn = 0u32;
    let at = |off: usize| isn + 1 + off as u32;
    let (s2, s3) = (m1.len(), m1.len() + m2.len());
    let packets = vec![
        seg(0, isn, SYN, &[]),
        seg(1, at(0), 0, &stream[..s2 + 20]), // m1 and the start of m2
        // m2's middle is never captured.
        seg(3, at(s2 + 60), 0, &stream[s2 + 60..s3 + 5]),
        seg(4, at(s3 + 5), 0, &stream[s3 + 5..]),
        seg(5, at(stream.len()), FIN, &[]),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m1.clone(), m3.clone()]);
    assert_eq!(stats.tcp_gaps, 1);
    // m3's last byte came with the segment at 4 ms.
    assert_eq!(items[1].at, t_ms(4));

    // The same hole, but the connection keeps going: the hold bound declares the gap without
    // waiting for the end.
    let mut packets = vec![seg(0, isn, SYN, &[]), seg(1, at(0), 0, &stream[..s2 + 20])];
    let mut off = s2 + 60;
    let mut tail = stream[s2 + 60..].to_vec();
    for i in 0..100 {
        tail.extend_from_slice(&request(10 + i, "MESSAGE", "x"));
    }
    let base = off;
    for chunk in tail.chunks(97) {
        packets.push(seg(2 + (off - base) as u64, at(off), 0, chunk));
        off += chunk.len();
    }
    let bytes = raw_capture(&packets);
    let mut capture = Capture::new(Cursor::new(&bytes)).unwrap();
    let mut bye_after = None;
    while let Some(item) = capture.next() {
        if sip_label(&item.unwrap().payload).as_deref() == Some("BYE") {
            bye_after = Some(capture.stats().packets);
        }
    }
    let stats = capture.stats();
    assert_eq!(stats.tcp_gaps, 1);
    assert_eq!(stats.tcp_messages, 102, "m1, m3 and 100 MESSAGEs");
    // Framed once 64 segments were held, long before the end of the capture.
    let bye_after = bye_after.unwrap();
    assert!(
        bye_after < 80,
        "after {bye_after} of {} packets",
        packets.len()
    );
}

#[test]
fn tcp_jump_far_ahead_is_a_gap_and_the_stream_goes_on_there() {
    let m1 = request(1, "OPTIONS", "");
    let m2 = request(2, "OPTIONS", "");
    let packets = vec![
        seg(0, 0, SYN, &[]),
        seg(1, 1, 0, &m1[..40]),
        seg(2, 1 + (4 << 20), 0, &m2),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m2]);
    assert_eq!(items[0].at, t_ms(2));
    assert_eq!(stats.tcp_gaps, 1);
    assert_eq!(stats.tcp_out_of_order, 0);
}

#[test]
fn tcp_capture_starting_mid_stream_finds_the_first_start_line() {
    let m1 = request(1, "INVITE", "");
    let m2 = sip_msg("SIP/2.0 180 Ringing", 1, "INVITE", "");
    let mut stream = b"tail of an earlier body\r\nContent-Length: 0\r\n\r\n".to_vec();
    stream.extend_from_slice(&m1);
    stream.extend_from_slice(&m2);
    let packets = vec![
        seg(0, 77_000, 0, &stream[..30]),
        seg(1, 77_030, 0, &stream[30..]),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m1, m2]);
    assert_eq!(stats.tcp_gaps, 0);
}

#[test]
fn tcp_sequence_numbers_wrap() {
    let m1 = request(1, "INVITE", &"s".repeat(300));
    let m2 = request(2, "ACK", "");
    let mut stream = m1.clone();
    stream.extend_from_slice(&m2);
    let isn = u32::MAX - 150;
    let at = |off: usize| isn.wrapping_add(1 + off as u32);
    let packets = vec![
        seg(0, isn, SYN, &[]),
        seg(1, at(400), 0, &stream[400..]), // past the wrap, early
        seg(2, at(0), 0, &stream[..200]),   // before the wrap
        seg(3, at(200), 0, &stream[200..400]),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m1, m2]);
    assert_eq!(stats.tcp_out_of_order, 1);
}

#[test]
fn tcp_streams_that_are_not_sip_are_ignored() {
    let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
    let mut packets = vec![seg(0, 1, SYN, &[]), seg(1, 2, 0, &http)];
    // A TLS stream first seen mid-way, 70 KiB without a line that could start a SIP message.
    let tls: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
    for (i, chunk) in tls.chunks(1400).enumerate() {
        let tcp = tcp_segment(443, 50000, 9000 + (i * 1400) as u32, 0, chunk);
        packets.push((2 + i as u64, ipv4(V4_A, V4_B, 6, &tcp)));
    }
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert!(items.is_empty());
    assert_eq!(stats.tcp_non_sip_streams, 2);
    assert_eq!(stats.tcp_messages, 0);
}

#[test]
fn tcp_unframable_and_unfinished_messages_are_counted() {
    let bad = b"INVITE sip:b@b SIP/2.0\r\nVia: SIP/2.0/TCP x\r\nno colon here\r\n\r\n".to_vec();
    let good = request(2, "BYE", "");
    let unfinished = request(3, "INFO", "0123456789");
    let mut stream = bad;
    stream.extend_from_slice(&good);
    stream.extend_from_slice(&unfinished[..unfinished.len() - 4]);
    let packets = vec![
        seg(0, 0, SYN, &[]),
        seg(1, 1, 0, &stream),
        seg(2, 1 + stream.len() as u32, FIN, &[]),
    ];
    let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [good]);
    assert_eq!(stats.tcp_unframable, 1);
    assert_eq!(stats.tcp_incomplete, 1);
}

#[test]
fn tcp_port_reuse_starts_a_new_stream() {
    let m1 = request(1, "OPTIONS", "");
    let m2 = request(1, "OPTIONS", "");
    let packets = vec![
        seg(0, 100, SYN, &[]),
        seg(1, 101, 0, &m1[..50]), // never finished
        seg(2, 9_000, SYN, &[]),
        seg(3, 9_001, 0, &m2),
    ];
    let (items, _) = read_bytes(&raw_capture(&packets)).unwrap();
    assert_eq!(tcp_payloads(&items), [m2]);
}

// ---------------------------------------------------------------------------------------------
// Damaged files

fn malformed_at(result: Result<(Vec<Captured>, CaptureStats), CaptureError>) -> u64 {
    match result {
        Err(CaptureError::Malformed { offset, what }) => {
            assert!(!what.is_empty());
            offset
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn not_a_capture() {
    for bytes in [&b""[..], b"ab", b"<html>", b"\x0a\x0d\x0d"] {
        match read_bytes(bytes) {
            Err(CaptureError::UnknownFormat { magic }) => {
                assert_eq!(magic, &bytes[..bytes.len().min(4)])
            }
            other => panic!("{other:?}"),
        }
    }
    let err = read_capture(Path::new("/nonexistent/x.pcap")).unwrap_err();
    assert!(matches!(err, CaptureError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/x.pcap"));
}

#[test]
fn damaged_files_name_the_offset() {
    // Header cut short.
    let f = PcapFile::new(1, false, false);
    assert_eq!(malformed_at(read_bytes(&f.bytes[..10])), 0);
    // Second record with an impossible length.
    let mut f = PcapFile::new(101, false, false);
    f.record(1, 0, &udp_v4(b"a"));
    let second = f.bytes.len() as u64;
    put32(&mut f.bytes, false, 1);
    put32(&mut f.bytes, false, 0);
    put32(&mut f.bytes, false, 0x7FFF_FFFF);
    put32(&mut f.bytes, false, 0x7FFF_FFFF);
    f.bytes.extend_from_slice(&[0; 64]);
    let err = read_bytes(&f.bytes).unwrap_err();
    assert!(err.to_string().contains(&format!("byte {second}")), "{err}");
    // pcapng: a block length that is not a multiple of 4.
    let mut f = NgFile::new(false);
    f.interface(1, 0, &[]);
    let bad = f.bytes.len() as u64;
    put32(&mut f.bytes, false, 6);
    put32(&mut f.bytes, false, 13);
    f.bytes.extend_from_slice(&[0; 20]);
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
    // pcapng: trailing length differs.
    let mut f = NgFile::new(true);
    f.interface(1, 0, &[]);
    let bad = f.bytes.len() as u64;
    f.enhanced(0, 0, &[1, 2, 3, 4]);
    let n = f.bytes.len();
    f.bytes[n - 1] ^= 0x40;
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
    // pcapng: a packet of an interface that was never described.
    let mut f = NgFile::new(false);
    let bad = f.bytes.len() as u64;
    f.enhanced(0, 0, &udp_v4(b"x"));
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
    // pcapng: captured length beyond the block.
    let mut f = NgFile::new(false);
    f.interface(101, 0, &[]);
    let bad = f.bytes.len() as u64;
    f.enhanced(0, 0, &[0; 8]);
    let caplen_at = bad as usize + 8 + 12;
    f.bytes[caplen_at..caplen_at + 4].copy_from_slice(&100u32.to_le_bytes());
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
    // pcapng: unknown byte-order magic, unsupported version, bad if_tsresol, option overrun.
    let mut f = NgFile::new(false);
    f.bytes[8] = 0x99;
    assert_eq!(malformed_at(read_bytes(&f.bytes)), 0);
    let mut f = NgFile::new(false);
    f.bytes[12] = 2;
    assert_eq!(malformed_at(read_bytes(&f.bytes)), 0);
    let mut f = NgFile::new(false);
    let bad = f.bytes.len() as u64;
    f.interface(1, 0, &[(9, &[20])]);
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
    let mut f = NgFile::new(false);
    let bad = f.bytes.len() as u64;
    f.interface(1, 0, &[(2, b"eth0")]);
    let opt_len_at = bad as usize + 8 + 8 + 2;
    f.bytes[opt_len_at] = 200;
    assert_eq!(malformed_at(read_bytes(&f.bytes)), bad);
}

#[test]
fn a_file_cut_inside_its_last_record_ends_there() {
    let bytes = std::fs::read(fixture("sip-over-tcp.pcap")).unwrap();
    let (_, whole) = read_bytes(&bytes).unwrap();
    let mut last_packets = 0;
    for cut in (24..bytes.len()).step_by(37) {
        let (items, stats) = read_bytes(&bytes[..cut]).unwrap();
        assert!(stats.packets <= whole.packets);
        assert!(stats.packets >= last_packets, "monotone");
        assert!(stats.truncated_records <= 1);
        assert!(items.len() as u64 <= stats.udp + stats.tcp_messages);
        last_packets = stats.packets;
    }
    // Cut 5 bytes into the last record's data: 83 whole packets.
    let last_len = 66; // the final ACK: 14 + 20 + 32
    let cut = bytes.len() - last_len + 5;
    let (_, stats) = read_bytes(&bytes[..cut]).unwrap();
    assert_eq!((stats.packets, stats.truncated_records), (83, 1));
    // pcapng cut inside a block: this file ends with an interface statistics block.
    let bytes = std::fs::read(fixture("16_bit_48khz_60_fec_rtp.pcapng")).unwrap();
    let (_, stats) = read_bytes(&bytes[..bytes.len() - 7]).unwrap();
    assert_eq!((stats.packets, stats.truncated_records), (3000, 1));
    let (_, stats) = read_bytes(&bytes[..bytes.len() - 200]).unwrap();
    assert_eq!((stats.packets, stats.truncated_records), (2999, 1));
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn pcap_header() -> Vec<u8> {
    PcapFile::new(1, false, false).bytes
}

fn pcapng_header() -> Vec<u8> {
    let mut f = NgFile::new(false);
    f.interface(1, 0, &[]).interface(101, 0, &[(9, &[9])]);
    f.bytes
}

fn no_panic(bytes: &[u8]) {
    if let Ok((_, st)) = read_bytes(bytes) {
        assert_eq!(
            st.udp + st.tcp_segments + st.fragments - st.fragments_reassembled
                + st.skipped_non_ip
                + st.skipped_other
                + st.truncated
                + st.malformed,
            st.packets,
            "{st:?}"
        );
    }
    if let Ok(capture) = Capture::new(Cursor::new(bytes)) {
        for item in capture {
            if item.is_err() {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        no_panic(&bytes);
        let mut with = pcap_header();
        with.extend_from_slice(&bytes);
        no_panic(&with);
        let mut with = pcapng_header();
        with.extend_from_slice(&bytes);
        no_panic(&with);
    }

    #[test]
    fn arbitrary_packets_in_valid_records_never_panic(
        packets in proptest::collection::vec(
            (prop_oneof![Just(1u32), Just(101), Just(113), Just(276), Just(0)],
             proptest::collection::vec(any::<u8>(), 0..200)),
            0..20),
        ip_prefix in any::<bool>(),
    ) {
        for link in [1u32, 101, 113, 276, 0] {
            let mut f = PcapFile::new(link, false, false);
            for (i, (_, p)) in packets.iter().enumerate() {
                let mut data = p.clone();
                if ip_prefix && link == 101 && !data.is_empty() {
                    // Steer toward valid IP headers so the deeper layers get exercised.
                    data[0] = if i % 2 == 0 { 0x45 } else { 0x60 };
                }
                f.record(i as u32, 0, &data);
            }
            no_panic(&f.bytes);
        }
    }

    #[test]
    fn mutated_fixtures_never_panic(
        file in prop_oneof![
            Just("sip-over-tcp.pcap"),
            Just("opus-2013785496.pcap"),
            Just("dtmf_2833_1.pcap"),
        ],
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..24),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = std::fs::read(fixture(file)).unwrap();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        no_panic(&bytes);
        let n = cut.index(bytes.len());
        no_panic(&bytes[..n]);
    }

    /// However a SIP stream is cut into segments and reordered (within the hold bound), with
    /// duplicates, the same messages come out.
    #[test]
    fn tcp_reassembly_is_independent_of_segmentation(
        cuts in proptest::collection::btree_set(1usize..1500, 0..30),
        swaps in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..20),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        isn in any::<u32>(),
    ) {
        let msgs = [
            request(1, "INVITE", &"v=0\r\n".repeat(40)),
            sip_msg("SIP/2.0 100 Trying", 1, "INVITE", ""),
            sip_msg("SIP/2.0 200 OK", 1, "INVITE", "v=0\r\no=- 1 1 IN IP4 x\r\n"),
            request(1, "ACK", ""),
            request(2, "BYE", ""),
        ];
        let stream = msgs.concat();
        let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < stream.len()).collect();
        bounds.insert(0, 0);
        bounds.push(stream.len());
        let mut segs: Vec<(u32, &[u8])> = bounds
            .windows(2)
            .map(|w| (isn.wrapping_add(1 + w[0] as u32), &stream[w[0]..w[1]]))
            .collect();
        for (a, b) in &swaps {
            let (a, b) = (a.index(segs.len()), b.index(segs.len()));
            segs.swap(a, b);
        }
        for d in &dups {
            let s = segs[d.index(segs.len())];
            segs.push(s);
        }
        let mut packets = vec![seg(0, isn, SYN, &[])];
        for (i, (seq, data)) in segs.iter().enumerate() {
            packets.push(seg(1 + i as u64, *seq, 0, data));
        }
        let (items, stats) = read_bytes(&raw_capture(&packets)).unwrap();
        prop_assert_eq!(tcp_payloads(&items), msgs.to_vec());
        prop_assert_eq!(stats.tcp_gaps, 0);
    }
}

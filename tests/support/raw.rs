//! Raw-socket peers for the tests that build SIP and RTP by hand (so they decide exactly what
//! is sent when): SDP offers, waiting for a SIP message, reading the proxy's media addresses
//! from the SDP it rewrote, PCMU packets and real-time playback, RTCP receiver reports.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use recproxy::codec::Codec;
use recproxy::demo::tone::Tone;
use recproxy::media::rtp::{write_header, RtpHeader};
use recproxy::sdp::Sdp;
use recproxy::sip::msg::Message;

/// A PCMU audio offer/answer on 127.0.0.1 with RTP at `port` and RTCP at `rtcp` (a=rtcp).
pub fn sdp(port: u16, rtcp: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:{rtcp}\r\na=sendrecv\r\n")
}

/// Waits (at most 5 s) for a SIP message matching `pred` on `sock`.
pub fn recv_sip(sock: &UdpSocket, pred: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok((m, _)) = Message::parse(&buf[..n]) {
                if pred(&m) {
                    return m;
                }
            }
        }
    }
    panic!("expected SIP message did not arrive");
}

/// The proxy's media address for us, from an SDP body it rewrote.
pub fn media_addr(body: &[u8]) -> SocketAddr {
    let view = &Sdp::parse(body).unwrap().media()[0];
    SocketAddr::new(view.connection.unwrap(), view.port)
}

/// The proxy's RTCP address for us, from the a=rtcp of an SDP body it rewrote.
pub fn rtcp_addr(body: &[u8]) -> SocketAddr {
    let view = &Sdp::parse(body).unwrap().media()[0];
    let (port, ip) = view.rtcp.expect("a=rtcp kept");
    SocketAddr::new(ip.or(view.connection).unwrap(), port)
}

/// A minimal RTCP receiver report (RFC 3550 §6.4.2, no report blocks).
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// One 20 ms PCMU packet of `tone`, with timestamp `160 * seq`.
pub fn pcmu_packet(tone: &mut Tone, seq: u16, ssrc: u32) -> Vec<u8> {
    let mut pcm = [0i16; 160];
    tone.fill(&mut pcm);
    let mut head = [0u8; 12];
    write_header(
        &RtpHeader {
            marker: false,
            payload_type: 0,
            seq,
            timestamp: 160 * u32::from(seq),
            ssrc,
        },
        &mut head,
    );
    let mut pkt = head.to_vec();
    Codec::Pcmu.encode(&pcm, &mut pkt);
    pkt
}

/// Sends `n` packets of `hz` from `sock` to `to`, paced in real time, with sequence numbers
/// (and timestamps) from `seq0`.
pub fn play(sock: &UdpSocket, to: SocketAddr, hz: f64, seq0: u16, n: u16, ssrc: u32) {
    let mut tone = Tone::new(hz, 8000, 8000);
    let start = Instant::now();
    for i in 0..n {
        sock.send_to(&pcmu_packet(&mut tone, seq0 + i, ssrc), to)
            .unwrap();
        let next = start + Duration::from_millis(20 * (u64::from(i) + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The response to `req` a user agent would send: its Vias (and, for an INVITE, its
/// Record-Routes) echoed, To tagged with `tag` unless it has a tag, `extra` header lines as
/// given (each ending in CRLF), and an SDP `body` if not empty.
pub fn respond(
    req: &Message,
    code: u16,
    reason: &str,
    tag: &str,
    extra: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in req.header_all("Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    if req.method() == Some("INVITE") {
        for rr in req.header_all("Record-Route") {
            out.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    let to = req.header("To").unwrap_or_default();
    if req.to_tag().is_some() {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={tag}\r\n"));
    }
    out.push_str(&format!(
        "From: {}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
        req.header("From").unwrap_or_default(),
        req.call_id().unwrap_or_default(),
        req.header("CSeq").unwrap_or_default()
    ));
    if body.is_empty() {
        out.push_str("Content-Length: 0\r\n\r\n");
    } else {
        out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    out
}

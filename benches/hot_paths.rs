//! Micro-benchmarks of the pieces every call or packet goes through: SIP parse and print, SDP
//! parse and rewrite, RTP header parse, G.711 decode. Run with `cargo bench --bench hot_paths`;
//! compare runs on the same machine, never against a fixed time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use recproxy::codec::Codec;
use recproxy::media::rtp;
use recproxy::sdp::Sdp;
use recproxy::sip::msg::Message;

const INVITE: &[u8] = b"INVITE sip:0295120000@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:0295120000@192.0.2.5>\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@198.51.100.7\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:0401234567@198.51.100.7:5060>\r\n\
P-Asserted-Identity: <sip:+358401234567@198.51.100.7>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 146\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Bytes(INVITE.len() as u64));
    g.bench_function("parse_invite", |b| {
        b.iter(|| Message::parse(black_box(INVITE)).map(|(m, _)| m.headers().len()))
    });
    let (msg, _) = Message::parse(INVITE).expect("fixture parses");
    g.bench_function("print_invite", |b| {
        b.iter(|| black_box(&msg).to_bytes().len())
    });
    g.finish();

    let body = msg.body().to_vec();
    let mut g = c.benchmark_group("sdp");
    g.bench_function("parse_and_rewrite", |b| {
        b.iter(|| {
            let mut sdp = Sdp::parse(black_box(&body)).expect("fixture parses");
            let _ = sdp.rewrite_media(0, "192.0.2.10".parse().expect("ip"), 30000);
            sdp.to_bytes().len()
        })
    });
    g.finish();

    let mut packet = [0u8; 172];
    let header = rtp::RtpHeader {
        marker: false,
        payload_type: 0,
        seq: 1,
        timestamp: 160,
        ssrc: 7,
    };
    let mut head = [0u8; 12];
    rtp::write_header(&header, &mut head);
    packet[..12].copy_from_slice(&head);
    let mut g = c.benchmark_group("media");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rtp_parse", |b| {
        b.iter(|| rtp::parse(black_box(&packet)).map(|(h, p)| h.seq as usize + p.len()))
    });
    let mut out = Vec::with_capacity(160);
    for codec in [Codec::Pcmu, Codec::Pcma] {
        g.bench_function(format!("decode_20ms_{}", codec.name()), |b| {
            b.iter(|| {
                out.clear();
                codec.decode(black_box(&packet[12..]), &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

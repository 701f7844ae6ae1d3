//! Micro-benchmarks of the pieces every call or packet goes through: SIP parse and print, SDP
//! parse and rewrite, RTP header parse, G.711 decode. Run with `cargo bench --bench hot_paths`;
//! compare runs on the same machine, never against a fixed time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use recproxy::call::metadata::CallRecord;
use recproxy::codec::{Codec, Encoder};
use recproxy::demo::tone::Tone;
use recproxy::media::rtp;
use recproxy::record::recorder::{RecorderConfig, Session, StartRecording};
use recproxy::record::timeline::TimelineConfig;
use recproxy::sdp::Sdp;
use recproxy::sip::msg::Message;
use recproxy::sip::proxy::Party;
use std::time::{Duration, Instant};

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

/// Packets recorded per session before a new one is started, so the WAV stays small (100 s).
const PACKETS_PER_SESSION: u64 = 10_000;

/// The record path per RTP packet: decode, timeline placement, and the share of draining and
/// WAV writing (a tick every 20 ms of packet time), both sides of a call alternating. Setting
/// sessions up and closing them is not timed.
fn bench_record(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    for (codec, pt, rate) in [
        (Codec::Pcmu, 0u8, 8000u32),
        (Codec::G722, 9, 16000),
        (Codec::Opus, 111, 16000),
    ] {
        // 50 packets of a tone, encoded once, each with its RTP header space in front.
        let mut enc = Encoder::new(codec, codec.audio_rate()).expect("encoder");
        let mut tone = Tone::new(440.0, codec.audio_rate(), 8000);
        let mut pcm = vec![0i16; enc.frame_samples()];
        let payloads: Vec<Vec<u8>> = (0..50)
            .map(|_| {
                tone.fill(&mut pcm);
                let mut p = Vec::new();
                enc.encode(&pcm, &mut p).expect("encode");
                p
            })
            .collect();
        let step = codec.rtp_clock_rate() / 50;
        let mut serial = 0u64;
        g.bench_function(format!("packet_{}_{rate}", codec.name()), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    serial += 1;
                    let start = Instant::now();
                    let mut session = Session::open(
                        &RecorderConfig {
                            header_update: Duration::from_secs(5),
                            timeline: TimelineConfig::default(),
                            tap_queue: 1,
                            mask_dtmf: false,
                        },
                        StartRecording {
                            slot: serial,
                            wav_path: dir.path().join(format!("{serial}.wav")),
                            sidecar_path: dir.path().join(format!("{serial}.json")),
                            start,
                            codecs: [vec![(pt, codec)], vec![(pt, codec)]],
                            aux: [Vec::new(), Vec::new()],
                            rate,
                            record: CallRecord::new(format!("bench{serial}"), "bench".into()),
                        },
                    )
                    .expect("session");
                    let n = (iters - done).min(PACKETS_PER_SESSION);
                    let mut packet = vec![0u8; 12 + 1500];
                    let began = Instant::now();
                    for i in 0..n {
                        let seq = (i / 2) as u16;
                        let party = if i % 2 == 0 {
                            Party::Caller
                        } else {
                            Party::Callee
                        };
                        let payload = &payloads[(i / 2 % 50) as usize];
                        let header = rtp::RtpHeader {
                            marker: false,
                            payload_type: pt,
                            seq,
                            timestamp: u32::from(seq).wrapping_mul(step),
                            ssrc: 1 + (i % 2) as u32,
                        };
                        let mut head = [0u8; 12];
                        rtp::write_header(&header, &mut head);
                        packet[..12].copy_from_slice(&head);
                        packet[12..12 + payload.len()].copy_from_slice(payload);
                        let at = start + Duration::from_millis(20 * (i / 2));
                        session.packet(party, at, black_box(&packet[..12 + payload.len()]));
                        if i % 2 == 1 {
                            session.tick(at);
                        }
                    }
                    timed += began.elapsed();
                    let end = start + Duration::from_millis(20 * (n / 2 + 1));
                    let _ = session.close(end, CallRecord::new("x".into(), "x".into()), [0, 0]);
                    let _ = std::fs::remove_file(dir.path().join(format!("{serial}.wav")));
                    let _ = std::fs::remove_file(dir.path().join(format!("{serial}.json")));
                    done += n;
                }
                timed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_record);
criterion_main!(benches);

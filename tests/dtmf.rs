//! RFC 4733 DTMF through the real daemon: a caller keys in digits (event packets beside its
//! audio, three end packets each, as phones send them) and the sidecar lists each digit with
//! its offset and length; with `mask_dtmf = true` the digits are not stored and their audio is
//! silence on both channels while the rest of the call is recorded as usual.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use recproxy::demo::tone::Tone;
use recproxy::media::rtp::{write_header, RtpHeader};
use support::raw::{media_addr, pcmu_packet, recv_sip, respond};
use support::{dominance, write_config, Daemon, Wav};

const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;
const EVENT_PT: u8 = 101;

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 {EVENT_PT}\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:{EVENT_PT} telephone-event/8000\r\na=fmtp:{EVENT_PT} 0-15\r\na=sendrecv\r\n"
    )
}

fn event_packet(seq: u16, ts: u32, digit: u8, end: bool, duration: u16) -> Vec<u8> {
    let mut head = [0u8; 12];
    write_header(
        &RtpHeader {
            marker: false,
            payload_type: EVENT_PT,
            seq,
            timestamp: ts,
            ssrc: 0xD7F,
        },
        &mut head,
    );
    let mut pkt = head.to_vec();
    let d = duration.to_be_bytes();
    pkt.extend_from_slice(&[digit, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]);
    pkt
}

/// A call set up by hand: the phone's and the PBX's media sockets and where each sends.
struct Call {
    phone_rtp: UdpSocket,
    pbx_rtp: UdpSocket,
    to_phone_side: SocketAddr,
    to_pbx_side: SocketAddr,
}

fn call(daemon: &Daemon, pbx: &UdpSocket, call_id: &str) -> Call {
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = phone.local_addr().unwrap();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let offer = sdp(phone_rtp.local_addr().unwrap().port());
    let invite = format!(
        "INVITE sip:0295120000@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:0401234567@{me}>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len(),
        proxy = daemon.sip
    );
    phone.send_to(invite.as_bytes(), daemon.sip).unwrap();
    let inv = recv_sip(pbx, |m| {
        m.method() == Some("INVITE") && m.call_id() == Some(call_id)
    });
    let to_pbx_side = media_addr(inv.body());
    let answer = sdp(pbx_rtp.local_addr().unwrap().port());
    let ok = respond(
        &inv,
        200,
        "OK",
        "b1",
        &format!("Contact: <sip:pbx@{}>\r\n", pbx.local_addr().unwrap()),
        &answer,
    );
    pbx.send_to(ok.as_bytes(), daemon.sip).unwrap();
    let ok = recv_sip(&phone, |m| m.status() == Some(200));
    let to_phone_side = media_addr(ok.body());
    let route = ok.header("Record-Route").unwrap().to_string();
    let pbx_addr = pbx.local_addr().unwrap();
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:pbx@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}{method}\r\n\
Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\n\
To: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    phone
        .send_to(in_dialog("ACK", 1).as_bytes(), daemon.sip)
        .unwrap();
    recv_sip(pbx, |m| m.method() == Some("ACK"));
    let c = Call {
        phone_rtp,
        pbx_rtp,
        to_phone_side,
        to_pbx_side,
    };
    // Hang up later from the test body through this closure's text.
    HANGUP.with(|h| *h.borrow_mut() = Some((phone, in_dialog("BYE", 2))));
    c
}

thread_local! {
    static HANGUP: std::cell::RefCell<Option<(UdpSocket, String)>> = const { std::cell::RefCell::new(None) };
}

/// Keys pressed: (digit code, start packet index, packets long). Every packet is 20 ms; a
/// digit's packets replace the audio of those packet times, as phones that suppress in-band
/// tones do.
const KEYS: [(u8, u32, u32); 3] = [(1, 50, 5), (5, 80, 8), (11, 120, 6)];

/// Plays 3 s from the caller (tone, and the digits as event packets) and from the callee.
fn talk(daemon: &Daemon, pbx: &UdpSocket, c: &Call) {
    let to_pbx_side = c.to_pbx_side;
    let pbx_rtp = c.pbx_rtp.try_clone().unwrap();
    let callee = std::thread::spawn(move || {
        support::raw::play(&pbx_rtp, to_pbx_side, CALLEE_HZ, 1, 150, 0xCA11EE)
    });
    let mut tone = Tone::new(CALLER_HZ, 8000, 8000);
    let start = Instant::now();
    let mut seq = 1u16;
    for i in 0..150u32 {
        let key = KEYS
            .iter()
            .find(|(_, first, len)| (*first..first + len).contains(&i));
        match key {
            Some(&(digit, first, len)) => {
                // Event packets carry the digit's start timestamp and the duration so far.
                let ts = first * 160;
                let dur = ((i - first + 1) * 160) as u16;
                let last = i == first + len - 1;
                let copies = if last { 3 } else { 1 };
                for _ in 0..copies {
                    c.phone_rtp
                        .send_to(&event_packet(seq, ts, digit, last, dur), c.to_phone_side)
                        .unwrap();
                    seq = seq.wrapping_add(1);
                }
                // Keep the tone's phase running as if audio went on.
                let _ = pcmu_packet(&mut tone, 0, 0);
            }
            None => {
                let mut pkt = pcmu_packet(&mut tone, seq, 0xD7F);
                // pcmu_packet derives the timestamp from seq; use the packet clock instead.
                pkt[4..8].copy_from_slice(&(i * 160).to_be_bytes());
                c.phone_rtp.send_to(&pkt, c.to_phone_side).unwrap();
                seq = seq.wrapping_add(1);
            }
        }
        let next = start + Duration::from_millis(20 * (u64::from(i) + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    callee.join().unwrap();
    HANGUP.with(|h| {
        let (phone, bye) = h.borrow_mut().take().unwrap();
        phone.send_to(bye.as_bytes(), daemon.sip).unwrap();
    });
    recv_sip(pbx, |m| m.method() == Some("BYE"));
}

fn run(mask: bool, ports: (u16, u16), call_id: &str) -> (serde_json::Value, Wav) {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = if mask { "mask_dtmf = true\n" } else { "" };
    let config = write_config(root.path(), pbx.local_addr().unwrap(), ports, extra);
    let daemon = Daemon::start(&config);
    let c = call(&daemon, &pbx, call_id);
    talk(&daemon, &pbx, &c);
    let (_, v) = daemon.final_sidecar(call_id);
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    (v, wav)
}

fn dtmf_events(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "dtmf")
        .collect()
}

/// Samples of `ch` from `from_s` to `to_s` seconds.
fn span(ch: &[i16], from_s: f64, to_s: f64) -> &[i16] {
    &ch[(from_s * 8000.0) as usize..(to_s * 8000.0) as usize]
}

#[test]
fn digits_become_events_with_their_offsets() {
    let (v, wav) = run(false, (48600, 48649), "dtmf-plain");
    let events = dtmf_events(&v);
    let digits: Vec<&str> = events
        .iter()
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, ["1", "5", "#"], "{v:#}");
    for (e, (_, first, len)) in events.iter().zip(KEYS) {
        assert_eq!(e["by"], "caller");
        let at = e["at_ms"].as_i64().unwrap();
        let want = i64::from(first) * 20;
        assert!(
            (at - want).abs() <= 60,
            "at {at} ms, want about {want}: {e}"
        );
        assert_eq!(e["duration_ms"], i64::from(len) * 20, "{e}");
    }
    // Event and audio packets share the sequence space: nothing counted lost.
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v:#}");
    // Audio around the digits is the caller's tone.
    assert!(dominance(span(&wav.left, 0.2, 0.9), 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0);
    assert!(dominance(span(&wav.right, 0.2, 2.8), 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
}

#[test]
fn masked_digits_are_not_stored_and_their_audio_is_silent() {
    let (v, wav) = run(true, (48650, 48699), "dtmf-masked");
    let events = dtmf_events(&v);
    assert_eq!(events.len(), 3, "{v:#}");
    let text = v.to_string();
    for e in &events {
        assert!(e.get("digit").is_none(), "digit stored: {e}");
    }
    assert!(!text.contains("\"digit\""), "{text}");
    for &(_, first, len) in &KEYS {
        let (from, to) = (f64::from(first) * 0.02, f64::from(first + len) * 0.02);
        // Both channels silent over the key (the callee's side too: the far end may echo it).
        for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
            let s = span(ch, from, to);
            assert!(
                s.iter().all(|&x| x == 0),
                "{name} not silent over {from}-{to} s"
            );
        }
    }
    // Outside the keys the call is recorded as usual.
    assert!(dominance(span(&wav.left, 0.2, 0.9), 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0);
    assert!(dominance(span(&wav.right, 2.0, 2.8), 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
    assert!(dominance(span(&wav.right, 0.2, 0.9), 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
}

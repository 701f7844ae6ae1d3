//! RTP bleed protection through the real daemon, with raw sockets: an attacker sprays RTP and RTCP
//! over the whole media port range before and during a call and gets nothing in or out (neither
//! party receives its packets, it receives nobody's, the recording holds only the parties'
//! tones); and a phone behind NAT whose binding changes after a silence keeps its audio both ways.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recproxy::demo::tone::{rms, Tone};
use support::raw::{media_addr, pcmu_packet, play, recv_sip, respond, rtcp_rr, sdp};
use support::{dominance, write_config, Daemon, Wav};

/// The sprayed test's media ports, and the NAT test's.
const PORTS: (u16, u16) = (43800, 43849);
const NAT_PORTS: (u16, u16) = (43850, 43899);
const ATTACKER_SSRC: u32 = 0x0BAD_0BAD;
const ATTACKER_HZ: f64 = 2500.0;

/// Collects the SSRC of every packet arriving on a clone of `sock` until `until` (RTP: octets
/// 8..12, RTCP: octets 4..8).
fn collect(sock: &UdpSocket, until: Instant, rtcp: bool) -> std::thread::JoinHandle<Vec<u32>> {
    let sock = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while Instant::now() < until {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let at = if rtcp { 4 } else { 8 };
                if let Some(b) = buf[..n].get(at..at + 4) {
                    out.push(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
        }
        out
    })
}

/// Sprays RTP at every port of the media range, and an RTCP report at every odd one, every
/// 20 ms until stopped; returns how many datagrams came back to it.
fn spray(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut tone = Tone::new(ATTACKER_HZ, 8000, 8000);
        let rr = rtcp_rr(ATTACKER_SSRC);
        let mut got = 0;
        let mut buf = [0u8; 2048];
        let mut seq = 0u16;
        while !stop.load(Ordering::Relaxed) {
            let pkt = pcmu_packet(&mut tone, seq, ATTACKER_SSRC);
            seq = seq.wrapping_add(1);
            for port in PORTS.0..=PORTS.1 {
                let _ = sock.send_to(&pkt, ("127.0.0.1", port));
                if port % 2 == 1 {
                    let _ = sock.send_to(&rr, ("127.0.0.1", port));
                }
            }
            while sock.recv_from(&mut buf).is_ok() {
                got += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    })
}

/// A call set up by hand between a phone and a PBX, both on raw sockets.
struct Call {
    proxy: SocketAddr,
    phone: UdpSocket,
    pbx: UdpSocket,
    call_id: &'static str,
    route: String,
    /// Where the phone sends its RTP, and where the PBX sends its RTP.
    to_phone_side: SocketAddr,
    to_pbx_side: SocketAddr,
}

impl Call {
    /// INVITE with `offer`, answered 200 OK with `answer`, ACKed.
    fn setup(
        daemon: &Daemon,
        pbx: UdpSocket,
        call_id: &'static str,
        offer: &str,
        answer: &str,
    ) -> Call {
        let proxy = daemon.sip;
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = phone.local_addr().unwrap();
        let invite = format!(
            "INVITE sip:0295120000@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:0401234567@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        );
        phone.send_to(invite.as_bytes(), proxy).unwrap();
        let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
        let to_pbx_side = media_addr(inv.body());
        let pbx_addr = pbx.local_addr().unwrap();
        let ok = respond(
            &inv,
            200,
            "OK",
            "b1",
            &format!("Contact: <sip:pbx@{pbx_addr}>\r\n"),
            answer,
        );
        pbx.send_to(ok.as_bytes(), proxy).unwrap();
        let ok = recv_sip(&phone, |m| m.status() == Some(200));
        let to_phone_side = media_addr(ok.body());
        let route = ok.header("Record-Route").unwrap().to_string();
        let call = Call {
            proxy,
            phone,
            pbx,
            call_id,
            route,
            to_phone_side,
            to_pbx_side,
        };
        call.in_dialog("ACK", 1);
        recv_sip(&call.pbx, |m| m.method() == Some("ACK"));
        call
    }

    /// Sends an in-dialog request from the phone.
    fn in_dialog(&self, method: &str, cseq: u32) {
        let (me, proxy, call_id, rr) = (
            self.phone.local_addr().unwrap(),
            self.proxy,
            self.call_id,
            &self.route,
        );
        let pbx_addr = self.pbx.local_addr().unwrap();
        let msg = format!(
            "{method} sip:pbx@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}{method}{cseq};rport\r\nRoute: {rr}\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        );
        self.phone.send_to(msg.as_bytes(), proxy).unwrap();
    }

    /// The phone hangs up; the PBX sees the BYE and answers it.
    fn hang_up(&self) {
        self.in_dialog("BYE", 2);
        let bye = recv_sip(&self.pbx, |m| m.method() == Some("BYE"));
        let ok = respond(&bye, 200, "OK", "b1", "", "");
        self.pbx.send_to(ok.as_bytes(), self.proxy).unwrap();
    }
}

/// The proxy's RTCP port beside one of its RTP ports (it rewrites a=rtcp to RTP + 1).
fn rtcp_of(rtp: SocketAddr) -> SocketAddr {
    SocketAddr::new(rtp.ip(), rtp.port() + 1)
}

/// Every 20 ms frame of `samples` that carries sound has `hz`, not the attacker's tone, as its
/// dominant tone; returns how many frames carried sound.
fn only_tone(samples: &[i16], hz: f64, channel: &str) -> usize {
    let mut voiced = 0;
    for (i, frame) in samples.chunks_exact(160).enumerate() {
        if rms(frame) < 500.0 {
            continue;
        }
        voiced += 1;
        let d = dominance(frame, 8000, hz, &[ATTACKER_HZ]);
        assert!(
            d > 10.0,
            "{channel} frame {i} ({} ms): {hz} Hz only {d:.2}× the attacker's tone",
            i * 20
        );
    }
    voiced
}

#[test]
fn a_sprayer_on_the_media_ports_gets_no_packet_in_or_out() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = write_config(root.path(), pbx.local_addr().unwrap(), PORTS, "");
    let mut daemon = Daemon::start(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = spray(Arc::clone(&stop));
    // The attacker is already spraying the whole range when the call comes in.
    std::thread::sleep(Duration::from_millis(200));

    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let offer = sdp(port(&phone_rtp), port(&phone_rtcp));
    let answer = sdp(port(&pbx_rtp), port(&pbx_rtcp));
    let call = Call::setup(&daemon, pbx, "bleed-spray-1", &offer, &answer);

    // Two seconds of tones both ways, from the SDP addresses, while the spraying goes on.
    let until = Instant::now() + Duration::from_millis(2600);
    let at_phone = collect(&phone_rtp, until, false);
    let at_pbx = collect(&pbx_rtp, until, false);
    let rtcp_at_phone = collect(&phone_rtcp, until, true);
    let rtcp_at_pbx = collect(&pbx_rtcp, until, true);
    let callee_sock = pbx_rtp.try_clone().unwrap();
    let to_pbx_side = call.to_pbx_side;
    let callee = std::thread::spawn(move || play(&callee_sock, to_pbx_side, 1000.0, 0, 100, 2));
    let (phone_rtcp_to, pbx_rtcp_to) = (rtcp_of(call.to_phone_side), rtcp_of(call.to_pbx_side));
    let rtcp = std::thread::spawn({
        let (phone_rtcp, pbx_rtcp) = (
            phone_rtcp.try_clone().unwrap(),
            pbx_rtcp.try_clone().unwrap(),
        );
        move || {
            // Both parties report once a second, starting after 1 s (RFC 3550 §6.2 spreads
            // the first report over 1.25-3.75 s).
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(1000));
                phone_rtcp.send_to(&rtcp_rr(1), phone_rtcp_to).unwrap();
                pbx_rtcp.send_to(&rtcp_rr(2), pbx_rtcp_to).unwrap();
            }
        }
    });
    play(&phone_rtp, call.to_phone_side, 440.0, 0, 100, 1);
    callee.join().unwrap();
    rtcp.join().unwrap();
    let (at_phone, at_pbx) = (at_phone.join().unwrap(), at_pbx.join().unwrap());
    let (rtcp_at_phone, rtcp_at_pbx) = (rtcp_at_phone.join().unwrap(), rtcp_at_pbx.join().unwrap());
    call.hang_up();
    let (_, v) = daemon.final_sidecar("bleed-spray-1");
    stop.store(true, Ordering::Relaxed);
    let bled = attacker.join().unwrap();

    assert_eq!(
        at_pbx,
        vec![1; 100],
        "the PBX got every caller packet and nothing else"
    );
    assert!(
        at_phone.iter().all(|&s| s == 2) && at_phone.len() >= 98,
        "the phone got {} packets, SSRCs {:?}",
        at_phone.len(),
        at_phone.iter().filter(|&&s| s != 2).collect::<Vec<_>>()
    );
    assert_eq!(
        rtcp_at_pbx,
        [1, 1],
        "the PBX got the phone's RTCP and nothing else"
    );
    assert_eq!(
        rtcp_at_phone,
        [2, 2],
        "the phone got the PBX's RTCP and nothing else"
    );
    assert_eq!(bled, 0, "media bled to the attacker");

    assert_eq!(v["state"], "complete");
    assert_eq!(v["legs"]["caller"]["packets"], 100);
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    let left = only_tone(&wav.left, 440.0, "left");
    let right = only_tone(&wav.right, 1000.0, "right");
    assert!(
        left >= 95 && right >= 95,
        "voiced frames: {left} left, {right} right"
    );
    assert!(daemon.signal(libc::SIGTERM).success());
}

#[test]
fn a_phone_whose_nat_binding_changes_after_a_silence_keeps_its_audio() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = write_config(root.path(), pbx.local_addr().unwrap(), NAT_PORTS, "");
    let mut daemon = Daemon::start(&config);
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rebound = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Behind NAT: the phone's SDP names port 9, its packets come from elsewhere.
    let offer = sdp(9, 10);
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let answer = sdp(port(&pbx_rtp), port(&pbx_rtcp));
    let call = Call::setup(&daemon, pbx, "bleed-nat-1", &offer, &answer);

    // The PBX talks for 4 s; the phone 1 s from one binding, 1.5 s of silence, 1 s from another.
    let until = Instant::now() + Duration::from_millis(4300);
    let at_pbx = collect(&pbx_rtp, until, false);
    let at_first = collect(&first, until, false);
    let at_rebound = collect(&rebound, until, false);
    let callee_sock = pbx_rtp.try_clone().unwrap();
    let to_pbx_side = call.to_pbx_side;
    let callee = std::thread::spawn(move || play(&callee_sock, to_pbx_side, 1000.0, 0, 200, 2));
    std::thread::sleep(Duration::from_millis(150));
    play(&first, call.to_phone_side, 440.0, 0, 50, 1);
    std::thread::sleep(Duration::from_millis(1500));
    // Same RTP stream (SSRC, sequence and timestamps go on), new NAT binding.
    play(&rebound, call.to_phone_side, 440.0, 125, 50, 1);
    callee.join().unwrap();
    let at_pbx = at_pbx.join().unwrap();
    let (at_first, at_rebound) = (at_first.join().unwrap(), at_rebound.join().unwrap());
    call.hang_up();
    let (_, v) = daemon.final_sidecar("bleed-nat-1");

    // Learning loses nothing; the re-latch drops the new binding's first 4 packets.
    assert!(at_pbx.iter().all(|&s| s == 1));
    assert!(
        (95..=96).contains(&at_pbx.len()),
        "the PBX got {} of 100 phone packets",
        at_pbx.len()
    );
    // The PBX's packets followed the phone: to the first binding once it had spoken, to the new
    // one once it had re-latched.
    assert!(
        at_first.len() >= 100,
        "first binding got {}",
        at_first.len()
    );
    assert!(
        (50..=70).contains(&at_rebound.len()),
        "new binding got {}",
        at_rebound.len()
    );
    assert!(at_first.iter().chain(&at_rebound).all(|&s| s == 2));

    assert_eq!(v["state"], "complete");
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    // The caller's tone is in the left channel before and after the rebind (the last half
    // second of it is after).
    let voiced = wav
        .left
        .chunks_exact(160)
        .filter(|f| rms(f) >= 500.0)
        .count();
    assert!(
        (90..=100).contains(&voiced),
        "{voiced} voiced caller frames"
    );
    let tail_start = wav
        .left
        .chunks_exact(160)
        .rposition(|f| rms(f) >= 500.0)
        .unwrap()
        * 160;
    let tail = &wav.left[tail_start - 4000 + 160..tail_start + 160];
    assert!(dominance(tail, 8000, 440.0, &[1000.0]) > 50.0);
    assert!(daemon.signal(libc::SIGTERM).success());
}

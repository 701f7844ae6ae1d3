//! The media path through the real daemon, with raw sockets on both sides so the test decides
//! exactly what is sent when: latching onto the real source of a phone whose SDP names another
//! address (NAT), RTCP relayed both ways to the a=rtcp ports, and silence ending the recording
//! with `media_timeout` after the configured quiet time, with the ports freed and the call's
//! signalling still passing afterwards.

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use support::raw::{media_addr, play, recv_sip, respond, rtcp_addr, rtcp_rr, sdp};
use support::{dominance, write_config, Daemon, Wav};

/// Counts RTP packets arriving on a clone of `sock` until `until`.
fn count_arrivals(sock: &UdpSocket, until: Instant) -> std::thread::JoinHandle<usize> {
    let sock = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while Instant::now() < until {
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            if sock.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    })
}

#[test]
fn media_is_latched_rtcp_relayed_and_silence_ends_the_recording_with_media_timeout() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Behind NAT the phone's SDP names an address its packets do not come from: port 9
    // (discard) stands for it; the proxy must latch onto the real source.
    let nat_port = 9;
    let config = write_config(root.path(), pbx.local_addr().unwrap(), (42800, 42899), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = \"10s\"", "timeout = \"1s\"");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config);
    let proxy = daemon.sip;
    let me = phone.local_addr().unwrap();

    let offer = sdp(nat_port, phone_rtcp.local_addr().unwrap().port());
    let invite = format!(
        "INVITE sip:0295120000@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmt1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\nCall-ID: media-timeout-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:0401234567@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    phone.send_to(invite.as_bytes(), proxy).unwrap();

    // The PBX side answers by hand.
    let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
    let to_pbx_media = media_addr(inv.body());
    let to_pbx_rtcp = rtcp_addr(inv.body());
    let answer = sdp(
        pbx_rtp.local_addr().unwrap().port(),
        pbx_rtcp.local_addr().unwrap().port(),
    );
    let pbx_addr = pbx.local_addr().unwrap();
    let ok = respond(
        &inv,
        200,
        "OK",
        "b1",
        &format!("Contact: <sip:pbx@{pbx_addr}>\r\n"),
        &answer,
    );
    pbx.send_to(ok.as_bytes(), proxy).unwrap();
    let ok = recv_sip(&phone, |m| m.status() == Some(200));
    let to_phone_media = media_addr(ok.body());
    let to_phone_rtcp = rtcp_addr(ok.body());
    let rr = ok.header("Record-Route").unwrap().to_string();
    let ack = format!(
        "ACK sip:pbx@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmt2;rport\r\nRoute: {rr}\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: media-timeout-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(ack.as_bytes(), proxy).unwrap();
    recv_sip(&pbx, |m| m.method() == Some("ACK"));

    // Half a second of media both ways, then silence on both sides. The phone starts 100 ms
    // after the PBX side: until its first packet the proxy can only use the SDP address.
    let until = Instant::now() + Duration::from_millis(900);
    let phone_got = count_arrivals(&phone_rtp, until);
    let pbx_got = count_arrivals(&pbx_rtp, until);
    let callee = std::thread::spawn(move || play(&pbx_rtp, to_pbx_media, 1000.0, 1000, 25, 2));
    std::thread::sleep(Duration::from_millis(100));
    play(&phone_rtp, to_phone_media, 440.0, 1000, 25, 1);
    callee.join().unwrap();
    // RTCP both ways, each to the a=rtcp port the proxy advertised.
    phone_rtcp.send_to(&rtcp_rr(1), to_phone_rtcp).unwrap();
    pbx_rtcp.send_to(&rtcp_rr(2), to_pbx_rtcp).unwrap();
    let mut buf = [0u8; 64];
    pbx_rtcp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, _) = pbx_rtcp
        .recv_from(&mut buf)
        .expect("caller's RTCP reaches the PBX side");
    assert_eq!(&buf[..n], &rtcp_rr(1)[..]);
    phone_rtcp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, _) = phone_rtcp
        .recv_from(&mut buf)
        .expect("callee's RTCP reaches the phone");
    assert_eq!(&buf[..n], &rtcp_rr(2)[..]);
    let quiet_from = Instant::now();
    let (phone_got, pbx_got) = (phone_got.join().unwrap(), pbx_got.join().unwrap());
    assert_eq!(pbx_got, 25, "every caller packet reached the PBX side");
    // About 5 callee packets went to the SDP address before the phone's first packet showed
    // where it really is; the rest reached it.
    assert!(
        (17..=22).contains(&phone_got),
        "{phone_got} of 25 callee packets reached the phone"
    );

    let (_, v) = daemon.final_sidecar("media-timeout-1");
    let waited = quiet_from.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "ended after {waited:?} of silence"
    );
    assert_eq!(v["state"], "complete");
    assert_eq!(v["end_reason"], "media_timeout");
    assert_eq!(v["ended_by"], "media_timeout");
    assert_eq!(v["legs"]["caller"]["packets"], 25);
    assert_eq!(v["legs"]["callee"]["packets"], 25);
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    // 0.5 s of tones plus 1 s (up to 1.5 s with the check interval) of silence.
    assert!(
        wav.duration_ms() >= 1400 && wav.duration_ms() <= 2600,
        "{} ms",
        wav.duration_ms()
    );
    assert!(dominance(&wav.left[..4000], 8000, 440.0, &[1000.0]) > 50.0);
    assert!(dominance(&wav.right[..4000], 8000, 1000.0, &[440.0]) > 50.0);

    // The dialog's signalling still passes: the caller's BYE reaches the PBX by its Route.
    let bye = format!(
        "BYE sip:pbx@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmt3;rport\r\nRoute: {rr}\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: media-timeout-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(bye.as_bytes(), proxy).unwrap();
    recv_sip(&pbx, |m| m.method() == Some("BYE"));

    // Nothing is left: no call, no media ports.
    assert!(daemon.signal(libc::SIGTERM).success());
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("state at shutdown"))
        .expect("shutdown state logged");
    assert!(
        line.contains("active_calls=0") && line.contains("media_port_pairs=0"),
        "{line}"
    );
}

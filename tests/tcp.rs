//! SIP over TCP through the real daemon on 127.0.0.1: a phone on TCP calling a PBX on UDP (two
//! Record-Route entries, RFC 5658), with RTP both ways recorded and the PBX's BYE reaching the
//! phone over the phone's own connection; keep-alive pings; stream framing errors; and the RFC
//! 3261 §18.1.1 switch to TCP for a large request, with its fallback to UDP; and a PBX on TCP over
//! IPv6 reached by a phone on UDP.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use recproxy::codec::Codec;
use recproxy::demo::ua::{CallSpec, Outcome, Phone};
use recproxy::sip::msg::Message;
use support::raw::{media_addr, play, recv_sip, respond, sdp};
use support::{dominance, write_config, Daemon, Wav};

const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;

/// A daemon listening on UDP and TCP in front of `pbx`; its TCP address.
fn daemon(root: &std::path::Path, pbx: SocketAddr, ports: (u16, u16)) -> (Daemon, SocketAddr) {
    let config = write_config(root, pbx, ports, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = [\"udp:127.0.0.1:0\"]",
        "listen = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]",
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let tcp = daemon.tcp_addr();
    (daemon, tcp)
}

/// A SIP peer on one TCP connection, reading messages framed by Content-Length.
struct Stream {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Stream {
    fn connect(to: SocketAddr) -> Stream {
        let tcp = TcpStream::connect(to).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Stream {
            tcp,
            buf: Vec::new(),
        }
    }

    fn local(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap()
    }

    fn send(&mut self, text: &str) {
        self.tcp.write_all(text.as_bytes()).unwrap();
    }

    /// Raw bytes received within `wait`, whatever they are.
    fn read_raw(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.tcp.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Whether the daemon closed the connection (within 5 s).
    fn closed_by_peer(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.tcp.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// The next message matching `pred` (at most 5 s); others are skipped.
    fn recv(&mut self, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok((m, used)) = Message::parse_stream(&self.buf) {
                self.buf.drain(..used);
                if pred(&m) {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "expected SIP message did not arrive over TCP; have {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            match self.tcp.read(&mut chunk) {
                Ok(0) => panic!("connection closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }
}

fn invite(proxy: SocketAddr, via: &str, contact: &str, call_id: &str, body: &str) -> String {
    format!(
        "INVITE sip:0295120000@{proxy} SIP/2.0\r\nVia: {via};branch=z9hG4bK{call_id}i;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn phone_on_tcp_calls_pbx_on_udp_and_both_directions_are_recorded() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = pbx.local_addr().unwrap();
    let (daemon, proxy_tcp) = daemon(root.path(), pbx_addr, (48000, 48099));

    let mut phone = Stream::connect(proxy_tcp);
    // Like a real phone, it names its listening port in Via and Contact, not the ephemeral
    // port of its connection; requests for it must still come on that connection (a phone
    // behind NAT has no other way in). The listener takes nothing: a request that arrived
    // there instead would be lost and the test would fail.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = listener.local_addr().unwrap();
    assert_ne!(me, phone.local());
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = phone_rtp.local_addr().unwrap().port();
    let contact = format!("<sip:0401234567@{me};transport=tcp>");
    let call_id = "tcp-call-1";
    phone.send(&invite(
        daemon.sip,
        &format!("SIP/2.0/TCP {me}"),
        &contact,
        call_id,
        &sdp(rtp_port, rtp_port + 1),
    ));
    let trying = phone.recv(|m| m.status().is_some());
    assert_eq!(trying.status(), Some(100));

    // The PBX gets it over UDP, with one Record-Route for each side (RFC 5658).
    let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
    let via = inv.top_via().unwrap();
    assert_eq!(via.transport, "UDP");
    let rr: Vec<String> = inv.header_all("Record-Route").map(str::to_string).collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(!rr[0].contains("transport=tcp"), "{rr:?}");
    assert!(
        rr[1].contains(&format!("{proxy_tcp};transport=tcp;lr")),
        "{rr:?}"
    );
    let to_pbx_side = media_addr(inv.body());
    let pbx_rtp_port = pbx_rtp.local_addr().unwrap().port();
    let pbx_contact = format!("Contact: <sip:2000@{pbx_addr}>\r\n");
    pbx.send_to(
        respond(&inv, 180, "Ringing", "b1", &pbx_contact, "").as_bytes(),
        daemon.sip,
    )
    .unwrap();
    pbx.send_to(
        respond(
            &inv,
            200,
            "OK",
            "b1",
            &pbx_contact,
            &sdp(pbx_rtp_port, pbx_rtp_port + 1),
        )
        .as_bytes(),
        daemon.sip,
    )
    .unwrap();

    let ringing = phone.recv(|m| m.status() == Some(180));
    assert!(ringing.to_tag().is_some());
    let ok = phone.recv(|m| m.status() == Some(200));
    let to_phone_side = media_addr(ok.body());
    // The phone's route set is the Record-Route list reversed: our TCP entry first.
    let mut route: Vec<String> = ok.header_all("Record-Route").map(str::to_string).collect();
    route.reverse();
    assert!(route[0].contains("transport=tcp"), "{route:?}");
    let route = route.join(",");
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:2000@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK{call_id}{method}\r\n\
Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\n\
To: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    phone.send(&in_dialog("ACK", 1));
    let ack = recv_sip(&pbx, |m| m.method() == Some("ACK"));
    assert_eq!(
        ack.request_uri(),
        Some(format!("sip:2000@{pbx_addr}").as_str())
    );

    // A keep-alive ping on the connection is answered with one CRLF (RFC 5626 §4.4.1).
    phone.send("\r\n\r\n");
    assert_eq!(phone.read_raw(Duration::from_millis(300)), b"\r\n");

    // Two seconds of audio each way.
    let talk = 100u16;
    let callee = std::thread::spawn(move || {
        play(&pbx_rtp, to_pbx_side, CALLEE_HZ, 1, talk, 0xB0B);
        pbx_rtp
    });
    play(&phone_rtp, to_phone_side, CALLER_HZ, 1, talk, 0xA11CE);
    let _pbx_rtp = callee.join().unwrap();

    // The PBX hangs up: its BYE goes to the phone's Contact over TCP, on the phone's own
    // connection.
    let bye = format!(
        "BYE sip:0401234567@{me};transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP {pbx_addr};branch=z9hG4bKpbxbye\r\n\
Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:0295120000@127.0.0.1>;tag=b1\r\n\
To: <sip:0401234567@127.0.0.1>;tag=a1\r\nCall-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        rr.join(",")
    );
    pbx.send_to(bye.as_bytes(), daemon.sip).unwrap();
    let bye = phone.recv(|m| m.method() == Some("BYE"));
    let via = bye.top_via().unwrap();
    assert_eq!(via.transport, "TCP");
    assert_eq!(via.port, Some(proxy_tcp.port()));
    assert!(bye.header("Route").is_none());
    phone.send(&respond(&bye, 200, "OK", "a1", "", ""));
    let bye_ok = recv_sip(&pbx, |m| m.status() == Some(200));
    assert_eq!(
        bye_ok.cseq().map(|(_, m)| m.to_string()).as_deref(),
        Some("BYE")
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a second connection was opened");

    let (_, v) = daemon.final_sidecar(call_id);
    assert_eq!(v["state"], "complete", "{v:#}");
    assert_eq!(v["end_reason"], "bye_callee", "{v:#}");
    assert_eq!(v["ended_by"], "callee", "{v:#}");
    assert_eq!(v["caller_number"], "0401234567", "{v:#}");
    assert_eq!(v["legs"]["caller"]["packets"], 100, "{v:#}");
    assert_eq!(v["legs"]["callee"]["packets"], 100, "{v:#}");
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v:#}");
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    let ms = wav.duration_ms();
    assert!((1900..=2600).contains(&ms), "{ms} ms");
    let mid = |ch: &[i16]| ch[4000..12000].to_vec();
    let l = dominance(&mid(&wav.left), 8000, CALLER_HZ, &[CALLEE_HZ]);
    let r = dominance(&mid(&wav.right), 8000, CALLEE_HZ, &[CALLER_HZ]);
    assert!(l > 50.0 && r > 50.0, "left {l:.1} right {r:.1}");
}

#[test]
fn a_stream_that_cannot_be_framed_gets_400_or_513_and_is_closed() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (daemon, proxy_tcp) = daemon(root.path(), pbx.local_addr().unwrap(), (48100, 48199));

    // An INVITE whose Content-Length line is replaced by `length`, on a new connection: the
    // status it gets, and the daemon must close that connection.
    let refused = |call_id: &str, length: &str| {
        let mut phone = Stream::connect(proxy_tcp);
        let me = phone.local();
        let text = invite(
            daemon.sip,
            &format!("SIP/2.0/TCP {me}"),
            "<sip:a@127.0.0.1>",
            call_id,
            "",
        )
        .replace("Content-Length: 0\r\n", length);
        phone.send(&text);
        let status = phone.recv(|m| m.status().is_some()).status();
        assert!(phone.closed_by_peer(), "{call_id}: connection kept");
        status
    };
    // No Content-Length: stream framing is impossible (RFC 3261 §18.3).
    assert_eq!(refused("tcp-noclen", ""), Some(400));
    // A Content-Length beyond sip.max_message_size (default 65535): 513 before the body.
    assert_eq!(refused("tcp-huge", "Content-Length: 100000\r\n"), Some(513));

    // Neither reached the PBX, and the daemon still serves calls over TCP.
    pbx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(pbx.recv_from(&mut buf).is_err());
    let mut phone = Stream::connect(proxy_tcp);
    let me = phone.local();
    phone.send(&invite(
        daemon.sip,
        &format!("SIP/2.0/TCP {me}"),
        "<sip:a@127.0.0.1;transport=tcp>",
        "tcp-after",
        &sdp(48190, 48191),
    ));
    assert_eq!(phone.recv(|m| m.status().is_some()).status(), Some(100));
    let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
    assert_eq!(inv.call_id(), Some("tcp-after"));
}

/// An INVITE over UDP big enough that RFC 3261 §18.1.1 wants it sent on over TCP.
fn large_invite(proxy: SocketAddr, me: SocketAddr, call_id: &str) -> String {
    let mut body = sdp(48290, 48291);
    for i in 0..40 {
        body.push_str(&format!("a=x-pad-{i}:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"));
    }
    invite(
        proxy,
        &format!("SIP/2.0/UDP {me}"),
        &format!("<sip:0401234567@{me}>"),
        call_id,
        &body,
    )
}

#[test]
fn a_large_request_to_a_udp_pbx_goes_over_tcp_and_falls_back_to_udp_without_a_listener() {
    let root = tempfile::tempdir().unwrap();
    // The PBX listens on UDP and TCP at the same port, as RFC 3261 servers do: a port free for
    // both (a TCP port the kernel hands out may be taken on UDP, and the other way round).
    let (pbx, pbx_tcp) = (0..100)
        .find_map(|_| {
            let tcp = TcpListener::bind("127.0.0.1:0").ok()?;
            let udp = UdpSocket::bind(tcp.local_addr().ok()?).ok()?;
            Some((udp, tcp))
        })
        .expect("a port free for UDP and TCP");
    let pbx_addr = pbx.local_addr().unwrap();
    let (daemon, _) = daemon(root.path(), pbx_addr, (48200, 48299));

    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = phone.local_addr().unwrap();
    let text = large_invite(daemon.sip, me, "tcp-large-1");
    assert!(text.len() > 1300);
    phone.send_to(text.as_bytes(), daemon.sip).unwrap();
    let (conn, _) = pbx_tcp.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Stream {
        tcp: conn,
        buf: Vec::new(),
    };
    let inv = got.recv(|m| m.method() == Some("INVITE"));
    assert_eq!(inv.top_via().unwrap().transport, "TCP");
    assert_eq!(
        inv.body().len(),
        text.len() - text.find("\r\n\r\n").unwrap() - 4
    );
    // The PBX answers on that connection; the phone gets it over UDP.
    got.send(&respond(&inv, 486, "Busy Here", "b1", "", ""));
    let busy = recv_sip(&phone, |m| m.status() == Some(486));
    assert_eq!(busy.call_id(), Some("tcp-large-1"));
    // The PBX closes its connection and stops listening on TCP.
    drop(got);
    drop(pbx_tcp);
    std::thread::sleep(Duration::from_millis(300));

    // Without a TCP listener the connection is refused and the request goes over UDP after all.
    let text = large_invite(daemon.sip, me, "tcp-large-2");
    phone.send_to(text.as_bytes(), daemon.sip).unwrap();
    let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
    assert_eq!(inv.call_id(), Some("tcp-large-2"));
    assert_eq!(inv.top_via().unwrap().transport, "UDP");
    pbx.send_to(
        respond(&inv, 486, "Busy Here", "b2", "", "").as_bytes(),
        daemon.sip,
    )
    .unwrap();
    let busy = recv_sip(&phone, |m| m.status() == Some(486));
    assert_eq!(busy.call_id(), Some("tcp-large-2"));
    assert!(daemon
        .log_text()
        .contains("large request falls back to UDP"));
}

#[test]
fn a_phone_on_udp_calls_a_pbx_on_tcp_over_ipv6() {
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let root = tempfile::tempdir().unwrap();
    let pbx_listener = TcpListener::bind("[::1]:0").unwrap();
    let pbx_addr = pbx_listener.local_addr().unwrap();
    let config = root.path().join("recproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:[::1]:0\", \"tcp:[::1]:0\"]\npbx = \"tcp:{pbx_addr}\"\n\n\
             [media]\nbind = \"::1\"\nadvertise = \"::1\"\nports = \"48300-48399\"\ntimeout = \"10s\"\n\n\
             [recording]\ndir = \"{}\"\n",
            root.path().join("recordings").display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let proxy = daemon.sip;
    assert!(proxy.is_ipv6());

    let phone = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spec = CallSpec::new(
            "0401234567",
            "0295120000",
            Codec::Pcmu,
            CALLER_HZ,
            Duration::from_secs(2),
        );
        rt.block_on(async {
            let phone = Phone::bind(V6).await.unwrap();
            phone.call(proxy, &spec).await.unwrap()
        })
    });

    // The daemon connects to the PBX and sends the INVITE on that connection.
    let (conn, _) = pbx_listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pbx = Stream {
        tcp: conn,
        buf: Vec::new(),
    };
    let inv = pbx.recv(|m| m.method() == Some("INVITE"));
    assert_eq!(inv.top_via().unwrap().transport, "TCP");
    let rr: Vec<String> = inv.header_all("Record-Route").map(str::to_string).collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].contains(";transport=tcp;lr") && rr[0].contains("[::1]"),
        "{rr:?}"
    );
    assert!(!rr[1].contains("transport"), "{rr:?}");
    let to_pbx_side = media_addr(inv.body());
    assert!(to_pbx_side.is_ipv6());
    let pbx_rtp = UdpSocket::bind("[::1]:0").unwrap();
    let port = pbx_rtp.local_addr().unwrap().port();
    let answer = format!(
        "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    );
    let contact = format!("Contact: <sip:2000@{pbx_addr};transport=tcp>\r\n");
    pbx.send(&respond(&inv, 200, "OK", "b6", &contact, &answer));
    let ack = pbx.recv(|m| m.method().is_some());
    assert_eq!(ack.method(), Some("ACK"));
    play(&pbx_rtp, to_pbx_side, CALLEE_HZ, 1, 100, 0xB0B6);
    // The phone hangs up after its two seconds; the BYE comes on the same connection.
    let bye = pbx.recv(|m| m.method().is_some());
    assert_eq!(bye.method(), Some("BYE"));
    pbx.send(&respond(&bye, 200, "OK", "b6", "", ""));
    let report = phone.join().unwrap();
    assert_eq!(report.outcome, Outcome::Answered);

    let (_, v) = daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete", "{v:#}");
    assert_eq!(v["end_reason"], "bye_caller", "{v:#}");
    assert_eq!(v["legs"]["callee"]["packets"], 100, "{v:#}");
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    let mid = |ch: &[i16]| ch[4000..12000].to_vec();
    let l = dominance(&mid(&wav.left), 8000, CALLER_HZ, &[CALLEE_HZ]);
    let r = dominance(&mid(&wav.right), 8000, CALLEE_HZ, &[CALLER_HZ]);
    assert!(l > 50.0 && r > 50.0, "left {l:.1} right {r:.1}");
}

//! Bounded soak: 10,000 mixed calls (answered and hung up, rejected 486, cancelled while ringing)
//! through the real daemon from four phones at once, signalling only, then the leak check: no
//! call, dialog, media port or TCP connection left when the daemon is stopped, and one sidecar
//! per call with the right outcome. Two phones use UDP; two use TCP to a PBX on UDP, one keeping
//! its connection for all its calls, one opening a new connection per call. Bounded in count and
//! time (each call waits at most 5 s for any answer).

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recproxy::sip::msg::Message;
use support::raw::respond;
use support::{sidecars, write_config, Daemon};

const PHONES: usize = 4;
const CALLS_PER_PHONE: usize = 2500;
/// The PBX's Contact in every response.
const CONTACT: &str = "Contact: <sip:pbx@127.0.0.1>\r\n";
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

fn parse(buf: &[u8]) -> Option<Message> {
    Message::parse(buf).ok().map(|(m, _)| m)
}

/// The PBX side: answers by the called number's first letter: a = answer, b = busy, r = ring
/// until cancelled.
fn pbx(sock: UdpSocket, stop: Arc<AtomicUsize>) {
    let mut ringing: HashMap<String, Message> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while stop.load(Ordering::Relaxed) == 0 {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Some(m) = parse(&buf[..n]) else { continue };
        let call_id = m.call_id().unwrap_or_default().to_string();
        let reply = |text: String| {
            sock.send_to(text.as_bytes(), from).unwrap();
        };
        match m.method() {
            Some("INVITE") => {
                let user = m
                    .request_uri()
                    .unwrap_or_default()
                    .trim_start_matches("sip:")
                    .to_string();
                match user.chars().next() {
                    Some('b') => reply(respond(&m, 486, "Busy Here", "pbx", CONTACT, "")),
                    Some('r') => {
                        reply(respond(&m, 180, "Ringing", "pbx", CONTACT, ""));
                        ringing.insert(call_id, m);
                    }
                    _ => reply(respond(&m, 200, "OK", "pbx", CONTACT, SDP)),
                }
            }
            Some("CANCEL") => {
                reply(respond(&m, 200, "OK", "pbx", CONTACT, ""));
                if let Some(inv) = ringing.remove(&call_id) {
                    reply(respond(&inv, 487, "Request Terminated", "pbx", CONTACT, ""));
                }
            }
            Some("BYE") => reply(respond(&m, 200, "OK", "pbx", CONTACT, "")),
            _ => {}
        }
    }
}

/// One request a phone sends.
#[derive(Clone, Copy)]
struct Req<'a> {
    method: &'a str,
    uri: &'a str,
    call_id: &'a str,
    branch: &'a str,
    cseq: u32,
    to_tag: Option<&'a str>,
    route: Option<&'a str>,
    body: &'a str,
}

/// How a phone reaches the proxy.
enum Link {
    Udp(UdpSocket),
    /// A connection and the bytes read from it that are not yet a whole message.
    Tcp(TcpStream, Vec<u8>),
}

struct Phone {
    link: Link,
    me: SocketAddr,
    proxy: SocketAddr,
    buf: Vec<u8>,
}

impl Phone {
    fn udp(proxy: SocketAddr) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        Phone {
            link: Link::Udp(sock),
            me,
            proxy,
            buf: vec![0u8; 65536],
        }
    }

    fn tcp(proxy: SocketAddr) -> Phone {
        let conn = TcpStream::connect(proxy).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = conn.local_addr().unwrap();
        Phone {
            link: Link::Tcp(conn, Vec::new()),
            me,
            proxy,
            buf: vec![0u8; 65536],
        }
    }

    fn send(&mut self, text: &str) {
        match &mut self.link {
            Link::Udp(sock) => {
                sock.send_to(text.as_bytes(), self.proxy).unwrap();
            }
            Link::Tcp(conn, _) => conn.write_all(text.as_bytes()).unwrap(),
        }
    }

    /// The next message, if one arrives within the read timeout.
    fn recv(&mut self) -> Option<Message> {
        match &mut self.link {
            Link::Udp(sock) => {
                let (n, _) = sock.recv_from(&mut self.buf).ok()?;
                parse(&self.buf[..n])
            }
            Link::Tcp(conn, pending) => loop {
                if let Ok((m, used)) = Message::parse_stream(pending) {
                    pending.drain(..used);
                    return Some(m);
                }
                let n = conn.read(&mut self.buf).ok().filter(|&n| n > 0)?;
                pending.extend_from_slice(&self.buf[..n]);
            },
        }
    }

    /// Waits for a response to `call_id` with status `code` (and method), skipping others.
    fn expect(&mut self, call_id: &str, code: u16, method: &str) -> Message {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(m) = self.recv() {
                if m.call_id() == Some(call_id)
                    && m.status() == Some(code)
                    && m.cseq().map(|(_, meth)| meth) == Some(method)
                {
                    return m;
                }
            }
        }
        panic!(
            "{call_id}: no {code} to {method}; pending {:?}",
            match &self.link {
                Link::Tcp(_, p) => String::from_utf8_lossy(p).to_string(),
                _ => String::new(),
            }
        );
    }

    fn request(&self, r: Req<'_>) -> String {
        let me = self.me;
        let transport = match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp(..) => "TCP",
        };
        let mut out = format!(
            "{} {} SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch={};rport\r\nMax-Forwards: 70\r\n",
            r.method, r.uri, r.branch
        );
        if let Some(route) = r.route {
            out.push_str(&format!("Route: {route}\r\n"));
        }
        let to_user = r
            .uri
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .unwrap_or_default();
        let to_tag = r.to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        out.push_str(&format!(
            "From: <sip:0401234567@127.0.0.1>;tag=ph\r\nTo: <sip:{to_user}@127.0.0.1>{to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {} {}\r\nContact: <sip:0401234567@{me}>\r\n",
            r.call_id, r.cseq, r.method,
        ));
        if r.body.is_empty() {
            out.push_str("Content-Length: 0\r\n\r\n");
        } else {
            out.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
                r.body.len(),
                r.body
            ));
        }
        out
    }

    fn send_req(&mut self, r: Req<'_>) {
        let text = self.request(r);
        self.send(&text);
    }

    fn call(&mut self, kind: char, call_id: &str) {
        let uri = format!("sip:{kind}0295120000@127.0.0.1");
        let branch = format!("z9hG4bK{call_id}");
        let invite = Req {
            method: "INVITE",
            uri: &uri,
            call_id,
            branch: &branch,
            cseq: 1,
            to_tag: None,
            route: None,
            body: SDP,
        };
        let text = self.request(invite);
        self.send(&text);
        match kind {
            'a' => {
                let ok = self.expect(call_id, 200, "INVITE");
                // The route set: Record-Route in reverse (two entries when transports differ).
                let mut rr: Vec<&str> = ok.header_all("Record-Route").collect();
                rr.reverse();
                let route = (!rr.is_empty()).then(|| rr.join(","));
                let tag = ok.to_tag().unwrap_or_default().to_string();
                let in_dialog = Req {
                    uri: "sip:pbx@127.0.0.1",
                    to_tag: Some(&tag),
                    route: route.as_deref(),
                    body: "",
                    ..invite
                };
                let (ack_branch, bye_branch) = (format!("{branch}a"), format!("{branch}b"));
                self.send_req(Req {
                    method: "ACK",
                    branch: &ack_branch,
                    ..in_dialog
                });
                self.send_req(Req {
                    method: "BYE",
                    branch: &bye_branch,
                    cseq: 2,
                    ..in_dialog
                });
                self.expect(call_id, 200, "BYE");
            }
            'b' => {
                let busy = self.expect(call_id, 486, "INVITE");
                let tag = busy.to_tag().unwrap_or_default().to_string();
                self.send_req(Req {
                    method: "ACK",
                    to_tag: Some(&tag),
                    body: "",
                    ..invite
                });
            }
            _ => {
                self.expect(call_id, 180, "INVITE");
                self.send_req(Req {
                    method: "CANCEL",
                    body: "",
                    ..invite
                });
                self.expect(call_id, 200, "CANCEL");
                let term = self.expect(call_id, 487, "INVITE");
                let tag = term.to_tag().unwrap_or_default().to_string();
                self.send_req(Req {
                    method: "ACK",
                    to_tag: Some(&tag),
                    body: "",
                    ..invite
                });
            }
        }
    }
}

#[test]
fn ten_thousand_mixed_calls_leave_no_call_dialog_or_port_behind() {
    let root = tempfile::tempdir().unwrap();
    let pbx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = write_config(
        root.path(),
        pbx_sock.local_addr().unwrap(),
        (44000, 45999),
        "",
    );
    // The four phones share 127.0.0.1: lift the per-source flood limit for this test.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[media]", "max_rate = 100000\n\n[media]")
        .replace(
            "listen = [\"udp:127.0.0.1:0\"]",
            "listen = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]",
        );
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config);
    let tcp_addr = daemon.tcp_addr();
    let stop = Arc::new(AtomicUsize::new(0));
    let pbx_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || pbx(pbx_sock, stop))
    };
    let started = Instant::now();
    let phones: Vec<_> = (0..PHONES)
        .map(|p| {
            let proxy = daemon.sip;
            let proxy_tcp = tcp_addr;
            std::thread::spawn(move || {
                let mut phone = match p {
                    0 | 1 => Phone::udp(proxy),
                    _ => Phone::tcp(proxy_tcp),
                };
                for i in 0..CALLS_PER_PHONE {
                    // 60 % answered, 20 % busy, 20 % cancelled.
                    let kind = match i % 5 {
                        0..=2 => 'a',
                        3 => 'b',
                        _ => 'r',
                    };
                    phone.call(kind, &format!("soak-{p}-{i}"));
                    if p == 3 {
                        // A new connection for every call: the daemon must let each go.
                        phone = Phone::tcp(proxy_tcp);
                    }
                }
            })
        })
        .collect();
    for phone in phones {
        if phone.join().is_err() {
            panic!("phone failed; log:\n{}", daemon.log_text());
        }
    }
    let signalling = started.elapsed();
    stop.store(1, Ordering::Relaxed);
    pbx_thread.join().unwrap();

    // Every call has its final sidecar (the recorder writes them in order).
    let total = PHONES * CALLS_PER_PHONE;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut states: HashMap<(String, String), usize> = HashMap::new();
    while Instant::now() < deadline {
        states.clear();
        for p in sidecars(&daemon.dir) {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let key = (
                v["state"].as_str().unwrap_or("").to_string(),
                v["end_reason"].as_str().unwrap_or("").to_string(),
            );
            *states.entry(key).or_default() += 1;
        }
        if states.values().sum::<usize>() == total && !states.keys().any(|(s, _)| s == "recording")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let get = |s: &str, r: &str| {
        states
            .get(&(s.to_string(), r.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(get("complete", "bye_caller"), total * 3 / 5, "{states:?}");
    assert_eq!(get("not_recorded", "rejected"), total / 5, "{states:?}");
    assert_eq!(get("not_recorded", "cancel"), total / 5, "{states:?}");

    assert!(daemon.signal(libc::SIGTERM).success());
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("state at shutdown"))
        .expect("shutdown state logged");
    eprintln!("{total} calls of signalling in {signalling:?}; {line}");
    for leak_free in [
        "active_calls=0",
        "media_port_pairs=0",
        "dialogs=0",
        "tcp_connections=0",
    ] {
        assert!(line.contains(leak_free), "{leak_free} expected: {line}");
    }
}

//! Next hops named by host names, through the real daemon: the PBX's outbound INVITEs name a
//! trunk by SRV (RFC 3263 §4.2, lowest priority first), by a name with a port (A record), and by
//! a name that does not exist (502). The daemon asks a small DNS server of the test's own on
//! 127.0.0.1 (`sip.dns_servers`), which also counts the queries so that caching shows.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::raw::{recv_sip, respond};
use support::{write_config, Daemon};

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;

/// One answer record's data.
#[derive(Clone)]
enum Rec {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: &'static str,
    },
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A DNS server answering from `zone` (name, type) -> records: NXDOMAIN for unknown names,
/// an empty answer for a known name without records of the type. Runs until `stop`.
fn dns_server(
    zone: HashMap<(String, u16), Vec<Rec>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            // Question: labels from offset 12, then type and class.
            let mut at = 12;
            let mut labels = Vec::new();
            while at < q.len() && q[at] != 0 {
                let len = q[at] as usize;
                labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + len]).to_lowercase());
                at += 1 + len;
            }
            let qtype = u16::from_be_bytes([q[at + 1], q[at + 2]]);
            let question_end = at + 5;
            let name = labels.join(".");
            queries.fetch_add(1, Ordering::Relaxed);
            let known = zone.keys().any(|(n, _)| *n == name);
            let answers = zone.get(&(name, qtype)).cloned().unwrap_or_default();
            let mut out = Vec::new();
            out.extend_from_slice(&q[..2]);
            let rcode = if known { 0 } else { 3 };
            out.extend_from_slice(&[0x81, 0x80 | rcode]);
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&q[12..question_end]);
            for rec in answers {
                out.extend_from_slice(&[0xC0, 0x0C]);
                let mut rdata = Vec::new();
                let rtype = match rec {
                    Rec::A(ip) => {
                        rdata.extend_from_slice(&ip.octets());
                        TYPE_A
                    }
                    Rec::Srv {
                        priority,
                        weight,
                        port,
                        target,
                    } => {
                        rdata.extend_from_slice(&priority.to_be_bytes());
                        rdata.extend_from_slice(&weight.to_be_bytes());
                        rdata.extend_from_slice(&port.to_be_bytes());
                        encode_name(target, &mut rdata);
                        TYPE_SRV
                    }
                };
                out.extend_from_slice(&rtype.to_be_bytes());
                out.extend_from_slice(&1u16.to_be_bytes());
                out.extend_from_slice(&300u32.to_be_bytes());
                out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(&rdata);
            }
            let _ = sock.send_to(&out, from);
        }
    });
    (addr, handle)
}

/// The PBX's outbound INVITE to `uri`.
fn outbound(pbx: SocketAddr, uri: &str, call_id: &str) -> String {
    format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\n\
From: <sip:2000@{pbx}>;tag=p1\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:2000@{pbx}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn outbound_calls_reach_trunks_named_by_srv_and_a_records() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = pbx.local_addr().unwrap();
    // Two trunk SBCs by SRV (the first by priority must get the call), and a gateway by name.
    let sbc_a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sbc_b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let lo = Ipv4Addr::LOCALHOST;
    let mut zone = HashMap::new();
    zone.insert(
        ("_sip._udp.trunk.test".to_string(), TYPE_SRV),
        vec![
            Rec::Srv {
                priority: 20,
                weight: 0,
                port: port(&sbc_b),
                target: "sbc-b.trunk.test",
            },
            Rec::Srv {
                priority: 10,
                weight: 60,
                port: port(&sbc_a),
                target: "sbc-a.trunk.test",
            },
        ],
    );
    zone.insert(("sbc-a.trunk.test".into(), TYPE_A), vec![Rec::A(lo)]);
    zone.insert(("sbc-b.trunk.test".into(), TYPE_A), vec![Rec::A(lo)]);
    zone.insert(("gw.trunk.test".into(), TYPE_A), vec![Rec::A(lo)]);
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (dns, server) = dns_server(zone, Arc::clone(&queries), Arc::clone(&stop));

    let config = write_config(root.path(), pbx_addr, (48500, 48599), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(support::NO_DNS, &format!("dns_servers = [\"{dns}\"]\n"));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);

    // By SRV: to the priority-10 target, at its port.
    let send = |text: String| {
        pbx.send_to(text.as_bytes(), daemon.sip).unwrap();
    };
    send(outbound(pbx_addr, "sip:0401234567@trunk.test", "dns-srv-1"));
    let inv = recv_sip(&sbc_a, |m| m.method() == Some("INVITE"));
    assert_eq!(inv.call_id(), Some("dns-srv-1"));
    assert_eq!(inv.request_uri(), Some("sip:0401234567@trunk.test"));
    sbc_a
        .send_to(
            respond(&inv, 486, "Busy Here", "t1", "", "").as_bytes(),
            daemon.sip,
        )
        .unwrap();
    let busy = recv_sip(&pbx, |m| m.status() == Some(486));
    assert_eq!(busy.call_id(), Some("dns-srv-1"));
    let asked = queries.load(Ordering::Relaxed);
    assert!(asked >= 2, "{asked} queries");

    // The same name again: from the cache, no new query.
    send(outbound(pbx_addr, "sip:0401234567@trunk.test", "dns-srv-2"));
    let inv = recv_sip(&sbc_a, |m| m.method() == Some("INVITE"));
    assert_eq!(inv.call_id(), Some("dns-srv-2"));
    assert_eq!(queries.load(Ordering::Relaxed), asked);
    sbc_a
        .send_to(
            respond(&inv, 486, "Busy Here", "t1", "", "").as_bytes(),
            daemon.sip,
        )
        .unwrap();
    recv_sip(&pbx, |m| m.status() == Some(486));

    // A name with a port: its A record, that port.
    let uri = format!("sip:0401234567@gw.trunk.test:{}", port(&gw));
    send(outbound(pbx_addr, &uri, "dns-a-1"));
    let inv = recv_sip(&gw, |m| m.method() == Some("INVITE"));
    assert_eq!(inv.call_id(), Some("dns-a-1"));
    gw.send_to(
        respond(&inv, 404, "Not Found", "t1", "", "").as_bytes(),
        daemon.sip,
    )
    .unwrap();
    recv_sip(&pbx, |m| m.status() == Some(404));

    // A name that does not exist: 502 to the PBX, and nothing reached any trunk.
    send(outbound(
        pbx_addr,
        "sip:0401234567@nosuch.trunk.test",
        "dns-nx",
    ));
    let bad = recv_sip(&pbx, |m| m.status() == Some(502));
    assert_eq!(bad.call_id(), Some("dns-nx"));
    sbc_b
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        sbc_b.recv_from(&mut buf).is_err(),
        "the priority-20 SBC got a message"
    );
    let sidecar = daemon.final_sidecar("dns-srv-1").1;
    assert_eq!(sidecar["state"], "not_recorded", "{sidecar:#}");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

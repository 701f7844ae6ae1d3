//! The RFC 4475 and RFC 5118 torture messages (fixtures/torture/, from the shared corpus) sent at
//! the real daemon: valid requests are forwarded with every header line intact, invalid ones are
//! answered 400 (505, 416, 420, 483 where the RFCs say so), bad responses are dropped, the daemon
//! stays up, and a normal call afterwards is recorded.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome, Pbx, Phone};
use recproxy::sip::msg::Message;
use support::{dominance, write_config, Daemon, Wav};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Forwarded to the PBX.
    Forward,
    /// Answered by the proxy with this status, not forwarded.
    Reject(u16),
    /// Neither answered nor forwarded (responses that are malformed or not ours).
    Drop,
    /// Forwarded by its Route header, elsewhere than the PBX, without an error reply.
    ForwardByRoute,
}

fn expected(name: &str) -> Expect {
    match name {
        "clerr"
        | "ncl"
        | "badinv01"
        | "scalar02"
        | "quotbal"
        | "ltgtruri"
        | "lwsruri"
        | "escruri"
        | "regbadct"
        | "baddn"
        | "mismatch01"
        | "mismatch02"
        | "insuf"
        | "multi01"
        | "mcl01"
        | "ipv6-bad"
        | "ipv6-bug-abnf-3-colons" => Expect::Reject(400),
        "badvers" => Expect::Reject(505),
        "zeromf" => Expect::Reject(483),
        "unkscm" | "novelsc" => Expect::Reject(416),
        "bext01" => Expect::Reject(420),
        // Its Route names a host (services.example.com) that the test daemon's name server
        // (none, on 127.0.0.1:9) cannot resolve: 502.
        "wsinv" => Expect::Reject(502),
        // Its Route is 127.0.0.1:5080: loose routing sends it there, not to the PBX.
        "mpart01" => Expect::ForwardByRoute,
        // Malformed responses, and well-formed ones whose top Via is not ours (RFC 3261 §16.7:
        // silently discarded); that the valid ones parse is checked by the sip::msg unit tests.
        "scalarlg" | "bigcode" | "bcast" | "noreason" | "unreason" => Expect::Drop,
        _ => Expect::Forward,
    }
}

/// Call-ID and CSeq: what identifies a torture request among the forwarded ones (several
/// files share a Call-ID, and unanswered INVITEs are retransmitted meanwhile).
fn call_id_of(data: &[u8]) -> Option<String> {
    let (m, _) = Message::parse(data).ok()?;
    Some(format!("{} {}", m.call_id()?, m.header("CSeq")?))
}

/// Receives datagrams until `pred` accepts one or `wait` passes.
fn recv_until(
    sock: &UdpSocket,
    wait: Duration,
    mut pred: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if pred(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

#[test]
fn torture_messages_are_forwarded_or_rejected_as_the_rfcs_say_and_calls_still_work() {
    let root = tempfile::tempdir().unwrap();
    let fake_pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = fake_pbx.local_addr().unwrap();
    let config = write_config(root.path(), pbx_addr, (42700, 42799), "");
    let daemon = Daemon::start(&config);
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torture");
    let mut files: Vec<_> = ["rfc4475", "rfc5118"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(dir.join(d))
                .unwrap()
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    assert!(files.len() >= 60, "{} torture files", files.len());

    let mut outcome = BTreeMap::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let data = std::fs::read(path).unwrap();
        let expect = expected(&name);
        phone.send_to(&data, daemon.sip).unwrap();
        let got = match expect {
            Expect::Reject(code) => {
                let status = format!("SIP/2.0 {code} ");
                // A name lookup that gets no answer gives up after about 4 s.
                let wait = if name == "wsinv" { 6 } else { 2 };
                let resp = recv_until(&phone, Duration::from_secs(wait), |d| {
                    !d.starts_with(b"SIP/2.0 100 ")
                });
                let forwarded = recv_until(&fake_pbx, Duration::from_millis(50), |d| {
                    call_id_of(d).is_some() && call_id_of(d) == call_id_of(&data)
                });
                assert!(forwarded.is_none(), "{name}: must not be forwarded");
                match resp {
                    Some(r) if r.starts_with(status.as_bytes()) => expect,
                    Some(r) => panic!(
                        "{name}: expected {code}, got {}",
                        String::from_utf8_lossy(&r[..r.len().min(60)])
                    ),
                    None => panic!("{name}: expected {code}, got nothing"),
                }
            }
            Expect::ForwardByRoute => {
                let resp = recv_until(&phone, Duration::from_millis(300), |_| true);
                assert!(resp.is_none(), "{name}: no error reply, got {resp:?}");
                let fwd = recv_until(&fake_pbx, Duration::from_millis(50), |d| {
                    call_id_of(d).is_some() && call_id_of(d) == call_id_of(&data)
                });
                assert!(fwd.is_none(), "{name}: goes by its Route, not to the PBX");
                expect
            }
            Expect::Drop => {
                let resp = recv_until(&phone, Duration::from_millis(300), |_| true);
                assert!(
                    resp.is_none(),
                    "{name}: a response must be dropped, got {resp:?}"
                );
                let fwd = recv_until(&fake_pbx, Duration::from_millis(50), |d| {
                    d.starts_with(b"SIP/2.0")
                });
                assert!(fwd.is_none(), "{name}: response must not be forwarded");
                expect
            }
            Expect::Forward => {
                let want = call_id_of(&data).unwrap_or_else(|| panic!("{name} parses"));
                let (orig, consumed) = Message::parse(&data).unwrap();
                let fwd = recv_until(&fake_pbx, Duration::from_secs(2), |d| {
                    call_id_of(d).as_deref() == Some(want.as_str())
                })
                .unwrap_or_else(|| panic!("{name}: not forwarded"));
                let text = String::from_utf8_lossy(&fwd).to_string();
                let (m, _) = Message::parse(&fwd).unwrap();
                assert_eq!(m.method(), orig.method(), "{name}");
                assert_eq!(
                    m.request_uri(),
                    orig.request_uri(),
                    "{name}: Request-URI unchanged"
                );
                assert!(
                    m.top_via()
                        .unwrap()
                        .branch
                        .unwrap()
                        .starts_with("z9hG4bK-rp"),
                    "{name}: our Via on top"
                );
                assert_eq!(
                    m.header_all("Via").count(),
                    orig.header_all("Via").count() + 1,
                    "{name}"
                );
                // Every header line the proxy has no business changing passes byte for byte.
                for h in orig.headers() {
                    if ["max-forwards", "content-length", "route", "record-route"]
                        .contains(&h.name())
                    {
                        continue;
                    }
                    let raw = String::from_utf8_lossy(h.raw()).to_string();
                    assert!(
                        text.contains(&raw),
                        "{name}: header line {raw:?} not forwarded unchanged:\n{text}"
                    );
                }
                if !orig
                    .header("Content-Type")
                    .is_some_and(|c| c.contains("sdp"))
                {
                    assert_eq!(m.body(), orig.body(), "{name}: body unchanged");
                }
                assert!(consumed <= data.len());
                expect
            }
        };
        outcome.insert(name, got);
    }
    let rejected = outcome
        .values()
        .filter(|e| matches!(e, Expect::Reject(_)))
        .count();
    let forwarded = outcome.values().filter(|e| **e == Expect::Forward).count();
    assert_eq!(
        (rejected, forwarded, outcome.len()),
        (23, 32, files.len()),
        "rejected, forwarded, files"
    );

    // Each rejection is logged with the source address.
    let log = daemon.log_text();
    let phone_addr = phone.local_addr().unwrap().to_string();
    let logged = log
        .lines()
        .filter(|l| {
            (l.contains("rejecting") || l.contains("unparsable")) && l.contains(&phone_addr)
        })
        .count();
    assert!(
        logged >= 20,
        "{logged} rejections logged with the source address"
    );

    // Still up: a normal call through the same daemon is recorded. The real PBX takes over the
    // fake one's address.
    drop(fake_pbx);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut pbx = rt.block_on(async {
        let pbx = Pbx::bind(pbx_addr).await.unwrap();
        pbx.spawn(Arc::new(|_: &str| Answer::Accept {
            ring: Duration::from_millis(100),
            tone_hz: 1000.0,
        }))
    });
    let spec = CallSpec::new(
        "0401234567",
        "0295120000",
        Codec::Pcmu,
        440.0,
        Duration::from_secs(2),
    );
    let proxy: SocketAddr = daemon.sip;
    let report = rt.block_on(async {
        Phone::bind("127.0.0.1".parse().unwrap())
            .await
            .unwrap()
            .call(proxy, &spec)
            .await
            .unwrap()
    });
    assert_eq!(report.outcome, Outcome::Answered);
    rt.block_on(pbx.next_report(Duration::from_secs(10)))
        .expect("PBX report");
    let (_, v) = daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete");
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    assert!(wav.duration_ms() > 1800, "{} ms", wav.duration_ms());
    assert!(dominance(&wav.left, 8000, 440.0, &[1000.0]) > 50.0);
    assert!(dominance(&wav.right, 8000, 1000.0, &[440.0]) > 50.0);
}

#[test]
fn a_request_over_max_message_size_is_answered_513() {
    let root = tempfile::tempdir().unwrap();
    let fake_pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = write_config(
        root.path(),
        fake_pbx.local_addr().unwrap(),
        (42900, 42999),
        "",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[media]", "max_message_size = 1024\n\n[media]");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = phone.local_addr().unwrap();
    let big = "x".repeat(1500);
    let invite = format!(
        "INVITE sip:0295120000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbig1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\n\
Call-ID: big-1\r\nCSeq: 1 INVITE\r\nX-Padding: {big}\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(invite.as_bytes(), daemon.sip).unwrap();
    let resp = recv_until(&phone, Duration::from_secs(2), |_| true).expect("an answer");
    assert!(
        resp.starts_with(b"SIP/2.0 513 Message Too Large\r\n"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert!(
        recv_until(&fake_pbx, Duration::from_millis(200), |_| true).is_none(),
        "not forwarded"
    );
}

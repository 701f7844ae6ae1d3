//! Behaviour tests of the proxy core with virtual time: messages in, sends and events out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const PHONE: &str = "198.51.100.7:5060";
const PBX: &str = "192.0.2.5:5060";
const US: &str = "192.0.2.10:5060";
/// Our TCP listener, on another port than UDP so the tests tell them apart.
const US_TCP: &str = "192.0.2.10:5070";

struct Anchor {
    seen: Vec<(String, Party, Vec<u8>)>,
}

impl MediaAnchor for Anchor {
    fn on_sdp(
        &mut self,
        call_id: &str,
        party: Party,
        body: &[u8],
        _now: Instant,
    ) -> Option<Vec<u8>> {
        self.seen.push((call_id.to_string(), party, body.to_vec()));
        Some(
            format!(
                "v=0\r\nc=IN IP4 192.0.2.10\r\nm=audio {} RTP/AVP 0\r\n",
                if party == Party::Caller { 30002 } else { 30000 }
            )
            .into_bytes(),
        )
    }
}

struct Harness {
    proxy: Proxy,
    anchor: Anchor,
    now: Instant,
    /// Names the core asked to resolve.
    resolves: Vec<NameQuery>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Harness {
    fn new() -> Harness {
        Harness::with_pbx(Peer::udp(addr(PBX)))
    }

    fn with_pbx(pbx: Peer) -> Harness {
        Harness {
            proxy: Proxy::new(
                ProxyConfig {
                    advertise: vec![Peer::udp(addr(US)), Peer::tcp(addr(US_TCP))],
                    local: vec![addr(US), addr(US_TCP)],
                    pbx: vec![pbx],
                    max_rate: 50,
                    large_over_tcp: true,
                },
                0xabc,
            ),
            anchor: Anchor { seen: Vec::new() },
            now: Instant::now(),
            resolves: Vec::new(),
        }
    }

    /// A datagram over UDP; every send must be UDP too.
    fn input(&mut self, from: &str, text: &str) -> (Vec<(SocketAddr, String)>, Vec<CallEvent>) {
        self.proxy
            .handle_datagram(self.now, addr(from), text.as_bytes(), &mut self.anchor);
        self.drain()
    }

    /// A message from any peer; sends with their transport.
    fn input_on(&mut self, from: Peer, text: &str) -> (Vec<(Peer, String)>, Vec<CallEvent>) {
        self.proxy
            .handle_message(self.now, from, text.as_bytes(), &mut self.anchor);
        self.drain_peers()
    }

    fn advance(&mut self, by: Duration) -> (Vec<(SocketAddr, String)>, Vec<CallEvent>) {
        self.now += by;
        self.proxy.handle_timeout(self.now);
        self.drain()
    }

    fn advance_peers(&mut self, by: Duration) -> (Vec<(Peer, String)>, Vec<CallEvent>) {
        self.now += by;
        self.proxy.handle_timeout(self.now);
        self.drain_peers()
    }

    fn drain(&mut self) -> (Vec<(SocketAddr, String)>, Vec<CallEvent>) {
        let (sends, events) = self.drain_peers();
        let sends = sends
            .into_iter()
            .map(|(to, data)| {
                assert_eq!(to.transport, Transport::Udp, "{data}");
                (to.addr, data)
            })
            .collect();
        (sends, events)
    }

    fn drain_peers(&mut self) -> (Vec<(Peer, String)>, Vec<CallEvent>) {
        let mut sends = Vec::new();
        let mut events = Vec::new();
        while let Some(out) = self.proxy.poll_output() {
            match out {
                Output::Send { to, data } => sends.push((to, String::from_utf8(data).unwrap())),
                Output::Event(e) => events.push(e),
                Output::Alias { .. } => {}
                Output::Resolve(q) => self.resolves.push(q),
            }
        }
        (sends, events)
    }
}

/// The caller's CANCEL of `invite()`.
const CANCEL: &str = "CANCEL sip:0295120000@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

fn invite() -> String {
    format!(
        "INVITE sip:0295120000@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n\
To: <sip:0295120000@192.0.2.10>\r\n\
Call-ID: call-1@198.51.100.7\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:0401234567@198.51.100.7:5060>\r\n\
P-Asserted-Identity: <sip:+358401234567@198.51.100.7>\r\n\
X-Unknown-Header :  keep   me  exactly \r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// The forwarded request's top Via branch.
fn top_branch(msg: &str) -> String {
    let (m, _) = Message::parse(msg.as_bytes()).unwrap();
    m.top_via().unwrap().branch.unwrap()
}

fn response(
    req: &str,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let (m, _) = Message::parse(req.as_bytes()).unwrap();
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in m.header_all("Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    for rr in m.header_all("Record-Route") {
        out.push_str(&format!("Record-Route: {rr}\r\n"));
    }
    let to = m.header("To").unwrap();
    match to_tag {
        Some(tag) => out.push_str(&format!("To: {to};tag={tag}\r\n")),
        None => out.push_str(&format!("To: {to}\r\n")),
    }
    out.push_str(&format!(
        "From: {}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
        m.header("From").unwrap(),
        m.call_id().unwrap(),
        m.header("CSeq").unwrap()
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

/// Sends the INVITE and returns what went to the PBX.
fn start_call(h: &mut Harness) -> String {
    let (sends, events) = h.input(PHONE, &invite());
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(sends[0].1.starts_with("SIP/2.0 100 Trying\r\n"));
    assert_eq!(sends[1].0, addr(PBX));
    assert_eq!(events.len(), 1);
    sends[1].1.clone()
}

#[test]
fn initial_invite_goes_to_pbx_with_our_via_and_record_route_and_untouched_headers() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let lines: Vec<&str> = fwd.split("\r\n").collect();
    assert_eq!(lines[0], "INVITE sip:0295120000@192.0.2.10 SIP/2.0");
    let vias: Vec<&&str> = lines.iter().filter(|l| l.starts_with("Via:")).collect();
    assert_eq!(vias.len(), 2, "{fwd}");
    assert!(
        vias[0].starts_with("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-rp"),
        "{fwd}"
    );
    assert_eq!(
        *vias[1],
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport"
    );
    assert!(fwd.contains("Max-Forwards: 69\r\n"));
    assert!(fwd.contains("Record-Route: <sip:192.0.2.10:5060;lr>\r\n"));
    for untouched in [
        "From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n",
        "P-Asserted-Identity: <sip:+358401234567@198.51.100.7>\r\n",
        "X-Unknown-Header :  keep   me  exactly \r\n",
        "Contact: <sip:0401234567@198.51.100.7:5060>\r\n",
    ] {
        assert!(fwd.contains(untouched), "{untouched} in {fwd}");
    }
    // The SDP went through the anchor and the rewritten body (with its length) was forwarded.
    assert_eq!(h.anchor.seen.len(), 1);
    assert_eq!(h.anchor.seen[0].1, Party::Caller);
    assert!(fwd.ends_with("m=audio 30002 RTP/AVP 0\r\n"));
}

#[test]
fn invite_event_carries_the_numbers() {
    let mut h = Harness::new();
    let (_, events) = h.input(PHONE, &invite());
    let CallEventKind::Invite(info) = &events[0].kind else {
        panic!("{events:?}")
    };
    assert_eq!(events[0].call_id, "call-1@198.51.100.7");
    assert_eq!(info.request_uri_user.as_deref(), Some("0295120000"));
    assert_eq!(info.from_user.as_deref(), Some("0401234567"));
    assert_eq!(info.asserted_user.as_deref(), Some("+358401234567"));
    assert!(!info.from_pbx);
}

#[test]
fn retransmitted_invite_is_absorbed_and_answered_with_the_last_response() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let (sends, _) = h.input(PHONE, &invite());
    assert_eq!(sends.len(), 1, "no forward, the 100 again: {sends:?}");
    assert!(sends[0].1.starts_with("SIP/2.0 100 Trying\r\n"));
    let ringing = response(&fwd, 180, "Ringing", Some("pbx1"), "", "");
    let (sends, _) = h.input(PBX, &ringing);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(!sends[0].1.contains("z9hG4bK-rp"), "our Via is removed");
    let (again, _) = h.input(PHONE, &invite());
    assert_eq!(again, sends, "retransmission answered with the 180");
    assert_eq!(h.proxy.stats().absorbed_retransmissions, 2);
}

#[test]
fn answer_is_forwarded_anchored_and_reported() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let ok = response(
        &fwd,
        200,
        "OK",
        Some("pbx1"),
        "Contact: <sip:pbx@192.0.2.5>\r\n",
        SDP,
    );
    let (sends, events) = h.input(PBX, &ok);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(sends[0].1.starts_with(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport\r\n"
    ));
    assert!(sends[0]
        .1
        .contains("Record-Route: <sip:192.0.2.10:5060;lr>\r\n"));
    assert!(sends[0].1.ends_with("m=audio 30000 RTP/AVP 0\r\n"));
    assert_eq!(h.anchor.seen[1].1, Party::Callee);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, CallEventKind::Answered);
}

#[test]
fn in_dialog_requests_follow_route_and_bye_reports_who_hung_up() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let ok = response(
        &fwd,
        200,
        "OK",
        Some("pbx1"),
        "Contact: <sip:pbx@192.0.2.5:5062>\r\n",
        SDP,
    );
    h.input(PBX, &ok);
    // The callee hangs up: BYE to the caller's Contact, through us.
    let bye = "BYE sip:0401234567@198.51.100.7:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKbye1\r\n\
Route: <sip:192.0.2.10:5060;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
To: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n\
Call-ID: call-1@198.51.100.7\r\n\
CSeq: 1 BYE\r\n\
Content-Length: 0\r\n\r\n";
    let (sends, events) = h.input(PBX, bye);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(
        !sends[0].1.contains("Route:"),
        "our Route entry is consumed"
    );
    assert_eq!(events[0].kind, CallEventKind::Bye { by: Party::Callee });
    let ok = response(&sends[0].1, 200, "OK", None, "", "");
    let (sends, _) = h.input(PHONE, &ok);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
}

#[test]
fn error_response_is_acked_hop_by_hop_and_reported() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let busy = response(&fwd, 486, "Busy Here", Some("pbx1"), "", "");
    let (sends, events) = h.input(PBX, &busy);
    assert_eq!(sends.len(), 2, "{sends:?}");
    let (ack_to, ack) = &sends[0];
    assert_eq!(*ack_to, addr(PBX));
    assert!(ack.starts_with("ACK sip:0295120000@192.0.2.10 SIP/2.0\r\n"));
    assert_eq!(
        top_branch(ack),
        top_branch(&fwd),
        "ACK for a non-2xx reuses the INVITE's branch"
    );
    assert!(ack.contains(";tag=pbx1"));
    assert_eq!(sends[1].0, addr(PHONE));
    assert!(sends[1].1.starts_with("SIP/2.0 486 Busy Here\r\n"));
    assert_eq!(
        events[0].kind,
        CallEventKind::Failed {
            code: 486,
            reason: "Busy Here".into(),
            cancelled: false
        }
    );
    // The retransmitted 486 is ACKed again but not forwarded twice.
    let (sends, _) = h.input(PBX, &busy);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
    // The caller's ACK ends at the proxy.
    let phone_ack = "ACK sip:0295120000@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    let (sends, _) = h.input(PHONE, phone_ack);
    assert!(sends.is_empty(), "{sends:?}");
    // Timer G stops after the ACK: nothing is retransmitted later.
    let (sends, _) = h.advance(Duration::from_secs(2));
    assert!(sends.is_empty(), "{sends:?}");
}

#[test]
fn cancel_is_answered_and_sent_on_with_the_invite_branch() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    let (sends, _) = h.input(PHONE, CANCEL);
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(sends[0].1.starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(sends[1].0, addr(PBX));
    assert!(sends[1]
        .1
        .starts_with("CANCEL sip:0295120000@192.0.2.10 SIP/2.0\r\n"));
    assert_eq!(top_branch(&sends[1].1), top_branch(&fwd));
    // The PBX answers the CANCEL (absorbed) and ends the INVITE with 487.
    let (sends2, _) = h.input(PBX, &response(&sends[1].1, 200, "OK", Some("pbx1"), "", ""));
    assert!(sends2.is_empty(), "200 to our CANCEL is ours: {sends2:?}");
    let (sends, events) = h.input(
        PBX,
        &response(&fwd, 487, "Request Terminated", Some("pbx1"), "", ""),
    );
    assert_eq!(sends.len(), 2);
    assert!(sends[1].1.starts_with("SIP/2.0 487 Request Terminated\r\n"));
    assert_eq!(
        events[0].kind,
        CallEventKind::Failed {
            code: 487,
            reason: "Request Terminated".into(),
            cancelled: true
        }
    );
}

#[test]
fn unanswered_invite_is_retransmitted_then_times_out_with_408() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    // Timer A: 0.5 s, 1 s, 2 s, ... until Timer B at 32 s.
    let mut retransmits = 0;
    let mut t = Duration::ZERO;
    let mut timed_out = None;
    while t < Duration::from_secs(33) {
        let (sends, events) = h.advance(Duration::from_millis(250));
        t += Duration::from_millis(250);
        for (to, data) in &sends {
            if *to == addr(PBX) {
                assert_eq!(data, &fwd);
                retransmits += 1;
            } else {
                assert!(
                    data.starts_with("SIP/2.0 408 Request Timeout\r\n"),
                    "{data}"
                );
            }
        }
        if !events.is_empty() {
            timed_out = Some((t, events));
        }
    }
    assert_eq!(retransmits, 6, "0.5+1+2+4+8+16 s");
    let (at, events) = timed_out.expect("timeout reported");
    assert!(at >= Duration::from_secs(32) && at <= Duration::from_millis(32_250));
    assert!(matches!(
        events[0].kind,
        CallEventKind::Failed { code: 408, .. }
    ));
    // Everything is forgotten eventually: no leak.
    h.advance(Duration::from_secs(40));
    assert_eq!(h.proxy.sizes(), (0, 0, 0));
}

#[test]
fn zero_max_forwards_gets_483_and_malformed_requests_get_400() {
    let mut h = Harness::new();
    let (sends, events) = h.input(
        PHONE,
        &invite().replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert_eq!(sends.len(), 1);
    assert!(
        sends[0].1.starts_with("SIP/2.0 483 Too Many Hops\r\n"),
        "{sends:?}"
    );
    assert!(events.is_empty());
    let (sends, _) = h.input(
        PHONE,
        &invite().replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS"),
    );
    assert_eq!(sends.len(), 1);
    assert!(sends[0].1.starts_with("SIP/2.0 400 "), "{sends:?}");
    let (sends, _) = h.input(PHONE, "garbage\r\n\r\n");
    assert!(sends.is_empty());
    assert_eq!(h.proxy.stats().unparsable, 1);
}

#[test]
fn completed_call_leaves_no_state_behind() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            Some("pbx1"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    let bye = "BYE sip:pbx@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye2;rport\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let (sends, events) = h.input(PHONE, bye);
    assert_eq!(sends[0].0, addr(PBX));
    assert_eq!(events[0].kind, CallEventKind::Bye { by: Party::Caller });
    h.input(PBX, &response(&sends[0].1, 200, "OK", Some("pbx1"), "", ""));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.proxy.sizes(), (0, 0, 0));
    assert_eq!(h.proxy.poll_timeout(), None);
}

#[test]
fn ringing_call_is_not_timed_out_by_timer_b_and_timer_c_cancels_it_after_three_minutes() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    // Ringing for two minutes: no 408, no retransmission, no event.
    for _ in 0..120 {
        let (sends, events) = h.advance(Duration::from_secs(1));
        assert!(
            sends.is_empty() && events.is_empty(),
            "{sends:?} {events:?}"
        );
    }
    // Still ringing, a later 180 restarts Timer C.
    h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    let mut cancel = None;
    for second in 1..=200 {
        let (sends, _) = h.advance(Duration::from_secs(1));
        if let Some((to, data)) = sends.into_iter().find(|(_, d)| d.starts_with("CANCEL ")) {
            assert_eq!(to, addr(PBX));
            cancel = Some((second, data));
            break;
        }
    }
    let (second, data) = cancel.expect("Timer C sent CANCEL");
    assert!(
        (181..=182).contains(&second),
        "CANCEL {second} s after the last 180"
    );
    assert_eq!(top_branch(&data), top_branch(&fwd));
    // The PBX's 487 goes to the caller as the final answer.
    let (sends, events) = h.input(
        PBX,
        &response(&fwd, 487, "Request Terminated", Some("pbx1"), "", ""),
    );
    assert!(sends
        .iter()
        .any(|(to, d)| *to == addr(PHONE) && d.starts_with("SIP/2.0 487 ")));
    assert!(matches!(
        events[0].kind,
        CallEventKind::Failed { code: 487, .. }
    ));
}

#[test]
fn answer_after_a_long_ring_is_still_anchored_and_reported() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    h.advance(Duration::from_secs(60));
    let (sends, events) = h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            Some("pbx1"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    assert_eq!(sends.len(), 1);
    assert!(
        sends[0].1.ends_with("m=audio 30000 RTP/AVP 0\r\n"),
        "answer SDP anchored"
    );
    assert_eq!(events[0].kind, CallEventKind::Answered);
}

#[test]
fn provisional_after_final_is_dropped_and_retransmissions_get_the_final() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            Some("pbx1"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    let (late, _) = h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    assert!(
        late.is_empty(),
        "a 1xx after the final is not forwarded: {late:?}"
    );
    let (again, _) = h.input(PHONE, &invite());
    assert!(
        again[0].1.starts_with("SIP/2.0 200 OK\r\n"),
        "{}",
        again[0].1
    );
}

#[test]
fn cancel_before_any_provisional_waits_for_the_first_one() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let (sends, _) = h.input(PHONE, CANCEL);
    assert_eq!(sends.len(), 1, "only the 200 to the caller: {sends:?}");
    assert!(sends[0].1.starts_with("SIP/2.0 200 OK\r\n"));
    // The PBX's first 100 lets the CANCEL go (RFC 3261 §9.1).
    let (sends, _) = h.input(PBX, &response(&fwd, 100, "Trying", None, "", ""));
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, addr(PBX));
    assert!(sends[0].1.starts_with("CANCEL "));
    assert_eq!(top_branch(&sends[0].1), top_branch(&fwd));
    // Only once.
    let (sends, _) = h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    assert!(
        sends.iter().all(|(_, d)| !d.starts_with("CANCEL ")),
        "{sends:?}"
    );
}

#[test]
fn dialled_number_survives_a_preloaded_route_naming_the_proxy() {
    let mut h = Harness::new();
    let inv = invite().replace(
        "Max-Forwards: 70\r\n",
        "Route: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n",
    );
    let (sends, events) = h.input(PHONE, &inv);
    let fwd = &sends
        .iter()
        .find(|(to, _)| *to == addr(PBX))
        .expect("forwarded")
        .1;
    assert!(
        fwd.starts_with("INVITE sip:0295120000@192.0.2.10 SIP/2.0\r\n"),
        "{fwd}"
    );
    assert!(
        !fwd.contains("Route: <sip:192.0.2.10:5060;lr>\r\nMax"),
        "our Route is consumed"
    );
    let CallEventKind::Invite(info) = &events[0].kind else {
        panic!()
    };
    assert_eq!(info.request_uri_user.as_deref(), Some("0295120000"));
}

#[test]
fn retransmitted_answer_after_bye_opens_no_media() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let ok = response(
        &fwd,
        200,
        "OK",
        Some("pbx1"),
        "Contact: <sip:pbx@192.0.2.5>\r\n",
        SDP,
    );
    h.input(PBX, &ok);
    let bye = "BYE sip:pbx@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye9;rport\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    h.input(PHONE, bye);
    let anchored = h.anchor.seen.len();
    let (sends, events) = h.input(PBX, &ok);
    assert_eq!(sends.len(), 1, "still forwarded upstream");
    assert_eq!(
        h.anchor.seen.len(),
        anchored,
        "no media for a call that has ended"
    );
    assert!(events.is_empty());
}

#[test]
fn unanswered_non_invite_gets_no_408_from_the_proxy() {
    let mut h = Harness::new();
    let options = "OPTIONS sip:0295120000@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKopt1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@198.51.100.7>;tag=o1\r\nTo: <sip:0295120000@192.0.2.10>\r\n\
Call-ID: opt-1@198.51.100.7\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let (sends, _) = h.input(PHONE, options);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
    // Timer F at 32 s, then the server transaction absorbs retransmissions for 32 s more.
    for _ in 0..140 {
        let (sends, _) = h.advance(Duration::from_millis(500));
        assert!(
            sends.iter().all(|(to, _)| *to == addr(PBX)),
            "RFC 4320: no 408 upstream: {sends:?}"
        );
    }
    assert_eq!(h.proxy.sizes(), (0, 0, 0));
}

#[test]
fn cancelled_branch_without_final_response_is_given_up_after_64_t1() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(PBX, &response(&fwd, 180, "Ringing", Some("pbx1"), "", ""));
    h.input(PHONE, CANCEL);
    // The PBX never answers again.
    let mut failed = None;
    for second in 1..=40 {
        let (_, events) = h.advance(Duration::from_secs(1));
        if !events.is_empty() {
            failed = Some((second, events));
            break;
        }
    }
    let (second, events) = failed.expect("the call is given up");
    assert!((32..=33).contains(&second), "{second}");
    assert!(
        matches!(
            events[0].kind,
            CallEventKind::Failed {
                code: 408,
                cancelled: true,
                ..
            }
        ),
        "{events:?}"
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.proxy.sizes(), (0, 0, 0));
}

#[test]
fn re_invite_from_the_callee_is_routed_to_the_caller_and_anchored() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            Some("pbx1"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    let reinvite = format!(
        "INVITE sip:0401234567@198.51.100.7:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKre1\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: <sip:0295120000@192.0.2.10>;tag=pbx1\r\nTo: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 7 INVITE\r\nContact: <sip:pbx@192.0.2.5>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    let (sends, events) = h.input(PBX, &reinvite);
    assert!(
        events.is_empty(),
        "a re-INVITE is not a new call: {events:?}"
    );
    let (to, data) = sends
        .iter()
        .find(|(_, d)| d.starts_with("INVITE "))
        .expect("forwarded");
    assert_eq!(
        *to,
        addr(PHONE),
        "by its Request-URI once our Route is consumed"
    );
    assert!(
        !data.contains("Record-Route"),
        "in-dialog requests are not record-routed again"
    );
    assert_eq!(h.anchor.seen.last().unwrap().1, Party::Callee);
    assert!(
        data.ends_with("m=audio 30000 RTP/AVP 0\r\n"),
        "SDP anchored"
    );
    // The caller's 200 comes back to the PBX, its SDP anchored as the caller's.
    let (sends, _) = h.input(PHONE, &response(data, 200, "OK", None, "", SDP));
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
    assert_eq!(h.anchor.seen.last().unwrap().1, Party::Caller);
}

fn options(n: u32) -> String {
    format!(
        "OPTIONS sip:0295120000@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKfl{n};rport\r\nMax-Forwards: 70\r\n\
From: <sip:0401234567@198.51.100.7>;tag=o{n}\r\nTo: <sip:0295120000@192.0.2.10>\r\n\
Call-ID: flood-{n}@198.51.100.7\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_flood_from_one_source_is_cut_at_max_rate_but_the_pbx_is_not() {
    let mut h = Harness::new();
    let mut forwarded = 0;
    for n in 0..80 {
        let (sends, _) = h.input(PHONE, &options(n));
        forwarded += sends.len();
    }
    assert_eq!(
        forwarded, 50,
        "a burst of max_rate (50) passes, the rest is dropped"
    );
    assert_eq!(h.proxy.stats().rate_limited, 30);
    // A second later the source may send again.
    h.advance(Duration::from_secs(1));
    let (sends, _) = h.input(PHONE, &options(100));
    assert_eq!(sends.len(), 1);
    // The PBX carries every call's signalling: never limited.
    let mut from_pbx = 0;
    for n in 0..80 {
        let (sends, _) = h.input(PBX, &options(200 + n).replace("198.51.100.7", "192.0.2.5"));
        from_pbx += sends.len();
    }
    assert_eq!(from_pbx, 80);
}

#[test]
fn an_oversized_request_is_answered_513() {
    let mut h = Harness::new();
    h.proxy
        .handle_oversized(h.now, Peer::udp(addr(PHONE)), invite().as_bytes());
    let (sends, events) = h.drain();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(
        sends[0].1.starts_with("SIP/2.0 513 Message Too Large\r\n"),
        "{}",
        sends[0].1
    );
    assert!(events.is_empty());
    assert_eq!(h.proxy.stats().oversized, 1);
    // A response over the limit is just dropped.
    h.proxy.handle_oversized(
        h.now,
        Peer::udp(addr(PBX)),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-rpx\r\n\r\n",
    );
    assert!(h.drain().0.is_empty());
}

fn bye_to(tag: &str, branch: &str) -> String {
    format!(
        "BYE sip:pbx@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch};rport\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag={tag}\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn forked_invite_the_confirmed_dialog_wins() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    // Two forks ring, each with early media; every 18x goes to the caller.
    let (s1, _) = h.input(PBX, &response(&fwd, 180, "Ringing", Some("forkA"), "", SDP));
    let (s2, _) = h.input(
        PBX,
        &response(&fwd, 183, "Session Progress", Some("forkB"), "", SDP),
    );
    assert_eq!((s1.len(), s2.len()), (1, 1));
    assert_eq!(h.anchor.seen.len(), 3, "early media of both forks anchored");
    // Fork A answers: the call is confirmed with it.
    let ok_a = response(
        &fwd,
        200,
        "OK",
        Some("forkA"),
        "Contact: <sip:a@192.0.2.5>\r\n",
        SDP,
    );
    let (_, events) = h.input(PBX, &ok_a);
    assert_eq!(events[0].kind, CallEventKind::Answered);
    assert_eq!(h.anchor.seen.len(), 4);
    // A 2xx from fork B too (RFC 3261 §16.7 step 10): forwarded, but it moves no media.
    let ok_b = response(
        &fwd,
        200,
        "OK",
        Some("forkB"),
        "Contact: <sip:b@192.0.2.5>\r\n",
        SDP,
    );
    let (sends, events) = h.input(PBX, &ok_b);
    assert_eq!(sends.len(), 1, "the caller gets it, to ACK and BYE it");
    assert!(events.is_empty());
    assert_eq!(
        h.anchor.seen.len(),
        4,
        "the losing fork's SDP is not anchored"
    );
    // The caller hangs up fork B: not the recorded call.
    let (sends, events) = h.input(PHONE, &bye_to("forkB", "z9hG4bKbyeB"));
    assert_eq!(sends.len(), 1, "forwarded");
    assert!(events.is_empty(), "{events:?}");
    // Hanging up fork A ends it.
    let (_, events) = h.input(PHONE, &bye_to("forkA", "z9hG4bKbyeA"));
    assert_eq!(events[0].kind, CallEventKind::Bye { by: Party::Caller });
}

#[test]
fn challenged_invite_resent_with_credentials_is_the_same_call() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    let challenge = response(
        &fwd,
        407,
        "Proxy Authentication Required",
        Some("pbx1"),
        "Proxy-Authenticate: Digest realm=\"pbx\", nonce=\"abc\"\r\n",
        "",
    );
    let (sends, events) = h.input(PBX, &challenge);
    assert_eq!(sends.len(), 2, "ACK to the PBX, 407 to the caller");
    assert!(
        events.is_empty(),
        "a challenge does not end the call: {events:?}"
    );
    // The caller's ACK ends at the proxy; the INVITE comes again with credentials.
    let authed = invite()
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=z9hG4bKabc1", "branch=z9hG4bKabc2")
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"a\", realm=\"pbx\", nonce=\"abc\", uri=\"sip:0295120000@192.0.2.10\", response=\"0\"\r\n",
        );
    let (sends, events) = h.input(PHONE, &authed);
    let fwd2 = sends
        .iter()
        .find(|(to, _)| *to == addr(PBX))
        .expect("forwarded")
        .1
        .clone();
    assert!(
        fwd2.contains("Proxy-Authorization: Digest username=\"a\""),
        "credentials pass untouched"
    );
    // The registry hears of the INVITE again but keeps one record for the Call-ID.
    assert!(matches!(events[0].kind, CallEventKind::Invite(_)));
    let (_, events) = h.input(
        PBX,
        &response(
            &fwd2,
            200,
            "OK",
            Some("pbx2"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    assert_eq!(events[0].kind, CallEventKind::Answered);
    // The challenge's cleanup timer later does not report the answered call as failed.
    let (_, events) = h.advance(Duration::from_secs(40));
    assert!(events.is_empty(), "{events:?}");
}

fn register(supported: &str) -> String {
    format!(
        "REGISTER sip:192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKreg{};rport\r\nMax-Forwards: 70\r\n\
From: <sip:2001@192.0.2.10>;tag=r1\r\nTo: <sip:2001@192.0.2.10>\r\nCall-ID: reg-1@198.51.100.7\r\n\
CSeq: {} REGISTER\r\nContact: <sip:2001@198.51.100.7:5060>\r\n{supported}Expires: 3600\r\nContent-Length: 0\r\n\r\n",
        supported.len(),
        supported.len() + 1
    )
}

#[test]
fn register_from_a_phone_goes_to_the_pbx_with_our_path_when_supported() {
    let mut h = Harness::new();
    let (sends, events) = h.input(PHONE, &register("Supported: replaces, path\r\n"));
    assert!(events.is_empty(), "a registration is not a call");
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
    assert!(
        sends[0].1.contains("Path: <sip:192.0.2.10:5060;lr>\r\n"),
        "{}",
        sends[0].1
    );
    assert!(
        !sends[0].1.contains("Record-Route"),
        "REGISTER creates no dialog"
    );
    // Without `Supported: path` the registrar might refuse it: no Path then.
    let (sends, _) = h.input(PHONE, &register(""));
    assert!(!sends[0].1.contains("Path:"), "{}", sends[0].1);
}

/// Confirms the standard call with a 200 that carries `extra` headers; returns the forwarded INVITE.
fn answered_call(h: &mut Harness, extra: &str) -> String {
    let fwd = start_call(h);
    let extra = format!("Contact: <sip:pbx@192.0.2.5>\r\n{extra}");
    h.input(PBX, &response(&fwd, 200, "OK", Some("pbx1"), &extra, SDP));
    fwd
}

fn in_dialog_from_caller(method: &str, cseq: u32, extra: &str) -> String {
    format!(
        "{method} sip:pbx@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK{method}{cseq};rport\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn accepted_refer_reports_a_transfer_by_its_sender() {
    let mut h = Harness::new();
    answered_call(&mut h, "");
    let refer = in_dialog_from_caller(
        "REFER",
        2,
        "Refer-To: <sip:2002@192.0.2.5>\r\nReferred-By: <sip:0401234567@198.51.100.7>\r\n",
    );
    let (sends, events) = h.input(PHONE, &refer);
    assert_eq!(sends[0].0, addr(PBX));
    assert!(sends[0].1.contains("Refer-To: <sip:2002@192.0.2.5>\r\n"));
    assert!(events.is_empty(), "not before it is accepted");
    let (sends, events) = h.input(PBX, &response(&sends[0].1, 202, "Accepted", None, "", ""));
    assert_eq!(sends[0].0, addr(PHONE));
    assert_eq!(
        events[0].kind,
        CallEventKind::Transferred {
            by: Some(Party::Caller)
        }
    );
}

#[test]
fn invite_with_replaces_reports_a_transfer_of_the_replaced_call() {
    let mut h = Harness::new();
    answered_call(&mut h, "");
    let replacing = invite()
        .replace("call-1@198.51.100.7", "call-2@198.51.100.9")
        .replace("tag=from1", "tag=from2")
        .replace("branch=z9hG4bKabc1", "branch=z9hG4bKrep1")
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nReplaces: call-1@198.51.100.7;to-tag=pbx1;from-tag=from1\r\n",
        );
    let (_, events) = h.input("198.51.100.9:5060", &replacing);
    assert!(matches!(events[0].kind, CallEventKind::Invite(_)));
    assert_eq!(events[1].call_id, "call-1@198.51.100.7");
    assert_eq!(events[1].kind, CallEventKind::Transferred { by: None });
}

#[test]
fn a_session_timer_not_refreshed_ends_the_call_and_a_refresh_extends_it() {
    let mut h = Harness::new();
    answered_call(
        &mut h,
        "Session-Expires: 90;refresher=uac\r\nRequire: timer\r\n",
    );
    // Refreshed at 60 s by a re-INVITE whose 2xx again says 90 s.
    h.advance(Duration::from_secs(60));
    let reinvite = in_dialog_from_caller("INVITE", 3, "Session-Expires: 90;refresher=uac\r\n");
    let (sends, _) = h.input(PHONE, &reinvite);
    let fwd = sends
        .iter()
        .find(|(to, _)| *to == addr(PBX))
        .unwrap()
        .1
        .clone();
    h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            None,
            "Session-Expires: 90;refresher=uac\r\n",
            "",
        ),
    );
    // 90 s after the first answer nothing happens: the refresh moved the deadline to 150 s.
    let (_, events) = h.advance(Duration::from_secs(40));
    assert!(events.is_empty(), "{events:?}");
    // No further refresh: at 150 s the session is over.
    let (_, events) = h.advance(Duration::from_secs(51));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, CallEventKind::SessionExpired);
    // The dialog stays until the registry lets it go (media stopped) or a BYE comes, so a
    // late BYE is still the caller's.
    assert_eq!(h.proxy.sizes().2, 1);
    let (_, events) = h.advance(Duration::from_secs(600));
    assert!(events.is_empty(), "expiry is reported once: {events:?}");
    h.proxy.forget_call("call-1@198.51.100.7");
    assert_eq!(h.proxy.sizes().2, 0, "the dialog is released");
}

#[test]
fn reliable_provisional_and_prack_pass_through_the_early_dialog() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    // RFC 3262: a reliable 183 with early media; RSeq and Require pass untouched.
    let reliable = response(
        &fwd,
        183,
        "Session Progress",
        Some("pbx1"),
        "Require: 100rel\r\nRSeq: 1\r\nContact: <sip:pbx@192.0.2.5>\r\n",
        SDP,
    );
    let (sends, _) = h.input(PBX, &reliable);
    assert_eq!(sends.len(), 1);
    assert!(
        sends[0].1.contains("Require: 100rel\r\nRSeq: 1\r\n"),
        "{}",
        sends[0].1
    );
    assert!(
        sends[0].1.ends_with("m=audio 30000 RTP/AVP 0\r\n"),
        "early media anchored"
    );
    let prack = "PRACK sip:pbx@192.0.2.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKprack1;rport\r\nRoute: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\n\
From: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\nTo: <sip:0295120000@192.0.2.10>;tag=pbx1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 2 PRACK\r\nRAck: 1 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (sends, events) = h.input(PHONE, prack);
    assert!(events.is_empty());
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, addr(PBX));
    assert!(sends[0]
        .1
        .starts_with("PRACK sip:pbx@192.0.2.5 SIP/2.0\r\n"));
    assert!(sends[0].1.contains("RAck: 1 1 INVITE\r\n"));
    let (sends, _) = h.input(PBX, &response(&sends[0].1, 200, "OK", None, "", ""));
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(sends[0].1.starts_with("SIP/2.0 200 OK\r\n") && sends[0].1.contains("CSeq: 2 PRACK"));
    // The call is then answered as usual.
    let (_, events) = h.input(
        PBX,
        &response(
            &fwd,
            200,
            "OK",
            Some("pbx1"),
            "Contact: <sip:pbx@192.0.2.5>\r\n",
            SDP,
        ),
    );
    assert_eq!(events[0].kind, CallEventKind::Answered);
}

#[test]
fn update_with_sdp_in_the_call_is_anchored_for_its_sender() {
    let mut h = Harness::new();
    answered_call(&mut h, "");
    let hold_sdp = SDP.replace(
        "m=audio 4000 RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n",
    );
    let update = in_dialog_from_caller("UPDATE", 3, "Content-Type: application/sdp\r\n").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{hold_sdp}", hold_sdp.len()),
    );
    let seen = h.anchor.seen.len();
    let (sends, events) = h.input(PHONE, &update);
    assert!(events.is_empty());
    assert_eq!(sends[0].0, addr(PBX));
    assert_eq!(h.anchor.seen.len(), seen + 1);
    assert_eq!(h.anchor.seen[seen].1, Party::Caller);
    assert!(String::from_utf8_lossy(&h.anchor.seen[seen].2).contains("a=sendonly"));
    let answer = SDP.replace(
        "m=audio 4000 RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n",
    );
    let (sends, _) = h.input(PBX, &response(&sends[0].1, 200, "OK", None, "", &answer));
    assert_eq!(sends[0].0, addr(PHONE));
    assert_eq!(
        h.anchor.seen[seen + 1].1,
        Party::Callee,
        "the answer is the callee's SDP"
    );
}

// ----- transports ---------------------------------------------------------------------------

fn tcp(s: &str) -> Peer {
    Peer::tcp(addr(s))
}

fn udp(s: &str) -> Peer {
    Peer::udp(addr(s))
}

/// `invite()` as a phone on TCP sends it: TCP Via and a Contact with transport=tcp.
fn tcp_invite() -> String {
    invite()
        .replace(
            "SIP/2.0/UDP 198.51.100.7:5060",
            "SIP/2.0/TCP 198.51.100.7:5060",
        )
        .replace(
            "<sip:0401234567@198.51.100.7:5060>",
            "<sip:0401234567@198.51.100.7:5060;transport=tcp>",
        )
}

fn headers(msg: &str, name: &str) -> Vec<String> {
    let (m, _) = Message::parse(msg.as_bytes()).unwrap();
    m.header_all(name).map(|v| v.to_string()).collect()
}

#[test]
fn phone_on_tcp_and_pbx_on_udp_get_one_record_route_each_and_their_own_transport() {
    let mut h = Harness::new();
    // The phone's connection comes from an ephemeral port.
    let phone = tcp("198.51.100.7:40123");
    let (sends, events) = h.input_on(phone, &tcp_invite());
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(sends[0].0, phone, "100 Trying goes back on the connection");
    assert_eq!(sends[1].0, udp(PBX));
    let fwd = sends[1].1.clone();
    assert!(
        fwd.contains("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-rp"),
        "{fwd}"
    );
    // RFC 5658: the entry facing the PBX on top, the one facing the phone below.
    assert_eq!(
        headers(&fwd, "Record-Route"),
        [
            "<sip:192.0.2.10:5060;lr>",
            "<sip:192.0.2.10:5070;transport=tcp;lr>"
        ]
    );
    assert!(matches!(&events[0].kind, CallEventKind::Invite(i) if !i.from_pbx));

    // UDP towards the PBX is retransmitted; nothing is ever retransmitted to the TCP phone.
    let (resent, _) = h.advance_peers(Duration::from_millis(500));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].0, udp(PBX));
    let busy = response(&fwd, 486, "Busy Here", Some("callee1"), "", "");
    let (sends, events) = h.input_on(udp(PBX), &busy);
    let to_phone: Vec<_> = sends.iter().filter(|(to, _)| *to == phone).collect();
    assert_eq!(to_phone.len(), 1, "{sends:?}");
    assert!(to_phone[0].1.starts_with("SIP/2.0 486 Busy Here\r\n"));
    assert!(to_phone[0].1.contains("Via: SIP/2.0/TCP 198.51.100.7:5060"));
    assert!(matches!(
        events[0].kind,
        CallEventKind::Failed { code: 486, .. }
    ));
    // No Timer G over TCP: the 486 is not repeated while the ACK is awaited.
    for _ in 0..8 {
        let (sends, _) = h.advance_peers(Duration::from_millis(500));
        assert!(sends.iter().all(|(to, _)| *to != phone), "{sends:?}");
    }
}

#[test]
fn the_pbx_reaches_a_tcp_phone_through_both_record_routes_over_tcp() {
    let mut h = Harness::new();
    let phone = tcp("198.51.100.7:40123");
    let (sends, _) = h.input_on(phone, &tcp_invite());
    let fwd = sends[1].1.clone();
    let ok = response(
        &fwd,
        200,
        "OK",
        Some("callee1"),
        "Contact: <sip:2000@192.0.2.5:5060>\r\n",
        SDP,
    );
    let (sends, events) = h.input_on(udp(PBX), &ok);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, phone);
    assert!(matches!(events[0].kind, CallEventKind::Answered));
    // The PBX hangs up: its route set is the Record-Route list as it got it.
    let bye = "BYE sip:0401234567@198.51.100.7:5060;transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKpbxbye\r\n\
Route: <sip:192.0.2.10:5060;lr>,<sip:192.0.2.10:5070;transport=tcp;lr>\r\n\
Max-Forwards: 70\r\nFrom: <sip:0295120000@192.0.2.10>;tag=callee1\r\n\
To: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let (sends, events) = h.input_on(udp(PBX), bye);
    assert_eq!(sends.len(), 1, "{sends:?}");
    // To the address in the Contact, over TCP (the driver finds the connection or opens one).
    assert_eq!(sends[0].0, tcp("198.51.100.7:5060"));
    assert!(sends[0]
        .1
        .contains("Via: SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bK-rp"));
    assert!(
        !sends[0].1.contains("Route:"),
        "both our entries are taken off"
    );
    assert!(matches!(
        events[0].kind,
        CallEventKind::Bye { by: Party::Callee }
    ));
    let (resent, _) = h.advance_peers(Duration::from_secs(4));
    assert!(resent.is_empty(), "no Timer E over TCP: {resent:?}");
}

/// An INVITE whose SDP pushes it over the 1300 bytes RFC 3261 §18.1.1 allows over UDP.
fn large_invite() -> String {
    let pad: String = (0..40)
        .map(|i| format!("a=x-pad-{i}:aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"))
        .collect();
    let body = format!("{SDP}{pad}");
    invite()
        .replace(
            &format!("Content-Length: {}\r\n\r\n{SDP}", SDP.len()),
            &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
        )
        .replace(
            "Content-Type: application/sdp",
            "Content-Type: application/x-not-sdp",
        )
}

#[test]
fn a_large_request_goes_over_tcp_and_back_to_udp_if_the_connection_fails() {
    let mut h = Harness::new();
    let invite = large_invite();
    assert!(invite.len() > UDP_REQUEST_LIMIT);
    let (sends, _) = h.input_on(udp(PHONE), &invite);
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(sends[1].0, tcp(PBX));
    assert!(sends[1]
        .1
        .contains("Via: SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bK-rp"));
    // The dialog's route stays UDP: the switch is for this message only.
    assert_eq!(
        headers(&sends[1].1, "Record-Route"),
        ["<sip:192.0.2.10:5060;lr>"]
    );
    let branch = top_branch(&sends[1].1);
    assert!(h.advance_peers(Duration::from_secs(1)).0.is_empty());
    // The PBX takes no TCP: the same request goes over UDP, same branch, and is retransmitted.
    h.proxy
        .handle_transport_error(h.now, tcp(PBX), &mut h.anchor);
    let (sends, events) = h.drain_peers();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, udp(PBX));
    assert!(sends[0]
        .1
        .contains("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-rp"));
    assert_eq!(top_branch(&sends[0].1), branch);
    assert!(events.is_empty());
    let (resent, _) = h.advance_peers(Duration::from_millis(500));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].0, udp(PBX));
    // The PBX answers over UDP and the caller gets it.
    let ringing = response(&sends[0].1, 180, "Ringing", Some("t1"), "", "");
    let (sends, _) = h.input_on(udp(PBX), &ringing);
    assert_eq!(sends[0].0, udp(PHONE));
}

#[test]
fn a_pbx_on_tcp_that_cannot_be_reached_gives_the_caller_503_at_once() {
    let mut h = Harness::with_pbx(tcp(PBX));
    let (sends, _) = h.input_on(udp(PHONE), &invite());
    assert_eq!(sends[1].0, tcp(PBX));
    assert!(sends[1].1.contains("Via: SIP/2.0/TCP 192.0.2.10:5070;"));
    assert_eq!(
        headers(&sends[1].1, "Record-Route"),
        [
            "<sip:192.0.2.10:5070;transport=tcp;lr>",
            "<sip:192.0.2.10:5060;lr>"
        ]
    );
    h.proxy
        .handle_transport_error(h.now, tcp(PBX), &mut h.anchor);
    let (sends, events) = h.drain_peers();
    let to_phone: Vec<_> = sends.iter().filter(|(to, _)| *to == udp(PHONE)).collect();
    assert_eq!(to_phone.len(), 1, "{sends:?}");
    assert!(to_phone[0]
        .1
        .starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    assert!(matches!(
        events[0].kind,
        CallEventKind::Failed { code: 503, .. }
    ));
}

#[test]
fn the_pbx_on_tcp_is_known_by_its_address_from_any_port() {
    let mut h = Harness::with_pbx(tcp(PBX));
    // An outbound call: the PBX's connection comes from an ephemeral port, and its INVITE is
    // routed by the Request-URI (over UDP: no transport parameter).
    let out = invite()
        .replace(
            "sip:0295120000@192.0.2.10 SIP/2.0",
            "sip:0401234567@198.51.100.7:5060 SIP/2.0",
        )
        .replace(
            "SIP/2.0/UDP 198.51.100.7:5060",
            "SIP/2.0/TCP 192.0.2.5:5060",
        );
    let (sends, events) = h.input_on(tcp("192.0.2.5:39999"), &out);
    assert_eq!(sends[1].0, udp(PHONE), "{sends:?}");
    assert!(matches!(&events[0].kind, CallEventKind::Invite(i) if i.from_pbx));
    // A phone on the PBX's host (another port in its Via) is a phone: its call goes to the PBX.
    let softphone = invite()
        .replace(
            "SIP/2.0/UDP 198.51.100.7:5060",
            "SIP/2.0/TCP 192.0.2.5:5062",
        )
        .replace("call-1@", "call-3@");
    let (sends, events) = h.input_on(tcp("192.0.2.5:40001"), &softphone);
    assert_eq!(sends[1].0, tcp(PBX), "{sends:?}");
    assert!(matches!(&events[0].kind, CallEventKind::Invite(i) if !i.from_pbx));
}

#[test]
fn uri_transports_are_read_and_unserved_ones_refused() {
    assert_eq!(
        uri_destination("sip:a@192.0.2.1").unwrap(),
        udp("192.0.2.1:5060")
    );
    assert_eq!(
        uri_destination("sip:a@192.0.2.1:5080;transport=TCP;lr").unwrap(),
        tcp("192.0.2.1:5080")
    );
    assert_eq!(
        uri_destination("sip:[2001:db8::1];transport=udp").unwrap(),
        udp("[2001:db8::1]:5060")
    );
    assert!(matches!(
        uri_destination("sip:a@192.0.2.1;transport=tls"),
        Err(RouteError::Transport(_))
    ));
    assert!(matches!(
        uri_destination("sips:a@192.0.2.1"),
        Err(RouteError::Transport(_))
    ));
}

#[test]
fn a_stream_without_content_length_gets_400() {
    let mut h = Harness::new();
    let text = invite().replace(&format!("Content-Length: {}\r\n", SDP.len()), "");
    let phone = tcp("198.51.100.7:40123");
    h.proxy
        .handle_framing_error(h.now, phone, text.as_bytes(), &"no Content-Length");
    let (sends, _) = h.drain_peers();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, phone);
    assert!(sends[0].1.starts_with("SIP/2.0 400 Bad Request\r\n"));
}

#[test]
fn a_tcp_peer_naming_its_listening_port_in_via_gets_an_alias_of_its_connection() {
    let mut h = Harness::new();
    h.proxy.handle_message(
        h.now,
        tcp("198.51.100.7:40123"),
        tcp_invite().as_bytes(),
        &mut h.anchor,
    );
    let mut aliases = Vec::new();
    while let Some(out) = h.proxy.poll_output() {
        if let Output::Alias { alias, conn } = out {
            aliases.push((alias, conn));
        }
    }
    assert_eq!(aliases, [(addr(PHONE), addr("198.51.100.7:40123"))]);
    // Another IP in the Via names nobody's connection.
    let spoof = tcp_invite()
        .replace(
            "SIP/2.0/TCP 198.51.100.7:5060",
            "SIP/2.0/TCP 203.0.113.9:5060",
        )
        .replace("call-1@", "call-2@");
    h.proxy.handle_message(
        h.now,
        tcp("198.51.100.7:40124"),
        spoof.as_bytes(),
        &mut h.anchor,
    );
    while let Some(out) = h.proxy.poll_output() {
        assert!(!matches!(out, Output::Alias { .. }), "{out:?}");
    }
}

// ----- next hops named by host names (RFC 3263) -----------------------------------------------

/// An outbound call from the PBX to a trunk named by a host name.
fn outbound_to(host: &str, call: &str) -> String {
    invite()
        .replace(
            "INVITE sip:0295120000@192.0.2.10 SIP/2.0",
            &format!("INVITE sip:0401234567@{host} SIP/2.0"),
        )
        .replace(
            "SIP/2.0/UDP 198.51.100.7:5060",
            "SIP/2.0/UDP 192.0.2.5:5060",
        )
        .replace("call-1@", &format!("{call}@"))
}

fn trunk_query() -> NameQuery {
    NameQuery {
        host: "trunk.example.net".into(),
        port: None,
        transport: None,
    }
}

#[test]
fn a_request_for_a_host_name_waits_for_dns_then_goes_to_the_first_target() {
    let mut h = Harness::new();
    let invite = outbound_to("Trunk.Example.NET.", "dns-1");
    let (sends, events) = h.input(PBX, &invite);
    // 100 Trying at once; the INVITE waits for the name.
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert!(sends[0].1.starts_with("SIP/2.0 100 Trying"));
    assert!(events.is_empty());
    assert_eq!(h.resolves, [trunk_query()]);
    // A retransmission is absorbed and asks nothing new.
    let (sends, _) = h.input(PBX, &invite);
    assert!(sends.is_empty(), "{sends:?}");
    assert_eq!(h.resolves.len(), 1);

    let trunk = udp("203.0.113.50:5070");
    h.proxy.handle_resolved(
        h.now,
        trunk_query(),
        Ok(Resolved {
            targets: vec![trunk, udp("203.0.113.51:5070")],
            valid_until: h.now + Duration::from_secs(300),
        }),
        &mut h.anchor,
    );
    let (sends, events) = h.drain_peers();
    let fwd: Vec<_> = sends.iter().filter(|(to, _)| *to == trunk).collect();
    assert_eq!(fwd.len(), 1, "{sends:?}");
    assert!(
        fwd[0].1.contains("Max-Forwards: 69\r\n"),
        "decremented once: {}",
        fwd[0].1
    );
    assert!(fwd[0]
        .1
        .starts_with("INVITE sip:0401234567@Trunk.Example.NET. SIP/2.0"));
    assert!(matches!(&events[0].kind, CallEventKind::Invite(i) if i.from_pbx));
    // Retransmitted by Timer A to the same target; absorbed retransmissions from the PBX now
    // get the last response.
    let (resent, _) = h.advance_peers(Duration::from_millis(500));
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].0, trunk);

    // The next call to the name uses the answer at once, until its TTL runs out.
    let (sends, _) = h.input_on(udp(PBX), &outbound_to("trunk.example.net", "dns-2"));
    assert_eq!(
        sends.iter().filter(|(to, _)| *to == trunk).count(),
        1,
        "{sends:?}"
    );
    assert_eq!(h.resolves.len(), 1);
    h.now += Duration::from_secs(301);
    let (sends, _) = h.input_on(udp(PBX), &outbound_to("trunk.example.net", "dns-3"));
    assert_eq!(sends.len(), 1, "only 100 Trying: {sends:?}");
    assert_eq!(h.resolves.len(), 2);
}

#[test]
fn a_name_that_does_not_resolve_gets_502_and_the_failure_is_remembered() {
    let mut h = Harness::new();
    h.input(PBX, &outbound_to("trunk.example.net", "dns-f1"));
    h.proxy
        .handle_resolved(h.now, trunk_query(), Err("NXDOMAIN".into()), &mut h.anchor);
    let (sends, events) = h.drain();
    // The waiting INVITE is handled again: a repeated 100 Trying, then the 502.
    let codes: Vec<&str> = sends.iter().map(|(_, m)| &m[8..11]).collect();
    assert_eq!(codes, ["100", "502"], "{sends:?}");
    assert!(sends.iter().all(|(to, _)| *to == addr(PBX)));
    assert!(events.is_empty());
    assert_eq!(h.proxy.sizes(), (0, 0, 0), "nothing kept of the call");
    // Within 30 s the next call fails at once, without a new lookup.
    h.now += Duration::from_secs(10);
    let (sends, _) = h.input(PBX, &outbound_to("trunk.example.net", "dns-f2"));
    assert!(
        sends.iter().any(|(_, m)| m.starts_with("SIP/2.0 502")),
        "{sends:?}"
    );
    assert_eq!(h.resolves.len(), 1);
}

#[test]
fn cancelling_an_invite_that_waits_for_dns_answers_both_here() {
    let mut h = Harness::new();
    let invite = outbound_to("trunk.example.net", "dns-c");
    h.input(PBX, &invite);
    let cancel = CANCEL
        .replace(
            "CANCEL sip:0295120000@192.0.2.10 SIP/2.0",
            "CANCEL sip:0401234567@trunk.example.net SIP/2.0",
        )
        .replace(
            "SIP/2.0/UDP 198.51.100.7:5060",
            "SIP/2.0/UDP 192.0.2.5:5060",
        )
        .replace("call-1@", "dns-c@");
    let (sends, events) = h.input(PBX, &cancel);
    let codes: Vec<&str> = sends.iter().map(|(_, m)| &m[8..11]).collect();
    assert_eq!(codes, ["200", "487"], "{sends:?}");
    assert!(events.is_empty());
    // The lookup that comes back later sends nothing.
    h.proxy.handle_resolved(
        h.now,
        trunk_query(),
        Ok(Resolved {
            targets: vec![udp("203.0.113.50:5060")],
            valid_until: h.now + Duration::from_secs(60),
        }),
        &mut h.anchor,
    );
    assert!(h.drain().0.is_empty());
}

#[test]
fn a_route_naming_the_proxy_by_host_name_is_taken_off() {
    let mut h = Harness::new();
    let q = NameQuery {
        host: "recproxy.example.net".into(),
        port: None,
        transport: None,
    };
    h.proxy.handle_resolved(
        h.now,
        q,
        Ok(Resolved {
            targets: vec![udp(US)],
            valid_until: h.now + Duration::from_secs(60),
        }),
        &mut h.anchor,
    );
    let with_route = invite().replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:recproxy.example.net;lr>\r\n",
    );
    let (sends, _) = h.input(PHONE, &with_route);
    assert_eq!(sends[1].0, addr(PBX), "{sends:?}");
    assert!(
        !sends[1].1.contains("Route: <sip:recproxy"),
        "{}",
        sends[1].1
    );
}

#[test]
fn uri_targets_tell_names_from_addresses() {
    assert_eq!(
        uri_target("sip:a@Trunk.example.NET:5080;transport=tcp").unwrap(),
        Target::Name(NameQuery {
            host: "trunk.example.net".into(),
            port: Some(5080),
            transport: Some(Transport::Tcp),
        })
    );
    assert_eq!(
        uri_target("sip:a@192.0.2.1;maddr=pbx.example.net").unwrap(),
        Target::Name(NameQuery {
            host: "pbx.example.net".into(),
            port: None,
            transport: None,
        })
    );
    assert!(matches!(
        uri_target("sip:a@bad_host!"),
        Err(RouteError::BadUri(_))
    ));
}

// ----- odd peers: equal tags, lost Vias, answers owed in the ACK ---------------------------

#[test]
fn equal_from_and_to_tags_are_told_apart_by_the_callers_address() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    // The PBX picked the caller's own tag for its side.
    h.input(PBX, &response(&fwd, 200, "OK", Some("from1"), "", SDP));
    let bye = "BYE sip:0401234567@198.51.100.7:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKpbxbye\r\nRoute: <sip:192.0.2.10:5060;lr>\r\n\
Max-Forwards: 70\r\nFrom: <sip:0295120000@192.0.2.10>;tag=from1\r\n\
To: \"Caller\" <sip:0401234567@198.51.100.7>;tag=from1\r\n\
Call-ID: call-1@198.51.100.7\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n";
    let (_, events) = h.input(PBX, bye);
    assert_eq!(events[0].kind, CallEventKind::Bye { by: Party::Callee });
}

#[test]
fn a_response_that_lost_the_upstream_vias_gets_them_back_from_the_request() {
    let mut h = Harness::new();
    let fwd = start_call(&mut h);
    // Built with only our Via (copied from our CANCEL, say).
    let ours = headers(&fwd, "Via")[0].clone();
    let lost = response(&fwd, 180, "Ringing", Some("t1"), "", "").replace(
        &format!("Via: {ours}\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport\r\n"),
        &format!("Via: {ours}\r\n"),
    );
    assert_eq!(headers(&lost, "Via").len(), 1);
    let (sends, _) = h.input(PBX, &lost);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, addr(PHONE));
    assert_eq!(
        headers(&sends[0].1, "Via"),
        ["SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc1;rport"]
    );
}

#[test]
fn an_ack_without_the_owed_answer_accepts_the_offer_in_the_2xx() {
    let mut h = Harness::new();
    answered_call(&mut h, "");
    // The caller re-INVITEs without SDP; the PBX offers in its 200; the ACK has no answer.
    let reinvite = in_dialog_from_caller("INVITE", 2, "");
    let (sends, _) = h.input(PHONE, &reinvite);
    let fwd = sends.last().unwrap().1.clone();
    let (_, events) = h.input(PBX, &response(&fwd, 200, "OK", Some("pbx1"), "", SDP));
    assert!(events.is_empty(), "{events:?}");
    let (_, events) = h.input(PHONE, &in_dialog_from_caller("ACK", 2, ""));
    assert_eq!(
        events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
        [CallEventKind::OfferAccepted { by: Party::Caller }]
    );
    // With the answer in the ACK nothing is made up.
    let (sends, _) = h.input(PHONE, &in_dialog_from_caller("INVITE", 3, ""));
    let fwd = sends.last().unwrap().1.clone();
    h.input(PBX, &response(&fwd, 200, "OK", Some("pbx1"), "", SDP));
    let ack = in_dialog_from_caller("ACK", 3, "Content-Type: application/sdp\r\n").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{SDP}", SDP.len()),
    );
    let (_, events) = h.input(PHONE, &ack);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn info_message_subscribe_and_notify_pass_through_with_their_bodies() {
    let mut h = Harness::new();
    answered_call(&mut h, "");
    // INFO in the call (SIP INFO DTMF, RFC 6086): routed by Route, body untouched, answered.
    let body = "Signal=5\r\nDuration=160\r\n";
    let info = in_dialog_from_caller("INFO", 3, "Content-Type: application/dtmf-relay\r\n")
        .replace(
            "Content-Length: 0\r\n\r\n",
            &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
        );
    let (sends, events) = h.input(PHONE, &info);
    assert!(events.is_empty());
    let fwd = sends
        .iter()
        .find(|(to, _)| *to == addr(PBX))
        .unwrap()
        .1
        .clone();
    assert!(fwd.starts_with("INFO sip:pbx@192.0.2.5 SIP/2.0\r\n"));
    assert!(fwd.ends_with(&format!("\r\n\r\n{body}")), "{fwd}");
    let (sends, _) = h.input(PBX, &response(&fwd, 200, "OK", Some("pbx1"), "", ""));
    assert_eq!(sends[0].0, addr(PHONE));

    // MESSAGE outside any dialog (RFC 3428): to the PBX, no Record-Route, body untouched.
    let text = "Ring me back, please";
    let message = format!(
        "MESSAGE sip:2000@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKmsg1\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@198.51.100.7>;tag=m1\r\nTo: <sip:2000@192.0.2.10>\r\n\
Call-ID: msg-1@198.51.100.7\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
Content-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let (sends, events) = h.input(PHONE, &message);
    assert!(events.is_empty());
    assert_eq!(sends.len(), 1, "no 100 Trying for a non-INVITE: {sends:?}");
    assert_eq!(sends[0].0, addr(PBX));
    assert!(headers(&sends[0].1, "Record-Route").is_empty());
    assert!(sends[0].1.ends_with(text));

    // SUBSCRIBE creates a dialog (RFC 6665): Record-Routed, so the PBX's NOTIFYs come back
    // through us and are routed to the subscriber by their Route and Request-URI.
    let subscribe = "SUBSCRIBE sip:2000@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKsub1\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@198.51.100.7>;tag=s1\r\nTo: <sip:2000@192.0.2.10>\r\n\
Call-ID: sub-1@198.51.100.7\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:0401234567@198.51.100.7:5060>\r\n\
Event: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    let (sends, _) = h.input(PHONE, subscribe);
    assert_eq!(sends[0].0, addr(PBX));
    assert_eq!(
        headers(&sends[0].1, "Record-Route"),
        ["<sip:192.0.2.10:5060;lr>"]
    );
    let notify = "NOTIFY sip:0401234567@198.51.100.7:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKnot1\r\n\
Route: <sip:192.0.2.10:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:2000@192.0.2.10>;tag=n1\r\n\
To: <sip:0401234567@198.51.100.7>;tag=s1\r\nCall-ID: sub-1@198.51.100.7\r\nCSeq: 1 NOTIFY\r\n\
Event: dialog\r\nSubscription-State: active;expires=600\r\nContent-Length: 0\r\n\r\n";
    let (sends, events) = h.input(PBX, notify);
    assert!(events.is_empty());
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, addr(PHONE));
    assert!(sends[0]
        .1
        .contains("Subscription-State: active;expires=600\r\n"));
    assert!(
        !sends[0].1.contains("Route:"),
        "our Route entry is taken off"
    );
}

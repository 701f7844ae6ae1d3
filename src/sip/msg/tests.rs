//! Tests of the message layer as a whole: the RFC 4475 / RFC 5118 torture table, byte-exact
//! editing, response building, and property tests (round trip, no panic on arbitrary or
//! mutated input).

use super::*;
use proptest::prelude::*;

/// What a torture file must give.
#[derive(Clone, Copy)]
enum Expect {
    /// Parses, validates, and prints byte-identical to the consumed input.
    Accept,
    /// Parses and validates; the request line is reprinted in canonical form (extra SP
    /// removed, RFC 4475 §3.1.2.9/§3.1.2.10), everything else byte-identical.
    AcceptCanonicalStart(&'static str),
    /// `Message::parse` fails with the matching error.
    Parse(fn(&ParseError) -> bool),
    /// Parses, but `validate` fails with the matching error.
    Reject(fn(&Invalid) -> bool),
}

use Expect::*;

macro_rules! torture {
    ($($dir:literal / $file:literal => $expect:expr,)*) => {
        &[$(($dir, $file, include_bytes!(concat!("../../../fixtures/torture/", $dir, "/", $file)) as &[u8], $expect),)*]
    };
}

#[allow(clippy::type_complexity)]
const TORTURE: &[(&str, &str, &[u8], Expect)] = torture! {
    "rfc4475" / "wsinv.dat" => Accept,
    "rfc4475" / "intmeth.dat" => Accept,
    "rfc4475" / "esc01.dat" => Accept,
    "rfc4475" / "escnull.dat" => Accept,
    "rfc4475" / "esc02.dat" => Accept,
    "rfc4475" / "lwsdisp.dat" => Accept,
    "rfc4475" / "longreq.dat" => Accept,
    "rfc4475" / "dblreq.dat" => Accept,
    "rfc4475" / "semiuri.dat" => Accept,
    "rfc4475" / "transports.dat" => Accept,
    "rfc4475" / "mpart01.dat" => Accept,
    "rfc4475" / "unreason.dat" => Accept,
    "rfc4475" / "noreason.dat" => Accept,
    "rfc4475" / "badinv01.dat" => Reject(|e| matches!(e, Invalid::BadHeader { header: "Via", .. })),
    "rfc4475" / "clerr.dat" => Parse(|e| matches!(e, ParseError::BodyTruncated { declared: 9999, .. })),
    "rfc4475" / "ncl.dat" => Parse(|e| matches!(e, ParseError::ContentLength)),
    "rfc4475" / "scalar02.dat" => Reject(|e| matches!(e, Invalid::Overlarge { header: "CSeq", .. })),
    "rfc4475" / "scalarlg.dat" => Reject(|e| matches!(e, Invalid::Overlarge { header: "CSeq", .. })),
    "rfc4475" / "quotbal.dat" => Reject(|e| matches!(e, Invalid::BadHeader { header: "To", .. })),
    "rfc4475" / "ltgtruri.dat" => Reject(|e| matches!(e, Invalid::RequestUri { reason: "enclosed in <>", .. })),
    "rfc4475" / "lwsruri.dat" => Reject(|e| matches!(e, Invalid::RequestUri { reason: "embedded whitespace", .. })),
    // "may reject": accepted, forwarded with the extra SP removed.
    "rfc4475" / "lwsstart.dat" => AcceptCanonicalStart("INVITE sip:user@example.com SIP/2.0"),
    "rfc4475" / "trws.dat" => AcceptCanonicalStart("OPTIONS sip:remote-target@example.com SIP/2.0"),
    // "may reject": refused, so escaped headers are never forwarded in a Request-URI.
    "rfc4475" / "escruri.dat" => Reject(|e| matches!(e, Invalid::RequestUri { reason: "contains URI headers", .. })),
    // "may reject (only if Date matters)": Date does not matter to this proxy.
    "rfc4475" / "baddate.dat" => Accept,
    "rfc4475" / "regbadct.dat" => Reject(|e| matches!(e, Invalid::BadHeader { header: "Contact", .. })),
    // "must not crash; may reject": spaces inside <> are tolerated.
    "rfc4475" / "badaspec.dat" => Accept,
    "rfc4475" / "baddn.dat" => Reject(|e| matches!(e, Invalid::BadHeader { header: "From", .. })),
    "rfc4475" / "badvers.dat" => Reject(|e| matches!(e, Invalid::Version(v) if v == "SIP/7.0")),
    "rfc4475" / "mismatch01.dat" => Reject(|e| matches!(e, Invalid::CSeqMismatch { .. })),
    "rfc4475" / "mismatch02.dat" => Reject(|e| matches!(e, Invalid::CSeqMismatch { .. })),
    "rfc4475" / "bigcode.dat" => Parse(|e| matches!(e, ParseError::StatusCode)),
    "rfc4475" / "badbranch.dat" => Accept,
    "rfc4475" / "insuf.dat" => Reject(|e| matches!(e, Invalid::MissingHeader("From"))),
    // Well-formed; routing answers 416 for an unknown scheme.
    "rfc4475" / "unkscm.dat" => Accept,
    "rfc4475" / "novelsc.dat" => Accept,
    "rfc4475" / "unksm2.dat" => Accept,
    // Well-formed; 420/415 are for the UAS.
    "rfc4475" / "bext01.dat" => Accept,
    "rfc4475" / "invut.dat" => Accept,
    "rfc4475" / "regaut01.dat" => Accept,
    "rfc4475" / "multi01.dat" => Reject(|e| matches!(e, Invalid::MultipleValues("Call-ID"))),
    "rfc4475" / "mcl01.dat" => Reject(|e| matches!(e, Invalid::MultipleValues("Content-Length"))),
    "rfc4475" / "bcast.dat" => Accept,
    "rfc4475" / "zeromf.dat" => Accept,
    "rfc4475" / "cparam01.dat" => Accept,
    "rfc4475" / "cparam02.dat" => Accept,
    "rfc4475" / "regescrt.dat" => Accept,
    "rfc4475" / "sdp01.dat" => Accept,
    "rfc4475" / "inv2543.dat" => Accept,
    "rfc5118" / "ipv6-good.dat" => Accept,
    "rfc5118" / "ipv6-bad.dat" => Reject(|e| matches!(e, Invalid::RequestUri { .. })),
    "rfc5118" / "port-ambiguous.dat" => Accept,
    "rfc5118" / "port-unambiguous.dat" => Accept,
    "rfc5118" / "via-received-param-with-delim.dat" => Accept,
    "rfc5118" / "via-received-param-no-delim.dat" => Accept,
    "rfc5118" / "ipv6-in-sdp.dat" => Accept,
    "rfc5118" / "mult-ip-in-header.dat" => Accept,
    "rfc5118" / "mult-ip-in-sdp.dat" => Accept,
    "rfc5118" / "ipv4-mapped-ipv6.dat" => Accept,
    "rfc5118" / "ipv6-bug-abnf-3-colons.dat" => Reject(|e| matches!(e, Invalid::RequestUri { .. })),
    "rfc5118" / "ipv6-correct-abnf-2-colons.dat" => Accept,
};

const EXPECTED_TSV: &str = include_str!("../../../fixtures/torture/EXPECTED.tsv");

fn parse_ok(bytes: &[u8]) -> (Message, usize) {
    match Message::parse(bytes) {
        Ok(ok) => ok,
        Err(e) => panic!("parse failed: {e}"),
    }
}

#[test]
fn torture_files_behave_as_listed() {
    for (dir, file, bytes, expect) in TORTURE {
        let name = format!("{dir}/{file}");
        let result = Message::parse(bytes);
        match (expect, result) {
            (Accept, Ok((msg, consumed))) => {
                assert_eq!(msg.validate(), Ok(()), "{name}");
                assert_eq!(msg.to_bytes(), &bytes[..consumed], "{name} reprint");
                assert!(msg.can_reply(), "{name}");
            }
            (AcceptCanonicalStart(line), Ok((msg, consumed))) => {
                assert_eq!(msg.validate(), Ok(()), "{name}");
                let out = msg.to_bytes();
                let nl = bytes.iter().position(|&b| b == b'\n').expect("line");
                let mut expected = line.as_bytes().to_vec();
                expected.extend_from_slice(&bytes[nl - 1..consumed]);
                assert_eq!(out, expected, "{name} reprint");
            }
            (Parse(check), Err(e)) => assert!(check(&e), "{name}: unexpected error {e:?}"),
            (Reject(check), Ok((msg, _))) => match msg.validate() {
                Err(e) => {
                    assert!(check(&e), "{name}: unexpected invalid {e:?}");
                    // The headers needed for a 400/505 are still readable.
                    assert!(
                        msg.can_reply() || matches!(e, Invalid::MissingHeader(_)),
                        "{name}"
                    );
                }
                Ok(()) => panic!("{name}: validated but should be rejected"),
            },
            (_, Ok(_)) => panic!("{name}: parsed but should fail to parse"),
            (_, Err(e)) => panic!("{name}: parse failed: {e:?}"),
        }
    }
}

#[test]
fn torture_table_covers_expected_tsv_consistently() {
    let mut listed = 0;
    for line in EXPECTED_TSV
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (path, class) = (cols[0], cols[3]);
        let entry = TORTURE
            .iter()
            .find(|(dir, file, _, _)| format!("{dir}/{file}") == path)
            .unwrap_or_else(|| panic!("{path} missing from the table"));
        let accepted = matches!(entry.3, Accept | AcceptCanonicalStart(_));
        match class {
            "valid" | "valid-syntax" => assert!(accepted, "{path} is {class}"),
            "invalid" => {
                let may = ["lwsstart", "trws", "baddate", "badaspec", "escruri"];
                assert!(
                    !accepted || may.iter().any(|m| path.contains(m)),
                    "{path} is invalid"
                );
            }
            "semantic-reject" => {
                let must = ["insuf", "multi01", "mcl01"];
                if must.iter().any(|m| path.contains(m)) {
                    assert!(matches!(entry.3, Reject(_)), "{path}");
                }
            }
            other => panic!("unknown class {other}"),
        }
        listed += 1;
    }
    assert_eq!(listed, TORTURE.len());
}

fn torture(name: &str) -> &'static [u8] {
    TORTURE
        .iter()
        .find(|(_, file, _, _)| *file == name)
        .map(|t| t.2)
        .expect("file in table")
}

#[test]
fn tortuous_invite_decodes() {
    let (msg, consumed) = parse_ok(torture("wsinv.dat"));
    assert_eq!(consumed, 1001);
    assert_eq!(msg.method(), Some("INVITE"));
    assert_eq!(
        msg.request_uri(),
        Some("sip:vivekg@chair-dnrc.example.com;unknownparam")
    );
    assert_eq!(msg.to_tag(), Some("1918181833n"));
    assert_eq!(msg.from_tag(), Some("98asjd8"));
    assert_eq!(msg.max_forwards(), Some(68));
    assert_eq!(msg.cseq(), Some((9, "INVITE")));
    assert_eq!(msg.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(msg.header("s"), Some(""));
    assert_eq!(msg.header("Subject"), Some(""));
    assert_eq!(
        msg.header("newfangledheader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(msg.values("via").len(), 3);
    let via = msg.top_via().expect("via");
    assert_eq!(
        (via.transport.as_str(), via.host.as_str()),
        ("UDP", "192.0.2.2")
    );
    assert_eq!(via.branch.as_deref(), Some("390skdjuw"));
    let vias: Vec<Via> = msg
        .values("v")
        .iter()
        .map(|v| parse_via(v).expect("via"))
        .collect();
    assert_eq!(vias[2].host, "192.168.255.111");
    assert_eq!(vias[2].branch.as_deref(), Some("z9hG4bK30239"));
    let contact = parse_name_addr(msg.values("contact")[0]).expect("contact");
    assert_eq!(contact.display.as_deref(), Some(r#"Quoted string """#));
    assert_eq!(contact.param("q"), Some(Some("0.33")));
    let route = parse_name_addr(msg.header("route").expect("route")).expect("route");
    assert!(parse_uri(&route.uri).expect("uri").has_lr());
    assert_eq!(msg.body().len(), 150);
    let header = &msg.headers()[0];
    assert_eq!(header.name(), "to");
    assert_eq!(
        header.raw(),
        b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"
    );
}

#[test]
fn extra_datagram_octets_are_not_consumed() {
    let bytes = torture("dblreq.dat");
    let (msg, consumed) = parse_ok(bytes);
    assert_eq!(msg.method(), Some("REGISTER"));
    assert_eq!(
        msg.call_id(),
        Some("dblreq.0ha0isndaksdj99sdfafnl3lk233412")
    );
    assert!(bytes[consumed..].starts_with(b"\r\nINVITE sip:joe@example.com"));
}

#[test]
fn message_without_content_length_takes_rest_of_datagram() {
    let bytes = torture("inv2543.dat");
    let (msg, consumed) = parse_ok(bytes);
    assert_eq!(consumed, bytes.len());
    assert!(msg.body().starts_with(b"v=0\r\n"));
    assert_eq!(msg.from_tag(), None);
    assert_eq!(msg.max_forwards(), None);
    assert!(matches!(
        Message::parse_stream(bytes),
        Err(ParseError::MissingContentLength)
    ));
}

#[test]
fn stream_framing_reports_incomplete() {
    let bytes = torture("unreason.dat");
    let (_, consumed) = parse_ok(bytes);
    assert_eq!(consumed, bytes.len());
    assert!(matches!(
        Message::parse_stream(&bytes[..100]),
        Err(ParseError::Incomplete)
    ));
    assert!(matches!(
        Message::parse_stream(&bytes[..bytes.len() - 1]),
        Err(ParseError::BodyTruncated {
            declared: 154,
            available: 153
        })
    ));
    let mut two = bytes.to_vec();
    two.extend_from_slice(bytes);
    let (_, first) = Message::parse_stream(&two).expect("first");
    assert_eq!(first, bytes.len());
    let (second, n) = Message::parse_stream(&two[first..]).expect("second");
    assert_eq!(n, bytes.len());
    assert_eq!(second.status(), Some(200));
}

#[test]
fn responses_and_odd_start_lines() {
    let (msg, _) = parse_ok(torture("noreason.dat"));
    assert_eq!(msg.status(), Some(100));
    assert!(!msg.is_request());
    assert_eq!(msg.method(), None);
    assert!(matches!(msg.start_line(), StartLine::Response { reason, .. } if reason.is_empty()));
    let (msg, _) = parse_ok(torture("intmeth.dat"));
    assert_eq!(
        msg.method(),
        Some("!interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(msg.cseq().map(|c| c.0), Some(139122385));
    for bad in [
        &b"SIP/2.0 99 Low\r\n\r\n"[..],
        b"SIP/2.0 700 High\r\n\r\n",
        b"SIP/2.0 20 x\r\n\r\n",
        b"SIP/2.0 2000 x\r\n\r\n",
    ] {
        assert!(matches!(Message::parse(bad), Err(ParseError::StatusCode)));
    }
    for bad in [
        &b"INVITE\r\n\r\n"[..],
        b"INVITE SIP/2.0\r\n\r\n",
        b"INV<ITE sip:a SIP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(Message::parse(bad), Err(ParseError::StartLine(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Message::parse(b"\r\n\r\n"),
        Err(ParseError::Empty)
    ));
    let mut many = b"OPTIONS sip:a SIP/2.0\r\n".to_vec();
    many.extend(b"a:b\n".repeat(1025));
    many.extend_from_slice(b"\n");
    assert!(matches!(
        Message::parse(&many),
        Err(ParseError::TooManyHeaders(1024))
    ));
    assert!(matches!(
        Message::parse(b"OPTIONS sip:a SIP/2.0\r\n bad\r\n\r\n"),
        Err(ParseError::ContinuationWithoutHeader)
    ));
    assert!(matches!(
        Message::parse(b"OPTIONS sip:a SIP/2.0\r\nNoColon\r\n\r\n"),
        Err(ParseError::MissingColon { line: 2 })
    ));
    assert!(matches!(
        Message::parse(b"OPTIONS sip:a SIP/2.0\r\nBad Name: x\r\n\r\n"),
        Err(ParseError::HeaderName { line: 2 })
    ));
}

#[test]
fn bare_lf_messages_parse_and_print_identically() {
    let text = b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nTo: <sip:a@b>\nFrom: <sip:c@d>;tag=1\nCall-ID: x\nCSeq: 1 OPTIONS\n  \n\nbody";
    let (mut msg, consumed) = parse_ok(text);
    assert_eq!(consumed, text.len());
    assert_eq!(msg.header("cseq"), Some("1 OPTIONS"));
    assert_eq!(msg.body(), b"body");
    assert_eq!(msg.validate(), Ok(()));
    assert_eq!(msg.to_bytes(), &text[4..]);
    // New lines follow the message's line-ending style.
    msg.push_header_top("Via", "SIP/2.0/UDP p;branch=z9hG4bK2");
    assert!(msg
        .to_bytes()
        .starts_with(b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP p;branch=z9hG4bK2\nVia:"));
}

const EDIT_ME: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rp1 ,\r\n SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc;rport=5061\r\n\
v:  SIP/2.0/TCP  other.example.com;branch=z9hG4bKx\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
f: \"Alice\" <sip:alice@example.com>;tag=a1\r\n\
i: abc@host\r\n\
CSeq: 1 INVITE\r\n\
X-Weird  :   keep   me \r\n folded\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
abcd";

#[test]
fn push_via_and_record_route_keep_everything_else() {
    let (mut msg, _) = parse_ok(EDIT_ME);
    msg.push_header_top("Via", "SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK-rp2");
    msg.push_header_top("Record-Route", "<sip:203.0.113.1;lr>");
    let expected = [
        &b"INVITE sip:bob@example.com SIP/2.0\r\n"[..],
        b"Record-Route: <sip:203.0.113.1;lr>\r\n",
        b"Via: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK-rp2\r\n",
        &EDIT_ME[36..],
    ]
    .concat();
    assert_eq!(msg.to_bytes(), expected);
    // A second Record-Route goes above the first.
    msg.push_header_top("record-route", "<sip:p2;lr>");
    assert!(msg.to_bytes().starts_with(
        b"INVITE sip:bob@example.com SIP/2.0\r\nrecord-route: <sip:p2;lr>\r\nRecord-Route:"
    ));
    assert_eq!(msg.top_via().expect("via").host, "203.0.113.1");
    assert_eq!(
        msg.values("Record-Route"),
        vec!["<sip:p2;lr>", "<sip:203.0.113.1;lr>"]
    );
}

#[test]
fn popping_our_via_from_a_shared_line() {
    let (mut msg, _) = parse_ok(EDIT_ME);
    assert_eq!(
        msg.remove_first_value("Via").as_deref(),
        Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rp1")
    );
    let expected = [
        &b"INVITE sip:bob@example.com SIP/2.0\r\n"[..],
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc;rport=5061\r\n",
        &EDIT_ME[EDIT_ME.windows(3).position(|w| w == b"v: ").expect("v")..],
    ]
    .concat();
    assert_eq!(msg.to_bytes(), expected);
    let via = msg.top_via().expect("via");
    assert_eq!(via.rport, Some(Some(5061)));
    // Second pop removes the (now single-element) line; compact `v` is next.
    assert!(msg.remove_first_value("v").is_some());
    assert_eq!(
        msg.values("via"),
        vec!["SIP/2.0/TCP  other.example.com;branch=z9hG4bKx"]
    );
    assert!(msg.remove_first_value("via").is_some());
    assert!(msg.remove_first_value("via").is_none());
    assert_eq!(msg.top_via(), None);
}

#[test]
fn set_body_rewrites_content_length_only() {
    let (mut msg, _) = parse_ok(EDIT_ME);
    msg.set_body(b"v=0\r\n".to_vec());
    let mut expected = EDIT_ME.to_vec();
    let at = expected
        .windows(6)
        .position(|w| w == b"l: 4\r\n")
        .expect("l");
    expected.splice(at..at + 6, b"l: 5\r\n".iter().copied());
    expected.truncate(expected.len() - 4);
    expected.extend_from_slice(b"v=0\r\n");
    assert_eq!(msg.to_bytes(), expected);
    let (again, _) = parse_ok(&expected);
    assert_eq!(again.body(), b"v=0\r\n");

    // Without a Content-Length line one is appended.
    let (mut msg, _) = parse_ok(torture("inv2543.dat"));
    msg.set_body(Vec::new());
    assert!(msg
        .to_bytes()
        .ends_with(b"Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"));
}

#[test]
fn set_header_remove_header_and_request_uri() {
    let (mut msg, _) = parse_ok(EDIT_ME);
    msg.set_header("max-forwards", "69");
    msg.set_header("X-Agent-ID", "2001");
    msg.remove_header("x-weird");
    msg.set_request_uri("sip:bob@192.0.2.9:5070");
    let text = String::from_utf8(msg.to_bytes()).expect("utf8");
    assert!(text.starts_with("INVITE sip:bob@192.0.2.9:5070 SIP/2.0\r\n"));
    assert!(text.contains("\r\nMax-Forwards: 69\r\nTo: Bob"));
    assert!(!text.contains("X-Weird"));
    assert!(text.ends_with("l: 4\r\nX-Agent-ID: 2001\r\n\r\nabcd"));
    assert_eq!(msg.max_forwards(), Some(69));
    assert_eq!(msg.header("x-agent-id"), Some("2001"));
    assert_eq!(msg.request_uri(), Some("sip:bob@192.0.2.9:5070"));
}

#[test]
fn response_copies_identifying_headers() {
    let (req, _) = parse_ok(EDIT_ME);
    let resp = make_response(&req, 400, "Bad Request", Some("rp-1"));
    let expected = b"SIP/2.0 400 Bad Request\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rp1 ,\r\n SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc;rport=5061\r\n\
v:  SIP/2.0/TCP  other.example.com;branch=z9hG4bKx\r\n\
To: Bob <sip:bob@example.com>;tag=rp-1\r\n\
f: \"Alice\" <sip:alice@example.com>;tag=a1\r\n\
i: abc@host\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\
\r\n";
    assert_eq!(
        String::from_utf8_lossy(&resp.to_bytes()),
        String::from_utf8_lossy(expected)
    );
    assert_eq!(resp.to_tag(), Some("rp-1"));
    assert_eq!(resp.validate(), Ok(()));

    // An existing To tag is kept; response_to adds none.
    let (bye, _) = parse_ok(torture("via-received-param-with-delim.dat"));
    let resp = make_response(&bye, 200, "OK", Some("other"));
    assert_eq!(resp.to_tag(), Some("bd76ya"));
    let resp = Message::response_to(&req, 100, "Trying");
    assert_eq!(resp.status(), Some(100));
    assert_eq!(resp.to_tag(), None);
    let (parsed, _) = parse_ok(&resp.to_bytes());
    assert_eq!(parsed, resp);

    // 505 from a request with a foreign version still carries what routing needs.
    let (bad, _) = parse_ok(torture("badvers.dat"));
    let resp = make_response(&bad, 505, "Version Not Supported", Some("t"));
    assert_eq!(resp.top_via().expect("via").host, "c.example.com");
    assert_eq!(resp.call_id(), Some("badvers.31417@c.example.com"));
}

#[test]
fn header_lookup_accepts_compact_and_full_names() {
    let (msg, _) = parse_ok(torture("esc01.dat"));
    assert_eq!(msg.header("Call-ID"), msg.header("i"));
    assert_eq!(msg.header("content-type"), Some("application/sdp"));
    assert_eq!(msg.header("C"), Some("application/sdp"));
    let all: Vec<&str> = msg.header_all("CONTACT").collect();
    assert_eq!(all.len(), 1);
    let (msg, _) = parse_ok(torture("esc02.dat"));
    // "C%6Fntact" is not Contact.
    assert_eq!(msg.values("m").len(), 2);
    assert_eq!(
        msg.header("c%6fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

#[test]
fn validate_edge_cases() {
    let base = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@example.com>\r\nFrom: <sip:c@example.com>;tag=1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n";
    let check = |extra: &str| {
        let text = format!("{base}{extra}Content-Length: 0\r\n\r\n");
        parse_ok(text.as_bytes()).0.validate()
    };
    assert_eq!(check(""), Ok(()));
    assert_eq!(
        check("Max-Forwards: 255\r\nExpires: 4294967295\r\n"),
        Ok(())
    );
    assert!(matches!(
        check("Max-Forwards: 256\r\n"),
        Err(Invalid::Overlarge {
            header: "Max-Forwards",
            ..
        })
    ));
    assert!(matches!(
        check("Max-Forwards: -1\r\n"),
        Err(Invalid::BadNumber {
            header: "Max-Forwards",
            ..
        })
    ));
    assert!(matches!(
        check("Expires: 4294967296\r\n"),
        Err(Invalid::Overlarge {
            header: "Expires",
            ..
        })
    ));
    assert_eq!(check("Expires: Thu, 01 Dec 1994 16:00:00 GMT\r\n"), Ok(()));
    assert!(matches!(
        check("Via: SIP/2.0/UDP x;branch=z9hG4bK2,,\r\n"),
        Err(Invalid::EmptyElement("Via"))
    ));
    assert!(matches!(check("Route: <sip:p;lr>, sip:q;lr\r\n"), Ok(())));
    assert!(matches!(
        check("Route: junk\r\n"),
        Err(Invalid::BadHeader {
            header: "Route",
            ..
        })
    ));
    assert_eq!(check("Contact: *\r\n"), Ok(()));
    assert!(matches!(
        check("Contact: <sip:a@[1:::2]>\r\n"),
        Err(Invalid::BadHeader {
            header: "Contact",
            ..
        })
    ));
    assert!(matches!(
        check("Call-ID: y\r\n"),
        Err(Invalid::MultipleValues("Call-ID"))
    ));
    let bad_cseq = base.replace("CSeq: 1 OPTIONS", "CSeq: 2147483648 OPTIONS");
    let (msg, _) = parse_ok(format!("{bad_cseq}\r\n").as_bytes());
    assert!(matches!(
        msg.validate(),
        Err(Invalid::Overlarge { header: "CSeq", .. })
    ));
    let ok_cseq = base.replace("CSeq: 1 OPTIONS", "CSeq: 2147483647 OPTIONS");
    assert_eq!(
        parse_ok(format!("{ok_cseq}\r\n").as_bytes()).0.validate(),
        Ok(())
    );
    let tel = base.replace("OPTIONS sip:a@example.com", "OPTIONS tel:+358401234567");
    assert_eq!(
        parse_ok(format!("{tel}\r\n").as_bytes()).0.validate(),
        Ok(())
    );
}

// ----- property tests --------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!%*_+`'~.-]{1,12}"
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Via".to_string()),
        Just("v".to_string()),
        Just("i".to_string()),
        Just("Call-ID".to_string()),
        Just("f".to_string()),
        Just("To".to_string()),
        Just("Record-Route".to_string()),
        Just("CSeq".to_string()),
        Just("m".to_string()),
        Just("Subject".to_string()),
        token().prop_filter("not Content-Length", |t| {
            !t.eq_ignore_ascii_case("content-length") && !t.eq_ignore_ascii_case("l")
        }),
    ]
}

/// One header line: name, optional space before the colon, value, optional folded part.
fn header_line() -> impl Strategy<Value = String> {
    (
        header_name(),
        prop_oneof![Just(""), Just(" "), Just("\t")],
        "[ ]{0,2}",
        "[A-Za-z0-9 ;=<>@:.,\"/_+-]{0,30}",
        proptest::option::of("[A-Za-z0-9;=<>@:.,/_+-]{1,20}"),
    )
        .prop_map(|(name, before, after, value, fold)| {
            let mut line = format!("{name}{before}:{after}{value}");
            if let Some(f) = fold {
                line.push_str("\r\n ");
                line.push_str(&f);
            }
            line.push_str("\r\n");
            line
        })
}

fn start_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (token(), "[a-z0-9]{1,8}", "[a-z0-9.]{1,12}")
            .prop_map(|(m, u, h)| format!("{m} sip:{u}@{h} SIP/2.0\r\n")),
        (100u16..700, "[A-Za-z ]{0,15}").prop_map(|(c, r)| format!("SIP/2.0 {c} {r}\r\n")),
    ]
}

fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        start_line(),
        proptest::collection::vec(header_line(), 0..12),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        any::<bool>(),
        0usize..13,
    )
        .prop_map(|(start, headers, body, compact_cl, cl_at)| {
            let mut out = start.into_bytes();
            let cl_at = cl_at.min(headers.len());
            for (i, h) in headers.iter().enumerate() {
                if i == cl_at {
                    push_cl(&mut out, body.as_deref(), compact_cl);
                }
                out.extend_from_slice(h.as_bytes());
            }
            if cl_at == headers.len() {
                push_cl(&mut out, body.as_deref(), compact_cl);
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body.as_deref().unwrap_or_default());
            out
        })
}

/// With a body, a Content-Length line (full or compact); without, none (datagram semantics).
fn push_cl(out: &mut Vec<u8>, body: Option<&[u8]>, compact: bool) {
    if let Some(b) = body {
        let name = if compact { "l" } else { "Content-Length" };
        out.extend_from_slice(format!("{name}: {}\r\n", b.len()).as_bytes());
    }
}

/// If `bytes` parse, the printed message parses again to the same message and bytes.
fn assert_reprint_stable(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((msg, consumed)) = Message::parse(bytes) {
        prop_assert!(consumed <= bytes.len());
        let _ = msg.validate();
        let _ = (
            msg.top_via(),
            msg.cseq(),
            msg.from_tag(),
            msg.to_tag(),
            msg.max_forwards(),
        );
        for name in ["via", "contact", "route", "record-route", "from", "to"] {
            for v in msg.values(name) {
                let _ = (parse_name_addr(v), parse_via(v), parse_uri(v));
            }
        }
        let printed = msg.to_bytes();
        let (again, n) = match Message::parse(&printed) {
            Ok(ok) => ok,
            Err(e) => return Err(TestCaseError::fail(format!("reparse failed: {e}"))),
        };
        prop_assert_eq!(n, printed.len());
        prop_assert_eq!(again.to_bytes(), printed);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_round_trip_byte_exact(bytes in message_bytes()) {
        let (msg, consumed) = match Message::parse(&bytes) {
            Ok(ok) => ok,
            Err(e) => return Err(TestCaseError::fail(format!("parse failed: {e}: {:?}", String::from_utf8_lossy(&bytes)))),
        };
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(msg.to_bytes(), bytes.clone());
        let (again, _) = Message::parse(&msg.to_bytes()).expect("reparse");
        prop_assert_eq!(again, msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        assert_reprint_stable(&bytes)?;
    }

    #[test]
    fn sip_shaped_noise_never_panics(
        start in start_line(),
        lines in proptest::collection::vec("[ -~\t]{0,40}(\r\n|\n)", 0..10),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = start.into_bytes();
        for l in &lines {
            bytes.extend_from_slice(l.as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&tail);
        assert_reprint_stable(&bytes)?;
    }

    #[test]
    fn mutated_torture_files_never_panic(
        index in 0..TORTURE.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let mut bytes = TORTURE[index].2.to_vec();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
        }
        assert_reprint_stable(&bytes)?;
    }
}

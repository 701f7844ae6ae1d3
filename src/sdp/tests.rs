//! Tests for `sdp`: the real bodies under `fixtures/sdp/` (parse, concrete fields, byte-exact
//! round trip), rewrites compared with exact expected bytes, parse errors, and property tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const IPV6_IN_SDP: &[u8] = include_bytes!("../../fixtures/sdp/rfc5118_ipv6-in-sdp.sdp");
const MULT_IP: &[u8] = include_bytes!("../../fixtures/sdp/rfc5118_mult-ip-in-sdp.sdp");
const OPUS: &[u8] = include_bytes!("../../fixtures/sdp/sipnab_invite-opus-bye_invite_opus.sdp");
const SRTP_200: &[u8] = include_bytes!("../../fixtures/sdp/voipshark_srtp_200ok_savp_crypto.sdp");
const SRTP_INVITE: &[u8] =
    include_bytes!("../../fixtures/sdp/voipshark_srtp_invite_savp_crypto_opus.sdp");
const WEBRTC_08: &[u8] = include_bytes!("../../fixtures/sdp/webrtc-sdp_08.sdp");
const WEBRTC_09: &[u8] = include_bytes!("../../fixtures/sdp/webrtc-sdp_09.sdp");
const WEBRTC_11: &[u8] = include_bytes!("../../fixtures/sdp/webrtc-sdp_11.sdp");
const WEBRTC_12: &[u8] = include_bytes!("../../fixtures/sdp/webrtc-sdp_12.sdp");
const WEBRTC_41: &[u8] = include_bytes!("../../fixtures/sdp/webrtc-sdp_41.sdp");
const DTMF_AV: &[u8] =
    include_bytes!("../../fixtures/sdp/wireshark_DTMFsipinfo_invite_audio+video.sdp");
const G711_SENDONLY: &[u8] =
    include_bytes!("../../fixtures/sdp/wireshark_sip-rtp-g711_200ok_sendonly_telephone-event.sdp");
const G711_RECVONLY: &[u8] =
    include_bytes!("../../fixtures/sdp/wireshark_sip-rtp-g711_invite_recvonly.sdp");

/// Every fixture that parses (08 and 11 only after their `;` comment header is removed).
fn parsable_fixtures() -> Vec<Vec<u8>> {
    vec![
        IPV6_IN_SDP.to_vec(),
        MULT_IP.to_vec(),
        OPUS.to_vec(),
        SRTP_200.to_vec(),
        SRTP_INVITE.to_vec(),
        strip_comments(WEBRTC_08),
        WEBRTC_09.to_vec(),
        strip_comments(WEBRTC_11),
        WEBRTC_12.to_vec(),
        WEBRTC_41.to_vec(),
        DTMF_AV.to_vec(),
        G711_SENDONLY.to_vec(),
        G711_RECVONLY.to_vec(),
    ]
}

/// The webrtc-sdp examples 08 and 11 open with `;` comment lines that are not SDP.
fn strip_comments(body: &[u8]) -> Vec<u8> {
    body.split_inclusive(|&b| b == b'\n')
        .filter(|l| l.first() != Some(&b';'))
        .flatten()
        .copied()
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

fn parse_ok(body: &[u8]) -> Sdp {
    match Sdp::parse(body) {
        Ok(s) => s,
        Err(e) => panic!("parse failed: {e}: {}", String::from_utf8_lossy(body)),
    }
}

fn text(sdp: &Sdp) -> String {
    String::from_utf8_lossy(&sdp.to_bytes()).into_owned()
}

fn rtpmap(pt: u8, enc: &str, rate: u32, ch: Option<u8>) -> RtpMap {
    RtpMap {
        payload_type: pt,
        encoding: enc.to_owned(),
        clock_rate: rate,
        channels: ch,
    }
}

// ---------------------------------------------------------------- fixtures

#[test]
fn every_parsable_fixture_prints_back_byte_identical() {
    for body in parsable_fixtures() {
        let sdp = parse_ok(&body);
        assert_eq!(sdp.to_bytes(), body, "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn webrtc_examples_with_comment_headers_are_rejected() {
    // Their first line is `;`: no `<type>=` form, and `v=` is not first.
    assert_eq!(Sdp::parse(WEBRTC_08), Err(SdpError::MissingVersion));
    assert_eq!(Sdp::parse(WEBRTC_11), Err(SdpError::MissingVersion));
}

#[test]
fn rfc5118_ipv6_body() {
    let m = parse_ok(IPV6_IN_SDP).media();
    assert_eq!(m.len(), 2);
    let v6 = ip("2001:db8::20");
    assert_eq!(
        (m[0].kind.as_str(), m[0].port, m[0].proto.as_str()),
        ("audio", 6000, "RTP/AVP")
    );
    assert_eq!(m[0].payload_types, vec![2]);
    assert_eq!(m[0].rtpmaps, vec![rtpmap(2, "G726-32", 8000, None)]);
    assert_eq!(m[0].connection, Some(v6));
    assert_eq!(m[0].direction, Direction::SendRecv);
    assert!(!m[0].encrypted);
    assert_eq!(
        (m[1].kind.as_str(), m[1].port, m[1].index),
        ("video", 6024, 1)
    );
    assert_eq!(m[1].rtpmaps, vec![rtpmap(107, "H263-1998", 90000, None)]);
    assert_eq!(m[1].connection, Some(v6));
}

#[test]
fn rfc5118_per_media_connections() {
    let m = parse_ok(MULT_IP).media();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].connection, Some(v4(192, 0, 2, 1)));
    assert_eq!(m[0].port, 22334);
    assert_eq!(m[0].payload_types, vec![0]);
    assert!(m[0].rtpmaps.is_empty());
    assert_eq!(m[1].connection, Some(ip("2001:db8::1")));
}

#[test]
fn opus_offer() {
    let m = parse_ok(OPUS).media();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].port, 5084);
    assert_eq!(m[0].rtpmaps, vec![rtpmap(96, "opus", 48000, None)]);
    assert_eq!(m[0].connection, Some(v4(127, 0, 0, 1)));
    assert_eq!(m[0].direction, Direction::SendRecv);
    assert_eq!(m[0].rtcp, None);
}

#[test]
fn srtp_bodies_are_encrypted_with_rtcp() {
    let m = parse_ok(SRTP_200).media();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].proto, "RTP/SAVP");
    assert!(m[0].encrypted);
    assert_eq!(m[0].payload_types, vec![0, 101]);
    assert_eq!(m[0].rtcp, Some((4001, Some(v4(192, 168, 5, 151)))));
    assert_eq!(m[0].rtpmaps[0], rtpmap(0, "PCMU", 8000, None));

    let m = parse_ok(SRTP_INVITE).media();
    assert_eq!(m[0].payload_types, vec![123, 8, 0, 101]);
    assert_eq!(m[0].rtpmaps[0], rtpmap(123, "opus", 48000, Some(2)));
    assert_eq!(m[0].rtpmaps.len(), 4);
    assert_eq!(m[0].connection, Some(v4(192, 168, 20, 132)));
    assert!(m[0].encrypted);
}

#[test]
fn webrtc_08_directions_multicast_and_rtcp() {
    let m = parse_ok(&strip_comments(WEBRTC_08)).media();
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[2].connection,
        Some(v4(224, 0, 0, 1)),
        "session-level multicast c="
    );
    assert_eq!(m[2].rtpmaps, vec![rtpmap(0, "PCMU", 8000, None)]);
    assert_eq!(m[0].direction, Direction::SendOnly);
    assert_eq!(m[1].direction, Direction::RecvOnly);
    assert_eq!(m[0].connection, Some(v4(0, 0, 0, 0)));
    assert_eq!(m[1].connection, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(m[0].rtcp, Some((62454, Some(v4(162, 222, 183, 171)))));
    assert_eq!(m[1].rtcp, Some((61026, None)));
    assert_eq!(m[0].payload_types, vec![109, 9, 0, 8, 101]);
    assert_eq!(m[0].rtpmaps[0], rtpmap(109, "opus", 48000, Some(2)));
    assert!(m.iter().all(|v| v.encrypted));
}

#[test]
fn webrtc_09_media_connection_overrides_session() {
    let m = parse_ok(WEBRTC_09).media();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].connection, Some(v4(0, 0, 0, 0)));
    assert_eq!(m[0].rtpmaps.len(), 5);
    assert_eq!(m[0].rtpmaps[4], rtpmap(101, "telephone-event", 8000, None));
}

#[test]
fn webrtc_11_third_stream_uses_session_multicast_connection() {
    let m = parse_ok(&strip_comments(WEBRTC_11)).media();
    assert_eq!(m.len(), 3);
    assert_eq!(m[2].connection, Some(v4(224, 0, 0, 1)));
    assert_eq!(m[2].payload_types, vec![0]);
    assert_eq!(m[2].direction, Direction::SendRecv);
}

#[test]
fn webrtc_12_application_stream_and_session_fingerprint() {
    let m = parse_ok(WEBRTC_12).media();
    assert_eq!(m.len(), 3);
    assert_eq!(m[2].kind, "application");
    assert_eq!(m[2].proto, "DTLS/SCTP");
    assert!(m[2].payload_types.is_empty(), "5000 is no payload type");
    assert!(m.iter().all(|v| v.encrypted), "session-level a=fingerprint");
    assert_eq!(m[1].payload_types, vec![120, 126, 97]);
}

#[test]
fn webrtc_41_chrome_offer() {
    let m = parse_ok(WEBRTC_41).media();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].proto, "UDP/TLS/RTP/SAVPF");
    assert_eq!(
        m[0].payload_types,
        vec![111, 103, 104, 0, 8, 107, 106, 105, 13, 126]
    );
    assert_eq!(m[0].rtpmaps.len(), 10);
    assert_eq!(m[0].rtcp, Some((32952, Some(v4(128, 64, 32, 16)))));
    assert!(m[0].encrypted);
}

#[test]
fn opal_audio_video() {
    let m = parse_ok(DTMF_AV).media();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].payload_types, vec![8, 101, 120]);
    assert_eq!(m[0].rtpmaps[0], rtpmap(8, "PCMA", 8000, Some(1)));
    assert_eq!(m[1].payload_types, vec![119, 31]);
    assert_eq!(m[1].port, 5094);
    assert_eq!(m[1].connection, Some(v4(178, 45, 73, 241)));
}

#[test]
fn g711_directions() {
    let m = parse_ok(G711_SENDONLY).media();
    assert_eq!((m[0].port, m[0].direction), (27942, Direction::SendOnly));
    assert_eq!(m[0].rtpmaps[1], rtpmap(101, "telephone-event", 8000, None));
    let m = parse_ok(G711_RECVONLY).media();
    assert_eq!((m[0].port, m[0].direction), (6000, Direction::RecvOnly));
    assert!(!m[0].encrypted);
}

#[test]
fn direction_serializes_lowercase() {
    let names: Vec<String> = [
        Direction::SendRecv,
        Direction::SendOnly,
        Direction::RecvOnly,
        Direction::Inactive,
    ]
    .iter()
    .map(|d| serde_json::to_string(d).unwrap_or_default())
    .collect();
    assert_eq!(
        names,
        [
            "\"sendrecv\"",
            "\"sendonly\"",
            "\"recvonly\"",
            "\"inactive\""
        ]
    );
}

// ---------------------------------------------------------------- rewrites (exact bytes)

const PCMU_PCMA_OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.0.0.1\r\n\
s=-\r\n\
c=IN IP4 10.0.0.1\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

#[test]
fn rewrite_offer_with_session_connection() {
    let mut sdp = parse_ok(PCMU_PCMA_OFFER.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    let expected = PCMU_PCMA_OFFER
        .replace("c=IN IP4 10.0.0.1", "c=IN IP4 192.0.2.10")
        .replace("m=audio 49170", "m=audio 30000");
    assert_eq!(text(&sdp), expected);
    let m = sdp.media();
    assert_eq!((m[0].port, m[0].connection), (30000, Some(PROXY)));

    sdp.rewrite_origin_address(PROXY);
    let expected = expected.replace(
        "o=alice 2890844526 2890844526 IN IP4 10.0.0.1",
        "o=alice 2890844526 2890844526 IN IP4 192.0.2.10",
    );
    assert_eq!(text(&sdp), expected);
}

#[test]
fn rewrite_media_level_connection_and_rtcp() {
    let mut sdp = parse_ok(SRTP_200);
    assert_eq!(sdp.rewrite_media(0, PROXY, 30010), Ok(()));
    let expected = "v=0\r\n\
o=- 3732317050 3732317051 IN IP4 192.168.5.151\r\n\
s=pjmedia\r\n\
b=AS:84\r\n\
t=0 0\r\n\
a=X-nat:0\r\n\
m=audio 30010 RTP/SAVP 0 101\r\n\
c=IN IP4 192.0.2.10\r\n\
b=TIAS:64000\r\n\
a=rtcp:30011 IN IP4 192.0.2.10\r\n\
a=sendrecv\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ssrc:2705443 cname:39b32d12074d4dc8\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:OCOUoOqvvrHLb4I+oqkats63PQnR9gUCxE00VQzk\r\n";
    assert_eq!(text(&sdp), expected);
    assert_eq!(sdp.media()[0].rtcp, Some((30011, Some(PROXY))));
}

#[test]
fn rewrite_rtcp_without_address_keeps_lf_and_missing_final_newline() {
    let body = "v=0\no=- 1 1 IN IP4 10.0.0.2\ns=-\nt=0 0\nm=audio 7078 RTP/AVP 0\nc=IN IP4 10.0.0.2\na=rtcp:7079";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 40000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\no=- 1 1 IN IP4 10.0.0.2\ns=-\nt=0 0\nm=audio 40000 RTP/AVP 0\nc=IN IP4 192.0.2.10\na=rtcp:40001"
    );
}

#[test]
fn rewrite_audio_and_video_with_session_connection() {
    let original = String::from_utf8_lossy(DTMF_AV).into_owned();
    let mut sdp = parse_ok(DTMF_AV);

    // Only audio anchored so far: it gets its own c=, the session c= still serves the video.
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    let audio_only = original.replace(
        "m=audio 5092 RTP/AVP 8 101 120\r\n",
        "m=audio 30000 RTP/AVP 8 101 120\r\nc=IN IP4 192.0.2.10\r\n",
    );
    assert_eq!(text(&sdp), audio_only);
    let m = sdp.media();
    assert_eq!(m[0].connection, Some(PROXY));
    assert_eq!(m[1].connection, Some(v4(178, 45, 73, 241)));

    // Both anchored: the session c= is rewritten and no media-level c= is needed.
    assert_eq!(sdp.rewrite_media(1, PROXY, 30002), Ok(()));
    let both = original
        .replace("c=IN IP4 178.45.73.241", "c=IN IP4 192.0.2.10")
        .replace("m=audio 5092", "m=audio 30000")
        .replace("m=video 5094", "m=video 30002");
    assert_eq!(text(&sdp), both);

    // The result does not depend on the order of the calls.
    let mut other = parse_ok(DTMF_AV);
    assert_eq!(other.rewrite_media(1, PROXY, 30002), Ok(()));
    assert_eq!(other.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(other.to_bytes(), sdp.to_bytes());
}

#[test]
fn rewrite_ipv6_body() {
    let original = String::from_utf8_lossy(IPV6_IN_SDP).into_owned();
    let proxy6 = ip("2001:db8::ff");

    let mut sdp = parse_ok(IPV6_IN_SDP);
    assert_eq!(sdp.rewrite_media(0, proxy6, 30000), Ok(()));
    assert_eq!(sdp.rewrite_media(1, proxy6, 30002), Ok(()));
    sdp.rewrite_origin_address(proxy6);
    let expected = "v=0\r\n\
o=assistant 971731711378798081 0 IN IP6 2001:db8::ff\r\n\
s=Live video feed for today's meeting\r\n\
c=IN IP6 2001:db8::ff\r\n\
t=3338481189 3370017201\r\n\
m=audio 30000 RTP/AVP 2\r\n\
a=rtpmap:2 G726-32/8000\r\n\
m=video 30002 RTP/AVP 107\r\n\
a=rtpmap:107 H263-1998/90000\r\n";
    assert_eq!(text(&sdp), expected);

    // An IPv4 proxy facing the IPv6 body: IN IP4 follows the address.
    let mut sdp = parse_ok(IPV6_IN_SDP);
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    sdp.rewrite_origin_address(PROXY);
    let expected = original
        .replace("IN IP6 2001:db8::20\r\ns=", "IN IP4 192.0.2.10\r\ns=")
        .replace(
            "m=audio 6000 RTP/AVP 2\r\n",
            "m=audio 30000 RTP/AVP 2\r\nc=IN IP4 192.0.2.10\r\n",
        );
    assert_eq!(text(&sdp), expected);
}

#[test]
fn inserted_connection_goes_after_information_line() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 0\r\ni=main audio\r\nb=AS:64\r\na=sendrecv\r\n\
m=audio 5002 RTP/AVP 0\r\ni=second audio\r\n";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\r\no=- 1 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0\r\ni=main audio\r\nc=IN IP4 192.0.2.10\r\nb=AS:64\r\na=sendrecv\r\n\
m=audio 5002 RTP/AVP 0\r\ni=second audio\r\n"
    );
}

#[test]
fn inserted_connection_at_end_of_body_without_final_newline() {
    let body = "v=0\no=- 1 1 IN IP4 10.0.0.4\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\no=- 1 1 IN IP4 10.0.0.4\ns=-\nt=0 0\nm=audio 30000 RTP/AVP 0\nc=IN IP4 192.0.2.10"
    );
}

#[test]
fn rewrite_drops_ice_lines_of_the_stream_and_session_when_all_anchored() {
    let body = "v=0\n\
o=- 5 2 IN IP4 127.0.0.1\n\
s=-\n\
t=0 0\n\
a=ice-ufrag:F7gI\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g\n\
a=group:BUNDLE 0\n\
m=audio 54400 RTP/SAVPF 111\n\
c=IN IP4 203.0.113.141\n\
a=rtcp:54401 IN IP4 203.0.113.141\n\
a=candidate:1 1 UDP 2113667327 203.0.113.141 54400 typ host\n\
a=candidate:1 2 UDP 2113667326 203.0.113.141 54401 typ host\n\
a=end-of-candidates\n\
a=ice-options:trickle\n\
a=mid:0\n\
a=rtpmap:111 opus/48000/2\n\
m=video 0 RTP/SAVPF 96\n\
a=candidate:1 1 UDP 2113667327 203.0.113.141 54402 typ host";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\n\
o=- 5 2 IN IP4 127.0.0.1\n\
s=-\n\
t=0 0\n\
a=group:BUNDLE 0\n\
m=audio 30000 RTP/SAVPF 111\n\
c=IN IP4 192.0.2.10\n\
a=rtcp:30001 IN IP4 192.0.2.10\n\
a=mid:0\n\
a=rtpmap:111 opus/48000/2\n\
m=video 0 RTP/SAVPF 96\n\
a=candidate:1 1 UDP 2113667327 203.0.113.141 54402 typ host"
    );
}

#[test]
fn rewrite_drops_trailing_ice_line_and_keeps_missing_final_newline() {
    let body = "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 0\r\na=end-of-candidates";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\r\nc=IN IP4 192.0.2.10\r\nm=audio 30000 RTP/AVP 0"
    );
}

#[test]
fn rewrite_port_count_is_dropped() {
    let body = "v=0\r\nc=IN IP4 10.0.0.6\r\nm=video 49170/2 RTP/AVP 31\r\n";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\r\nc=IN IP4 192.0.2.10\r\nm=video 30000 RTP/AVP 31\r\n"
    );
}

#[test]
fn rewrite_errors_leave_the_body_untouched() {
    let body = "v=0\r\nc=IN IP4 10.0.0.7\r\nm=audio 0 RTP/AVP 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\n";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(
        sdp.rewrite_media(2, PROXY, 30000),
        Err(SdpError::NoSuchMedia { index: 2, count: 2 })
    );
    assert_eq!(
        sdp.rewrite_media(0, PROXY, 30000),
        Err(SdpError::MediaDisabled { index: 0 })
    );
    assert_eq!(
        sdp.rewrite_media(1, PROXY, 0),
        Err(SdpError::InvalidPort { port: 0 })
    );
    assert_eq!(
        sdp.rewrite_media(1, PROXY, 65535),
        Err(SdpError::InvalidPort { port: 65535 })
    );
    assert_eq!(sdp.to_bytes(), body.as_bytes());
}

#[test]
fn port_zero_stream_stays_untouched_when_others_are_anchored() {
    let body = "v=0\r\nc=IN IP4 10.0.0.8\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\nc=IN IP4 10.0.0.8\r\n";
    let mut sdp = parse_ok(body.as_bytes());
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(
        text(&sdp),
        "v=0\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\nc=IN IP4 10.0.0.8\r\n"
    );
}

#[test]
fn rewrite_again_replaces_the_earlier_rewrite() {
    let mut sdp = parse_ok(PCMU_PCMA_OFFER.as_bytes());
    assert_eq!(sdp.rewrite_media(0, v4(198, 51, 100, 1), 31000), Ok(()));
    assert_eq!(sdp.rewrite_media(0, PROXY, 30000), Ok(()));
    let mut once = parse_ok(PCMU_PCMA_OFFER.as_bytes());
    assert_eq!(once.rewrite_media(0, PROXY, 30000), Ok(()));
    assert_eq!(sdp.to_bytes(), once.to_bytes());
}

#[test]
fn origin_rewrite_ignores_malformed_origin() {
    let body = "v=0\r\no=short line\r\ns=-\r\n";
    let mut sdp = parse_ok(body.as_bytes());
    sdp.rewrite_origin_address(PROXY);
    assert_eq!(sdp.to_bytes(), body.as_bytes());
}

// ---------------------------------------------------------------- parse errors and tolerance

#[test]
fn parse_errors() {
    assert_eq!(Sdp::parse(b""), Err(SdpError::MissingVersion));
    assert_eq!(
        Sdp::parse(b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"),
        Err(SdpError::MissingVersion)
    );
    assert_eq!(
        Sdp::parse(b"v=0\r\ns=-\r\n\xff\r\n"),
        Err(SdpError::NotUtf8 { line: 3 })
    );
    assert_eq!(
        Sdp::parse(b"v=0\r\ns=-\r\nthis is no sdp\r\n"),
        Err(SdpError::MalformedLine { line: 3 })
    );
    assert_eq!(
        Sdp::parse(b"v=0\r\n=x\r\n"),
        Err(SdpError::MalformedLine { line: 2 })
    );
    assert!(matches!(
        Sdp::parse(b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n"),
        Err(SdpError::BadMediaLine { line: 2, .. })
    ));
    assert!(matches!(
        Sdp::parse(b"v=0\r\nm=audio +5 RTP/AVP 0\r\n"),
        Err(SdpError::BadMediaLine { line: 2, .. })
    ));
    assert!(matches!(
        Sdp::parse(b"v=0\nm=audio 5\n"),
        Err(SdpError::BadMediaLine { line: 2, .. })
    ));
}

#[test]
fn parse_tolerates_unknown_lines_whitespace_and_blank_lines() {
    let body = b"v=0  \r\ns=-\r\nz=unknown\r\ny=another one\r\nm=audio 4000   RTP/AVP 0 abc 8\t\r\nc=IN IP4 10.0.0.9 \r\na=X-custom:1\r\na=inactive \r\n\r\n";
    let sdp = parse_ok(body);
    assert_eq!(sdp.to_bytes(), body.to_vec());
    let m = sdp.media();
    assert_eq!(m[0].payload_types, vec![0, 8]);
    assert_eq!(m[0].connection, Some(v4(10, 0, 0, 9)));
    assert_eq!(m[0].direction, Direction::Inactive);
}

#[test]
fn session_direction_applies_when_media_has_none() {
    let sdp = parse_ok(
        b"v=0\r\na=sendonly\r\nm=audio 1 RTP/AVP 0\r\nm=audio 2 RTP/AVP 0\r\na=recvonly\r\n",
    );
    let m = sdp.media();
    assert_eq!(m[0].direction, Direction::SendOnly);
    assert_eq!(m[1].direction, Direction::RecvOnly);
}

#[test]
fn unparsable_connections_are_none() {
    let sdp = parse_ok(b"v=0\r\nc=IN IP4 host.example.com\r\nm=audio 1 RTP/AVP 0\r\nm=audio 2 RTP/AVP 0\r\nc=IN IP4 2001:db8::1\r\n");
    let m = sdp.media();
    assert_eq!(m[0].connection, None);
    assert_eq!(m[1].connection, None, "IP4 with an IPv6 address");
}

// ---------------------------------------------------------------- properties

/// Every rewrite the caller could make on a parsed body; the output must parse again.
fn exercise(sdp: &mut Sdp) -> Result<(), TestCaseError> {
    let views = sdp.media();
    for v in &views {
        let r = sdp.rewrite_media(v.index, PROXY, 30000 + 2 * v.index as u16);
        prop_assert_eq!(r.is_ok(), v.port != 0);
    }
    sdp.rewrite_origin_address(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let printed = sdp.to_bytes();
    let again = Sdp::parse(&printed);
    prop_assert!(again.is_ok(), "rewritten body does not parse: {:?}", again);
    Ok(())
}

fn mutate(body: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = body.to_vec();
    for &(pos, byte, op) in edits {
        if out.is_empty() {
            out.push(byte);
            continue;
        }
        let at = pos % out.len();
        match op % 3 {
            0 => out[at] = byte,
            1 => out.insert(at, byte),
            _ => {
                out.remove(at);
            }
        }
    }
    out
}

/// One generated media section: its text and the facts it should yield.
#[derive(Debug, Clone)]
struct GenMedia {
    kind: &'static str,
    port: u16,
    proto: &'static str,
    pts: Vec<u8>,
    conn: Option<Ipv4Addr>,
    direction: Option<Direction>,
    extra: Vec<String>,
}

fn gen_media() -> impl Strategy<Value = GenMedia> {
    (
        prop::sample::select(vec!["audio", "video", "image", "text"]),
        prop_oneof![Just(0u16), 1u16..=65535],
        prop::sample::select(vec!["RTP/AVP", "RTP/SAVP", "RTP/AVPF", "UDP/TLS/RTP/SAVPF"]),
        prop::collection::vec(0u8..128, 0..6),
        prop::option::of(any::<[u8; 4]>().prop_map(Ipv4Addr::from)),
        prop::option::of(prop::sample::select(vec![
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ])),
        prop::collection::vec(
            "a=(x-[a-z]{1,8}|candidate|ice-ufrag|ptime|rtcp-mux)(:[ -~]{0,16})?",
            0..4,
        ),
    )
        .prop_map(
            |(kind, port, proto, pts, conn, direction, extra)| GenMedia {
                kind,
                port,
                proto,
                pts,
                conn,
                direction,
                extra,
            },
        )
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "sendonly",
        Direction::RecvOnly => "recvonly",
        Direction::Inactive => "inactive",
    }
}

fn build(
    session_conn: Option<Ipv4Addr>,
    media: &[GenMedia],
    crlf: bool,
    final_newline: bool,
) -> String {
    let mut lines = vec![
        "v=0".to_owned(),
        "o=- 1 1 IN IP4 10.0.0.1".to_owned(),
        "s=-".to_owned(),
    ];
    if let Some(c) = session_conn {
        lines.push(format!("c=IN IP4 {c}"));
    }
    lines.push("t=0 0".to_owned());
    for m in media {
        let fmts: Vec<String> = m.pts.iter().map(u8::to_string).collect();
        let mut mline = format!("m={} {} {}", m.kind, m.port, m.proto);
        for f in &fmts {
            mline.push(' ');
            mline.push_str(f);
        }
        lines.push(mline);
        if let Some(c) = m.conn {
            lines.push(format!("c=IN IP4 {c}"));
        }
        for pt in &m.pts {
            lines.push(format!("a=rtpmap:{pt} X{pt}/8000"));
        }
        if let Some(d) = m.direction {
            lines.push(format!("a={}", direction_name(d)));
        }
        lines.extend(m.extra.iter().cloned());
    }
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut body = lines.join(eol);
    if final_newline {
        body.push_str(eol);
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(mut sdp) = Sdp::parse(&body) {
            prop_assert_eq!(sdp.to_bytes(), body);
            exercise(&mut sdp)?;
        }
    }

    #[test]
    fn parse_never_panics_on_sdp_like_text(rest in "([a-z]=[ -~]{0,40}\r?\n){0,12}") {
        let body = format!("v=0\r\n{rest}");
        if let Ok(mut sdp) = Sdp::parse(body.as_bytes()) {
            prop_assert_eq!(sdp.to_bytes(), body.as_bytes().to_vec());
            exercise(&mut sdp)?;
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_fixtures(
        which in 0usize..13,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let fixtures = parsable_fixtures();
        let body = mutate(fixtures.get(which).map(Vec::as_slice).unwrap_or_default(), &edits);
        if let Ok(mut sdp) = Sdp::parse(&body) {
            prop_assert_eq!(sdp.to_bytes(), body);
            exercise(&mut sdp)?;
        }
    }

    #[test]
    fn generated_sdp_round_trips_and_reads_back(
        session_conn in prop::option::of(any::<[u8; 4]>().prop_map(Ipv4Addr::from)),
        media in prop::collection::vec(gen_media(), 0..4),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let body = build(session_conn, &media, crlf, final_newline);
        let x = Sdp::parse(body.as_bytes());
        prop_assert!(x.is_ok(), "{:?}", x);
        let x = x.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(x.to_bytes(), body.as_bytes().to_vec());
        prop_assert_eq!(Sdp::parse(&x.to_bytes()), Ok(x.clone()));
        let views = x.media();
        prop_assert_eq!(views.len(), media.len());
        for (v, g) in views.iter().zip(&media) {
            prop_assert_eq!(v.kind.as_str(), g.kind);
            prop_assert_eq!(v.port, g.port);
            prop_assert_eq!(&v.payload_types, &g.pts);
            prop_assert_eq!(v.rtpmaps.len(), g.pts.len());
            prop_assert_eq!(v.direction, g.direction.unwrap_or(Direction::SendRecv));
            prop_assert_eq!(v.connection, g.conn.or(session_conn).map(IpAddr::V4));
            prop_assert_eq!(v.encrypted, g.proto.contains("SAVP"));
        }
    }

    #[test]
    fn anchoring_every_live_stream_points_all_of_them_at_the_proxy(
        session_conn in prop::option::of(any::<[u8; 4]>().prop_map(Ipv4Addr::from)),
        media in prop::collection::vec(gen_media(), 1..4),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let body = build(session_conn, &media, crlf, final_newline);
        let mut sdp = Sdp::parse(body.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let before = sdp.media();
        for v in &before {
            if v.port != 0 {
                prop_assert_eq!(sdp.rewrite_media(v.index, PROXY, 30000 + 2 * v.index as u16), Ok(()));
            }
        }
        let printed = sdp.to_bytes();
        let again = Sdp::parse(&printed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again.media(), &sdp.media());
        for (after, old) in again.media().iter().zip(&before) {
            if old.port == 0 {
                // Untouched, though it may share a rewritten session-level c=.
                prop_assert_eq!(after.port, 0);
                prop_assert_eq!(&after.payload_types, &old.payload_types);
                prop_assert_eq!(after.direction, old.direction);
            } else {
                prop_assert_eq!(after.port, 30000 + 2 * old.index as u16);
                prop_assert_eq!(after.connection, Some(PROXY));
                prop_assert_eq!(&after.payload_types, &old.payload_types);
                prop_assert_eq!(after.direction, old.direction);
            }
        }
        let out = String::from_utf8_lossy(&printed).into_owned();
        prop_assert_eq!(out.ends_with('\n'), final_newline);
        prop_assert_eq!(out.contains("\r\n"), crlf);
    }
}

//! Call flows beyond the plain call, through the real daemon on 127.0.0.1, each checked on the
//! recording (tones per channel, WAV length, gaps), the sidecar (fields, events and their
//! offsets, end reason) and on what both user agents saw:
//!
//! - a forking PBX: two early dialogs (two 180s with different To tags), the second answers;
//!   and again with the losing fork answering too, late: that dialog is ACKed and hung up by
//!   the caller, and must neither carry media nor end the recording;
//! - a 407 challenge and the INVITE again with credentials: still one call, one recording;
//! - a REFER (blind transfer by the caller) accepted 202 and NOTIFYed: a `transfer` event;
//!   one by the callee: accepted, an event by the callee; declined (603), no event;
//! - the PBX moving its RTP to a new port by re-INVITE mid-call: no gap in the recording;
//! - an RFC 4028 session timer: an unrefreshed call whose parties go on talking is neither cut
//!   nor truncated (an event marks the expiry), refreshed ones go on, and an expired session
//!   whose media then stops without a BYE is ended as `session_expired` and forgotten.
//!
//! Media ports 47000-47799, one block of 100 per test.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use recproxy::codec::Codec;
use recproxy::demo::ua::{
    Answer, CallReport, CallSpec, Credentials, Outcome, PbxScript, Refresh, SeenRequest,
    SessionTimer, UasCallReport,
};
use support::{
    dominance, longest_zero_run_ms_at, ms, setup, sidecars, sidecars_of, span_at, wavs, Daemon, Wav,
};

const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;
const RATE: u32 = 8000;

fn spec(talk: Duration) -> CallSpec {
    CallSpec::new("0401234567", "0295120000", Codec::Pcmu, CALLER_HZ, talk)
}

fn span(ch: &[i16], from_s: f64, to_s: f64) -> &[i16] {
    span_at(ch, RATE, from_s, to_s)
}

/// The requests of `method` the PBX received.
fn seen<'a>(uas: &'a UasCallReport, method: &str) -> Vec<&'a SeenRequest> {
    uas.requests.iter().filter(|r| r.method == method).collect()
}

/// The WAV of a sidecar: stereo 8 kHz, beside the sidecar, `expect_ms` long (± 100 ms).
fn wav_of(v: &serde_json::Value, expect_ms: i64, test: &str) -> Wav {
    let path = Path::new(v["wav"]["path"].as_str().expect("wav.path"));
    let wav = Wav::read(path);
    assert_eq!((wav.channels, wav.rate), (2, RATE));
    let got = wav.duration_ms() as i64;
    eprintln!("{test}: WAV {got} ms, expected {expect_ms} ms");
    assert!(
        (got - expect_ms).abs() <= 100,
        "{test}: WAV {got} ms vs {expect_ms} ms"
    );
    assert_eq!(v["wav"]["duration_ms"].as_i64(), Some(got), "{v}");
    wav
}

/// The one WAV in the directory, the one of the call: as long as answer to BYE as the phone saw it.
fn the_wav(daemon: &Daemon, v: &serde_json::Value, report: &CallReport, test: &str) -> Wav {
    let files = wavs(&daemon.dir);
    assert_eq!(files.len(), 1, "one WAV for the call: {files:?}");
    assert_eq!(files[0], Path::new(v["wav"]["path"].as_str().unwrap()));
    wav_of(v, support::since_answer(report, report.bye_sent_at), test)
}

/// Each party's tone dominates its own channel over each span.
fn tones_in(wav: &Wav, spans: &[(f64, f64)], test: &str) {
    for &(from, to) in spans {
        let left = dominance(span(&wav.left, from, to), RATE, CALLER_HZ, &[CALLEE_HZ]);
        let right = dominance(span(&wav.right, from, to), RATE, CALLEE_HZ, &[CALLER_HZ]);
        eprintln!("{test}: dominance over [{from}, {to}] s: left {left:.0}, right {right:.0}");
        assert!(
            left > 50.0,
            "{test}: left 440 Hz over [{from}, {to}] s: {left}"
        );
        assert!(
            right > 50.0,
            "{test}: right 1000 Hz over [{from}, {to}] s: {right}"
        );
    }
}

/// The sidecar facts every answered call that the caller hung up shares.
fn complete_by_caller(v: &serde_json::Value) {
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["not_recorded_reason"], serde_json::Value::Null, "{v}");
    assert_eq!(v["service"]["decision"], "recorded", "{v}");
    assert_eq!(v["start_reason"], "answer", "{v}");
    assert_eq!(v["end_reason"], "bye_caller", "{v}");
    assert_eq!(v["ended_by"], "caller", "{v}");
    assert_eq!(v["caller_number"], "0401234567", "{v}");
    assert_eq!(v["called_number"], "0295120000", "{v}");
    assert_eq!(v["direction"], "inbound", "{v}");
    for leg in ["caller", "callee"] {
        assert_eq!(v["legs"][leg]["codec"], "PCMU", "{v}");
        assert_eq!(v["legs"][leg]["lost"], 0, "{v}");
    }
}

#[test]
fn forked_invite_is_recorded_in_the_winning_dialog() {
    let mut s = setup(
        Answer::Forked {
            ring: Duration::from_millis(300),
            tone_hz: CALLEE_HZ,
            forks: 2,
            winner: 1,
            late_answer: None,
        },
        (47000, 47099),
        "",
    );
    let (report, uas) = s.answered(&spec(Duration::from_secs(3)));

    // Two early dialogs reached the phone through the proxy; the second fork answered and the
    // phone's ACK and BYE went to it: its To tag, its Contact.
    assert_eq!(uas.early_tags.len(), 2, "{:?}", uas.early_tags);
    assert_ne!(uas.early_tags[0], uas.early_tags[1]);
    assert_eq!(
        report.early_tags, uas.early_tags,
        "the phone saw both forks"
    );
    assert_eq!(uas.to_tag, uas.early_tags[1]);
    assert_eq!(report.to_tag.as_deref(), Some(uas.to_tag.as_str()));
    for method in ["ACK", "BYE"] {
        let reqs = seen(&uas, method);
        assert_eq!(reqs.len(), 1, "{method}: {:?}", uas.requests);
        assert_eq!(reqs[0].to_tag.as_deref(), Some(uas.to_tag.as_str()));
        assert!(
            reqs[0].uri.ends_with(";fork=2"),
            "{method} to {}",
            reqs[0].uri
        );
    }
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    assert!(caller_rtp.received >= 140, "{caller_rtp:?}");
    assert!(callee_rtp.received >= 140, "{callee_rtp:?}");

    // One sidecar: the winner's call, answered and complete; nothing for the losing fork.
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(sidecars(&s.daemon.dir).len(), 1, "one sidecar in all");
    complete_by_caller(&v);
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64(),
        Some(caller_rtp.sent),
        "{v}"
    );
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{v}");
    let t = &v["times"];
    assert_eq!(t["recording_start"], t["answer"]);
    let rang = ms(&t["answer"]) - ms(&t["invite"]);
    assert!(
        (300..=600).contains(&rang),
        "answered {rang} ms after the INVITE"
    );
    assert!(
        (v["duration_ms"].as_i64().unwrap() - 3000).abs() <= 100,
        "{v}"
    );

    let wav = the_wav(&s.daemon, &v, &report, "fork");
    tones_in(&wav, &[(0.2, 1.4), (1.6, 2.8)], "fork");
    eprintln!(
        "fork: early tags {:?}, answered in {}; rang {rang} ms",
        uas.early_tags, uas.to_tag
    );
}

#[test]
fn challenged_invite_retried_with_credentials_is_one_recording() {
    let mut s = setup(
        Answer::Challenge {
            code: 407,
            realm: "pbx.example".into(),
            credentials: Credentials {
                user: "0401234567".into(),
                password: "s3cret".into(),
            },
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
        },
        (47100, 47199),
        "",
    );
    let mut spec = spec(Duration::from_secs(3));
    spec.credentials = Some(Credentials {
        user: "0401234567".into(),
        password: "s3cret".into(),
    });
    let (report, uas) = s.answered(&spec);

    // The phone answered the challenge through the proxy: same Call-ID (checked above), CSeq 2
    // with credentials, and the PBX accepted them.
    assert_eq!(report.auth_challenge, Some(407));
    assert_eq!(uas.challenges, 1);
    assert_eq!(uas.authorized_user.as_deref(), Some("0401234567"));
    let header = |name: &str| {
        uas.received_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("CSeq"), Some("2 INVITE"));
    assert!(header("Proxy-Authorization").is_some_and(|v| v.contains("response=")));
    // The 407 was ACKed once (hop by hop, by the proxy), then the 200 OK.
    let acks: Vec<u32> = seen(&uas, "ACK").iter().map(|r| r.cseq).collect();
    assert_eq!(acks, vec![1, 2], "{:?}", uas.requests);

    // One call, one recording: a single sidecar for the Call-ID, recorded and complete.
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    let all = sidecars_of(&s.daemon.dir, &report.call_id);
    assert_eq!(all.len(), 1, "one sidecar for the call: {all:?}");
    assert_eq!(sidecars(&s.daemon.dir).len(), 1, "no other sidecar at all");
    complete_by_caller(&v);
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{v}");
    // The call began with the first INVITE, the recording with the answer to the second.
    let t = &v["times"];
    let invite_ms = report
        .invite_sent_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i128;
    assert!(
        (ms(&t["invite"]) - invite_ms).abs() <= 100,
        "times.invite is the first INVITE: {t}"
    );
    assert_eq!(t["recording_start"], t["answer"]);
    assert!(
        (v["duration_ms"].as_i64().unwrap() - 3000).abs() <= 100,
        "{v}"
    );

    let wav = the_wav(&s.daemon, &v, &report, "407");
    tones_in(&wav, &[(0.2, 1.4), (1.6, 2.8)], "407");
    eprintln!(
        "407: INVITE to answer {} ms (challenge round trip and 200 ms ring)",
        ms(&t["answer"]) - ms(&t["invite"])
    );
}

#[test]
fn refer_transfer_is_an_event_at_its_offset_and_the_recording_stays_aligned() {
    let mut s = setup(
        Answer::Scripted {
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
            script: PbxScript {
                transfer_delay: Duration::from_millis(1000),
                ..PbxScript::default()
            },
        },
        (47200, 47299),
        "",
    );
    let mut spec = spec(Duration::from_secs(4));
    spec.refer = Some((Duration::from_millis(1500), "0299999999".into()));
    let (report, uas) = s.answered(&spec);

    // REFER accepted, NOTIFYs 100 then 200 through the proxy both ways, and the transferor hung
    // up on the final one (about 1 s after the REFER, well before its 4 s of talk).
    assert_eq!(report.refer_status, Some(202));
    assert_eq!(
        report.notifies,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
    );
    assert_eq!(uas.notify_results, vec![200, 200]);
    assert_eq!(uas.refer_to.len(), 1);
    assert!(
        uas.refer_to[0].starts_with("<sip:0299999999@127.0.0.1:"),
        "{:?}",
        uas.refer_to
    );
    let refer_ms = support::since_answer(&report, report.refer_sent_at);
    let bye_ms = support::since_answer(&report, report.bye_sent_at);
    assert!((refer_ms - 1500).abs() <= 60, "REFER at {refer_ms} ms");
    assert!((bye_ms - 2500).abs() <= 150, "BYE at {bye_ms} ms");
    let refer = seen(&uas, "REFER");
    assert_eq!(refer.len(), 1);
    assert_eq!(refer[0].to_tag.as_deref(), Some(uas.to_tag.as_str()));

    // The sidecar: a transfer event by the caller when the 202 passed, and the call recorded
    // on to the caller's BYE.
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    complete_by_caller(&v);
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["type"], "transfer", "{e}");
    assert_eq!(e["by"], "caller", "{e}");
    let at = e["at_ms"].as_i64().unwrap();
    assert!(
        (at - refer_ms).abs() <= 100,
        "transfer at {at} ms, REFER sent at {refer_ms} ms"
    );
    assert!(
        (v["duration_ms"].as_i64().unwrap() - bye_ms).abs() <= 100,
        "{v}"
    );

    // Aligned on both sides of the transfer, no hole where it happened.
    let wav = the_wav(&s.daemon, &v, &report, "refer");
    let around = refer_ms as f64 / 1000.0;
    let end = wav.duration_ms() as f64 / 1000.0;
    tones_in(
        &wav,
        &[(0.2, around - 0.1), (around + 0.1, end - 0.1)],
        "refer",
    );
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        let run = longest_zero_run_ms_at(span(ch, 0.1, end - 0.1), RATE);
        eprintln!("refer: {name} longest silence {run} ms; transfer event at {at} ms, REFER sent at {refer_ms} ms, BYE at {bye_ms} ms");
        assert!(run <= 25, "{name}: {run} ms of silence");
    }
}

#[test]
fn pbx_port_change_mid_call_re_points_the_relay_without_a_gap() {
    let mut s = setup(
        Answer::Scripted {
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
            script: PbxScript {
                move_rtp: Some(Duration::from_secs(2)),
                ..PbxScript::default()
            },
        },
        (47300, 47399),
        "",
    );
    let (report, uas) = s.answered(&spec(Duration::from_secs(4)));
    let moved_to = uas.moved_to.expect("the PBX's move was answered");
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    // The phone answered the PBX's re-INVITE (through the proxy) ...
    assert_eq!(report.remote_updates_at.len(), 1, "{report:?}");
    let moved_ms = uas
        .move_sent_at
        .unwrap()
        .duration_since(uas.answered_at.unwrap())
        .unwrap()
        .as_millis() as i64;
    assert!((moved_ms - 2000).abs() <= 100, "move at {moved_ms} ms");
    // ... the PBX paused at most one packet time while it crossed ...
    assert!(callee_rtp.paused <= 1, "{callee_rtp:?}");
    // ... the proxy sent the phone's audio to the PBX's new port from then on (≈ 100 packets
    // in 2 s) ...
    assert!(
        callee_rtp.received_after_move >= 95,
        "moved to {moved_to}: {callee_rtp:?}"
    );
    assert!(callee_rtp.received >= 190, "{callee_rtp:?}");
    // ... and took the PBX's packets from the new port: the phone heard it throughout.
    assert!(caller_rtp.received >= 190, "{caller_rtp:?}");

    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    complete_by_caller(&v);
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64(),
        Some(caller_rtp.sent),
        "{v}"
    );
    let callee_packets = v["legs"]["callee"]["packets"].as_u64().unwrap();
    assert!(
        callee_packets + 2 >= callee_rtp.sent && callee_packets <= callee_rtp.sent,
        "callee packets {callee_packets} of {} sent",
        callee_rtp.sent
    );
    assert_eq!(
        v["events"].as_array().map(Vec::len),
        Some(0),
        "a port change is no event: {v}"
    );

    let wav = the_wav(&s.daemon, &v, &report, "PBX port change");
    tones_in(&wav, &[(0.2, 1.8), (2.2, 3.8)], "PBX port change");
    // The move as the phone saw it: the PBX sent it `moved_ms` after its 200 OK.
    let around = moved_ms as f64 / 1000.0;
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        let run = longest_zero_run_ms_at(span(ch, around - 0.5, around + 0.5), RATE);
        eprintln!(
            "PBX port change: {name} longest silence {run} ms around the move at {moved_ms} ms; \
             paused {} packet times, {} packets to the new port {moved_to}",
            callee_rtp.paused, callee_rtp.received_after_move
        );
        // The only silence allowed is the sender's own pause while the re-INVITE crossed
        // (one packet time of the PBX's, on the right), plus rounding.
        let paused = if name == "right" {
            callee_rtp.paused
        } else {
            caller_rtp.paused
        };
        assert!(
            run <= 20 * paused + 5,
            "{name}: {run} ms of silence around the move, paused {paused} packet times"
        );
    }
}

#[test]
fn session_timer_expiry_never_cuts_a_call_that_still_has_media() {
    let mut s = setup(
        Answer::Accept {
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
        },
        (47400, 47499),
        "",
    );
    let timed = |refresh: Option<Refresh>| CallSpec {
        session_timer: Some(SessionTimer {
            expires: 3,
            refresh,
        }),
        ..spec(Duration::from_secs(4))
    };
    let specs = [
        timed(None),
        timed(Some(Refresh::Update)),
        timed(Some(Refresh::ReInvite)),
    ];
    let reports = s.call_all(&specs);
    let mut uas: Vec<UasCallReport> = (0..specs.len()).map(|_| s.pbx_report()).collect();
    uas.sort_by_key(|u| {
        reports
            .iter()
            .position(|r| r.call_id == u.call_id)
            .expect("a PBX report per call")
    });

    for (report, u) in reports.iter().zip(&uas) {
        assert_eq!(report.outcome, Outcome::Answered);
        // Asked for and granted through the proxy: 3 s, the phone refreshes.
        assert_eq!(report.session_expires, Some(3), "{report:?}");
        assert!(report.refresher_is_us);
        assert_eq!(u.session_expires, Some(3));
        let has = |name: &str, value: &str| {
            u.received_headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        };
        assert!(has("Session-Expires", "3;refresher=uac") && has("Supported", "timer"));
    }

    // Nobody refreshed the first call. The parties went on talking, so the daemon went on
    // relaying and recording: the expiry is an event 3 s after the answer, and the call ended
    // with the caller's BYE after 4 s, as it would have without the proxy.
    let (expired, u0) = (&reports[0], &uas[0]);
    assert!(expired.refreshes_sent_at.is_empty());
    let (_, v) = s.daemon.final_sidecar(&expired.call_id);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["end_reason"], "bye_caller", "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0]["type"], "session_expired", "{v}");
    let at = events[0]["at_ms"].as_i64().unwrap();
    assert!((at - 3000).abs() <= 150, "expired at {at} ms: {v}");
    let t = &v["times"];
    let lasted = ms(&t["end"]) - ms(&t["answer"]);
    assert!(
        (lasted - 4000).abs() <= 200,
        "ended {lasted} ms after the answer: {t}"
    );
    let wav = wav_of(&v, lasted as i64, "expired");
    tones_in(&wav, &[(0.2, 1.4), (1.6, 2.8), (3.1, 3.9)], "expired");
    let caller_rtp = expired.rtp.clone().unwrap();
    let callee_rtp = u0.rtp.clone().unwrap();
    eprintln!(
        "session timer: expired call ended {lasted} ms after the answer; the phone got {} and \
         the PBX {} of about 200 packets",
        caller_rtp.received, callee_rtp.received,
    );
    assert!(
        caller_rtp.received >= 190 && callee_rtp.received >= 190,
        "media was cut: {} / {}",
        caller_rtp.received,
        callee_rtp.received
    );
    assert_eq!(
        seen(u0, "BYE").len(),
        1,
        "the phone's BYE still reached the PBX"
    );

    // The refreshed calls: a refresh every 1.5 s (half the interval), each granted again, and
    // recorded to the caller's BYE after 4 s, well past the first expiry.
    for (report, u, method) in [
        (&reports[1], &uas[1], "UPDATE"),
        (&reports[2], &uas[2], "INVITE"),
    ] {
        let sent: Vec<i64> = report
            .refreshes_sent_at
            .iter()
            .map(|&t| support::since_answer(report, Some(t)))
            .collect();
        eprintln!("session timer: {method} refreshes sent at {sent:?} ms");
        assert_eq!(sent.len(), 2, "{method}: {sent:?}");
        assert!(
            (sent[0] - 1500).abs() <= 100 && (sent[1] - 3000).abs() <= 150,
            "{sent:?}"
        );
        assert_eq!(report.refresh_results, vec![200, 200]);
        let refreshes = seen(u, method);
        assert_eq!(refreshes.len(), 2, "{:?}", u.requests);
        assert!(refreshes
            .iter()
            .all(|r| r.header("session-expires") == Some("3;refresher=uac")));

        let (_, v) = s.daemon.final_sidecar(&report.call_id);
        complete_by_caller(&v);
        assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{v}");
        let bye_ms = support::since_answer(report, report.bye_sent_at);
        let wav = wav_of(&v, bye_ms, method);
        assert!(
            wav.duration_ms() >= 3900,
            "{method}: {} ms",
            wav.duration_ms()
        );
        tones_in(&wav, &[(0.2, 2.8), (3.1, 3.9)], method);
    }
    assert_eq!(wavs(&s.daemon.dir).len(), 3);
}

#[test]
fn late_answer_of_a_losing_fork_neither_moves_media_nor_ends_the_recording() {
    let mut s = setup(
        Answer::Forked {
            ring: Duration::from_millis(300),
            tone_hz: CALLEE_HZ,
            forks: 2,
            winner: 1,
            late_answer: Some(Duration::from_millis(1000)),
        },
        (47500, 47599),
        "",
    );
    let (report, uas) = s.answered(&spec(Duration::from_secs(3)));

    // The proxy forwarded the losing fork's 200 OK; the phone ACKed it in that fork's dialog
    // and hung that dialog up, while the call went on in the winner's.
    let loser = uas
        .late_answer_tag
        .clone()
        .expect("the losing fork answered");
    assert_eq!(loser, uas.early_tags[0]);
    assert_eq!(report.other_dialogs, vec![loser.clone()]);
    assert_eq!(report.to_tag.as_deref(), Some(uas.to_tag.as_str()));
    let in_dialog = |tag: &str| -> Vec<(String, u32)> {
        uas.requests
            .iter()
            .filter(|r| r.to_tag.as_deref() == Some(tag))
            .map(|r| (r.method.clone(), r.cseq))
            .collect()
    };
    let ack_bye = vec![("ACK".to_string(), 1), ("BYE".to_string(), 2)];
    assert_eq!(in_dialog(&loser), ack_bye, "{:?}", uas.requests);
    assert_eq!(in_dialog(&uas.to_tag), ack_bye, "{:?}", uas.requests);
    let loser_bye = seen(&uas, "BYE")[0];
    assert!(loser_bye.uri.ends_with(";fork=1"), "{}", loser_bye.uri);
    let loser_bye_ms = loser_bye
        .at
        .duration_since(uas.answered_at.unwrap())
        .unwrap()
        .as_millis() as i64;
    assert!(
        (loser_bye_ms - 1000).abs() <= 100,
        "loser hung up at {loser_bye_ms} ms"
    );
    // No media went to the losing fork, and the winner's flowed both ways throughout.
    assert_eq!(uas.late_answer_rtp_received, 0);
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    assert!(caller_rtp.received >= 145, "{caller_rtp:?}");
    assert!(callee_rtp.received >= 145, "{callee_rtp:?}");

    // The recording is the winner's call, to the caller's BYE of it at 3 s: the BYE of the
    // other dialog at 1 s did not end it.
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(sidecars(&s.daemon.dir).len(), 1, "one sidecar in all");
    complete_by_caller(&v);
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64(),
        Some(caller_rtp.sent),
        "{v}"
    );
    assert!(
        (v["duration_ms"].as_i64().unwrap() - 3000).abs() <= 100,
        "{v}"
    );
    let wav = the_wav(&s.daemon, &v, &report, "late fork answer");
    tones_in(&wav, &[(0.2, 0.9), (1.1, 2.8)], "late fork answer");
    let end = wav.duration_ms() as f64 / 1000.0;
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        let run = longest_zero_run_ms_at(span(ch, 0.1, end - 0.1), RATE);
        eprintln!(
            "late fork answer: {name} longest silence {run} ms; loser hung up at {loser_bye_ms} ms"
        );
        assert!(run <= 25, "{name}: {run} ms of silence");
    }
}

#[test]
fn refer_by_the_callee_is_an_event_when_accepted_and_none_when_declined() {
    let mut s = setup(
        Answer::Scripted {
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
            script: PbxScript {
                refer: Some((Duration::from_millis(1500), "0299999999".into())),
                ..PbxScript::default()
            },
        },
        (47600, 47699),
        "",
    );
    // The first caller accepts being transferred (and reports the referred call failed), the
    // second declines.
    let specs = [
        CallSpec {
            on_refer: Some(503),
            ..spec(Duration::from_secs(3))
        },
        spec(Duration::from_secs(3)),
    ];
    let reports = s.call_all(&specs);
    let mut uas: Vec<UasCallReport> = (0..specs.len()).map(|_| s.pbx_report()).collect();
    uas.sort_by_key(|u| {
        reports
            .iter()
            .position(|r| r.call_id == u.call_id)
            .expect("a PBX report per call")
    });

    for (i, (report, u)) in reports.iter().zip(&uas).enumerate() {
        let accepted = i == 0;
        assert_eq!(report.outcome, Outcome::Answered);
        // The REFER crossed the proxy from the PBX to the phone, and its answer back.
        let code = if accepted { 202 } else { 603 };
        assert_eq!(report.refers_received.len(), 1, "{report:?}");
        assert_eq!(report.refers_received[0].1, code);
        assert!(report.refers_received[0]
            .0
            .starts_with("<sip:0299999999@127.0.0.1:"));
        assert_eq!(u.refer_status, Some(code));
        if accepted {
            assert_eq!(
                u.notifies,
                vec!["SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable"]
            );
            assert_eq!(report.notify_results, vec![200, 200]);
        } else {
            assert!(u.notifies.is_empty());
        }
        let refer_ms = u
            .refer_sent_at
            .unwrap()
            .duration_since(u.answered_at.unwrap())
            .unwrap()
            .as_millis() as i64;
        assert!((refer_ms - 1500).abs() <= 100, "REFER at {refer_ms} ms");

        // Recorded to the caller's BYE either way; a transfer event by the callee only when
        // the REFER was accepted.
        let (_, v) = s.daemon.final_sidecar(&report.call_id);
        complete_by_caller(&v);
        let events = v["events"].as_array().expect("events");
        if accepted {
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0]["type"], "transfer", "{events:?}");
            assert_eq!(events[0]["by"], "callee", "{events:?}");
            let at = events[0]["at_ms"].as_i64().unwrap();
            eprintln!(
                "callee REFER: transfer event at {at} ms, REFER sent at {refer_ms} ms (PBX clock)"
            );
            assert!(
                (at - refer_ms).abs() <= 100,
                "transfer at {at} ms, REFER at {refer_ms} ms"
            );
        } else {
            assert!(
                events.is_empty(),
                "a declined REFER is no transfer: {events:?}"
            );
        }
        let test = if accepted {
            "callee REFER accepted"
        } else {
            "callee REFER declined"
        };
        let wav = wav_of(&v, support::since_answer(report, report.bye_sent_at), test);
        tones_in(&wav, &[(0.2, 1.4), (1.6, 2.8)], test);
    }
    assert_eq!(wavs(&s.daemon.dir).len(), 2);
}

/// A session whose timer runs out and whose media then stops, with no BYE (both phones lost
/// power, say): the daemon ends the recording when the media stops, with the session timer as
/// the reason, and keeps nothing of the call.
#[test]
fn an_expired_session_whose_media_stops_without_bye_is_ended_and_forgotten() {
    use std::net::UdpSocket;
    use support::raw::{media_addr, play, recv_sip, respond, sdp};

    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = pbx.local_addr().unwrap();
    let config =
        support::write_config_with_timeout(root.path(), pbx_addr, (47700, 47799), "1s", "");
    let mut daemon = Daemon::start(&config);
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = phone.local_addr().unwrap();
    let (phone_rtp, pbx_rtp) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let offer = sdp(port(&phone_rtp), port(&phone_rtp) + 1);
    let invite = format!(
        "INVITE sip:0295120000@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdead1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\nTo: <sip:0295120000@127.0.0.1>\r\n\
Call-ID: dead-session\r\nCSeq: 1 INVITE\r\nContact: <sip:0401234567@{me}>\r\nSupported: timer\r\n\
Session-Expires: 2;refresher=uac\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len(),
        proxy = daemon.sip
    );
    phone.send_to(invite.as_bytes(), daemon.sip).unwrap();
    let inv = recv_sip(&pbx, |m| m.method() == Some("INVITE"));
    let to_pbx_side = media_addr(inv.body());
    let answer = sdp(port(&pbx_rtp), port(&pbx_rtp) + 1);
    let ok = respond(&inv, 200, "OK", "b1", &format!("Contact: <sip:pbx@{pbx_addr}>\r\nRequire: timer\r\nSession-Expires: 2;refresher=uac\r\n"), &answer);
    pbx.send_to(ok.as_bytes(), daemon.sip).unwrap();
    let ok = recv_sip(&phone, |m| m.status() == Some(200));
    let to_phone_side = media_addr(ok.body());
    let ack = format!(
        "ACK sip:pbx@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdead2;rport\r\n\
Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=a1\r\n\
To: <sip:0295120000@127.0.0.1>;tag=b1\r\nCall-ID: dead-session\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        ok.header("Record-Route").unwrap()
    );
    phone.send_to(ack.as_bytes(), daemon.sip).unwrap();
    recv_sip(&pbx, |m| m.method() == Some("ACK"));

    // Three seconds of audio both ways (past the 2 s expiry), then silence and no BYE.
    let callee = std::thread::spawn(move || play(&pbx_rtp, to_pbx_side, CALLEE_HZ, 1, 150, 0xB1));
    play(&phone_rtp, to_phone_side, CALLER_HZ, 1, 150, 0xA1);
    callee.join().unwrap();

    let (_, v) = daemon.final_sidecar("dead-session");
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["end_reason"], "session_expired", "{v}");
    assert_eq!(v["ended_by"], "session_timer", "{v}");
    assert_eq!(v["events"][0]["type"], "session_expired", "{v}");
    let at = v["events"][0]["at_ms"].as_i64().unwrap();
    assert!((at - 2000).abs() <= 150, "expired at {at} ms: {v}");
    assert_eq!(v["legs"]["caller"]["packets"], 150, "{v}");
    assert_eq!(v["legs"]["callee"]["packets"], 150, "{v}");
    // Audio to the end of the media, then at most the media timeout of silence.
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    let secs = wav.duration_ms();
    assert!((3000..=4300).contains(&secs), "{secs} ms");
    tones_in(&wav, &[(0.2, 1.8), (2.2, 2.9)], "dead session");

    assert!(daemon.signal(libc::SIGTERM).success());
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("state at shutdown"))
        .expect("shutdown state logged");
    for freed in ["active_calls=0", "media_port_pairs=0", "dialogs=0"] {
        assert!(line.contains(freed), "{freed} expected: {line}");
    }
}

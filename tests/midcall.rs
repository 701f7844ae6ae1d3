//! Mid-call changes through the real daemon on 127.0.0.1, each checked on the recording and the
//! sidecar: a codec change PCMU → PCMA by re-INVITE, a port change by re-INVITE (the phone moves
//! its RTP to a new socket), and early media (183 with SDP and a tone before the 200 OK).

mod support;

use std::path::Path;
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallReport, CallSpec};
use support::{dominance, ms, setup, wavs, Daemon, Wav};

const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;
const EARLY_HZ: f64 = 600.0;
const RATE: u32 = 8000;

fn spec(talk: Duration) -> CallSpec {
    CallSpec::new("0401234567", "0295120000", Codec::Pcmu, CALLER_HZ, talk)
}

fn accept() -> Answer {
    Answer::Accept {
        ring: Duration::from_millis(200),
        tone_hz: CALLEE_HZ,
    }
}

/// Samples `[from_s, to_s)` of a channel.
fn span(ch: &[i16], from_s: f64, to_s: f64) -> &[i16] {
    support::span_at(ch, RATE, from_s, to_s)
}

/// Longest run of zero samples in `samples`, in milliseconds.
fn longest_zero_run_ms(samples: &[i16]) -> u64 {
    let (mut longest, mut run) = (0u64, 0u64);
    for &s in samples {
        run = if s == 0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest * 1000 / u64::from(RATE)
}

/// The one WAV of the call: it is the only one in the directory, its length matches the call
/// as the phone saw it (answer to BYE), and it is beside the sidecar.
fn the_wav(daemon: &Daemon, v: &serde_json::Value, report: &CallReport) -> Wav {
    let files = wavs(&daemon.dir);
    assert_eq!(files.len(), 1, "one WAV for the call: {files:?}");
    let path = Path::new(v["wav"]["path"].as_str().unwrap());
    assert_eq!(files[0], path);
    let wav = Wav::read(path);
    assert_eq!((wav.channels, wav.rate), (2, RATE));
    let media_ms = support::since_answer(report, report.bye_sent_at);
    let got = wav.duration_ms() as i64;
    assert!(
        (got - media_ms).abs() <= 100,
        "WAV {got} ms vs call {media_ms} ms"
    );
    wav
}

/// Each party's tone dominates its channel over each span.
fn tones_in(wav: &Wav, spans: &[(f64, f64)], test: &str) {
    for &(from, to) in spans {
        let left = dominance(span(&wav.left, from, to), RATE, CALLER_HZ, &[CALLEE_HZ]);
        let right = dominance(
            span(&wav.right, from, to),
            RATE,
            CALLEE_HZ,
            &[CALLER_HZ, EARLY_HZ],
        );
        eprintln!("{test}: dominance over [{from}, {to}] s: left {left:.0}, right {right:.0}");
        assert!(left > 50.0, "left 440 Hz over [{from}, {to}] s: {left}");
        assert!(right > 50.0, "right 1000 Hz over [{from}, {to}] s: {right}");
    }
}

#[test]
fn codec_change_pcmu_to_pcma_mid_call_is_one_wav_and_an_event() {
    let mut s = setup(accept(), (43600, 43649), "");
    let mut spec = spec(Duration::from_secs(4));
    spec.switch_codec = Some((Duration::from_secs(2), Codec::Pcma));
    let (report, uas) = s.answered(&spec);
    assert_eq!(report.switched_to, Some(Codec::Pcma), "the PBX took PCMA");
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    // Both sides sent about half the call in PCMA, and nothing was lost on the way.
    for rtp in [&caller_rtp, &callee_rtp] {
        assert!((95..=102).contains(&rtp.sent_after_codec_change), "{rtp:?}");
    }
    assert!(caller_rtp.received >= 190, "{caller_rtp:?}");
    assert!(callee_rtp.received >= 190, "{callee_rtp:?}");

    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["end_reason"], "bye_caller");
    // legs.*.codec is the first codec of the recording.
    assert_eq!(v["legs"]["caller"]["codec"], "PCMU", "{v}");
    assert_eq!(v["legs"]["callee"]["codec"], "PCMU", "{v}");
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v}");
    assert_eq!(v["legs"]["callee"]["lost"], 0, "{v}");
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64().unwrap(),
        caller_rtp.sent,
        "every packet of both codecs was decoded and placed"
    );

    // One codec_change event at ≈ 2 s, by the caller, to PCMA.
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["type"], "codec_change", "{e}");
    assert_eq!(e["by"], "caller", "{e}");
    assert_eq!(e["codec"], "PCMA", "{e}");
    let at = e["at_ms"].as_i64().unwrap();
    assert!((at - 2000).abs() <= 150, "codec_change at {at} ms");
    let sent = support::since_answer(&report, report.codec_sent_at);
    assert!(
        (at - sent).abs() <= 100,
        "event {at} ms, re-INVITE {sent} ms"
    );

    let wav = the_wav(&s.daemon, &v, &report);
    tones_in(&wav, &[(0.2, 1.8), (2.2, 3.8)], "codec change");
    // No hole in the audio where the codec changed.
    let end = wav.duration_ms() as f64 / 1000.0;
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        let run = longest_zero_run_ms(span(ch, 0.1, end - 0.1));
        eprintln!("codec change: {name} longest silence {run} ms; event at {at} ms, re-INVITE sent at {sent} ms");
        assert!(run <= 25, "{name}: {run} ms of silence");
    }
}

#[test]
fn port_change_mid_call_re_points_the_relay_without_a_gap() {
    let mut s = setup(accept(), (43650, 43699), "");
    let mut spec = spec(Duration::from_secs(4));
    spec.move_rtp = Some(Duration::from_secs(2));
    let (report, uas) = s.answered(&spec);
    let moved_to = report.moved_to.expect("the move was answered");
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    // The phone stopped for at most one packet time while the re-INVITE crossed.
    assert!(caller_rtp.paused <= 1, "{caller_rtp:?}");
    assert_eq!(caller_rtp.sent + caller_rtp.paused, 200, "{caller_rtp:?}");
    // The proxy sent the PBX's audio to the new port from then on (≈ 100 packets in 2 s)...
    assert!(
        caller_rtp.received_after_move >= 95,
        "moved to {moved_to}: {caller_rtp:?}"
    );
    assert!(caller_rtp.received >= 190, "{caller_rtp:?}");
    // ... and took the phone's packets from the new port (latching restarted).
    assert!(callee_rtp.received >= 190, "{callee_rtp:?}");

    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v}");
    assert_eq!(v["legs"]["callee"]["lost"], 0, "{v}");
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64().unwrap(),
        caller_rtp.sent
    );
    assert_eq!(
        v["events"].as_array().map(Vec::len),
        Some(0),
        "a port change is no event: {v}"
    );

    let wav = the_wav(&s.daemon, &v, &report);
    tones_in(&wav, &[(0.2, 1.8), (2.2, 3.8)], "port change");
    let moved_ms = support::since_answer(&report, report.move_sent_at);
    let around = moved_ms as f64 / 1000.0;
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        let run = longest_zero_run_ms(span(ch, around - 0.5, around + 0.5));
        eprintln!(
            "port change: {name} longest silence {run} ms around the move at {moved_ms} ms; \
             paused {} packet times, {} packets to the new port",
            caller_rtp.paused, caller_rtp.received_after_move
        );
        assert!(run <= 60, "{name}: {run} ms of silence around the move");
    }
}

#[test]
fn early_media_is_relayed_before_the_answer_and_recording_starts_at_answer() {
    let mut s = setup(
        Answer::EarlyMedia {
            early: Duration::from_secs(1),
            early_tone_hz: EARLY_HZ,
            tone_hz: CALLEE_HZ,
        },
        (43700, 43749),
        "",
    );
    let (report, uas) = s.answered(&spec(Duration::from_secs(3)));
    let early = uas.early_rtp.clone().expect("early media played");
    assert_eq!(early.sent, 50, "{early:?}");
    assert!(
        report.early_rtp_received >= 40,
        "the phone got {} early packets through the proxy",
        report.early_rtp_received
    );
    let answer_wait = report
        .answered_at
        .unwrap()
        .duration_since(report.invite_sent_at)
        .unwrap();
    assert!(
        answer_wait >= Duration::from_millis(1000),
        "{answer_wait:?}"
    );

    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["start_reason"], "answer");
    let t = &v["times"];
    assert!(ms(&t["answer"]) - ms(&t["invite"]) >= 1000, "{t}");
    assert_eq!(t["recording_start"], t["answer"]);
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v}");
    assert_eq!(v["legs"]["callee"]["codec"], "PCMU");
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{v}");

    // The WAV is the answered part only: as long as answer to BYE, the callee's 1000 Hz on the
    // right and not its early 600 Hz.
    let wav = the_wav(&s.daemon, &v, &report);
    tones_in(&wav, &[(0.2, 2.8)], "early media");
    let early_in_wav = dominance(
        span(&wav.right, 0.05, 2.9),
        RATE,
        EARLY_HZ,
        &[CALLEE_HZ, CALLER_HZ],
    );
    eprintln!(
        "early media: {} of {} early packets reached the phone; answer after {answer_wait:?}; \
         600 Hz dominance in the WAV {early_in_wav:.4}",
        report.early_rtp_received, early.sent
    );
    assert!(
        early_in_wav < 0.01,
        "early media in the WAV: {early_in_wav}"
    );
}

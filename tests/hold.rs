//! Hold and resume mid-call through the real daemon on 127.0.0.1: the phone puts the call on
//! hold with a re-INVITE (a=sendonly), the PBX answers a=recvonly, both stop their RTP (their RTP
//! clocks run on), and a second re-INVITE (a=sendrecv) resumes. The recording must stay one
//! aligned WAV with silence over the hold, and the sidecar must carry the hold/resume events.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome, Pbx, Phone};
use support::{dominance, write_config_with_timeout, Daemon, Wav};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;
const RATE: u32 = 8000;

/// Samples `[from_s, to_s)` of a channel.
fn span(ch: &[i16], from_s: f64, to_s: f64) -> &[i16] {
    support::span_at(ch, RATE, from_s, to_s)
}

#[test]
fn hold_and_resume_leave_aligned_silence_and_events() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let pbx = rt
        .block_on(Pbx::bind(SocketAddr::new(LOOPBACK, 0)))
        .unwrap();
    // A media timeout (1 s) shorter than the hold (1.5 s): a held call must not be ended by it.
    let config = write_config_with_timeout(root.path(), pbx.local_addr(), (43100, 43199), "1s", "");
    let daemon = Daemon::start(&config);
    let mut pbx = {
        let _guard = rt.enter();
        pbx.spawn(Arc::new(|_: &str| Answer::Accept {
            ring: Duration::from_millis(200),
            tone_hz: CALLEE_HZ,
        }))
    };
    let spec = CallSpec {
        hold: Some((Duration::from_millis(1000), Duration::from_millis(1500))),
        ..CallSpec::new(
            "0401234567",
            "0295120000",
            Codec::Pcmu,
            CALLER_HZ,
            Duration::from_secs(4),
        )
    };
    let proxy = daemon.sip;
    let report = rt.block_on(async {
        let phone = Phone::bind(LOOPBACK).await.unwrap();
        phone.call(proxy, &spec).await.unwrap()
    });
    assert_eq!(report.outcome, Outcome::Answered);
    let uas = rt
        .block_on(pbx.next_report(Duration::from_secs(10)))
        .expect("PBX saw the call end");
    assert_eq!(uas.outcome, Outcome::Answered);
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    // Both sides really paused for the hold (75 packet times) and talked around it.
    assert!((70..=80).contains(&caller_rtp.paused), "{caller_rtp:?}");
    assert!((70..=80).contains(&callee_rtp.paused), "{callee_rtp:?}");
    assert!(caller_rtp.received > 100 && callee_rtp.received > 100);

    let (_, v) = daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(
        v["end_reason"], "bye_caller",
        "the hold did not end the call: {v}"
    );

    // Events: hold at ≈1 s and resume at ≈2.5 s from the recording start, both by the caller.
    let events = v["events"].as_array().expect("events array");
    assert_eq!(events.len(), 2, "{events:?}");
    let answered = report.answered_at.unwrap();
    for (event, kind, at_ms) in [(&events[0], "hold", 1000), (&events[1], "resume", 2500)] {
        assert_eq!(event["type"], kind, "{events:?}");
        assert_eq!(event["by"], "caller", "{events:?}");
        let got = event["at_ms"].as_i64().unwrap();
        assert!((got - at_ms).abs() <= 150, "{kind} at {got} ms: {events:?}");
    }
    // The phone's own clock agrees on when it sent the re-INVITEs.
    let sent_ms = |t: Option<std::time::SystemTime>| {
        t.unwrap().duration_since(answered).unwrap().as_millis() as i64
    };
    let hold_sent = sent_ms(report.hold_sent_at);
    let resume_sent = sent_ms(report.resume_sent_at);
    assert!((events[0]["at_ms"].as_i64().unwrap() - hold_sent).abs() <= 100);
    assert!((events[1]["at_ms"].as_i64().unwrap() - resume_sent).abs() <= 100);

    // A hold is not loss: sequence numbers ran on without gaps on both legs.
    assert_eq!(v["legs"]["caller"]["lost"], 0, "{v}");
    assert_eq!(v["legs"]["callee"]["lost"], 0, "{v}");
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64().unwrap(),
        caller_rtp.sent
    );

    // One WAV as long as the call, silent on both channels over the hold, tones around it.
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    assert_eq!((wav.channels, wav.rate), (2, RATE));
    let media_ms = report
        .bye_sent_at
        .unwrap()
        .duration_since(answered)
        .unwrap()
        .as_millis() as i64;
    let got = wav.duration_ms() as i64;
    assert!(
        (got - media_ms).abs() <= 100,
        "WAV {got} ms vs call {media_ms} ms"
    );
    for (name, ch) in [("left", &wav.left), ("right", &wav.right)] {
        // The silent run around the middle of the hold, for the log.
        let mid = (1.75 * f64::from(RATE)) as usize;
        let first = ch[..mid].iter().rposition(|&s| s != 0).map_or(0, |i| i + 1);
        let last = ch[mid..]
            .iter()
            .position(|&s| s != 0)
            .map_or(ch.len(), |i| mid + i);
        eprintln!(
            "hold test: {name} silent from {} to {} ms",
            first * 1000 / RATE as usize,
            last * 1000 / RATE as usize
        );
        let held = span(ch, 1.15, 2.35);
        assert!(
            held.iter().all(|&s| s == 0),
            "{name} not silent on hold: {} non-zero samples",
            held.iter().filter(|&&s| s != 0).count()
        );
    }
    eprintln!(
        "hold test: events {events:?}; re-INVITEs sent at {hold_sent}/{resume_sent} ms; \
         WAV {got} ms vs call {media_ms} ms; paused {}/{} packet times",
        caller_rtp.paused, callee_rtp.paused
    );
    for (from, to) in [(0.2, 0.9), (2.7, 3.8)] {
        let left = dominance(span(&wav.left, from, to), RATE, CALLER_HZ, &[CALLEE_HZ]);
        let right = dominance(span(&wav.right, from, to), RATE, CALLEE_HZ, &[CALLER_HZ]);
        eprintln!("hold test: dominance over [{from}, {to}] s: left {left:.0}, right {right:.0}");
        assert!(left > 50.0, "left 440 Hz over [{from}, {to}] s: {left}");
        assert!(right > 50.0, "right 1000 Hz over [{from}, {to}] s: {right}");
    }
}

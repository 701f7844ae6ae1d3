//! End-to-end calls through the real daemon on 127.0.0.1: a phone calls through the proxy to a PBX
//! user agent; each side plays its own tone; the WAV and the sidecar are checked by content.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome, Phone};
use support::{dominance, ms, setup, sha256_hex, write_config, Daemon, Setup, Wav};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;

fn spec(codec: Codec, talk: Duration) -> CallSpec {
    CallSpec {
        from_display: Some("Test Caller".into()),
        ..CallSpec::new("0401234567", "0295120000", codec, CALLER_HZ, talk)
    }
}

fn accept() -> Answer {
    Answer::Accept {
        ring: Duration::from_millis(200),
        tone_hz: CALLEE_HZ,
    }
}

/// The full check of an answered call's recording and sidecar.
fn check_recorded_call(setup: &mut Setup, codec: Codec, talk: Duration) {
    let report = setup.call(&spec(codec, talk));
    assert_eq!(report.outcome, Outcome::Answered);
    let uas = setup.pbx_report();
    assert_eq!(uas.outcome, Outcome::Answered);
    // Media really crossed the proxy both ways.
    let caller_rtp = report.rtp.clone().expect("caller RTP stats");
    let callee_rtp = uas.rtp.clone().expect("callee RTP stats");
    assert!(
        caller_rtp.received > 100,
        "caller received {} packets",
        caller_rtp.received
    );
    assert!(
        callee_rtp.received > 100,
        "callee received {} packets",
        callee_rtp.received
    );

    let (sidecar_path, v) = setup.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["state"], "complete");
    assert_eq!(v["sip_call_id"], report.call_id.as_str());
    assert_eq!(v["caller_number"], "0401234567");
    assert_eq!(v["called_number"], "0295120000");
    assert_eq!(v["direction"], "inbound");
    assert_eq!(v["end_reason"], "bye_caller");
    assert_eq!(v["ended_by"], "caller");
    assert_eq!(v["start_reason"], "answer");
    assert!(v["not_recorded_reason"].is_null());
    assert_eq!(v["legs"]["caller"]["codec"], codec.name());
    assert_eq!(v["legs"]["callee"]["codec"], codec.name());
    assert_eq!(v["legs"]["caller"]["lost"], 0);

    // Times in order.
    let t = &v["times"];
    let (invite, answer, rec_start, rec_end, end) = (
        ms(&t["invite"]),
        ms(&t["answer"]),
        ms(&t["recording_start"]),
        ms(&t["recording_end"]),
        ms(&t["end"]),
    );
    assert!(
        invite <= answer && answer <= rec_start && rec_start < rec_end && rec_end <= end,
        "{t}"
    );
    let duration_ms = v["duration_ms"].as_u64().unwrap();
    // Both times are truncated to milliseconds, the duration is not.
    assert!(
        (i128::from(duration_ms) - (end - answer)).abs() <= 1,
        "{duration_ms} vs {t}"
    );

    // The WAV: beside the sidecar, stereo 8 kHz, the right tone on each side, the right length.
    let wav_path = std::path::PathBuf::from(v["wav"]["path"].as_str().unwrap());
    assert_eq!(wav_path.with_extension("json"), sidecar_path);
    let wav = Wav::read(&wav_path);
    assert_eq!(wav.channels, 2);
    assert_eq!(wav.rate, 8000);
    assert!(
        dominance(&wav.left, 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0,
        "left is the caller's 440 Hz"
    );
    assert!(
        dominance(&wav.right, 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0,
        "right is the callee's 1000 Hz"
    );
    // Media time: from answer to the caller's BYE as the phone saw it.
    let answered = report.answered_at.unwrap();
    let bye = report.bye_sent_at.unwrap();
    let media_ms = bye.duration_since(answered).unwrap().as_millis() as i64;
    let got = wav.duration_ms() as i64;
    assert!(
        (got - media_ms).abs() <= 100,
        "WAV {got} ms vs media {media_ms} ms"
    );
    assert_eq!(v["wav"]["duration_ms"].as_u64().unwrap() as i64, got);
    assert_eq!(v["wav"]["sample_rate"], 8000);
    assert_eq!(v["wav"]["channels"], 2);
    assert_eq!(
        v["wav"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&wav_path).unwrap().len()
    );
    assert_eq!(v["wav"]["sha256"], sha256_hex(&wav_path).as_str());
    // Every packet the caller sent during the call reached the recording, none lost.
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64().unwrap(),
        caller_rtp.sent
    );
    assert_eq!(caller_rtp.sent, talk.as_millis() as u64 / 20);
}

#[test]
fn pcmu_call_is_recorded_caller_left_callee_right() {
    let mut s = setup(accept(), (42000, 42099), "");
    check_recorded_call(&mut s, Codec::Pcmu, Duration::from_secs(3));
}

#[test]
fn pcma_call_is_recorded_caller_left_callee_right() {
    let mut s = setup(accept(), (42100, 42199), "");
    check_recorded_call(&mut s, Codec::Pcma, Duration::from_secs(3));
}

#[test]
fn rejected_call_leaves_no_wav_and_a_sidecar_saying_why() {
    let mut s = setup(
        Answer::Reject {
            code: 486,
            reason: "Busy Here".into(),
        },
        (42200, 42299),
        "",
    );
    let report = s.call(&spec(Codec::Pcmu, Duration::from_secs(1)));
    assert_eq!(report.outcome, Outcome::Rejected(486));
    assert_eq!(s.pbx_report().outcome, Outcome::Rejected(486));
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "not_recorded");
    assert_eq!(v["end_reason"], "rejected");
    assert_eq!(v["not_recorded_reason"], "not answered: 486 Busy Here");
    assert!(v["wav"].is_null());
    assert!(v["times"]["answer"].is_null());
    assert!(v["times"]["invite"].is_string() && v["times"]["end"].is_string());
    assert_eq!(v["caller_number"], "0401234567");
    assert!(
        support::wavs(&s.daemon.dir).is_empty(),
        "no WAV for a rejected call"
    );
}

#[test]
fn cancelled_call_leaves_no_wav_and_a_sidecar_saying_why() {
    let mut s = setup(Answer::RingUntilCancel, (42300, 42399), "");
    let mut call = spec(Codec::Pcmu, Duration::from_secs(1));
    call.cancel_after_ringing = true;
    let report = s.call(&call);
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(s.pbx_report().outcome, Outcome::Cancelled);
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "not_recorded");
    assert_eq!(v["end_reason"], "cancel");
    assert_eq!(v["ended_by"], "caller");
    assert_eq!(
        v["not_recorded_reason"],
        "cancelled by the caller before answer"
    );
    assert!(v["wav"].is_null());
    assert!(
        support::wavs(&s.daemon.dir).is_empty(),
        "no WAV for a cancelled call"
    );
}

#[test]
fn lost_caller_packets_keep_the_wav_length_and_are_counted() {
    let mut s = setup(accept(), (42400, 42499), "");
    let mut call = spec(Codec::Pcmu, Duration::from_secs(3));
    call.drop_every = Some(5);
    let report = s.call(&call);
    assert_eq!(report.outcome, Outcome::Answered);
    s.pbx_report();
    let rtp = report.rtp.clone().unwrap();
    assert!(
        rtp.dropped >= 25,
        "the phone dropped {} packets",
        rtp.dropped
    );
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete");
    let lost = v["legs"]["caller"]["lost"].as_u64().unwrap();
    let packets = v["legs"]["caller"]["packets"].as_u64().unwrap();
    // Every dropped packet but possibly the last one (after which nothing shows the gap).
    assert!(
        lost + 1 >= rtp.dropped && lost <= rtp.dropped,
        "lost {lost}, dropped {}",
        rtp.dropped
    );
    assert!(
        packets + rtp.dropped >= rtp.sent - 2,
        "packets {packets} + dropped {} vs sent {}",
        rtp.dropped,
        rtp.sent
    );
    assert_eq!(v["legs"]["callee"]["lost"], 0);

    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    let media_ms = report
        .bye_sent_at
        .unwrap()
        .duration_since(report.answered_at.unwrap())
        .unwrap()
        .as_millis() as i64;
    assert!(
        (wav.duration_ms() as i64 - media_ms).abs() <= 100,
        "WAV keeps its length"
    );
    // Each dropped packet is one hole of 20 ms (160 samples) of silence on the left, wherever it
    // falls; the tone itself never decodes to a run of zeros that long.
    let mut holes = 0;
    let mut run = 0;
    for &x in wav.left.iter().chain(std::iter::once(&1)) {
        if x == 0 {
            run += 1;
        } else {
            // 161 when the tone itself crosses zero next to the hole.
            if run == 160 || run == 161 {
                holes += 1;
            }
            run = 0;
        }
    }
    assert!(
        holes + 1 >= rtp.dropped && holes <= rtp.dropped,
        "{holes} holes of 20 ms, {} dropped",
        rtp.dropped
    );
    assert!(dominance(&wav.left, 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0);
    assert!(dominance(&wav.right, 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
}

#[test]
fn sigterm_finalises_active_recordings_as_shutdown() {
    let mut s = setup(accept(), (42500, 42599), "");
    let proxy = s.daemon.sip;
    let call = spec(Codec::Pcmu, Duration::from_secs(6));
    let running = s.rt.spawn(async move {
        let phone = Phone::bind(LOOPBACK).await.unwrap();
        phone.call(proxy, &call).await
    });
    std::thread::sleep(Duration::from_millis(2500));
    let status = s.daemon.signal(libc::SIGTERM);
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let wavs = support::wavs(&s.daemon.dir);
    assert_eq!(wavs.len(), 1);
    let sidecar = wavs[0].with_extension("json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(v["state"], "complete");
    assert_eq!(v["end_reason"], "shutdown");
    assert_eq!(v["ended_by"], "shutdown");
    assert_eq!(v["wav"]["sha256"], sha256_hex(&wavs[0]).as_str());
    let wav = Wav::read(&wavs[0]);
    assert!(
        wav.duration_ms() > 1500 && wav.duration_ms() < 3500,
        "{} ms",
        wav.duration_ms()
    );
    assert!(dominance(&wav.left, 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0);
    assert!(dominance(&wav.right, 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
    // The phone's call fails or ends on its own; it must not hang the test.
    let _ =
        s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), running).await });
}

#[test]
fn sigkill_mid_call_leaves_a_playable_wav_that_restart_recovers() {
    let mut s = setup(accept(), (42600, 42699), "header_update = \"1s\"\n");
    let proxy = s.daemon.sip;
    let call = spec(Codec::Pcmu, Duration::from_secs(8));
    let running = s.rt.spawn(async move {
        let phone = Phone::bind(LOOPBACK).await.unwrap();
        phone.call(proxy, &call).await
    });
    std::thread::sleep(Duration::from_millis(4000));
    s.daemon.signal(libc::SIGKILL);
    let wavs = support::wavs(&s.daemon.dir);
    assert_eq!(wavs.len(), 1);
    // As the crash left it: a valid WAV holding the audio up to the last header update
    // (at least 2 s of the about 3.7 s recorded before the kill, with 1 s updates).
    let wav = Wav::read(&wavs[0]);
    assert_eq!(wav.channels, 2);
    assert!(
        wav.duration_ms() >= 2000,
        "{} ms playable after SIGKILL",
        wav.duration_ms()
    );
    assert!(dominance(&wav.left, 8000, CALLER_HZ, &[CALLEE_HZ]) > 50.0);
    assert!(dominance(&wav.right, 8000, CALLEE_HZ, &[CALLER_HZ]) > 50.0);
    let sidecar = wavs[0].with_extension("json");
    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(before["state"], "recording");

    // Restart on the same directory: the recording is finalised as recovered.
    let restarted = Daemon::start(&s.daemon.config);
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(after["state"], "recovered");
    assert_eq!(after["wav"]["sha256"], sha256_hex(&wavs[0]).as_str());
    let recovered = Wav::read(&wavs[0]);
    assert!(recovered.duration_ms() >= wav.duration_ms());
    assert_eq!(
        after["wav"]["duration_ms"].as_u64().unwrap(),
        recovered.duration_ms()
    );
    drop(restarted);
    let _ =
        s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), running).await });
}

#[test]
fn bad_config_stops_start_up_with_file_line_and_key() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("bad.toml");
    std::fs::write(
        &path,
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\npbx = \"udp:127.0.0.1:5070\"\n[media]\nadvertise = \"127.0.0.1\"\nports = \"40000-30000\"\n[recording]\ndir = \"/tmp/x\"\n",
    )
    .unwrap();
    for args in [vec!["run", "--config"], vec!["check-config"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recproxy"))
            .args(&args)
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}:6:", path.display())), "{err}");
        assert!(err.contains("media.ports"), "{err}");
    }
    let good = write_config(
        root.path(),
        "127.0.0.1:5070".parse().unwrap(),
        (30000, 30099),
        "",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recproxy"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

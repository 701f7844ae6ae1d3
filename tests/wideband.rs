//! Wideband calls through the real daemon: G.722 and Opus calls are recorded at 16 kHz with
//! each party's tone on its channel, including a 5 kHz tone that no 8 kHz recording could hold;
//! a G.722 call that switches to PCMU midway stays one 16 kHz WAV; a PCMU call stays 8 kHz.

mod support;

use std::path::Path;
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome};
use support::{dominance, setup, Setup, Wav};

const CALLER_HZ: f64 = 440.0;
/// Above the 4 kHz an 8 kHz recording can carry.
const CALLEE_HZ: f64 = 5000.0;

fn accept() -> Answer {
    Answer::Accept {
        ring: Duration::from_millis(100),
        tone_hz: CALLEE_HZ,
    }
}

/// Places `spec` and returns the sidecar and the WAV of its recording.
fn record(s: &mut Setup, spec: &CallSpec) -> (serde_json::Value, Wav) {
    let report = s.call(spec);
    assert_eq!(report.outcome, Outcome::Answered);
    let uas = s.pbx_report();
    assert_eq!(uas.outcome, Outcome::Answered);
    let (_, v) = s.daemon.final_sidecar(&report.call_id);
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    (v, wav)
}

/// Samples of `ch` between `from_s` and `to_s` seconds at `rate`.
fn span(ch: &[i16], rate: u32, from_s: f64, to_s: f64) -> &[i16] {
    let r = f64::from(rate);
    &ch[(from_s * r) as usize..((to_s * r) as usize).min(ch.len())]
}

fn assert_tones(wav: &Wav, from_s: f64, to_s: f64, what: &str) {
    let l = dominance(
        span(&wav.left, wav.rate, from_s, to_s),
        wav.rate,
        CALLER_HZ,
        &[CALLEE_HZ],
    );
    let r = dominance(
        span(&wav.right, wav.rate, from_s, to_s),
        wav.rate,
        CALLEE_HZ,
        &[CALLER_HZ],
    );
    assert!(
        l > 50.0 && r > 50.0,
        "{what} {from_s}-{to_s} s: left {l:.1}, right {r:.1}"
    );
}

fn wideband_call(codec: Codec, ports: (u16, u16)) {
    let mut s = setup(accept(), ports, "");
    let spec = CallSpec::new(
        "0401234567",
        "0295120000",
        codec,
        CALLER_HZ,
        Duration::from_secs(3),
    );
    let (v, wav) = record(&mut s, &spec);
    assert_eq!(v["state"], "complete", "{v:#}");
    assert_eq!(v["wav"]["sample_rate"], 16000, "{v:#}");
    assert_eq!(wav.rate, 16000);
    for leg in ["caller", "callee"] {
        assert_eq!(v["legs"][leg]["codec"], codec.name(), "{v:#}");
        assert_eq!(v["legs"][leg]["lost"], 0, "{v:#}");
    }
    let ms = wav.duration_ms();
    assert!((2900..=3200).contains(&ms), "{ms} ms");
    assert_tones(&wav, 0.3, 2.7, codec.name());
}

#[test]
fn a_g722_call_is_recorded_wideband() {
    wideband_call(Codec::G722, (48700, 48749));
}

#[test]
fn an_opus_call_is_recorded_wideband() {
    wideband_call(Codec::Opus, (48750, 48799));
}

#[test]
fn a_g722_call_that_changes_to_pcmu_stays_one_16_khz_wav_and_a_pcmu_call_stays_8_khz() {
    let mut s = setup(accept(), (48800, 48899), "");
    let mut spec = CallSpec::new(
        "0401234567",
        "0295120000",
        Codec::G722,
        CALLER_HZ,
        Duration::from_secs(4),
    );
    spec.switch_codec = Some((Duration::from_secs(2), Codec::Pcmu));
    let (v, wav) = record(&mut s, &spec);
    assert_eq!(v["wav"]["sample_rate"], 16000, "{v:#}");
    let changes: Vec<&serde_json::Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "codec_change")
        .collect();
    assert_eq!(changes.len(), 1, "{v:#}");
    assert_eq!(changes[0]["codec"], "PCMU");
    let at = changes[0]["at_ms"].as_f64().unwrap() / 1000.0;
    // The caller's tone goes on across the change; the callee's 5 kHz tone is wideband only
    // while G.722 lasts (G.711 cannot carry it), so only the caller side is checked after.
    assert_tones(&wav, 0.3, at - 0.2, "before the change");
    let after = span(&wav.left, wav.rate, at + 0.3, 3.7);
    assert!(
        dominance(after, wav.rate, CALLER_HZ, &[CALLEE_HZ]) > 50.0,
        "caller's tone after the change"
    );
    assert!(
        after.iter().filter(|&&x| x == 0).count() < after.len() / 10,
        "audio after the change"
    );

    // A narrowband call on the same daemon.
    let spec = CallSpec::new(
        "0401234568",
        "0295120001",
        Codec::Pcmu,
        CALLER_HZ,
        Duration::from_secs(2),
    );
    let (v, wav) = record(&mut s, &spec);
    assert_eq!(v["wav"]["sample_rate"], 8000, "{v:#}");
    assert_eq!(wav.rate, 8000);
    let left = span(&wav.left, 8000, 0.3, 1.7);
    assert!(dominance(left, 8000, CALLER_HZ, &[1000.0]) > 50.0);
}

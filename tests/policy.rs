//! Per-service recording policy through the real daemon: three services (one that records
//! nothing, one that samples, a default that records all), one call to each; each sidecar names
//! its service and decision, and only the recorded call leaves a WAV (with both tones in it).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome};
use support::{dominance, setup, sidecars_of, wavs, Setup, Wav};

const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 1000.0;

/// Appended after `[recording]`: the policy and the three services, in matching order.
const SERVICES: &str = "
[policy]
sample_seed = \"policy-test-seed\"

[[service]]
name = \"closed-line\"
tenant = \"acme\"
numbers = [\"0295120001\"]
record = \"none\"

[[service]]
name = \"survey\"
tenant = \"acme\"
numbers = [\"0295129*\"]
record = { sample = 0.0 }

[[service]]
name = \"front-desk\"
tenant = \"acme\"
record = \"all\"
";

/// Places a call to `called` that talks for a second and ends with the caller's BYE, checks that
/// it went through with media both ways, and returns its final sidecar (end reason written).
fn call(s: &mut Setup, called: &str) -> serde_json::Value {
    let spec = CallSpec::new(
        "0401234567",
        called,
        Codec::Pcmu,
        CALLER_HZ,
        Duration::from_secs(1),
    );
    let report = s.call(&spec);
    assert_eq!(report.outcome, Outcome::Answered, "{called}");
    let uas = s.pbx_report();
    assert_eq!(uas.outcome, Outcome::Answered, "{called}");
    // Policy decides about the recording only: the call and its media go through regardless.
    let received = report.rtp.as_ref().map_or(0, |r| r.received);
    assert!(
        received > 25,
        "{called}: caller received {received} packets"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = sidecars_of(&s.daemon.dir, &report.call_id)
            .into_iter()
            .find(|v| v["state"] != "recording" && v["end_reason"].is_string());
        if let Some(v) = done {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no final sidecar for {called}; log:\n{}",
            s.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No WAV of this recording exists anywhere under the recordings directory.
fn assert_no_wav(s: &Setup, v: &serde_json::Value) {
    let id = v["recording_id"].as_str().unwrap_or_default();
    let own: Vec<PathBuf> = wavs(&s.daemon.dir)
        .into_iter()
        .filter(|p| p.file_stem().is_some_and(|f| f == id))
        .collect();
    assert!(
        own.is_empty(),
        "a call left out by policy has a WAV: {own:?}"
    );
}

#[test]
fn each_service_gets_its_decision_and_only_recorded_calls_leave_a_wav() {
    let mut s = setup(
        Answer::Accept {
            ring: Duration::from_millis(100),
            tone_hz: CALLEE_HZ,
        },
        (49100, 49199),
        SERVICES,
    );

    // record = "none" by exact number.
    let none = call(&mut s, "0295120001");
    assert_eq!(
        none["service"],
        serde_json::json!({
            "name": "closed-line",
            "tenant": "acme",
            "decision": "policy_none",
            "reason": "service \"closed-line\" records no calls (record = \"none\")",
        })
    );
    assert_eq!(none["state"], "not_recorded");
    assert_eq!(none["not_recorded_reason"], none["service"]["reason"]);
    assert_eq!(none["called_number"], "0295120001");
    assert!(none["wav"].is_null() && none["start_reason"].is_null());
    assert!(none["times"]["answer"].is_string() && none["times"]["recording_start"].is_null());
    assert_eq!(none["end_reason"], "bye_caller");
    assert_no_wav(&s, &none);

    // record = { sample = 0.0 } by prefix: every call is sampled out.
    let sampled = call(&mut s, "02951290");
    assert_eq!(
        sampled["service"],
        serde_json::json!({
            "name": "survey",
            "tenant": "acme",
            "decision": "sampled_out",
            "reason": "sampled out: service \"survey\" records a share of 0 of its calls, \
                       chosen by Call-ID and policy.sample_seed",
        })
    );
    assert_eq!(sampled["state"], "not_recorded");
    assert_eq!(sampled["not_recorded_reason"], sampled["service"]["reason"]);
    assert!(sampled["wav"].is_null());
    assert_eq!(sampled["end_reason"], "bye_caller");
    assert_no_wav(&s, &sampled);

    // Anything else: the default service, recorded as without services.
    let recorded = call(&mut s, "0295120000");
    assert_eq!(
        recorded["service"],
        serde_json::json!({
            "name": "front-desk",
            "tenant": "acme",
            "decision": "recorded",
            "reason": null,
        })
    );
    assert_eq!(recorded["state"], "complete");
    assert!(recorded["not_recorded_reason"].is_null());
    assert_eq!(recorded["start_reason"], "answer");
    assert_eq!(recorded["end_reason"], "bye_caller");
    let wav_path = PathBuf::from(recorded["wav"]["path"].as_str().unwrap_or_default());
    let wav = Wav::read(&wav_path);
    assert!(
        dominance(&wav.left, wav.rate, CALLER_HZ, &[CALLEE_HZ]) > 50.0,
        "left is the caller's 440 Hz"
    );
    assert!(
        dominance(&wav.right, wav.rate, CALLEE_HZ, &[CALLER_HZ]) > 50.0,
        "right is the callee's 1000 Hz"
    );
    assert_eq!(
        wavs(&s.daemon.dir),
        vec![wav_path],
        "the recorded call's WAV is the only one"
    );
}

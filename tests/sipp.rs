//! Interoperability with SIPp (Debian package `sip-tester`), an independent SIP stack: SIPp's
//! built-in `uac_pcap` scenario calls through the real daemon to a SIPp UAS
//! (`fixtures/sipp/uas_pcap.xml`); both play PCMA audio from `fixtures/pcap/g711a.pcap`. The call
//! must complete for SIPp and the recording must hold audio on both channels.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use recproxy::demo::tone::rms;
use support::sipp::{free_udp_port, sipp, wait};
use support::{sidecars, write_config, Daemon, Wav};

#[test]
fn sipp_uac_and_uas_with_pcap_audio_through_the_proxy_are_recorded_on_both_channels() {
    let root = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // SIPp finds the audio as pcap/<file> relative to its working directory.
    std::fs::create_dir_all(root.path().join("pcap")).unwrap();
    for f in ["g711a.pcap", "dtmf_2833_1.pcap"] {
        std::fs::copy(
            manifest.join("fixtures/pcap").join(f),
            root.path().join("pcap").join(f),
        )
        .unwrap();
    }
    let pbx_port = free_udp_port();
    let config = write_config(
        root.path(),
        format!("127.0.0.1:{pbx_port}").parse().unwrap(),
        (43400, 43499),
        "",
    );
    let daemon = Daemon::start(&config);
    let s = |v: &str| v.to_string();

    let uas = sipp(
        root.path(),
        &[
            s("-sf"),
            manifest
                .join("fixtures/sipp/uas_pcap.xml")
                .display()
                .to_string(),
            s("-i"),
            s("127.0.0.1"),
            s("-p"),
            pbx_port.to_string(),
            s("-mi"),
            s("127.0.0.1"),
            s("-mp"),
            free_udp_port().to_string(),
            s("-m"),
            s("1"),
            s("-nostdin"),
            s("-timeout"),
            s("40s"),
            s("-timeout_error"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        root.path(),
        &[
            s("-sn"),
            s("uac_pcap"),
            daemon.sip.to_string(),
            s("-s"),
            s("0295120000"),
            s("-i"),
            s("127.0.0.1"),
            s("-p"),
            free_udp_port().to_string(),
            s("-mi"),
            s("127.0.0.1"),
            s("-mp"),
            free_udp_port().to_string(),
            s("-m"),
            s("1"),
            s("-nostdin"),
            s("-timeout"),
            s("40s"),
            s("-timeout_error"),
        ],
    );
    let uac_status = wait(uac, "sipp uac", Duration::from_secs(60));
    let uas_status = wait(uas, "sipp uas", Duration::from_secs(20));
    assert!(
        uac_status.success(),
        "SIPp's uac_pcap call failed: {uac_status:?}\n{}",
        daemon.log_text()
    );
    assert!(
        uas_status.success(),
        "SIPp's UAS failed: {uas_status:?}\n{}",
        daemon.log_text()
    );

    // One call, recorded, PCMA both ways.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let done: Vec<serde_json::Value> = sidecars(&daemon.dir)
            .iter()
            .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
            .filter(|v: &serde_json::Value| v["state"] != "recording")
            .collect();
        if let [one] = done.as_slice() {
            break one.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single final sidecar: {done:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["state"], "complete");
    assert_eq!(v["called_number"], "0295120000");
    assert_eq!(v["end_reason"], "bye_caller");
    assert_eq!(v["legs"]["caller"]["codec"], "PCMA");
    assert_eq!(v["legs"]["callee"]["codec"], "PCMA");
    // g711a.pcap holds 236 RTP packets (7 s of 30 ms PCMA): every one of them, each way, reached
    // the recording, and none is missing by sequence number. The caller then keys a '1' from
    // dtmf_2833_1.pcap: 10 RFC 2833 packets more, one digit in the events.
    for (leg, packets) in [("caller", 246), ("callee", 236)] {
        assert_eq!(v["legs"][leg]["packets"], packets, "{leg}");
        assert_eq!(v["legs"][leg]["lost"], 0, "{leg}");
    }
    let digits: Vec<&serde_json::Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "dtmf")
        .collect();
    assert_eq!(digits.len(), 1, "{v:#}");
    assert_eq!(digits[0]["digit"], "1");
    assert_eq!(digits[0]["by"], "caller");
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    // uac_pcap talks about 9 s (7 s of audio, then a pause, a DTMF digit and BYE).
    assert!(
        wav.duration_ms() > 8000 && wav.duration_ms() < 11_000,
        "{} ms",
        wav.duration_ms()
    );
    let mid = 8000..(6 * 8000);
    let (left, right) = (rms(&wav.left[mid.clone()]), rms(&wav.right[mid]));
    assert!(
        left > 200.0 && right > 200.0,
        "audio on both channels: rms left {left:.0}, right {right:.0}"
    );
}

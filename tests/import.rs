//! `recproxy import` on real captures (fixtures/pcap/, see SOURCE.md there): the calls, their
//! sidecars and their WAVs, against figures read from the captures with tshark 4.0.
//!
//! How the expected figures were obtained:
//! - times: `tshark -r FILE -Y sip -T fields -e frame.time_relative -e sip.Method
//!   -e sip.Status-Code -e sip.Call-ID` (seconds from the capture's first packet);
//! - RTP: `tshark -r FILE -o rtp.heuristic_rtp:TRUE -q -z rtp,streams` for packet counts, and
//!   per packet `-Y rtp -T fields -e frame.time_relative -e ip.src -e udp.srcport -e ip.dst
//!   -e udp.dstport -e rtp.p_type`, merged into spans of audio packets (comfort noise and
//!   telephone-events left out, a gap of more than 1.6 packet times splits a span), made
//!   relative to the answer and ended one packet time after the span's last packet;
//! - digits: `tshark -r SIP_DTMF2.cap -o rtp.heuristic_rtp:TRUE
//!   -o rtpevent.event_payload_type_value:96 -Y rtpevent -T fields -e rtpevent.event_id
//!   -e rtpevent.end_of_event`.
//!
//! The WAV of a recorded call lasts from the answer to the end (BYE), as the daemon records it;
//! a call whose end is not in the capture ends at its last packet.

use std::path::{Path, PathBuf};
use std::process::Command;

use recproxy::call::metadata::{read_sidecar, CallRecord, Decision, RecordState};
use recproxy::import::{import, ImportReport};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pcap")
        .join(name)
}

fn run(name: &str) -> (ImportReport, Vec<CallRecord>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let report = import(&fixture(name), out.path()).unwrap();
    let records = report
        .calls
        .iter()
        .map(|c| read_sidecar(&c.sidecar).unwrap())
        .collect();
    (report, records, out)
}

/// Spans of audio on one channel, in seconds from the answer.
type Spans = &'static [(f64, f64)];

struct Wav {
    rate: u32,
    left: Vec<i16>,
    right: Vec<i16>,
}

fn read_wav(record: &CallRecord) -> Wav {
    let wav = record.wav.as_ref().expect("a recorded call has a WAV");
    let mut reader = hound::WavReader::open(&wav.path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (2, 16));
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    Wav {
        rate: spec.sample_rate,
        left: samples.iter().step_by(2).copied().collect(),
        right: samples.iter().skip(1).step_by(2).copied().collect(),
    }
}

/// RMS of each 100 ms window.
fn rms_windows(channel: &[i16], rate: u32) -> Vec<f64> {
    channel
        .chunks(rate as usize / 10)
        .map(|w| (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / w.len() as f64).sqrt())
        .collect()
}

/// A window that reaches at least 20 ms into a span (less its 40 ms edges) has sound; a window
/// more than 60 ms from every span is digital silence. Windows in between are not judged
/// (packet placement is exact only to about a packet).
fn check_channel(name: &str, channel: &[i16], rate: u32, spans: Spans) {
    let windows = rms_windows(channel, rate);
    let (mut loud, mut silent) = (0, 0);
    for (i, rms) in windows.iter().enumerate() {
        let (from, to) = (i as f64 / 10.0, (i + 1) as f64 / 10.0);
        let inside = spans
            .iter()
            .any(|&(a, b)| to.min(b - 0.04) - from.max(a + 0.04) >= 0.02);
        let outside = spans
            .iter()
            .all(|&(a, b)| to <= a - 0.06 || from >= b + 0.06);
        if inside {
            assert!(*rms > 0.0, "{name}: window {from:.1}-{to:.1} s is silent");
            loud += 1;
        } else if outside {
            assert_eq!(*rms, 0.0, "{name}: window {from:.1}-{to:.1} s has sound");
            silent += 1;
        }
    }
    // Everything but the edges of the spans was judged.
    assert!(
        loud + silent + 4 * spans.len() + 1 >= windows.len(),
        "{name}: {loud} loud + {silent} silent of {} windows",
        windows.len()
    );
}

/// Checks a recorded call: WAV rate and length (within 40 ms of `duration` seconds), the sidecar
/// agreeing with the file, and where each channel has sound.
fn check_recording(
    record: &CallRecord,
    rate: u32,
    duration: f64,
    caller: Spans,
    callee: Spans,
) -> Wav {
    assert_eq!(record.state, RecordState::Complete);
    assert_eq!(record.service.decision, Decision::Recorded);
    assert_eq!(record.start_reason.as_deref(), Some("answer"));
    assert_eq!(record.times.recording_start, record.times.answer);
    assert_eq!(record.times.recording_end, record.times.end);
    let wav = read_wav(record);
    assert_eq!(wav.rate, rate);
    let seconds = wav.left.len() as f64 / f64::from(rate);
    assert!(
        (seconds - duration).abs() <= 0.040,
        "WAV lasts {seconds:.3} s, the call {duration:.3} s"
    );
    let info = record.wav.as_ref().unwrap();
    assert_eq!(info.sample_rate, rate);
    assert_eq!(info.duration_ms, Some((seconds * 1000.0) as u64));
    assert_eq!(
        info.bytes,
        Some(std::fs::metadata(&info.path).unwrap().len())
    );
    assert!(Path::new(&info.path).is_absolute());
    let duration_ms = record.duration_ms.unwrap() as f64 / 1000.0;
    assert!((duration_ms - duration).abs() <= 0.002, "{duration_ms}");
    check_channel("caller (left)", &wav.left, rate, caller);
    check_channel("callee (right)", &wav.right, rate, callee);
    wav
}

#[test]
fn g711_capture_two_calls_one_way_media() {
    let (report, records, _out) = run("sip-rtp-g711.pcap");
    assert_eq!(report.calls.len(), 2);
    // Call 1: INVITE 0.000000, 200 OK 0.004350, BYE from the called side (10.0.2.15) 8.503693.
    // RTP only from the called side (sendonly answer to a recvonly offer): 425 PCMU packets
    // 0.022690-8.502667.
    let first = &records[0];
    assert_eq!(first.sip_call_id, "1-1966@10.0.2.20");
    assert_eq!(first.caller_number.as_deref(), Some("sipp"));
    assert_eq!(first.called_number.as_deref(), Some("test"));
    assert_eq!(
        first.end_reason,
        Some(recproxy::call::metadata::EndReason::ByeCallee)
    );
    assert_eq!(first.ended_by.as_deref(), Some("callee"));
    let wav = check_recording(first, 8000, 8.503693 - 0.004350, &[], &[(0.018, 8.499)]);
    assert!(
        wav.left.iter().all(|&s| s == 0),
        "the silent side stays silent"
    );
    assert_eq!(
        (first.legs.caller.packets, first.legs.callee.packets),
        (0, 425)
    );
    assert_eq!(first.legs.callee.codec.as_deref(), Some("PCMU"));
    // Answered into a hold (recvonly offer): noted at 0 by the caller, as the daemon does.
    assert_eq!(first.events.len(), 1);
    assert_eq!(
        (first.events[0].kind.as_str(), first.events[0].at_ms),
        ("hold", 0)
    );
    // Call 2: INVITE 8.619801, 200 OK 8.624469, no BYE in the capture: it ends at its last
    // packet (RTP, 16.902786) with no end reason. 414 PCMA packets 8.642778-16.902786.
    let second = &records[1];
    assert_eq!(second.sip_call_id, "1-1968@10.0.2.20");
    assert_eq!(
        (second.end_reason, second.ended_by.as_deref()),
        (None, None)
    );
    check_recording(second, 8000, 16.902786 - 8.624469, &[], &[(0.018, 8.279)]);
    assert_eq!(
        (second.legs.caller.packets, second.legs.callee.packets),
        (0, 414)
    );
    assert_eq!(second.legs.callee.codec.as_deref(), Some("PCMA"));
    // Both are filed under the day they started, named by their recording ID.
    for (call, record) in report.calls.iter().zip(&records) {
        let wav = call.wav.as_ref().unwrap();
        assert!(wav.ends_with(format!("2016/11/26/{}.wav", record.recording_id)));
        assert_eq!(call.sidecar, wav.with_extension("json"));
    }
}

#[test]
fn g722_capture_is_recorded_at_16_khz() {
    let (_, records, _out) = run("sip-rtp-g722.pcap");
    assert_eq!(records.len(), 1);
    // INVITE 0.000000, 200 OK 0.004511, BYE by the called side 8.503579; 425 G.722 packets
    // from the called side, 0.022659-8.502638.
    let r = &records[0];
    check_recording(r, 16000, 8.503579 - 0.004511, &[], &[(0.018, 8.499)]);
    assert_eq!(r.legs.callee.codec.as_deref(), Some("G722"));
    assert_eq!(r.legs.callee.packets, 425);
}

#[test]
fn opus_capture_both_ways_with_the_same_ssrc() {
    let (_, records, _out) = run("invite-opus-bye.pcap");
    assert_eq!(records.len(), 1);
    // INVITE 0.000000, 200 OK 0.002503, BYE by the caller 3.007898. 152 Opus packets each way
    // (5084 -> 5094 and back), both with SSRC 0x0EEF0001. Their payloads (TOC 0xfc, then
    // 0xff 0xfe and 0xa5 filler) decode to digital silence in libopus and in ffmpeg alike, so
    // both channels are silent; what proves both directions reached the recorder, each on
    // its own side, is the packet count per leg.
    let r = &records[0];
    assert_eq!(
        r.end_reason,
        Some(recproxy::call::metadata::EndReason::ByeCaller)
    );
    assert_eq!(
        (r.caller_number.as_deref(), r.called_number.as_deref()),
        (Some("alice"), Some("bob"))
    );
    let wav = check_recording(r, 16000, 3.007898 - 0.002503, &[], &[]);
    assert!(wav.left.iter().chain(&wav.right).all(|&s| s == 0));
    assert_eq!((r.legs.caller.packets, r.legs.callee.packets), (152, 152));
    assert_eq!((r.legs.caller.lost, r.legs.callee.lost), (0, 0));
    assert_eq!(r.legs.caller.codec.as_deref(), Some("opus"));
    assert_eq!(r.legs.callee.codec.as_deref(), Some("opus"));
}

#[test]
fn codec_change_mid_call_is_one_wideband_wav() {
    let (_, records, _out) = run("codec-negotiation.pcap");
    assert_eq!(records.len(), 1);
    // INVITE 0.000000 (PCMU PCMA G722), 200 OK 0.002499 (PCMU), re-INVITE 3.008440 (G722 PCMU),
    // its 200 OK 3.008572 (G722), BYE by the caller 6.012585. 151 PCMU + 151 G.722 packets
    // each way, 0.002798-6.009798 with no gap longer than 21 ms.
    let r = &records[0];
    check_recording(
        r,
        16000,
        6.012585 - 0.002499,
        &[(0.001, 6.010)],
        &[(0.0, 6.010)],
    );
    assert_eq!((r.legs.caller.packets, r.legs.callee.packets), (302, 302));
    assert_eq!(r.legs.caller.codec.as_deref(), Some("PCMU"));
    let change: Vec<_> = r
        .events
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.at_ms,
                e.by.as_deref(),
                e.codec.as_deref(),
            )
        })
        .collect();
    // At the re-INVITE's answer: 3.008572 - 0.002499 s, proposed by the caller.
    assert_eq!(
        change,
        vec![("codec_change", 3006, Some("caller"), Some("G722"))]
    );
}

#[test]
fn sip_over_tcp_with_comfort_noise() {
    let (_, records, _out) = run("sip-over-tcp.pcap");
    assert_eq!(records.len(), 1);
    // INVITE 0.005921, 200 OK 4.349461, BYE from the called side (10.33.6.101) 6.500977, all
    // over TCP. PCMA with CN (PT 13) in between: the caller's audio packets 4.416-4.596 and
    // 6.215-6.396 (plus 4 CN), the callee's 4.398-4.892 and 6.192-6.476 (plus 2 CN).
    let r = &records[0];
    assert_eq!(
        (r.caller_number.as_deref(), r.called_number.as_deref()),
        (Some("101"), Some("201"))
    );
    assert_eq!(
        r.end_reason,
        Some(recproxy::call::metadata::EndReason::ByeCallee)
    );
    check_recording(
        r,
        8000,
        6.500977 - 4.349461,
        &[(0.067, 0.267), (1.866, 2.067)],
        &[(0.049, 0.563), (1.863, 2.147)],
    );
    // Comfort-noise packets count as packets of their leg.
    assert_eq!((r.legs.caller.packets, r.legs.callee.packets), (24, 42));
    assert_eq!(r.legs.caller.codec.as_deref(), Some("PCMA"));
}

#[test]
fn dtmf_capture_has_a_declined_call_and_the_exact_digits() {
    let (report, records, _out) = run("SIP_DTMF2.cap");
    assert_eq!(records.len(), 2, "REGISTERs are no calls");
    // Call 5514@192.168.105.110: INVITE 36.002756, 603 Decline 36.019858.
    let declined = &records[0];
    assert_eq!(declined.state, RecordState::NotRecorded);
    assert_eq!(
        declined.not_recorded_reason.as_deref(),
        Some("not answered: 603 Decline")
    );
    assert_eq!(
        declined.end_reason,
        Some(recproxy::call::metadata::EndReason::Rejected)
    );
    assert_eq!(declined.ended_by.as_deref(), Some("callee"));
    assert!(declined.wav.is_none() && declined.times.answer.is_none());
    assert_eq!(
        declined.times.invite.as_deref(),
        Some("2005-09-09T12:03:01.333Z")
    );
    assert_eq!(
        declined.times.end.as_deref(),
        Some("2005-09-09T12:03:01.350Z")
    );
    // Call 25672@192.168.105.110, spiralling through 192.168.105.105 (each message twice):
    // INVITE 52.003970 without SDP, 200 OK with the offer 54.326674, ACK with the answer; no
    // BYE, so it ends at its last RTP packet, 96.829533. RTP from the caller's phone
    // 192.168.105.172:4376 to the callee's 192.168.105.110:4376 (666 packets, 35 of them
    // telephone-events, PT 96), and from 192.168.105.110:4374 back to 192.168.105.172:4376
    // (665 packets, 2 lost by sequence number), 30 ms packets.
    let call = &records[1];
    assert_eq!(call.sip_call_id, "25672@192.168.105.110");
    assert_eq!(
        (call.caller_number.as_deref(), call.called_number.as_deref()),
        (Some("2502"), Some("2504"))
    );
    assert_eq!((call.end_reason, call.ended_by.as_deref()), (None, None));
    check_recording(
        call,
        8000,
        96.829533 - 54.326674,
        &[
            (22.552, 27.202),
            (27.352, 28.732),
            (28.882, 29.212),
            (29.362, 29.662),
            (29.812, 30.262),
            (30.412, 30.772),
            (30.922, 31.342),
            (31.492, 42.503),
        ],
        &[(22.502, 37.803), (37.833, 40.143), (40.173, 42.503)],
    );
    assert_eq!(
        (call.legs.caller.packets, call.legs.callee.packets),
        (666, 665)
    );
    assert_eq!(call.legs.callee.lost, 2);
    // Seven keypresses by the caller, each 960 timestamp units (120 ms) long.
    let digits: Vec<_> = call
        .events
        .iter()
        .filter(|e| e.kind == "dtmf")
        .map(|e| {
            (
                e.digit.clone().unwrap(),
                e.by.clone().unwrap(),
                e.duration_ms,
            )
        })
        .collect();
    let expected: Vec<_> = "6789123"
        .chars()
        .map(|d| (d.to_string(), "caller".to_string(), Some(120)))
        .collect();
    assert_eq!(digits, expected);
    // The first digit's first event packet came at 81.528 s: 27.201 s into the recording.
    assert!(
        (27190..=27215).contains(&call.events[0].at_ms),
        "{}",
        call.events[0].at_ms
    );
    assert_eq!(report.calls[1].digits, "6789123");
}

#[test]
fn srtp_calls_are_not_recorded_and_say_why() {
    let (report, records, _out) = run("SIP-SRTP-Normal_Call_two_parties.pcap");
    // Two legs through the PBX at 192.168.20.130, both RTP/SAVP with a=crypto, both answered
    // (12.822592 and 12.817836) and hung up by the PBX side (35.528572 and 35.517445). The
    // first INVITE got a 401 and was sent again (IPv4-fragmented): still one call.
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.state, RecordState::NotRecorded);
        assert_eq!(
            r.not_recorded_reason.as_deref(),
            Some("encrypted media (SRTP) is relayed but not recorded")
        );
        assert_eq!(r.service.decision, Decision::Failed);
        assert!(r.wav.is_none());
        assert!(r.times.answer.is_some() && r.times.recording_start.is_none());
        assert_eq!(
            r.end_reason,
            Some(recproxy::call::metadata::EndReason::ByeCallee)
        );
    }
    assert_eq!(records[0].sip_call_id, "20d1c8822125483494b04e47206cec19");
    assert_eq!(
        records[0].times.invite.as_deref(),
        Some("2018-04-09T21:14:09.732Z")
    );
    assert_eq!(records[1].caller_number.as_deref(), Some("1111"));
    // No WAV anywhere: encrypted media is never decoded as noise.
    assert!(report.calls.iter().all(|c| c.wav.is_none()));
}

#[test]
fn the_command_prints_a_table_and_a_second_import_changes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_recproxy"))
            .arg("import")
            .arg(fixture("SIP_DTMF2.cap"))
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let table = String::from_utf8(first.stdout).unwrap();
    assert!(table.contains("6789123"), "{table}");
    assert!(table.contains("not answered: 603 Decline"), "{table}");
    assert!(
        table.contains("2 calls: 1 recorded, 1 not recorded, 0 already imported"),
        "{table}"
    );
    let files = |dir: &Path| {
        let mut all = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
                    all.push((p, modified));
                }
            }
        }
        all.sort();
        all
    };
    let before = files(out.path());
    assert_eq!(before.len(), 3, "one WAV and two sidecars: {before:?}");
    let second = run();
    assert_eq!(second.status.code(), Some(0));
    let table = String::from_utf8(second.stdout).unwrap();
    assert!(
        table.contains("2 calls: 0 recorded, 0 not recorded, 2 already imported"),
        "{table}"
    );
    assert_eq!(files(out.path()), before, "the same files, untouched");
}

#[test]
fn the_default_output_is_recordings_in_the_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recproxy"))
        .current_dir(cwd.path())
        .arg("import")
        .arg(fixture("sip-rtp-g722.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(cwd.path().join("recordings/2016/11/26").is_dir());
}

#[test]
fn read_errors_exit_1_naming_file_and_offset_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // The g711 capture with its third record's length made absurd: the 24-byte file header and
    // two records of 16 + 500 and 16 + 328 bytes come before it.
    let mut bytes = std::fs::read(fixture("sip-rtp-g711.pcap")).unwrap();
    let third = 24 + 16 + 500 + 16 + 328;
    bytes[third + 8..third + 12].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    let bad = dir.path().join("bad.pcap");
    std::fs::write(&bad, &bytes).unwrap();
    let recproxy = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recproxy"));
        cmd.current_dir(dir.path());
        cmd
    };
    let out = recproxy().args(["import", "bad.pcap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.pcap") && err.contains(&format!("byte {third}")),
        "{err}"
    );
    let out = recproxy()
        .args(["import", "missing.pcap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("missing.pcap"));
    // A capture with no calls in it is read fine: exit 0, an empty table.
    let out = recproxy()
        .arg("import")
        .arg(fixture("16_bit_48khz_60_fec_rtp.pcapng"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("0 calls"));
    for args in [
        &["import"][..],
        &["import", "a.pcap", "b.pcap"],
        &["import", "a.pcap", "--bogus"],
    ] {
        let out = recproxy().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

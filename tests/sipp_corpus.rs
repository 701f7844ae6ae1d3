//! SIPp scenarios from the shared SIP corpus run through the real daemon, one daemon per pair
//! of scenarios (in front of the pair's UAS as its PBX; SIP and media on 127.0.0.1 only, media
//! ports in a slice of 46000-46999 per pair). Each test asserts how SIPp finished, on both
//! sides (exit status 0: the scenario's call flow went exactly as written, which is also how
//! each pair ends when run directly, without the daemon), and what the daemon wrote: the
//! sidecar JSON and the WAV.
//!
//! The corpus scenarios are copies in `fixtures/sipp/corpus/`; what had to change for them to
//! run through a proxy (and why) is listed at the top of each changed copy and in that
//! directory's README.md. The callers that pair with them where the corpus has none are in
//! `fixtures/sipp/`.
//!
//! The pairs are independent and spend their time waiting, while the test harness may run only
//! as many tests at once as there are CPUs. So the first test to run starts every pair, each in
//! a thread of its own, every test waits until all pairs have finished, and then reports on its
//! own pair: the file takes about as long as its longest pair (a CANCEL that never gets a final
//! response: the proxy gives up 64*T1 = 32 s after its own CANCEL), and running only some of
//! its tests still runs every pair.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use recproxy::demo::tone::rms;
use serde_json::{json, Value};
use support::sipp::{free_media_port, free_udp_port, read_trace, sipp, wait, wait_bound, Traced};
use support::{dominance, ms, sha256_hex, sidecars, wavs, write_config, Daemon, Wav};

/// The number every caller dials.
const CALLED: &str = "0295120000";

/// Every SIPp process ends by itself after this long (`-timeout`, an error then).
const SIPP_TIMEOUT: &str = "25s";

/// And is killed if it has not ended after this long.
const SIPP_LIMIT: Duration = Duration::from_secs(35);

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scenario copied from the corpus.
fn corpus(name: &str) -> String {
    let path = manifest().join("fixtures/sipp/corpus").join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path.display().to_string()
}

/// A scenario of this project's own.
fn fixture(name: &str) -> String {
    let path = manifest().join("fixtures/sipp").join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path.display().to_string()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ----- running a pair ---------------------------------------------------------------------

/// A UAS scenario (the PBX side, behind the daemon) and the UAC that calls it through the
/// daemon.
struct Pair {
    /// Slice of the media range: the pair's daemon gets 46000 + 50 * slot .. + 49.
    slot: u16,
    /// SIPp arguments choosing the UAS scenario.
    uas: Vec<String>,
    /// SIPp arguments choosing the UAC scenario.
    uac: Vec<String>,
    /// The UAS's own in-dialog requests are addressed to `[remote_ip]:[remote_port]` (Request-URI),
    /// which is the UAC then: it gets the UAC's address as its remote host. SIPp still sends
    /// them where the INVITE came from, i.e. to the daemon.
    uas_addresses_uac: bool,
    /// Files the scenarios read, made in SIPp's working directory: (relative path, content).
    files: Vec<(&'static str, Vec<u8>)>,
}

/// How one SIPp process ended and what went over its wire.
struct Side {
    status: ExitStatus,
    trace: Vec<Traced>,
    errors: String,
}

impl Side {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Messages received (or sent) whose method or status code is `kind`.
    fn messages(&self, sent: bool, kind: &str) -> Vec<&Traced> {
        self.trace
            .iter()
            .filter(|m| m.sent == sent && m.kind() == kind)
            .collect()
    }
}

/// A pair run through its own daemon.
struct Run {
    root: tempfile::TempDir,
    daemon: Daemon,
    /// The daemon's media port range.
    media: (u16, u16),
    uas: Side,
    uac: Side,
    /// When the UAC was started.
    started: Instant,
}

fn run(pair: Pair) -> Run {
    let root = tempfile::tempdir().unwrap();
    for (name, content) in &pair.files {
        let path = root.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas_media = free_media_port();
    let uac_media = free_media_port();
    let low = 46000 + 50 * pair.slot;
    let media = (low, low + 49);
    assert!(media.1 <= 46999, "media slot {} is out of range", pair.slot);
    let pbx: SocketAddr = format!("127.0.0.1:{uas_port}").parse().unwrap();
    let config = write_config(root.path(), pbx, media, "");
    let daemon = Daemon::start(&config);

    let common = |port: u16, media_port: u16, name: &str| {
        strings(&[
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port.to_string(),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            SIPP_TIMEOUT,
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            &format!("{name}.msg"),
            "-trace_err",
            "-error_file",
            &format!("{name}.err"),
        ])
    };
    let mut uas_args = pair.uas.clone();
    uas_args.extend(common(uas_port, uas_media, "uas"));
    if pair.uas_addresses_uac {
        uas_args.push(format!("127.0.0.1:{uac_port}"));
    }
    let mut uas = sipp(root.path(), &uas_args);
    if !wait_bound(&mut uas, uas_port, Duration::from_secs(10)) {
        let _ = uas.kill();
        let errors = std::fs::read_to_string(root.path().join("uas.err")).unwrap_or_default();
        panic!("the SIPp UAS did not bind 127.0.0.1:{uas_port}: {errors}");
    }
    let mut uac_args = pair.uac.clone();
    uac_args.push(daemon.sip.to_string());
    uac_args.extend(common(uac_port, uac_media, "uac"));
    let started = Instant::now();
    let uac = sipp(root.path(), &uac_args);
    let uac_status = wait(uac, "the SIPp UAC", SIPP_LIMIT);
    let uas_status = wait(uas, "the SIPp UAS", SIPP_LIMIT);
    let side = |status, name: &str| Side {
        status,
        trace: read_trace(&root.path().join(format!("{name}.msg"))),
        errors: std::fs::read_to_string(root.path().join(format!("{name}.err")))
            .unwrap_or_default(),
    };
    Run {
        uas: side(uas_status, "uas"),
        uac: side(uac_status, "uac"),
        root,
        daemon,
        media,
        started,
    }
}

impl Run {
    /// Every sidecar the daemon wrote.
    fn sidecars(&self) -> Vec<Value> {
        sidecars(&self.daemon.dir)
            .iter()
            .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
            .collect()
    }

    /// Waits until `limit` after the UAC started for the (single) sidecar to leave state
    /// `recording`; returns the last one seen (`Null` if none).
    fn final_sidecar(&self, limit: Duration) -> Value {
        let deadline = self.started + limit;
        loop {
            let all = self.sidecars();
            let last = all.last().cloned().unwrap_or(Value::Null);
            if (all.len() == 1 && last["state"] != "recording") || Instant::now() > deadline {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon with SIGTERM (it must exit 0) and returns the sidecar then.
    fn stop(&mut self, c: &mut Checks) -> Value {
        let status = self.daemon.signal(libc::SIGTERM);
        c.is("the daemon exits 0 on SIGTERM", status.success(), status);
        self.sidecars().last().cloned().unwrap_or(Value::Null)
    }

    /// The Call-ID of the caller's INVITE.
    fn call_id(&self) -> String {
        self.uac
            .messages(true, "INVITE")
            .first()
            .and_then(|m| m.header("Call-ID"))
            .unwrap_or_default()
    }

    /// Whether `m`'s topmost Via is the daemon's (the message came through it).
    fn via_daemon(&self, m: &Traced) -> bool {
        m.header("Via")
            .is_some_and(|v| v.contains(&format!(" {};", self.daemon.sip)))
    }

    /// What to show when a check fails.
    fn context(&self) -> String {
        let sidecars: Vec<String> = self
            .sidecars()
            .iter()
            .map(|v| serde_json::to_string_pretty(v).unwrap())
            .collect();
        format!(
            "SIPp UAS {:?}, errors:\n{}\nSIPp UAC {:?}, errors:\n{}\nsidecars:\n{}\ndaemon log:\n{}\n(files in {})",
            self.uas.status,
            tail(&self.uas.errors),
            self.uac.status,
            tail(&self.uac.errors),
            sidecars.join("\n"),
            self.daemon.log_text(),
            self.root.path().display(),
        )
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ----- checks -------------------------------------------------------------------------------

/// Collects what did not hold, so that a failing test lists every difference at once.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn is(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        if !ok {
            self.failures.push(format!("{what}: {detail:?}"));
        }
    }

    fn eq(&mut self, what: &str, actual: &Value, expected: Value) {
        if *actual != expected {
            self.failures
                .push(format!("{what}: is {actual}, expected {expected}"));
        }
    }

    /// Both SIPps exit as they do without the daemon: 0, the flow went as written.
    fn sipp_ok(&mut self, run: &Run) {
        self.is(
            "SIPp UAS exit status (0 without the daemon too)",
            run.uas.code() == Some(0),
            run.uas.status,
        );
        self.is(
            "SIPp UAC exit status (0 without the daemon too)",
            run.uac.code() == Some(0),
            run.uac.status,
        );
    }

    /// What every sidecar of these calls says: one record of the caller's call, inbound.
    fn common(&mut self, run: &Run, v: &Value, caller: &str, called: &str) {
        self.is(
            "one sidecar for the one call",
            run.sidecars().len() == 1,
            run.sidecars().len(),
        );
        self.eq("schema_version", &v["schema_version"], json!(1));
        self.eq("sip_call_id", &v["sip_call_id"], json!(run.call_id()));
        self.eq("direction", &v["direction"], json!("inbound"));
        self.eq("caller_number", &v["caller_number"], json!(caller));
        self.eq("called_number", &v["called_number"], json!(called));
        self.eq(
            "service.decision",
            &v["service"]["decision"],
            json!("recorded"),
        );
        self.is(
            "times.invite is a time",
            v["times"]["invite"].is_string(),
            &v["times"],
        );
    }

    /// An unanswered call: no recording, no WAV.
    fn not_recorded(&mut self, run: &Run, v: &Value) {
        self.eq("state", &v["state"], json!("not_recorded"));
        self.eq("times.answer", &v["times"]["answer"], Value::Null);
        self.eq("duration_ms", &v["duration_ms"], Value::Null);
        self.eq("wav", &v["wav"], Value::Null);
        self.eq("events", &v["events"], json!([]));
        let on_disk = wavs(&run.daemon.dir);
        self.is("no WAV on disk", on_disk.is_empty(), on_disk);
    }

    /// A recorded call's WAV: on disk as its sidecar says (size, SHA-256, length), stereo
    /// 8 kHz, as long as the recording.
    fn wav(&mut self, v: &Value) -> Option<Wav> {
        if v["state"] == "recording" {
            // Not finalised (the state check says so already): nothing to compare yet.
            return None;
        }
        let Some(path) = v["wav"]["path"].as_str().map(PathBuf::from) else {
            self.failures.push(format!("no wav.path in {}", v["wav"]));
            return None;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            self.failures
                .push(format!("the WAV {} is not there", path.display()));
            return None;
        };
        self.eq("wav.bytes", &v["wav"]["bytes"], json!(meta.len()));
        self.eq("wav.sha256", &v["wav"]["sha256"], json!(sha256_hex(&path)));
        self.eq("wav.channels", &v["wav"]["channels"], json!(2));
        self.eq("wav.sample_rate", &v["wav"]["sample_rate"], json!(8000));
        let wav = Wav::read(&path);
        self.is("the WAV is stereo", wav.channels == 2, wav.channels);
        self.is("the WAV is 8 kHz", wav.rate == 8000, wav.rate);
        let said = v["wav"]["duration_ms"].as_u64().unwrap_or(0);
        self.is(
            "WAV length = wav.duration_ms",
            wav.duration_ms().abs_diff(said) <= 20,
            (wav.duration_ms(), said),
        );
        let talk = v["duration_ms"].as_u64().unwrap_or(0);
        self.is(
            "WAV length = duration_ms (recorded from answer to end)",
            wav.duration_ms().abs_diff(talk) <= 40,
            (wav.duration_ms(), talk),
        );
        Some(wav)
    }

    /// A call that carried no RTP: nothing reached the recorder and the WAV is all silence
    /// (once the recording has ended).
    fn silent_wav(&mut self, v: &Value) {
        for leg in ["caller", "callee"] {
            self.eq(
                &format!("legs.{leg}.packets"),
                &v["legs"][leg]["packets"],
                json!(0),
            );
            self.eq(
                &format!("legs.{leg}.codec"),
                &v["legs"][leg]["codec"],
                Value::Null,
            );
        }
        if let Some(wav) = self.wav(v) {
            let loud = wav
                .left
                .iter()
                .chain(&wav.right)
                .filter(|s| **s != 0)
                .count();
            self.is("the WAV is silent (no RTP was sent)", loud == 0, loud);
        }
    }

    /// The mid-call events, in order: (type, by, at_ms range).
    fn events(&mut self, v: &Value, expected: &[(&str, &str, std::ops::Range<i64>)]) {
        let got: Vec<(String, String, i64)> = v["events"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| {
                        (
                            e["type"].as_str().unwrap_or("?").to_string(),
                            e["by"].as_str().unwrap_or("-").to_string(),
                            e["at_ms"].as_i64().unwrap_or(-1),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kinds: Vec<(&str, &str)> = got
            .iter()
            .map(|(t, b, _)| (t.as_str(), b.as_str()))
            .collect();
        let want: Vec<(&str, &str)> = expected.iter().map(|(t, b, _)| (*t, *b)).collect();
        if kinds != want {
            self.failures.push(format!(
                "events (type, by): are {kinds:?}, expected {want:?} (all: {})",
                v["events"]
            ));
            return;
        }
        for ((kind, _, at), (_, _, range)) in got.iter().zip(expected) {
            self.is(
                &format!("{kind} at_ms in {range:?}"),
                range.contains(at),
                at,
            );
        }
    }

    /// Panics with every failure and the run's context.
    fn done(self, run: &Run) {
        if !self.failures.is_empty() {
            panic!(
                "{} check(s) failed:\n  - {}\n\n{}",
                self.failures.len(),
                self.failures.join("\n  - "),
                run.context()
            );
        }
    }
}

/// `c=` address and `m=audio` port of an SDP body.
fn sdp_audio(body: &str) -> (Option<String>, Option<u16>) {
    let addr = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .map(|a| a.trim().to_string());
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok());
    (addr, port)
}

/// Checks that an SDP body the caller got names the daemon's media socket (the media is
/// anchored), not the callee's.
fn anchored(c: &mut Checks, run: &Run, what: &str, body: &str) {
    let (addr, port) = sdp_audio(body);
    c.is(
        &format!("{what}: c= is the daemon's media address"),
        addr.as_deref() == Some("127.0.0.1"),
        &addr,
    );
    c.is(
        &format!(
            "{what}: m=audio port is one of the daemon's {:?}",
            run.media
        ),
        port.is_some_and(|p| (run.media.0..=run.media.1).contains(&p)),
        port,
    );
}

// ----- the pairs ----------------------------------------------------------------------------

/// Injection file of the Asterisk hold scenarios: field0 = phone A's user, field1 = phone B's
/// user, field2 = the number phone A dials.
fn phones_csv() -> (&'static str, Vec<u8>) {
    (
        "phones.csv",
        format!("SEQUENTIAL\nalice;bob;{CALLED};\n").into_bytes(),
    )
}

/// 486 Busy Here: relayed to the caller as sent, ACKed hop by hop by the proxy; not recorded.
fn busy486() {
    let run = run(Pair {
        slot: 0,
        uas: strings(&["-sf", &corpus("busy486__receive-ipv4-udp.xml")]),
        uac: strings(&["-sf", &fixture("uac_busy.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let v = run.final_sidecar(Duration::from_secs(10));
    c.common(&run, &v, "sipp", CALLED);
    c.not_recorded(&run, &v);
    c.eq(
        "not_recorded_reason",
        &v["not_recorded_reason"],
        json!("not answered: 486 Busy Here"),
    );
    c.eq("end_reason", &v["end_reason"], json!("rejected"));
    c.eq("ended_by", &v["ended_by"], json!("callee"));
    // The UAS's ACK is the proxy's own: the ACK of a non-2xx final response belongs to the
    // INVITE client transaction, hop by hop (RFC 3261 §17.1.1.3); the caller's ACK (its
    // uac_busy.xml checked the 486's Reason header) ends at the proxy.
    let acks = run.uas.messages(false, "ACK");
    c.is(
        "the UAS got one ACK, from the daemon",
        acks.len() == 1 && run.via_daemon(acks[0]),
        acks.iter().map(|m| m.text()).collect::<Vec<_>>(),
    );
    c.done(&run);
}

/// Asterisk's hold test: phone B (the callee, behind the proxy) holds with a=sendonly, holds
/// again with the same SDP, resumes with a re-INVITE without SDP, and hangs up.
fn hold_sendonly() {
    let run = run(Pair {
        slot: 1,
        uas: strings(&[
            "-sf",
            &corpus("hold_sendonly__phone_B_duplicate_hold.xml"),
            "-inf",
            "phones.csv",
        ]),
        uac: strings(&[
            "-sf",
            &corpus("hold_sendonly__phone_A.xml"),
            "-inf",
            "phones.csv",
        ]),
        uas_addresses_uac: true,
        files: vec![phones_csv()],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    c.is(
        "phone A answered three re-INVITEs",
        run.uac.messages(false, "INVITE").len() == 3,
        run.uac.messages(false, "INVITE").len(),
    );
    let v = run.final_sidecar(Duration::from_secs(20));
    c.common(&run, &v, "alice", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_callee"));
    c.eq("ended_by", &v["ended_by"], json!("callee"));
    // Phone B: answer, 2 s, hold; 2.2 s, the same hold again (no new event); 2.2 s, resume;
    // 2 s, BYE.
    c.events(
        &v,
        &[
            ("hold", "callee", 1900..3500),
            ("resume", "callee", 6000..8500),
        ],
    );
    c.is(
        "talk time: phone B's pauses add up to 8.4 s",
        (8300..10500).contains(&v["duration_ms"].as_i64().unwrap_or(0)),
        &v["duration_ms"],
    );
    c.silent_wav(&v);
    c.done(&run);
}

/// Asterisk's inactive-hold test: phone B (the callee) holds with a=inactive and resumes with a
/// re-INVITE without SDP, then hangs up.
fn hold_inactive() {
    let run = run(Pair {
        slot: 2,
        uas: strings(&[
            "-sf",
            &corpus("hold_inactive__phone_B_unhold_sans_sdp.xml"),
            "-inf",
            "phones.csv",
        ]),
        uac: strings(&[
            "-sf",
            &corpus("hold_inactive__phone_A.xml"),
            "-inf",
            "phones.csv",
        ]),
        uas_addresses_uac: true,
        files: vec![phones_csv()],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    c.is(
        "phone A answered two re-INVITEs",
        run.uac.messages(false, "INVITE").len() == 2,
        run.uac.messages(false, "INVITE").len(),
    );
    let v = run.final_sidecar(Duration::from_secs(20));
    c.common(&run, &v, "alice", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_callee"));
    c.eq("ended_by", &v["ended_by"], json!("callee"));
    // Phone B: answer, 2 s, hold (a=inactive); 2.2 s, resume (re-INVITE without SDP); 2 s, BYE.
    c.events(
        &v,
        &[
            ("hold", "callee", 1900..3500),
            ("resume", "callee", 3900..6000),
        ],
    );
    c.is(
        "talk time: phone B's pauses add up to 6.2 s",
        (6100..8300).contains(&v["duration_ms"].as_i64().unwrap_or(0)),
        &v["duration_ms"],
    );
    c.silent_wav(&v);
    c.done(&run);
}

/// G.711 µ-law of one sample (ITU-T G.711, independent of the crate's codec).
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// One second of a 1000 Hz tone as raw µ-law: the audio file bob's scenario streams.
fn tone_ulaw() -> Vec<u8> {
    (0..8000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            ulaw((8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16)
        })
        .collect()
}

/// Asterisk's blind transfer by the callee: bob (behind the proxy) streams a tone, holds
/// (a=sendonly), REFERs the caller to charlie, gets its NOTIFYs and hangs up.
fn blind_transfer() {
    let run = run(Pair {
        slot: 3,
        uas: strings(&["-sf", &corpus("blind_transfer_callee_with_hold__bob.xml")]),
        uac: strings(&["-sf", &fixture("uac_transferee.xml"), "-s", CALLED]),
        uas_addresses_uac: true,
        // bob.xml streams lib/python/asterisk/audio.ulaw (a file of the Asterisk test suite)
        // three times.
        files: vec![("lib/python/asterisk/audio.ulaw", tone_ulaw())],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    // The REFER's headers reach the caller byte for byte.
    let sent = run.uas.messages(true, "REFER");
    let got = run.uac.messages(false, "REFER");
    c.is("bob sent one REFER", sent.len() == 1, sent.len());
    c.is("alice got one REFER", got.len() == 1, got.len());
    if let (Some(sent), Some(got)) = (sent.first(), got.first()) {
        for name in ["Refer-To", "Referred-By", "Subject"] {
            c.is(
                &format!("{name} arrives byte for byte"),
                !sent.header_lines(name).is_empty()
                    && sent.header_lines(name) == got.header_lines(name),
                (sent.header(name), got.header(name)),
            );
        }
        c.is(
            "the REFER came through the daemon",
            run.via_daemon(got),
            got.text(),
        );
    }
    c.is(
        "bob got both NOTIFYs",
        run.uas.messages(false, "NOTIFY").len() == 2,
        run.uas.messages(false, "NOTIFY").len(),
    );
    let v = run.final_sidecar(Duration::from_secs(20));
    c.common(&run, &v, "alice", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_callee"));
    c.eq("ended_by", &v["ended_by"], json!("callee"));
    // bob: answer, 1 s, hold; 4 s, REFER, answered 202 at once.
    c.events(
        &v,
        &[
            ("hold", "callee", 900..2500),
            ("transfer", "callee", 4900..7000),
        ],
    );
    // 3 × 50 packets of 20 ms from bob, none from the caller.
    c.eq(
        "legs.callee.codec",
        &v["legs"]["callee"]["codec"],
        json!("PCMU"),
    );
    c.eq(
        "legs.callee.packets",
        &v["legs"]["callee"]["packets"],
        json!(150),
    );
    c.eq("legs.callee.lost", &v["legs"]["callee"]["lost"], json!(0));
    c.eq(
        "legs.caller.packets",
        &v["legs"]["caller"]["packets"],
        json!(0),
    );
    if let Some(wav) = c.wav(&v) {
        c.is(
            "the call lasted bob's 5 s",
            (4900..7000).contains(&wav.duration_ms()),
            wav.duration_ms(),
        );
        if wav.right.len() > 8000 * 4 {
            // Right (callee) channel: bob's 1000 Hz tone for 3 s from the answer, then silence.
            let tone = &wav.right[1600..22400];
            let p = dominance(tone, 8000, 1000.0, &[440.0, 660.0, 2000.0, 3000.0]);
            c.is("the right channel holds bob's 1000 Hz tone", p > 100.0, p);
            let level = rms(tone);
            c.is(
                "at its level (amplitude 8000)",
                (4500.0..6500.0).contains(&level),
                level,
            );
            let after = wav.right[8000 * 7 / 2..]
                .iter()
                .filter(|s| **s != 0)
                .count();
            c.is("and silence after the 3 s of tone", after == 0, after);
            let left = wav.left.iter().filter(|s| **s != 0).count();
            c.is("the left (caller) channel is silent", left == 0, left);
        } else {
            c.is("the WAV is long enough to check", false, wav.right.len());
        }
    }
    c.done(&run);
}

/// pjproject's forked INVITE: one INVITE, two 200 OKs with different To tags. The caller ACKs
/// both, keeps the first, hangs it up, and ends the other.
fn forked_200() {
    let run = run(Pair {
        slot: 4,
        uas: strings(&["-sf", &corpus("uas-forked-200.xml")]),
        uac: strings(&["-sf", &fixture("uac_forked.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let oks: Vec<&Traced> = run
        .uac
        .messages(false, "200")
        .into_iter()
        .filter(|m| m.header("CSeq").is_some_and(|s| s.ends_with("INVITE")))
        .collect();
    c.is("the caller got both 2xx", oks.len() == 2, oks.len());
    if let Some(first) = oks.first() {
        c.is(
            "the first 2xx is UA_1's",
            first.header("To").is_some_and(|t| t.ends_with(";tag=UA_1")),
            first.header("To"),
        );
        anchored(&mut c, &run, "the winning 2xx", &first.body());
    }
    // (SIPp also traces the BYE of UA_2 that reaches it after its scenario ended.)
    let byes = run.uas.messages(false, "BYE");
    c.is(
        "the UAS got the BYE of the kept dialog (UA_1) first, through the daemon",
        byes.first()
            .is_some_and(|m| m.start_line().starts_with("BYE sip:UA_1@") && run.via_daemon(m)),
        byes.iter().map(|m| m.start_line()).collect::<Vec<_>>(),
    );
    let v = run.final_sidecar(Duration::from_secs(10));
    // A moment for a second record, if the losing fork made one.
    std::thread::sleep(Duration::from_millis(300));
    c.common(&run, &v, "sipp", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_caller"));
    c.eq("ended_by", &v["ended_by"], json!("caller"));
    c.eq("events", &v["events"], json!([]));
    c.is(
        "talk time: the caller's 1 s",
        (900..2500).contains(&v["duration_ms"].as_i64().unwrap_or(0)),
        &v["duration_ms"],
    );
    c.silent_wav(&v);
    c.done(&run);
}

/// pjproject's BYE in the early dialog: the callee rings, then hangs up before answering.
fn early_bye() {
    let run = run(Pair {
        slot: 5,
        uas: strings(&["-sf", &corpus("uas-early-bye.xml")]),
        uac: strings(&["-sf", &fixture("uac_early_bye.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let byes = run.uac.messages(false, "BYE");
    c.is(
        "the caller got the callee's early BYE through the daemon",
        byes.len() == 1 && run.via_daemon(byes[0]),
        byes.iter().map(|m| m.text()).collect::<Vec<_>>(),
    );
    let v = run.final_sidecar(Duration::from_secs(10));
    c.common(&run, &v, "sipp", CALLED);
    c.not_recorded(&run, &v);
    c.is(
        "not_recorded_reason says why",
        v["not_recorded_reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        &v["not_recorded_reason"],
    );
    c.eq("end_reason", &v["end_reason"], json!("bye_callee"));
    c.eq("ended_by", &v["ended_by"], json!("callee"));
    c.done(&run);
}

/// pjproject's re-INVITE whose only stream is disabled (m=audio 0): the caller refuses it with
/// 488, so the call goes on as before (RFC 3261 §14.1) — and, as neither side ever hangs up
/// and no RTP flows, it ends by the media timeout (10 s).
fn reinvite_no_media() {
    let run = run(Pair {
        slot: 6,
        uas: strings(&["-sf", &corpus("uas-reinv-no-media.xml")]),
        uac: strings(&["-sf", &fixture("uac_reinv_no_media.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let offers = run.uac.messages(false, "INVITE");
    c.is(
        "the caller got the re-INVITE (m=audio 0) through the daemon",
        offers.len() == 1 && run.via_daemon(offers[0]) && offers[0].body().contains("m=audio 0 "),
        offers.iter().map(|m| m.text()).collect::<Vec<_>>(),
    );
    // More than once: its ACK for the 488 says "CSeq: 1 INVITE", which the daemon drops as
    // malformed (RFC 3261 §8.1.1.5), so the daemon's server transaction retransmits the 488.
    c.is(
        "the UAS got the 488",
        !run.uas.messages(false, "488").is_empty(),
        run.uas.messages(false, "488").len(),
    );
    let v = run.final_sidecar(Duration::from_secs(18));
    c.common(&run, &v, "sipp", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("media_timeout"));
    c.eq("ended_by", &v["ended_by"], json!("media_timeout"));
    c.eq("events", &v["events"], json!([]));
    c.is(
        "talk time: the 10 s media timeout",
        (9900..12000).contains(&v["duration_ms"].as_i64().unwrap_or(0)),
        &v["duration_ms"],
    );
    c.silent_wav(&v);
    c.done(&run);
}

/// pjproject's re-INVITE "with less media": the callee holds (a=sendonly), the caller
/// re-INVITEs and the callee answers a=inactive; nobody hangs up. A held call is not ended by
/// the media timeout, so it is still being recorded 12 s on, until the daemon stops.
fn reinvite_less_media() {
    let mut run = run(Pair {
        slot: 7,
        uas: strings(&["-sf", &corpus("uas-reinv-with-less-media.xml")]),
        uac: strings(&["-sf", &fixture("uac_reinv_less_media.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let until = run.started + Duration::from_secs(12);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let before = run.sidecars();
    c.is(
        "12 s on, the held call is still being recorded",
        before.len() == 1 && before[0]["state"] == "recording",
        before
            .iter()
            .map(|v| v["state"].clone())
            .collect::<Vec<_>>(),
    );
    let v = run.stop(&mut c);
    c.common(&run, &v, "sipp", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("shutdown"));
    c.eq("ended_by", &v["ended_by"], json!("shutdown"));
    // The callee's a=sendonly 2 s after the answer; the caller's a=sendrecv offer answered
    // a=inactive keeps it on hold.
    c.events(&v, &[("hold", "callee", 1900..3500)]);
    c.silent_wav(&v);
    c.done(&run);
}

/// pjproject's 183 with SDP but without To tag, and no answer ever: the caller gets it (early
/// media anchored by the daemon) and gives up; the INVITE is still pending when the daemon
/// stops.
fn answer_183_without_to_tag() {
    let mut run = run(Pair {
        slot: 8,
        uas: strings(&["-sf", &corpus("uas-answer-183-without-to-tag.xml")]),
        uac: strings(&["-sf", &fixture("uac_183_no_answer.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let early = run.uac.messages(false, "183");
    c.is("the caller got one 183", early.len() == 1, early.len());
    if let Some(m) = early.first() {
        c.is(
            "still without To tag",
            m.header("To").is_some_and(|t| !t.contains("tag=")),
            m.header("To"),
        );
        anchored(&mut c, &run, "the 183's SDP", &m.body());
    }
    let v = run.stop(&mut c);
    c.common(&run, &v, "sipp", CALLED);
    c.not_recorded(&run, &v);
    c.eq(
        "not_recorded_reason",
        &v["not_recorded_reason"],
        json!("the daemon stopped before the call was answered"),
    );
    c.eq("end_reason", &v["end_reason"], json!("shutdown"));
    c.eq("ended_by", &v["ended_by"], json!("shutdown"));
    c.done(&run);
}

/// pjproject's CANCEL that never gets a final response: the UAS answers the CANCEL 200 and
/// stays silent. The proxy answers the caller's CANCEL itself, cancels its branch, and gives
/// up 64*T1 later: a call cancelled by the caller, not recorded.
fn cancel_no_final() {
    let run = run(Pair {
        slot: 9,
        uas: strings(&["-sf", &corpus("uas-cancel-no-final.xml")]),
        uac: strings(&[
            "-sf",
            &fixture("uac_cancel_after_ringing.xml"),
            "-s",
            CALLED,
        ]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let cancels = run.uas.messages(false, "CANCEL");
    c.is(
        "the UAS got the daemon's CANCEL",
        cancels.len() == 1 && run.via_daemon(cancels[0]),
        cancels.iter().map(|m| m.text()).collect::<Vec<_>>(),
    );
    let v = run.final_sidecar(Duration::from_secs(45));
    c.common(&run, &v, "sipp", CALLED);
    c.not_recorded(&run, &v);
    c.eq(
        "not_recorded_reason",
        &v["not_recorded_reason"],
        json!("cancelled by the caller before answer"),
    );
    c.eq("end_reason", &v["end_reason"], json!("cancel"));
    c.eq("ended_by", &v["ended_by"], json!("caller"));
    if v["times"]["end"].is_string() {
        c.is(
            "times.end is not before times.invite",
            ms(&v["times"]["end"]) >= ms(&v["times"]["invite"]),
            &v["times"],
        );
    }
    c.done(&run);
}

/// Asterisk's CANCEL raced by the answer: the UAS gets the CANCEL, answers it, and then
/// answers the INVITE 200 (with a disabled video stream) anyway; the caller ACKs, talks for a
/// second and hangs up. The call was answered, so it is recorded.
fn cancel_answered_anyway() {
    let run = run(Pair {
        slot: 10,
        uas: strings(&["-sf", &corpus("cancel__call_cancel_valid_sdp.xml")]),
        uac: strings(&["-sf", &fixture("uac_cancel_after_trying.xml"), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let answer = run
        .uac
        .messages(false, "200")
        .into_iter()
        .find(|m| m.header("CSeq").is_some_and(|s| s.ends_with("INVITE")));
    match answer {
        Some(m) => {
            anchored(&mut c, &run, "the 200 OK's SDP", &m.body());
            c.is(
                "the disabled video stream stays in the answer",
                m.body().contains("m=video 0 RTP/AVP 100\r\n"),
                m.body(),
            );
        }
        None => c.is("the caller got the INVITE's 200 OK", false, ()),
    }
    let v = run.final_sidecar(Duration::from_secs(10));
    c.common(&run, &v, "sipp", CALLED);
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_caller"));
    c.eq("ended_by", &v["ended_by"], json!("caller"));
    c.eq("events", &v["events"], json!([]));
    c.is(
        "talk time: the caller's 1 s",
        (900..2500).contains(&v["duration_ms"].as_i64().unwrap_or(0)),
        &v["duration_ms"],
    );
    c.silent_wav(&v);
    c.done(&run);
}

/// A corpus UAC whose INVITE carries `header` lines; SIPp's built-in UAS answers. The lines
/// must reach the UAS byte for byte and in order.
fn headers_reach_the_callee(slot: u16, scenario: &str, header: &str, expected: &[&str]) {
    let run = run(Pair {
        slot,
        uas: strings(&["-sn", "uas"]),
        uac: strings(&["-sf", &corpus(scenario), "-s", CALLED]),
        uas_addresses_uac: false,
        files: vec![],
    });
    let mut c = Checks::default();
    c.sipp_ok(&run);
    let sent = run.uac.messages(true, "INVITE");
    let got = run.uas.messages(false, "INVITE");
    c.is(
        "one INVITE each way",
        sent.len() == 1 && got.len() == 1,
        (sent.len(), got.len()),
    );
    if let (Some(sent), Some(got)) = (sent.first(), got.first()) {
        let expected: Vec<Vec<u8>> = expected.iter().map(|l| l.as_bytes().to_vec()).collect();
        c.is(
            &format!("the caller sent its {header} lines"),
            sent.header_lines(header) == expected,
            sent.header_lines(header)
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>(),
        );
        c.is(
            &format!("the {header} lines reach the callee byte for byte, in order"),
            got.header_lines(header) == expected,
            got.header_lines(header)
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>(),
        );
        c.is(
            "the INVITE came through the daemon",
            run.via_daemon(got),
            got.text(),
        );
    }
    let v = run.final_sidecar(Duration::from_secs(10));
    c.common(&run, &v, "user1", "user2");
    c.eq("state", &v["state"], json!("complete"));
    c.eq("end_reason", &v["end_reason"], json!("bye_caller"));
    c.eq("ended_by", &v["ended_by"], json!("caller"));
    c.eq("events", &v["events"], json!([]));
    c.silent_wav(&v);
    c.done(&run);
}

fn diversion() {
    headers_reach_the_callee(
        11,
        "diversion_request__user1.xml",
        "Diversion",
        &["Diversion: <sip:amenhotep@127.0.0.1>;reason=unconditional"],
    );
}

fn history_info() {
    headers_reach_the_callee(
        12,
        "history_info_request__user1.xml",
        "History-Info",
        &[
            "History-Info: <sip:amenhotep@127.0.0.1>;index=1",
            "History-Info: <sip:user2@127.0.0.1;cause=302>;index=1.1",
        ],
    );
}

// ----- running every pair at once ---------------------------------------------------------

const PAIRS: &[(&str, fn())] = &[
    ("busy486", busy486),
    ("hold_sendonly", hold_sendonly),
    ("hold_inactive", hold_inactive),
    ("blind_transfer", blind_transfer),
    ("forked_200", forked_200),
    ("early_bye", early_bye),
    ("reinvite_no_media", reinvite_no_media),
    ("reinvite_less_media", reinvite_less_media),
    ("answer_183_without_to_tag", answer_183_without_to_tag),
    ("cancel_no_final", cancel_no_final),
    ("cancel_answered_anyway", cancel_answered_anyway),
    ("diversion", diversion),
    ("history_info", history_info),
];

type Outcomes = (Mutex<HashMap<&'static str, Result<(), String>>>, Condvar);

/// Starts every pair (once, on first use), waits until every pair has finished (so that no
/// daemon or SIPp is left running when the test binary exits, whichever tests it runs), and
/// fails the calling test if pair `name` failed.
fn outcome(name: &'static str) {
    static OUTCOMES: OnceLock<Arc<Outcomes>> = OnceLock::new();
    assert!(PAIRS.iter().any(|(p, _)| *p == name), "no pair {name}");
    let outcomes = OUTCOMES.get_or_init(|| {
        let outcomes: Arc<Outcomes> = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        for &(pair, body) in PAIRS {
            let shared = Arc::clone(&outcomes);
            std::thread::Builder::new()
                .name(format!("pair {pair}"))
                .spawn(move || {
                    let result = std::panic::catch_unwind(body).map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".into())
                    });
                    let (map, done) = &*shared;
                    map.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(pair, result);
                    done.notify_all();
                })
                .unwrap();
        }
        outcomes
    });
    let (map, done) = &**outcomes;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut results = map.lock().unwrap_or_else(PoisonError::into_inner);
    while results.len() < PAIRS.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        results = done
            .wait_timeout(results, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    match results.get(name) {
        Some(Ok(())) => {}
        Some(Err(failure)) => panic!("{name}: {failure}"),
        None => panic!("pair {name} did not finish within 150 s"),
    }
}

#[test]
fn busy_486_reaches_the_caller_and_leaves_a_not_recorded_sidecar() {
    outcome("busy486");
}

#[test]
fn sendonly_hold_twice_then_resume_without_sdp_gives_hold_and_resume_events() {
    outcome("hold_sendonly");
}

#[test]
fn inactive_hold_then_resume_without_sdp_gives_hold_and_resume_events() {
    outcome("hold_inactive");
}

#[test]
fn blind_transfer_by_the_held_callee_passes_the_refer_and_records_a_transfer_event() {
    outcome("blind_transfer");
}

#[test]
fn forked_200s_reach_the_caller_and_only_the_first_dialog_is_recorded() {
    outcome("forked_200");
}

#[test]
fn bye_in_the_early_dialog_reaches_the_caller_and_the_call_is_not_recorded() {
    outcome("early_bye");
}

#[test]
fn refused_reinvite_without_media_leaves_the_call_and_its_media_timeout_in_place() {
    outcome("reinvite_no_media");
}

#[test]
fn hold_by_reinvite_with_less_media_is_recorded_until_the_daemon_stops() {
    outcome("reinvite_less_media");
}

#[test]
fn early_183_without_to_tag_is_anchored_and_the_unanswered_call_not_recorded() {
    outcome("answer_183_without_to_tag");
}

#[test]
fn cancel_without_final_response_ends_as_cancelled_after_64_t1() {
    outcome("cancel_no_final");
}

#[test]
fn cancel_raced_by_the_answer_is_a_recorded_call() {
    outcome("cancel_answered_anyway");
}

#[test]
fn diversion_header_reaches_the_callee_byte_for_byte() {
    outcome("diversion");
}

#[test]
fn history_info_headers_reach_the_callee_byte_for_byte_in_order() {
    outcome("history_info");
}

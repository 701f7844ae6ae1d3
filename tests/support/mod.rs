//! Test support: runs the real `recproxy` binary on 127.0.0.1 with a config of the test's own,
//! reads its readiness line, signals it, and analyses WAVs (with `hound`, an independent reader)
//! and sidecars. The user agents themselves are the library's `recproxy::demo::ua` (the same
//! ones `recproxy demo` uses).
#![allow(dead_code)]

pub mod raw;
pub mod sipp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recproxy::demo::tone::goertzel;

/// A running daemon process.
pub struct Daemon {
    child: Option<Child>,
    /// SIP address it listens on.
    pub sip: SocketAddr,
    /// Recordings directory.
    pub dir: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The name server every test daemon asks: nothing listens there, so a host name fails at once
/// (502) and no test sends a DNS query off the machine. tests/dns.rs replaces this line.
pub const NO_DNS: &str = "dns_servers = [\"127.0.0.1:9\"]\n";

/// Writes a config for a daemon on loopback (media timeout 10 s).
pub fn write_config(
    root: &Path,
    pbx: SocketAddr,
    ports: (u16, u16),
    extra_recording: &str,
) -> PathBuf {
    write_config_with_timeout(root, pbx, ports, "10s", extra_recording)
}

/// Writes a config for a daemon on loopback with the given `media.timeout`.
pub fn write_config_with_timeout(
    root: &Path,
    pbx: SocketAddr,
    ports: (u16, u16),
    media_timeout: &str,
    extra_recording: &str,
) -> PathBuf {
    let dir = root.join("recordings");
    let text = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\npbx = \"udp:{pbx}\"\n{NO_DNS}\n\
         [media]\nbind = \"127.0.0.1\"\nadvertise = \"127.0.0.1\"\nports = \"{}-{}\"\ntimeout = \"{media_timeout}\"\n\n\
         [recording]\ndir = \"{}\"\n{extra_recording}",
        ports.0,
        ports.1,
        dir.display()
    );
    let path = root.join("recproxy.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Daemon {
    /// Starts the daemon on `config` and waits (at most 15 s) for its "listening" line.
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with(config, |_| {})
    }

    /// The TCP address it listens on, from its readiness line (a config with a `tcp:` listen
    /// address after the UDP one).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.log_text()
            .lines()
            .find_map(|l| l.split(",tcp:").nth(1))
            .and_then(|rest| rest.split([',', ' ']).next())
            .expect("tcp address in the listening line")
            .parse()
            .expect("tcp listen address")
    }

    /// Like [`Daemon::start`], with `setup` applied to the command first (limits, say).
    pub fn start_with(config: &Path, setup: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recproxy"));
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn recproxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before it is announced, so a test that reads the log right after
                // `start` returns sees the readiness line.
                let addr = line.find("sip=udp:").map(|pos| {
                    line[pos + 8..]
                        .split([',', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                });
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "daemon did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let text = std::fs::read_to_string(config).unwrap();
        let dir = text
            .lines()
            .find_map(|l| l.strip_prefix("dir = \""))
            .map(|d| PathBuf::from(d.trim_end_matches('"')))
            .expect("dir in config");
        Daemon {
            child: Some(child),
            sip: addr.parse().expect("listen address"),
            dir,
            config: config.to_path_buf(),
            log,
        }
    }

    /// Sends a signal and waits for the process to exit (at most 20 s).
    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit after signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (at most 10 s) until the sidecar of `call_id` is in a final state, and returns it
    /// with its path.
    pub fn final_sidecar(&self, call_id: &str) -> (PathBuf, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for path in sidecars(&self.dir) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if v["sip_call_id"] == call_id && v["state"] != "recording" {
                    return (path, v);
                }
            }
            if Instant::now() > deadline {
                panic!("no final sidecar for {call_id}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every sidecar under a recordings directory.
pub fn sidecars(dir: &Path) -> Vec<PathBuf> {
    recproxy::ops::sidecar_paths(dir)
}

/// Every WAV under a recordings directory.
pub fn wavs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "wav") {
                out.push(p);
            }
        }
    }
    out
}

/// A WAV read with hound.
pub struct Wav {
    /// Channels.
    pub channels: u16,
    /// Rate.
    pub rate: u32,
    /// Left channel samples.
    pub left: Vec<i16>,
    /// Right channel samples.
    pub right: Vec<i16>,
}

impl Wav {
    /// Reads a stereo 16-bit WAV.
    pub fn read(path: &Path) -> Wav {
        let mut reader =
            hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec = reader.spec();
        assert_eq!(spec.bits_per_sample, 16);
        let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        let channels = spec.channels;
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for frame in samples.chunks(channels as usize) {
            left.push(frame[0]);
            right.push(*frame.get(1).unwrap_or(&0));
        }
        Wav {
            channels,
            rate: spec.sample_rate,
            left,
            right,
        }
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.left.len() as u64 * 1000 / u64::from(self.rate)
    }
}

/// Goertzel power of `f` relative to the strongest of `others`: > 1 means `f` dominates.
pub fn dominance(samples: &[i16], rate: u32, f: f64, others: &[f64]) -> f64 {
    let p = goertzel(samples, rate, f);
    let q = others
        .iter()
        .map(|&o| goertzel(samples, rate, o))
        .fold(1e-12, f64::max);
    p / q
}

/// SHA-256 of a file, lowercase hex, computed here independently of the daemon.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let digest = sha2::Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses an RFC 3339 timestamp of the sidecar into milliseconds since the epoch.
pub fn ms(v: &serde_json::Value) -> i128 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    assert!(
        s.ends_with('Z') && s.len() == 24,
        "UTC with milliseconds: {s}"
    );
    t.unix_timestamp_nanos() / 1_000_000
}

/// Runs `f` on a fresh multi-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A daemon on 127.0.0.1 in front of the built-in PBX user agent, which answers every call
/// with one `Answer`, and the runtime the user agents run on.
pub struct Setup {
    _root: tempfile::TempDir,
    /// The daemon.
    pub daemon: Daemon,
    /// The PBX's reports.
    pub pbx: recproxy::demo::ua::PbxHandle,
    /// Runtime of the user agents.
    pub rt: tokio::runtime::Runtime,
}

/// Starts the PBX and the daemon (media ports `ports`, `extra_recording` appended to the
/// `[recording]` table).
pub fn setup(
    answer: recproxy::demo::ua::Answer,
    ports: (u16, u16),
    extra_recording: &str,
) -> Setup {
    use std::net::{IpAddr, Ipv4Addr};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let pbx = rt
        .block_on(recproxy::demo::ua::Pbx::bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
        )))
        .unwrap();
    let config = write_config(root.path(), pbx.local_addr(), ports, extra_recording);
    let daemon = Daemon::start(&config);
    let handle = {
        let _guard = rt.enter();
        pbx.spawn(std::sync::Arc::new(move |_called: &str| answer.clone()))
    };
    Setup {
        _root: root,
        daemon,
        pbx: handle,
        rt,
    }
}

impl Setup {
    /// A phone on 127.0.0.1 places `spec` through the daemon; its report.
    pub fn call(&self, spec: &recproxy::demo::ua::CallSpec) -> recproxy::demo::ua::CallReport {
        let proxy = self.daemon.sip;
        self.rt.block_on(async {
            let phone = recproxy::demo::ua::Phone::bind("127.0.0.1".parse().unwrap())
                .await
                .unwrap();
            phone.call(proxy, spec).await.unwrap()
        })
    }

    /// Places `spec` and checks that both sides saw it answered; both sides' reports.
    pub fn answered(
        &mut self,
        spec: &recproxy::demo::ua::CallSpec,
    ) -> (
        recproxy::demo::ua::CallReport,
        recproxy::demo::ua::UasCallReport,
    ) {
        use recproxy::demo::ua::Outcome;
        let report = self.call(spec);
        assert_eq!(report.outcome, Outcome::Answered, "{report:?}");
        let uas = self.pbx_report();
        assert_eq!(uas.outcome, Outcome::Answered);
        assert_eq!(uas.call_id, report.call_id);
        (report, uas)
    }

    /// The PBX's report of the next call that ended (at most 10 s).
    pub fn pbx_report(&mut self) -> recproxy::demo::ua::UasCallReport {
        self.rt
            .block_on(self.pbx.next_report(Duration::from_secs(10)))
            .expect("PBX saw the call end")
    }
}

/// Samples `[from_s, to_s)` of a channel at `rate`.
pub fn span_at(ch: &[i16], rate: u32, from_s: f64, to_s: f64) -> &[i16] {
    let at = |s: f64| ((s * f64::from(rate)) as usize).min(ch.len());
    &ch[at(from_s)..at(to_s).max(at(from_s))]
}

/// Milliseconds from the phone's answer to `t` (a moment the phone reported).
pub fn since_answer(
    report: &recproxy::demo::ua::CallReport,
    t: Option<std::time::SystemTime>,
) -> i64 {
    t.expect("the phone reported the moment")
        .duration_since(report.answered_at.expect("answered"))
        .expect("after the answer")
        .as_millis() as i64
}

/// Longest run of zero samples in `samples` at `rate`, in milliseconds.
pub fn longest_zero_run_ms_at(samples: &[i16], rate: u32) -> u64 {
    let (mut longest, mut run) = (0u64, 0u64);
    for &s in samples {
        run = if s == 0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest * 1000 / u64::from(rate)
}

/// Every sidecar under the daemon's directory whose `sip_call_id` is `call_id`, parsed.
pub fn sidecars_of(dir: &Path, call_id: &str) -> Vec<serde_json::Value> {
    sidecars(dir)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v["sip_call_id"] == call_id)
        .collect()
}

impl Setup {
    /// Several phones on 127.0.0.1 place `specs` through the daemon at the same time; their
    /// reports in the same order.
    pub fn call_all(
        &self,
        specs: &[recproxy::demo::ua::CallSpec],
    ) -> Vec<recproxy::demo::ua::CallReport> {
        let proxy = self.daemon.sip;
        self.rt.block_on(async {
            let mut calls = Vec::new();
            for spec in specs {
                let spec = spec.clone();
                calls.push(tokio::spawn(async move {
                    let phone = recproxy::demo::ua::Phone::bind("127.0.0.1".parse().unwrap())
                        .await
                        .unwrap();
                    phone.call(proxy, &spec).await.unwrap()
                }));
            }
            let mut reports = Vec::new();
            for call in calls {
                reports.push(call.await.expect("call task"));
            }
            reports
        })
    }
}

//! The built-in user agents (phones, a PBX, an RTP peer playing tones) used by the integration
//! tests and by `recproxy demo`, which runs the real daemon on loopback, places calls through it
//! and checks from each WAV that the caller's tone is on the left and the callee's on the right.

pub mod rtp_peer;
pub mod tone;
pub mod ua;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::call::metadata::{read_sidecar, CallRecord};
use crate::codec::Codec;
use crate::config;
use crate::ops::{sidecar_paths, Daemon};
use ua::{Answer, CallSpec, Outcome, Pbx, Phone};

/// Tones the demo's callers play, one per call in turn.
const CALLER_TONES: [f64; 4] = [440.0, 550.0, 660.0, 770.0];
/// Tones the demo PBX answers with, one per call in turn.
const CALLEE_TONES: [f64; 4] = [1000.0, 1200.0, 1400.0, 1600.0];

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Recordings directory.
    pub out: PathBuf,
    /// Number of calls, placed at the same time.
    pub calls: u32,
    /// Talk time per call.
    pub talk: Duration,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Local IO (sockets, directories).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The built-in configuration was refused (a bug).
    #[error("built-in configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The daemon did not start.
    #[error("daemon: {0}")]
    Start(#[from] crate::ops::StartError),
}

/// One demo call as recorded.
#[derive(Debug, Clone)]
pub struct DemoRow {
    /// Caller number.
    pub caller: String,
    /// Called number.
    pub called: String,
    /// Codec used.
    pub codec: Codec,
    /// Tone the caller played (Hz).
    pub caller_tone: f64,
    /// Tone the callee played (Hz).
    pub callee_tone: f64,
    /// What happened to the call at the phone.
    pub outcome: String,
    /// The sidecar, if found.
    pub record: Option<CallRecord>,
    /// Dominant tone found on each WAV channel (left, right), if the WAV could be read.
    pub found_tones: Option<(f64, f64)>,
}

impl DemoRow {
    /// The WAV holds the caller's tone on the left and the callee's on the right.
    pub fn verified(&self) -> bool {
        self.found_tones == Some((self.caller_tone, self.callee_tone))
    }
}

/// The demo's result.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// One row per call.
    pub rows: Vec<DemoRow>,
}

impl DemoSummary {
    /// Rows whose recording checked out.
    pub fn verified(&self) -> usize {
        self.rows.iter().filter(|r| r.verified()).count()
    }

    /// A plain-text table of the recordings.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<26} {:<12} {:<12} {:<5} {:>9} {:<16} {:<8} {}\n",
            "recording", "caller", "called", "codec", "duration", "tones L/R (Hz)", "check", "wav"
        );
        for row in &self.rows {
            let rec = row.record.as_ref();
            let id = rec.map(|r| r.recording_id.as_str()).unwrap_or("-");
            let duration = rec
                .and_then(|r| r.wav.as_ref())
                .and_then(|w| w.duration_ms)
                .map(|ms| format!("{:.2} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let tones = row
                .found_tones
                .map(|(l, r)| format!("{l:.0}/{r:.0}"))
                .unwrap_or_else(|| "-".into());
            let check = if row.verified() { "ok" } else { "FAILED" };
            let wav = rec
                .and_then(|r| r.wav.as_ref())
                .map(|w| w.path.clone())
                .unwrap_or_else(|| format!("(none: {})", row.outcome));
            out.push_str(&format!(
                "{:<26} {:<12} {:<12} {:<5} {:>9} {:<16} {:<8} {}\n",
                id,
                row.caller,
                row.called,
                row.codec.name(),
                duration,
                tones,
                check,
                wav
            ));
        }
        out
    }
}

/// Runs the demo: daemon on loopback, a PBX, `calls` phones calling at once.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    std::fs::create_dir_all(&opts.out)?;
    let out = std::fs::canonicalize(&opts.out)?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pbx = Pbx::bind(SocketAddr::new(loopback, 0)).await?;
    let pbx_addr = pbx.local_addr();
    let text = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\npbx = \"udp:{pbx_addr}\"\n\
         [media]\nbind = \"127.0.0.1\"\nadvertise = \"127.0.0.1\"\nports = \"40000-40999\"\ntimeout = \"30s\"\n\
         [recording]\ndir = {dir}\nheader_update = \"5s\"\n",
        dir = toml_string(&out.display().to_string()),
    );
    let cfg = config::parse(&text, Path::new("<demo>"))?;
    let daemon = Daemon::start(&cfg).await?;
    let proxy = daemon.sip_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_task = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));

    let tones: HashMap<String, f64> = (0..opts.calls)
        .map(|i| {
            (
                called_number(i),
                CALLEE_TONES[i as usize % CALLEE_TONES.len()],
            )
        })
        .collect();
    let decide = Arc::new(move |called: &str| Answer::Accept {
        ring: Duration::from_millis(300),
        tone_hz: tones.get(called).copied().unwrap_or(1000.0),
    });
    let mut pbx = pbx.spawn(decide);

    let mut calls = Vec::new();
    for i in 0..opts.calls {
        let codec = if i % 2 == 0 { Codec::Pcmu } else { Codec::Pcma };
        let tone = CALLER_TONES[i as usize % CALLER_TONES.len()];
        let from = format!("04012345{i:02}");
        let spec = CallSpec {
            from_display: Some(format!("Demo caller {}", i + 1)),
            ..CallSpec::new(&from, &called_number(i), codec, tone, opts.talk)
        };
        let phone = Phone::bind(loopback).await?;
        calls.push(tokio::spawn(async move {
            let report = phone.call(proxy, &spec).await;
            (spec, report)
        }));
    }
    let mut finished = Vec::new();
    for call in calls {
        if let Ok(done) = call.await {
            finished.push(done);
        }
    }
    // Let the PBX see every BYE before stopping.
    for _ in 0..finished.len() {
        if pbx.next_report(Duration::from_secs(5)).await.is_none() {
            break;
        }
    }
    let _ = stop_tx.send(());
    let _ = daemon_task.await;
    pbx.shutdown();

    let sidecars: Vec<CallRecord> = sidecar_paths(&out)
        .iter()
        .filter_map(|p| read_sidecar(p).ok())
        .collect();
    let rows = finished
        .into_iter()
        .map(|(spec, report)| {
            let (outcome, call_id) = match &report {
                Ok(r) => (format!("{:?}", r.outcome), Some(r.call_id.clone())),
                Err(e) => (format!("error: {e}"), None),
            };
            let record =
                call_id.and_then(|id| sidecars.iter().find(|s| s.sip_call_id == id).cloned());
            let found_tones = record
                .as_ref()
                .filter(|_| matches!(&report, Ok(r) if r.outcome == Outcome::Answered))
                .and_then(|r| r.wav.as_ref())
                .and_then(|w| read_stereo_wav(Path::new(&w.path)).ok())
                .map(|(rate, left, right)| {
                    let pick =
                        |samples: &[i16], candidates: &[f64]| dominant(samples, rate, candidates);
                    let all: Vec<f64> = CALLER_TONES.iter().chain(&CALLEE_TONES).copied().collect();
                    (pick(&left, &all), pick(&right, &all))
                });
            DemoRow {
                caller: spec.from_user.clone(),
                called: spec.to_user.clone(),
                codec: spec.codec,
                caller_tone: spec.tone_hz,
                callee_tone: CALLEE_TONES[called_index(&spec.to_user) % CALLEE_TONES.len()],
                outcome,
                record,
                found_tones,
            }
        })
        .collect();
    Ok(DemoSummary { rows })
}

fn called_number(i: u32) -> String {
    format!("02951200{i:02}")
}

fn called_index(number: &str) -> usize {
    number
        .get(number.len().saturating_sub(2)..)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The candidate frequency with the most energy in `samples`.
pub fn dominant(samples: &[i16], rate: u32, candidates: &[f64]) -> f64 {
    candidates
        .iter()
        .copied()
        .map(|f| (f, tone::goertzel(samples, rate, f)))
        .fold(
            (0.0, f64::MIN),
            |best, (f, p)| if p > best.1 { (f, p) } else { best },
        )
        .0
}

/// Reads a 16-bit stereo PCM WAV of the layout recproxy writes: (rate, left, right).
pub fn read_stereo_wav(path: &Path) -> std::io::Result<(u32, Vec<i16>, Vec<i16>)> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    if bytes.len() < 44 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if &bytes[12..16] != b"fmt " || u16_at(20) != 1 || u16_at(22) != 2 || u16_at(34) != 16 {
        return Err(bad("not 16-bit stereo PCM"));
    }
    if &bytes[36..40] != b"data" {
        return Err(bad("data chunk not where expected"));
    }
    let rate = u32_at(24);
    let len = (u32_at(40) as usize).min(bytes.len() - 44);
    let data = &bytes[44..44 + len];
    let mut left = Vec::with_capacity(len / 4);
    let mut right = Vec::with_capacity(len / 4);
    for frame in data.chunks_exact(4) {
        left.push(i16::from_le_bytes([frame[0], frame[1]]));
        right.push(i16::from_le_bytes([frame[2], frame[3]]));
    }
    Ok((rate, left, right))
}

fn toml_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

//! Daemon lifecycle: start-up (recovery of recordings a crash left open, binding, wiring the
//! proxy core, registry, relay and recorder together), the shutdown signal (SIGTERM/SIGINT drain)
//! and logging setup. No protocol logic lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::call::metadata::{read_sidecar, write_sidecar, RecordState};
use crate::call::policy::ServicePolicy;
use crate::call::registry::{CallRegistry, RegistryConfig};
use crate::config::{Config, Transport};
use crate::media::ports::PortPool;
use crate::media::tap::DEFAULT_TAP_QUEUE;
use crate::record::recorder::{Recorder, RecorderConfig};
use crate::record::timeline::TimelineConfig;
use crate::record::wav::{repair, sha256_file};
use crate::sip::dns::Resolver;
use crate::sip::proxy::{Peer, Proxy, ProxyConfig};
use crate::sip::transport::{Driver, DriverOptions, SipSockets, TransportError};

/// Sample rate of the recordings (G.711 is 8 kHz).
pub const SAMPLE_RATE: u32 = 8000;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The recordings directory is unusable.
    #[error("recordings directory {path}: {source}")]
    RecordingDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The recorder thread could not start.
    #[error("cannot start the recorder thread: {0}")]
    Recorder(std::io::Error),
}

/// What start-up recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sidecars finalised as `recovered`.
    pub recovered: Vec<PathBuf>,
    /// Sidecars that could not be recovered, with why.
    pub failed: Vec<(PathBuf, String)>,
}

/// A started daemon, ready to run.
pub struct Daemon {
    driver: Driver,
    listening: Vec<Peer>,
    recovery: RecoveryReport,
}

impl Daemon {
    /// Recovers what a crash left open, binds every socket and starts the recorder. Must be
    /// called inside a tokio runtime.
    pub async fn start(cfg: &Config) -> Result<Daemon, StartError> {
        // A file that reaches the process's size limit (ulimit -f) must fail its write with
        // EFBIG, which stops that one recording; the default SIGXFSZ would kill every call.
        // tokio's handler replaces the default action for good.
        if let Err(e) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
        {
            tracing::warn!(error = %e, "cannot take over SIGXFSZ");
        }
        let dir = &cfg.recording.dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::RecordingDir {
            path: dir.clone(),
            source,
        })?;
        let recovery = recover(dir);
        let resolver = Resolver::new(&cfg.sip.dns_servers);
        let sockets = SipSockets::bind(&cfg.sip.listen).await?;
        let listening = sockets.local_addrs();
        // Via, Record-Route and Path carry the advertised IP with the port bound for each
        // transport.
        let advertise = listening
            .iter()
            .map(|l| Peer {
                transport: l.transport,
                addr: SocketAddr::new(cfg.sip.advertise, l.addr.port()),
            })
            .collect();
        let proxy = Proxy::new(
            ProxyConfig {
                advertise,
                local: listening.iter().map(|l| l.addr).collect(),
                pbx: vec![Peer {
                    transport: cfg.sip.pbx.transport,
                    addr: cfg.sip.pbx.addr,
                }],
                max_rate: cfg.sip.max_rate,
                large_over_tcp: cfg.sip.large_over_tcp,
            },
            ulid::Ulid::new().random() as u64,
        );
        let (recorder_tx, recorder_rx) = mpsc::unbounded_channel();
        let recorder = Recorder::start(
            RecorderConfig {
                header_update: cfg.recording.header_update,
                timeline: TimelineConfig {
                    rate: SAMPLE_RATE,
                    reorder_window: cfg.recording.reorder_window,
                    ..TimelineConfig::default()
                },
                tap_queue: DEFAULT_TAP_QUEUE,
                mask_dtmf: cfg.recording.mask_dtmf,
            },
            recorder_tx,
        )
        .map_err(StartError::Recorder)?;
        let (relay_tx, relay_rx) = mpsc::unbounded_channel();
        let pool = PortPool::new(cfg.media.bind, cfg.media.ports.low, cfg.media.ports.high);
        let registry = CallRegistry::new(
            RegistryConfig {
                media_advertise: cfg.media.advertise,
                media_timeout: cfg.media.timeout,
                recording_dir: dir.clone(),
                sample_rate: SAMPLE_RATE,
                wideband_rate: cfg.recording.wideband_rate,
                policy: ServicePolicy::new(cfg.services.clone(), cfg.policy.sample_seed.clone()),
            },
            pool,
            recorder,
            relay_tx,
        );
        let driver = Driver::new(
            sockets,
            proxy,
            registry,
            relay_rx,
            recorder_rx,
            DriverOptions {
                max_message_size: cfg.sip.max_message_size,
                tcp_idle: cfg.sip.tcp_idle_timeout,
                resolver,
            },
        );
        Ok(Daemon {
            driver,
            listening,
            recovery,
        })
    }

    /// The UDP SIP addresses bound (ephemeral ports resolved).
    pub fn sip_addrs(&self) -> Vec<SocketAddr> {
        self.listening
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .map(|l| l.addr)
            .collect()
    }

    /// Every SIP address bound, UDP first, then TCP.
    pub fn listening(&self) -> &[Peer] {
        &self.listening
    }

    /// What start-up recovery did.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Serves until `shutdown` resolves, then finalises every active call.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        self.driver.run(shutdown).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; waiting for Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Finalises every recording whose sidecar still says `recording` (the daemon died while it
/// was recording): the WAV header is fixed to hold all audio on disk, the SHA-256 computed, and
/// the state set to `recovered`.
pub fn recover(dir: &Path) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    for path in sidecar_paths(dir) {
        let Ok(mut record) = read_sidecar(&path) else {
            continue;
        };
        if record.state != RecordState::Recording {
            continue;
        }
        let result = (|| -> Result<(), String> {
            if let Some(wav) = record.wav.as_mut() {
                let summary = repair(Path::new(&wav.path)).map_err(|e| e.to_string())?;
                wav.bytes = Some(summary.file_bytes);
                wav.duration_ms = Some(summary.frames * 1000 / u64::from(summary.rate.max(1)));
                wav.sha256 = Some(sha256_file(Path::new(&wav.path)).map_err(|e| e.to_string())?);
            }
            record.state = RecordState::Recovered;
            write_sidecar(&path, &record).map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "recovered a recording left open by a crash");
                report.recovered.push(path);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot recover recording");
                report.failed.push((path, e));
            }
        }
    }
    report
}

/// Every sidecar under a recordings directory (`<dir>/YYYY/MM/DD/*.json`), sorted.
pub fn sidecar_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_sidecars(dir, &mut out, 0);
    out.sort();
    out
}

/// The depth limit keeps a misconfigured `dir` (say `/`) from walking the whole disk.
fn collect_sidecars(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_sidecars(&path, out, depth + 1),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "json") => out.push(path),
            _ => {}
        }
    }
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default level.
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

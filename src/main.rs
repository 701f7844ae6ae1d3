//! The `recproxy` command line: parses arguments, loads the configuration and wires the daemon,
//! `check-config`, `demo` and `import`. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use recproxy::{config, demo, import, ops};

#[derive(Parser)]
#[command(
    name = "recproxy",
    version,
    about = "Call-recording SIP proxy: anchors RTP and records each call as a stereo WAV with a JSON sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 valid, 2 invalid).
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Start the proxy on loopback with built-in phones and PBX, place a few calls playing
    /// distinct tones, and print where the recordings went.
    Demo {
        /// Where recordings and metadata go.
        #[arg(long, default_value = "recordings")]
        out: PathBuf,
        /// Number of calls to place (at the same time).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        calls: u32,
        /// Talk time of each call in seconds.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
    },
    /// Rebuild the calls in a packet capture (pcap or pcapng: SIP over UDP or TCP, and RTP) and
    /// record each one as the daemon would: a stereo WAV and a JSON sidecar per call.
    Import {
        /// The capture file.
        file: PathBuf,
        /// Where recordings and metadata go.
        #[arg(long, default_value = "recordings")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(cfg) => {
                println!(
                    "{}: ok (sip {}, pbx {}, media {}:{}-{}, recordings in {})",
                    file.display(),
                    cfg.sip
                        .listen
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    cfg.sip.pbx,
                    cfg.media.bind,
                    cfg.media.ports.low,
                    cfg.media.ports.high,
                    cfg.recording.dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("recproxy: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config: path } => {
            let cfg = match config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("recproxy: {e}");
                    return ExitCode::from(2);
                }
            };
            ops::init_tracing("info");
            match run_daemon(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("recproxy: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            out,
            calls,
            seconds,
        } => {
            ops::init_tracing("warn");
            match run_demo(out, calls, seconds) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("recproxy demo: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Import { file, out } => {
            ops::init_tracing("warn");
            match import::import(&file, &out) {
                Ok(report) => {
                    println!("{}", report.table());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("recproxy import: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_daemon(cfg: config::Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let daemon = ops::Daemon::start(&cfg).await.context("start-up failed")?;
        let sip = daemon
            .listening()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        tracing::info!(%sip, recovered = daemon.recovery().recovered.len(), "listening");
        daemon.run(ops::shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn run_demo(out: PathBuf, calls: u32, seconds: u64) -> anyhow::Result<bool> {
    let summary = runtime()?.block_on(demo::run(demo::DemoOptions {
        out: out.clone(),
        calls,
        talk: std::time::Duration::from_secs(seconds),
    }))?;
    println!("{}", summary.table());
    println!(
        "{} of {} calls recorded with the caller's tone on the left and the callee's on the right; recordings and metadata in {}",
        summary.verified(),
        summary.rows.len(),
        out.display()
    );
    Ok(summary.verified() == summary.rows.len())
}

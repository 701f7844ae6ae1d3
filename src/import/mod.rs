//! Offline import: rebuilding calls from packet captures made elsewhere (`recproxy import`).
//! [`capture`] turns a pcap/pcapng file into time-stamped UDP datagrams and whole SIP messages;
//! [`calls`] rebuilds the calls in them; [`import`] records each one with the live daemon's
//! recorder ([`Session`]) into the same WAV and sidecar files, in the same
//! `<out>/YYYY/MM/DD/<recording-id>.{wav,json}` layout.
//!
//! Time: the recorder works in `Instant`s. A capture time `t` becomes `base + (t - first)`, with
//! `base` taken when the import starts and `first` the capture's first packet, and the recorder is
//! ticked every 20 ms of capture time, so its timeline (reorder window, DTMF, header updates)
//! behaves as it does live. Wall-clock times in the sidecar are the capture's own.

pub mod calls;
pub mod capture;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::call::metadata::{
    day_dir, read_sidecar, write_sidecar, CallRecord, Decision, RecordState, SidecarError, WavInfo,
};
use crate::record::recorder::{RecorderConfig, Session, StartRecording};
use crate::record::timeline::TimelineConfig;
use crate::sip::proxy::Party;

use self::calls::{CallPlan, ReconstructStats, RecordingPlan, Step};
use self::capture::{CaptureError, CaptureStats, Captured};

/// How often the recorder moves ready audio to the file, in capture time (as live).
const TICK: Duration = Duration::from_millis(20);

/// One call of the capture and what became of it.
#[derive(Debug, Clone)]
pub struct ImportedCall {
    /// SIP Call-ID.
    pub call_id: String,
    /// The record's ULID (the file names).
    pub recording_id: String,
    /// Final state of the record (`complete`, `not_recorded`, ...).
    pub state: RecordState,
    /// An earlier import of this capture had written it already: left as it was.
    pub already_imported: bool,
    /// Caller number.
    pub caller: Option<String>,
    /// Called number.
    pub called: Option<String>,
    /// First codec of the recording (the caller's, else the callee's).
    pub codec: Option<String>,
    /// Length of the WAV in milliseconds.
    pub duration_ms: Option<u64>,
    /// DTMF digits pressed during the recording, in order (either party).
    pub digits: String,
    /// `end_reason`, as in the sidecar (`None` when the end is not in the capture).
    pub end_reason: Option<String>,
    /// Why it was not recorded.
    pub not_recorded_reason: Option<String>,
    /// The WAV, when there is one.
    pub wav: Option<PathBuf>,
    /// The sidecar.
    pub sidecar: PathBuf,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The capture read.
    pub file: PathBuf,
    /// What the capture reader saw.
    pub capture: CaptureStats,
    /// What the call reconstruction saw.
    pub calls_seen: ReconstructStats,
    /// One per call (initial INVITE), in INVITE order.
    pub calls: Vec<ImportedCall>,
}

impl ImportReport {
    /// A plain-text table of the calls, like the demo's, and a line of totals.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<26} {:<13} {:<12} {:<12} {:<5} {:>9} {:<10} {:<10} {}\n",
            "recording", "state", "caller", "called", "codec", "duration", "end", "digits", "file"
        );
        for call in &self.calls {
            let state = serde_json::to_value(call.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let duration = call
                .duration_ms
                .map(|ms| format!("{:.2} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let mut file = match (&call.wav, &call.not_recorded_reason) {
                (Some(wav), _) => wav.display().to_string(),
                (None, Some(why)) => format!("{} ({why})", call.sidecar.display()),
                (None, None) => call.sidecar.display().to_string(),
            };
            if call.already_imported {
                file = format!("already imported, left as it was: {file}");
            }
            out.push_str(&format!(
                "{:<26} {:<13} {:<12} {:<12} {:<5} {:>9} {:<10} {:<10} {}\n",
                call.recording_id,
                state,
                call.caller.as_deref().unwrap_or("-"),
                call.called.as_deref().unwrap_or("-"),
                call.codec.as_deref().unwrap_or("-"),
                duration,
                // The end of the call is not in the capture.
                call.end_reason.as_deref().unwrap_or("not seen"),
                if call.digits.is_empty() {
                    "-"
                } else {
                    &call.digits
                },
                file
            ));
        }
        let count = |f: &dyn Fn(&ImportedCall) -> bool| self.calls.iter().filter(|c| f(c)).count();
        out.push_str(&format!(
            "{}: {} packets over {:.1} s, {} SIP messages, {} RTP packets ({} matched to calls); \
             {} calls: {} recorded, {} not recorded, {} already imported",
            self.file.display(),
            self.capture.packets,
            self.capture.duration().as_secs_f64(),
            self.calls_seen.sip_messages,
            self.calls_seen.rtp_packets,
            self.calls_seen.rtp_matched,
            self.calls.len(),
            count(&|c| !c.already_imported && c.wav.is_some()),
            count(&|c| !c.already_imported && c.wav.is_none()),
            count(&|c| c.already_imported),
        ));
        out
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The capture cannot be read (the error names the byte offset where it broke).
    #[error("{}", capture_message(path, source))]
    Capture {
        /// The capture.
        path: PathBuf,
        /// Why.
        source: CaptureError,
    },
    /// The output directory cannot be made.
    #[error("{path}: {source}")]
    Output {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A sidecar cannot be written.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
}

/// The capture error with the file named once.
fn capture_message(path: &Path, error: &CaptureError) -> String {
    match error {
        CaptureError::Open { .. } => error.to_string(),
        _ => format!("{}: {error}", path.display()),
    }
}

/// Imports a capture: rebuilds its calls and writes each one's WAV (when recorded) and sidecar
/// under `out`. A call whose sidecar is already there in a final state (an earlier import of the
/// same capture) is left as it is.
pub fn import(path: &Path, out: &Path) -> Result<ImportReport, ImportError> {
    let (captured, stats) = capture::read_capture(path).map_err(|source| ImportError::Capture {
        path: path.to_path_buf(),
        source,
    })?;
    let output = |source| ImportError::Output {
        path: out.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(output)?;
    // Sidecars name their WAV by absolute path, as the daemon's do.
    let out = std::fs::canonicalize(out).map_err(output)?;
    let rebuilt = calls::reconstruct(&captured);
    let clock = Clock {
        base: Instant::now(),
        first: captured
            .first()
            .map(|c| c.at)
            .or(stats.first)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    };
    let mut report = ImportReport {
        file: path.to_path_buf(),
        capture: stats,
        calls_seen: rebuilt.stats,
        calls: Vec::new(),
    };
    for plan in &rebuilt.calls {
        let _span = tracing::info_span!("import", call_id = %plan.call_id, recording_id = %plan.recording_id).entered();
        report
            .calls
            .push(import_call(plan, &captured, &clock, &out)?);
    }
    Ok(report)
}

/// Capture time to recorder time.
struct Clock {
    base: Instant,
    first: SystemTime,
}

impl Clock {
    fn at(&self, t: SystemTime) -> Instant {
        self.base + t.duration_since(self.first).unwrap_or_default()
    }
}

fn import_call(
    plan: &CallPlan,
    captured: &[Captured],
    clock: &Clock,
    out: &Path,
) -> Result<ImportedCall, ImportError> {
    // The daemon files a recording under the day it started, anything else under its INVITE's.
    let day = day_dir(
        out,
        plan.answer
            .filter(|_| plan.recorded())
            .unwrap_or(plan.invite),
    );
    let sidecar = day.join(format!("{}.json", plan.recording_id));
    if let Ok(existing) = read_sidecar(&sidecar) {
        // A sidecar still `recording` is a crashed import: done again.
        if existing.state != RecordState::Recording {
            tracing::info!(path = %sidecar.display(), "already imported");
            return Ok(summary(&existing, sidecar, true));
        }
    }
    let record = match &plan.recording {
        None => {
            let record = plan.final_record();
            write_sidecar(&sidecar, &record)?;
            record
        }
        Some(recording) => {
            let wav = day.join(format!("{}.wav", plan.recording_id));
            record_call(plan, recording, captured, clock, &wav, &sidecar)?
        }
    };
    tracing::info!(state = ?record.state, "call imported");
    Ok(summary(&record, sidecar, false))
}

/// Records one call through a recorder [`Session`], as the recorder thread would have: opened
/// at the answer, fed the call's packets and map changes in capture order with ticks every 20 ms
/// of capture time, closed at the end.
fn record_call(
    plan: &CallPlan,
    recording: &RecordingPlan,
    captured: &[Captured],
    clock: &Clock,
    wav: &Path,
    sidecar: &Path,
) -> Result<CallRecord, ImportError> {
    let Some(answer) = plan.answer else {
        // A recording always starts at an answer; nothing to record without one.
        let record = plan.final_record();
        write_sidecar(sidecar, &record)?;
        return Ok(record);
    };
    let wav_info = WavInfo {
        path: wav.display().to_string(),
        bytes: None,
        sample_rate: recording.rate,
        channels: 2,
        duration_ms: None,
        sha256: None,
    };
    let mut opening = plan.opening_record();
    opening.wav = Some(wav_info.clone());
    let mut last = plan.final_record();
    last.wav = Some(wav_info);
    let cfg = RecorderConfig {
        // The daemon's default `recording.header_update`.
        header_update: Duration::from_secs(5),
        timeline: TimelineConfig::default(),
        tap_queue: 1,
        mask_dtmf: false,
    };
    let start = StartRecording {
        slot: 0,
        wav_path: wav.to_path_buf(),
        sidecar_path: sidecar.to_path_buf(),
        start: clock.at(answer),
        codecs: recording.codecs.clone(),
        aux: recording.aux.clone(),
        rate: recording.rate,
        record: opening,
    };
    let mut session = match Session::open(&cfg, start) {
        Ok(session) => session,
        Err(reason) => {
            // As the recorder does when it cannot open a WAV.
            tracing::error!(%reason, "cannot open WAV");
            last.state = RecordState::NotRecorded;
            last.service.decision = Decision::Failed;
            last.not_recorded_reason = Some(reason);
            last.wav = None;
            write_sidecar(sidecar, &last)?;
            return Ok(last);
        }
    };
    let mut next_tick = answer + TICK;
    let mut tick_until = |session: &mut Session, t: SystemTime| {
        while next_tick <= t {
            session.tick(clock.at(next_tick));
            next_tick += TICK;
        }
    };
    for step in &recording.steps {
        tick_until(&mut session, step.at());
        match step {
            Step::Maps { codecs, aux, .. } => session.set_maps(codecs.clone(), aux.clone()),
            Step::Packet { at, party, index } => {
                // The maps come first in the steps: a payload type they lack is not audio.
                session.packet(*party, clock.at(*at), &captured[*index].payload);
            }
        }
    }
    tick_until(&mut session, plan.end);
    let record = session.close(clock.at(plan.end), last, [0, 0]);
    write_sidecar(sidecar, &record)?;
    Ok(record)
}

/// The report row of a record.
fn summary(record: &CallRecord, sidecar: PathBuf, already_imported: bool) -> ImportedCall {
    let leg = |party: Party| match party {
        Party::Caller => &record.legs.caller,
        Party::Callee => &record.legs.callee,
    };
    ImportedCall {
        call_id: record.sip_call_id.clone(),
        recording_id: record.recording_id.clone(),
        state: record.state,
        already_imported,
        caller: record.caller_number.clone(),
        called: record.called_number.clone(),
        codec: leg(Party::Caller)
            .codec
            .clone()
            .or_else(|| leg(Party::Callee).codec.clone()),
        duration_ms: record.wav.as_ref().and_then(|w| w.duration_ms),
        digits: record
            .events
            .iter()
            .filter(|e| e.kind == "dtmf")
            .filter_map(|e| e.digit.as_deref())
            .collect(),
        end_reason: record.end_reason.and_then(|r| {
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
        }),
        not_recorded_reason: record.not_recorded_reason.clone(),
        wav: record.wav.as_ref().map(|w| PathBuf::from(&w.path)),
        sidecar,
    }
}

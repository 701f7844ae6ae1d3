//! The metadata record of one call (the JSON sidecar next to the WAV), its schema version, time
//! formatting, and atomic writing (temp file + fsync + rename + directory fsync), so a sidecar on
//! disk is always either the old or the new version, never a torn one. Documented in
//! `docs/metadata.md`; absent facts are `null`, never made up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Version of the sidecar layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Where the recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Being recorded now (or the daemon died while it was).
    Recording,
    /// Finalised normally.
    Complete,
    /// Finalised at start-up after a crash.
    Recovered,
    /// Nothing was recorded; `not_recorded_reason` says why.
    NotRecorded,
    /// Erased on request.
    Erased,
}

/// The policy decision for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Policy says record it.
    Recorded,
    /// Sampling left it out.
    SampledOut,
    /// The service does not record.
    PolicyNone,
    /// It was to be recorded but could not be.
    Failed,
}

/// Which way the call went, from the PBX's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a phone or trunk to the PBX.
    Inbound,
    /// From the PBX out to a phone or trunk.
    Outbound,
    /// Between two extensions.
    Internal,
}

/// Why the recording (and for calls that never started, the call) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The caller hung up (BYE).
    ByeCaller,
    /// The callee hung up (BYE).
    ByeCallee,
    /// The caller cancelled before answer.
    Cancel,
    /// The call was refused (final error response).
    Rejected,
    /// Onward transfer stopped the recording.
    Transferred,
    /// No media in either direction for the media timeout.
    MediaTimeout,
    /// The session timer (RFC 4028) ran out without a refresh.
    SessionExpired,
    /// The daemon was stopped.
    Shutdown,
    /// Recording failed.
    Failure,
}

impl EndReason {
    /// Who or what ended it, for the `ended_by` field.
    pub fn ended_by(self) -> &'static str {
        match self {
            EndReason::ByeCaller | EndReason::Cancel => "caller",
            EndReason::ByeCallee | EndReason::Rejected => "callee",
            EndReason::Transferred => "transfer",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::SessionExpired => "session_timer",
            EndReason::Shutdown => "shutdown",
            EndReason::Failure => "failure",
        }
    }
}

/// Service and policy decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The call's `[[service]]` (first match by called number, else the default service);
    /// `null` when no service claims the call.
    pub name: Option<String>,
    /// Tenant of the service (`null` when it names none).
    pub tenant: Option<String>,
    /// What policy decided: sampling and `record = "none"` are decided at INVITE, a failure
    /// when it happens.
    pub decision: Decision,
    /// Why, when the decision is not `recorded`.
    pub reason: Option<String>,
}

/// Timestamps, RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Times {
    /// Initial INVITE seen.
    pub invite: Option<String>,
    /// 2xx to the INVITE seen.
    pub answer: Option<String>,
    /// First sample of the WAV.
    pub recording_start: Option<String>,
    /// Last sample of the WAV.
    pub recording_end: Option<String>,
    /// End of the call.
    pub end: Option<String>,
}

/// Media facts of one party.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegInfo {
    /// Codec the party sent (first one seen in the recording), e.g. "PCMU".
    pub codec: Option<String>,
    /// RTP packets of this party that reached the recorder.
    pub packets: u64,
    /// Packets missing by sequence number.
    pub lost: u64,
    /// Packets that arrived too late to be placed.
    pub late: u64,
    /// Audio missing from the recording because copies were dropped before the recorder
    /// (recorder overloaded), in milliseconds, assuming 20 ms packets.
    pub gap_ms: u64,
}

/// Both parties' media facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Legs {
    /// The caller (left channel).
    pub caller: LegInfo,
    /// The callee (right channel).
    pub callee: LegInfo,
}

/// A mid-call event with its offset into the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEventRecord {
    /// Milliseconds from the recording start.
    pub at_ms: u64,
    /// Event type: hold, resume, dtmf, transfer, codec_change, gap, pause.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which party caused it (`caller` or `callee`), for events a party causes (hold, resume);
    /// the key is left out when it does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For `codec_change`: the audio codec negotiated from then on (e.g. `PCMA`); the key is
    /// left out for other events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// For `dtmf`: the digit (`0`-`9`, `*`, `#`, `A`-`D`, `F` for flash); left out when the
    /// service masks DTMF (the digit is never stored) and for other events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digit: Option<String>,
    /// For `dtmf`: how long the key was held, as the sender measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The WAV file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavInfo {
    /// Path of the WAV file.
    pub path: String,
    /// File size in bytes (set when finalised).
    pub bytes: Option<u64>,
    /// Samples per second.
    pub sample_rate: u32,
    /// Always 2: left caller, right callee.
    pub channels: u16,
    /// Length of the audio in milliseconds (set when finalised).
    pub duration_ms: Option<u64>,
    /// SHA-256 of the whole file, lowercase hex (set when finalised).
    pub sha256: Option<String>,
}

/// The sidecar of one call. Field order is the JSON key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Layout version, `SCHEMA_VERSION`.
    pub schema_version: u32,
    /// ULID of the recording; also the file name.
    pub recording_id: String,
    /// SIP Call-ID of the call.
    pub sip_call_id: String,
    /// Where the recording stands.
    pub state: RecordState,
    /// Why nothing was recorded (`null` when recorded).
    pub not_recorded_reason: Option<String>,
    /// Service and decision.
    pub service: ServiceInfo,
    /// Direction of the call.
    pub direction: Option<Direction>,
    /// Call type (direct, returned_from_extension, ...): not determined in this version.
    pub call_type: Option<String>,
    /// Caller number as recorded (P-Asserted-Identity user, else From user).
    pub caller_number: Option<String>,
    /// Caller number exactly as signalled.
    pub caller_number_raw: Option<String>,
    /// allowed | restricted: not determined in this version.
    pub caller_presentation: Option<String>,
    /// Called number (Request-URI user part).
    pub called_number: Option<String>,
    /// Service number called: not determined in this version.
    pub service_number: Option<String>,
    /// Answering agent: not determined in this version.
    pub agent: Option<serde_json::Value>,
    /// Timestamps.
    pub times: Times,
    /// Call duration from answer to end in milliseconds (`null` if never answered).
    pub duration_ms: Option<u64>,
    /// invite | answer: what started the recording.
    pub start_reason: Option<String>,
    /// Why the recording (or the unanswered call) ended.
    pub end_reason: Option<EndReason>,
    /// Who or what ended it: caller, callee, transfer, media_timeout, shutdown, failure.
    pub ended_by: Option<String>,
    /// Per-party media facts.
    pub legs: Legs,
    /// Mid-call events.
    pub events: Vec<CallEventRecord>,
    /// The WAV, if one was written.
    pub wav: Option<WavInfo>,
}

impl CallRecord {
    /// A fresh record for a call seen now.
    pub fn new(recording_id: String, sip_call_id: String) -> CallRecord {
        CallRecord {
            schema_version: SCHEMA_VERSION,
            recording_id,
            sip_call_id,
            state: RecordState::Recording,
            not_recorded_reason: None,
            service: ServiceInfo {
                name: None,
                tenant: None,
                decision: Decision::Recorded,
                reason: None,
            },
            direction: None,
            call_type: None,
            caller_number: None,
            caller_number_raw: None,
            caller_presentation: None,
            called_number: None,
            service_number: None,
            agent: None,
            times: Times::default(),
            duration_ms: None,
            start_reason: None,
            end_reason: None,
            ended_by: None,
            legs: Legs::default(),
            events: Vec::new(),
            wav: None,
        }
    }

    /// Sets the end reason and the matching `ended_by`.
    pub fn set_end(&mut self, reason: EndReason) {
        self.end_reason = Some(reason);
        self.ended_by = Some(reason.ended_by().to_string());
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T14:05:09.123Z`.
pub fn format_time(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let ms = dt.millisecond();
    let trimmed = dt.replace_nanosecond(0).unwrap_or(dt);
    let base = trimmed.format(&Rfc3339).unwrap_or_default();
    // "...:09Z" -> "...:09.123Z"
    match base.strip_suffix('Z') {
        Some(head) => format!("{head}.{ms:03}Z"),
        None => base,
    }
}

/// `<dir>/YYYY/MM/DD` for a recording started at `t` (UTC).
pub fn day_dir(dir: &Path, t: SystemTime) -> PathBuf {
    let dt = OffsetDateTime::from(t);
    dir.join(format!("{:04}", dt.year()))
        .join(format!("{:02}", u8::from(dt.month())))
        .join(format!("{:02}", dt.day()))
}

/// Error writing or reading a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a sidecar of this schema.
    #[error("{path}: not a recproxy sidecar: {source}")]
    Json {
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Writes `record` to `path` atomically: a temp file beside it, fsync, rename over, fsync the
/// directory (so the rename itself survives power loss).
pub fn write_sidecar(path: &Path, record: &CallRecord) -> Result<(), SidecarError> {
    let io = |source| SidecarError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(record).map_err(|source| SidecarError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a sidecar.
pub fn read_sidecar(path: &Path) -> Result<CallRecord, SidecarError> {
    let bytes = fs::read(path).map_err(|source| SidecarError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| SidecarError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(format_time(t), "2026-11-18T11:06:40.123Z");
        let whole = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(format_time(whole), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn day_dir_is_utc_date() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(day_dir(Path::new("/r"), t), PathBuf::from("/r/2026/11/18"));
    }

    #[test]
    fn sidecar_round_trips_and_absent_facts_are_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/x.json");
        let mut rec = CallRecord::new("01ABC".into(), "call-1@h".into());
        rec.set_end(EndReason::Shutdown);
        write_sidecar(&path, &rec).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["end_reason"], "shutdown");
        assert_eq!(v["ended_by"], "shutdown");
        assert!(v["caller_number"].is_null());
        assert!(v["agent"].is_null());
        assert_eq!(v["state"], "recording");
        assert_eq!(read_sidecar(&path).unwrap(), rec);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn event_by_is_written_only_when_known() {
        let hold = CallEventRecord {
            at_ms: 1000,
            kind: "hold".into(),
            by: Some("caller".into()),
            codec: None,
            digit: None,
            duration_ms: None,
        };
        let gap = CallEventRecord {
            at_ms: 20,
            kind: "gap".into(),
            by: None,
            codec: None,
            digit: None,
            duration_ms: None,
        };
        let change = CallEventRecord {
            at_ms: 2004,
            kind: "codec_change".into(),
            by: Some("caller".into()),
            codec: Some("PCMA".into()),
            digit: None,
            duration_ms: None,
        };
        assert_eq!(
            serde_json::to_value(&hold).unwrap(),
            serde_json::json!({ "at_ms": 1000, "type": "hold", "by": "caller" })
        );
        assert_eq!(
            serde_json::to_value(&gap).unwrap(),
            serde_json::json!({ "at_ms": 20, "type": "gap" })
        );
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({ "at_ms": 2004, "type": "codec_change", "by": "caller", "codec": "PCMA" })
        );
        let back: CallEventRecord =
            serde_json::from_value(serde_json::json!({ "at_ms": 20, "type": "gap" })).unwrap();
        assert_eq!(back, gap);
    }

    /// Checks `value` against the subset of JSON Schema that docs/metadata.schema.json uses.
    fn schema_errors(
        schema: &serde_json::Value,
        root: &serde_json::Value,
        value: &serde_json::Value,
        at: &str,
    ) -> Vec<String> {
        use serde_json::Value;
        if let Some(Value::String(r)) = schema.get("$ref") {
            let name = r.trim_start_matches("#/$defs/");
            return schema_errors(&root["$defs"][name], root, value, at);
        }
        let mut errors = Vec::new();
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = types.iter().any(|t| match *t {
                "null" => value.is_null(),
                "string" => value.is_string(),
                "integer" => value.is_u64() || value.is_i64(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                _ => false,
            });
            if !ok {
                errors.push(format!("{at}: {value} is not {types:?}"));
            }
        }
        if let Some(Value::Array(options)) = schema.get("enum") {
            if !options.contains(value) {
                errors.push(format!("{at}: {value} not in {options:?}"));
            }
        }
        if let Some(c) = schema.get("const") {
            if c != value {
                errors.push(format!("{at}: {value} is not {c}"));
            }
        }
        if let Value::Object(obj) = value {
            let props = schema.get("properties").and_then(Value::as_object);
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !obj.contains_key(key.as_str().unwrap_or_default()) {
                    errors.push(format!("{at}: missing {key}"));
                }
            }
            for (k, v) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => errors.extend(schema_errors(sub, root, v, &format!("{at}.{k}"))),
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        errors.push(format!("{at}: unknown key {k}"))
                    }
                    None => {}
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (i, v) in items.iter().enumerate() {
                errors.extend(schema_errors(item_schema, root, v, &format!("{at}[{i}]")));
            }
        }
        errors
    }

    #[test]
    fn sidecars_match_the_published_json_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/metadata.schema.json")).unwrap();
        let t = format_time(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123));
        let mut full = CallRecord::new("01JDQ4Z6M8V0W3T5Y7B9C1D2E3".into(), "a@b".into());
        full.state = RecordState::Complete;
        full.service.name = Some("tax-office".into());
        full.service.tenant = Some("tax-administration".into());
        full.direction = Some(Direction::Inbound);
        full.caller_number = Some("0401234567".into());
        full.times = Times {
            invite: Some(t.clone()),
            answer: Some(t.clone()),
            recording_start: Some(t.clone()),
            recording_end: Some(t.clone()),
            end: Some(t),
        };
        full.duration_ms = Some(3000);
        full.start_reason = Some("answer".into());
        full.set_end(EndReason::ByeCaller);
        full.legs.caller.codec = Some("PCMU".into());
        full.events = vec![
            CallEventRecord {
                at_ms: 1000,
                kind: "hold".into(),
                by: Some("caller".into()),
                codec: None,
                digit: None,
                duration_ms: None,
            },
            CallEventRecord {
                at_ms: 2000,
                kind: "codec_change".into(),
                by: Some("callee".into()),
                codec: Some("PCMA".into()),
                digit: None,
                duration_ms: None,
            },
            CallEventRecord {
                at_ms: 2500,
                kind: "transfer".into(),
                by: None,
                codec: None,
                digit: None,
                duration_ms: None,
            },
        ];
        full.wav = Some(WavInfo {
            path: "/r/x.wav".into(),
            bytes: Some(44),
            sample_rate: 8000,
            channels: 2,
            duration_ms: Some(0),
            sha256: Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
        });
        let mut minimal = CallRecord::new("01JDQ4Z6M8V0W3T5Y7B9C1D2E4".into(), "c@d".into());
        minimal.state = RecordState::NotRecorded;
        minimal.not_recorded_reason = Some("not answered: 486 Busy Here".into());
        let mut left_out = minimal.clone();
        left_out.service = ServiceInfo {
            name: Some("survey".into()),
            tenant: None,
            decision: Decision::SampledOut,
            reason: Some("sampled out: service \"survey\" records a share of 0.25 of its calls, chosen by Call-ID and policy.sample_seed".into()),
        };
        for record in [&full, &minimal, &left_out] {
            let v = serde_json::to_value(record).unwrap();
            let errors = schema_errors(&schema, &schema, &v, "$");
            assert!(errors.is_empty(), "{errors:#?}");
        }
        // Every end reason the code can write is in the schema (and ended_by with it).
        for reason in [
            EndReason::ByeCaller,
            EndReason::ByeCallee,
            EndReason::Cancel,
            EndReason::Rejected,
            EndReason::Transferred,
            EndReason::MediaTimeout,
            EndReason::SessionExpired,
            EndReason::Shutdown,
            EndReason::Failure,
        ] {
            let mut r = minimal.clone();
            r.set_end(reason);
            let errors = schema_errors(&schema, &schema, &serde_json::to_value(&r).unwrap(), "$");
            assert!(errors.is_empty(), "{reason:?}: {errors:?}");
        }
        // The checker does reject what the schema forbids.
        let mut v = serde_json::to_value(&minimal).unwrap();
        v["unexpected"] = serde_json::json!(1);
        v["state"] = serde_json::json!("lost");
        assert_eq!(schema_errors(&schema, &schema, &v, "$").len(), 2);
    }
}

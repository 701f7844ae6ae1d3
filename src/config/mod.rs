//! The operator's configuration: one TOML file, its schema (serde, `deny_unknown_fields` on every
//! table), defaults and validation. Every error names the file, line, column and dotted key, and a
//! file with any error yields no [`Config`] at all. No other module reads raw TOML.

mod locate;
#[cfg(test)]
mod tests;
mod values;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use locate::Document;
pub use values::{
    parse_duration, parse_ip, NumberPattern, PortRange, RecordRule, SipAddr, Transport, ValueError,
};

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SIP signalling: where to listen, where the PBX is.
    pub sip: SipConfig,
    /// RTP anchoring: addresses, port range, inactivity timeout.
    pub media: MediaConfig,
    /// Where and how recordings are written.
    pub recording: RecordingConfig,
    /// `[policy]`: settings every service's decisions share.
    pub policy: PolicyConfig,
    /// `[[service]]` in file order: the first whose numbers match a call's called number is the
    /// call's service. Empty: every answered call is recorded, with no service named.
    pub services: Vec<ServiceConfig>,
    /// File the configuration came from, or whatever name the caller of [`parse`] gave.
    pub source: PathBuf,
}

/// `[sip]`: signalling addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// Addresses phones and trunks send to (non-empty; UDP and TCP).
    pub listen: Vec<SipAddr>,
    /// The PBX: requests from anyone else are sent here.
    pub pbx: SipAddr,
    /// IP written into Via and Record-Route (the configured one or the resolved default).
    pub advertise: IpAddr,
    /// Largest SIP message accepted or sent, in bytes.
    pub max_message_size: usize,
    /// SIP messages per second accepted from one source address (the PBX is exempt).
    pub max_rate: u32,
    /// A TCP connection without traffic for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Requests over 1300 bytes bound for a UDP next hop go over TCP (RFC 3261 §18.1.1).
    pub large_over_tcp: bool,
    /// Name servers for next hops named by host names; empty: the system's resolv.conf.
    pub dns_servers: Vec<std::net::SocketAddr>,
}

/// `[media]`: RTP anchoring.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// Address media sockets bind to.
    pub bind: IpAddr,
    /// Address written into rewritten SDP; never unspecified.
    pub advertise: IpAddr,
    /// Ports media sockets are taken from.
    pub ports: PortRange,
    /// No packets in either direction for this long ends a call's media.
    pub timeout: Duration,
}

/// `[recording]`: where recordings go.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingConfig {
    /// Root of `YYYY/MM/DD/<recording-id>.{wav,json}`.
    pub dir: PathBuf,
    /// How often an open WAV's header is brought up to date (crash safety).
    pub header_update: Duration,
    /// RFC 4733 digits are written as silence and not stored.
    pub mask_dtmf: bool,
    /// WAV rate of calls that can use a wideband codec (G.722, Opus): 16000 or 8000.
    pub wideband_rate: u32,
    /// How long a position of the recording waits for late or reordered packets.
    pub reorder_window: Duration,
}

/// `[policy]`: what every service's decisions share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Mixed into the hash of the Call-ID that sampling draws from, so the choice is reproducible
    /// by whoever knows the seed and not predictable by callers. Required once a service samples.
    pub sample_seed: Option<String>,
}

/// One `[[service]]`: the calls to some numbers, and whether they are recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Unique name, written into each sidecar's `service.name`.
    pub name: String,
    /// Organisation the service belongs to (`service.tenant`).
    pub tenant: Option<String>,
    /// Called numbers it claims; empty for the default service, which claims every call that
    /// no service before it claimed.
    pub numbers: Vec<NumberPattern>,
    /// Which of its answered calls are recorded.
    pub record: RecordRule,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML, has an unknown or missing key, or a value is wrong.
    #[error("{path}:{line}:{column}: `{key}`: {message}", path = .file.display())]
    Invalid {
        /// File the text came from.
        file: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// Dotted key, e.g. `media.ports`; for an unknown key, the unknown one.
        key: String,
        /// What is wrong and, where it helps, how to write it.
        message: String,
    },
    /// The file could not be read.
    #[error("{path}: {source}", path = .file.display())]
    Read {
        /// File that was to be read.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Accepted `sip.max_message_size`: 65535 is the largest UDP payload field, and below 1 KiB not
/// even a bare INVITE with SDP fits.
pub const MAX_MESSAGE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=65535;
/// Shortest `media.timeout`: shorter would end calls on ordinary jitter.
pub const MEDIA_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest `media.timeout`: keeps deadline arithmetic far from overflow and dead calls bounded.
pub const MEDIA_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
/// Default `recording.reorder_window`: covers the jitter of any network a call survives.
pub const REORDER_WINDOW_DEFAULT: Duration = Duration::from_millis(60);
/// Shortest `recording.reorder_window`: one packet time.
pub const REORDER_WINDOW_MIN: Duration = Duration::from_millis(20);
/// Longest `recording.reorder_window`: within the timeline's 2 s ring, and a packet later than
/// this is of no use to anyone in the call either.
pub const REORDER_WINDOW_MAX: Duration = Duration::from_millis(1000);

/// Shortest `recording.header_update`: more often would turn header rewrites into the main IO.
pub const HEADER_UPDATE_MIN: Duration = Duration::from_millis(100);
/// Longest `recording.header_update`: a crash may lose at most this much audio.
pub const HEADER_UPDATE_MAX: Duration = Duration::from_secs(60);

fn default_max_message_size() -> usize {
    65535
}

/// Shortest `sip.tcp_idle_timeout`: a phone's keep-alive interval is longer than this.
pub const TCP_IDLE_MIN: Duration = Duration::from_secs(10);
/// Longest `sip.tcp_idle_timeout`.
pub const TCP_IDLE_MAX: Duration = Duration::from_secs(24 * 3600);

/// An hour: longer than phones' re-registration and keep-alive intervals, so a connection a
/// phone relies on for incoming calls stays, while abandoned ones do not pile up.
fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// Accepted `sip.max_rate` (messages per second per source).
pub const MAX_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

/// A phone sends a handful of messages per call; 200/s per address leaves room for a busy trunk
/// while a flood from one address is cut.
fn default_max_rate() -> u32 {
    200
}

fn default_media_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_media_ports() -> PortRange {
    PortRange {
        low: 30000,
        high: 39999,
    }
}

fn default_media_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_header_update() -> Duration {
    Duration::from_secs(5)
}

/// The file as written. Every value is optional and spanned so that missing keys and bad values
/// are reported by [`resolve`] with their own line; serde only checks TOML types and key names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    /// `[sip]` (required: it holds required keys).
    sip: Option<RawSip>,
    /// `[media]` (required: it holds `advertise`).
    media: Option<RawMedia>,
    /// `[recording]` (required: it holds `dir`).
    recording: Option<RawRecording>,
    /// `[policy]` (optional).
    policy: Option<RawPolicy>,
    /// `[[service]]` entries in file order (optional).
    service: Option<Vec<Spanned<RawService>>>,
}

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policy] table")]
struct RawPolicy {
    /// Optional; required once a service samples.
    sample_seed: Option<Spanned<String>>,
}

/// One `[[service]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[service]] table")]
struct RawService {
    /// Required, unique.
    name: Option<Spanned<String>>,
    /// Optional.
    tenant: Option<Spanned<String>>,
    /// Optional list of exact numbers and `prefix*`; absent for the default service.
    numbers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Required: `"all"`, `"none"` or `{ sample = 0.25 }`.
    record: Option<Spanned<RawRecord>>,
}

/// `record = ...` as written: a word, or an inline table with the sampled share.
#[derive(Debug)]
enum RawRecord {
    /// `"all"`, `"none"` or a mistake.
    Word(String),
    /// `{ sample = share }`.
    Sample(Spanned<f64>),
}

/// The inline table of `record = { sample = 0.25 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "{ sample = 0.25 }")]
struct RawSample {
    sample: Spanned<f64>,
}

impl<'de> Deserialize<'de> for RawRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = RawRecord;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"all\", \"none\" or { sample = 0.25 }")
            }

            fn visit_str<E>(self, word: &str) -> Result<RawRecord, E> {
                Ok(RawRecord::Word(word.to_owned()))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawRecord, M::Error> {
                // The derived table keeps serde's unknown-key and missing-key errors, which the
                // TOML deserializer places at the offending key.
                RawSample::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|s| RawRecord::Sample(s.sample))
            }
        }
        deserializer.deserialize_any(RecordVisitor)
    }
}

/// `[sip]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [sip] table")]
struct RawSip {
    /// Required list of `transport:IP:PORT`.
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// Required `transport:IP:PORT` of the PBX.
    pbx: Option<Spanned<String>>,
    /// Optional IP for Via/Record-Route.
    advertise: Option<Spanned<String>>,
    /// Optional byte limit, default [`default_max_message_size`].
    max_message_size: Option<Spanned<i64>>,
    /// Optional messages per second per source, default [`default_max_rate`].
    max_rate: Option<Spanned<i64>>,
    /// Optional duration, default [`default_tcp_idle_timeout`].
    tcp_idle_timeout: Option<Spanned<String>>,
    /// Optional, default true.
    large_over_tcp: Option<bool>,
    /// Optional list of `IP` or `IP:PORT`.
    dns_servers: Option<Vec<Spanned<String>>>,
}

/// `[media]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [media] table")]
struct RawMedia {
    /// Optional IP, default [`default_media_bind`].
    bind: Option<Spanned<String>>,
    /// Required IP for SDP.
    advertise: Option<Spanned<String>>,
    /// Optional `LOW-HIGH`, default [`default_media_ports`].
    ports: Option<Spanned<String>>,
    /// Optional duration, default [`default_media_timeout`].
    timeout: Option<Spanned<String>>,
}

/// `[recording]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [recording] table")]
struct RawRecording {
    /// Required directory.
    dir: Option<Spanned<String>>,
    /// Optional duration, default [`default_header_update`].
    header_update: Option<Spanned<String>>,
    /// Optional, default false.
    mask_dtmf: Option<bool>,
    /// Optional 8000 or 16000, default 16000.
    wideband_rate: Option<Spanned<i64>>,
    /// Optional duration, default 60 ms.
    reorder_window: Option<Spanned<String>>,
}

/// Reads `path` and parses it; see [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates configuration `text`; `file` names it in errors and in [`Config::source`].
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let doc = Document::new(text, file);
    let raw: RawConfig = toml::from_str(text).map_err(|e| doc.toml_error(&e))?;
    let mut config = resolve(raw, &doc)?;
    config.source = file.to_path_buf();
    Ok(config)
}

/// Applies defaults and checks every value, in the order the tables are documented.
fn resolve(raw: RawConfig, doc: &Document<'_>) -> Result<Config, ConfigError> {
    let sip_present = raw.sip.is_some();
    let media_present = raw.media.is_some();
    let recording_present = raw.recording.is_some();
    let sip = raw.sip.unwrap_or_default();
    let media = raw.media.unwrap_or_default();
    let recording = raw.recording.unwrap_or_default();
    let policy = raw.policy.unwrap_or_default();

    let listen_raw = required(
        doc,
        sip.listen,
        ("sip", sip_present),
        "listen",
        "[\"udp:0.0.0.0:5060\"]",
    )?;
    let listen = listen_addresses(doc, listen_raw)?;
    let pbx_raw = required(
        doc,
        sip.pbx,
        ("sip", sip_present),
        "pbx",
        "\"udp:10.0.0.5:5060\"",
    )?;
    let pbx = value(doc, &pbx_raw, "sip.pbx", str::parse::<SipAddr>)?;
    if !listen.iter().any(|l| l.transport == pbx.transport) {
        return Err(doc.invalid(
            Some(pbx_raw.span()),
            "sip.pbx",
            format!(
                "the PBX is reached over {t} but sip.listen has no {t} address: the PBX's \
                 responses and requests come back to us over {t}; add \"{t}:IP:PORT\" to \
                 sip.listen",
                t = pbx.transport
            ),
        ));
    }
    let mut dns_servers = Vec::new();
    for entry in sip.dns_servers.iter().flatten() {
        dns_servers.push(value(
            doc,
            entry,
            "sip.dns_servers",
            values::parse_dns_server,
        )?);
    }
    let tcp_idle_timeout = match &sip.tcp_idle_timeout {
        None => default_tcp_idle_timeout(),
        Some(s) => duration_in(doc, s, "sip.tcp_idle_timeout", TCP_IDLE_MIN..=TCP_IDLE_MAX)?,
    };
    let sip_advertise = sip
        .advertise
        .map(|s| specified_ip(doc, &s, "sip.advertise", "Via and Record-Route"))
        .transpose()?;
    let max_message_size = match sip.max_message_size {
        None => default_max_message_size(),
        Some(s) => usize::try_from(*s.get_ref())
            .ok()
            .filter(|n| MAX_MESSAGE_SIZE_RANGE.contains(n))
            .ok_or_else(|| {
                doc.invalid(
                    Some(s.span()),
                    "sip.max_message_size",
                    format!(
                        "{} bytes is out of range: must be between {} and {} (a SIP message over \
                         UDP must fit one datagram)",
                        s.get_ref(),
                        MAX_MESSAGE_SIZE_RANGE.start(),
                        MAX_MESSAGE_SIZE_RANGE.end()
                    ),
                )
            })?,
    };

    let bind = match &media.bind {
        None => default_media_bind(),
        Some(s) => value(doc, s, "media.bind", parse_ip)?,
    };
    let advertise_raw = required(
        doc,
        media.advertise,
        ("media", media_present),
        "advertise",
        "\"192.0.2.10\"",
    )?;
    let media_advertise = specified_ip(doc, &advertise_raw, "media.advertise", "rewritten SDP")?;
    if bind.is_ipv4() && media_advertise.is_ipv6() {
        return Err(doc.invalid(
            Some(advertise_raw.span()),
            "media.advertise",
            format!(
                "{media_advertise} is IPv6 but media.bind ({bind}) is IPv4: media sent to it \
                 would never reach the sockets; bind to \"::\" or advertise an IPv4 address"
            ),
        ));
    }
    let ports = match &media.ports {
        None => default_media_ports(),
        Some(s) => value(doc, s, "media.ports", str::parse::<PortRange>)?,
    };
    let timeout = match &media.timeout {
        None => default_media_timeout(),
        Some(s) => duration_in(
            doc,
            s,
            "media.timeout",
            MEDIA_TIMEOUT_MIN..=MEDIA_TIMEOUT_MAX,
        )?,
    };

    let dir_raw = required(
        doc,
        recording.dir,
        ("recording", recording_present),
        "dir",
        "\"/var/lib/recproxy/recordings\"",
    )?;
    if dir_raw.get_ref().trim().is_empty() {
        return Err(doc.invalid(
            Some(dir_raw.span()),
            "recording.dir",
            "must not be empty: give the directory recordings are written to",
        ));
    }
    let wideband_rate = match &recording.wideband_rate {
        None => 16000,
        Some(s) => match *s.get_ref() {
            8000 => 8000,
            16000 => 16000,
            other => {
                return Err(doc.invalid(
                    Some(s.span()),
                    "recording.wideband_rate",
                    format!(
                        "{other} Hz is not offered: 16000 keeps G.722 and Opus calls wideband, \
                         8000 records every call at telephone quality"
                    ),
                ))
            }
        },
    };
    let reorder_window = match &recording.reorder_window {
        None => REORDER_WINDOW_DEFAULT,
        Some(s) => duration_in(
            doc,
            s,
            "recording.reorder_window",
            REORDER_WINDOW_MIN..=REORDER_WINDOW_MAX,
        )?,
    };
    let header_update = match &recording.header_update {
        None => default_header_update(),
        Some(s) => duration_in(
            doc,
            s,
            "recording.header_update",
            HEADER_UPDATE_MIN..=HEADER_UPDATE_MAX,
        )?,
    };

    // Via/Record-Route need an address others can reach: the first listen IP if it is a real
    // one, else the media address (a host listening on 0.0.0.0 is reached at its advertised IP).
    let advertise = sip_advertise.unwrap_or_else(|| {
        listen
            .first()
            .map(|l| l.addr.ip())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(media_advertise)
    });

    let max_rate = match sip.max_rate {
        None => default_max_rate(),
        Some(s) => u32::try_from(*s.get_ref())
            .ok()
            .filter(|n| MAX_RATE_RANGE.contains(n))
            .ok_or_else(|| {
                doc.invalid(
                    Some(s.span()),
                    "sip.max_rate",
                    format!(
                        "{} messages per second is out of range: must be between {} and {}",
                        s.get_ref(),
                        MAX_RATE_RANGE.start(),
                        MAX_RATE_RANGE.end()
                    ),
                )
            })?,
    };

    let sample_seed = match policy.sample_seed {
        None => None,
        Some(seed) if seed.get_ref().trim().is_empty() => {
            return Err(doc.invalid(
                Some(seed.span()),
                "policy.sample_seed",
                "must not be empty: sampling hashes the Call-ID with this seed, and an empty \
                 one lets anyone predict which calls are recorded",
            ))
        }
        Some(seed) => Some(seed.into_inner()),
    };
    let services = services(doc, raw.service.unwrap_or_default(), sample_seed.is_some())?;

    Ok(Config {
        sip: SipConfig {
            listen,
            pbx,
            advertise,
            max_message_size,
            max_rate,
            tcp_idle_timeout,
            large_over_tcp: sip.large_over_tcp.unwrap_or(true),
            dns_servers,
        },
        media: MediaConfig {
            bind,
            advertise: media_advertise,
            ports,
            timeout,
        },
        recording: RecordingConfig {
            dir: PathBuf::from(dir_raw.into_inner()),
            header_update,
            mask_dtmf: recording.mask_dtmf.unwrap_or(false),
            wideband_rate,
            reorder_window,
        },
        policy: PolicyConfig { sample_seed },
        services,
        source: PathBuf::new(),
    })
}

/// Every `[[service]]`: required keys, unique names, valid numbers and rules, and no rule that
/// can never match because one written before it (in this or an earlier service) already
/// matches every number it does. Overlaps the other way round are fine: an exact number before
/// the prefix that contains it is how an exception is written.
fn services(
    doc: &Document<'_>,
    raw: Vec<Spanned<RawService>>,
    seeded: bool,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    let mut out: Vec<ServiceConfig> = Vec::with_capacity(raw.len());
    // Line of each accepted service's name, for messages that point back at it.
    let mut lines: Vec<usize> = Vec::with_capacity(raw.len());
    for entry in raw {
        let at = entry.span();
        let entry = entry.into_inner();
        let name_raw = entry.name.ok_or_else(|| {
            doc.invalid(
                Some(at.clone()),
                "service.name",
                "missing required key: add `name = \"switchboard\"` to this [[service]]",
            )
        })?;
        let name = name_raw.get_ref().clone();
        if name.trim().is_empty() {
            return Err(doc.invalid(
                Some(name_raw.span()),
                "service.name",
                "must not be empty: sidecars name the service a call belongs to",
            ));
        }
        if let Some((earlier, line)) = out.iter().zip(&lines).find(|(s, _)| s.name == name) {
            return Err(doc.invalid(
                Some(name_raw.span()),
                "service.name",
                format!(
                    "\"{}\" is already the name of the service on line {}: each service needs \
                     its own name (sidecars tell services apart by it)",
                    earlier.name, line
                ),
            ));
        }
        if let Some((default, line)) = out.iter().zip(&lines).find(|(s, _)| s.numbers.is_empty()) {
            return Err(doc.invalid(
                Some(name_raw.span()),
                "service.name",
                format!(
                    "service \"{name}\" can never match: the default service \"{}\" on line {} \
                     (no `numbers`) comes first and takes every call; put the default service \
                     last",
                    default.name, line
                ),
            ));
        }
        let tenant = match entry.tenant {
            None => None,
            Some(t) if t.get_ref().trim().is_empty() => {
                return Err(doc.invalid(
                    Some(t.span()),
                    "service.tenant",
                    "must not be empty: leave the key out when the service has no tenant",
                ))
            }
            Some(t) => Some(t.into_inner()),
        };
        let mut numbers: Vec<NumberPattern> = Vec::new();
        if let Some(list) = entry.numbers {
            if list.get_ref().is_empty() {
                return Err(doc.invalid(
                    Some(list.span()),
                    "service.numbers",
                    "empty list: leave `numbers` out to make this the default service, or list \
                     called numbers such as \"+358295120000\" or prefixes such as \"+35829512*\"",
                ));
            }
            for raw_number in list.into_inner() {
                let pattern = value(
                    doc,
                    &raw_number,
                    "service.numbers",
                    str::parse::<NumberPattern>,
                )?;
                let shadow = |earlier: &&NumberPattern| earlier.covers(&pattern);
                if let Some(earlier) = numbers.iter().find(shadow) {
                    return Err(doc.invalid(
                        Some(raw_number.span()),
                        "service.numbers",
                        format!(
                            "\"{pattern}\" can never match: \"{earlier}\" before it in this \
                             service already matches every number it does"
                        ),
                    ));
                }
                let before = out.iter().zip(&lines).find_map(|(s, line)| {
                    s.numbers
                        .iter()
                        .find(shadow)
                        .map(|earlier| (s, line, earlier))
                });
                if let Some((service, line, earlier)) = before {
                    return Err(doc.invalid(
                        Some(raw_number.span()),
                        "service.numbers",
                        format!(
                            "\"{pattern}\" can never match: service \"{}\" on line {} comes \
                             first and its \"{earlier}\" already matches every number it does \
                             (the first matching service wins); remove it, or move the more \
                             specific service first",
                            service.name, line
                        ),
                    ));
                }
                numbers.push(pattern);
            }
        }
        let record_raw = entry.record.ok_or_else(|| {
            doc.invalid(
                Some(at.clone()),
                "service.record",
                "missing required key: add `record = \"all\"` (or \"none\", or { sample = 0.25 }) \
                 to this [[service]]",
            )
        })?;
        let record_span = record_raw.span();
        let record = match record_raw.into_inner() {
            RawRecord::Word(word) => match word.as_str() {
                "all" => RecordRule::All,
                "none" => RecordRule::None,
                _ => {
                    return Err(doc.invalid(
                        Some(record_span),
                        "service.record",
                        format!(
                            "\"{word}\" is not a recording rule: write \"all\", \"none\" or \
                             {{ sample = 0.25 }}"
                        ),
                    ))
                }
            },
            RawRecord::Sample(share) => {
                let fraction = *share.get_ref();
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(doc.invalid(
                        Some(share.span()),
                        "service.record.sample",
                        format!(
                            "{fraction} is out of range: the share of the service's calls that is \
                             recorded must be between 0.0 and 1.0"
                        ),
                    ));
                }
                if !seeded {
                    return Err(doc.invalid(
                        Some(record_span),
                        "service.record",
                        "sampling needs a seed: add `sample_seed = \"...\"` to [policy] (the \
                         Call-ID hashed with the seed decides which calls are recorded, so the \
                         choice is reproducible and callers cannot predict it)",
                    ));
                }
                RecordRule::Sample(fraction)
            }
        };
        lines.push(doc.line_of(&name_raw.span()));
        out.push(ServiceConfig {
            name,
            tenant,
            numbers,
            record,
        });
    }
    Ok(out)
}

/// A required key: reports it at its table's header, or at line 1 when the table is missing.
fn required<T>(
    doc: &Document<'_>,
    field: Option<T>,
    (table, table_present): (&str, bool),
    key: &str,
    example: &str,
) -> Result<T, ConfigError> {
    field.ok_or_else(|| {
        let dotted = format!("{table}.{key}");
        if table_present {
            doc.invalid(
                doc.table_span(table),
                &dotted,
                format!("missing required key: add `{key} = {example}` to [{table}]"),
            )
        } else {
            doc.invalid(
                None,
                &dotted,
                format!(
                    "missing required key: there is no [{table}] table; add it with \
                     `{key} = {example}`"
                ),
            )
        }
    })
}

/// Parses a spanned string with `parse`, reporting failures at the value.
fn value<T>(
    doc: &Document<'_>,
    raw: &Spanned<String>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> Result<T, ConfigError> {
    parse(raw.get_ref()).map_err(|e| doc.invalid(Some(raw.span()), key, e.0))
}

/// `sip.listen`: non-empty, each entry valid, served by this version, none twice.
fn listen_addresses(
    doc: &Document<'_>,
    raw: Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<SipAddr>, ConfigError> {
    let span = raw.span();
    let entries = raw.into_inner();
    if entries.is_empty() {
        return Err(doc.invalid(
            Some(span),
            "sip.listen",
            "must list at least one address, e.g. [\"udp:0.0.0.0:5060\"]",
        ));
    }
    let mut listen: Vec<SipAddr> = Vec::with_capacity(entries.len());
    for entry in &entries {
        let addr = value(doc, entry, "sip.listen", str::parse::<SipAddr>)?;
        // Port 0 asks for an ephemeral port each time, so it may repeat.
        if addr.addr.port() != 0 && listen.contains(&addr) {
            return Err(doc.invalid(
                Some(entry.span()),
                "sip.listen",
                format!("{addr} is listed twice"),
            ));
        }
        listen.push(addr);
    }
    Ok(listen)
}

/// An IP that others send to: 0.0.0.0 and :: only mean "any local address" when binding, and
/// nobody can send packets to them.
fn specified_ip(
    doc: &Document<'_>,
    raw: &Spanned<String>,
    key: &str,
    written_into: &str,
) -> Result<IpAddr, ConfigError> {
    let ip = value(doc, raw, key, parse_ip)?;
    if ip.is_unspecified() {
        return Err(doc.invalid(
            Some(raw.span()),
            key,
            format!(
                "{ip} is the unspecified address: this address is written into {written_into} \
                 for the other parties to send to, and nothing can be sent to {ip}; give the \
                 address phones and the PBX reach this host at"
            ),
        ));
    }
    Ok(ip)
}

/// A duration within `range` (inclusive).
fn duration_in(
    doc: &Document<'_>,
    raw: &Spanned<String>,
    key: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let d = value(doc, raw, key, parse_duration)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(doc.invalid(
            Some(raw.span()),
            key,
            format!(
                "\"{}\" is out of range: must be between {} and {}",
                raw.get_ref(),
                values::format_duration(*range.start()),
                values::format_duration(*range.end())
            ),
        ))
    }
}

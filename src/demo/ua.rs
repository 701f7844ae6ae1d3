//! Built-in SIP user agents for `recproxy demo` and the integration tests: [`Phone`], a UAC that
//! places calls through an outbound proxy and plays a tone, and [`Pbx`], a UAS answering every
//! INVITE per a decision function. Real SIP over UDP (IPv4 or IPv6) with RFC 3261 timers.
//!
//! Messages are parsed with a small tolerant reader of our own (compact header names, folded
//! lines, comma-joined lists), because rsip rejects some legal input; they are built by hand.
//! It deliberately does not use the proxy's `sip::msg`: the peers of the end-to-end tests are
//! an independent implementation, so a parser bug in the proxy cannot hide itself there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::codec::Codec;
use crate::demo::rtp_peer::{self, Pause, PlayConfig, RtpPeer, RtpStats, Steer};

/// RTT estimate, RFC 3261 §17.1.1.1.
const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses, RFC 3261 §17.1.2.2.
const T2: Duration = Duration::from_secs(4);
/// 64·T1: Timer B/F/H, also how long a finished call lingers to absorb retransmissions.
const TIMER_64T1: Duration = Duration::from_secs(32);
/// How long either side waits for the call to be answered or cancelled once it rings (the proxy's
/// Timer C is 3 minutes, RFC 3261 §16.6 step 11); keeps every call bounded.
const MAX_RING: Duration = Duration::from_secs(180);
/// Longest an answered call may last at the PBX when the caller never hangs up.
const MAX_TALK: Duration = Duration::from_secs(3600);
/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 65_535;
/// Messages queued per call before further ones are dropped (retransmissions recover them).
const CALL_QUEUE: usize = 64;
/// Live plus lingering calls per agent; beyond this new INVITEs get 503.
const MAX_CALLS: usize = 10_000;
/// Finished-call reports the PBX buffers for the test or demo reading them.
const REPORT_QUEUE: usize = 1024;
/// Default SIP port, RFC 3261 §19.1.2.
const SIP_PORT: u16 = 5060;
/// Payload type we offer for RFC 4733 telephone-events.
const TELEPHONE_EVENT_PT: u8 = 101;
/// Methods these agents understand, for Allow headers.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";
/// Product token for User-Agent / Server headers.
const PRODUCT: &str = "recproxy-demo";

/// Errors of the demo user agents.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer or proxy did not answer in time (names what we waited for).
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A response could not be used (e.g. a 2xx without To tag).
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The call was answered but the SDP answer gave nothing we can send media to; the call was
    /// hung up again.
    #[error("no usable media in the SDP answer: {0}")]
    NoMedia(String),
    /// The phone's receive task stopped, so no response can arrive.
    #[error("the phone's receive task has stopped")]
    Closed,
}

/// What a [`Phone`] call should do.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// User part of the From URI.
    pub from_user: String,
    /// Optional display name in From.
    pub from_display: Option<String>,
    /// User part of the Request-URI and To.
    pub to_user: String,
    /// The one audio codec offered.
    pub codec: Codec,
    /// Tone the caller plays.
    pub tone_hz: f64,
    /// How long to talk after the answer before hanging up.
    pub talk: Duration,
    /// Drop every Nth RTP packet before sending (simulated loss).
    pub drop_every: Option<u32>,
    /// send CANCEL after the first 180
    pub cancel_after_ringing: bool,
    /// Put the call on hold once: (offset into the talk time, hold length). At the offset the
    /// phone stops its RTP (the RTP clock runs on) and sends a re-INVITE with `a=sendonly`;
    /// after the hold length (counted from the offset) a re-INVITE with `a=sendrecv`, and it
    /// sends again once that is answered.
    pub hold: Option<(Duration, Duration)>,
    /// added to the INVITE (e.g. P-Asserted-Identity)
    pub extra_headers: Vec<(String, String)>,
    /// Change codec once: (offset into the talk time, new codec). At the offset the phone sends
    /// a re-INVITE offering only the new codec; once it is answered 2xx, it sends with the codec
    /// the answer chose (the RTP stream goes on: same SSRC, next sequence number).
    pub switch_codec: Option<(Duration, Codec)>,
    /// Move the phone's RTP to a new local port once, at this offset into the talk time: the
    /// phone binds a new socket, stops sending, sends a re-INVITE with the new port, and once
    /// it is answered 2xx sends from (and receives on) the new socket, continuing the same
    /// RTP stream. Stopping meanwhile keeps packets from the old port from reaching the proxy
    /// after it has re-pointed (the paused packet times count as `RtpStats::paused`).
    pub move_rtp: Option<Duration>,
}

impl CallSpec {
    /// A plain call: `from_user` calls `to_user` with `codec`, plays `tone_hz` for `talk`, then
    /// hangs up; no display name, loss, cancel, hold, codec or port change, or extra headers.
    /// Set the other fields with struct update syntax.
    pub fn new(
        from_user: &str,
        to_user: &str,
        codec: Codec,
        tone_hz: f64,
        talk: Duration,
    ) -> CallSpec {
        CallSpec {
            from_user: from_user.into(),
            from_display: None,
            to_user: to_user.into(),
            codec,
            tone_hz,
            talk,
            drop_every: None,
            cancel_after_ringing: false,
            hold: None,
            extra_headers: Vec::new(),
            switch_codec: None,
            move_rtp: None,
        }
    }
}

/// How a call ended, seen from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with 2xx.
    Answered,
    /// Final response 3xx-6xx with this code (other than the 487 caused by our own CANCEL).
    Rejected(u16),
    /// Cancelled before answer.
    Cancelled,
}

/// What a [`Phone`] call did.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// How the call ended.
    pub outcome: Outcome,
    /// Call-ID of the call.
    pub call_id: String,
    /// When the first INVITE was sent.
    pub invite_sent_at: SystemTime,
    /// When the 2xx arrived.
    pub answered_at: Option<SystemTime>,
    /// When our BYE was first sent (None if the other side hung up or the call was not answered).
    pub bye_sent_at: Option<SystemTime>,
    /// When the holding re-INVITE was first sent (`CallSpec::hold`).
    pub hold_sent_at: Option<SystemTime>,
    /// When the resuming re-INVITE was first sent.
    pub resume_sent_at: Option<SystemTime>,
    /// When the codec-changing re-INVITE was first sent (`CallSpec::switch_codec`).
    pub codec_sent_at: Option<SystemTime>,
    /// The codec the answer to it chose (now being sent).
    pub switched_to: Option<Codec>,
    /// When the port-moving re-INVITE was first sent (`CallSpec::move_rtp`).
    pub move_sent_at: Option<SystemTime>,
    /// The local RTP address moved to, once the move was answered 2xx.
    pub moved_to: Option<SocketAddr>,
    /// RTP packets that reached the phone's RTP socket before the 2xx (early media).
    pub early_rtp_received: u64,
    /// Media statistics of an answered call.
    pub rtp: Option<RtpStats>,
}

/// How the [`Pbx`] answers a call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 100, 180 (To tag), after `ring` 200 OK with SDP answer choosing the first offered of
    /// PCMU/PCMA; plays tone until BYE.
    Accept {
        /// Time between 180 and 200.
        ring: Duration,
        /// Tone the PBX side plays.
        tone_hz: f64,
    },
    /// Early media, then answer: 100, 183 Session Progress (To tag) with the SDP answer, plays
    /// `early_tone_hz` for `early` (ringback or an announcement), then 200 OK with the same SDP
    /// and plays `tone_hz` until BYE, like `Accept`.
    EarlyMedia {
        /// How long the early media plays before the 200 OK.
        early: Duration,
        /// Tone of the early media.
        early_tone_hz: f64,
        /// Tone the PBX side plays after the answer.
        tone_hz: f64,
    },
    /// 100, then final (e.g. 486 Busy Here) with To tag; retransmit final per Timer G until ACK.
    Reject {
        /// Final status code (300-699).
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// 100, 180, then on CANCEL: 200 (CANCEL), 487 (INVITE), wait ACK.
    RingUntilCancel,
}

/// What the [`Pbx`] saw of one call.
#[derive(Debug, Clone)]
pub struct UasCallReport {
    /// Call-ID of the call.
    pub call_id: String,
    /// User part of the Request-URI (else of To).
    pub called_user: String,
    /// The From header value as received.
    pub caller_from: String,
    /// How the call ended.
    pub outcome: Outcome,
    /// Media statistics of an answered call.
    pub rtp: Option<RtpStats>,
    /// Media statistics of the early media sent before the answer (`Answer::EarlyMedia`).
    pub early_rtp: Option<RtpStats>,
    /// INVITE headers as received (name as written, value trimmed), for pass-through checks.
    pub received_headers: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------------------------
// Message reading
// ---------------------------------------------------------------------------------------------

/// First line of a SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16 },
}

/// A parsed SIP message: headers kept in order with their names as written.
#[derive(Debug, Clone)]
struct SipMsg {
    start: StartLine,
    headers: Vec<(String, String)>,
    body: String,
}

/// Full name for a compact header form (RFC 3261 §7.3.3 and later RFCs), lowercased.
fn canonical_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let full = match lower.as_str() {
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "v" => "via",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "x" => "session-expires",
        _ => return lower,
    };
    full.to_string()
}

impl SipMsg {
    /// Parses one datagram; `None` for anything that is not a well-formed enough SIP message.
    fn parse(data: &[u8]) -> Option<SipMsg> {
        let (head_end, body_start) = find(data, b"\r\n\r\n")
            .map(|i| (i, i + 4))
            .or_else(|| find(data, b"\n\n").map(|i| (i, i + 2)))?;
        let head = std::str::from_utf8(data.get(..head_end)?).ok()?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next()?.trim();
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let code: u16 = rest.split_whitespace().next()?.parse().ok()?;
            if !(100..=699).contains(&code) {
                return None;
            }
            StartLine::Response { code }
        } else {
            let mut parts = first.split_whitespace();
            let method = parts.next()?.to_string();
            let uri = parts.next()?.to_string();
            if parts.next()? != "SIP/2.0" {
                return None;
            }
            StartLine::Request { method, uri }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Folded continuation line (RFC 3261 §7.3.1): joins the previous value.
                let (_, value) = headers.last_mut()?;
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut msg = SipMsg {
            start,
            headers,
            body: String::new(),
        };
        let rest = data.get(body_start..).unwrap_or_default();
        let body = match msg.header("content-length") {
            Some(v) => {
                let len: usize = v.trim().parse().ok()?;
                // A Content-Length beyond the datagram is an error over UDP (RFC 3261 §18.3).
                rest.get(..len)?
            }
            None => rest,
        };
        msg.body = String::from_utf8_lossy(body).into_owned();
        Some(msg)
    }

    /// Values of every header line called `name` (compact forms included), in order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let wanted = canonical_name(name);
        self.headers
            .iter()
            .filter(move |(n, _)| canonical_name(n) == wanted)
            .map(|(_, v)| v.as_str())
    }

    /// First value of header `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// Every element of a list header across all its lines (`Via: a, b` + `Via: c` = a, b, c).
    fn list(&self, name: &str) -> Vec<String> {
        self.header_values(name)
            .flat_map(split_list)
            .map(str::to_string)
            .collect()
    }

    fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// CSeq number and method.
    fn cseq(&self) -> Option<(u32, String)> {
        let mut parts = self.header("cseq")?.split_whitespace();
        let num = parts.next()?.parse().ok()?;
        let method = parts.next()?.to_string();
        Some((num, method))
    }

    fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Branch of the top Via.
    fn top_branch(&self) -> Option<String> {
        self.header_values("via")
            .flat_map(split_list)
            .next()
            .and_then(parse_via)
            .and_then(|v| v.branch)
    }

    /// A 2xx response to an INVITE (a retransmission once the ACK is out, RFC 3261 §13.2.2.4).
    fn is_invite_2xx(&self) -> bool {
        self.code().is_some_and(|c| (200..300).contains(&c))
            && self.cseq().is_some_and(|(_, m)| m == "INVITE")
    }

    /// Whether this is a response to our request with `method` on `branch`.
    fn answers(&self, method: &str, branch: &str) -> bool {
        self.code().is_some()
            && self
                .cseq()
                .is_some_and(|(_, m)| m.eq_ignore_ascii_case(method))
            && self.top_branch().as_deref() == Some(branch)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None; // `windows(0)` would panic
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a header value at commas outside quotes and angle brackets (RFC 3261 §7.3.1).
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, ch) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                if let Some(part) = value.get(start..i) {
                    out.push(part.trim());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(part) = value.get(start..) {
        out.push(part.trim());
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Byte index of the `<` opening a name-addr, skipping quoted display names.
fn angle_open(value: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, ch) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The URI of a name-addr or addr-spec (`"Bob" <sip:b@h>;tag=1` → `sip:b@h`).
fn uri_of(value: &str) -> &str {
    if let Some(open) = angle_open(value) {
        let rest = value.get(open + 1..).unwrap_or_default();
        return rest.split('>').next().unwrap_or_default().trim();
    }
    value.split(';').next().unwrap_or_default().trim()
}

/// A header parameter of a name-addr (`;tag=` etc., after the URI), case-insensitive name.
fn header_param(value: &str, name: &str) -> Option<String> {
    let params = match angle_open(value) {
        Some(open) => {
            let rest = value.get(open..)?;
            rest.get(rest.find('>')? + 1..)?
        }
        None => value.get(value.find(';')?..)?,
    };
    param_in(params, name)
}

/// Looks up `name` in a `;a=b;c` parameter string; a flag gives `Some("")`.
fn param_in(params: &str, name: &str) -> Option<String> {
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// User part of a SIP or tel URI (`sip:alice@h` → `alice`, `tel:+358...` → `+358...`).
fn user_of(uri: &str) -> String {
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("tel:") {
        let rest = uri.get(4..).unwrap_or_default();
        return rest.split(';').next().unwrap_or_default().to_string();
    }
    let rest = if lower.starts_with("sips:") {
        uri.get(5..).unwrap_or_default()
    } else if lower.starts_with("sip:") {
        uri.get(4..).unwrap_or_default()
    } else {
        uri
    };
    match rest.rsplit_once('@') {
        Some((user, _)) => user.split(';').next().unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// The parts of a Via element we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Via {
    host: String,
    port: Option<u16>,
    branch: Option<String>,
    received: Option<String>,
    /// `None`: absent; `Some(None)`: flag without value (RFC 3581 request); `Some(Some(p))`.
    rport: Option<Option<u16>>,
}

/// Parses one Via element (`SIP/2.0/UDP host:port;branch=...`), IPv6 references included.
fn parse_via(elem: &str) -> Option<Via> {
    let (sent, params) = match elem.find(';') {
        Some(i) => (elem.get(..i)?, elem.get(i..)?),
        None => (elem, ""),
    };
    // The protocol may contain spaces ("SIP / 2.0 / UDP"); sent-by is the last token.
    let sent_by = sent.split_whitespace().last()?;
    let (host, port) = if let Some(rest) = sent_by.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        (h.to_string(), port)
    } else {
        match sent_by.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (sent_by.to_string(), None),
        }
    };
    let rport = param_in(params, "rport").map(|v| v.parse().ok());
    Some(Via {
        host,
        port,
        branch: param_in(params, "branch"),
        received: param_in(params, "received"),
        rport,
    })
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Where a response to `req` goes: RFC 3581 §4 (rport: back to the source) else RFC 3261
/// §18.2.2 (received, else sent-by, default port 5060); the source when Via is unusable.
fn response_target(req: &SipMsg, source: SocketAddr) -> SocketAddr {
    let Some(via) = req
        .header_values("via")
        .flat_map(split_list)
        .next()
        .and_then(parse_via)
    else {
        return source;
    };
    if via.rport.is_some() {
        return source;
    }
    let ip = via
        .received
        .as_deref()
        .and_then(parse_ip)
        .or_else(|| parse_ip(&via.host));
    match ip {
        Some(ip) => SocketAddr::new(ip, via.port.unwrap_or(SIP_PORT)),
        None => source,
    }
}

/// Adds `received` (RFC 3261 §18.2.1, when sent-by is not the source IP) and fills an empty
/// `rport` (RFC 3581 §4) in the top Via element of a response.
fn stamp_via(elem: &str, source: SocketAddr) -> String {
    let Some(via) = parse_via(elem) else {
        return elem.to_string();
    };
    let fill_rport = via.rport == Some(None);
    let add_received = fill_rport || parse_ip(&via.host) != Some(source.ip());
    let mut out = String::with_capacity(elem.len() + 40);
    for (i, part) in elem.split(';').enumerate() {
        if i == 0 {
            out.push_str(part.trim_end());
            continue;
        }
        let name = part.split('=').next().unwrap_or_default().trim();
        if fill_rport && name.eq_ignore_ascii_case("rport") {
            out.push_str(&format!(";rport={}", source.port()));
        } else if add_received && name.eq_ignore_ascii_case("received") {
            // Replaced below with what we saw.
        } else {
            out.push(';');
            out.push_str(part.trim());
        }
    }
    if add_received {
        out.push_str(&format!(";received={}", source.ip()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Message building
// ---------------------------------------------------------------------------------------------

/// Accumulates a message's start line and headers; `finish` adds Content-Length and the body.
struct MsgBuilder {
    buf: String,
}

impl MsgBuilder {
    fn new(start_line: &str) -> MsgBuilder {
        let mut buf = String::with_capacity(1024);
        buf.push_str(start_line);
        buf.push_str("\r\n");
        MsgBuilder { buf }
    }

    fn header(&mut self, name: &str, value: &str) -> &mut MsgBuilder {
        // Line breaks in a caller-supplied value would inject headers; flatten them.
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        self.buf.push_str(&clean(name));
        self.buf.push_str(": ");
        self.buf.push_str(&clean(value));
        self.buf.push_str("\r\n");
        self
    }

    fn finish(&mut self, body: Option<(&str, &str)>) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        match body {
            Some((content_type, body)) => {
                out.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

/// Reason phrase for the codes these agents send.
fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Extra content of a response beyond the copied headers.
#[derive(Default)]
struct ResponseParts<'a> {
    reason: Option<&'a str>,
    to_tag: Option<&'a str>,
    contact: Option<&'a str>,
    sdp: Option<&'a str>,
}

/// A response to `req` per RFC 3261 §8.2.6.2: every Via (top one stamped), From, To (+tag when
/// it has none), Call-ID, CSeq; Record-Route copied on dialog-creating responses (§12.1.1).
fn response(req: &SipMsg, source: SocketAddr, code: u16, parts: &ResponseParts<'_>) -> Vec<u8> {
    let reason = parts.reason.unwrap_or_else(|| reason_phrase(code));
    let mut b = MsgBuilder::new(&format!("SIP/2.0 {code} {reason}"));
    let mut first = true;
    for value in req.header_values("via") {
        if first {
            first = false;
            let elems = split_list(value);
            let mut line = String::new();
            for (i, elem) in elems.iter().enumerate() {
                if i == 0 {
                    line.push_str(&stamp_via(elem, source));
                } else {
                    line.push_str(", ");
                    line.push_str(elem);
                }
            }
            b.header("Via", &line);
        } else {
            b.header("Via", value);
        }
    }
    let is_invite = req.method() == Some("INVITE");
    if is_invite && (101..300).contains(&code) {
        for value in req.header_values("record-route") {
            b.header("Record-Route", value);
        }
    }
    if let Some(from) = req.header("from") {
        b.header("From", from);
    }
    if let Some(to) = req.header("to") {
        match parts.to_tag {
            Some(tag) if header_param(to, "tag").is_none() && code > 100 => {
                b.header("To", &format!("{to};tag={tag}"))
            }
            _ => b.header("To", to),
        };
    }
    if let Some(call_id) = req.call_id() {
        b.header("Call-ID", call_id);
    }
    if let Some(cseq) = req.header("cseq") {
        b.header("CSeq", cseq);
    }
    if let Some(contact) = parts.contact {
        b.header("Contact", contact);
    }
    if code == 405 {
        b.header("Allow", ALLOW);
    }
    b.header("Server", PRODUCT);
    b.finish(parts.sdp.map(|s| ("application/sdp", s)))
}

/// Fresh random token for tags, branches and Call-IDs (ULIDs carry 80 random bits).
fn new_token() -> String {
    ulid::Ulid::new().to_string().to_ascii_lowercase()
}

/// A branch with the RFC 3261 magic cookie (§8.1.1.7).
fn new_branch() -> String {
    format!("z9hG4bK{}", new_token())
}

/// The address we write into headers and SDP: an unspecified bind address is not reachable, so
/// it becomes the loopback of the same family.
fn advertised_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// `host:port` for URIs and Via (IPv6 in brackets, RFC 3261 §25.1 / RFC 5118).
fn host_port(addr: SocketAddr) -> String {
    SocketAddr::new(advertised_ip(addr.ip()), addr.port()).to_string()
}

/// Host part for a URI: IPv6 references in brackets (RFC 5118 §4.1).
fn host_of(ip: IpAddr) -> String {
    match advertised_ip(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Quoted display name with `"` and `\` escaped (RFC 3261 §25.1 quoted-string).
fn quote_display(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        if ch != '\r' && ch != '\n' {
            out.push(ch);
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// SDP (minimal: the first audio stream's address, payload types and rtpmaps)
// ---------------------------------------------------------------------------------------------

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaDir {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl MediaDir {
    fn parse(attr: &str) -> Option<MediaDir> {
        match attr {
            "sendrecv" => Some(MediaDir::SendRecv),
            "sendonly" => Some(MediaDir::SendOnly),
            "recvonly" => Some(MediaDir::RecvOnly),
            "inactive" => Some(MediaDir::Inactive),
            _ => None,
        }
    }

    fn attr(self) -> &'static str {
        match self {
            MediaDir::SendRecv => "sendrecv",
            MediaDir::SendOnly => "sendonly",
            MediaDir::RecvOnly => "recvonly",
            MediaDir::Inactive => "inactive",
        }
    }

    /// The direction an answer takes to an offer of `self` when the answerer is willing to do
    /// whatever the offerer wants (RFC 3264 §6.1).
    fn complement(self) -> MediaDir {
        match self {
            MediaDir::SendOnly => MediaDir::RecvOnly,
            MediaDir::RecvOnly => MediaDir::SendOnly,
            other => other,
        }
    }

    /// Whether the author of an SDP with this direction may send.
    fn sends(self) -> bool {
        matches!(self, MediaDir::SendRecv | MediaDir::SendOnly)
    }
}

/// The first `m=audio` stream of an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SdpAudio {
    /// c= address (media level over session level) and m= port; port 0 means rejected.
    addr: SocketAddr,
    pts: Vec<u8>,
    /// (payload type, encoding name, clock rate)
    rtpmaps: Vec<(u8, String, u32)>,
    /// Media-level direction, else session-level, else sendrecv.
    direction: MediaDir,
}

fn parse_sdp(body: &str) -> Option<SdpAudio> {
    let mut session_ip: Option<IpAddr> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut pts = Vec::new();
    let mut rtpmaps = Vec::new();
    let mut session_dir: Option<MediaDir> = None;
    let mut media_dir: Option<MediaDir> = None;
    // 0: session level, 1: in the first audio m=, 2: past it
    let mut state = 0u8;
    for line in body.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            if state == 0 && rest.starts_with("audio ") {
                let mut f = rest.split_whitespace().skip(1);
                // "port/count" is legal (RFC 4566 §5.14); we use the first port.
                port = f.next()?.split('/').next()?.parse().ok();
                let _proto = f.next();
                pts = f.filter_map(|p| p.parse().ok()).collect();
                state = 1;
            } else if state == 1 {
                state = 2;
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            let addr = rest.split_whitespace().nth(2);
            // Multicast "addr/ttl" forms: the address is before the slash.
            let ip = addr.and_then(|a| a.split('/').next()).and_then(parse_ip);
            match state {
                0 => session_ip = ip,
                1 => media_ip = ip,
                _ => {}
            }
        } else if let Some(dir) = line.strip_prefix("a=").and_then(MediaDir::parse) {
            match state {
                0 => session_dir = Some(dir),
                1 => media_dir = Some(dir),
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            if state == 1 {
                let mut f = rest.split_whitespace();
                let pt = f.next().and_then(|p| p.parse::<u8>().ok());
                let mut enc = f.next().unwrap_or_default().split('/');
                let name = enc.next().unwrap_or_default().to_string();
                let rate = enc.next().and_then(|r| r.parse::<u32>().ok());
                if let (Some(pt), Some(rate)) = (pt, rate) {
                    rtpmaps.push((pt, name, rate));
                }
            }
        }
    }
    let ip = media_ip.or(session_ip)?;
    Some(SdpAudio {
        addr: SocketAddr::new(ip, port?),
        pts,
        rtpmaps,
        direction: media_dir.or(session_dir).unwrap_or(MediaDir::SendRecv),
    })
}

impl SdpAudio {
    /// First payload type in m= order that we can encode: rtpmap when given, else the static table.
    fn first_codec(&self) -> Option<(u8, Codec)> {
        self.pts.iter().find_map(|&pt| {
            let mapped = self.rtpmaps.iter().find(|(p, _, _)| *p == pt);
            let codec = match mapped {
                Some((_, name, rate)) => Codec::from_rtpmap(name, *rate),
                None => Codec::from_static_pt(pt),
            };
            codec.map(|c| (pt, c))
        })
    }

    fn telephone_event_pt(&self) -> Option<u8> {
        self.rtpmaps
            .iter()
            .find(|(p, name, _)| {
                name.eq_ignore_ascii_case("telephone-event") && self.pts.contains(p)
            })
            .map(|(p, _, _)| *p)
    }
}

/// A fresh SDP session id, also the first version (RFC 4566 §5.2 suggests an NTP timestamp;
/// any number works).
fn new_sdp_session() -> u64 {
    rtp_peer::random_u64() >> 34
}

/// An SDP body offering/answering one audio stream (plus telephone-events when `te_pt` is set).
#[cfg(test)]
fn build_sdp(addr: SocketAddr, pt: u8, codec: Codec, te_pt: Option<u8>) -> String {
    let session = new_sdp_session();
    sdp_body(
        addr,
        pt,
        codec,
        te_pt,
        (session, session),
        MediaDir::SendRecv,
    )
}

/// `build_sdp` with a given `o=` session id and version (a changed session description keeps
/// the id and increments the version, RFC 3264 §8) and direction attribute.
fn sdp_body(
    addr: SocketAddr,
    pt: u8,
    codec: Codec,
    te_pt: Option<u8>,
    (session, version): (u64, u64),
    direction: MediaDir,
) -> String {
    let ip = advertised_ip(addr.ip());
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let te_fmt = te_pt.map(|p| format!(" {p}")).unwrap_or_default();
    let mut sdp = format!(
        "v=0\r\no=- {session} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt}{te_fmt}\r\na=rtpmap:{pt} {name}/{rate}\r\n",
        port = addr.port(),
        name = codec.name(),
        rate = codec.clock_rate(),
    );
    if let Some(te) = te_pt {
        sdp.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        ));
    }
    sdp.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.attr()));
    sdp
}

// ---------------------------------------------------------------------------------------------
// Shared: message routing per Call-ID, lingering finished calls
// ---------------------------------------------------------------------------------------------

type Incoming = (SipMsg, SocketAddr);

/// A finished call kept for 64·T1 so retransmissions still get answers (RFC 3261 §17.1.1.2,
/// §13.3.1.4): re-ACK a retransmitted INVITE final, answer a retransmitted BYE.
#[derive(Debug)]
struct Lingering {
    until: Instant,
    /// The ACK we sent for the INVITE's final response and where it went.
    invite_ack: Option<(Vec<u8>, SocketAddr)>,
}

/// Per-agent table of live calls (by Call-ID) and recently finished ones.
#[derive(Debug, Default)]
struct CallTable {
    live: HashMap<String, mpsc::Sender<Incoming>>,
    finished: HashMap<String, Lingering>,
}

impl CallTable {
    fn purge(&mut self, now: Instant) {
        self.finished.retain(|_, l| l.until > now);
    }

    fn full(&self) -> bool {
        self.live.len() + self.finished.len() >= MAX_CALLS
    }

    fn finish(&mut self, call_id: &str, invite_ack: Option<(Vec<u8>, SocketAddr)>) {
        self.live.remove(call_id);
        let now = Instant::now();
        self.purge(now);
        if !self.full() {
            self.finished.insert(
                call_id.to_string(),
                Lingering {
                    until: now + TIMER_64T1,
                    invite_ack,
                },
            );
        }
    }
}

/// Locks a table; a poisoned lock only means another task panicked mid-update of plain maps,
/// which leaves them usable.
fn lock(table: &Mutex<CallTable>) -> MutexGuard<'_, CallTable> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, to).await {
        tracing::debug!(error = %e, %to, "SIP send failed");
    }
}

/// Answers a request that belongs to no live call (both agents): OPTIONS 200 (RFC 3261 §11.2),
/// a retransmitted BYE of a finished call 200, ACK nothing, everything else 481.
async fn answer_stray(
    socket: &UdpSocket,
    table: &Mutex<CallTable>,
    msg: &SipMsg,
    from: SocketAddr,
) {
    let Some(method) = msg.method() else {
        // A response: re-ACK a retransmitted INVITE final of a finished call.
        let ack = msg.call_id().and_then(|id| {
            let is_invite = msg.cseq().is_some_and(|(_, m)| m == "INVITE");
            let t = lock(table);
            t.finished
                .get(id)
                .filter(|_| is_invite && msg.code().is_some_and(|c| c >= 200))
                .and_then(|l| l.invite_ack.clone())
        });
        if let Some((bytes, to)) = ack {
            send(socket, &bytes, to).await;
        }
        return;
    };
    let lingering = msg
        .call_id()
        .is_some_and(|id| lock(table).finished.contains_key(id));
    let code = match method {
        "ACK" => return,
        "OPTIONS" => 200,
        "BYE" | "CANCEL" if lingering => 200,
        _ => 481,
    };
    let target = response_target(msg, from);
    send(
        socket,
        &response(msg, from, code, &ResponseParts::default()),
        target,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Phone (UAC)
// ---------------------------------------------------------------------------------------------

/// A phone: sends every request to `proxy` (an outbound proxy), follows Record-Route (RFC 3261 §12.1.2:
/// UAC route set = Record-Route reversed; R-URI of in-dialog requests = remote Contact; Route headers set).
///
/// Several calls may run on one phone at once; a background task routes incoming messages to
/// them by Call-ID and is stopped when the phone is dropped.
pub struct Phone {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    table: Arc<Mutex<CallTable>>,
    receiver: JoinHandle<()>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Removes a call from the phone's table when `call` returns or is dropped, leaving it lingering.
struct CallGuard {
    table: Arc<Mutex<CallTable>>,
    call_id: String,
    invite_ack: Option<(Vec<u8>, SocketAddr)>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let ack = self.invite_ack.take();
        lock(&self.table).finish(&self.call_id, ack);
    }
}

/// The dialog state a UAC needs for in-dialog requests (RFC 3261 §12.1.2).
struct UacDialog {
    remote_target: String,
    route_set: Vec<String>,
    from: String,
    to: String,
    call_id: String,
}

impl UacDialog {
    /// An in-dialog request with a fresh branch.
    fn request(&self, method: &str, cseq: u32, local: SocketAddr) -> Vec<u8> {
        self.request_with(method, cseq, local, &InDialog::default())
    }

    /// An in-dialog request with the given branch (else a fresh one), Contact and SDP body.
    fn request_with(
        &self,
        method: &str,
        cseq: u32,
        local: SocketAddr,
        extra: &InDialog<'_>,
    ) -> Vec<u8> {
        let mut b = MsgBuilder::new(&format!("{method} {} SIP/2.0", self.remote_target));
        let branch = extra.branch.map_or_else(new_branch, str::to_string);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {};branch={branch};rport", host_port(local)),
        );
        b.header("Max-Forwards", "70");
        for route in &self.route_set {
            b.header("Route", route);
        }
        b.header("From", &self.from)
            .header("To", &self.to)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{cseq} {method}"))
            .header("User-Agent", PRODUCT);
        if let Some(contact) = extra.contact {
            b.header("Contact", contact);
        }
        b.finish(extra.sdp.map(|sdp| ("application/sdp", sdp)))
    }
}

/// Optional parts of an in-dialog request.
#[derive(Default)]
struct InDialog<'a> {
    /// Reuse this Via branch (the ACK of a non-2xx final, RFC 3261 §17.1.1.3).
    branch: Option<&'a str>,
    contact: Option<&'a str>,
    sdp: Option<&'a str>,
}

/// A re-INVITE of ours in progress: the INVITE client transaction (RFC 3261 §17.1.1, §14.1).
struct ReInvite {
    bytes: Vec<u8>,
    branch: String,
    cseq: u32,
    /// What it changes.
    step: Step,
    /// The socket a `Step::Move` moves the RTP to once answered.
    new_socket: Option<UdpSocket>,
    /// Timer A; `None` once a provisional response arrived.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B.
    deadline: Instant,
}

/// A mid-call change the phone makes with a re-INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `a=sendonly`, stop sending.
    Hold,
    /// `a=sendrecv`, send again.
    Resume,
    /// Offer only this codec.
    Codec(Codec),
    /// Offer a new local RTP port.
    Move,
}

/// The ACK for a retransmitted 2xx to one of our INVITEs (initial or re-INVITE), by CSeq.
fn ack_for<'a>(msg: &SipMsg, acks: &'a [(u32, Vec<u8>)]) -> Option<&'a [u8]> {
    let (num, _) = msg.cseq()?;
    acks.iter()
        .find(|(n, _)| *n == num)
        .map(|(_, bytes)| bytes.as_slice())
}

/// How the INVITE transaction ended.
enum InviteResult {
    Answered(SipMsg),
    Final(u16, SipMsg),
}

impl Phone {
    /// Binds the phone's SIP socket on `ip` (ephemeral port) and starts its receive task; must be
    /// called inside a tokio runtime.
    pub async fn bind(ip: IpAddr) -> std::io::Result<Phone> {
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
        let local = socket.local_addr()?;
        let table = Arc::new(Mutex::new(CallTable::default()));
        let receiver = tokio::spawn(phone_receive_loop(socket.clone(), table.clone()));
        Ok(Phone {
            socket,
            local,
            table,
            receiver,
        })
    }

    /// Address of the phone's SIP socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// INVITE sip:{to_user}@{proxy} with an SDP offer (the spec's codec; m=audio <rtp port> RTP/AVP <pt> 101,
    /// a=rtpmap lines, a=sendrecv); Timer A retransmission until a provisional arrives (RFC 3261 §17.1.1);
    /// on 2xx: ACK (new branch, route set), play RTP to the answer's c=/m= for `talk`, then BYE, wait its 200
    /// (retransmit BYE per Timer E); retransmitted 2xx are re-ACKed. On 3xx-6xx: ACK hop-by-hop (same branch,
    /// To with tag from the response) and return Rejected(code). cancel_after_ringing: CANCEL (same branch,
    /// RFC 3261 §9.1) after the first 180, expect 200 to CANCEL and 487 to INVITE, ACK the 487, Cancelled.
    /// Each call gets a unique Call-ID, From tag, branch (z9hG4bK...). Overall bounded by timeouts (never hang).
    ///
    /// With `spec.hold`: hold and resume re-INVITEs during the talk time (see [`CallSpec::hold`]),
    /// each an INVITE client transaction of its own (Timer A/B, ACK for its 2xx, CSeq + 1);
    /// the BYE then takes the next CSeq.
    ///
    /// If the other side sends BYE first it gets 200 and the call ends without our BYE.
    pub async fn call(&self, proxy: SocketAddr, spec: &CallSpec) -> Result<CallReport, UaError> {
        let local_host = advertised_ip(self.local.ip());
        let call_id = format!("{}@{}", new_token(), host_port(self.local));
        let (tx, mut rx) = mpsc::channel(CALL_QUEUE);
        {
            let mut t = lock(&self.table);
            t.purge(Instant::now());
            t.live.insert(call_id.clone(), tx);
        }
        let mut guard = CallGuard {
            table: self.table.clone(),
            call_id: call_id.clone(),
            invite_ack: None,
        };

        let rtp = RtpPeer::bind(self.local.ip()).await?;
        let rtp_addr = SocketAddr::new(local_host, rtp.local_addr().port());
        let sdp_session = new_sdp_session();
        let sdp_for = |version: u64, direction: MediaDir, addr: SocketAddr, codec: Codec| {
            sdp_body(
                addr,
                rtp_peer::payload_type(codec),
                codec,
                Some(TELEPHONE_EVENT_PT),
                (sdp_session, sdp_session + version),
                direction,
            )
        };
        let offer = sdp_for(0, MediaDir::SendRecv, rtp_addr, spec.codec);
        // Early media: RTP that reaches our socket before the answer.
        let mut early_rtp_received = 0u64;

        let ruri = format!("sip:{}@{}", spec.to_user, host_port(proxy));
        let from_uri = format!("sip:{}@{}", spec.from_user, host_of(local_host));
        let from = match &spec.from_display {
            Some(d) => format!("{} <{from_uri}>;tag={}", quote_display(d), new_token()),
            None => format!("<{from_uri}>;tag={}", new_token()),
        };
        let to = format!("<{ruri}>");
        let branch = new_branch();
        let via = format!(
            "SIP/2.0/UDP {};branch={branch};rport",
            host_port(self.local)
        );
        let contact = format!("<sip:{}@{}>", spec.from_user, host_port(self.local));

        let mut b = MsgBuilder::new(&format!("INVITE {ruri} SIP/2.0"));
        b.header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &to)
            .header("Call-ID", &call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .header("User-Agent", PRODUCT);
        for (name, value) in &spec.extra_headers {
            b.header(name, value);
        }
        let invite = b.finish(Some(("application/sdp", &offer)));

        // Requests that differ from the INVITE only in method and To (CANCEL, §9.1; ACK for a
        // non-2xx final, §17.1.1.3) reuse its Via, so they match the same transaction.
        let same_txn = |method: &str, to: &str| {
            let mut b = MsgBuilder::new(&format!("{method} {ruri} SIP/2.0"));
            b.header("Via", &via)
                .header("Max-Forwards", "70")
                .header("From", &from)
                .header("To", to)
                .header("Call-ID", &call_id)
                .header("CSeq", &format!("1 {method}"))
                .header("User-Agent", PRODUCT);
            b.finish(None)
        };

        let invite_sent_at = SystemTime::now();
        send(&self.socket, &invite, proxy).await;

        // --- INVITE client transaction (RFC 3261 §17.1.1) ---
        let start = Instant::now();
        let mut timer_a = T1;
        let mut retransmit_at = Some(start + T1);
        let mut deadline = start + TIMER_64T1;
        let mut cancel: Option<Vec<u8>> = None;
        let mut cancel_retx: Option<(Instant, Duration)> = None;
        let result = loop {
            let mut wake = deadline;
            if let Some(at) = retransmit_at {
                wake = wake.min(at);
            }
            if let Some((at, _)) = cancel_retx {
                wake = wake.min(at);
            }
            // Biased, RTP first: early media sent before the answer is already queued on the
            // RTP socket when the 2xx is read, so it is all counted as early.
            tokio::select! {
                biased;
                got = rtp.recv_rtp() => early_rtp_received += u64::from(got),
                m = rx.recv() => {
                    let Some((msg, from_addr)) = m else { return Err(UaError::Closed) };
                    if msg.answers("INVITE", &branch) {
                        let code = msg.code().unwrap_or_default();
                        if code < 200 {
                            retransmit_at = None;
                            // A provisional extends the wait (Timer C style) but a CANCEL
                            // keeps its own 64·T1 bound (§9.1).
                            if cancel.is_none() {
                                deadline = Instant::now() + MAX_RING;
                            }
                            if code == 180 && spec.cancel_after_ringing && cancel.is_none() {
                                let bytes = same_txn("CANCEL", &to);
                                send(&self.socket, &bytes, proxy).await;
                                let now = Instant::now();
                                cancel_retx = Some((now + T1, T1));
                                deadline = now + TIMER_64T1;
                                cancel = Some(bytes);
                            }
                        } else if code < 300 {
                            break InviteResult::Answered(msg);
                        } else {
                            break InviteResult::Final(code, msg);
                        }
                    } else if msg.answers("CANCEL", &branch) {
                        if msg.code().is_some_and(|c| c >= 200) {
                            cancel_retx = None;
                        }
                    } else if msg.method().is_some() {
                        answer_in_dialog(&self.socket, &msg, from_addr).await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(UaError::Timeout(if cancel.is_some() {
                            "the final response to a cancelled INVITE"
                        } else {
                            "a response to INVITE"
                        }));
                    }
                    if retransmit_at.is_some_and(|at| now >= at) {
                        send(&self.socket, &invite, proxy).await;
                        timer_a *= 2;
                        retransmit_at = Some(now + timer_a);
                    }
                    if let (Some((at, interval)), Some(bytes)) = (cancel_retx, cancel.as_ref()) {
                        if now >= at {
                            send(&self.socket, bytes, proxy).await;
                            let next = (interval * 2).min(T2);
                            cancel_retx = Some((now + next, next));
                        }
                    }
                }
            }
        };

        let ok = match result {
            InviteResult::Final(code, msg) => {
                let to_with_tag = msg.header("to").unwrap_or(&to).to_string();
                let ack = same_txn("ACK", &to_with_tag);
                send(&self.socket, &ack, proxy).await;
                guard.invite_ack = Some((ack, proxy));
                let outcome = if cancel.is_some() && code == 487 {
                    Outcome::Cancelled
                } else {
                    Outcome::Rejected(code)
                };
                return Ok(CallReport {
                    outcome,
                    call_id,
                    invite_sent_at,
                    answered_at: None,
                    bye_sent_at: None,
                    hold_sent_at: None,
                    resume_sent_at: None,
                    codec_sent_at: None,
                    switched_to: None,
                    move_sent_at: None,
                    moved_to: None,
                    early_rtp_received,
                    rtp: None,
                });
            }
            InviteResult::Answered(msg) => msg,
        };

        // --- Dialog established (RFC 3261 §12.1.2, §13.2.2.4) ---
        let answered_at = SystemTime::now();
        let to_with_tag = ok.header("to").unwrap_or_default().to_string();
        if header_param(&to_with_tag, "tag").is_none() {
            return Err(UaError::BadResponse("2xx to INVITE without To tag".into()));
        }
        let dialog = UacDialog {
            remote_target: ok
                .header("contact")
                .map(|c| uri_of(c).to_string())
                .unwrap_or_else(|| ruri.clone()),
            route_set: ok.list("record-route").into_iter().rev().collect(),
            from: from.clone(),
            to: to_with_tag,
            call_id: call_id.clone(),
        };
        let ack = dialog.request("ACK", 1, self.local);
        send(&self.socket, &ack, proxy).await;
        guard.invite_ack = Some((ack.clone(), proxy));

        let media = parse_sdp(&ok.body)
            .filter(|m| m.addr.port() != 0)
            .and_then(|m| m.first_codec().map(|(_, codec)| (m.addr, codec)));
        let mut remote_hung_up = false;
        let mut stats = None;
        // CSeq of our last request in the dialog, and the ACK of each 2xx we got by CSeq (a
        // retransmitted 2xx is ACKed again, RFC 3261 §13.2.2.4).
        let mut cseq = 1u32;
        let mut acks: Vec<(u32, Vec<u8>)> = vec![(1, ack)];
        let mut hold_sent_at = None;
        let mut resume_sent_at = None;
        let mut codec_sent_at = None;
        let mut switched_to = None;
        let mut move_sent_at = None;
        let mut moved_to = None;
        // A 2xx that crossed our CANCEL: the call exists, so it is ended at once (§9.1).
        if let (Some((remote_rtp, codec)), None) = (media, cancel.as_ref()) {
            let cfg = PlayConfig {
                codec,
                tone_hz: spec.tone_hz,
                duration: spec.talk,
                drop_every: spec.drop_every,
                ssrc: rtp_peer::random_u64() as u32,
                pause: Pause::default(),
                steer: Steer::default(),
            };
            let talk_start = Instant::now();
            // Mid-call changes still to make, each when it is due and no other re-INVITE is in
            // progress (the resume is scheduled when the hold is answered).
            let mut steps: Vec<(Instant, Step)> = Vec::new();
            if let Some((at, _)) = spec.hold {
                steps.push((talk_start + at, Step::Hold));
            }
            if let Some((at, codec)) = spec.switch_codec {
                steps.push((talk_start + at, Step::Codec(codec)));
            }
            if let Some(at) = spec.move_rtp {
                steps.push((talk_start + at, Step::Move));
            }
            // What our SDP says now.
            let mut cur_codec = spec.codec;
            let mut cur_addr = rtp_addr;
            let mut held = false;
            let mut reinvite: Option<ReInvite> = None;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let mut stop_tx = Some(stop_tx);
            let play = rtp.play(remote_rtp, &cfg, async {
                let _ = stop_rx.await;
            });
            tokio::pin!(play);
            stats = Some(loop {
                let wake = match &reinvite {
                    Some(r) => Some(r.retransmit_at.map_or(r.deadline, |at| at.min(r.deadline))),
                    None => steps.iter().map(|(at, _)| *at).min(),
                };
                tokio::select! {
                    s = &mut play => break s,
                    () = tokio::time::sleep_until(wake.unwrap_or(talk_start)), if wake.is_some() => {
                        let now = Instant::now();
                        if let Some(r) = reinvite.as_mut() {
                            if now >= r.deadline {
                                // Timer B: the change failed; talk on as before it (unheld).
                                tracing::debug!(%call_id, cseq = r.cseq, "re-INVITE timed out");
                                held = false;
                                cfg.pause.resume();
                                reinvite = None;
                            } else {
                                send(&self.socket, &r.bytes, proxy).await;
                                r.interval *= 2;
                                r.retransmit_at = Some(now + r.interval);
                            }
                            continue;
                        }
                        let Some(due) = steps.iter().position(|(at, _)| *at <= now) else { continue };
                        let (_, step) = steps.remove(due);
                        cseq += 1;
                        let sent_at = Some(SystemTime::now());
                        let (mut codec, mut addr, mut new_socket) = (cur_codec, cur_addr, None);
                        match step {
                            Step::Resume => resume_sent_at = sent_at,
                            Step::Hold => {
                                // On hold we send nothing; the RTP clock runs on.
                                cfg.pause.pause();
                                held = true;
                                hold_sent_at = sent_at;
                            }
                            Step::Codec(c) => {
                                codec = c;
                                codec_sent_at = sent_at;
                            }
                            Step::Move => {
                                let socket = UdpSocket::bind(SocketAddr::new(self.local.ip(), 0)).await?;
                                addr = SocketAddr::new(local_host, socket.local_addr()?.port());
                                new_socket = Some(socket);
                                // Nothing from the old port once the proxy may have re-pointed.
                                cfg.pause.pause();
                                move_sent_at = sent_at;
                            }
                        }
                        let direction = if held && step != Step::Resume {
                            MediaDir::SendOnly
                        } else {
                            MediaDir::SendRecv
                        };
                        let sdp = sdp_for(u64::from(cseq) - 1, direction, addr, codec);
                        let branch = new_branch();
                        let bytes = dialog.request_with(
                            "INVITE",
                            cseq,
                            self.local,
                            &InDialog { branch: Some(&branch), contact: Some(&contact), sdp: Some(&sdp) },
                        );
                        send(&self.socket, &bytes, proxy).await;
                        reinvite = Some(ReInvite {
                            bytes,
                            branch,
                            cseq,
                            step,
                            new_socket,
                            retransmit_at: Some(now + T1),
                            interval: T1,
                            deadline: now + TIMER_64T1,
                        });
                    }
                    m = rx.recv() => {
                        let Some((msg, from_addr)) = m else { return Err(UaError::Closed) };
                        let ours = reinvite.as_ref().is_some_and(|r| msg.answers("INVITE", &r.branch));
                        if let (true, Some(r)) = (ours, reinvite.as_mut()) {
                            let code = msg.code().unwrap_or_default();
                            if code < 200 {
                                r.retransmit_at = None;
                                continue;
                            }
                            let done = reinvite.take();
                            let Some(r) = done else { continue };
                            if code < 300 {
                                let ack = dialog.request("ACK", r.cseq, self.local);
                                send(&self.socket, &ack, proxy).await;
                                acks.push((r.cseq, ack));
                                match r.step {
                                    Step::Resume => {
                                        held = false;
                                        cfg.pause.resume();
                                    }
                                    Step::Hold => {
                                        if let Some((at, len)) = spec.hold {
                                            steps.push((talk_start + at + len, Step::Resume));
                                        }
                                    }
                                    Step::Codec(c) => {
                                        // Send what the answer chose (RFC 3264 §6.1).
                                        let chosen = parse_sdp(&msg.body)
                                            .and_then(|m| m.first_codec())
                                            .map_or(c, |(_, codec)| codec);
                                        cfg.steer.set_codec(chosen);
                                        cur_codec = chosen;
                                        switched_to = Some(chosen);
                                    }
                                    Step::Move => {
                                        if let Some(socket) = r.new_socket {
                                            if let Ok(local) = socket.local_addr() {
                                                cur_addr = SocketAddr::new(local_host, local.port());
                                                moved_to = Some(local);
                                            }
                                            cfg.steer.move_to(socket);
                                        }
                                        if !held {
                                            cfg.pause.resume();
                                        }
                                    }
                                }
                            } else {
                                // Non-2xx final: ACK on the same branch (§17.1.1.3); the
                                // session stays as it was before, so we talk on unheld.
                                let ack = dialog.request_with(
                                    "ACK",
                                    r.cseq,
                                    self.local,
                                    &InDialog { branch: Some(&r.branch), ..InDialog::default() },
                                );
                                send(&self.socket, &ack, proxy).await;
                                tracing::debug!(%call_id, code, "re-INVITE refused");
                                held = false;
                                cfg.pause.resume();
                            }
                        } else if msg.code().is_some() {
                            if msg.is_invite_2xx() {
                                if let Some(ack) = ack_for(&msg, &acks) {
                                    send(&self.socket, ack, proxy).await;
                                }
                            }
                        } else if msg.method() == Some("BYE") {
                            remote_hung_up = true;
                            answer_in_dialog(&self.socket, &msg, from_addr).await;
                            if let Some(t) = stop_tx.take() {
                                let _ = t.send(());
                            }
                        } else {
                            answer_in_dialog(&self.socket, &msg, from_addr).await;
                        }
                    }
                }
            });
        }

        let mut bye_sent_at = None;
        if !remote_hung_up {
            let bye = dialog.request("BYE", cseq + 1, self.local);
            let bye_branch = SipMsg::parse(&bye)
                .and_then(|m| m.top_branch())
                .unwrap_or_default();
            bye_sent_at = Some(SystemTime::now());
            send(&self.socket, &bye, proxy).await;
            // Non-INVITE client transaction, Timer E/F (RFC 3261 §17.1.2.2).
            let start = Instant::now();
            let deadline = start + TIMER_64T1;
            let mut interval = T1;
            let mut next = start + T1;
            loop {
                tokio::select! {
                    m = rx.recv() => {
                        let Some((msg, from_addr)) = m else { return Err(UaError::Closed) };
                        if msg.answers("BYE", &bye_branch) {
                            let code = msg.code().unwrap_or_default();
                            if code >= 200 {
                                // Any final ends the dialog (§15.1.1); say so if it was not 2xx.
                                if code >= 300 {
                                    tracing::debug!(code, %call_id, "BYE answered with an error");
                                }
                                break;
                            }
                        } else if msg.code().is_some() {
                            if msg.is_invite_2xx() {
                                if let Some(ack) = ack_for(&msg, &acks) {
                                    send(&self.socket, ack, proxy).await;
                                }
                            }
                        } else {
                            answer_in_dialog(&self.socket, &msg, from_addr).await;
                            if msg.method() == Some("BYE") {
                                break; // BYEs crossed: the dialog is over either way.
                            }
                        }
                    }
                    () = tokio::time::sleep_until(next.min(deadline)) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(UaError::Timeout("a response to BYE"));
                        }
                        send(&self.socket, &bye, proxy).await;
                        interval = (interval * 2).min(T2);
                        next = now + interval;
                    }
                }
            }
        }

        if cancel.is_none() && stats.is_none() {
            return Err(UaError::NoMedia(
                "no c=/m=audio with a port and a codec we can send".into(),
            ));
        }
        Ok(CallReport {
            outcome: Outcome::Answered,
            call_id,
            invite_sent_at,
            answered_at: Some(answered_at),
            bye_sent_at,
            hold_sent_at,
            resume_sent_at,
            codec_sent_at,
            switched_to,
            move_sent_at,
            moved_to,
            early_rtp_received,
            rtp: stats,
        })
    }
}

/// Answers a request inside a live call we do not act on specially: BYE/OPTIONS/INFO 200,
/// re-INVITE 488 (the phone does not accept renegotiation from the other side, RFC 3261 §14.2;
/// the PBX answers re-INVITEs itself, in `UasCall::accept`), ACK nothing, other 405.
async fn answer_in_dialog(socket: &UdpSocket, msg: &SipMsg, from: SocketAddr) {
    let code = match msg.method() {
        None | Some("ACK") => return,
        Some("BYE" | "OPTIONS" | "INFO" | "CANCEL") => 200,
        Some("INVITE") => 488,
        Some(_) => 405,
    };
    let target = response_target(msg, from);
    send(
        socket,
        &response(msg, from, code, &ResponseParts::default()),
        target,
    )
    .await;
}

async fn phone_receive_loop(socket: Arc<UdpSocket>, table: Arc<Mutex<CallTable>>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not fatal.
                tracing::debug!(error = %e, "phone SIP receive error");
                continue;
            }
        };
        let Some(msg) = buf.get(..len).and_then(SipMsg::parse) else {
            tracing::debug!(%from, len, "phone ignored an unparsable datagram");
            continue;
        };
        let tx = msg
            .call_id()
            .and_then(|id| lock(&table).live.get(id).cloned());
        match tx {
            Some(tx) => {
                if tx.try_send((msg, from)).is_err() {
                    tracing::debug!(%from, "phone call queue full or closed; message dropped");
                }
            }
            None => answer_stray(&socket, &table, &msg, from).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pbx (UAS)
// ---------------------------------------------------------------------------------------------

/// The "PBX": a user agent server at a fixed address answering every INVITE per `decide(called_user)`,
/// each call on its own task; responses go to the top Via's sent-by/received/rport (RFC 3261 §18.2.2,
/// RFC 3581) and carry every Via, Record-Route (copied, §12.1.1), From, To(+tag), Call-ID, CSeq, Contact.
/// Answers OPTIONS with 200. Handles BYE from the other side (200 OK) and ends the call's RTP.
/// Absorbs INVITE retransmissions (re-sends its last response).
pub struct Pbx {
    socket: UdpSocket,
    local: SocketAddr,
}

/// Handle on a running [`Pbx`]; dropping it stops the PBX and all its calls.
pub struct PbxHandle {
    reports: mpsc::Receiver<UasCallReport>,
    task: JoinHandle<()>,
}

impl Drop for PbxHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PbxHandle {
    /// The next finished call, or `None` if none finishes within `timeout`.
    pub async fn next_report(&mut self, timeout: Duration) -> Option<UasCallReport> {
        tokio::time::timeout(timeout, self.reports.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops the PBX and every call it is handling.
    pub fn shutdown(self) {
        drop(self);
    }
}

/// Decision function type of [`Pbx::spawn`].
type Decide = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

impl Pbx {
    /// Binds the PBX's SIP socket at `addr` (port 0 for an ephemeral one).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Pbx> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        Ok(Pbx { socket, local })
    }

    /// Address of the PBX's SIP socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Runs until the returned handle is dropped or `shutdown()`; reports each finished call on the channel.
    /// Must be called inside a tokio runtime.
    pub fn spawn(self, decide: Arc<dyn Fn(&str) -> Answer + Send + Sync>) -> PbxHandle {
        let (report_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let task = tokio::spawn(pbx_loop(self, decide, report_tx));
        PbxHandle { reports, task }
    }
}

async fn pbx_loop(pbx: Pbx, decide: Decide, reports: mpsc::Sender<UasCallReport>) {
    let socket = Arc::new(pbx.socket);
    let local = pbx.local;
    let table = Arc::new(Mutex::new(CallTable::default()));
    // Dropping the set (when this task is aborted) aborts every call task with it.
    let mut calls = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "PBX SIP receive error");
                    continue;
                }
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
        };
        let Some(msg) = buf.get(..len).and_then(SipMsg::parse) else {
            tracing::debug!(%from, len, "PBX ignored an unparsable datagram");
            continue;
        };
        let Some(call_id) = msg.call_id().map(str::to_string) else {
            if msg.method().is_some_and(|m| m != "ACK") {
                let target = response_target(&msg, from);
                let bad = response(
                    &msg,
                    from,
                    400,
                    &ResponseParts {
                        reason: Some("Bad Request"),
                        ..Default::default()
                    },
                );
                send(&socket, &bad, target).await;
            }
            continue;
        };
        let live = lock(&table).live.get(&call_id).cloned();
        if let Some(tx) = live {
            if tx.try_send((msg, from)).is_err() {
                tracing::debug!(%from, %call_id, "PBX call queue full; message dropped");
            }
            continue;
        }
        let finished = lock(&table).finished.contains_key(&call_id);
        let is_invite = msg.method() == Some("INVITE");
        if is_invite && finished {
            // A late retransmission of a call that is over: absorbed.
            continue;
        }
        let untagged = msg
            .header("to")
            .is_some_and(|t| header_param(t, "tag").is_none());
        if !(is_invite && untagged) {
            answer_stray(&socket, &table, &msg, from).await;
            continue;
        }
        let full = {
            let mut t = lock(&table);
            t.purge(Instant::now());
            t.full()
        };
        if full {
            let target = response_target(&msg, from);
            send(
                &socket,
                &response(&msg, from, 503, &ResponseParts::default()),
                target,
            )
            .await;
            continue;
        }
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        lock(&table).live.insert(call_id.clone(), tx);
        let ctx = UasCall {
            socket: socket.clone(),
            local,
            to_tag: new_token(),
            target: response_target(&msg, from),
            source: from,
            last_response: None,
            invite: msg,
        };
        let decide = decide.clone();
        let reports = reports.clone();
        let table = table.clone();
        calls.spawn(async move {
            let report = run_uas_call(ctx, rx, decide).await;
            lock(&table).finish(&report.call_id, None);
            if reports.send(report).await.is_err() {
                tracing::debug!("PBX report receiver gone");
            }
        });
    }
}

/// One call at the PBX: the INVITE, where its responses go and the last one sent.
struct UasCall {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    invite: SipMsg,
    source: SocketAddr,
    target: SocketAddr,
    to_tag: String,
    last_response: Option<Vec<u8>>,
}

/// A 2xx to a re-INVITE at the PBX, retransmitted until its ACK (RFC 3261 §13.3.1.4).
struct Pending2xx {
    cseq: u32,
    bytes: Vec<u8>,
    to: SocketAddr,
    acked: bool,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// What happened while waiting for something at the PBX.
enum Waited {
    /// The wait ended on time.
    Elapsed,
    /// The caller cancelled; 200 and 487 are sent and the ACK awaited.
    Cancelled,
}

impl UasCall {
    fn contact(&self) -> String {
        let user = user_of(self.request_uri());
        if user.is_empty() {
            format!("<sip:{}>", host_port(self.local))
        } else {
            format!("<sip:{user}@{}>", host_port(self.local))
        }
    }

    fn request_uri(&self) -> &str {
        match &self.invite.start {
            StartLine::Request { uri, .. } => uri,
            StartLine::Response { .. } => "",
        }
    }

    /// Sends a response to the INVITE and remembers it for retransmissions.
    async fn respond(&mut self, code: u16, reason: Option<&str>, sdp: Option<&str>) -> Vec<u8> {
        let contact = (code > 100 && code < 300).then(|| self.contact());
        let bytes = response(
            &self.invite,
            self.source,
            code,
            &ResponseParts {
                reason,
                to_tag: Some(&self.to_tag),
                contact: contact.as_deref(),
                sdp,
            },
        );
        send(&self.socket, &bytes, self.target).await;
        self.last_response = Some(bytes.clone());
        bytes
    }

    /// Answers a request other than the INVITE (CANCEL, BYE, ...) with `code`, To tag added.
    async fn answer(&self, req: &SipMsg, from: SocketAddr, code: u16) {
        let bytes = response(
            req,
            from,
            code,
            &ResponseParts {
                to_tag: Some(&self.to_tag),
                ..Default::default()
            },
        );
        send(&self.socket, &bytes, response_target(req, from)).await;
    }

    async fn resend_last(&self) {
        if let Some(bytes) = &self.last_response {
            send(&self.socket, bytes, self.target).await;
        }
    }

    /// Rings (or just waits) for `dur`, absorbing INVITE retransmissions; on CANCEL sends 200
    /// and 487 and waits for the ACK (RFC 3261 §9.2).
    async fn wait_or_cancel(&mut self, rx: &mut mpsc::Receiver<Incoming>, dur: Duration) -> Waited {
        let until = Instant::now() + dur;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some((msg, from)) = m else { return Waited::Elapsed };
                    match msg.method() {
                        Some("INVITE") => self.resend_last().await,
                        Some("CANCEL") => {
                            self.answer(&msg, from, 200).await;
                            let terminated = self.respond(487, None, None).await;
                            self.await_ack(rx, terminated).await;
                            return Waited::Cancelled;
                        }
                        // Nothing else is valid before the dialog exists.
                        Some("ACK") | None => {}
                        Some(_) => self.answer(&msg, from, 481).await,
                    }
                }
                () = tokio::time::sleep_until(until) => return Waited::Elapsed,
            }
        }
    }

    /// Retransmits a non-2xx final per Timer G until ACK or Timer H (RFC 3261 §17.2.1).
    async fn await_ack(&self, rx: &mut mpsc::Receiver<Incoming>, final_bytes: Vec<u8>) {
        let deadline = Instant::now() + TIMER_64T1;
        let mut interval = T1;
        let mut next = Instant::now() + T1;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some((msg, from)) = m else { return };
                    match msg.method() {
                        Some("ACK") => return,
                        Some("INVITE") => send(&self.socket, &final_bytes, self.target).await,
                        Some("CANCEL") => self.answer(&msg, from, 200).await,
                        None => {}
                        Some(_) => self.answer(&msg, from, 481).await,
                    }
                }
                () = tokio::time::sleep_until(next.min(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::debug!("PBX gave up waiting for ACK");
                        return;
                    }
                    send(&self.socket, &final_bytes, self.target).await;
                    interval = (interval * 2).min(T2);
                    next = now + interval;
                }
            }
        }
    }

    /// Final non-2xx with ACK wait.
    async fn reject(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        code: u16,
        reason: Option<&str>,
    ) -> Outcome {
        let bytes = self.respond(code, reason, None).await;
        self.await_ack(rx, bytes).await;
        Outcome::Rejected(code)
    }

    /// Answers with 200 + SDP, plays the tone and ends on BYE (RFC 3261 §13.3.1.4: the 2xx is
    /// retransmitted until ACK, for at most 64·T1). A re-INVITE is answered 200 with the
    /// complementary direction (sendonly → recvonly, recvonly → sendonly, inactive and sendrecv
    /// stay; same port, `o=` version + 1); the tone stops while that direction, or an
    /// offered `c=0.0.0.0`, forbids sending, and resumes after (the RTP clock runs on).
    ///
    /// A re-INVITE offering another codec first is answered with that codec, and the tone goes
    /// on in it from then on; one offering another address has the tone sent there. With `early = Some((length, tone))` the SDP answer goes out in a
    /// 183 first and `tone` plays for `length` before the 200 OK (early media; a CANCEL ends it).
    async fn accept(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        tone_hz: f64,
        early: Option<(Duration, f64)>,
    ) -> (Outcome, Option<RtpStats>, Option<RtpStats>) {
        let offer = parse_sdp(&self.invite.body).filter(|m| m.addr.port() != 0);
        let chosen = offer
            .as_ref()
            .and_then(|m| m.first_codec().map(|c| (m.addr, c, m.telephone_event_pt())));
        let Some((mut remote, (mut pt, mut codec), te_pt)) = chosen else {
            // No offer we can answer (late offer is not supported by the demo PBX either).
            return (self.reject(rx, 488, None).await, None, None);
        };
        let rtp = match RtpPeer::bind(self.local.ip()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "PBX could not bind an RTP socket");
                return (self.reject(rx, 503, None).await, None, None);
            }
        };
        let rtp_addr = SocketAddr::new(advertised_ip(self.local.ip()), rtp.local_addr().port());
        let sdp_session = new_sdp_session();
        let mut sdp_version = sdp_session;
        let pause = Pause::default();
        // What we answer to an offer, and whether we may send after it.
        let answer_to = |offer: &SdpAudio| {
            let direction = offer.direction.complement();
            let may_send = direction.sends() && !offer.addr.ip().is_unspecified();
            (direction, may_send)
        };
        let (direction, may_send) = offer.as_ref().map_or((MediaDir::SendRecv, true), answer_to);
        if !may_send {
            pause.pause();
        }
        let sdp = sdp_body(
            rtp_addr,
            pt,
            codec,
            te_pt,
            (sdp_session, sdp_version),
            direction,
        );
        let mut early_stats = None;
        if let Some((length, early_tone_hz)) = early {
            self.respond(183, None, Some(&sdp)).await;
            let early_cfg = PlayConfig {
                codec,
                tone_hz: early_tone_hz,
                duration: length,
                drop_every: None,
                ssrc: rtp_peer::random_u64() as u32,
                pause: pause.clone(),
                steer: Steer::default(),
            };
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let waiting = async {
                let waited = self.wait_or_cancel(rx, length).await;
                let _ = stop_tx.send(());
                waited
            };
            let playing = rtp.play(remote, &early_cfg, async {
                let _ = stop_rx.await;
            });
            let (waited, stats) = tokio::join!(waiting, playing);
            early_stats = Some(stats);
            if let Waited::Cancelled = waited {
                return (Outcome::Cancelled, None, early_stats);
            }
        }
        let ok = self.respond(200, None, Some(&sdp)).await;

        let cfg = PlayConfig {
            codec,
            tone_hz,
            duration: MAX_TALK,
            drop_every: None,
            ssrc: rtp_peer::random_u64() as u32,
            pause,
            steer: Steer::default(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut stop_tx = Some(stop_tx);
        let play = rtp.play(remote, &cfg, async {
            let _ = stop_rx.await;
        });
        tokio::pin!(play);
        let mut acked = false;
        let mut interval = T1;
        let mut next = Instant::now() + T1;
        let give_up = Instant::now() + TIMER_64T1;
        // The 2xx to the latest re-INVITE, retransmitted until its ACK like the first one.
        let mut reinvite_ok: Option<Pending2xx> = None;
        let stats = loop {
            let re_wake = reinvite_ok.as_ref().filter(|p| !p.acked).map(|p| p.next);
            tokio::select! {
                s = &mut play => break s,
                m = rx.recv() => {
                    let Some((msg, from)) = m else { break RtpStats::default() };
                    let cseq = msg.cseq().map(|(n, _)| n);
                    match msg.method() {
                        Some("ACK") => match reinvite_ok.as_mut() {
                            Some(p) if cseq == Some(p.cseq) => p.acked = true,
                            _ => acked = true,
                        },
                        Some("INVITE") if header_param(msg.header("to").unwrap_or_default(), "tag").is_none() => {
                            send(&self.socket, &ok, self.target).await;
                        }
                        Some("INVITE") => {
                            if let Some(p) = reinvite_ok.as_ref().filter(|p| cseq == Some(p.cseq)) {
                                // A retransmission of the re-INVITE we answered.
                                send(&self.socket, &p.bytes, p.to).await;
                                continue;
                            }
                            let target = response_target(&msg, from);
                            let Some(offer) = parse_sdp(&msg.body).filter(|m| m.addr.port() != 0) else {
                                // No offer (or a removed stream): the demo does not renegotiate that.
                                send(&self.socket, &response(&msg, from, 488, &ResponseParts::default()), target).await;
                                continue;
                            };
                            if offer.addr != remote && !offer.addr.ip().is_unspecified() {
                                // The other side moved its media (RFC 3264 §8.3.1).
                                remote = offer.addr;
                                cfg.steer.send_to(remote);
                            }
                            let (direction, may_send) = answer_to(&offer);
                            // Another codec offered first: answer with it and send it from now on.
                            if let Some((new_pt, new_codec)) = offer.first_codec().filter(|&(_, c)| c != codec) {
                                (pt, codec) = (new_pt, new_codec);
                                cfg.steer.set_codec(new_codec);
                            }
                            sdp_version += 1;
                            let body = sdp_body(rtp_addr, pt, codec, te_pt, (sdp_session, sdp_version), direction);
                            let contact = self.contact();
                            let bytes = response(&msg, from, 200, &ResponseParts {
                                contact: Some(&contact),
                                sdp: Some(&body),
                                ..ResponseParts::default()
                            });
                            if may_send {
                                cfg.pause.resume();
                            } else {
                                cfg.pause.pause();
                            }
                            send(&self.socket, &bytes, target).await;
                            let now = Instant::now();
                            reinvite_ok = Some(Pending2xx {
                                cseq: cseq.unwrap_or_default(),
                                bytes,
                                to: target,
                                acked: false,
                                next: now + T1,
                                interval: T1,
                                give_up: now + TIMER_64T1,
                            });
                        }
                        Some("BYE") => {
                            self.answer(&msg, from, 200).await;
                            if let Some(t) = stop_tx.take() {
                                let _ = t.send(());
                            }
                        }
                        Some(_) => answer_in_dialog(&self.socket, &msg, from).await,
                        None => {}
                    }
                }
                () = tokio::time::sleep_until(re_wake.unwrap_or(next)), if re_wake.is_some() => {
                    let now = Instant::now();
                    if let Some(p) = reinvite_ok.as_mut() {
                        if now >= p.give_up {
                            tracing::debug!("PBX got no ACK for its 2xx to a re-INVITE");
                            p.acked = true;
                        } else {
                            send(&self.socket, &p.bytes, p.to).await;
                            p.interval = (p.interval * 2).min(T2);
                            p.next = now + p.interval;
                        }
                    }
                }
                () = tokio::time::sleep_until(next), if !acked => {
                    let now = Instant::now();
                    if now >= give_up {
                        // No ACK: the UAS should end the dialog (§13.3.1.4); the demo just stops
                        // retransmitting and keeps playing until BYE or MAX_TALK.
                        tracing::debug!("PBX got no ACK for its 2xx");
                        acked = true;
                    } else {
                        send(&self.socket, &ok, self.target).await;
                        interval = (interval * 2).min(T2);
                        next = now + interval;
                    }
                }
            }
        };
        (Outcome::Answered, Some(stats), early_stats)
    }
}

async fn run_uas_call(
    mut call: UasCall,
    mut rx: mpsc::Receiver<Incoming>,
    decide: Decide,
) -> UasCallReport {
    let mut called_user = user_of(call.request_uri());
    if called_user.is_empty() {
        called_user = call
            .invite
            .header("to")
            .map(|t| user_of(uri_of(t)))
            .unwrap_or_default();
    }
    let answer = decide(&called_user);
    call.respond(100, None, None).await;
    let (outcome, rtp, early_rtp) = match answer {
        Answer::Accept { ring, tone_hz } => {
            call.respond(180, None, None).await;
            match call.wait_or_cancel(&mut rx, ring).await {
                Waited::Cancelled => (Outcome::Cancelled, None, None),
                Waited::Elapsed => call.accept(&mut rx, tone_hz, None).await,
            }
        }
        Answer::EarlyMedia {
            early,
            early_tone_hz,
            tone_hz,
        } => {
            call.accept(&mut rx, tone_hz, Some((early, early_tone_hz)))
                .await
        }
        Answer::Reject { code, reason } => {
            // Only final error codes make sense here; anything else becomes 500.
            let code = if (300..700).contains(&code) {
                code
            } else {
                500
            };
            (call.reject(&mut rx, code, Some(&reason)).await, None, None)
        }
        Answer::RingUntilCancel => {
            call.respond(180, None, None).await;
            match call.wait_or_cancel(&mut rx, MAX_RING).await {
                Waited::Cancelled => (Outcome::Cancelled, None, None),
                Waited::Elapsed => (call.reject(&mut rx, 408, None).await, None, None),
            }
        }
    };
    UasCallReport {
        call_id: call.invite.call_id().unwrap_or_default().to_string(),
        called_user,
        caller_from: call.invite.header("from").unwrap_or_default().to_string(),
        outcome,
        rtp,
        early_rtp,
        received_headers: call.invite.headers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const REPORT_WAIT: Duration = Duration::from_secs(5);

    fn spec(to_user: &str) -> CallSpec {
        CallSpec {
            from_user: "alice".into(),
            from_display: Some("Alice \"A\" Smith".into()),
            extra_headers: vec![(
                "P-Asserted-Identity".into(),
                "\"Alice\" <sip:+358401234567@example.com>".into(),
            )],
            ..CallSpec::new(
                "alice",
                to_user,
                Codec::Pcmu,
                440.0,
                Duration::from_millis(600),
            )
        }
    }

    /// Next SIP message on a raw test socket (fails the test after 5 s).
    async fn recv_msg(sock: &UdpSocket) -> (SipMsg, SocketAddr) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("timed out")
            .unwrap();
        (SipMsg::parse(&buf[..len]).unwrap(), from)
    }

    async fn pbx_with(answer: Answer) -> (SocketAddr, PbxHandle) {
        let pbx = Pbx::bind(SocketAddr::new(LOCALHOST, 0)).await.unwrap();
        let addr = pbx.local_addr();
        let handle = pbx.spawn(Arc::new(move |_user: &str| answer.clone()));
        (addr, handle)
    }

    #[tokio::test]
    async fn answered_call_exchanges_rtp_both_ways() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
            ring: Duration::from_millis(50),
            tone_hz: 1000.0,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let report = phone.call(pbx_addr, &spec("bob")).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        let answered = report.answered_at.unwrap();
        assert!(answered >= report.invite_sent_at);
        assert!(report.bye_sent_at.unwrap() >= answered);
        let rtp = report.rtp.unwrap();
        assert_eq!((rtp.sent, rtp.dropped), (30, 0));
        assert!((25..=32).contains(&rtp.received), "{rtp:?}");
        assert_eq!(rtp.first_rx_from.map(|a| a.ip()), Some(LOCALHOST));

        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Answered);
        assert_eq!(uas.call_id, report.call_id);
        assert_eq!(uas.called_user, "bob");
        assert!(uas
            .caller_from
            .starts_with("\"Alice \\\"A\\\" Smith\" <sip:alice@127.0.0.1>;tag="));
        assert!(uas
            .received_headers
            .iter()
            .any(|(n, v)| n == "P-Asserted-Identity"
                && v == "\"Alice\" <sip:+358401234567@example.com>"));
        let pbx_rtp = uas.rtp.unwrap();
        assert!((25..=30).contains(&pbx_rtp.received), "{pbx_rtp:?}");
        assert!((25..=36).contains(&pbx_rtp.sent), "{pbx_rtp:?}");
        // Symmetric RTP: the PBX saw our packets from the port we advertised.
        assert_eq!(pbx_rtp.first_rx_from.map(|a| a.ip()), Some(LOCALHOST));
    }

    #[tokio::test]
    async fn hold_and_resume_pause_both_sides_and_keep_the_dialog() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(1600);
        s.hold = Some((Duration::from_millis(400), Duration::from_millis(600)));
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        let answered = report.answered_at.unwrap();
        let hold = report
            .hold_sent_at
            .unwrap()
            .duration_since(answered)
            .unwrap();
        let resume = report
            .resume_sent_at
            .unwrap()
            .duration_since(answered)
            .unwrap();
        assert!(
            hold.abs_diff(Duration::from_millis(400)) < Duration::from_millis(60),
            "{hold:?}"
        );
        assert!(
            resume.abs_diff(Duration::from_millis(1000)) < Duration::from_millis(60),
            "{resume:?}"
        );
        // 80 packet times: about 30 of them on hold, nothing sent then.
        let rtp = report.rtp.unwrap();
        assert_eq!(rtp.sent + rtp.paused, 80, "{rtp:?}");
        assert!((27..=34).contains(&rtp.paused), "{rtp:?}");
        // The PBX was silent on hold too (it answered recvonly) and talked before and after.
        assert!((40..=56).contains(&rtp.received), "{rtp:?}");
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Answered);
        let pbx_rtp = uas.rtp.unwrap();
        assert!((26..=36).contains(&pbx_rtp.paused), "{pbx_rtp:?}");
        assert!((45..=50).contains(&pbx_rtp.received), "{pbx_rtp:?}");
    }

    /// The PBX answers each offered direction with its complement, keeps port and session id,
    /// and bumps the `o=` version.
    #[tokio::test]
    async fn pbx_answers_reinvites_with_the_complementary_direction() {
        let (pbx_addr, _pbx) = pbx_with(Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        })
        .await;
        let raw = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let me = raw.local_addr().unwrap();
        let media = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let media_addr = media.local_addr().unwrap();
        let invite = |cseq: u32, to_tag: Option<&str>, direction: MediaDir, c: IpAddr| {
            let sdp = sdp_body(
                SocketAddr::new(c, media_addr.port()),
                0,
                Codec::Pcmu,
                None,
                (7, 7 + u64::from(cseq)),
                direction,
            );
            let tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
            format!(
                "INVITE sip:bob@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKre{cseq}\r\n\
                 From: <sip:eve@x>;tag=9\r\nTo: <sip:bob@x>{tag}\r\nCall-ID: re-1\r\nCSeq: {cseq} INVITE\r\n\
                 Contact: <sip:eve@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )
        };
        let ack = |cseq: u32, tag: &str| {
            format!(
                "ACK sip:bob@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack{cseq}\r\n\
                 From: <sip:eve@x>;tag=9\r\nTo: <sip:bob@x>;tag={tag}\r\nCall-ID: re-1\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
            )
        };
        raw.send_to(
            invite(1, None, MediaDir::SendRecv, LOCALHOST).as_bytes(),
            pbx_addr,
        )
        .await
        .unwrap();
        let ok = loop {
            let m = recv_msg(&raw).await.0;
            if m.code() == Some(200) {
                break m;
            }
        };
        let tag = header_param(ok.header("to").unwrap(), "tag").unwrap();
        let first = parse_sdp(&ok.body).unwrap();
        assert_eq!(first.direction, MediaDir::SendRecv);
        let origin = |body: &str| {
            let o = body
                .lines()
                .find(|l| l.starts_with("o="))
                .unwrap()
                .to_string();
            let f: Vec<u64> = o
                .split_whitespace()
                .skip(1)
                .take(2)
                .map(|x| x.parse().unwrap())
                .collect();
            (f[0], f[1])
        };
        let (session, version) = origin(&ok.body);
        raw.send_to(ack(1, &tag).as_bytes(), pbx_addr)
            .await
            .unwrap();
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let cases = [
            (MediaDir::SendOnly, LOCALHOST, MediaDir::RecvOnly),
            (MediaDir::RecvOnly, LOCALHOST, MediaDir::SendOnly),
            (MediaDir::Inactive, LOCALHOST, MediaDir::Inactive),
            (MediaDir::SendRecv, unspecified, MediaDir::SendRecv),
            (MediaDir::SendRecv, LOCALHOST, MediaDir::SendRecv),
        ];
        for (i, (offered, c, expected)) in cases.into_iter().enumerate() {
            let cseq = 2 + i as u32;
            raw.send_to(invite(cseq, Some(&tag), offered, c).as_bytes(), pbx_addr)
                .await
                .unwrap();
            let r = recv_msg(&raw).await.0;
            assert_eq!(
                (r.code(), r.cseq()),
                (Some(200), Some((cseq, "INVITE".to_string())))
            );
            let answer = parse_sdp(&r.body).unwrap();
            assert_eq!(answer.direction, expected, "answer to {offered:?}");
            assert_eq!(answer.addr, first.addr, "same media address");
            assert_eq!(origin(&r.body), (session, version + 1 + i as u64));
            // Not ACKed yet: the 2xx comes again (Timer G style, from T1).
            let again = recv_msg(&raw).await.0;
            assert_eq!(again.cseq(), Some((cseq, "INVITE".to_string())));
            raw.send_to(ack(cseq, &tag).as_bytes(), pbx_addr)
                .await
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn codec_switch_and_port_move_renegotiate_and_keep_the_stream() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(1600);
        s.switch_codec = Some((Duration::from_millis(400), Codec::Pcma));
        s.move_rtp = Some(Duration::from_millis(1000));
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        assert_eq!(report.switched_to, Some(Codec::Pcma));
        let answered = report.answered_at.unwrap();
        let at = |t: Option<SystemTime>| t.unwrap().duration_since(answered).unwrap();
        let (switch, moved) = (at(report.codec_sent_at), at(report.move_sent_at));
        assert!(
            switch.abs_diff(Duration::from_millis(400)) < Duration::from_millis(60),
            "{switch:?}"
        );
        assert!(
            moved.abs_diff(Duration::from_millis(1000)) < Duration::from_millis(60),
            "{moved:?}"
        );
        let rtp = report.rtp.unwrap();
        assert_eq!(rtp.sent + rtp.paused, 80, "{rtp:?}");
        assert!(
            rtp.paused <= 1,
            "the move costs at most one packet time: {rtp:?}"
        );
        // About 60 of 80 packets went out in PCMA, and the PBX followed the move: about 30
        // packets reached the new socket.
        assert!((55..=62).contains(&rtp.sent_after_codec_change), "{rtp:?}");
        assert!((25..=31).contains(&rtp.received_after_move), "{rtp:?}");
        assert!(report.moved_to.is_some_and(|a| a.port() != 0));
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        let pbx_rtp = uas.rtp.unwrap();
        // The PBX switched with the re-INVITE too and received from both sockets.
        assert!(
            (55..=62).contains(&pbx_rtp.sent_after_codec_change),
            "{pbx_rtp:?}"
        );
        assert!((76..=80).contains(&pbx_rtp.received), "{pbx_rtp:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn early_media_reaches_the_phone_before_the_answer() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::EarlyMedia {
            early: Duration::from_millis(500),
            early_tone_hz: 600.0,
            tone_hz: 1000.0,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(400);
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        // All 25 early packets are queued before the 200 OK is sent, and the phone reads RTP
        // first, so none is missed; a packet of the answered stream may race the 200 OK through
        // the phone's SIP reader and be counted too.
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Answered);
        assert_eq!(uas.early_rtp.unwrap().sent, 25);
        let answered_sent = uas.rtp.unwrap().sent;
        assert!(
            (25..=25 + answered_sent).contains(&report.early_rtp_received),
            "{} early of 25 + {answered_sent}",
            report.early_rtp_received
        );
        assert!(report.rtp.unwrap().received >= 18);
    }

    #[tokio::test]
    async fn rejected_call_reports_code_on_both_sides() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Reject {
            code: 486,
            reason: "Busy Here".into(),
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let report = phone.call(pbx_addr, &spec("busy")).await.unwrap();
        assert_eq!(report.outcome, Outcome::Rejected(486));
        assert!(report.answered_at.is_none() && report.rtp.is_none());
        // The PBX reports only after our ACK (else it would wait 32 s for Timer H).
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Rejected(486));
        assert_eq!(uas.called_user, "busy");
    }

    #[tokio::test]
    async fn cancel_after_ringing_cancels_both_sides() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::RingUntilCancel).await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("queue");
        s.cancel_after_ringing = true;
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled);
        assert!(report.rtp.is_none() && report.bye_sent_at.is_none());
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Cancelled);
        assert_eq!(uas.call_id, report.call_id);
    }

    #[tokio::test]
    async fn drop_every_fifth_packet_is_counted_not_sent() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.drop_every = Some(5);
        s.codec = Codec::Pcma;
        let report = phone.call(pbx_addr, &s).await.unwrap();
        let rtp = report.rtp.unwrap();
        // 600 ms = 30 packets; numbers 5, 10, ..., 30 are dropped.
        assert_eq!((rtp.sent, rtp.dropped), (24, 6));
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        let received = uas.rtp.unwrap().received;
        assert!((20..=24).contains(&received), "{received}");
    }

    #[tokio::test]
    async fn calls_work_over_ipv6() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let Ok(pbx) = Pbx::bind(SocketAddr::new(v6, 0)).await else {
            return; // no IPv6 loopback on this machine
        };
        let pbx_addr = pbx.local_addr();
        let mut handle = pbx.spawn(Arc::new(|_: &str| Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        }));
        let phone = Phone::bind(v6).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(100);
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        assert_eq!(report.rtp.unwrap().sent, 5);
        let uas = handle.next_report(REPORT_WAIT).await.unwrap();
        assert!(
            uas.caller_from.contains("<sip:alice@[::1]>"),
            "{}",
            uas.caller_from
        );
        assert!(uas.rtp.unwrap().received >= 3);
    }

    /// A raw-socket UAS standing in for a proxy: checks the phone's ACK/BYE follow the route
    /// set and remote target, and that a retransmitted 2xx is ACKed again.
    #[tokio::test]
    async fn phone_follows_record_route_and_contact() {
        let fake = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let fake_addr = fake.local_addr().unwrap();
        let media_sink = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let sink_port = media_sink.local_addr().unwrap().port();
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("carol");
        s.talk = Duration::from_millis(200);
        let phone_task = async { phone.call(fake_addr, &s).await };
        let uas = async {
            let (invite, from) = recv_msg(&fake).await;
            assert_eq!(invite.method(), Some("INVITE"));
            assert!(
                matches!(&invite.start, StartLine::Request { uri, .. } if *uri == format!("sip:carol@{fake_addr}"))
            );
            let offer = parse_sdp(&invite.body).unwrap();
            assert_eq!(offer.pts, vec![0, 101]);
            assert!(invite.top_branch().unwrap().starts_with("z9hG4bK"));
            let answer = build_sdp(SocketAddr::new(LOCALHOST, sink_port), 0, Codec::Pcmu, None);
            let mut b = MsgBuilder::new("SIP/2.0 200 OK");
            for v in invite.header_values("via") {
                b.header("Via", v);
            }
            b.header("Record-Route", "<sip:p1.example;lr>, <sip:p2.example;lr>")
                .header("Record-Route", "<sip:p3.example;lr>")
                .header("From", invite.header("from").unwrap())
                .header("To", &format!("{};tag=uas1", invite.header("to").unwrap()))
                .header("Call-ID", invite.call_id().unwrap())
                .header("CSeq", "1 INVITE")
                .header("Contact", "<sip:carol@192.0.2.7:5070;transport=udp>");
            let ok = b.finish(Some(("application/sdp", &answer)));
            fake.send_to(&ok, from).await.unwrap();

            let expect_ack = |ack: &SipMsg| {
                assert_eq!(ack.method(), Some("ACK"));
                assert!(
                    matches!(&ack.start, StartLine::Request { uri, .. } if uri == "sip:carol@192.0.2.7:5070;transport=udp")
                );
                assert_eq!(
                    ack.header_values("route").collect::<Vec<_>>(),
                    vec![
                        "<sip:p3.example;lr>",
                        "<sip:p2.example;lr>",
                        "<sip:p1.example;lr>"
                    ]
                );
                assert_eq!(ack.cseq(), Some((1, "ACK".to_string())));
                assert_ne!(ack.top_branch(), invite.top_branch());
                assert_eq!(
                    header_param(ack.header("to").unwrap(), "tag").as_deref(),
                    Some("uas1")
                );
            };
            let (ack, _) = recv_msg(&fake).await;
            expect_ack(&ack);
            // Retransmitted 2xx (as if our ACK were lost): the phone must ACK again.
            fake.send_to(&ok, from).await.unwrap();
            let (ack2, _) = recv_msg(&fake).await;
            expect_ack(&ack2);

            let (bye, bye_from) = recv_msg(&fake).await;
            assert_eq!(bye.method(), Some("BYE"));
            assert!(
                matches!(&bye.start, StartLine::Request { uri, .. } if uri == "sip:carol@192.0.2.7:5070;transport=udp")
            );
            assert_eq!(bye.header_values("route").count(), 3);
            assert_eq!(bye.cseq(), Some((2, "BYE".to_string())));
            let resp = response(&bye, bye_from, 200, &ResponseParts::default());
            fake.send_to(&resp, response_target(&bye, bye_from))
                .await
                .unwrap();
        };
        let (report, ()) = tokio::join!(phone_task, uas);
        let report = report.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        assert_eq!(report.rtp.unwrap().sent, 10);
        let mut pkt = [0u8; 512];
        let (len, _) = media_sink.recv_from(&mut pkt).await.unwrap();
        assert_eq!(len, 12 + 160);
    }

    #[tokio::test]
    async fn pbx_answers_options_and_absorbs_invite_retransmissions() {
        let (pbx_addr, _pbx) = pbx_with(Answer::RingUntilCancel).await;
        let raw = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let me = raw.local_addr().unwrap();
        let options = format!(
            "OPTIONS sip:{pbx_addr} SIP/2.0\r\nv: SIP/2.0/UDP {me};branch=z9hG4bKopt1\r\n\
             f: <sip:probe@x>;tag=1\r\nt: <sip:{pbx_addr}>\r\ni: opt-1\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n"
        );
        raw.send_to(options.as_bytes(), pbx_addr).await.unwrap();
        let r = recv_msg(&raw).await.0;
        assert_eq!(r.code(), Some(200));
        assert_eq!(r.cseq(), Some((7, "OPTIONS".to_string())));
        assert_eq!(r.call_id(), Some("opt-1"));

        let invite = format!(
            "INVITE sip:dave@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKinv1\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup\r\nRecord-Route: <sip:proxy;lr>\r\n\
             From: <sip:eve@x>;tag=9\r\nTo: <sip:dave@x>\r\nCall-ID: inv-1\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:eve@{me}>\r\nContent-Length: 0\r\n\r\n"
        );
        raw.send_to(invite.as_bytes(), pbx_addr).await.unwrap();
        let trying = recv_msg(&raw).await.0;
        assert_eq!(trying.code(), Some(100));
        let ringing = recv_msg(&raw).await.0;
        assert_eq!(ringing.code(), Some(180));
        assert_eq!(ringing.header_values("via").count(), 2);
        assert_eq!(ringing.header("record-route"), Some("<sip:proxy;lr>"));
        let tag = header_param(ringing.header("to").unwrap(), "tag").unwrap();
        assert!(ringing
            .header("contact")
            .unwrap()
            .starts_with("<sip:dave@127.0.0.1:"));
        // Retransmission: the last response (180) is sent again, with the same tag.
        raw.send_to(invite.as_bytes(), pbx_addr).await.unwrap();
        let again = recv_msg(&raw).await.0;
        assert_eq!(again.code(), Some(180));
        assert_eq!(header_param(again.header("to").unwrap(), "tag"), Some(tag));
    }

    #[test]
    fn parses_compact_folded_and_listed_headers() {
        let raw = b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;rport=5071;received=10.0.0.9, SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKb\r\n\
Via: SIP/2.0/UDP h.example;branch=z9hG4bKc\r\nSubject: folded\r\n  line\r\ni: abc@h\r\nCSeq: 3 INVITE\r\nl: 4\r\n\r\nbodyEXTRA";
        let m = SipMsg::parse(raw).unwrap();
        assert_eq!(m.code(), Some(180));
        assert_eq!(m.call_id(), Some("abc@h"));
        assert_eq!(m.header("subject"), Some("folded line"));
        assert_eq!(m.body, "body");
        assert_eq!(m.cseq(), Some((3, "INVITE".to_string())));
        assert_eq!(m.list("via").len(), 3);
        assert_eq!(m.top_branch().as_deref(), Some("z9hG4bKa"));
        let v = parse_via(&m.list("via")[1]).unwrap();
        assert_eq!((v.host.as_str(), v.port), ("2001:db8::1", None));
        assert!(SipMsg::parse(b"INVITE sip:a@b SIP/2.0\r\nl: 99\r\n\r\nshort").is_none());
        assert!(SipMsg::parse(b"\r\n\r\n").is_none());
        assert!(SipMsg::parse(b"garbage\r\n\r\n").is_none());
        assert!(SipMsg::parse(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).is_none());
    }

    #[test]
    fn response_target_follows_rport_received_and_sent_by() {
        let src: SocketAddr = "10.1.1.1:40000".parse().unwrap();
        let req = |via: &str| {
            SipMsg::parse(
                format!("BYE sip:a@b SIP/2.0\r\nVia: {via}\r\nCall-ID: x\r\n\r\n").as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            response_target(&req("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;rport"), src),
            src
        );
        assert_eq!(
            response_target(&req("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1"), src),
            "10.0.0.5:5070".parse().unwrap()
        );
        assert_eq!(
            response_target(
                &req("SIP/2.0/UDP 10.0.0.5;received=10.0.0.6;branch=z9hG4bK1"),
                src
            ),
            "10.0.0.6:5060".parse().unwrap()
        );
        assert_eq!(
            response_target(&req("SIP/2.0/UDP [2001:db8::5]:5080;branch=z9hG4bK1"), src),
            "[2001:db8::5]:5080".parse().unwrap()
        );
        assert_eq!(
            response_target(&req("SIP/2.0/UDP pbx.example;branch=z9hG4bK1"), src),
            src
        );
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;rport", src),
            "SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;rport=40000;received=10.1.1.1"
        );
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.1.1.1:40000;branch=z9hG4bK1", src),
            "SIP/2.0/UDP 10.1.1.1:40000;branch=z9hG4bK1"
        );
    }

    #[test]
    fn name_addr_helpers() {
        let v = "\"Bob, <the> boss\" <sip:bob@h.example;transport=udp>;tag=77;x";
        assert_eq!(uri_of(v), "sip:bob@h.example;transport=udp");
        assert_eq!(header_param(v, "TAG").as_deref(), Some("77"));
        assert_eq!(header_param(v, "x").as_deref(), Some(""));
        assert_eq!(header_param("sip:a@h;tag=5", "tag").as_deref(), Some("5"));
        assert_eq!(header_param("<sip:a@h;tag=uri>", "tag"), None);
        assert_eq!(split_list(&format!("{v}, <sip:c@d>")), vec![v, "<sip:c@d>"]);
        assert_eq!(user_of("sip:bob@h.example"), "bob");
        assert_eq!(user_of("sips:+358401@h;user=phone"), "+358401");
        assert_eq!(
            user_of("tel:+358295120000;phone-context=x"),
            "+358295120000"
        );
        assert_eq!(user_of("sip:h.example"), "");
        assert_eq!(quote_display("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn sdp_roundtrip_and_codec_choice() {
        let addr: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let sdp = build_sdp(addr, 0, Codec::Pcmu, Some(101));
        assert!(sdp.contains("m=audio 40002 RTP/AVP 0 101\r\n"));
        assert!(sdp.contains("a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"));
        assert!(sdp.ends_with("a=ptime:20\r\na=sendrecv\r\n"));
        let m = parse_sdp(&sdp).unwrap();
        assert_eq!(m.addr, addr);
        assert_eq!(m.first_codec(), Some((0, Codec::Pcmu)));
        assert_eq!(m.telephone_event_pt(), Some(101));

        let v6 = build_sdp("[::1]:4000".parse().unwrap(), 8, Codec::Pcma, None);
        assert!(v6.contains("c=IN IP6 ::1\r\n"));
        assert_eq!(parse_sdp(&v6).unwrap().addr, "[::1]:4000".parse().unwrap());

        // Media-level c= wins; unknown codecs are skipped in m= order; only the first audio m=.
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 96 9 8 0\r\nc=IN IP4 10.0.0.2\r\n\
                     a=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000\r\nm=audio 6000 RTP/AVP 0\r\n";
        let m = parse_sdp(offer).unwrap();
        assert_eq!(m.addr, "10.0.0.2:5000".parse().unwrap());
        assert_eq!(m.first_codec(), Some((8, Codec::Pcma)));
        assert_eq!(m.telephone_event_pt(), None);
        assert!(parse_sdp("v=0\r\nm=audio 5000 RTP/AVP 0\r\n").is_none());
        assert!(parse_sdp("m=audio x RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n").is_none());
    }
}

//! Built-in SIP user agents for `recproxy demo` and the integration tests: [`Phone`], a UAC that
//! places calls through an outbound proxy and plays a tone, and [`Pbx`], a UAS answering every
//! INVITE per a decision function. Real SIP over UDP (IPv4 or IPv6) with RFC 3261 timers.
//! Beyond the plain call they do hold, codec and port changes by re-INVITE from either side,
//! early media, forking (several early dialogs; a late 2xx of another fork ACKed and hung up),
//! digest challenges (401/407, SHA-256), REFER with NOTIFY in both directions and RFC 4028
//! session timers (refreshed by the phone with re-INVITE or UPDATE).
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
/// Methods these agents understand, for Allow headers (the phone declines REFER with 603).
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, REFER, NOTIFY";
/// How long the PBX waits, after the ACK of its 401/407, for the INVITE with credentials.
const AUTH_WAIT: Duration = Duration::from_secs(10);
/// Subscription the PBX grants a REFER (RFC 3515 §2.4.4), for its `Subscription-State`.
const REFER_SUBSCRIPTION_SECS: u32 = 60;
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
    /// Answer a 401/407 digest challenge (SHA-256, RFC 8760) once: ACK it and send the INVITE
    /// again with credentials (same Call-ID and From tag, CSeq + 1, new branch; RFC 3261 §22.2).
    pub credentials: Option<Credentials>,
    /// Ask for an RFC 4028 session timer: `Supported: timer` and `Session-Expires` in the
    /// INVITE, and refresh as the 2xx says (see [`SessionTimer`]).
    pub session_timer: Option<SessionTimer>,
    /// Blind transfer (RFC 3515, RFC 5589 §6.1): at this offset into the talk time, REFER the
    /// other side to `sip:<number>@<proxy>`; NOTIFYs of the referral are answered 200, and
    /// when one reports the transfer done (`SIP/2.0 2xx` sipfrag) the phone hangs up.
    pub refer: Option<(Duration, String)>,
    /// When the other side REFERs the phone (RFC 3515): `None` declines (603); `Some(code)`
    /// accepts (202), NOTIFYs `SIP/2.0 100 Trying` and, once that is answered, the final
    /// `SIP/2.0 <code> ...` (subscription terminated). The demo phone places no call to the
    /// Refer-To target: `code` is the outcome it reports.
    pub on_refer: Option<u16>,
}

/// An RFC 4028 session timer asked for by the [`Phone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// Session interval asked for, in seconds (`Session-Expires`).
    pub expires: u32,
    /// How the phone refreshes when the 2xx makes it the refresher (`refresher=uac`): at half
    /// the granted interval (RFC 4028 §10), each refresh carrying `Session-Expires` again.
    /// `None`: it never refreshes (a phone that lost its state), so the session expires.
    pub refresh: Option<Refresh>,
}

/// The request a session refresh is made with (RFC 4028 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A re-INVITE offering the unchanged SDP (same `o=` version, RFC 3264 §8).
    ReInvite,
    /// An UPDATE without a body (RFC 3311).
    Update,
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
            credentials: None,
            session_timer: None,
            refer: None,
            on_refer: None,
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
    /// The distinct To tags of the provisional responses, in order: one per early dialog
    /// (several when the far side forked, RFC 3261 §13.2.2.4).
    pub early_tags: Vec<String>,
    /// The To tag of the 2xx: the dialog the call took place in.
    pub to_tag: Option<String>,
    /// The 401/407 answered with credentials (`CallSpec::credentials`).
    pub auth_challenge: Option<u16>,
    /// Session interval the 2xx granted (`Session-Expires`, RFC 4028), seconds.
    pub session_expires: Option<u32>,
    /// Whether the 2xx made the phone the refresher (`refresher=uac`).
    pub refresher_is_us: bool,
    /// When each session refresh (re-INVITE or UPDATE) was first sent.
    pub refreshes_sent_at: Vec<SystemTime>,
    /// Final status of each session refresh, in order.
    pub refresh_results: Vec<u16>,
    /// When the REFER was first sent (`CallSpec::refer`).
    pub refer_sent_at: Option<SystemTime>,
    /// Final status of the REFER (202 when accepted).
    pub refer_status: Option<u16>,
    /// Status lines of the sipfrag bodies of the NOTIFYs received, in order.
    pub notifies: Vec<String>,
    /// When each re-INVITE or UPDATE from the other side was answered 2xx.
    pub remote_updates_at: Vec<SystemTime>,
    /// To tags of 2xx responses from other forks than the call's, each ACKed and ended with a
    /// BYE at once (RFC 3261 §13.2.2.4).
    pub other_dialogs: Vec<String>,
    /// Refer-To of each REFER received, with the status we answered it with.
    pub refers_received: Vec<(String, u16)>,
    /// Final status of each NOTIFY we sent about a REFER we accepted, in order.
    pub notify_results: Vec<u16>,
}

impl CallReport {
    /// A report of a call placed at `invite_sent_at` that has not got further.
    fn new(call_id: String, invite_sent_at: SystemTime) -> CallReport {
        CallReport {
            outcome: Outcome::Answered,
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
            early_rtp_received: 0,
            rtp: None,
            early_tags: Vec::new(),
            to_tag: None,
            auth_challenge: None,
            session_expires: None,
            refresher_is_us: false,
            refreshes_sent_at: Vec::new(),
            refresh_results: Vec::new(),
            refer_sent_at: None,
            refer_status: None,
            notifies: Vec::new(),
            remote_updates_at: Vec::new(),
            other_dialogs: Vec::new(),
            refers_received: Vec::new(),
            notify_results: Vec::new(),
        }
    }
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
    /// Like `Accept`, and then the PBX side acts during the call as `script` says.
    Scripted {
        /// Time between 180 and 200.
        ring: Duration,
        /// Tone the PBX side plays.
        tone_hz: f64,
        /// What the PBX does during the call.
        script: PbxScript,
    },
    /// A forking PBX (RFC 3261 §16.7, §13.2.2.4): 100, then one 180 per fork, each with its own
    /// To tag and Contact (`;fork=<n>`, n from 1), i.e. `forks` early dialogs; after `ring` the
    /// fork `winner` (index from 0) answers 200 OK in its dialog, like `Accept`. The other
    /// forks' early dialogs end with that (their branches would be cancelled), unless
    /// `late_answer` says otherwise.
    Forked {
        /// Time between the 180s and the 200.
        ring: Duration,
        /// Tone the answering fork plays.
        tone_hz: f64,
        /// Number of forks (at least 2).
        forks: u8,
        /// Which one answers (index from 0).
        winner: u8,
        /// A losing fork (the first one that is not the winner) answers too, this long after
        /// the winner, as when its cancel came too late (RFC 3261 §13.2.2.4): a 200 OK in its
        /// own dialog, with SDP naming a media socket of its own that only counts what
        /// arrives. It takes the ACK of that 200 and answers the caller's BYE ending it.
        late_answer: Option<Duration>,
    },
    /// Digest authentication: 100, then `code` (401 with WWW-Authenticate, else 407 with
    /// Proxy-Authenticate; SHA-256, qop=auth), and once the caller sends the INVITE again with
    /// valid credentials of `user`/`password` (within 10 s of its ACK), answers it like
    /// `Accept`; wrong credentials get 403 Forbidden.
    Challenge {
        /// 401 or 407.
        code: u16,
        /// The realm of the challenge.
        realm: String,
        /// The user name and password expected.
        credentials: Credentials,
        /// Time between 180 and 200 of the authorised INVITE.
        ring: Duration,
        /// Tone the PBX side plays.
        tone_hz: f64,
    },
}

/// What the [`Pbx`] side does during an answered call (`Answer::Scripted`).
#[derive(Debug, Clone, Default)]
pub struct PbxScript {
    /// Move the PBX's RTP to a new local port at this offset after the 200 OK (once the ACK is
    /// in): bind a new socket, stop sending, re-INVITE with the new port, and once that is
    /// answered 2xx send from (and receive on) the new socket, continuing the same stream.
    pub move_rtp: Option<Duration>,
    /// How long a transfer asked for by REFER takes: the PBX answers the REFER 202, NOTIFYs
    /// `SIP/2.0 100 Trying` at once and `SIP/2.0 200 OK` (subscription terminated) after this.
    /// The demo PBX places no call to the Refer-To target; it reports it.
    pub transfer_delay: Duration,
    /// Blind transfer by the PBX side: at this offset after the 200 OK (once the ACK is in),
    /// REFER the caller to `sip:<number>@<PBX address>`; NOTIFYs about it are answered 200 and
    /// their sipfrag status lines reported. The PBX keeps the call either way.
    pub refer: Option<(Duration, String)>,
}

/// A request the [`Pbx`] received in a call after the INVITE (ACK, BYE, CANCEL, re-INVITE,
/// UPDATE, REFER, NOTIFY, ...).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Request-URI.
    pub uri: String,
    /// CSeq number.
    pub cseq: u32,
    /// To tag (the dialog it was sent in), if any.
    pub to_tag: Option<String>,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// When it arrived.
    pub at: SystemTime,
}

impl SeenRequest {
    /// First value of header `name` (case-insensitive, compact forms included).
    pub fn header(&self, name: &str) -> Option<&str> {
        let wanted = canonical_name(name);
        self.headers
            .iter()
            .find(|(n, _)| canonical_name(n) == wanted)
            .map(|(_, v)| v.as_str())
    }
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
    /// INVITE headers as received (name as written, value trimmed), for pass-through checks;
    /// of the INVITE that was answered, after a challenge.
    pub received_headers: Vec<(String, String)>,
    /// The To tag of the final response: the dialog of an answered call.
    pub to_tag: String,
    /// The To tags of the provisional responses sent, in order (one per fork with
    /// `Answer::Forked`).
    pub early_tags: Vec<String>,
    /// Requests received after the INVITE, in order (retransmissions of the INVITE left out).
    pub requests: Vec<SeenRequest>,
    /// When the 200 OK to the INVITE was first sent.
    pub answered_at: Option<SystemTime>,
    /// Digest challenges sent (`Answer::Challenge`).
    pub challenges: u32,
    /// The user whose credentials were accepted.
    pub authorized_user: Option<String>,
    /// Session interval granted in the 200 OK (RFC 4028), seconds.
    pub session_expires: Option<u32>,
    /// When the port-moving re-INVITE was first sent (`PbxScript::move_rtp`).
    pub move_sent_at: Option<SystemTime>,
    /// The local RTP address moved to, once the move was answered 2xx.
    pub moved_to: Option<SocketAddr>,
    /// Refer-To of each REFER accepted (202).
    pub refer_to: Vec<String>,
    /// Final status of each NOTIFY the PBX sent about a referral, in order.
    pub notify_results: Vec<u16>,
    /// To tag of the losing fork's late 200 OK (`Answer::Forked::late_answer`), once sent.
    pub late_answer_tag: Option<String>,
    /// RTP packets that reached the losing fork's media socket.
    pub late_answer_rtp_received: u64,
    /// When the PBX's REFER was first sent (`PbxScript::refer`).
    pub refer_sent_at: Option<SystemTime>,
    /// Final status of the PBX's REFER.
    pub refer_status: Option<u16>,
    /// Status lines of the sipfrag bodies of the NOTIFYs the PBX received, in order.
    pub notifies: Vec<String>,
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
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        603 => "Decline",
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
    /// Further headers (challenges, session timer), after Contact.
    headers: &'a [(String, String)],
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
    for (name, value) in parts.headers {
        b.header(name, value);
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

/// The address of a SIP URI with an IP literal host (`sip:u@127.0.0.1:5070;lr` →
/// 127.0.0.1:5070, default port 5060); `None` for host names (these agents resolve no DNS).
fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let lower = uri.to_ascii_lowercase();
    let rest = if lower.starts_with("sips:") {
        uri.get(5..)?
    } else if lower.starts_with("sip:") {
        uri.get(4..)?
    } else {
        return None;
    };
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?']).next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => SIP_PORT,
        };
        return Some(SocketAddr::new(host.parse().ok()?, port));
    }
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, SIP_PORT),
    };
    Some(SocketAddr::new(host.parse().ok()?, port))
}

/// Whether a `Supported` (or `Require`) header of `msg` lists `option` (RFC 3261 §20.37).
fn lists_option(msg: &SipMsg, header: &str, option: &str) -> bool {
    msg.list(header)
        .iter()
        .any(|o| o.trim().eq_ignore_ascii_case(option))
}

// ---------------------------------------------------------------------------------------------
// Session timer (RFC 4028)
// ---------------------------------------------------------------------------------------------

/// Which side refreshes the session (RFC 4028 §4, the `refresher` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The UAC of the transaction that set the timer.
    Uac,
    /// The UAS.
    Uas,
}

/// `Session-Expires: <seconds>[;refresher=uac|uas]` of a message (compact form `x` too).
fn session_expires_of(msg: &SipMsg) -> Option<(u32, Option<Refresher>)> {
    let value = msg.header("session-expires")?;
    let secs = value.split(';').next()?.trim().parse().ok()?;
    let refresher = match param_in(value, "refresher").as_deref() {
        Some(r) if r.eq_ignore_ascii_case("uac") => Some(Refresher::Uac),
        Some(r) if r.eq_ignore_ascii_case("uas") => Some(Refresher::Uas),
        _ => None,
    };
    Some((secs, refresher))
}

/// The session-timer headers of a 2xx to `req` (INVITE, re-INVITE or UPDATE), RFC 4028 §9:
/// the interval asked for, `refresher=uac` (the UAC asked for it, or left it to us and we leave
/// it to the UAC), and `Require: timer` because the UAC refreshes. Nothing when the UAC did
/// not offer the extension (`Supported: timer`) or asked us to refresh: these agents never
/// refresh a session themselves, so they answer as a UA without RFC 4028 would. Intervals below
/// the RFC's 90 s minimum are granted (no 422), so tests can let a session expire in seconds.
fn timer_answer_headers(req: &SipMsg) -> Vec<(String, String)> {
    let Some((secs, refresher)) = session_expires_of(req) else {
        return Vec::new();
    };
    if secs == 0 || !lists_option(req, "supported", "timer") || refresher == Some(Refresher::Uas) {
        return Vec::new();
    }
    vec![
        ("Session-Expires".into(), format!("{secs};refresher=uac")),
        ("Require".into(), "timer".into()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Digest authentication (RFC 7616 with SHA-256, RFC 8760 for SIP)
// ---------------------------------------------------------------------------------------------

/// A user name and password for digest challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Digest `username`.
    pub user: String,
    /// The shared secret.
    pub password: String,
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The auth-params of a `Digest` challenge or credentials header (`Digest a="b", c=d`),
/// names lowercased, quotes removed; `None` for another scheme.
fn digest_params(value: &str) -> Option<HashMap<String, String>> {
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut params = HashMap::new();
    for part in split_list(rest) {
        let (k, v) = part.split_once('=')?;
        params.insert(
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches('"').to_string(),
        );
    }
    Some(params)
}

/// The digest `response` (RFC 7616 §3.4.1, SHA-256): with `qop=auth` over nonce, nc, cnonce
/// and qop, else the RFC 2069 form over the nonce only.
fn digest_response(
    creds: &Credentials,
    realm: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = sha256_hex(&format!("{}:{realm}:{}", creds.user, creds.password));
    let ha2 = sha256_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => sha256_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => sha256_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Credentials answering a `Digest` challenge for `method uri`; `None` when the challenge is
/// not one we can answer (another scheme or algorithm, no realm or nonce).
fn authorization(challenge: &str, creds: &Credentials, method: &str, uri: &str) -> Option<String> {
    let p = digest_params(challenge)?;
    let algorithm = p.get("algorithm").map_or("MD5", String::as_str);
    if !algorithm.eq_ignore_ascii_case("SHA-256") {
        return None;
    }
    let (realm, nonce) = (p.get("realm")?, p.get("nonce")?);
    let qop_auth = p
        .get("qop")
        .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
    let cnonce = new_token();
    let nc = "00000001";
    let response = digest_response(
        creds,
        realm,
        method,
        uri,
        nonce,
        qop_auth.then_some((nc, cnonce.as_str())),
    );
    let mut value = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm=SHA-256",
        quote_display(&creds.user),
        quote_display(realm),
        quote_display(nonce),
        quote_display(uri),
    );
    if qop_auth {
        value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = p.get("opaque") {
        value.push_str(&format!(", opaque={}", quote_display(opaque)));
    }
    Some(value)
}

/// Whether `value` (an Authorization or Proxy-Authorization header) proves `creds` for
/// `method uri` against our challenge (`realm`, `nonce`, qop=auth, SHA-256).
fn authorization_valid(
    value: &str,
    creds: &Credentials,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
) -> bool {
    let Some(p) = digest_params(value) else {
        return false;
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let qop = match (get("qop"), get("nc"), get("cnonce")) {
        (Some(q), Some(nc), Some(cnonce)) if q.eq_ignore_ascii_case("auth") => Some((nc, cnonce)),
        _ => return false, // we challenge with qop=auth, so it is required
    };
    get("username") == Some(creds.user.as_str())
        && get("realm") == Some(realm)
        && get("nonce") == Some(nonce)
        && get("uri") == Some(uri)
        && get("algorithm").is_some_and(|a| a.eq_ignore_ascii_case("SHA-256"))
        && get("response") == Some(digest_response(creds, realm, method, uri, nonce, qop).as_str())
}

/// The status line of a `message/sipfrag` body (RFC 3420), e.g. `SIP/2.0 200 OK`, and its code.
fn sipfrag_status(body: &str) -> Option<(String, u16)> {
    let line = body.lines().next()?.trim();
    let code = line
        .strip_prefix("SIP/2.0 ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((line.to_string(), code))
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
    let rate = codec.rtp_clock_rate();
    // RFC 7587 §7: Opus is always described as two channels at 48000, whatever it carries;
    // we ask for and send in-band FEC.
    let channels = if codec == Codec::Opus { "/2" } else { "" };
    let mut sdp = format!(
        "v=0\r\no=- {session} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt}{te_fmt}\r\na=rtpmap:{pt} {name}/{rate}{channels}\r\n",
        port = addr.port(),
        name = codec.name(),
    );
    if codec == Codec::Opus {
        sdp.push_str(&format!("a=fmtp:{pt} useinbandfec=1\r\n"));
    }
    if let Some(te) = te_pt {
        // Events share the audio's RTP clock (RFC 4733 §2.1): 48000 next to Opus.
        sdp.push_str(&format!(
            "a=rtpmap:{te} telephone-event/{rate}\r\na=fmtp:{te} 0-15\r\n"
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

/// The dialog state a UA needs for its in-dialog requests: RFC 3261 §12.1.2 for the phone (UAC:
/// route set = Record-Route of the 2xx reversed), §12.1.1 for the PBX (UAS: Record-Route of the
/// INVITE as is, remote target = its Contact, local URI = its To with our tag).
struct UaDialog {
    remote_target: String,
    route_set: Vec<String>,
    from: String,
    to: String,
    call_id: String,
}

impl UaDialog {
    /// The dialog a UAS gets by answering `invite` with To tag `tag` (RFC 3261 §12.1.1).
    fn of_uas(invite: &SipMsg, tag: &str) -> UaDialog {
        let to = invite.header("to").unwrap_or_default();
        UaDialog {
            remote_target: invite
                .header("contact")
                .map(|c| uri_of(c).to_string())
                .unwrap_or_default(),
            route_set: invite.list("record-route"),
            from: format!("{to};tag={tag}"),
            to: invite.header("from").unwrap_or_default().to_string(),
            call_id: invite.call_id().unwrap_or_default().to_string(),
        }
    }

    /// The other side's tag.
    fn remote_tag(&self) -> Option<String> {
        header_param(&self.to, "tag")
    }

    /// Where our requests go without an outbound proxy: the first route (loose routing,
    /// RFC 3261 §12.2.1.1, §8.1.2), else the remote target; `None` when neither names an IP.
    fn next_hop(&self) -> Option<SocketAddr> {
        match self.route_set.first() {
            Some(route) => uri_addr(uri_of(route)),
            None => uri_addr(&self.remote_target),
        }
    }

    /// An in-dialog request with a fresh branch.
    fn request(&self, method: &str, cseq: u32, local: SocketAddr) -> Vec<u8> {
        self.request_with(method, cseq, local, &InDialog::default())
    }

    /// An in-dialog request with the given branch (else a fresh one), Contact, further headers
    /// and body.
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
        for (name, value) in extra.headers {
            b.header(name, value);
        }
        match (extra.sdp, extra.body) {
            (Some(sdp), _) => b.finish(Some(("application/sdp", sdp))),
            (None, Some(body)) => b.finish(Some(body)),
            (None, None) => b.finish(None),
        }
    }
}

/// Optional parts of an in-dialog request.
#[derive(Default)]
struct InDialog<'a> {
    /// Reuse this Via branch (the ACK of a non-2xx final, RFC 3261 §17.1.1.3).
    branch: Option<&'a str>,
    contact: Option<&'a str>,
    sdp: Option<&'a str>,
    /// Another body: (content type, body).
    body: Option<(&'a str, &'a str)>,
    /// Further headers.
    headers: &'a [(String, String)],
}

/// One of our in-dialog requests in progress: an INVITE (RFC 3261 §17.1.1: Timer A doubling
/// until a provisional, Timer B) or non-INVITE (§17.1.2: Timer E capped at T2, T2 once a
/// provisional came, Timer F) client transaction, with what it is for.
struct OutTxn<P> {
    method: &'static str,
    bytes: Vec<u8>,
    branch: String,
    cseq: u32,
    /// Where it (and its retransmissions) go.
    to: SocketAddr,
    /// What it is for.
    purpose: P,
    /// Next retransmission; `None` once an INVITE got a provisional response.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B / F.
    deadline: Instant,
}

/// What an [`OutTxn`]'s timer asks for.
enum TxnTimer {
    /// Nothing due yet.
    Idle,
    /// Send the request again.
    Resend,
    /// No final response in 64·T1: the transaction failed.
    TimedOut,
}

impl<P> OutTxn<P> {
    /// Sends `bytes` (a request whose top Via has `branch`) to `to` and starts its timers.
    async fn start(
        socket: &UdpSocket,
        method: &'static str,
        bytes: Vec<u8>,
        branch: String,
        cseq: u32,
        to: SocketAddr,
        purpose: P,
    ) -> OutTxn<P> {
        send(socket, &bytes, to).await;
        let now = Instant::now();
        OutTxn {
            method,
            bytes,
            branch,
            cseq,
            to,
            purpose,
            retransmit_at: Some(now + T1),
            interval: T1,
            deadline: now + TIMER_64T1,
        }
    }

    fn wake(&self) -> Instant {
        self.retransmit_at
            .map_or(self.deadline, |at| at.min(self.deadline))
    }

    /// Whether `msg` is a response to this transaction.
    fn answered_by(&self, msg: &SipMsg) -> bool {
        msg.answers(self.method, &self.branch)
    }

    /// A provisional response arrived.
    fn provisional(&mut self, now: Instant) {
        if self.method == "INVITE" {
            self.retransmit_at = None;
        } else {
            self.interval = T2;
            self.retransmit_at = Some(now + T2);
        }
    }

    fn tick(&mut self, now: Instant) -> TxnTimer {
        if now >= self.deadline {
            return TxnTimer::TimedOut;
        }
        match self.retransmit_at {
            Some(at) if now >= at => {
                self.interval = if self.method == "INVITE" {
                    self.interval * 2
                } else {
                    (self.interval * 2).min(T2)
                };
                self.retransmit_at = Some(now + self.interval);
                TxnTimer::Resend
            }
            _ => TxnTimer::Idle,
        }
    }
}

/// Our 2xx to a re-INVITE of the other side, retransmitted until its ACK (RFC 3261 §13.3.1.4).
struct Pending2xx {
    cseq: u32,
    bytes: Vec<u8>,
    to: SocketAddr,
    acked: bool,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl Pending2xx {
    fn new(cseq: u32, bytes: Vec<u8>, to: SocketAddr) -> Pending2xx {
        let now = Instant::now();
        Pending2xx {
            cseq,
            bytes,
            to,
            acked: false,
            next: now + T1,
            interval: T1,
            give_up: now + TIMER_64T1,
        }
    }

    /// When it is due again, unless ACKed.
    fn wake(&self) -> Option<Instant> {
        (!self.acked).then_some(self.next)
    }

    /// Sends it again if due; gives up after 64·T1.
    async fn tick(&mut self, socket: &UdpSocket, now: Instant) {
        if self.acked || now < self.next {
            return;
        }
        if now >= self.give_up {
            tracing::debug!(cseq = self.cseq, "no ACK for our 2xx to a re-INVITE");
            self.acked = true;
            return;
        }
        send(socket, &self.bytes, self.to).await;
        self.interval = (self.interval * 2).min(T2);
        self.next = now + self.interval;
    }
}

/// A mid-call change the phone makes with an in-dialog request.
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
    /// Refresh the session (RFC 4028).
    Refresh(Refresh),
    /// REFER the other side (`CallSpec::refer`).
    Refer,
}

/// The ACK for a retransmitted 2xx to one of our INVITEs (initial or re-INVITE) in `dialog`, by
/// CSeq; `None` for a 2xx of another dialog (another fork's, RFC 3261 §13.2.2.4).
fn ack_for<'a>(msg: &SipMsg, dialog: &UaDialog, acks: &'a [(u32, Vec<u8>)]) -> Option<&'a [u8]> {
    let (num, _) = msg.cseq()?;
    let tag = msg.header("to").and_then(|t| header_param(t, "tag"));
    if tag != dialog.remote_tag() {
        return None;
    }
    acks.iter()
        .find(|(n, _)| *n == num)
        .map(|(_, bytes)| bytes.as_slice())
}

/// The dialogs that 2xx responses of other forks made (RFC 3261 §13.2.2.4): each is confirmed
/// with an ACK and ended at once with a BYE, and never carries media.
#[derive(Default)]
struct OtherForks {
    /// To tag and ACK of each, to ACK its 2xx again when it is retransmitted.
    acks: Vec<(String, Vec<u8>)>,
    /// The BYEs still waiting for their final response.
    byes: Vec<OutTxn<()>>,
}

impl OtherForks {
    /// Handles a 2xx to our initial INVITE (CSeq `invite_cseq`) that is not in the call's
    /// dialog; returns the To tag of a dialog seen for the first time.
    async fn on_2xx(
        &mut self,
        socket: &UdpSocket,
        ok: &SipMsg,
        call: &UaDialog,
        invite_cseq: u32,
        local: SocketAddr,
        proxy: SocketAddr,
    ) -> Option<String> {
        let to = ok.header("to")?;
        let tag = header_param(to, "tag")?;
        if ok.cseq().map(|(n, _)| n) != Some(invite_cseq) {
            return None;
        }
        if let Some((_, ack)) = self.acks.iter().find(|(t, _)| *t == tag) {
            send(socket, ack, proxy).await;
            return None;
        }
        let dialog = UaDialog {
            remote_target: ok
                .header("contact")
                .map(|c| uri_of(c).to_string())
                .unwrap_or_else(|| call.remote_target.clone()),
            route_set: ok.list("record-route").into_iter().rev().collect(),
            from: call.from.clone(),
            to: to.to_string(),
            call_id: call.call_id.clone(),
        };
        let ack = dialog.request("ACK", invite_cseq, local);
        send(socket, &ack, proxy).await;
        self.acks.push((tag.clone(), ack));
        let branch = new_branch();
        let bye = dialog.request_with(
            "BYE",
            invite_cseq + 1,
            local,
            &InDialog {
                branch: Some(&branch),
                ..InDialog::default()
            },
        );
        self.byes
            .push(OutTxn::start(socket, "BYE", bye, branch, invite_cseq + 1, proxy, ()).await);
        Some(tag)
    }

    /// Takes a final response to one of our BYEs; whether it was one.
    fn on_response(&mut self, msg: &SipMsg) -> bool {
        let Some(i) = self.byes.iter().position(|t| t.answered_by(msg)) else {
            return false;
        };
        if msg.code().is_some_and(|c| c >= 200) {
            self.byes.remove(i);
        }
        true
    }

    fn wake(&self) -> Option<Instant> {
        self.byes.iter().map(OutTxn::wake).min()
    }

    /// Retransmits the BYEs that are due; gives up on those past Timer F.
    async fn tick(&mut self, socket: &UdpSocket, now: Instant) {
        let mut i = 0;
        while i < self.byes.len() {
            match self.byes[i].tick(now) {
                TxnTimer::Idle => i += 1,
                TxnTimer::Resend => {
                    send(socket, &self.byes[i].bytes, self.byes[i].to).await;
                    i += 1;
                }
                TxnTimer::TimedOut => {
                    self.byes.remove(i);
                }
            }
        }
    }
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
    /// With `spec.credentials` a 401/407 is answered once with a new INVITE carrying them. The
    /// early dialogs (To tags of provisional responses) are reported; the call takes place in the
    /// dialog of the 2xx.
    ///
    /// During the talk time the phone makes the changes the spec asks for (hold, codec change,
    /// port move, session refreshes, REFER), one in-dialog client transaction at a time, each
    /// with the next CSeq; the BYE then takes the next one. It answers re-INVITEs and UPDATEs
    /// of the other side (following a new media address or codec, holding when told to; 491 if
    /// its own re-INVITE is pending, RFC 3261 §14.2), NOTIFYs about its REFER (200), and a
    /// REFER of the other side as `spec.on_refer` says.
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
        let contact = format!("<sip:{}@{}>", spec.from_user, host_port(self.local));
        // RFC 4028 §7.1: we offer the extension and ask to be the refresher.
        let timer_request = |secs: u32| -> Vec<(String, String)> {
            vec![
                ("Supported".into(), "timer".into()),
                ("Session-Expires".into(), format!("{secs};refresher=uac")),
            ]
        };
        let invite_timer = spec
            .session_timer
            .map(|t| timer_request(t.expires))
            .unwrap_or_default();

        let build_invite = |via: &str, cseq: u32, auth: Option<&(String, String)>| {
            let mut b = MsgBuilder::new(&format!("INVITE {ruri} SIP/2.0"));
            b.header("Via", via)
                .header("Max-Forwards", "70")
                .header("From", &from)
                .header("To", &to)
                .header("Call-ID", &call_id)
                .header("CSeq", &format!("{cseq} INVITE"))
                .header("Contact", &contact)
                .header("Allow", ALLOW)
                .header("User-Agent", PRODUCT);
            for (name, value) in &invite_timer {
                b.header(name, value);
            }
            if let Some((name, value)) = auth {
                b.header(name, value);
            }
            for (name, value) in &spec.extra_headers {
                b.header(name, value);
            }
            b.finish(Some(("application/sdp", &offer)))
        };

        // Requests that differ from the INVITE only in method and To (CANCEL, §9.1; ACK for a
        // non-2xx final, §17.1.1.3) reuse its Via and CSeq number, so they match its transaction.
        let same_txn = |method: &str, to: &str, via: &str, cseq: u32| {
            let mut b = MsgBuilder::new(&format!("{method} {ruri} SIP/2.0"));
            b.header("Via", via)
                .header("Max-Forwards", "70")
                .header("From", &from)
                .header("To", to)
                .header("Call-ID", &call_id)
                .header("CSeq", &format!("{cseq} {method}"))
                .header("User-Agent", PRODUCT);
            b.finish(None)
        };

        let invite_sent_at = SystemTime::now();
        let mut report = CallReport::new(call_id.clone(), invite_sent_at);
        let mut invite_cseq = 1u32;
        // Credentials for the INVITE (header name, value), once challenged.
        let mut auth: Option<(String, String)> = None;
        // The ACK of the challenge, re-sent if the challenge is (our ACK was lost, §17.1.1.2).
        let mut challenge_ack: Option<(String, Vec<u8>)> = None;
        let mut cancel: Option<Vec<u8>> = None;

        // --- INVITE client transaction(s) (RFC 3261 §17.1.1), again after a challenge ---
        let (result, via) = loop {
            let branch = new_branch();
            let via = format!(
                "SIP/2.0/UDP {};branch={branch};rport",
                host_port(self.local)
            );
            let invite = build_invite(&via, invite_cseq, auth.as_ref());
            send(&self.socket, &invite, proxy).await;
            let start = Instant::now();
            let mut timer_a = T1;
            let mut retransmit_at = Some(start + T1);
            let mut deadline = start + TIMER_64T1;
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
                                // Each To tag of a provisional is an early dialog (§13.2.2.4);
                                // a forking proxy or PBX makes several.
                                if let Some(tag) = msg.header("to").and_then(|t| header_param(t, "tag")) {
                                    if !report.early_tags.contains(&tag) {
                                        report.early_tags.push(tag);
                                    }
                                }
                                // A provisional extends the wait (Timer C style) but a CANCEL
                                // keeps its own 64·T1 bound (§9.1).
                                if cancel.is_none() {
                                    deadline = Instant::now() + MAX_RING;
                                }
                                if code == 180 && spec.cancel_after_ringing && cancel.is_none() {
                                    let bytes = same_txn("CANCEL", &to, &via, invite_cseq);
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
                        } else if let Some((old, ack)) = &challenge_ack {
                            // The challenge again: our ACK of it was lost.
                            if msg.answers("INVITE", old) && msg.code().is_some_and(|c| c >= 300) {
                                send(&self.socket, ack, proxy).await;
                            }
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
            // A digest challenge is answered once, with a new INVITE (RFC 3261 §22.2).
            let InviteResult::Final(code @ (401 | 407), challenge) = &result else {
                break (result, via);
            };
            let header = if *code == 401 {
                "www-authenticate"
            } else {
                "proxy-authenticate"
            };
            let credentials = spec
                .credentials
                .as_ref()
                .filter(|_| auth.is_none() && cancel.is_none())
                .and_then(|creds| {
                    challenge
                        .header_values(header)
                        .find_map(|c| authorization(c, creds, "INVITE", &ruri))
                });
            let Some(value) = credentials else {
                break (result, via);
            };
            let to_with_tag = challenge.header("to").unwrap_or(&to).to_string();
            let ack = same_txn("ACK", &to_with_tag, &via, invite_cseq);
            send(&self.socket, &ack, proxy).await;
            challenge_ack = Some((branch, ack));
            let name = if *code == 401 {
                "Authorization"
            } else {
                "Proxy-Authorization"
            };
            auth = Some((name.to_string(), value));
            report.auth_challenge = Some(*code);
            invite_cseq += 1;
        };
        report.early_rtp_received = early_rtp_received;

        let ok = match result {
            InviteResult::Final(code, msg) => {
                let to_with_tag = msg.header("to").unwrap_or(&to).to_string();
                let ack = same_txn("ACK", &to_with_tag, &via, invite_cseq);
                send(&self.socket, &ack, proxy).await;
                guard.invite_ack = Some((ack, proxy));
                report.outcome = if cancel.is_some() && code == 487 {
                    Outcome::Cancelled
                } else {
                    Outcome::Rejected(code)
                };
                report.to_tag = header_param(&to_with_tag, "tag");
                return Ok(report);
            }
            InviteResult::Answered(msg) => msg,
        };

        // --- Dialog established (RFC 3261 §12.1.2, §13.2.2.4) ---
        let answered_at = SystemTime::now();
        report.answered_at = Some(answered_at);
        let to_with_tag = ok.header("to").unwrap_or_default().to_string();
        report.to_tag = header_param(&to_with_tag, "tag");
        if report.to_tag.is_none() {
            return Err(UaError::BadResponse("2xx to INVITE without To tag".into()));
        }
        let dialog = UaDialog {
            remote_target: ok
                .header("contact")
                .map(|c| uri_of(c).to_string())
                .unwrap_or_else(|| ruri.clone()),
            route_set: ok.list("record-route").into_iter().rev().collect(),
            from: from.clone(),
            to: to_with_tag,
            call_id: call_id.clone(),
        };
        let ack = dialog.request("ACK", invite_cseq, self.local);
        send(&self.socket, &ack, proxy).await;
        guard.invite_ack = Some((ack.clone(), proxy));
        // RFC 4028 §7.2: the 2xx says whether there is a session timer and who refreshes.
        if spec.session_timer.is_some() {
            if let Some((secs, refresher)) = session_expires_of(&ok) {
                report.session_expires = Some(secs);
                report.refresher_is_us = refresher == Some(Refresher::Uac);
            }
        }

        let media = parse_sdp(&ok.body)
            .filter(|m| m.addr.port() != 0)
            .and_then(|m| m.first_codec().map(|codec| (m.addr, codec)));
        let mut remote_hung_up = false;
        let mut stats = None;
        // CSeq of our last request in the dialog, and the ACK of each 2xx we got by CSeq (a
        // retransmitted 2xx is ACKed again, RFC 3261 §13.2.2.4).
        let mut cseq = invite_cseq;
        let mut acks: Vec<(u32, Vec<u8>)> = vec![(invite_cseq, ack)];
        let mut forks = OtherForks::default();
        // A 2xx that crossed our CANCEL: the call exists, so it is ended at once (§9.1).
        if let (Some((mut remote_rtp, (pt, codec))), None) = (media, cancel.as_ref()) {
            let cfg = PlayConfig {
                codec,
                payload_type: Some(pt),
                tone_hz: spec.tone_hz,
                duration: spec.talk,
                drop_every: spec.drop_every,
                ssrc: rtp_peer::random_u64() as u32,
                pause: Pause::default(),
                steer: Steer::default(),
            };
            let talk_start = Instant::now();
            // Mid-call changes still to make, each when it is due and no other request of ours
            // is in progress (the resume is scheduled when the hold is answered, each refresh
            // when the previous one is).
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
            if let Some((at, _)) = &spec.refer {
                steps.push((talk_start + *at, Step::Refer));
            }
            let refresh = spec
                .session_timer
                .and_then(|t| t.refresh)
                .filter(|_| report.refresher_is_us);
            if let Some(secs) = report.session_expires {
                schedule_refresh(&mut steps, refresh, secs);
            }
            // What our SDP says now, and its `o=` version (bumped only when it changes,
            // RFC 3264 §8, so a refreshing re-INVITE repeats it unchanged).
            let mut cur_codec = spec.codec;
            let mut cur_addr = rtp_addr;
            let mut sdp_version = 0u64;
            let mut last_desc = (MediaDir::SendRecv, rtp_addr, spec.codec);
            // Our own hold, and the other side's SDP telling us not to send.
            let mut held = false;
            let mut remote_holds = false;
            let mut pending: Option<OutTxn<(Step, Option<UdpSocket>)>> = None;
            // Our 2xx to the other side's latest re-INVITE, until its ACK.
            let mut answered_2xx: Option<Pending2xx> = None;
            let mut remote_cseq: Option<u32> = None;
            // Our NOTIFYs about a REFER we accepted; each with the REFER's CSeq and the final
            // status still to NOTIFY once it is answered.
            let mut notify_out: Vec<OutTxn<Option<(u32, u16)>>> = Vec::new();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let mut stop_tx = Some(stop_tx);
            let play = rtp.play(remote_rtp, &cfg, async {
                let _ = stop_rx.await;
            });
            tokio::pin!(play);
            stats = Some(loop {
                let moving = pending.as_ref().is_some_and(|p| p.purpose.0 == Step::Move);
                if held || remote_holds || moving {
                    cfg.pause.pause();
                } else {
                    cfg.pause.resume();
                }
                let mut wake = match &pending {
                    Some(p) => Some(p.wake()),
                    None => steps.iter().map(|(at, _)| *at).min(),
                };
                for at in answered_2xx
                    .as_ref()
                    .and_then(Pending2xx::wake)
                    .into_iter()
                    .chain(forks.wake())
                    .chain(notify_out.iter().map(OutTxn::wake))
                {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                tokio::select! {
                    s = &mut play => break s,
                    () = tokio::time::sleep_until(wake.unwrap_or(talk_start)), if wake.is_some() => {
                        let now = Instant::now();
                        if let Some(p) = answered_2xx.as_mut() {
                            p.tick(&self.socket, now).await;
                        }
                        forks.tick(&self.socket, now).await;
                        let mut i = 0;
                        while i < notify_out.len() {
                            match notify_out[i].tick(now) {
                                TxnTimer::Idle => i += 1,
                                TxnTimer::Resend => {
                                    send(&self.socket, &notify_out[i].bytes, proxy).await;
                                    i += 1;
                                }
                                TxnTimer::TimedOut => {
                                    notify_out.remove(i);
                                    report.notify_results.push(408);
                                }
                            }
                        }
                        if let Some(p) = pending.as_mut() {
                            match p.tick(now) {
                                TxnTimer::Idle => {}
                                TxnTimer::Resend => send(&self.socket, &p.bytes, p.to).await,
                                TxnTimer::TimedOut => {
                                    // Timer B/F: the change failed; talk on as before it (unheld).
                                    tracing::debug!(%call_id, cseq = p.cseq, method = p.method, "request timed out");
                                    if p.method == "INVITE" {
                                        held = false;
                                    }
                                    pending = None;
                                }
                            }
                            continue;
                        }
                        let Some(due) = steps.iter().position(|(at, _)| *at <= now) else { continue };
                        let (_, step) = steps.remove(due);
                        cseq += 1;
                        let sent_at = Some(SystemTime::now());
                        // A re-INVITE: (codec, address) offered and the socket a move goes to.
                        let mut invite: Option<(Codec, SocketAddr, Option<UdpSocket>)> = None;
                        let mut headers: Vec<(String, String)> = Vec::new();
                        let timer_headers = match report.session_expires {
                            Some(secs) if report.refresher_is_us => timer_request(secs),
                            _ => Vec::new(),
                        };
                        let method = match step {
                            Step::Resume => {
                                report.resume_sent_at = sent_at;
                                invite = Some((cur_codec, cur_addr, None));
                                "INVITE"
                            }
                            Step::Hold => {
                                // On hold we send nothing; the RTP clock runs on.
                                held = true;
                                report.hold_sent_at = sent_at;
                                invite = Some((cur_codec, cur_addr, None));
                                "INVITE"
                            }
                            Step::Codec(c) => {
                                report.codec_sent_at = sent_at;
                                invite = Some((c, cur_addr, None));
                                "INVITE"
                            }
                            Step::Move => {
                                let socket = UdpSocket::bind(SocketAddr::new(self.local.ip(), 0)).await?;
                                let addr = SocketAddr::new(local_host, socket.local_addr()?.port());
                                report.move_sent_at = sent_at;
                                invite = Some((cur_codec, addr, Some(socket)));
                                "INVITE"
                            }
                            Step::Refresh(how) => {
                                report.refreshes_sent_at.extend(sent_at);
                                if how == Refresh::ReInvite {
                                    invite = Some((cur_codec, cur_addr, None));
                                    "INVITE"
                                } else {
                                    // RFC 4028 §7.4 / RFC 3311: an UPDATE without a body.
                                    headers = timer_headers.clone();
                                    "UPDATE"
                                }
                            }
                            Step::Refer => {
                                report.refer_sent_at = sent_at;
                                let target = spec.refer.as_ref().map_or("", |(_, t)| t.as_str());
                                headers = vec![
                                    ("Refer-To".into(), format!("<sip:{target}@{}>", host_port(proxy))),
                                    ("Referred-By".into(), format!("<{from_uri}>")),
                                ];
                                "REFER"
                            }
                        };
                        let branch = new_branch();
                        let mut new_socket = None;
                        let bytes = if let Some((codec, addr, socket)) = invite {
                            new_socket = socket;
                            headers = timer_headers;
                            let direction = if held && step != Step::Resume {
                                MediaDir::SendOnly
                            } else {
                                MediaDir::SendRecv
                            };
                            let desc = (direction, addr, codec);
                            if desc != last_desc {
                                sdp_version += 1;
                                last_desc = desc;
                            }
                            let sdp = sdp_for(sdp_version, direction, addr, codec);
                            dialog.request_with("INVITE", cseq, self.local, &InDialog {
                                branch: Some(&branch),
                                contact: Some(&contact),
                                sdp: Some(&sdp),
                                headers: &headers,
                                ..InDialog::default()
                            })
                        } else {
                            dialog.request_with(method, cseq, self.local, &InDialog {
                                branch: Some(&branch),
                                contact: Some(&contact),
                                headers: &headers,
                                ..InDialog::default()
                            })
                        };
                        pending = Some(
                            OutTxn::start(&self.socket, method, bytes, branch, cseq, proxy, (step, new_socket)).await,
                        );
                    }
                    m = rx.recv() => {
                        let Some((msg, from_addr)) = m else { return Err(UaError::Closed) };
                        if let Some(code) = msg.code() {
                            if let Some(i) = notify_out.iter().position(|t| t.answered_by(&msg)) {
                                if code < 200 {
                                    notify_out[i].provisional(Instant::now());
                                    continue;
                                }
                                let done = notify_out.remove(i);
                                report.notify_results.push(code);
                                if let Some((refer_cseq, result)) = done.purpose {
                                    // The referral's outcome, ending the subscription.
                                    cseq += 1;
                                    let branch = new_branch();
                                    let sipfrag = format!("SIP/2.0 {result} {}", reason_phrase(result));
                                    let bytes = dialog.refer_notify(cseq, self.local, &branch, &contact, &ReferNotify {
                                        refer_cseq,
                                        state: "terminated;reason=noresource",
                                        sipfrag: &sipfrag,
                                    });
                                    notify_out.push(OutTxn::start(&self.socket, "NOTIFY", bytes, branch, cseq, proxy, None).await);
                                }
                                continue;
                            }
                            if !pending.as_ref().is_some_and(|p| p.answered_by(&msg)) {
                                if forks.on_response(&msg) {
                                    continue;
                                }
                                if msg.is_invite_2xx() {
                                    if let Some(ack) = ack_for(&msg, &dialog, &acks) {
                                        send(&self.socket, ack, proxy).await;
                                    } else if let Some(tag) = forks
                                        .on_2xx(&self.socket, &msg, &dialog, invite_cseq, self.local, proxy)
                                        .await
                                    {
                                        report.other_dialogs.push(tag);
                                    }
                                }
                                continue;
                            }
                            if code < 200 {
                                if let Some(p) = pending.as_mut() {
                                    p.provisional(Instant::now());
                                }
                                continue;
                            }
                            let Some(done) = pending.take() else { continue };
                            let (step, new_socket) = done.purpose;
                            let ok = code < 300;
                            if done.method == "INVITE" {
                                if ok {
                                    let ack = dialog.request("ACK", done.cseq, self.local);
                                    send(&self.socket, &ack, proxy).await;
                                    acks.push((done.cseq, ack));
                                } else {
                                    // Non-2xx final: ACK on the same branch (§17.1.1.3); the
                                    // session stays as it was before, so we talk on unheld.
                                    let ack = dialog.request_with("ACK", done.cseq, self.local, &InDialog {
                                        branch: Some(&done.branch),
                                        ..InDialog::default()
                                    });
                                    send(&self.socket, &ack, proxy).await;
                                    tracing::debug!(%call_id, code, "re-INVITE refused");
                                    held = false;
                                }
                            }
                            match step {
                                Step::Refer => report.refer_status = Some(code),
                                Step::Refresh(_) => report.refresh_results.push(code),
                                _ => {}
                            }
                            if !ok {
                                tracing::debug!(%call_id, code, method = done.method, "request refused");
                                continue;
                            }
                            match step {
                                Step::Resume => held = false,
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
                                    report.switched_to = Some(chosen);
                                }
                                Step::Move => {
                                    if let Some(socket) = new_socket {
                                        if let Ok(local) = socket.local_addr() {
                                            cur_addr = SocketAddr::new(local_host, local.port());
                                            report.moved_to = Some(local);
                                        }
                                        cfg.steer.move_to(socket);
                                    }
                                }
                                Step::Refresh(_) | Step::Refer => {}
                            }
                            // Any 2xx carrying Session-Expires refreshed the session (RFC 4028 §10).
                            if done.method != "REFER" && report.refresher_is_us {
                                if let Some((secs, Some(Refresher::Uac))) = session_expires_of(&msg) {
                                    report.session_expires = Some(secs);
                                    schedule_refresh(&mut steps, refresh, secs);
                                }
                            }
                            continue;
                        }
                        // A request of the other side.
                        let method = msg.method().unwrap_or_default().to_string();
                        let req_cseq = msg.cseq().map_or(0, |(n, _)| n);
                        let target = response_target(&msg, from_addr);
                        let reply = |code: u16, sdp: Option<&str>, headers: &[(String, String)]| {
                            response(&msg, from_addr, code, &ResponseParts {
                                contact: (code < 300).then_some(contact.as_str()),
                                sdp,
                                headers,
                                ..ResponseParts::default()
                            })
                        };
                        match method.as_str() {
                            "ACK" => {
                                if let Some(p) = answered_2xx.as_mut().filter(|p| p.cseq == req_cseq) {
                                    p.acked = true;
                                }
                            }
                            "BYE" => {
                                remote_hung_up = true;
                                answer_in_dialog(&self.socket, &msg, from_addr).await;
                                if let Some(t) = stop_tx.take() {
                                    let _ = t.send(());
                                }
                            }
                            "INVITE" | "UPDATE" => {
                                if method == "INVITE" {
                                    if let Some(p) = answered_2xx.as_ref().filter(|p| p.cseq == req_cseq) {
                                        // A retransmission of the re-INVITE we answered.
                                        send(&self.socket, &p.bytes, p.to).await;
                                        continue;
                                    }
                                }
                                if remote_cseq.is_some_and(|r| req_cseq < r) {
                                    // Out of order (RFC 3261 §12.2.2).
                                    send(&self.socket, &reply(500, None, &[]), target).await;
                                    continue;
                                }
                                let has_offer = !msg.body.trim().is_empty();
                                let glare = pending.as_ref().is_some_and(|p| p.method == "INVITE");
                                if glare && (method == "INVITE" || has_offer) {
                                    // Our own offer is pending (RFC 3261 §14.2, RFC 3311 §5.2).
                                    send(&self.socket, &reply(491, None, &[]), target).await;
                                    continue;
                                }
                                remote_cseq = Some(req_cseq);
                                let mut sdp = None;
                                if has_offer {
                                    let Some(offer) = parse_sdp(&msg.body).filter(|m| m.addr.port() != 0) else {
                                        send(&self.socket, &reply(488, None, &[]), target).await;
                                        continue;
                                    };
                                    if offer.addr != remote_rtp && !offer.addr.ip().is_unspecified() {
                                        // The other side moved its media (RFC 3264 §8.3.1).
                                        remote_rtp = offer.addr;
                                        cfg.steer.send_to(remote_rtp);
                                    }
                                    if let Some((_, c)) = offer.first_codec().filter(|&(_, c)| c != cur_codec) {
                                        cfg.steer.set_codec(c);
                                        cur_codec = c;
                                    }
                                    let mut direction = offer.direction.complement();
                                    remote_holds = !direction.sends() || offer.addr.ip().is_unspecified();
                                    if held {
                                        direction = match direction {
                                            MediaDir::SendRecv => MediaDir::SendOnly,
                                            MediaDir::RecvOnly => MediaDir::Inactive,
                                            other => other,
                                        };
                                    }
                                    let desc = (direction, cur_addr, cur_codec);
                                    if desc != last_desc {
                                        sdp_version += 1;
                                        last_desc = desc;
                                    }
                                    sdp = Some(sdp_for(sdp_version, direction, cur_addr, cur_codec));
                                } else if method == "INVITE" {
                                    // An offerless re-INVITE wants our offer in the 2xx; not done here.
                                    send(&self.socket, &reply(488, None, &[]), target).await;
                                    continue;
                                }
                                let bytes = reply(200, sdp.as_deref(), &timer_answer_headers(&msg));
                                send(&self.socket, &bytes, target).await;
                                if method == "INVITE" {
                                    answered_2xx = Some(Pending2xx::new(req_cseq, bytes, target));
                                }
                                report.remote_updates_at.push(SystemTime::now());
                            }
                            "NOTIFY" => {
                                // Only our REFER made a subscription (RFC 3515 §2.4.4).
                                if report.refer_sent_at.is_none() {
                                    send(&self.socket, &reply(481, None, &[]), target).await;
                                    continue;
                                }
                                send(&self.socket, &reply(200, None, &[]), target).await;
                                if let Some((line, code)) = sipfrag_status(&msg.body) {
                                    report.notifies.push(line);
                                    // The transfer is done: the transferor hangs up (RFC 5589 §6.1).
                                    if (200..300).contains(&code) {
                                        if let Some(t) = stop_tx.take() {
                                            let _ = t.send(());
                                        }
                                    }
                                }
                            }
                            "REFER" => {
                                let refer_to = msg.header("refer-to").map(str::to_string);
                                let (Some(result), Some(refer_to)) = (spec.on_refer, refer_to.clone()) else {
                                    // RFC 3515 §2.4.1: no Refer-To is a bad request; else we decline.
                                    let code = if refer_to.is_none() { 400 } else { 603 };
                                    send(&self.socket, &reply(code, None, &[]), target).await;
                                    report.refers_received.push((refer_to.unwrap_or_default(), code));
                                    continue;
                                };
                                send(&self.socket, &reply(202, None, &[]), target).await;
                                report.refers_received.push((refer_to, 202));
                                // The first NOTIFY at once (§2.4.4), the outcome after it.
                                cseq += 1;
                                let branch = new_branch();
                                let state = format!("active;expires={REFER_SUBSCRIPTION_SECS}");
                                let bytes = dialog.refer_notify(cseq, self.local, &branch, &contact, &ReferNotify {
                                    refer_cseq: req_cseq,
                                    state: &state,
                                    sipfrag: "SIP/2.0 100 Trying",
                                });
                                notify_out.push(
                                    OutTxn::start(&self.socket, "NOTIFY", bytes, branch, cseq, proxy, Some((req_cseq, result))).await,
                                );
                            }
                            _ => answer_in_dialog(&self.socket, &msg, from_addr).await,
                        }
                    }
                }
            });
        }

        if !remote_hung_up {
            let bye = dialog.request("BYE", cseq + 1, self.local);
            let bye_branch = SipMsg::parse(&bye)
                .and_then(|m| m.top_branch())
                .unwrap_or_default();
            report.bye_sent_at = Some(SystemTime::now());
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
                            if forks.on_response(&msg) {
                                continue;
                            }
                            if msg.is_invite_2xx() {
                                if let Some(ack) = ack_for(&msg, &dialog, &acks) {
                                    send(&self.socket, ack, proxy).await;
                                } else if let Some(tag) = forks
                                    .on_2xx(&self.socket, &msg, &dialog, invite_cseq, self.local, proxy)
                                    .await
                                {
                                    report.other_dialogs.push(tag);
                                }
                            }
                        } else {
                            answer_in_dialog(&self.socket, &msg, from_addr).await;
                            if msg.method() == Some("BYE") {
                                break; // BYEs crossed: the dialog is over either way.
                            }
                        }
                    }
                    () = tokio::time::sleep_until(forks.wake().map_or(next, |w| w.min(next)).min(deadline)) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(UaError::Timeout("a response to BYE"));
                        }
                        forks.tick(&self.socket, now).await;
                        if now >= next {
                            send(&self.socket, &bye, proxy).await;
                            interval = (interval * 2).min(T2);
                            next = now + interval;
                        }
                    }
                }
            }
        }

        if cancel.is_none() && stats.is_none() {
            return Err(UaError::NoMedia(
                "no c=/m=audio with a port and a codec we can send".into(),
            ));
        }
        report.rtp = stats;
        Ok(report)
    }
}

/// (Re)schedules the phone's next session refresh at half the granted interval (RFC 4028 §10),
/// when it refreshes at all.
fn schedule_refresh(steps: &mut Vec<(Instant, Step)>, refresh: Option<Refresh>, secs: u32) {
    steps.retain(|(_, s)| !matches!(s, Step::Refresh(_)));
    if let Some(how) = refresh {
        let half = Duration::from_millis(u64::from(secs) * 500);
        steps.push((Instant::now() + half, Step::Refresh(how)));
    }
}

/// Answers a request inside a call that is not in a state to act on it (before the answer,
/// while hanging up) or that neither agent acts on specially: BYE/OPTIONS/INFO/CANCEL 200, a
/// late NOTIFY 200, re-INVITE and UPDATE 488 (no renegotiation now, RFC 3261 §14.2), REFER 603
/// (not transferred), ACK nothing, other 405.
async fn answer_in_dialog(socket: &UdpSocket, msg: &SipMsg, from: SocketAddr) {
    let code = match msg.method() {
        None | Some("ACK") => return,
        Some("BYE" | "OPTIONS" | "INFO" | "CANCEL" | "NOTIFY") => 200,
        Some("INVITE" | "UPDATE") => 488,
        Some("REFER") => 603,
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
        let ctx = UasCall::new(socket.clone(), local, msg, from);
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

/// One call at the PBX: the INVITE, where its responses go and the last one sent, and what the
/// report will say of it.
struct UasCall {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    invite: SipMsg,
    source: SocketAddr,
    target: SocketAddr,
    to_tag: String,
    last_response: Option<Vec<u8>>,
    /// Which fork we answer as (`Answer::Forked`): `;fork=<n>` in our Contact.
    fork: Option<usize>,
    /// A losing fork that answers too: (its To tag, its fork number, how long after the winner).
    late_fork: Option<(String, usize, Duration)>,
    log: UasLog,
}

/// What the PBX reports of a call besides its outcome and media (see [`UasCallReport`]).
#[derive(Default)]
struct UasLog {
    early_tags: Vec<String>,
    requests: Vec<SeenRequest>,
    answered_at: Option<SystemTime>,
    challenges: u32,
    authorized_user: Option<String>,
    session_expires: Option<u32>,
    move_sent_at: Option<SystemTime>,
    moved_to: Option<SocketAddr>,
    refer_to: Vec<String>,
    notify_results: Vec<u16>,
    late_answer_tag: Option<String>,
    late_answer_rtp_received: u64,
    refer_sent_at: Option<SystemTime>,
    refer_status: Option<u16>,
    notifies: Vec<String>,
}

/// What happened while waiting for something at the PBX.
enum Waited {
    /// The wait ended on time.
    Elapsed,
    /// The caller cancelled; 200 and 487 are sent and the ACK awaited.
    Cancelled,
}

/// Something the PBX does during a call when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PbxStep {
    /// Re-INVITE with a new RTP port (`PbxScript::move_rtp`).
    Move,
    /// The final NOTIFY of the REFER with this CSeq: the transfer is done.
    TransferDone(u32),
    /// The losing fork's late 200 OK (`Answer::Forked::late_answer`).
    LateAnswer,
    /// REFER the caller (`PbxScript::refer`).
    Refer,
}

/// A NOTIFY about a REFER (RFC 3515 §2.4.4–2.4.5): Event with the REFER's CSeq as id, the
/// subscription's state, and a `message/sipfrag` status line.
struct ReferNotify<'a> {
    refer_cseq: u32,
    state: &'a str,
    sipfrag: &'a str,
}

impl UaDialog {
    /// A NOTIFY about a REFER, as an in-dialog request of ours with `branch`.
    fn refer_notify(
        &self,
        cseq: u32,
        local: SocketAddr,
        branch: &str,
        contact: &str,
        n: &ReferNotify<'_>,
    ) -> Vec<u8> {
        let headers = [
            ("Event".to_string(), format!("refer;id={}", n.refer_cseq)),
            ("Subscription-State".to_string(), n.state.to_string()),
        ];
        let body = format!("{}\r\n", n.sipfrag);
        self.request_with(
            "NOTIFY",
            cseq,
            local,
            &InDialog {
                branch: Some(branch),
                contact: Some(contact),
                headers: &headers,
                body: Some(("message/sipfrag;version=2.0", &body)),
                ..InDialog::default()
            },
        )
    }
}

impl UasCall {
    fn new(socket: Arc<UdpSocket>, local: SocketAddr, invite: SipMsg, from: SocketAddr) -> UasCall {
        UasCall {
            socket,
            local,
            to_tag: new_token(),
            target: response_target(&invite, from),
            source: from,
            last_response: None,
            invite,
            fork: None,
            late_fork: None,
            log: UasLog::default(),
        }
    }

    /// Takes over a new INVITE of the same call (the caller's retry with credentials): a new
    /// server transaction, so a new To tag.
    fn restart(&mut self, invite: SipMsg, from: SocketAddr) {
        self.target = response_target(&invite, from);
        self.source = from;
        self.invite = invite;
        self.last_response = None;
        self.to_tag = new_token();
    }

    fn contact(&self) -> String {
        self.contact_of(self.fork)
    }

    /// Our Contact as fork `fork`.
    fn contact_of(&self, fork: Option<usize>) -> String {
        let user = user_of(self.request_uri());
        let fork = fork.map(|n| format!(";fork={n}")).unwrap_or_default();
        if user.is_empty() {
            format!("<sip:{}{fork}>", host_port(self.local))
        } else {
            format!("<sip:{user}@{}{fork}>", host_port(self.local))
        }
    }

    fn request_uri(&self) -> &str {
        match &self.invite.start {
            StartLine::Request { uri, .. } => uri,
            StartLine::Response { .. } => "",
        }
    }

    /// Notes a request received in the call for the report (retransmissions of the INVITE,
    /// which carry no To tag, left out).
    fn note(&mut self, msg: &SipMsg) {
        let Some(method) = msg.method() else { return };
        let to_tag = msg.header("to").and_then(|t| header_param(t, "tag"));
        if method == "INVITE" && to_tag.is_none() {
            return;
        }
        let uri = match &msg.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => String::new(),
        };
        self.log.requests.push(SeenRequest {
            method: method.to_string(),
            uri,
            cseq: msg.cseq().map_or(0, |(n, _)| n),
            to_tag,
            headers: msg.headers.clone(),
            at: SystemTime::now(),
        });
    }

    /// Sends a response to the INVITE and remembers it for retransmissions.
    async fn respond(&mut self, code: u16, reason: Option<&str>, sdp: Option<&str>) -> Vec<u8> {
        self.respond_with(code, reason, sdp, &[]).await
    }

    /// `respond` with further headers.
    async fn respond_with(
        &mut self,
        code: u16,
        reason: Option<&str>,
        sdp: Option<&str>,
        headers: &[(String, String)],
    ) -> Vec<u8> {
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
                headers,
            },
        );
        send(&self.socket, &bytes, self.target).await;
        if (101..200).contains(&code) && !self.log.early_tags.contains(&self.to_tag) {
            self.log.early_tags.push(self.to_tag.clone());
        }
        self.last_response = Some(bytes.clone());
        bytes
    }

    /// Answers a request other than the INVITE (CANCEL, BYE, ...) with `code`, To tag added.
    async fn answer(&self, req: &SipMsg, from: SocketAddr, code: u16) {
        self.answer_with(req, from, code, &[]).await;
    }

    /// `answer` with further headers.
    async fn answer_with(
        &self,
        req: &SipMsg,
        from: SocketAddr,
        code: u16,
        headers: &[(String, String)],
    ) {
        let bytes = response(
            req,
            from,
            code,
            &ResponseParts {
                to_tag: Some(&self.to_tag),
                headers,
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
                    self.note(&msg);
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
    async fn await_ack(&mut self, rx: &mut mpsc::Receiver<Incoming>, final_bytes: Vec<u8>) {
        let deadline = Instant::now() + TIMER_64T1;
        let mut interval = T1;
        let mut next = Instant::now() + T1;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some((msg, from)) = m else { return };
                    self.note(&msg);
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

    /// After a 401/407: retransmits it until its ACK (Timer G/H), then waits (`AUTH_WAIT`) for
    /// the caller's new INVITE of the same call (new branch, no To tag), which it returns.
    async fn await_retry(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        final_bytes: Vec<u8>,
    ) -> Option<(SipMsg, SocketAddr)> {
        let first_branch = self.invite.top_branch();
        let mut acked = false;
        let mut deadline = Instant::now() + TIMER_64T1;
        let mut interval = T1;
        let mut next = Instant::now() + T1;
        loop {
            let wake = if acked { deadline } else { next.min(deadline) };
            tokio::select! {
                m = rx.recv() => {
                    let (msg, from) = m?;
                    let untagged = msg.header("to").is_some_and(|t| header_param(t, "tag").is_none());
                    match msg.method() {
                        Some("INVITE") if msg.top_branch() == first_branch => {
                            send(&self.socket, &final_bytes, self.target).await;
                        }
                        Some("INVITE") if untagged => return Some((msg, from)),
                        Some("ACK") => {
                            self.note(&msg);
                            if !acked {
                                acked = true;
                                deadline = Instant::now() + AUTH_WAIT;
                            }
                        }
                        // The INVITE transaction is complete: a CANCEL has nothing to do (§9.2).
                        Some("CANCEL") => {
                            self.note(&msg);
                            self.answer(&msg, from, 200).await;
                        }
                        None => {}
                        Some(_) => {
                            self.note(&msg);
                            self.answer(&msg, from, 481).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::debug!(acked, "PBX got no INVITE with credentials");
                        return None;
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

    /// 180, then after `ring` (unless cancelled) `accept`.
    async fn ring_then_accept(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        ring: Duration,
        tone_hz: f64,
        script: &PbxScript,
    ) -> (Outcome, Option<RtpStats>, Option<RtpStats>) {
        self.respond(180, None, None).await;
        match self.wait_or_cancel(rx, ring).await {
            Waited::Cancelled => (Outcome::Cancelled, None, None),
            Waited::Elapsed => self.accept(rx, tone_hz, None, script).await,
        }
    }

    /// Challenges the INVITE (401 or 407, digest with SHA-256 and qop=auth, a fresh nonce), waits
    /// for it again with credentials and answers that one: `ring_then_accept` when they prove
    /// `creds` for its Request-URI, else 403.
    async fn challenge(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        code: u16,
        realm: &str,
        creds: &Credentials,
        ring: Duration,
        tone_hz: f64,
    ) -> (Outcome, Option<RtpStats>, Option<RtpStats>) {
        let (code, challenge_header, credentials_header) = if code == 401 {
            (401, "WWW-Authenticate", "authorization")
        } else {
            (407, "Proxy-Authenticate", "proxy-authorization")
        };
        let nonce = new_token();
        let value = format!(
            "Digest realm={}, nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\"",
            quote_display(realm)
        );
        let bytes = self
            .respond_with(code, None, None, &[(challenge_header.to_string(), value)])
            .await;
        self.log.challenges += 1;
        let Some((retry, from)) = self.await_retry(rx, bytes).await else {
            return (Outcome::Rejected(code), None, None);
        };
        self.restart(retry, from);
        self.respond(100, None, None).await;
        let uri = self.request_uri().to_string();
        let valid = self
            .invite
            .header(credentials_header)
            .is_some_and(|v| authorization_valid(v, creds, realm, &nonce, "INVITE", &uri));
        if !valid {
            return (self.reject(rx, 403, None).await, None, None);
        }
        self.log.authorized_user = Some(creds.user.clone());
        self.ring_then_accept(rx, ring, tone_hz, &PbxScript::default())
            .await
    }

    /// Answers with 200 + SDP, plays the tone and ends on BYE (RFC 3261 §13.3.1.4: the 2xx is
    /// retransmitted until ACK, for at most 64·T1). A re-INVITE is answered 200 with the
    /// complementary direction (sendonly → recvonly, recvonly → sendonly, inactive and sendrecv
    /// stay; same port, `o=` version + 1); the tone stops while that direction, or an
    /// offered `c=0.0.0.0`, forbids sending, and resumes after (the RTP clock runs on).
    ///
    /// A re-INVITE offering another codec first is answered with that codec, and the tone goes
    /// on in it from then on; one offering another address has the tone sent there. An UPDATE
    /// is answered the same way, without ACK; one without a body just 200 (a session refresh).
    /// 2xx responses echo a session timer the caller asked for (`timer_answer_headers`).
    /// A REFER is accepted (202) and NOTIFYed as `PbxScript::transfer_delay` says. Requests
    /// in another dialog (To tag not ours) get 481 (RFC 3261 §12.2.2).
    ///
    /// With `early = Some((length, tone))` the SDP answer goes out in a 183 first and `tone`
    /// plays for `length` before the 200 OK (early media; a CANCEL ends it). `script` says what
    /// the PBX does itself during the call.
    async fn accept(
        &mut self,
        rx: &mut mpsc::Receiver<Incoming>,
        tone_hz: f64,
        early: Option<(Duration, f64)>,
        script: &PbxScript,
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
        let local_host = advertised_ip(self.local.ip());
        let mut rtp_addr = SocketAddr::new(local_host, rtp.local_addr().port());
        let sdp_session = new_sdp_session();
        let mut sdp_version = sdp_session;
        let pause = Pause::default();
        // What we answer to an offer, and whether we may send after it.
        let answer_to = |offer: &SdpAudio| {
            let direction = offer.direction.complement();
            let may_send = direction.sends() && !offer.addr.ip().is_unspecified();
            (direction, may_send)
        };
        let (mut direction, mut may_send) =
            offer.as_ref().map_or((MediaDir::SendRecv, true), answer_to);
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
                payload_type: Some(pt),
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
        let timer = timer_answer_headers(&self.invite);
        self.log.session_expires = session_expires_of(&self.invite)
            .filter(|_| !timer.is_empty())
            .map(|(secs, _)| secs);
        let ok = self.respond_with(200, None, Some(&sdp), &timer).await;
        self.log.answered_at = Some(SystemTime::now());
        let answered = Instant::now();

        // Our side of the dialog, for requests of our own (RFC 3261 §12.1.1).
        let dialog = UaDialog::of_uas(&self.invite, &self.to_tag);
        let next_hop = dialog.next_hop().unwrap_or(self.source);
        let contact = self.contact();
        let mut local_cseq = 0u32;
        let mut steps: Vec<(Instant, PbxStep)> = Vec::new();
        if let Some(at) = script.move_rtp {
            steps.push((answered + at, PbxStep::Move));
        }
        if let Some((_, _, after)) = &self.late_fork {
            steps.push((answered + *after, PbxStep::LateAnswer));
        }
        if let Some((at, _)) = &script.refer {
            steps.push((answered + *at, PbxStep::Refer));
        }
        // Our REFER in progress.
        let mut refer_out: Option<OutTxn<()>> = None;
        // The losing fork's late 200 OK until its ACK, and its media socket.
        let mut late_ok: Option<Pending2xx> = None;
        let mut late_socket: Option<UdpSocket> = None;
        // Our re-INVITE in progress (with the socket it moves to), our NOTIFYs, and the ACKs
        // of the 2xx responses to our re-INVITEs (re-sent for a retransmitted 2xx).
        let mut reinvite: Option<OutTxn<Option<UdpSocket>>> = None;
        let mut notifies: Vec<OutTxn<()>> = Vec::new();
        let mut acks: Vec<(u32, Vec<u8>)> = Vec::new();

        let cfg = PlayConfig {
            codec,
            payload_type: Some(pt),
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
            // Nothing leaves the old port while a move is under way.
            if may_send && reinvite.as_ref().is_none_or(|r| r.purpose.is_none()) {
                cfg.pause.resume();
            } else {
                cfg.pause.pause();
            }
            // A re-INVITE of ours waits until no INVITE transaction is in progress (§14.1).
            let invite_free =
                acked && reinvite.is_none() && reinvite_ok.as_ref().is_none_or(|p| p.acked);
            let refer_free = acked && refer_out.is_none();
            let eligible = move |step: &PbxStep| match step {
                PbxStep::Move => invite_free,
                PbxStep::Refer => refer_free,
                _ => true,
            };
            let mut wake: Option<Instant> = steps
                .iter()
                .filter(|(_, s)| eligible(s))
                .map(|(at, _)| *at)
                .min();
            let txn_wakes = reinvite
                .as_ref()
                .map(OutTxn::wake)
                .into_iter()
                .chain(refer_out.as_ref().map(OutTxn::wake))
                .chain(notifies.iter().map(OutTxn::wake))
                .chain(reinvite_ok.as_ref().and_then(Pending2xx::wake))
                .chain(late_ok.as_ref().and_then(Pending2xx::wake))
                .chain((!acked).then_some(next));
            for at in txn_wakes {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            tokio::select! {
                s = &mut play => break s,
                m = rx.recv() => {
                    let Some((msg, from)) = m else { break RtpStats::default() };
                    let cseq = msg.cseq().map(|(n, _)| n);
                    if let Some(code) = msg.code() {
                        // A response to a request of ours.
                        if reinvite.as_ref().is_some_and(|r| r.answered_by(&msg)) {
                            if code < 200 {
                                if let Some(r) = reinvite.as_mut() {
                                    r.provisional(Instant::now());
                                }
                                continue;
                            }
                            let Some(done) = reinvite.take() else { continue };
                            if code < 300 {
                                let ack = dialog.request("ACK", done.cseq, self.local);
                                send(&self.socket, &ack, next_hop).await;
                                acks.push((done.cseq, ack));
                                if let Some(socket) = done.purpose {
                                    if let Ok(local) = socket.local_addr() {
                                        rtp_addr = SocketAddr::new(local_host, local.port());
                                        self.log.moved_to = Some(local);
                                    }
                                    cfg.steer.move_to(socket);
                                }
                                if let Some(answer) = parse_sdp(&msg.body).filter(|m| m.addr.port() != 0) {
                                    if answer.addr != remote && !answer.addr.ip().is_unspecified() {
                                        remote = answer.addr;
                                        cfg.steer.send_to(remote);
                                    }
                                }
                            } else {
                                // Non-2xx: ACK on its branch (§17.1.1.3); media stays as it was.
                                let ack = dialog.request_with("ACK", done.cseq, self.local, &InDialog {
                                    branch: Some(&done.branch),
                                    ..InDialog::default()
                                });
                                send(&self.socket, &ack, next_hop).await;
                                tracing::debug!(code, "PBX re-INVITE refused");
                            }
                        } else if refer_out.as_ref().is_some_and(|r| r.answered_by(&msg)) {
                            if code < 200 {
                                if let Some(r) = refer_out.as_mut() {
                                    r.provisional(Instant::now());
                                }
                            } else {
                                refer_out = None;
                                self.log.refer_status = Some(code);
                            }
                        } else if let Some(i) = notifies.iter().position(|t| t.answered_by(&msg)) {
                            if code < 200 {
                                notifies[i].provisional(Instant::now());
                            } else {
                                notifies.remove(i);
                                self.log.notify_results.push(code);
                            }
                        } else if msg.is_invite_2xx() {
                            if let Some(ack) = ack_for(&msg, &dialog, &acks) {
                                send(&self.socket, ack, next_hop).await;
                            }
                        }
                        continue;
                    }
                    self.note(&msg);
                    let method = msg.method().unwrap_or_default();
                    match msg.header("to").and_then(|t| header_param(t, "tag")) {
                        Some(tag) if self.late_fork.as_ref().is_some_and(|(t, _, _)| *t == tag) && late_ok.is_some() => {
                            // The losing fork's dialog: confirmed by its ACK, ended by BYE.
                            match method {
                                "ACK" => {
                                    if let Some(p) = late_ok.as_mut() {
                                        p.acked = true;
                                    }
                                }
                                "BYE" => self.answer(&msg, from, 200).await,
                                _ => self.answer(&msg, from, 481).await,
                            }
                            continue;
                        }
                        Some(tag) if tag != self.to_tag => {
                            // Not our dialog, e.g. another fork's (§12.2.2).
                            if method != "ACK" {
                                self.answer(&msg, from, 481).await;
                            }
                            continue;
                        }
                        None if method == "INVITE" => {
                            // The INVITE again: our 2xx did not arrive yet.
                            send(&self.socket, &ok, self.target).await;
                            continue;
                        }
                        _ => {}
                    }
                    match method {
                        "ACK" => match reinvite_ok.as_mut() {
                            Some(p) if cseq == Some(p.cseq) => p.acked = true,
                            _ => acked = true,
                        },
                        "INVITE" | "UPDATE" => {
                            if let Some(p) = reinvite_ok.as_ref().filter(|p| method == "INVITE" && cseq == Some(p.cseq)) {
                                // A retransmission of the re-INVITE we answered.
                                send(&self.socket, &p.bytes, p.to).await;
                                continue;
                            }
                            let target = response_target(&msg, from);
                            let has_offer = !msg.body.trim().is_empty();
                            if reinvite.is_some() && (method == "INVITE" || has_offer) {
                                // Our own offer is pending (RFC 3261 §14.2, RFC 3311 §5.2).
                                self.answer(&msg, from, 491).await;
                                continue;
                            }
                            let mut body = None;
                            if has_offer {
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
                                (direction, may_send) = answer_to(&offer);
                                // Another codec offered first: answer with it and send it from now on.
                                if let Some((new_pt, new_codec)) = offer.first_codec().filter(|&(_, c)| c != codec) {
                                    (pt, codec) = (new_pt, new_codec);
                                    cfg.steer.set_codec(new_codec);
                                }
                                sdp_version += 1;
                                body = Some(sdp_body(rtp_addr, pt, codec, te_pt, (sdp_session, sdp_version), direction));
                            } else if method == "INVITE" {
                                // An offerless re-INVITE wants our offer in the 2xx: not done here.
                                send(&self.socket, &response(&msg, from, 488, &ResponseParts::default()), target).await;
                                continue;
                            }
                            let bytes = response(&msg, from, 200, &ResponseParts {
                                contact: Some(&contact),
                                sdp: body.as_deref(),
                                headers: &timer_answer_headers(&msg),
                                ..ResponseParts::default()
                            });
                            send(&self.socket, &bytes, target).await;
                            if method == "INVITE" {
                                reinvite_ok = Some(Pending2xx::new(cseq.unwrap_or_default(), bytes, target));
                            }
                        }
                        "REFER" => {
                            // RFC 3515 §2.4.1: exactly one Refer-To.
                            let Some(refer_to) = msg.header("refer-to").map(str::to_string) else {
                                self.answer(&msg, from, 400).await;
                                continue;
                            };
                            self.answer_with(&msg, from, 202, &[("Contact".into(), contact.clone())]).await;
                            self.log.refer_to.push(refer_to);
                            // The first NOTIFY at once (§2.4.4), the final one when "done".
                            let refer_cseq = cseq.unwrap_or_default();
                            local_cseq += 1;
                            let branch = new_branch();
                            let state = format!("active;expires={REFER_SUBSCRIPTION_SECS}");
                            let bytes = dialog.refer_notify(local_cseq, self.local, &branch, &contact, &ReferNotify {
                                refer_cseq,
                                state: &state,
                                sipfrag: "SIP/2.0 100 Trying",
                            });
                            notifies.push(OutTxn::start(&self.socket, "NOTIFY", bytes, branch, local_cseq, next_hop, ()).await);
                            steps.push((Instant::now() + script.transfer_delay, PbxStep::TransferDone(refer_cseq)));
                        }
                        "BYE" => {
                            self.answer(&msg, from, 200).await;
                            if let Some(t) = stop_tx.take() {
                                let _ = t.send(());
                            }
                        }
                        // Only our REFER makes a subscription (RFC 3515 §2.4.4).
                        "NOTIFY" if self.log.refer_sent_at.is_some() => {
                            self.answer(&msg, from, 200).await;
                            if let Some((line, _)) = sipfrag_status(&msg.body) {
                                self.log.notifies.push(line);
                            }
                        }
                        "NOTIFY" => self.answer(&msg, from, 481).await,
                        _ => answer_in_dialog(&self.socket, &msg, from).await,
                    }
                }
                () = tokio::time::sleep_until(wake.unwrap_or(give_up)), if wake.is_some() => {
                    let now = Instant::now();
                    if !acked && now >= next {
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
                    for p in reinvite_ok.iter_mut().chain(late_ok.iter_mut()) {
                        p.tick(&self.socket, now).await;
                    }
                    if let Some(r) = reinvite.as_mut() {
                        match r.tick(now) {
                            TxnTimer::Idle => {}
                            TxnTimer::Resend => send(&self.socket, &r.bytes, r.to).await,
                            TxnTimer::TimedOut => {
                                tracing::debug!("PBX re-INVITE timed out");
                                reinvite = None;
                            }
                        }
                    }
                    if let Some(r) = refer_out.as_mut() {
                        match r.tick(now) {
                            TxnTimer::Idle => {}
                            TxnTimer::Resend => send(&self.socket, &r.bytes, r.to).await,
                            TxnTimer::TimedOut => {
                                refer_out = None;
                                self.log.refer_status = Some(408);
                            }
                        }
                    }
                    let mut timed_out = Vec::new();
                    for (i, t) in notifies.iter_mut().enumerate() {
                        match t.tick(now) {
                            TxnTimer::Idle => {}
                            TxnTimer::Resend => send(&self.socket, &t.bytes, t.to).await,
                            TxnTimer::TimedOut => timed_out.push(i),
                        }
                    }
                    for i in timed_out.into_iter().rev() {
                        notifies.remove(i);
                        self.log.notify_results.push(408);
                    }
                    let Some(due) = steps.iter().position(|(at, s)| *at <= now && eligible(s)) else { continue };
                    let (_, step) = steps.remove(due);
                    if step == PbxStep::LateAnswer {
                        let Some((tag, fork, _)) = self.late_fork.clone() else { continue };
                        let Ok(socket) = UdpSocket::bind(SocketAddr::new(self.local.ip(), 0)).await else { continue };
                        let Ok(port) = socket.local_addr().map(|a| a.port()) else { continue };
                        let session = new_sdp_session();
                        let sdp = sdp_body(SocketAddr::new(local_host, port), pt, codec, te_pt, (session, session), MediaDir::SendRecv);
                        let late_contact = self.contact_of(Some(fork));
                        let bytes = response(&self.invite, self.source, 200, &ResponseParts {
                            to_tag: Some(&tag),
                            contact: Some(&late_contact),
                            sdp: Some(&sdp),
                            headers: &timer,
                            ..ResponseParts::default()
                        });
                        send(&self.socket, &bytes, self.target).await;
                        let cseq = self.invite.cseq().map_or(1, |(n, _)| n);
                        late_ok = Some(Pending2xx::new(cseq, bytes, self.target));
                        late_socket = Some(socket);
                        self.log.late_answer_tag = Some(tag);
                        continue;
                    }
                    local_cseq += 1;
                    let branch = new_branch();
                    match step {
                        PbxStep::Move => {
                            let socket = match UdpSocket::bind(SocketAddr::new(self.local.ip(), 0)).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::debug!(error = %e, "PBX could not bind a new RTP socket");
                                    continue;
                                }
                            };
                            let Ok(new_local) = socket.local_addr() else { continue };
                            let addr = SocketAddr::new(local_host, new_local.port());
                            sdp_version += 1;
                            let sdp = sdp_body(addr, pt, codec, te_pt, (sdp_session, sdp_version), direction);
                            let bytes = dialog.request_with("INVITE", local_cseq, self.local, &InDialog {
                                branch: Some(&branch),
                                contact: Some(&contact),
                                sdp: Some(&sdp),
                                ..InDialog::default()
                            });
                            self.log.move_sent_at = Some(SystemTime::now());
                            reinvite = Some(OutTxn::start(&self.socket, "INVITE", bytes, branch, local_cseq, next_hop, Some(socket)).await);
                        }
                        PbxStep::TransferDone(refer_cseq) => {
                            let bytes = dialog.refer_notify(local_cseq, self.local, &branch, &contact, &ReferNotify {
                                refer_cseq,
                                state: "terminated;reason=noresource",
                                sipfrag: "SIP/2.0 200 OK",
                            });
                            notifies.push(OutTxn::start(&self.socket, "NOTIFY", bytes, branch, local_cseq, next_hop, ()).await);
                        }
                        PbxStep::LateAnswer => {}
                        PbxStep::Refer => {
                            let target = script.refer.as_ref().map_or("", |(_, t)| t.as_str());
                            let local_uri = uri_of(&dialog.from).to_string();
                            let headers = [
                                ("Refer-To".to_string(), format!("<sip:{target}@{}>", host_port(self.local))),
                                ("Referred-By".to_string(), format!("<{local_uri}>")),
                            ];
                            let bytes = dialog.request_with("REFER", local_cseq, self.local, &InDialog {
                                branch: Some(&branch),
                                contact: Some(&contact),
                                headers: &headers,
                                ..InDialog::default()
                            });
                            self.log.refer_sent_at = Some(SystemTime::now());
                            refer_out = Some(OutTxn::start(&self.socket, "REFER", bytes, branch, local_cseq, next_hop, ()).await);
                        }
                    }
                }
            }
        };
        // What reached the losing fork's media socket (nothing should: its dialog has no media).
        if let Some(socket) = late_socket {
            let mut buf = [0u8; 2048];
            while socket.try_recv_from(&mut buf).is_ok() {
                self.log.late_answer_rtp_received += 1;
            }
        }
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
            call.ring_then_accept(&mut rx, ring, tone_hz, &PbxScript::default())
                .await
        }
        Answer::Scripted {
            ring,
            tone_hz,
            script,
        } => call.ring_then_accept(&mut rx, ring, tone_hz, &script).await,
        Answer::EarlyMedia {
            early,
            early_tone_hz,
            tone_hz,
        } => {
            call.accept(
                &mut rx,
                tone_hz,
                Some((early, early_tone_hz)),
                &PbxScript::default(),
            )
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
        Answer::Forked {
            ring,
            tone_hz,
            forks,
            winner,
            late_answer,
        } => {
            // One early dialog per fork: its own To tag and Contact (RFC 3261 §12.1.1).
            let tags: Vec<String> = (0..forks.max(2)).map(|_| new_token()).collect();
            for (i, tag) in tags.iter().enumerate() {
                call.to_tag = tag.clone();
                call.fork = Some(i + 1);
                call.respond(180, None, None).await;
            }
            let w = usize::from(winner).min(tags.len() - 1);
            call.to_tag = tags[w].clone();
            call.fork = Some(w + 1);
            if let Some(after) = late_answer {
                let loser = usize::from(w == 0);
                call.late_fork = Some((tags[loser].clone(), loser + 1, after));
            }
            match call.wait_or_cancel(&mut rx, ring).await {
                Waited::Cancelled => (Outcome::Cancelled, None, None),
                Waited::Elapsed => {
                    call.accept(&mut rx, tone_hz, None, &PbxScript::default())
                        .await
                }
            }
        }
        Answer::Challenge {
            code,
            realm,
            credentials,
            ring,
            tone_hz,
        } => {
            call.challenge(&mut rx, code, &realm, &credentials, ring, tone_hz)
                .await
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
        to_tag: call.to_tag,
        early_tags: call.log.early_tags,
        requests: call.log.requests,
        answered_at: call.log.answered_at,
        challenges: call.log.challenges,
        authorized_user: call.log.authorized_user,
        session_expires: call.log.session_expires,
        move_sent_at: call.log.move_sent_at,
        moved_to: call.log.moved_to,
        refer_to: call.log.refer_to,
        notify_results: call.log.notify_results,
        late_answer_tag: call.log.late_answer_tag,
        late_answer_rtp_received: call.log.late_answer_rtp_received,
        refer_sent_at: call.log.refer_sent_at,
        refer_status: call.log.refer_status,
        notifies: call.log.notifies,
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
    async fn wideband_calls_carry_each_sides_tone_both_ways() {
        for codec in [Codec::G722, Codec::Opus] {
            let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
                ring: Duration::from_millis(50),
                tone_hz: 1000.0,
            })
            .await;
            let phone = Phone::bind(LOCALHOST).await.unwrap();
            let mut s = spec("bob");
            s.codec = codec;
            let report = phone.call(pbx_addr, &s).await.unwrap();
            assert_eq!(report.outcome, Outcome::Answered, "{codec}");
            let tones = [440.0, 1000.0];

            // The phone played 440 Hz and heard the PBX's 1000 Hz, decoded.
            let rtp = report.rtp.unwrap();
            assert_eq!((rtp.sent, rtp.dropped), (30, 0), "{codec}");
            assert!((25..=32).contains(&rtp.received), "{codec}: {rtp:?}");
            let (tone, dominance) = rtp.heard.dominant_tone(&tones).unwrap();
            assert_eq!(tone, 1000.0, "{codec}: {rtp:?}");
            assert!(dominance > 20.0, "{codec}: {dominance:.1} dB");
            assert_eq!(rtp.heard.undecodable, 0, "{codec}");

            // And the other way round.
            let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
            assert_eq!(uas.outcome, Outcome::Answered);
            let pbx_rtp = uas.rtp.unwrap();
            assert!(
                (25..=30).contains(&pbx_rtp.received),
                "{codec}: {pbx_rtp:?}"
            );
            let (tone, dominance) = pbx_rtp.heard.dominant_tone(&tones).unwrap();
            assert_eq!(tone, 440.0, "{codec}: {pbx_rtp:?}");
            assert!(dominance > 20.0, "{codec}: {dominance:.1} dB");
            assert_eq!(pbx_rtp.heard.undecodable, 0, "{codec}");
        }
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
        let offer =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 96 18 8 0\r\nc=IN IP4 10.0.0.2\r\n\
                     a=rtpmap:96 AMR/8000\r\na=rtpmap:18 G729/8000\r\nm=audio 6000 RTP/AVP 0\r\n";
        let m = parse_sdp(offer).unwrap();
        assert_eq!(m.addr, "10.0.0.2:5000".parse().unwrap());
        assert_eq!(m.first_codec(), Some((8, Codec::Pcma)));
        assert_eq!(m.telephone_event_pt(), None);
        // Wideband codecs are taken when offered first, Opus under whatever dynamic type.
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 96 9 8 0\r\n\
                     a=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000\r\n";
        assert_eq!(
            parse_sdp(offer).unwrap().first_codec(),
            Some((96, Codec::Opus))
        );
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 9 0\r\n";
        assert_eq!(
            parse_sdp(offer).unwrap().first_codec(),
            Some((9, Codec::G722))
        );

        // What the agents offer for them: G.722 on its 8 kHz RTP clock; Opus as 48000/2 with
        // in-band FEC, and telephone-events on the same 48 kHz clock.
        let g722 = build_sdp(addr, 9, Codec::G722, Some(101));
        assert!(g722.contains("m=audio 40002 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n"));
        assert!(g722.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        let opus = build_sdp(addr, 111, Codec::Opus, Some(101));
        assert!(opus.contains(
            "m=audio 40002 RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
        ));
        assert!(opus.contains("a=rtpmap:101 telephone-event/48000\r\n"));
        assert_eq!(
            parse_sdp(&opus).unwrap().first_codec(),
            Some((111, Codec::Opus))
        );
        assert!(parse_sdp("v=0\r\nm=audio 5000 RTP/AVP 0\r\n").is_none());
        assert!(parse_sdp("m=audio x RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n").is_none());
    }

    fn seen<'a>(uas: &'a UasCallReport, method: &str) -> Vec<&'a SeenRequest> {
        uas.requests.iter().filter(|r| r.method == method).collect()
    }

    /// A forking PBX: two early dialogs reach the phone, the second fork answers, and the
    /// phone's ACK and BYE are in the winner's dialog, to its Contact.
    #[tokio::test(flavor = "multi_thread")]
    async fn forked_call_is_answered_in_the_winning_dialog() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Forked {
            ring: Duration::from_millis(100),
            tone_hz: 1000.0,
            forks: 2,
            winner: 1,
            late_answer: None,
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(400);
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Answered);
        assert_eq!(uas.early_tags.len(), 2, "{:?}", uas.early_tags);
        assert_ne!(uas.early_tags[0], uas.early_tags[1]);
        assert_eq!(report.early_tags, uas.early_tags, "the phone saw both");
        assert_eq!(uas.to_tag, uas.early_tags[1], "the second fork won");
        assert_eq!(report.to_tag.as_deref(), Some(uas.to_tag.as_str()));
        for method in ["ACK", "BYE"] {
            let reqs = seen(&uas, method);
            assert_eq!(reqs.len(), 1, "{method}: {:?}", uas.requests);
            assert_eq!(reqs[0].to_tag.as_deref(), Some(uas.to_tag.as_str()));
            assert!(reqs[0].uri.ends_with(";fork=2"), "{}", reqs[0].uri);
        }
        assert!(report.rtp.unwrap().received >= 15);
        assert!(uas.rtp.unwrap().received >= 15);
    }

    /// A losing fork answers too: the phone ACKs that 2xx in its own dialog and hangs it up at
    /// once (RFC 3261 §13.2.2.4), sends it no media, and talks on in the winner's dialog.
    #[tokio::test(flavor = "multi_thread")]
    async fn late_answer_of_a_losing_fork_is_acked_and_hung_up() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Forked {
            ring: Duration::from_millis(100),
            tone_hz: 1000.0,
            forks: 2,
            winner: 1,
            late_answer: Some(Duration::from_millis(200)),
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(800);
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        let loser = uas.late_answer_tag.clone().expect("the loser answered");
        assert_eq!(loser, uas.early_tags[0]);
        assert_eq!(report.other_dialogs, vec![loser.clone()]);
        assert_eq!(report.to_tag.as_deref(), Some(uas.to_tag.as_str()));
        let in_dialog = |tag: &str| -> Vec<(String, u32)> {
            uas.requests
                .iter()
                .filter(|r| r.to_tag.as_deref() == Some(tag))
                .map(|r| (r.method.clone(), r.cseq))
                .collect()
        };
        let ack_bye = |bye_cseq| vec![("ACK".to_string(), 1), ("BYE".to_string(), bye_cseq)];
        assert_eq!(in_dialog(&loser), ack_bye(2), "{:?}", uas.requests);
        assert_eq!(in_dialog(&uas.to_tag), ack_bye(2), "{:?}", uas.requests);
        assert!(
            seen(&uas, "BYE")[0].uri.ends_with(";fork=1"),
            "the loser's BYE first"
        );
        assert_eq!(uas.late_answer_rtp_received, 0);
        assert!(report.rtp.unwrap().received >= 35);
        assert!(uas.rtp.unwrap().received >= 35);
    }

    /// A request in another fork's dialog is refused 481 (RFC 3261 §12.2.2).
    #[tokio::test]
    async fn pbx_refuses_requests_of_another_dialog() {
        let (pbx_addr, _pbx) = pbx_with(Answer::Accept {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        })
        .await;
        let raw = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let me = raw.local_addr().unwrap();
        // Media goes elsewhere: only SIP reaches `raw`.
        let media = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let sdp = build_sdp(media.local_addr().unwrap(), 0, Codec::Pcmu, None);
        let invite = format!(
            "INVITE sip:bob@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKf1\r\n\
             From: <sip:eve@x>;tag=9\r\nTo: <sip:bob@x>\r\nCall-ID: fork-1\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:eve@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        raw.send_to(invite.as_bytes(), pbx_addr).await.unwrap();
        let ok = loop {
            let m = recv_msg(&raw).await.0;
            if m.code() == Some(200) {
                break m;
            }
        };
        assert!(header_param(ok.header("to").unwrap(), "tag").is_some());
        let bye = format!(
            "BYE sip:bob@{pbx_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKf2\r\n\
             From: <sip:eve@x>;tag=9\r\nTo: <sip:bob@x>;tag=not-ours\r\nCall-ID: fork-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        raw.send_to(bye.as_bytes(), pbx_addr).await.unwrap();
        let r = loop {
            let m = recv_msg(&raw).await.0;
            if m.cseq().is_some_and(|(_, m)| m == "BYE") {
                break m;
            }
        };
        assert_eq!(r.code(), Some(481));
    }

    fn challenge(code: u16, password: &str) -> Answer {
        Answer::Challenge {
            code,
            realm: "pbx.example".into(),
            credentials: Credentials {
                user: "alice".into(),
                password: password.into(),
            },
            ring: Duration::ZERO,
            tone_hz: 1000.0,
        }
    }

    /// 407 (and 401): the phone ACKs the challenge and sends the INVITE again with credentials
    /// (same Call-ID and From tag, CSeq 2, new branch); the PBX checks them and answers.
    #[tokio::test(flavor = "multi_thread")]
    async fn digest_challenge_is_answered_with_credentials() {
        for (code, header) in [(407, "Proxy-Authorization"), (401, "Authorization")] {
            let (pbx_addr, mut pbx) = pbx_with(challenge(code, "s3cret")).await;
            let phone = Phone::bind(LOCALHOST).await.unwrap();
            let mut s = spec("bob");
            s.talk = Duration::from_millis(300);
            s.credentials = Some(Credentials {
                user: "alice".into(),
                password: "s3cret".into(),
            });
            let report = phone.call(pbx_addr, &s).await.unwrap();
            assert_eq!(report.outcome, Outcome::Answered, "{code}");
            assert_eq!(report.auth_challenge, Some(code));
            let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
            assert_eq!(uas.outcome, Outcome::Answered);
            assert_eq!(uas.call_id, report.call_id);
            assert_eq!(uas.challenges, 1);
            assert_eq!(uas.authorized_user.as_deref(), Some("alice"));
            let got = |name: &str| {
                uas.received_headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(got("CSeq"), "2 INVITE");
            assert!(
                got(header).starts_with("Digest username=\"alice\""),
                "{}",
                got(header)
            );
            assert!(got(header).contains("algorithm=SHA-256"));
            // The challenge was ACKed (CSeq 1), then the answer (CSeq 2).
            let acks: Vec<u32> = seen(&uas, "ACK").iter().map(|r| r.cseq).collect();
            assert_eq!(acks, vec![1, 2], "{:?}", uas.requests);
            assert!(report.rtp.unwrap().received >= 10);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_credentials_are_forbidden_and_none_leave_the_challenge() {
        let (pbx_addr, mut pbx) = pbx_with(challenge(407, "right")).await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.credentials = Some(Credentials {
            user: "alice".into(),
            password: "wrong".into(),
        });
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Rejected(403));
        assert_eq!(report.auth_challenge, Some(407));
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.outcome, Outcome::Rejected(403));
        assert_eq!(uas.authorized_user, None);
        // Without credentials the phone reports the challenge itself.
        s.credentials = None;
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Rejected(407));
        assert_eq!(report.auth_challenge, None);
    }

    #[test]
    fn digest_credentials_verify_and_tampering_fails() {
        let creds = Credentials {
            user: "alice".into(),
            password: "pw".into(),
        };
        let challenge = "Digest realm=\"r\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\"";
        let value = authorization(challenge, &creds, "INVITE", "sip:bob@h").unwrap();
        assert!(authorization_valid(
            &value,
            &creds,
            "r",
            "n1",
            "INVITE",
            "sip:bob@h"
        ));
        assert!(!authorization_valid(
            &value,
            &creds,
            "r",
            "n2",
            "INVITE",
            "sip:bob@h"
        ));
        assert!(!authorization_valid(
            &value,
            &creds,
            "r",
            "n1",
            "INVITE",
            "sip:eve@h"
        ));
        let other = Credentials {
            password: "other".into(),
            ..creds.clone()
        };
        assert!(!authorization_valid(
            &value,
            &other,
            "r",
            "n1",
            "INVITE",
            "sip:bob@h"
        ));
        // MD5 (the default algorithm) is not answered: we only do SHA-256.
        assert!(authorization(
            "Digest realm=\"r\", nonce=\"n\"",
            &creds,
            "INVITE",
            "sip:b@h"
        )
        .is_none());
        assert!(authorization("Basic realm=\"r\"", &creds, "INVITE", "sip:b@h").is_none());
        // RFC 7616 §3.9.1 example, SHA-256 part (qop=auth, nc=00000001).
        let rfc = digest_response(
            &Credentials {
                user: "Mufasa".into(),
                password: "Circle of Life".into(),
            },
            "http-auth@example.org",
            "GET",
            "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            Some(("00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")),
        );
        assert_eq!(
            rfc,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// The phone REFERs the PBX; the PBX accepts (202) and NOTIFYs 100 then 200, and the phone
    /// hangs up on the 200.
    #[tokio::test(flavor = "multi_thread")]
    async fn refer_is_accepted_notified_and_the_transferor_hangs_up() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Scripted {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
            script: PbxScript {
                transfer_delay: Duration::from_millis(300),
                ..PbxScript::default()
            },
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_secs(3);
        s.refer = Some((Duration::from_millis(300), "0299999999".into()));
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        assert_eq!(report.refer_status, Some(202));
        assert_eq!(
            report.notifies,
            vec!["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
        );
        let answered = report.answered_at.unwrap();
        let refer = report
            .refer_sent_at
            .unwrap()
            .duration_since(answered)
            .unwrap();
        let bye = report
            .bye_sent_at
            .unwrap()
            .duration_since(answered)
            .unwrap();
        assert!(
            refer.abs_diff(Duration::from_millis(300)) < Duration::from_millis(60),
            "{refer:?}"
        );
        // Hung up on the final NOTIFY, about 300 ms after the REFER, not after 3 s of talk.
        assert!(
            bye.abs_diff(Duration::from_millis(600)) < Duration::from_millis(150),
            "{bye:?}"
        );
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        assert_eq!(uas.refer_to, vec![format!("<sip:0299999999@{pbx_addr}>")]);
        assert_eq!(uas.notify_results, vec![200, 200]);
        let refer_req = seen(&uas, "REFER");
        assert_eq!(refer_req.len(), 1);
        assert_eq!(refer_req[0].cseq, 2);
        assert!(refer_req[0].header("referred-by").is_some());
        assert_eq!(seen(&uas, "BYE")[0].cseq, 3);
    }

    /// The PBX REFERs the phone: accepted (202) with NOTIFYs 100 and the configured outcome,
    /// or declined (603) without any; the call goes on either way.
    #[tokio::test(flavor = "multi_thread")]
    async fn pbx_refer_is_accepted_or_declined_by_the_phone() {
        for on_refer in [Some(503), None] {
            let (pbx_addr, mut pbx) = pbx_with(Answer::Scripted {
                ring: Duration::ZERO,
                tone_hz: 1000.0,
                script: PbxScript {
                    refer: Some((Duration::from_millis(200), "0299999999".into())),
                    ..PbxScript::default()
                },
            })
            .await;
            let phone = Phone::bind(LOCALHOST).await.unwrap();
            let mut s = spec("bob");
            s.on_refer = on_refer;
            let report = phone.call(pbx_addr, &s).await.unwrap();
            let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
            let refer_to = format!("<sip:0299999999@{pbx_addr}>");
            let bye = report
                .bye_sent_at
                .unwrap()
                .duration_since(report.answered_at.unwrap())
                .unwrap();
            assert!(bye >= Duration::from_millis(590), "talked on: {bye:?}");
            if on_refer.is_none() {
                assert_eq!(report.refers_received, vec![(refer_to, 603)]);
                assert_eq!(uas.refer_status, Some(603));
                assert!(uas.notifies.is_empty() && report.notify_results.is_empty());
                continue;
            }
            assert_eq!(report.refers_received, vec![(refer_to, 202)]);
            assert_eq!(uas.refer_status, Some(202));
            assert_eq!(
                uas.notifies,
                vec!["SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable"]
            );
            assert_eq!(report.notify_results, vec![200, 200]);
            // The phone's NOTIFYs took CSeq 2 and 3 of its dialog, the BYE 4.
            let uas_bye = seen(&uas, "BYE");
            assert_eq!(uas_bye[0].cseq, 4);
            let notify_cseqs: Vec<u32> = seen(&uas, "NOTIFY").iter().map(|r| r.cseq).collect();
            assert_eq!(notify_cseqs, vec![2, 3]);
            assert!(seen(&uas, "NOTIFY")
                .iter()
                .all(|r| r.header("event") == Some("refer;id=1")));
        }
    }

    /// The PBX moves its RTP with a re-INVITE: the phone answers, sends to the new port, and
    /// hears the PBX throughout.
    #[tokio::test(flavor = "multi_thread")]
    async fn pbx_moves_its_rtp_with_a_reinvite_and_the_phone_follows() {
        let (pbx_addr, mut pbx) = pbx_with(Answer::Scripted {
            ring: Duration::ZERO,
            tone_hz: 1000.0,
            script: PbxScript {
                move_rtp: Some(Duration::from_millis(600)),
                ..PbxScript::default()
            },
        })
        .await;
        let phone = Phone::bind(LOCALHOST).await.unwrap();
        let mut s = spec("bob");
        s.talk = Duration::from_millis(1400);
        let report = phone.call(pbx_addr, &s).await.unwrap();
        assert_eq!(report.outcome, Outcome::Answered);
        assert_eq!(
            report.remote_updates_at.len(),
            1,
            "the phone answered one re-INVITE"
        );
        let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
        let moved_to = uas.moved_to.expect("the move was answered");
        let pbx_rtp = uas.rtp.clone().unwrap();
        // About 40 of the phone's 70 packets reached the PBX's new socket.
        assert!(
            (35..=42).contains(&pbx_rtp.received_after_move),
            "{pbx_rtp:?}"
        );
        assert!(pbx_rtp.received >= 65, "{pbx_rtp:?}");
        assert!(pbx_rtp.paused <= 1, "{pbx_rtp:?}");
        let rtp = report.rtp.unwrap();
        assert!(rtp.received >= 65, "{rtp:?}");
        // The PBX got one ACK (of its 200 OK); the move's ACK went the other way.
        assert_eq!(seen(&uas, "ACK").len(), 1, "{:?}", uas.requests);
        assert_ne!(moved_to.port(), 0);
        let moved = uas
            .move_sent_at
            .unwrap()
            .duration_since(uas.answered_at.unwrap())
            .unwrap();
        assert!(
            moved.abs_diff(Duration::from_millis(600)) < Duration::from_millis(60),
            "{moved:?}"
        );
    }

    /// Session timer: the PBX grants `Session-Expires` with `refresher=uac`; the phone refreshes
    /// at half the interval by UPDATE or re-INVITE, each granted again; without `refresh` it
    /// never does.
    #[tokio::test(flavor = "multi_thread")]
    async fn session_timer_is_granted_and_refreshed() {
        for refresh in [Some(Refresh::Update), Some(Refresh::ReInvite), None] {
            let (pbx_addr, mut pbx) = pbx_with(Answer::Accept {
                ring: Duration::ZERO,
                tone_hz: 1000.0,
            })
            .await;
            let phone = Phone::bind(LOCALHOST).await.unwrap();
            let mut s = spec("bob");
            s.talk = Duration::from_millis(1300);
            s.session_timer = Some(SessionTimer {
                expires: 1,
                refresh,
            });
            let report = phone.call(pbx_addr, &s).await.unwrap();
            assert_eq!(report.session_expires, Some(1), "{refresh:?}");
            assert!(report.refresher_is_us);
            let uas = pbx.next_report(REPORT_WAIT).await.unwrap();
            assert_eq!(uas.session_expires, Some(1));
            let invite_has = |name: &str, value: &str| {
                uas.received_headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
            };
            assert!(invite_has("Supported", "timer"));
            assert!(invite_has("Session-Expires", "1;refresher=uac"));
            let answered = report.answered_at.unwrap();
            let sent: Vec<u128> = report
                .refreshes_sent_at
                .iter()
                .map(|t| t.duration_since(answered).unwrap().as_millis())
                .collect();
            let Some(how) = refresh else {
                assert!(sent.is_empty(), "{sent:?}");
                assert!(seen(&uas, "UPDATE").is_empty() && seen(&uas, "INVITE").is_empty());
                continue;
            };
            // At 0.5 s and 1.0 s (each half an interval after the previous grant).
            assert_eq!(sent.len(), 2, "{how:?}: {sent:?}");
            assert!(
                (480..=600).contains(&sent[0]) && (960..=1150).contains(&sent[1]),
                "{sent:?}"
            );
            assert_eq!(report.refresh_results, vec![200, 200]);
            let method = if how == Refresh::Update {
                "UPDATE"
            } else {
                "INVITE"
            };
            let reqs = seen(&uas, method);
            assert_eq!(reqs.len(), 2, "{:?}", uas.requests);
            for r in reqs {
                assert_eq!(r.header("session-expires"), Some("1;refresher=uac"));
            }
            if how == Refresh::ReInvite {
                // The refreshing re-INVITEs repeat the SDP unchanged, `o=` version included.
                assert_eq!(seen(&uas, "ACK").len(), 3);
            }
            assert!(report.rtp.unwrap().received >= 55);
        }
    }

    #[test]
    fn uri_addresses_and_session_expires_parse() {
        assert_eq!(
            uri_addr("sip:alice@127.0.0.1:5070;transport=udp"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            uri_addr("sip:127.0.0.1;lr"),
            Some("127.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            uri_addr("sips:[::1]:5071;lr"),
            Some("[::1]:5071".parse().unwrap())
        );
        assert_eq!(uri_addr("sip:bob@pbx.example"), None);
        assert_eq!(uri_addr("tel:+358401"), None);
        let req = |extra: &str| {
            SipMsg::parse(format!("UPDATE sip:a@b SIP/2.0\r\nCall-ID: x\r\n{extra}\r\n").as_bytes())
                .unwrap()
        };
        let m = req("x: 90;refresher=UAS\r\nk: 100rel, timer\r\n");
        assert_eq!(session_expires_of(&m), Some((90, Some(Refresher::Uas))));
        // We never refresh ourselves: a request asking us to gets no timer.
        assert!(timer_answer_headers(&m).is_empty());
        let m = req("Session-Expires: 30\r\nSupported: timer\r\n");
        assert_eq!(
            timer_answer_headers(&m),
            vec![
                (
                    "Session-Expires".to_string(),
                    "30;refresher=uac".to_string()
                ),
                ("Require".to_string(), "timer".to_string())
            ]
        );
        assert!(timer_answer_headers(&req("Session-Expires: 30\r\n")).is_empty());
        assert_eq!(
            sipfrag_status("SIP/2.0 180 Ringing\r\n"),
            Some(("SIP/2.0 180 Ringing".to_string(), 180))
        );
    }
}

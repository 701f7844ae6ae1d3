//! The sans-IO proxy core: a record-routing, transaction-stateful SIP proxy (RFC 3261 §16).
//! Messages and time go in (`handle_message`, `handle_timeout`, `handle_transport_error`),
//! messages to send and call events come out (`poll_output`). Every message is tagged with its
//! [`Peer`]: the transport (UDP or TCP) and the remote address; the core picks the transport of
//! each next hop (URI `transport` parameter, the PBX's configured transport, RFC 3261 §18.1.1 for
//! large requests) and the driver owns connections. SDP bodies are handed to a `MediaAnchor`
//! that may rewrite them. No sockets, no clock, no files: the transport driver does all of that.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::sip::dialog::{Dialog, DialogState};
use crate::sip::limit::{SourceLimiter, Verdict};
use crate::sip::msg::{self, make_response, parse_name_addr, parse_uri, Message};
use crate::sip::txn::{
    ClientKey, ClientTxn, ServerKey, ServerTxn, Timer, T1, T2, T4, TIMEOUT, TIMER_C,
};

/// Prefix of every branch this proxy generates: the RFC 3261 magic cookie plus our mark, so that
/// responses carrying our Via are recognised even after a restart.
const BRANCH_PREFIX: &str = "z9hG4bK-rp";
/// Max-Forwards put on requests that arrive without one (RFC 3261 §16.6 step 3).
const DEFAULT_MAX_FORWARDS: u32 = 70;
/// RFC 3261 §18.1.1: a request larger than this, bound for a UDP next hop whose path MTU is
/// unknown, goes over a congestion-controlled transport (TCP).
pub const UDP_REQUEST_LIMIT: usize = 1300;

pub use crate::config::Transport;

/// A SIP peer as the transport sees it: the transport and the remote address. Over TCP the
/// address is the remote end of a connection, or the address to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// UDP or TCP.
    pub transport: Transport,
    /// Remote address.
    pub addr: SocketAddr,
}

impl Peer {
    /// A peer over UDP.
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr,
        }
    }

    /// A peer over TCP.
    pub fn tcp(addr: SocketAddr) -> Peer {
        Peer {
            transport: Transport::Tcp,
            addr,
        }
    }

    /// Whether the transport delivers reliably (no retransmissions, RFC 3261 §17).
    pub fn reliable(self) -> bool {
        self.transport == Transport::Tcp
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// The two parties of a call: the caller sent the initial INVITE, the callee answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// Sender of the initial INVITE (A side, left channel).
    Caller,
    /// Receiver of the initial INVITE (B side, right channel).
    Callee,
}

impl Party {
    /// The other party.
    pub fn other(self) -> Party {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }
}

/// What the core needs to know about its own place in the network.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Addresses written into our Via, Record-Route and Path, one per transport we listen on
    /// (the first of each transport counts).
    pub advertise: Vec<Peer>,
    /// Every address we listen on; a Route or Request-URI naming one of them means us.
    pub local: Vec<SocketAddr>,
    /// The PBX: requests from other sources go there; its own requests go by Route/Request-URI.
    /// Over UDP it is recognised by address and port; over TCP (where its connections come from
    /// ephemeral ports) by address plus its Via sent-by, or as the connection we opened to it.
    pub pbx: Vec<Peer>,
    /// Messages per second accepted from one source address other than the PBX.
    pub max_rate: u32,
    /// RFC 3261 §18.1.1: requests over [`UDP_REQUEST_LIMIT`] bytes bound for a UDP next hop go
    /// over TCP (back to UDP if the connection fails).
    pub large_over_tcp: bool,
}

/// Receives every SDP body the proxy forwards, so media can be anchored.
pub trait MediaAnchor {
    /// `body` was written by `party` of call `call_id`. Returns the body to forward instead
    /// (rewritten to the proxy's media ports), or `None` to forward it unchanged.
    fn on_sdp(&mut self, call_id: &str, party: Party, body: &[u8], now: Instant)
        -> Option<Vec<u8>>;
}

/// Facts about an initial INVITE that the call registry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteInfo {
    /// The request came from the PBX (an outbound call), not from a phone or trunk.
    pub from_pbx: bool,
    /// Source address of the INVITE.
    pub source: SocketAddr,
    /// User part of the Request-URI (the called number).
    pub request_uri_user: Option<String>,
    /// User part of the To URI.
    pub to_user: Option<String>,
    /// User part of the From URI.
    pub from_user: Option<String>,
    /// User part of the first P-Asserted-Identity URI.
    pub asserted_user: Option<String>,
}

/// The facts of the initial INVITE `msg`, which came from `source` (`from_pbx`: from the PBX).
pub fn invite_info(msg: &Message, from_pbx: bool, source: SocketAddr) -> InviteInfo {
    let user_of = |uri: &str| parse_uri(uri).ok().and_then(|u| u.user);
    let header_user = |name: &str| {
        msg.values(name)
            .first()
            .and_then(|v| parse_name_addr(v).ok())
            .and_then(|na| user_of(&na.uri))
    };
    InviteInfo {
        from_pbx,
        source,
        request_uri_user: msg.request_uri().and_then(user_of),
        to_user: header_user("To"),
        from_user: header_user("From"),
        asserted_user: header_user("P-Asserted-Identity"),
    }
}

/// What happened to a call, as the registry needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEventKind {
    /// An initial INVITE was forwarded.
    Invite(InviteInfo),
    /// The initial INVITE was answered with 2xx.
    Answered,
    /// The call ended before it was answered: final error response, CANCEL (then `cancelled`),
    /// or transaction timeout (408 generated by us).
    Failed {
        /// Final status code.
        code: u16,
        /// Reason phrase as received (or ours).
        reason: String,
        /// The caller cancelled the INVITE.
        cancelled: bool,
    },
    /// A BYE was forwarded.
    Bye {
        /// Who sent it.
        by: Party,
    },
    /// A transfer of the call was accepted: a REFER in its dialog answered 2xx (RFC 3515), or
    /// an INVITE with Replaces naming it was forwarded (RFC 3891, attended transfer).
    Transferred {
        /// The party that sent the REFER; `None` for Replaces (a third party's INVITE).
        by: Option<Party>,
    },
    /// A party's ACK came without the answer its SDP-less INVITE owed to the offer in the 2xx
    /// (RFC 3264 §4 wants it there); the offer is taken as accepted as it stands, the way the
    /// other party will have taken it.
    OfferAccepted {
        /// The party whose ACK it was.
        by: Party,
    },
    /// The session timer (RFC 4028) ran out without a refresh. The parties' own timers should
    /// end the call with a BYE; if they do not, the session is dead only once its media stops.
    /// The core keeps the dialog until the registry calls `forget_call` (or a BYE comes).
    SessionExpired,
}

/// A call event with its Call-ID and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    /// SIP Call-ID.
    pub call_id: String,
    /// When it happened (the `now` of the input that caused it).
    pub at: Instant,
    /// What happened.
    pub kind: CallEventKind,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes to this peer (over TCP: on its connection, opened if there is none).
    Send {
        /// Destination.
        to: Peer,
        /// A whole SIP message.
        data: Vec<u8>,
    },
    /// Tell the call registry.
    Event(CallEvent),
    /// A peer on TCP said (in its Via sent-by) that it is reached at `alias`, from the same IP
    /// as its connection `conn`: requests for `alias` may use that connection rather than open
    /// a new one, as a phone behind NAT needs (RFC 3261 §18.2.2's reuse, applied to requests).
    Alias {
        /// Address the peer names itself by (TCP).
        alias: SocketAddr,
        /// Remote address of its connection.
        conn: SocketAddr,
    },
    /// Look this name up (RFC 3263) and report with `handle_resolved`; requests for it wait.
    Resolve(NameQuery),
}

/// A next hop named by a host name, to be resolved as RFC 3263 §4 says: the transport from the
/// URI's `transport` parameter (else UDP with a port, else by SRV), the port from the URI (else
/// by SRV, else 5060).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameQuery {
    /// Host name, lower case, without a trailing dot.
    pub host: String,
    /// Port written in the URI.
    pub port: Option<u16>,
    /// `transport` parameter of the URI.
    pub transport: Option<Transport>,
}

impl fmt::Display for NameQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(t) = self.transport {
            write!(f, ";transport={t}")?;
        }
        Ok(())
    }
}

/// What a name resolved to: targets in the order to try, and how long that holds (DNS TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Transport and address of each target, best first.
    pub targets: Vec<Peer>,
    /// When the answer expires.
    pub valid_until: Instant,
}

/// Where a URI points: an address, or a name to resolve first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP literal (with `maddr` honoured).
    Addr(Peer),
    /// A host name.
    Name(NameQuery),
}

/// Counters of what the core dropped or refused, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams that did not parse as SIP at all (dropped).
    pub unparsable: u64,
    /// Requests answered 400/505/483/416/502 by the proxy itself.
    pub rejected_requests: u64,
    /// Responses dropped (malformed, not ours, or no way to route them).
    pub dropped_responses: u64,
    /// Request retransmissions absorbed by server transactions.
    pub absorbed_retransmissions: u64,
    /// Messages dropped because their source went over `max_rate`.
    pub rate_limited: u64,
    /// Messages over the size limit (requests among them answered 513).
    pub oversized: u64,
}

/// Why a request could not be routed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The next hop's URI did not parse.
    #[error("next hop URI does not parse: {0}")]
    BadUri(String),
    /// The next hop is a host name that must be resolved first.
    #[error("next hop {0} is a host name not resolved yet")]
    HostName(String),
    /// The next hop's name is being resolved; the request waits.
    #[error("resolving {0}")]
    Unresolved(NameQuery),
    /// The next hop's name did not resolve (answer cached for a while).
    #[error("cannot resolve {0}: {1}")]
    NotFound(NameQuery, String),
    /// The scheme is not sip/sips.
    #[error("unsupported URI scheme {0}")]
    Scheme(String),
    /// The next hop asks for a transport this proxy does not speak (TLS, SCTP, WebSocket).
    #[error("unsupported transport {0} (UDP and TCP are served)")]
    Transport(String),
    /// No PBX address is configured to send phone-side requests to.
    #[error("no PBX address configured")]
    NoPbx,
}

/// The proxy core. See the module docs.
pub struct Proxy {
    cfg: ProxyConfig,
    server: HashMap<ServerKey, ServerTxn>,
    client: HashMap<ClientKey, ClientTxn>,
    dialogs: HashMap<String, Dialog>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    branch_seq: u64,
    /// Distinguishes our branches from those of an earlier run with the same counter.
    branch_salt: u64,
    out: VecDeque<Output>,
    stats: ProxyStats,
    limiter: SourceLimiter,
    /// Resolved names (and failures) until their TTL runs out.
    dns_cache: HashMap<NameQuery, (Result<Vec<Peer>, String>, Instant)>,
    /// Requests waiting for a name, as received.
    parked: HashMap<NameQuery, Vec<Parked>>,
    /// Server keys of parked requests, so their retransmissions are absorbed.
    parked_keys: HashMap<ServerKey, NameQuery>,
}

/// A request received while its next hop's name was being resolved.
struct Parked {
    from: Peer,
    raw: Vec<u8>,
    key: Option<ServerKey>,
}

/// Requests that may wait for DNS at once; more are answered 503.
const MAX_PARKED: usize = 10_000;
/// Names remembered at most; past this the cache starts afresh.
const MAX_DNS_CACHE: usize = 4096;
/// How long a failed lookup is remembered (RFC 2308 negative caching, without the SOA).
const DNS_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Bounds on how long a positive answer is used, whatever its TTL.
const DNS_MIN_TTL: Duration = Duration::from_secs(1);
const DNS_MAX_TTL: Duration = Duration::from_secs(3600);

impl Proxy {
    /// A proxy core; `salt` makes generated branches unique across restarts (any random value).
    pub fn new(cfg: ProxyConfig, salt: u64) -> Proxy {
        Proxy {
            server: HashMap::new(),
            client: HashMap::new(),
            dialogs: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            branch_seq: 0,
            branch_salt: salt,
            out: VecDeque::new(),
            stats: ProxyStats::default(),
            limiter: SourceLimiter::new(cfg.max_rate),
            dns_cache: HashMap::new(),
            parked: HashMap::new(),
            parked_keys: HashMap::new(),
            cfg,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// Number of live transactions (server, client) and dialogs, for leak checks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.server.len(), self.client.len(), self.dialogs.len())
    }

    /// The next output to execute, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Drops the core's dialog state of a call whose media ended without a BYE (media timeout),
    /// so it does not linger. In-dialog requests still route by their Route headers.
    pub fn forget_call(&mut self, call_id: &str) {
        self.dialogs.remove(call_id);
    }

    /// One datagram received over UDP from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        media: &mut dyn MediaAnchor,
    ) {
        self.handle_message(now, Peer::udp(from), data, media);
    }

    /// One message received from `from`: a whole datagram, or one message framed out of a TCP
    /// stream by its Content-Length.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: Peer,
        data: &[u8],
        media: &mut dyn MediaAnchor,
    ) {
        // Keep-alives (RFC 5626 §4.4.1 CRLF ping) are not messages.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        if !self.admit(now, from) {
            return;
        }
        // Trailing octets after Content-Length are ignored over UDP (RFC 4475 §3.1.1.8).
        let msg = match Message::parse(data) {
            Ok((msg, _consumed)) => msg,
            Err(err) => {
                self.stats.unparsable += 1;
                // A request whose head is readable (broken Content-Length, RFC 4475 §3.1.2.2
                // and §3.1.2.3) still gets its 400.
                self.reject_head(from, data, (400, "Bad Request"), &err);
                return;
            }
        };
        if msg.is_request() {
            self.handle_request(now, from, msg, data, media);
        } else {
            self.handle_response(now, from, msg, media);
        }
    }

    /// A message over the size limit (`data` holds its start): a request whose head is readable
    /// is answered 513 (RFC 3261 §18.1.1 / §21.5.14), anything else is dropped.
    pub fn handle_oversized(&mut self, now: Instant, from: Peer, data: &[u8]) {
        if !self.admit(now, from) {
            return;
        }
        self.stats.oversized += 1;
        self.reject_head(
            from,
            data,
            (513, "Message Too Large"),
            &"over sip.max_message_size",
        );
    }

    /// Answers `status` to a message that cannot be handled whole, if its head is a request
    /// that can be answered; anything else is dropped and logged.
    fn reject_head(
        &mut self,
        from: Peer,
        data: &[u8],
        (code, reason): (u16, &str),
        why: &dyn std::fmt::Display,
    ) {
        match head_for_reply(data) {
            Some(head) => self.reject(from, &head, code, reason, why),
            None => {
                tracing::warn!(%from, len = data.len(), reason = %why, "dropping SIP message that cannot be read")
            }
        }
    }

    /// The answer to an earlier [`Output::Resolve`]: cached for its TTL (a failure for
    /// 30 s), and every request that waited for it is handled now, as if it had just arrived.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        query: NameQuery,
        result: Result<Resolved, String>,
        media: &mut dyn MediaAnchor,
    ) {
        let entry = match result {
            Ok(r) if !r.targets.is_empty() => {
                let until = r.valid_until.clamp(now + DNS_MIN_TTL, now + DNS_MAX_TTL);
                tracing::debug!(%query, targets = ?r.targets, "name resolved");
                (Ok(r.targets), until)
            }
            Ok(_) => (Err("no address".to_string()), now + DNS_NEGATIVE_TTL),
            Err(e) => {
                tracing::warn!(%query, error = %e, "cannot resolve next hop");
                (Err(e), now + DNS_NEGATIVE_TTL)
            }
        };
        if self.dns_cache.len() >= MAX_DNS_CACHE {
            self.dns_cache.clear();
        }
        self.dns_cache.insert(query.clone(), entry);
        for parked in self.parked.remove(&query).unwrap_or_default() {
            if let Some(key) = &parked.key {
                self.parked_keys.remove(key);
            }
            self.handle_message(now, parked.from, &parked.raw, media);
        }
    }

    /// Keeps a request until `query` is resolved; asks for the lookup if it is the first to
    /// wait for that name. False when too many wait already.
    fn park(&mut self, query: NameQuery, from: Peer, raw: &[u8], key: Option<ServerKey>) -> bool {
        if self.parked_keys.len() + self.parked.len() >= MAX_PARKED {
            return false;
        }
        if let Some(key) = &key {
            self.parked_keys.insert(key.clone(), query.clone());
        }
        let waiting = self.parked.entry(query.clone()).or_default();
        if waiting.is_empty() {
            self.out.push_back(Output::Resolve(query));
        }
        waiting.push(Parked {
            from,
            raw: raw.to_vec(),
            key,
        });
        true
    }

    /// A TCP stream that cannot be framed (no or invalid Content-Length, RFC 3261 §18.3): a
    /// request whose head is readable is answered 400 before the driver closes the connection.
    pub fn handle_framing_error(
        &mut self,
        now: Instant,
        from: Peer,
        data: &[u8],
        why: &dyn std::fmt::Display,
    ) {
        if !self.admit(now, from) {
            return;
        }
        self.stats.unparsable += 1;
        self.reject_head(from, data, (400, "Bad Request"), why);
    }

    /// A request over TCP whose Via sent-by names the connection's IP with another port (the
    /// port the peer listens on, also in its Contact): that address is an alias of the
    /// connection. Only the same IP counts, so nobody can claim another host's address.
    fn note_alias(&mut self, from: Peer, req: &Message) {
        let Some(alias) = via_sent_by(req) else {
            return;
        };
        if alias.ip() == from.addr.ip() && alias != from.addr {
            self.out.push_back(Output::Alias {
                alias,
                conn: from.addr,
            });
        }
    }

    /// Flood protection: every source but the PBX is held to `max_rate` messages per second.
    fn admit(&mut self, now: Instant, from: Peer) -> bool {
        if self.cfg.pbx.iter().any(|p| p.addr.ip() == from.addr.ip()) {
            return true;
        }
        match self.limiter.check(from.addr.ip(), now) {
            Verdict::Allow => true,
            Verdict::Drop { first } => {
                self.stats.rate_limited += 1;
                if first {
                    tracing::warn!(%from, rate = self.cfg.max_rate, "source over sip.max_rate: dropping its messages");
                }
                false
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.fire(now, timer);
        }
    }

    /// The driver could not deliver to `to` (over TCP: the connection could not be opened or
    /// broke). A request that went over TCP only because of its size is sent again over UDP
    /// (RFC 3261 §18.1.1); any other pending request to that peer is treated as answered 503
    /// (§8.1.3.1, §16.9), so the caller learns at once instead of after Timer B.
    pub fn handle_transport_error(&mut self, now: Instant, to: Peer, media: &mut dyn MediaAnchor) {
        let pending: Vec<ClientKey> = self
            .client
            .iter()
            .filter(|(_, t)| t.dest == to && t.final_status.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            let Some(txn) = self.client.get_mut(&key) else {
                continue;
            };
            if let Some(request) = txn.udp_fallback.take() {
                tracing::info!(%to, call_id = %txn.call_id, "large request falls back to UDP");
                txn.dest.transport = Transport::Udp;
                txn.bytes = request.to_bytes();
                txn.request = request;
                txn.retransmit_interval = T1;
                self.out.push_back(Output::Send {
                    to: txn.dest,
                    data: txn.bytes.clone(),
                });
                self.schedule(now + T1, Timer::ClientRetransmit(key));
                continue;
            }
            tracing::warn!(%to, call_id = %txn.call_id, method = %key.method, "cannot reach next hop: answering 503");
            let resp = make_response(&txn.request, 503, "Service Unavailable", None);
            self.handle_response(now, to, resp, media);
        }
    }

    // ----- requests -------------------------------------------------------------------------

    fn handle_request(
        &mut self,
        now: Instant,
        from: Peer,
        mut req: Message,
        raw: &[u8],
        media: &mut dyn MediaAnchor,
    ) {
        if let Err(invalid) = req.validate() {
            let (code, reason) = reject_status(&invalid);
            self.reject(from, &req, code, reason, &invalid);
            return;
        }
        let method = req.method().unwrap_or_default().to_string();
        if from.reliable() {
            self.note_alias(from, &req);
        }
        // RFC 3261 §16.3 step 1: a Request-URI scheme we cannot route is refused.
        let scheme_ok = req
            .request_uri()
            .and_then(|u| u.split(':').next())
            .is_some_and(|s| ["sip", "sips", "tel"].contains(&s.to_ascii_lowercase().as_str()));
        if !scheme_ok {
            self.reject(
                from,
                &req,
                416,
                "Unsupported URI Scheme",
                &"Request-URI scheme",
            );
            return;
        }
        // §16.3 step 5: this proxy supports no extension a Proxy-Require can name.
        let required: Vec<String> = req
            .values("Proxy-Require")
            .iter()
            .map(|v| v.trim().to_string())
            .collect();
        if !required.is_empty() && method != "ACK" && method != "CANCEL" {
            let mut resp = make_response(&req, 420, "Bad Extension", None);
            resp.append_header("Unsupported", &required.join(", "));
            self.stats.rejected_requests += 1;
            tracing::warn!(%from, code = 420, call_id = req.call_id().unwrap_or_default(), reason = %required.join(", "), "rejecting request: Proxy-Require");
            self.out.push_back(Output::Send {
                to: from,
                data: resp.to_bytes(),
            });
            return;
        }
        let Some(key) = server_key(&req) else {
            self.reject(from, &req, 400, "Bad Request", &"no usable Via or CSeq");
            return;
        };
        if method == "ACK" {
            self.handle_ack(now, from, key, req, raw, media);
            return;
        }
        if method == "CANCEL" {
            self.handle_cancel(now, from, key, &req);
            return;
        }
        // A retransmission of a request waiting for DNS is absorbed (it got its 100 Trying).
        if self.parked_keys.contains_key(&key) {
            self.stats.absorbed_retransmissions += 1;
            return;
        }
        // A retransmission is absorbed and answered with the last response (RFC 3261 §17.2.1).
        if let Some(txn) = self.server.get(&key) {
            self.stats.absorbed_retransmissions += 1;
            if let Some(resp) = txn.last_response.clone() {
                self.out.push_back(Output::Send {
                    to: txn.source,
                    data: resp,
                });
            }
            return;
        }
        // RFC 3261 §16.3 step 3 and §16.6 step 3.
        match req.max_forwards() {
            Some(0) => {
                self.reject(from, &req, 483, "Too Many Hops", &"Max-Forwards is 0");
                return;
            }
            Some(n) => req.set_header("Max-Forwards", &(n - 1).to_string()),
            None => req.set_header("Max-Forwards", &(DEFAULT_MAX_FORWARDS - 1).to_string()),
        }
        let invite = method == "INVITE";
        // RFC 3261 §16.2: a stateful proxy answers 100 Trying at once so the caller stops
        // retransmitting; retransmissions get it again until something better arrives.
        let trying = invite.then(|| make_response(&req, 100, "Trying", None).to_bytes());
        if let Some(trying) = &trying {
            self.out.push_back(Output::Send {
                to: from,
                data: trying.clone(),
            });
        }
        let call_id = req.call_id().unwrap_or_default().to_string();
        let initial = req.to_tag().is_none();
        let party = self.request_party(from, &req, &method, initial, &call_id);
        let from_pbx = self.is_pbx(from, &req);

        let dest = match self.route(now, from, &mut req) {
            Ok(dest) => dest,
            Err(RouteError::Unresolved(query)) => {
                if !self.park(query, from, raw, Some(key.clone())) {
                    self.reject(
                        from,
                        &req,
                        503,
                        "Service Unavailable",
                        &"too many requests waiting for DNS",
                    );
                    self.drop_unrouted_call(&call_id, initial && invite);
                }
                return;
            }
            Err(err) => {
                self.reject(from, &req, 502, "Bad Gateway", &err);
                self.drop_unrouted_call(&call_id, initial && invite);
                return;
            }
        };
        // Record-Route on dialog-creating requests (RFC 3261 §16.6 step 4) so in-dialog
        // requests come back through us and media stays anchored. When the two sides use
        // different transports, one entry for each side (RFC 5658 §4): the one facing the
        // sender below, the one facing the next hop on top.
        if initial && creates_dialog(&method) {
            if from.transport != dest.transport {
                req.push_header_top("Record-Route", &self.own_uri(from.transport));
            }
            req.push_header_top("Record-Route", &self.own_uri(dest.transport));
        }
        // RFC 3327: a phone registering through us, whose UA supports Path, gets our Path entry
        // so that the PBX's requests to it (and so its calls) come back through the proxy. A
        // registrar may refuse Path for a UA that did not say `Supported: path` (§5.3), so it is
        // added only then.
        if method == "REGISTER" && !self.is_pbx(from, &req) && supports(&req, "path") {
            req.push_header_top("Path", &self.own_uri(dest.transport));
        }
        let branch = self.new_branch();
        req.push_header_top("Via", &self.via_value(&branch, dest.transport));
        if let Some(party) = party {
            anchor_body(&mut req, &call_id, party, now, media);
        }
        let (dest, udp_fallback) = self.size_switch(dest, &mut req, &branch);

        let ckey = ClientKey {
            branch,
            method: method.clone(),
        };
        self.server.insert(
            key.clone(),
            ServerTxn {
                invite,
                source: from,
                last_response: trying,
                final_status: None,
                client: Some(ckey.clone()),
                acked: false,
                retransmit_interval: T1,
                cancelled: false,
            },
        );
        if invite && initial {
            self.emit_invite(now, from, from_pbx, &req, &call_id);
            // RFC 3891: this INVITE takes over another call of ours (attended transfer).
            let replaced = req
                .header("Replaces")
                .and_then(|r| r.split(';').next())
                .map(|id| id.trim().to_string())
                .filter(|id| *id != call_id && self.dialogs.contains_key(id));
            if let Some(replaced) = replaced {
                self.emit(now, &replaced, CallEventKind::Transferred { by: None });
            }
        }
        if method == "BYE" {
            if let Some(by) = party {
                self.dialogs.remove(&call_id);
                self.emit(now, &call_id, CallEventKind::Bye { by });
            }
        }
        let mut txn = ClientTxn::new(req, dest, call_id);
        txn.server = Some(key);
        txn.party = party;
        txn.initial_invite = invite && initial;
        txn.udp_fallback = udp_fallback;
        self.start_client(now, ckey, txn);
    }

    /// RFC 3261 §18.1.1: a request over [`UDP_REQUEST_LIMIT`] bytes bound for a UDP next hop
    /// goes over TCP instead, with the transport in our Via changed to match. Returns the hop
    /// to send to and, when switched, the request as it would have gone over UDP (sent if the
    /// connection fails).
    fn size_switch(&self, dest: Peer, req: &mut Message, branch: &str) -> (Peer, Option<Message>) {
        if !self.cfg.large_over_tcp
            || dest.transport != Transport::Udp
            || req.to_bytes().len() <= UDP_REQUEST_LIMIT
        {
            return (dest, None);
        }
        let over_udp = req.clone();
        req.remove_first_value("Via");
        req.push_header_top("Via", &self.via_value(branch, Transport::Tcp));
        (Peer::tcp(dest.addr), Some(over_udp))
    }

    /// Sends a client transaction's request and arms its retransmission (unreliable transports
    /// only, §17.1.1.2 / §17.1.2.2) and timeout timers.
    fn start_client(&mut self, now: Instant, key: ClientKey, txn: ClientTxn) {
        self.out.push_back(Output::Send {
            to: txn.dest,
            data: txn.bytes.clone(),
        });
        let reliable = txn.dest.reliable();
        self.client.insert(key.clone(), txn);
        if !reliable {
            self.schedule(now + T1, Timer::ClientRetransmit(key.clone()));
        }
        self.schedule(now + TIMEOUT, Timer::ClientTimeout(key));
    }

    /// Which party sent this request; creates the dialog for an initial INVITE.
    fn request_party(
        &mut self,
        from: Peer,
        req: &Message,
        method: &str,
        initial: bool,
        call_id: &str,
    ) -> Option<Party> {
        let from_tag = req.from_tag().unwrap_or_default().to_string();
        if method == "INVITE" && initial {
            match self.dialogs.get_mut(call_id) {
                // The same call re-sent after a 401/407 challenge: same call, one recording.
                Some(d) if d.caller_tag == from_tag => {
                    d.state = DialogState::Proceeding;
                    d.challenge = None;
                }
                _ => {
                    self.dialogs.insert(
                        call_id.to_string(),
                        Dialog {
                            caller_tag: from_tag,
                            caller_source: from.addr,
                            state: DialogState::Proceeding,
                            challenge: None,
                            callee_tag: None,
                            session_expires: None,
                            late_offer: None,
                        },
                    );
                }
            }
            return Some(Party::Caller);
        }
        let dialog = self.dialogs.get(call_id)?;
        if !dialog.owns(&from_tag, req.to_tag().unwrap_or_default()) {
            // Another fork's dialog (say the caller hanging up a second 2xx): not the
            // recorded call, so no anchoring and no end of the recording.
            return None;
        }
        if dialog.callee_tag.as_deref() == Some(dialog.caller_tag.as_str()) {
            // Both parties chose the same tag (RFC 3261 wants them random, some test tools
            // number them): the tags cannot tell, the caller's address can.
            return Some(if from.addr == dialog.caller_source {
                Party::Caller
            } else {
                Party::Callee
            });
        }
        Some(if dialog.caller_tag == from_tag {
            Party::Caller
        } else {
            Party::Callee
        })
    }

    fn emit_invite(
        &mut self,
        now: Instant,
        from: Peer,
        from_pbx: bool,
        req: &Message,
        call_id: &str,
    ) {
        let info = invite_info(req, from_pbx, from.addr);
        self.emit(now, call_id, CallEventKind::Invite(info));
    }

    /// The ACK for a non-2xx final response ends the server transaction hop by hop; an ACK for
    /// a 2xx is an in-dialog request and is forwarded statelessly (RFC 3261 §16.6 / §17.2.1).
    fn handle_ack(
        &mut self,
        now: Instant,
        from: Peer,
        key: ServerKey,
        mut req: Message,
        raw: &[u8],
        media: &mut dyn MediaAnchor,
    ) {
        if let Some(txn) = self.server.get_mut(&key) {
            if txn.final_status.is_some_and(|s| s >= 300) {
                txn.acked = true;
                return;
            }
        }
        match req.max_forwards() {
            Some(0) => return,
            Some(n) => req.set_header("Max-Forwards", &(n - 1).to_string()),
            None => req.set_header("Max-Forwards", &(DEFAULT_MAX_FORWARDS - 1).to_string()),
        }
        let call_id = req.call_id().unwrap_or_default().to_string();
        let dest = match self.route(now, from, &mut req) {
            Ok(dest) => dest,
            Err(RouteError::Unresolved(query)) => {
                self.park(query, from, raw, None);
                return;
            }
            Err(err) => {
                tracing::warn!(%from, %call_id, error = %err, "cannot route ACK");
                return;
            }
        };
        // Retransmitted ACKs get the same branch: derived from the incoming one (§16.6 step 8).
        let branch = format!(
            "{BRANCH_PREFIX}a{:016x}",
            digest(&key.branch, self.branch_salt)
        );
        req.push_header_top("Via", &self.via_value(&branch, dest.transport));
        if let Some(party) = self.request_party(from, &req, "ACK", false, &call_id) {
            anchor_body(&mut req, &call_id, party, now, media);
            let owed = self
                .dialogs
                .get_mut(&call_id)
                .filter(|d| d.late_offer == Some(party))
                .map(|d| d.late_offer.take());
            if owed.is_some() && req.body().is_empty() {
                self.emit(now, &call_id, CallEventKind::OfferAccepted { by: party });
            }
        }
        self.out.push_back(Output::Send {
            to: dest,
            data: req.to_bytes(),
        });
    }

    /// CANCEL is hop by hop (RFC 3261 §16.10): answer it, then cancel our own pending branch.
    fn handle_cancel(&mut self, now: Instant, from: Peer, key: ServerKey, req: &Message) {
        let invite_key = ServerKey {
            method: "INVITE".into(),
            ..key
        };
        if let Some(query) = self.parked_keys.remove(&invite_key) {
            // The INVITE never left: answer both here (RFC 3261 §9.2).
            self.reply(from, req, 200, "OK");
            let waiting = self.parked.get_mut(&query);
            let parked = waiting.and_then(|list| {
                let at = list
                    .iter()
                    .position(|p| p.key.as_ref() == Some(&invite_key))?;
                Some(list.swap_remove(at))
            });
            if let Some(invite) = parked.and_then(|p| Message::parse(&p.raw).ok()) {
                let (invite, _) = invite;
                self.reply(from, &invite, 487, "Request Terminated");
                let call_id = invite.call_id().unwrap_or_default().to_string();
                self.drop_unrouted_call(&call_id, invite.to_tag().is_none());
            }
            return;
        }
        let Some(txn) = self.server.get_mut(&invite_key) else {
            self.reject(
                from,
                req,
                481,
                "Call/Transaction Does Not Exist",
                &"CANCEL matches no INVITE",
            );
            return;
        };
        txn.cancelled = true;
        let pending = txn.final_status.is_none();
        let client = txn.client.clone();
        self.reply(from, req, 200, "OK");
        if !pending {
            return;
        }
        if let Some(ckey) = client {
            self.cancel_branch(now, &ckey);
        }
    }

    /// Sends CANCEL for a pending INVITE client transaction (same branch, RFC 3261 §9.1), as
    /// its own client transaction whose responses end here.
    fn cancel_branch(&mut self, now: Instant, ckey: &ClientKey) {
        let Some(ctxn) = self.client.get(ckey) else {
            return;
        };
        if ctxn.final_status.is_some() {
            return;
        }
        if !ctxn.provisional {
            // RFC 3261 §9.1: no CANCEL before a provisional response; it goes out with the
            // first one (or Timer B ends the INVITE).
            if let Some(ctxn) = self.client.get_mut(ckey) {
                ctxn.cancel_pending = true;
            }
            return;
        }
        let cancel_key = ClientKey {
            branch: ckey.branch.clone(),
            method: "CANCEL".into(),
        };
        if self.client.contains_key(&cancel_key) {
            return;
        }
        let cancel = build_hop_request(&ctxn.request, "CANCEL", None);
        if let Some(invite) = self.client.get_mut(ckey) {
            invite.cancel_sent = true;
        }
        self.schedule(now + TIMEOUT, Timer::ClientTimeout(ckey.clone()));
        let Some(ctxn) = self.client.get(ckey) else {
            return;
        };
        let mut txn = ClientTxn::new(cancel, ctxn.dest, ctxn.call_id.clone());
        txn.own = true;
        self.start_client(now, cancel_key, txn);
    }

    // ----- responses ------------------------------------------------------------------------

    fn handle_response(
        &mut self,
        now: Instant,
        from: Peer,
        mut resp: Message,
        media: &mut dyn MediaAnchor,
    ) {
        let status = resp.status().unwrap_or(0);
        let valid = resp.validate().is_ok();
        let top = resp.top_via();
        let ours = top.as_ref().is_some_and(|v| {
            v.branch
                .as_deref()
                .is_some_and(|b| b.starts_with(BRANCH_PREFIX))
        });
        if !valid || !ours || !(100..700).contains(&status) {
            self.stats.dropped_responses += 1;
            tracing::debug!(%from, status, "dropping response that is malformed or not ours");
            return;
        }
        let branch = top.and_then(|v| v.branch).unwrap_or_default();
        let method = resp.cseq().map(|(_, m)| m.to_string()).unwrap_or_default();
        resp.remove_first_value("Via");
        let ckey = ClientKey { branch, method };
        let request_method = ckey.method.clone();
        let Some(ctxn) = self.client.get_mut(&ckey) else {
            // No transaction (restart, or a 2xx retransmission after the Accepted state):
            // forward statelessly by Via (RFC 3261 §16.7 step 2, §16.11).
            self.forward_stateless(from, resp);
            return;
        };
        if ctxn.own {
            // Responses to our own CANCEL end there.
            if status >= 200 {
                ctxn.final_status = Some(status);
                self.schedule(now + T4, Timer::ClientCleanup(ckey));
            }
            return;
        }
        if resp.top_via().is_none() {
            // The next hop built its response from another message's Via (SIPp scenarios
            // that copy the CANCEL's, which carries only ours): the request we forwarded
            // holds the Via stack the response must carry back (RFC 3261 §8.2.6.2).
            let upstream: Vec<String> = ctxn
                .request
                .header_all("Via")
                .skip(1)
                .map(str::to_string)
                .collect();
            for via in upstream.iter().rev() {
                resp.push_header_top("Via", via);
            }
            tracing::debug!(%from, status, "response without the upstream Vias: restored from the request");
        }
        let party = ctxn.party.map(Party::other);
        let requester = ctxn.party;
        let call_id = ctxn.call_id.clone();
        let initial_invite = ctxn.initial_invite;
        let invite = ctxn.invite;
        let request_without_sdp = ctxn.request.body().is_empty();
        let first_final = status >= 200 && ctxn.final_status.is_none();
        let mut cleanup_at = None;
        let mut timer_c_at = None;
        let mut send_pending_cancel = false;
        if status < 200 {
            if ctxn.final_status.is_some() {
                // A provisional overtaken by the final response must not go upstream after it
                // (RFC 3261 §17.2.1).
                return;
            }
            send_pending_cancel = !ctxn.provisional && ctxn.cancel_pending;
            ctxn.provisional = true;
            if invite && status > 100 {
                // Timer C (§16.8) restarts with every provisional other than 100.
                let at = now + TIMER_C;
                ctxn.timer_c = Some(at);
                timer_c_at = Some(at);
            }
            if status == 100 {
                // 100 Trying is hop by hop (§16.7 step 5).
                if invite {
                    // Timer C also starts when the INVITE is answered only by a 100.
                    let at = now + TIMER_C;
                    ctxn.timer_c.get_or_insert(at);
                    self.schedule(at, Timer::TimerC(ckey.clone()));
                }
                if send_pending_cancel {
                    self.cancel_branch(now, &ckey);
                }
                return;
            }
        } else if first_final {
            ctxn.final_status = Some(status);
            if invite && status >= 300 {
                // ACK for a non-2xx final response is ours to send (§17.1.1.3).
                let ack = build_hop_request(&ctxn.request, "ACK", resp.header("To"));
                let bytes = ack.to_bytes();
                ctxn.ack = Some(bytes.clone());
                self.out.push_back(Output::Send {
                    to: ctxn.dest,
                    data: bytes,
                });
            }
            let linger = if invite { TIMEOUT } else { T4 };
            cleanup_at = Some(now + linger);
        } else if invite && status >= 300 {
            // Retransmitted non-2xx final: re-ACK, already forwarded.
            if let Some(ack) = ctxn.ack.clone() {
                self.out.push_back(Output::Send {
                    to: ctxn.dest,
                    data: ack,
                });
            }
            return;
        }
        let server_key = ctxn.server.clone();
        if let Some(at) = timer_c_at {
            self.schedule(at, Timer::TimerC(ckey.clone()));
        }
        if send_pending_cancel {
            self.cancel_branch(now, &ckey);
        }
        if let Some(at) = cleanup_at {
            self.schedule(at, Timer::ClientCleanup(ckey));
        }
        // Only the call's live dialog is anchored: a 2xx retransmitted after the BYE, or one from
        // a losing fork, must not open or move media.
        let live = self.dialogs.get(&call_id).is_some_and(|d| {
            d.owns(
                resp.from_tag().unwrap_or_default(),
                resp.to_tag().unwrap_or_default(),
            )
        });
        if let Some(party) = party.filter(|_| live) {
            anchor_body(&mut resp, &call_id, party, now, media);
        }
        if initial_invite && first_final {
            self.invite_final(now, &call_id, status, &resp, server_key.as_ref());
        }
        if live && first_final && (200..300).contains(&status) && invite {
            let offer_in_2xx = request_without_sdp && !resp.body().is_empty();
            if let Some(d) = self.dialogs.get_mut(&call_id) {
                d.late_offer = if offer_in_2xx { requester } else { None };
            }
        }
        if live && first_final && (200..300).contains(&status) {
            match request_method.as_str() {
                "REFER" => self.emit(now, &call_id, CallEventKind::Transferred { by: requester }),
                "INVITE" | "UPDATE" => self.session_refreshed(now, &call_id, &resp),
                _ => {}
            }
        }
        if resp.top_via().is_none() {
            // RFC 3261 §16.7 step 3: with no Via left the response was meant for us; it goes
            // nowhere (our transaction has taken note of it above).
            self.stats.dropped_responses += 1;
            tracing::warn!(%from, status, call_id = %call_id, "response with no Via but ours: not forwarded");
            return;
        }
        let bytes = resp.to_bytes();
        let Some(skey) = server_key else { return };
        let Some(stxn) = self.server.get_mut(&skey) else {
            self.forward_stateless(from, resp);
            return;
        };
        stxn.last_response = Some(bytes.clone());
        self.out.push_back(Output::Send {
            to: stxn.source,
            data: bytes,
        });
        if status >= 200 && stxn.final_status.is_none() {
            stxn.final_status = Some(status);
            // Timer G only over unreliable transports (RFC 3261 §17.2.1).
            if stxn.invite && status >= 300 && !stxn.source.reliable() {
                stxn.retransmit_interval = T1;
                self.schedule(now + T1, Timer::ServerRetransmit(skey.clone()));
            }
            // Keep the transaction to answer retransmissions (Timers H/J, and 2xx wait).
            self.schedule(now + TIMEOUT, Timer::ServerCleanup(skey));
        }
    }

    /// A 2xx to INVITE or UPDATE sets or refreshes the session timer (RFC 4028 §9/§10): the
    /// session lasts Session-Expires seconds from now unless refreshed; a 2xx without the header
    /// turns the timer off.
    fn session_refreshed(&mut self, now: Instant, call_id: &str, resp: &Message) {
        let expires = resp
            .header("Session-Expires")
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0);
        let Some(dialog) = self.dialogs.get_mut(call_id) else {
            return;
        };
        dialog.session_expires = expires.map(|s| now + Duration::from_secs(s));
        if let Some(at) = dialog.session_expires {
            self.schedule(at, Timer::SessionExpiry(call_id.to_string()));
        }
    }

    /// Reports the outcome of an initial INVITE to the registry.
    fn invite_final(
        &mut self,
        now: Instant,
        call_id: &str,
        status: u16,
        resp: &Message,
        server_key: Option<&ServerKey>,
    ) {
        let Some(dialog) = self.dialogs.get_mut(call_id) else {
            return;
        };
        if status < 300 {
            if dialog.state != DialogState::Confirmed {
                dialog.state = DialogState::Confirmed;
                dialog.callee_tag = resp.to_tag().map(str::to_string);
                self.emit(now, call_id, CallEventKind::Answered);
            }
            return;
        }
        let reason = reason_of(resp);
        if status == 401 || status == 407 {
            // The caller will most likely re-send the INVITE with credentials: same call.
            dialog.state = DialogState::Challenged;
            dialog.challenge = Some((status, reason));
            self.schedule(now + TIMEOUT, Timer::CallCleanup(call_id.to_string()));
            return;
        }
        if dialog.state == DialogState::Confirmed {
            return;
        }
        let cancelled = server_key
            .and_then(|k| self.server.get(k))
            .is_some_and(|t| t.cancelled);
        self.dialogs.remove(call_id);
        self.emit(
            now,
            call_id,
            CallEventKind::Failed {
                code: status,
                reason,
                cancelled,
            },
        );
    }

    fn forward_stateless(&mut self, from: Peer, resp: Message) {
        let dest = resp
            .top_via()
            .and_then(|v| via_destination(&v))
            .filter(|d| !self.is_local(d.addr));
        match dest {
            Some(to) => self.out.push_back(Output::Send {
                to,
                data: resp.to_bytes(),
            }),
            None => {
                self.stats.dropped_responses += 1;
                tracing::debug!(%from, "response has no usable Via to forward to");
            }
        }
    }

    // ----- timers ---------------------------------------------------------------------------

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::ClientRetransmit(key) => {
                let Some(txn) = self.client.get_mut(&key) else {
                    return;
                };
                // Timer A stops at the first provisional; Timer E goes on at T2 (§17.1.2.2).
                if txn.final_status.is_some() || (txn.invite && txn.provisional && !txn.cancel_sent)
                {
                    return;
                }
                self.out.push_back(Output::Send {
                    to: txn.dest,
                    data: txn.bytes.clone(),
                });
                txn.retransmit_interval = if txn.invite {
                    txn.retransmit_interval * 2
                } else if txn.provisional {
                    T2
                } else {
                    (txn.retransmit_interval * 2).min(T2)
                };
                let next = now + txn.retransmit_interval;
                self.schedule(next, Timer::ClientRetransmit(key));
            }
            Timer::ClientTimeout(key) => {
                let Some(txn) = self.client.get(&key) else {
                    return;
                };
                // Timer B ends with the first provisional (§17.1.1.2); Timer C takes over.
                if txn.final_status.is_some() || (txn.invite && txn.provisional && !txn.cancel_sent)
                {
                    return;
                }
                let Some(txn) = self.client.remove(&key) else {
                    return;
                };
                tracing::info!(call_id = %txn.call_id, method = %key.method, "no final response in time");
                if txn.own {
                    return;
                }
                // Timer B: the proxy answers 408 itself (§16.8). A non-INVITE that timed out
                // gets no 408 from a proxy (RFC 4320 §4.2): the client's own Timer F covers it.
                if let Some(skey) = txn.server.clone() {
                    if let Some(stxn) = self.server.get_mut(&skey) {
                        if stxn.final_status.is_none() && txn.invite {
                            let resp = make_response(
                                &req_without_our_via(&txn.request),
                                408,
                                "Request Timeout",
                                None,
                            );
                            let bytes = resp.to_bytes();
                            stxn.last_response = Some(bytes.clone());
                            stxn.final_status = Some(408);
                            let to = stxn.source;
                            self.out.push_back(Output::Send { to, data: bytes });
                        }
                        // Either way the server transaction goes after absorbing late
                        // retransmissions for a while.
                        self.schedule(now + TIMEOUT, Timer::ServerCleanup(skey));
                    }
                }
                if txn.initial_invite
                    && self
                        .dialogs
                        .get(&txn.call_id)
                        .is_some_and(|d| d.state != DialogState::Confirmed)
                {
                    self.dialogs.remove(&txn.call_id);
                    let cancelled = txn
                        .server
                        .as_ref()
                        .and_then(|k| self.server.get(k))
                        .is_some_and(|t| t.cancelled);
                    self.emit(
                        now,
                        &txn.call_id,
                        CallEventKind::Failed {
                            code: 408,
                            reason: "Request Timeout".into(),
                            cancelled,
                        },
                    );
                }
            }
            Timer::TimerC(key) => {
                // No final response long after the last provisional: cancel the branch; its 487
                // goes upstream as the final response (§16.8).
                let due = self.client.get(&key).is_some_and(|t| {
                    t.final_status.is_none() && t.timer_c.is_some_and(|at| at <= now)
                });
                if due {
                    tracing::info!(branch = %key.branch, "Timer C fired: cancelling the unanswered INVITE");
                    self.cancel_branch(now, &key);
                }
            }
            Timer::SessionExpiry(call_id) => {
                let expired = self
                    .dialogs
                    .get(&call_id)
                    .and_then(|d| d.session_expires)
                    .is_some_and(|at| at <= now);
                if expired {
                    // The dialog stays, so a late BYE still ends the recording where it should;
                    // the registry ends a call without live media at once and asks us to forget
                    // it, and media that stops ends the rest (media timeout).
                    tracing::info!(%call_id, "session timer expired without refresh");
                    if let Some(d) = self.dialogs.get_mut(&call_id) {
                        d.session_expires = None;
                    }
                    self.emit(now, &call_id, CallEventKind::SessionExpired);
                }
            }
            Timer::ClientCleanup(key) => {
                self.client.remove(&key);
            }
            Timer::ServerRetransmit(key) => {
                let Some(txn) = self.server.get_mut(&key) else {
                    return;
                };
                if txn.acked {
                    return;
                }
                if let Some(resp) = txn.last_response.clone() {
                    self.out.push_back(Output::Send {
                        to: txn.source,
                        data: resp,
                    });
                }
                txn.retransmit_interval = (txn.retransmit_interval * 2).min(T2);
                let next = now + txn.retransmit_interval;
                self.schedule(next, Timer::ServerRetransmit(key));
            }
            Timer::ServerCleanup(key) => {
                self.server.remove(&key);
            }
            Timer::CallCleanup(call_id) => {
                let Some(dialog) = self.dialogs.get(&call_id) else {
                    return;
                };
                if dialog.state != DialogState::Challenged {
                    return;
                }
                let (code, reason) = dialog
                    .challenge
                    .clone()
                    .unwrap_or((407, "Proxy Authentication Required".into()));
                self.dialogs.remove(&call_id);
                self.emit(
                    now,
                    &call_id,
                    CallEventKind::Failed {
                        code,
                        reason,
                        cancelled: false,
                    },
                );
            }
        }
    }

    // ----- helpers --------------------------------------------------------------------------

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    fn emit(&mut self, at: Instant, call_id: &str, kind: CallEventKind) {
        self.out.push_back(Output::Event(CallEvent {
            call_id: call_id.to_string(),
            at,
            kind,
        }));
    }

    /// Answers a request the proxy refuses, logging it once with its source and why.
    fn reject(
        &mut self,
        from: Peer,
        req: &Message,
        code: u16,
        reason: &str,
        why: &dyn std::fmt::Display,
    ) {
        self.stats.rejected_requests += 1;
        if req.method() == Some("ACK") {
            // An ACK gets no response (RFC 3261 §17.2.1): it is dropped.
            tracing::warn!(%from, call_id = req.call_id().unwrap_or_default(), reason = %why, "dropping invalid ACK");
            return;
        }
        tracing::warn!(%from, code, call_id = req.call_id().unwrap_or_default(), reason = %why, "rejecting request");
        self.reply(from, req, code, reason);
    }

    fn reply(&mut self, to: Peer, req: &Message, code: u16, reason: &str) {
        if req.method() == Some("ACK") {
            return;
        }
        let resp = make_response(req, code, reason, None);
        self.out.push_back(Output::Send {
            to,
            data: resp.to_bytes(),
        });
    }

    /// An initial INVITE we could not route leaves no dialog behind; the registry never heard
    /// of it (it learns of a call only once the INVITE is forwarded).
    fn drop_unrouted_call(&mut self, call_id: &str, initial_invite: bool) {
        if initial_invite {
            self.dialogs.remove(call_id);
        }
    }

    fn new_branch(&mut self) -> String {
        self.branch_seq += 1;
        format!(
            "{BRANCH_PREFIX}{:x}.{:x}",
            self.branch_salt, self.branch_seq
        )
    }

    fn via_value(&self, branch: &str, transport: Transport) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.as_str().to_ascii_uppercase(),
            host_port(self.advertised(transport))
        )
    }

    /// Our address on `transport` (the first advertised one of it, else the first of any).
    fn advertised(&self, transport: Transport) -> SocketAddr {
        self.cfg
            .advertise
            .iter()
            .find(|p| p.transport == transport)
            .or(self.cfg.advertise.first())
            .map(|p| p.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)))
    }

    /// Our URI for Record-Route and Path on the side that uses `transport` (UDP is the default
    /// and is not written, so a UDP-only setup looks exactly as before TCP existed).
    fn own_uri(&self, transport: Transport) -> String {
        let host = host_port(self.advertised(transport));
        match transport {
            Transport::Udp => format!("<sip:{host};lr>"),
            Transport::Tcp => format!("<sip:{host};transport=tcp;lr>"),
        }
    }

    /// Whether a request comes from the PBX. Over UDP by source address and port. Over TCP the
    /// PBX's own connections come from ephemeral ports, so: a connection we opened to it, or one
    /// from its IP whose request names the PBX's address in its Via sent-by (a phone on the
    /// PBX's host has another port there).
    fn is_pbx(&self, from: Peer, req: &Message) -> bool {
        self.cfg.pbx.iter().any(|p| match from.transport {
            Transport::Udp => p.addr == from.addr,
            Transport::Tcp => {
                p.addr == from.addr
                    || (p.addr.ip() == from.addr.ip() && via_sent_by(req) == Some(p.addr))
            }
        })
    }

    fn is_local(&self, addr: SocketAddr) -> bool {
        self.cfg.advertise.iter().any(|p| p.addr == addr) || self.cfg.local.contains(&addr)
    }

    fn is_local_uri(&self, uri: &str) -> bool {
        uri_destination(uri).is_ok_and(|d| self.is_local(d.addr))
    }

    /// Decides the next hop (RFC 3261 §16.4-§16.6): strips our own Route entry, follows the
    /// next Route (loose routing), else the Request-URI for the PBX's own requests, else the PBX.
    fn route(&self, now: Instant, from: Peer, req: &mut Message) -> Result<Peer, RouteError> {
        // A strict-routing previous hop put our Record-Route into the Request-URI (§16.4).
        // Only a URI we could have put into Record-Route counts: ours, with no user part (a
        // phone whose domain is the proxy dials sip:number@proxy, which is a target).
        let strict = req
            .request_uri()
            .is_some_and(|u| self.is_local_uri(u) && parse_uri(u).is_ok_and(|p| p.user.is_none()));
        if strict {
            let routes: Vec<String> = req.values("Route").iter().map(|s| s.to_string()).collect();
            if let Some((last, rest)) = routes.split_last() {
                if let Ok(na) = parse_name_addr(last) {
                    req.set_request_uri(&na.uri);
                    replace_routes(req, rest);
                }
            }
        }
        // Leading Route entries naming us (by address, or by a name that resolves to us) are
        // ours to remove; the first other one is the next hop (loose routing).
        while let Some(first) = req.values("Route").first().map(|s| s.to_string()) {
            let na = parse_name_addr(&first).map_err(|_| RouteError::BadUri(first.clone()))?;
            let dest = self.resolve(now, uri_target(&na.uri)?)?;
            if !self.is_local(dest.addr) {
                return Ok(dest);
            }
            req.remove_first_value("Route");
        }
        // Everything from the phone side goes to the PBX (which anchors every dialog); only the
        // PBX's own requests are routed by their Request-URI.
        if self.is_pbx(from, req) {
            let uri = req.request_uri().unwrap_or_default().to_string();
            let dest = self.resolve(now, uri_target(&uri)?)?;
            if !self.is_local(dest.addr) {
                return Ok(dest);
            }
        }
        self.cfg.pbx.first().copied().ok_or(RouteError::NoPbx)
    }
}

impl Proxy {
    /// An address for `target`: itself, or a cached answer for its name (the first target;
    /// RFC 3263 failover to the next is not done), or `Unresolved` to wait for DNS.
    fn resolve(&self, now: Instant, target: Target) -> Result<Peer, RouteError> {
        let query = match target {
            Target::Addr(peer) => return Ok(peer),
            Target::Name(query) => query,
        };
        match self.dns_cache.get(&query) {
            Some((answer, until)) if *until > now => match answer {
                Ok(targets) => targets
                    .first()
                    .copied()
                    .ok_or_else(|| RouteError::NotFound(query.clone(), "no address".into())),
                Err(e) => Err(RouteError::NotFound(query.clone(), e.clone())),
            },
            _ => Err(RouteError::Unresolved(query)),
        }
    }
}

/// Status to answer a request that failed validation with.
fn reject_status(invalid: &msg::Invalid) -> (u16, &'static str) {
    match invalid {
        msg::Invalid::Version(_) => (505, "Version Not Supported"),
        _ => (400, "Bad Request"),
    }
}

/// Whether the message lists `option` in a Supported header (compact form `k` too).
fn supports(msg: &Message, option: &str) -> bool {
    msg.values("Supported")
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case(option))
}

/// Methods whose initial request creates a dialog we must stay in (RFC 3261 §16.6 step 4;
/// RFC 6665 for SUBSCRIBE/NOTIFY, RFC 3515 for REFER).
fn creates_dialog(method: &str) -> bool {
    matches!(method, "INVITE" | "SUBSCRIBE" | "REFER" | "NOTIFY")
}

/// Server transaction key of a request (§17.2.3), or `None` without a usable Via.
fn server_key(req: &Message) -> Option<ServerKey> {
    let via = req.top_via()?;
    let method = match req.method()? {
        "ACK" => "INVITE".to_string(),
        m => m.to_string(),
    };
    let sent_by = match via.port {
        Some(p) => format!("{}:{p}", via.host),
        None => via.host.clone(),
    };
    let (cseq, _) = req.cseq()?;
    let call_id = req.call_id().unwrap_or_default().to_string();
    let branch = match via.branch {
        Some(b) if b.starts_with("z9hG4bK") => b,
        // RFC 2543 peers: match on the request's identifying fields instead (§17.2.3).
        _ => format!(
            "2543:{}:{}",
            req.from_tag().unwrap_or_default(),
            req.request_uri().unwrap_or_default()
        ),
    };
    Some(ServerKey {
        branch,
        sent_by,
        method,
        call_id,
        cseq,
        request_uri: req.request_uri().unwrap_or_default().to_string(),
    })
}

/// Rewrites an SDP body through the media anchor, if the message carries one.
fn anchor_body(
    msg: &mut Message,
    call_id: &str,
    party: Party,
    now: Instant,
    media: &mut dyn MediaAnchor,
) {
    let is_sdp = msg.header("Content-Type").is_some_and(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/sdp")
    });
    if !is_sdp || msg.body().is_empty() {
        return;
    }
    if let Some(body) = media.on_sdp(call_id, party, msg.body(), now) {
        msg.set_body(body);
    }
}

/// Builds the CANCEL or ACK (for a non-2xx) that goes hop by hop with the same branch as the
/// INVITE we sent (RFC 3261 §9.1, §17.1.1.3): same Request-URI, Call-ID, From, CSeq number and
/// Route; To from the response for ACK.
fn build_hop_request(invite: &Message, method: &str, to: Option<&str>) -> Message {
    let uri = invite.request_uri().unwrap_or_default();
    let mut text = format!("{method} {uri} SIP/2.0\r\n");
    if let Some(via) = invite.values("Via").first() {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for route in invite.header_all("Route") {
        text.push_str(&format!("Route: {route}\r\n"));
    }
    text.push_str("Max-Forwards: 70\r\n");
    for (name, value) in [
        ("From", invite.header("From")),
        ("To", to.or(invite.header("To"))),
        ("Call-ID", invite.call_id()),
    ] {
        text.push_str(&format!("{name}: {}\r\n", value.unwrap_or_default()));
    }
    let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    text.push_str(&format!(
        "CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ));
    // The text is built from fields of a message that parsed, so it parses; fall back to the
    // INVITE itself only to stay panic-free.
    match Message::parse(text.as_bytes()) {
        Ok((m, _)) => m,
        Err(_) => invite.clone(),
    }
}

/// For a datagram that does not parse because of its body framing: the request head alone
/// (Content-Length lines dropped), if that is a request we can answer.
fn head_for_reply(data: &[u8]) -> Option<Message> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| data.windows(2).position(|w| w == b"\n\n").map(|i| i + 1))?;
    let mut head = Vec::with_capacity(end + 2);
    for line in data.get(..end)?.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        if name == "content-length" || name == "l" {
            continue;
        }
        head.extend_from_slice(line);
    }
    head.extend_from_slice(b"\r\n");
    let (msg, _) = Message::parse(&head).ok()?;
    (msg.is_request() && msg.can_reply()).then_some(msg)
}

/// The request as it came in (our Via removed), to build a response to send upstream.
fn req_without_our_via(req: &Message) -> Message {
    let mut copy = req.clone();
    copy.remove_first_value("Via");
    copy
}

fn reason_of(resp: &Message) -> String {
    match resp.start_line() {
        msg::StartLine::Response { reason, .. } => reason.clone(),
        msg::StartLine::Request { .. } => String::new(),
    }
}

/// Replaces the Route set with `routes`, in order.
fn replace_routes(req: &mut Message, routes: &[String]) {
    req.remove_header("Route");
    for route in routes.iter().rev() {
        req.push_header_top("Route", route);
    }
}

/// "host:port" with IPv6 in brackets.
pub fn host_port(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Where a SIP URI points when it names an IP literal (default port 5060), over which
/// transport: its `transport` parameter, UDP when there is none. A host name is an error here;
/// see [`uri_target`].
pub fn uri_destination(uri: &str) -> Result<Peer, RouteError> {
    match uri_target(uri)? {
        Target::Addr(peer) => Ok(peer),
        Target::Name(query) => Err(RouteError::HostName(query.host)),
    }
}

/// Where a SIP URI points: an address (IP literal, `maddr` honoured, default port 5060, UDP
/// unless `transport` says otherwise) or a name to resolve. `sips:` needs TLS, which is not
/// served.
pub fn uri_target(uri: &str) -> Result<Target, RouteError> {
    let parsed = parse_uri(uri).map_err(|_| RouteError::BadUri(uri.to_string()))?;
    match parsed.scheme.to_ascii_lowercase().as_str() {
        "sip" => {}
        "sips" => return Err(RouteError::Transport("TLS (sips URI)".into())),
        other => return Err(RouteError::Scheme(other.to_string())),
    }
    let transport = match parsed.param("transport").flatten() {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("udp") => Some(Transport::Udp),
        Some(t) if t.eq_ignore_ascii_case("tcp") => Some(Transport::Tcp),
        Some(other) => return Err(RouteError::Transport(other.to_ascii_uppercase())),
    };
    let host = parsed
        .param("maddr")
        .flatten()
        .map(str::to_string)
        .unwrap_or(parsed.host.clone());
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => Ok(Target::Addr(Peer {
            transport: transport.unwrap_or(Transport::Udp),
            addr: SocketAddr::new(ip, parsed.port.unwrap_or(5060)),
        })),
        Err(_) if is_host_name(&host) => Ok(Target::Name(NameQuery {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port: parsed.port,
            transport,
        })),
        Err(_) => Err(RouteError::BadUri(uri.to_string())),
    }
}

/// RFC 3261 §25.1 hostname: dot-separated labels of letters, digits and hyphens.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The top Via's sent-by, when it is an IP literal (default port 5060).
fn via_sent_by(msg: &Message) -> Option<SocketAddr> {
    let via = msg.top_via()?;
    let ip: IpAddr = via.host.parse().ok()?;
    Some(SocketAddr::new(ip, via.port.unwrap_or(5060)))
}

/// Where a response goes by its Via (RFC 3261 §18.2.2 with RFC 3581 rport): over TCP to the
/// connection from that address if it is still open, else a new one; over UDP as a datagram.
fn via_destination(via: &msg::Via) -> Option<Peer> {
    let host = via.received.clone().unwrap_or_else(|| via.host.clone());
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = match via.rport {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    let addr = SocketAddr::new(ip, port);
    if via.transport.eq_ignore_ascii_case("tcp") {
        Some(Peer::tcp(addr))
    } else if via.transport.eq_ignore_ascii_case("udp") {
        Some(Peer::udp(addr))
    } else {
        None
    }
}

fn digest(s: &str, salt: u64) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    salt.hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;

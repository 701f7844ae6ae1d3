//! The RTP/RTCP relay of one media stream: two port pairs, one facing the caller and one facing the
//! callee. A packet from one party is sent on, from the socket facing the other party, to that
//! party's latched source address (or its SDP address until it has one). A copy of each RTP packet
//! goes to the recorder's tap after forwarding.
//!
//! **Source validation (RTP bleed protection).** Every port (RTP and RTCP of each side) has its own
//! `Latch`, which decides from which source it takes packets:
//!
//! 1. *Closed until offer and answer.* Until both parties' SDP addresses are known, packets are
//!    dropped (`early_dropped`): nobody can legitimately send to a port before the SDP naming it
//!    has been forwarded, so only port scanners get here that early.
//! 2. *Candidates.* Only a packet that parses as RTP version 2 (on the RTP port) or RTCP (on the
//!    RTCP port) can latch; its SSRC identifies the stream. Anything else (STUN, DTLS, muxed RTCP,
//!    junk) is forwarded only from the latched source and never moves the latch (`invalid_dropped`).
//! 3. *SDP address first.* A packet from exactly the SDP address:port latches at once, and such a
//!    latch is never displaced by another source (only a new SDP address restarts learning).
//! 4. *Learning.* Otherwise (NAT) the first candidate becomes the provisional source. Its packets
//!    are held back (at most `learn − 1`, preallocated) and released in order once it has sent
//!    `learn` consecutive packets with one SSRC (RTP 5, RTCP 2), or dropped if another source wins.
//!    A source on the SDP address's IP outranks one on another IP and takes over at once. During
//!    learning a same-ranked source takes over with its own run of `learn` uninterrupted packets;
//!    learning ends at the latest `window` after it began (RTP 3 s, RTCP 12 s).
//!    *Head start:* for `head_start` after the port opens or its SDP address changes (RTP 100 ms,
//!    RTCP 10 s, longer than the first RTCP interval) a provisional source is neither confirmed
//!    nor sent to; the other party's packets keep going to the SDP address. So a sprayer cannot
//!    divert or inject media in the moment before an endpoint at its SDP address speaks.
//! 5. *Re-latching (NAT rebinding).* A latched source is replaced only by a source of at least its
//!    rank that sends `rebind` consecutive packets with one SSRC (RTP 5, RTCP 2) while the latched
//!    source has been silent for `silence` (RTP 1 s, RTCP 12 s: RTCP comes every ~5 s). Packets
//!    from any other source are dropped and counted (`foreign_dropped`); a re-latch is counted in
//!    `relatched`.
//!
//! An SDP update that repeats the known address keeps the latch (retransmissions, hold). Hot path:
//! no allocation, lock or syscall beyond the receive/send itself per packet; the held-back slots
//! are allocated once per stream; counters are relaxed atomics.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::media::ports::{Lease, PortPair};
use crate::media::rtp;
use crate::media::tap::Tap;
use crate::sip::proxy::Party;

/// Largest datagram the relay forwards whole (bigger ones are truncated by the kernel and dropped).
const MAX_DATAGRAM: usize = 2048;
/// How often the inactivity timeout is checked.
const TIMEOUT_CHECK: Duration = Duration::from_millis(500);

/// How a port learns its source.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// Consecutive packets (one SSRC) that confirm a provisional source.
    learn: u32,
    /// Consecutive packets (one SSRC) a new source needs to replace a silent latched one.
    rebind: u32,
    /// How long the latched source must have been silent before it can be replaced.
    silence: Duration,
    /// Learning ends at the latest this long after the provisional source's first packet.
    window: Duration,
    /// After the port opens (or the SDP address changes), how long only the SDP address can be
    /// confirmed and receive: a provisional source waits.
    head_start: Duration,
}

const RTP_RULES: Rules = Rules {
    learn: 5,
    rebind: 5,
    silence: Duration::from_secs(1),
    window: Duration::from_secs(3),
    head_start: Duration::from_millis(100),
};
/// RTCP arrives about every 5 s (RFC 3550 §6.2), so a live source is silent for up to ~7.5 s.
const RTCP_RULES: Rules = Rules {
    learn: 2,
    rebind: 2,
    silence: Duration::from_secs(12),
    window: Duration::from_secs(12),
    // Longer than the first RTCP interval (at most 7.5 s, RFC 3550 §6.2): an endpoint at its SDP
    // address has latched its RTCP before a sprayer could.
    head_start: Duration::from_secs(10),
};

/// Changes the call registry makes to a running relay.
#[derive(Clone)]
pub enum RelayControl {
    /// A party's SDP named these addresses: send to them until the party's own packets show
    /// where it really is. A changed address restarts that party's source validation.
    Remote {
        /// Whose address.
        party: Party,
        /// RTP destination.
        rtp: SocketAddr,
        /// RTCP destination.
        rtcp: SocketAddr,
    },
    /// Start or stop copying RTP to the recorder.
    Tap(Option<Tap>),
    /// The call is answered (or resumed after a hold): from now on, no packets for the
    /// configured time ends the stream. The idle time counts from this message.
    Arm,
    /// The call is on hold: a held stream may carry no RTP for minutes, so the inactivity
    /// timeout is off until the next `Arm`.
    Disarm,
}

/// Something the relay reports to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// No packet in either direction for the media timeout; the relay has stopped and its ports
    /// are free.
    Timeout {
        /// Call-ID of the call.
        call_id: Arc<str>,
        /// Index of the stream (m= line).
        stream: usize,
    },
}

/// Per-party packet counters of one stream.
#[derive(Debug, Default)]
pub struct PartyCounters {
    /// RTP packets received from the party and forwarded.
    pub rtp_forwarded: AtomicU64,
    /// RTCP packets received from the party and forwarded.
    pub rtcp_forwarded: AtomicU64,
    /// RTP/RTCP packets from a source other than the latched one, dropped (RTP bleed
    /// protection), including held-back packets of a provisional source that lost.
    pub foreign_dropped: AtomicU64,
    /// Packets that are not RTP (on the RTP port) or RTCP (on the RTCP port) and do not come from
    /// the latched source, dropped.
    pub invalid_dropped: AtomicU64,
    /// Packets that arrived before both parties' SDP was known, dropped.
    pub early_dropped: AtomicU64,
    /// Times a latched source was replaced (NAT rebinding, or the SDP address taking over).
    pub relatched: AtomicU64,
    /// Packets that had nowhere to go yet (the other party's address is unknown) or could not be
    /// sent without blocking.
    pub undeliverable: AtomicU64,
}

/// Counters of one stream, shared with the registry.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Packets from the caller.
    pub caller: PartyCounters,
    /// Packets from the callee.
    pub callee: PartyCounters,
}

impl RelayCounters {
    /// Counters of `party`'s packets.
    pub fn of(&self, party: Party) -> &PartyCounters {
        match party {
            Party::Caller => &self.caller,
            Party::Callee => &self.callee,
        }
    }
}

/// Handle to a running stream relay; dropping it stops the relay and frees its ports.
pub struct RelayHandle {
    ctl: mpsc::UnboundedSender<RelayControl>,
    /// Counters, readable at any time.
    pub counters: Arc<RelayCounters>,
    caller_facing: SocketAddr,
    callee_facing: SocketAddr,
}

impl RelayHandle {
    /// Sends a control message (ignored if the relay has already stopped).
    pub fn control(&self, msg: RelayControl) {
        let _ = self.ctl.send(msg);
    }

    /// Local RTP address of the socket that faces `party` (the party sends there).
    pub fn local_rtp(&self, facing: Party) -> SocketAddr {
        match facing {
            Party::Caller => self.caller_facing,
            Party::Callee => self.callee_facing,
        }
    }
}

/// Starts the relay of one stream on the current tokio runtime.
pub fn spawn(
    call_id: Arc<str>,
    stream: usize,
    caller_facing: PortPair,
    callee_facing: PortPair,
    timeout: Duration,
    events: mpsc::UnboundedSender<RelayEvent>,
) -> std::io::Result<RelayHandle> {
    let caller_addr = caller_facing.rtp.local_addr()?;
    let callee_addr = callee_facing.rtp.local_addr()?;
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let counters = Arc::new(RelayCounters::default());
    let (caller_side, caller_lease) = Side::new(caller_facing)?;
    let (callee_side, callee_lease) = Side::new(callee_facing)?;
    let relay = Relay {
        sides: [caller_side, callee_side],
        _leases: [caller_lease, callee_lease],
        counters: Arc::clone(&counters),
        tap: None,
        timeout,
        armed_at: None,
        last_packet: Instant::now(),
        open: false,
        call_id: Arc::clone(&call_id),
    };
    tokio::spawn(relay.run(call_id, stream, ctl_rx, events));
    Ok(RelayHandle {
        ctl,
        counters,
        caller_facing: caller_addr,
        callee_facing: callee_addr,
    })
}

/// How well a source matches the party's SDP address; a higher rank wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Any other address (or no SDP address known).
    Other,
    /// The SDP address's IP, another port.
    SameIp,
    /// Exactly the SDP address and port.
    Sdp,
}

/// The source a port takes packets from.
#[derive(Debug, Clone, Copy)]
struct Source {
    addr: SocketAddr,
    rank: Rank,
    /// SSRC of its last candidate packet, and how many in a row carried it.
    ssrc: u32,
    run: u32,
    /// Learning is over (or never started: an SDP-address source is confirmed at once).
    confirmed: bool,
    /// When it became the source.
    since: Instant,
    /// Its last packet of any kind.
    last_seen: Instant,
}

impl Source {
    fn new(addr: SocketAddr, rank: Rank, ssrc: u32, now: Instant) -> Source {
        Source {
            addr,
            rank,
            ssrc,
            run: 1,
            confirmed: rank == Rank::Sdp,
            since: now,
            last_seen: now,
        }
    }
}

/// Another source trying to take over: its run of uninterrupted packets with one SSRC.
#[derive(Debug, Clone, Copy)]
struct Challenger {
    addr: SocketAddr,
    ssrc: u32,
    run: u32,
}

/// What a packet is, as far as latching goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// RTP (on the RTP port) or RTCP (on the RTCP port), with its SSRC: may latch.
    Candidate(u32),
    /// Anything else (muxed RTCP, STUN, DTLS, junk): never latches.
    Other,
}

/// Classifies a datagram without allocating.
fn classify(kind: Kind, packet: &[u8]) -> Class {
    match kind {
        Kind::Rtp if rtp::is_rtcp(packet) => Class::Other,
        Kind::Rtp => match rtp::parse(packet) {
            Ok((header, _)) => Class::Candidate(header.ssrc),
            Err(_) => Class::Other,
        },
        // RFC 3550 §6.4: every RTCP packet carries its sender's SSRC in octets 4..8.
        Kind::Rtcp => match packet {
            [_, _, _, _, a, b, c, d, ..] if rtp::is_rtcp(packet) => {
                Class::Candidate(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            _ => Class::Other,
        },
    }
}

/// What a latch makes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Send it on; first send the held-back packets if `release`. `relatched` when it replaced
    /// a confirmed source.
    Forward { release: bool, relatched: bool },
    /// Kept until its provisional source has proven itself.
    Held,
    /// A candidate from a source other than the latched one: dropped.
    Foreign,
    /// Not a candidate and not from the latched source: dropped.
    Invalid,
}

/// Packets of a provisional source, kept until it is confirmed. The storage is allocated once,
/// when the stream starts; holding and releasing never allocate.
struct HeldBack {
    data: Box<[u8]>,
    /// Length and arrival of each held packet, in order.
    meta: Vec<(usize, Instant)>,
    cap: usize,
}

impl HeldBack {
    fn new(cap: usize) -> HeldBack {
        HeldBack {
            data: vec![0; cap * MAX_DATAGRAM].into_boxed_slice(),
            meta: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Keeps a copy; false if full.
    fn push(&mut self, packet: &[u8], arrival: Instant) -> bool {
        let i = self.meta.len();
        let Some(slot) = self.data.get_mut(i * MAX_DATAGRAM..(i + 1) * MAX_DATAGRAM) else {
            return false;
        };
        let Some(dst) = slot.get_mut(..packet.len()) else {
            return false;
        };
        if i >= self.cap {
            return false;
        }
        dst.copy_from_slice(packet);
        self.meta.push((packet.len(), arrival));
        true
    }

    fn len(&self) -> usize {
        self.meta.len()
    }

    fn get(&self, i: usize) -> Option<(&[u8], Instant)> {
        let (len, arrival) = *self.meta.get(i)?;
        let packet = self.data.get(i * MAX_DATAGRAM..i * MAX_DATAGRAM + len)?;
        Some((packet, arrival))
    }

    /// Forgets every held packet; returns how many there were.
    fn clear(&mut self) -> usize {
        let n = self.meta.len();
        self.meta.clear();
        n
    }
}

/// Source validation of one port (RTP or RTCP of one side); see the module documentation.
/// Sans-IO: the caller passes the arrival time, so tests drive it with virtual time.
struct Latch {
    rules: Rules,
    /// Where the party's SDP says it is.
    sdp: Option<SocketAddr>,
    source: Option<Source>,
    challenger: Option<Challenger>,
    /// Until then the SDP address, not a provisional source, receives the other party's packets.
    head_start_until: Option<Instant>,
    held: HeldBack,
}

impl Latch {
    fn new(rules: Rules) -> Latch {
        Latch {
            rules,
            sdp: None,
            source: None,
            challenger: None,
            head_start_until: None,
            held: HeldBack::new(rules.learn.saturating_sub(1) as usize),
        }
    }

    fn rank(&self, src: SocketAddr) -> Rank {
        match self.sdp {
            Some(sdp) if sdp == src => Rank::Sdp,
            Some(sdp) if sdp.ip() == src.ip() => Rank::SameIp,
            _ => Rank::Other,
        }
    }

    /// Where packets for this party go now.
    fn dest(&self, now: Instant) -> Option<SocketAddr> {
        match self.source {
            Some(s) if s.confirmed || self.sdp.is_none() || !self.in_head_start(now) => {
                Some(s.addr)
            }
            _ => self.sdp,
        }
    }

    fn in_head_start(&self, now: Instant) -> bool {
        self.head_start_until.is_some_and(|until| now < until)
    }

    /// The port has just opened (offer and answer known): the SDP address gets its head start.
    fn open(&mut self, now: Instant) {
        self.head_start_until = Some(now + self.rules.head_start);
    }

    /// The party's SDP names `addr`. The same address again changes nothing; a new one restarts
    /// learning, keeping only a source that is already sending from it.
    fn set_sdp(&mut self, addr: SocketAddr, now: Instant) {
        if self.sdp == Some(addr) {
            return;
        }
        self.sdp = Some(addr);
        self.head_start_until = Some(now + self.rules.head_start);
        let promoted = match (self.source, self.challenger) {
            (Some(s), _) if s.addr == addr => Some(Source {
                rank: Rank::Sdp,
                confirmed: true,
                ..s
            }),
            (_, Some(c)) if c.addr == addr => Some(Source::new(addr, Rank::Sdp, c.ssrc, now)),
            _ => None,
        };
        self.held.clear();
        self.source = promoted;
        self.challenger = None;
    }

    /// Decides what happens to one packet from `src` that arrived at `now`.
    fn accept(
        &mut self,
        src: SocketAddr,
        class: Class,
        now: Instant,
        packet: &[u8],
        counters: &PartyCounters,
    ) -> Verdict {
        let rank = self.rank(src);
        let Some(mut cur) = self.source else {
            return match class {
                Class::Candidate(ssrc) => self.adopt(
                    Source::new(src, rank, ssrc, now),
                    false,
                    now,
                    packet,
                    counters,
                ),
                // E.g. a DTLS client hello from where the SDP says the party is.
                Class::Other if rank == Rank::Sdp => Verdict::Forward {
                    release: false,
                    relatched: false,
                },
                Class::Other => Verdict::Invalid,
            };
        };
        if !cur.confirmed && now.saturating_duration_since(cur.since) >= self.rules.window {
            // Learning is over: the provisional source stays, its stale held packets do not go.
            cur.confirmed = true;
            self.discard_held(counters);
        }
        if cur.addr == src {
            cur.last_seen = now;
            // Its packet interrupts any challenger's run.
            self.challenger = None;
            let verdict = match class {
                Class::Candidate(ssrc) => {
                    if ssrc == cur.ssrc {
                        cur.run = cur.run.saturating_add(1);
                    } else {
                        cur.ssrc = ssrc;
                        cur.run = 1;
                        if !cur.confirmed {
                            self.discard_held(counters);
                        }
                    }
                    if cur.confirmed {
                        Verdict::Forward {
                            release: false,
                            relatched: false,
                        }
                    } else if cur.run >= self.rules.learn && !self.in_head_start(now) {
                        cur.confirmed = true;
                        Verdict::Forward {
                            release: true,
                            relatched: false,
                        }
                    } else {
                        self.hold(packet, now, counters)
                    }
                }
                Class::Other if cur.confirmed => Verdict::Forward {
                    release: false,
                    relatched: false,
                },
                Class::Other => Verdict::Invalid,
            };
            self.source = Some(cur);
            return verdict;
        }
        self.source = Some(cur);
        let Class::Candidate(ssrc) = class else {
            return Verdict::Invalid;
        };
        if rank > cur.rank {
            return self.adopt(
                Source::new(src, rank, ssrc, now),
                cur.confirmed,
                now,
                packet,
                counters,
            );
        }
        if rank < cur.rank || cur.rank == Rank::Sdp {
            return Verdict::Foreign;
        }
        let run = match &mut self.challenger {
            Some(c) if c.addr == src && c.ssrc == ssrc => {
                c.run = c.run.saturating_add(1);
                c.run
            }
            other => {
                *other = Some(Challenger {
                    addr: src,
                    ssrc,
                    run: 1,
                });
                1
            }
        };
        let takes_over = if cur.confirmed {
            run >= self.rules.rebind
                && now.saturating_duration_since(cur.last_seen) >= self.rules.silence
        } else {
            run >= self.rules.learn && !self.in_head_start(now)
        };
        if !takes_over {
            return Verdict::Foreign;
        }
        let next = Source {
            run,
            confirmed: true,
            ..Source::new(src, rank, ssrc, now)
        };
        self.adopt(next, cur.confirmed, now, packet, counters)
    }

    /// Makes `source` the source; the packet that made it so is held or forwarded.
    fn adopt(
        &mut self,
        source: Source,
        relatched: bool,
        now: Instant,
        packet: &[u8],
        counters: &PartyCounters,
    ) -> Verdict {
        self.discard_held(counters);
        self.challenger = None;
        self.source = Some(source);
        if source.confirmed {
            Verdict::Forward {
                release: false,
                relatched,
            }
        } else {
            self.hold(packet, now, counters)
        }
    }

    fn hold(&mut self, packet: &[u8], now: Instant, counters: &PartyCounters) -> Verdict {
        if self.held.push(packet, now) {
            Verdict::Held
        } else {
            counters.foreign_dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Held
        }
    }

    fn discard_held(&mut self, counters: &PartyCounters) {
        let n = self.held.clear() as u64;
        if n > 0 {
            counters.foreign_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Sockets facing one party, with the source validation of each.
struct Side {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    rtp_latch: Latch,
    rtcp_latch: Latch,
}

impl Side {
    /// Takes the pair's sockets over (registered with tokio) and hands back its lease.
    fn new(pair: PortPair) -> std::io::Result<(Side, Lease)> {
        let (rtp, rtcp, lease) = pair.into_parts();
        let side = Side {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            rtp_latch: Latch::new(RTP_RULES),
            rtcp_latch: Latch::new(RTCP_RULES),
        };
        Ok((side, lease))
    }

    fn socket(&self, kind: Kind) -> &UdpSocket {
        match kind {
            Kind::Rtp => &self.rtp,
            Kind::Rtcp => &self.rtcp,
        }
    }

    fn latch(&self, kind: Kind) -> &Latch {
        match kind {
            Kind::Rtp => &self.rtp_latch,
            Kind::Rtcp => &self.rtcp_latch,
        }
    }

    fn latch_mut(&mut self, kind: Kind) -> &mut Latch {
        match kind {
            Kind::Rtp => &mut self.rtp_latch,
            Kind::Rtcp => &mut self.rtcp_latch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

struct Relay {
    /// [facing caller, facing callee].
    sides: [Side; 2],
    /// The pool leases; dropped with the relay, which frees the ports. Declared after `sides`
    /// so the sockets are closed before their ports can be handed out again.
    _leases: [Lease; 2],
    counters: Arc<RelayCounters>,
    tap: Option<Tap>,
    timeout: Duration,
    armed_at: Option<Instant>,
    last_packet: Instant,
    /// Both parties' SDP addresses are known.
    open: bool,
    call_id: Arc<str>,
}

fn index(party: Party) -> usize {
    match party {
        Party::Caller => 0,
        Party::Callee => 1,
    }
}

impl Relay {
    async fn run(
        mut self,
        call_id: Arc<str>,
        stream: usize,
        mut ctl: mpsc::UnboundedReceiver<RelayControl>,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut check = tokio::time::interval(TIMEOUT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (party, kind) = tokio::select! {
                // Control first: a tap or address change sent before a packet arrived must
                // apply to that packet (the 200 OK that starts a recording is forwarded only
                // after its Tap message was queued).
                biased;
                msg = ctl.recv() => {
                    match msg {
                        Some(msg) => self.apply(msg),
                        // The registry dropped the handle: the stream is over.
                        None => break,
                    }
                    continue;
                }
                r = self.sides[0].rtp.readable() => { if r.is_err() { break } (Party::Caller, Kind::Rtp) }
                r = self.sides[1].rtp.readable() => { if r.is_err() { break } (Party::Callee, Kind::Rtp) }
                r = self.sides[0].rtcp.readable() => { if r.is_err() { break } (Party::Caller, Kind::Rtcp) }
                r = self.sides[1].rtcp.readable() => { if r.is_err() { break } (Party::Callee, Kind::Rtcp) }
                _ = check.tick() => {
                    if let Some(armed) = self.armed_at {
                        let idle_since = self.last_packet.max(armed);
                        if idle_since.elapsed() >= self.timeout {
                            tracing::info!(%call_id, stream, "media timeout");
                            let _ = events.send(RelayEvent::Timeout { call_id: Arc::clone(&call_id), stream });
                            break;
                        }
                    }
                    continue;
                }
            };
            self.drain(party, kind, &mut buf);
        }
    }

    fn apply(&mut self, msg: RelayControl) {
        match msg {
            RelayControl::Remote { party, rtp, rtcp } => {
                let now = Instant::now();
                let side = &mut self.sides[index(party)];
                side.rtp_latch.set_sdp(rtp, now);
                side.rtcp_latch.set_sdp(rtcp, now);
                let open = self.sides.iter().all(|s| s.rtp_latch.sdp.is_some());
                if open && !self.open {
                    for side in &mut self.sides {
                        side.rtp_latch.open(now);
                        side.rtcp_latch.open(now);
                    }
                }
                self.open = open;
            }
            RelayControl::Tap(tap) => self.tap = tap,
            RelayControl::Arm => {
                self.armed_at = Some(Instant::now());
            }
            RelayControl::Disarm => self.armed_at = None,
        }
    }

    /// Reads every datagram waiting on one socket and forwards each.
    fn drain(&mut self, from: Party, kind: Kind, buf: &mut [u8; MAX_DATAGRAM]) {
        loop {
            let socket = self.sides[index(from)].socket(kind);
            let (len, src) = match socket.try_recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors surface here on some systems; they concern one packet.
                    tracing::debug!(error = %e, "media socket receive error");
                    return;
                }
            };
            let arrival = Instant::now();
            let Some(packet) = buf.get(..len) else { return };
            self.forward(from, kind, src, arrival, packet);
        }
    }

    fn forward(
        &mut self,
        from: Party,
        kind: Kind,
        src: SocketAddr,
        arrival: Instant,
        packet: &[u8],
    ) {
        let counters = self.counters.of(from);
        if !self.open {
            counters.early_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let [caller, callee] = &mut self.sides;
        let (from_side, to_side) = match from {
            Party::Caller => (caller, &*callee),
            Party::Callee => (callee, &*caller),
        };
        let latch = from_side.latch_mut(kind);
        let verdict = latch.accept(src, classify(kind, packet), arrival, packet, counters);
        let out = Out {
            socket: to_side.socket(kind),
            dest: to_side.latch(kind).dest(arrival),
            counters,
            tap: self.tap.as_ref(),
            from,
            kind,
        };
        // Only what the latch accepts keeps the stream alive: packets from a sprayer or any
        // other foreign source must not hold a dead call's media open.
        if matches!(verdict, Verdict::Held | Verdict::Forward { .. }) {
            self.last_packet = arrival;
        }
        match verdict {
            Verdict::Held => {}
            Verdict::Foreign => {
                counters.foreign_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Invalid => {
                counters.invalid_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Forward { release, relatched } => {
                if relatched {
                    counters.relatched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(call_id = %self.call_id, party = ?from, %src, rtcp = kind == Kind::Rtcp,
                        "media source re-latched");
                }
                if release {
                    for i in 0..latch.held.len() {
                        if let Some((held, at)) = latch.held.get(i) {
                            out.deliver(held, at);
                        }
                    }
                    latch.held.clear();
                }
                out.deliver(packet, arrival);
            }
        }
    }
}

/// Where one direction's accepted packets go.
struct Out<'a> {
    socket: &'a UdpSocket,
    dest: Option<SocketAddr>,
    counters: &'a PartyCounters,
    tap: Option<&'a Tap>,
    from: Party,
    kind: Kind,
}

impl Out<'_> {
    fn deliver(&self, packet: &[u8], arrival: Instant) {
        let sent = self
            .dest
            .is_some_and(|to| self.socket.try_send_to(packet, to).is_ok());
        let counter = match (sent, self.kind) {
            (true, Kind::Rtp) => &self.counters.rtp_forwarded,
            (true, Kind::Rtcp) => &self.counters.rtcp_forwarded,
            (false, _) => &self.counters.undeliverable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The recorder gets its copy only after the packet is on its way; a packet with nowhere
        // to go yet is still what the party said, so it is recorded too.
        if let (Kind::Rtp, Some(tap)) = (self.kind, self.tap) {
            tap.offer(self.from, arrival, packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ports::PortPool;

    use crate::media::rtp::{write_header, RtpHeader};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp_packet(ssrc: u32, seq: u16) -> [u8; 14] {
        let mut head = [0u8; 12];
        write_header(
            &RtpHeader {
                marker: false,
                payload_type: 0,
                seq,
                timestamp: u32::from(seq) * 160,
                ssrc,
            },
            &mut head,
        );
        let mut p = [0xD5; 14];
        p[..12].copy_from_slice(&head);
        p
    }

    const FWD: Verdict = Verdict::Forward {
        release: false,
        relatched: false,
    };

    /// A latch with the party's SDP address `sdp`, opened at `t0`.
    fn latch(rules: Rules, sdp: &str, t0: Instant) -> Latch {
        let mut l = Latch::new(rules);
        l.set_sdp(addr(sdp), t0);
        l.open(t0);
        l
    }

    /// Feeds one RTP packet with `ssrc` from `src` at `at`.
    fn feed(l: &mut Latch, c: &PartyCounters, src: &str, ssrc: u32, at: Instant) -> Verdict {
        let p = rtp_packet(ssrc, 1);
        l.accept(addr(src), classify(Kind::Rtp, &p), at, &p, c)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_sdp_address_latches_at_once_and_is_never_displaced() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "10.0.0.1:4000", t0);
        assert_eq!(feed(&mut l, &c, "10.0.0.1:4000", 1, t0), FWD);
        assert_eq!(l.dest(t0), Some(addr("10.0.0.1:4000")));
        // The endpoint goes quiet for a minute; a sprayer with a steady SSRC gets nowhere, even
        // from the same host.
        for i in 0..100 {
            let at = t0 + Duration::from_secs(60) + ms(20 * i);
            assert_eq!(feed(&mut l, &c, "10.0.0.1:4002", 666, at), Verdict::Foreign);
            assert_eq!(
                feed(&mut l, &c, "192.0.2.66:5000", 666, at),
                Verdict::Foreign
            );
        }
        assert_eq!(l.dest(t0 + ms(70_000)), Some(addr("10.0.0.1:4000")));
        assert_eq!(feed(&mut l, &c, "10.0.0.1:4000", 1, t0 + ms(70_000)), FWD);
    }

    #[test]
    fn a_sprayer_that_comes_first_is_held_back_and_loses_to_the_sdp_address() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "10.0.0.1:4000", t0);
        for i in 0..3 {
            let v = feed(&mut l, &c, "192.0.2.66:5000", 666, t0 + ms(i));
            assert_eq!(v, Verdict::Held, "nothing of the sprayer is forwarded");
        }
        // During the head start the other party's packets still go to the SDP address.
        assert_eq!(l.dest(t0 + ms(5)), Some(addr("10.0.0.1:4000")));
        assert_eq!(feed(&mut l, &c, "10.0.0.1:4000", 1, t0 + ms(10)), FWD);
        assert_eq!(
            c.foreign_dropped.load(Ordering::Relaxed),
            3,
            "held packets dropped"
        );
        assert_eq!(l.held.len(), 0);
        assert_eq!(
            feed(&mut l, &c, "192.0.2.66:5000", 666, t0 + ms(11)),
            Verdict::Foreign
        );
    }

    #[test]
    fn a_natted_source_is_held_back_then_released_in_order() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        // The SDP names a private address the packets never come from.
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        let src = "203.0.113.5:30000";
        for i in 0..4u16 {
            let p = rtp_packet(7, i);
            let v = l.accept(addr(src), classify(Kind::Rtp, &p), t0 + ms(200), &p, &c);
            assert_eq!(v, Verdict::Held);
        }
        // After the head start the provisional source already receives (symmetric RTP).
        assert_eq!(l.dest(t0 + ms(200)), Some(addr(src)));
        let p = rtp_packet(7, 4);
        let v = l.accept(addr(src), classify(Kind::Rtp, &p), t0 + ms(280), &p, &c);
        assert_eq!(
            v,
            Verdict::Forward {
                release: true,
                relatched: false
            }
        );
        let seqs: Vec<u16> = (0..l.held.len())
            .map(|i| rtp::parse(l.held.get(i).unwrap().0).unwrap().0.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
    }

    #[test]
    fn during_learning_a_steady_source_takes_over_from_a_stray_packet() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        assert_eq!(feed(&mut l, &c, "192.0.2.66:5000", 666, t0), Verdict::Held);
        for i in 1..5 {
            let v = feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(20 * i));
            assert_eq!(v, Verdict::Foreign);
        }
        let v = feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(100));
        assert_eq!(v, FWD);
        assert_eq!(l.dest(t0 + ms(100)), Some(addr("203.0.113.5:30000")));
        // The stray source is now the challenger of a confirmed, live source.
        assert_eq!(
            feed(&mut l, &c, "192.0.2.66:5000", 666, t0 + ms(101)),
            Verdict::Foreign
        );
    }

    #[test]
    fn an_interleaved_sprayer_never_gets_a_run() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        let phone = "203.0.113.5:30000";
        for i in 0..5 {
            feed(&mut l, &c, phone, 7, t0 + ms(100 + 20 * i));
        }
        assert!(l.source.unwrap().confirmed);
        for i in 5..500 {
            let at = t0 + ms(100 + 20 * i);
            assert_eq!(feed(&mut l, &c, phone, 7, at), FWD);
            assert_eq!(
                feed(&mut l, &c, "203.0.113.99:1234", 666, at),
                Verdict::Foreign
            );
        }
        assert_eq!(l.source.unwrap().addr, addr(phone));
    }

    #[test]
    fn nat_rebinding_relatches_after_silence_and_a_steady_run() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        let (old, new) = ("203.0.113.5:30000", "203.0.113.5:31000");
        for i in 0..10 {
            feed(&mut l, &c, old, 7, t0 + ms(20 * i));
        }
        // Silent for less than a second: not yet (and this run carries another SSRC).
        let t1 = t0 + ms(180 + 500);
        for i in 0..10 {
            assert_eq!(feed(&mut l, &c, new, 8, t1 + ms(20 * i)), Verdict::Foreign);
        }
        // Silent for over a second: the fifth packet of a steady run re-latches.
        let t2 = t0 + ms(180 + 1100);
        for i in 0..4 {
            assert_eq!(feed(&mut l, &c, new, 7, t2 + ms(20 * i)), Verdict::Foreign);
        }
        assert_eq!(
            feed(&mut l, &c, new, 7, t2 + ms(80)),
            Verdict::Forward {
                release: false,
                relatched: true
            }
        );
        assert_eq!(l.dest(t2 + ms(80)), Some(addr(new)));
        assert_eq!(
            feed(&mut l, &c, old, 7, t2 + ms(90)),
            Verdict::Foreign,
            "the old binding is now foreign"
        );
    }

    #[test]
    fn a_rebind_needs_one_ssrc_and_an_uninterrupted_run() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        for i in 0..5 {
            feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(20 * i));
        }
        let t1 = t0 + ms(5000);
        for i in 0..50u32 {
            let v = feed(
                &mut l,
                &c,
                "203.0.113.99:1234",
                i % 2,
                t1 + ms(20 * u64::from(i)),
            );
            assert_eq!(v, Verdict::Foreign, "SSRC flapping never re-latches");
        }
    }

    #[test]
    fn non_rtp_never_latches_but_passes_from_the_latched_source() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8];
        let rtcp = [0x80u8, 201, 0, 1, 0, 0, 0, 7];
        let src = addr("203.0.113.5:30000");
        for p in [&stun[..], &rtcp[..], &[0xFF; 3][..]] {
            assert_eq!(classify(Kind::Rtp, p), Class::Other);
            assert_eq!(l.accept(src, Class::Other, t0, p, &c), Verdict::Invalid);
        }
        assert!(l.source.is_none());
        for i in 0..5 {
            feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(100 + 20 * i));
        }
        assert_eq!(l.accept(src, Class::Other, t0 + ms(200), &stun, &c), FWD);
        assert_eq!(classify(Kind::Rtcp, &rtcp), Class::Candidate(7));
        assert_eq!(classify(Kind::Rtcp, &rtp_packet(7, 1)), Class::Other);
    }

    #[test]
    fn a_repeated_sdp_keeps_the_latch_and_a_new_one_restarts_learning() {
        let t0 = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTP_RULES, "192.168.1.10:4000", t0);
        for i in 0..5 {
            feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(20 * i));
        }
        l.set_sdp(addr("192.168.1.10:4000"), t0 + ms(200));
        assert_eq!(l.dest(t0 + ms(200)), Some(addr("203.0.113.5:30000")));
        l.set_sdp(addr("192.168.1.10:4100"), t0 + ms(300));
        assert!(l.source.is_none());
        assert_eq!(l.dest(t0 + ms(300)), Some(addr("192.168.1.10:4100")));
        // A new SDP address that is where packets already come from latches it at once.
        l.set_sdp(addr("203.0.113.5:30000"), t0 + ms(400));
        assert!(l.source.is_none());
        assert_eq!(feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(401)), FWD);
        // So does one that was challenging the provisional source.
        l.set_sdp(addr("203.0.113.5:30002"), t0 + ms(500));
        let v = feed(&mut l, &c, "203.0.113.5:30000", 7, t0 + ms(501));
        assert_eq!(v, Verdict::Held);
        let v = feed(&mut l, &c, "203.0.113.5:30004", 8, t0 + ms(502));
        assert_eq!(v, Verdict::Foreign);
        l.set_sdp(addr("203.0.113.5:30004"), t0 + ms(503));
        let s = l.source.unwrap();
        assert_eq!(
            (s.addr, s.rank, s.confirmed),
            (addr("203.0.113.5:30004"), Rank::Sdp, true)
        );
    }

    #[test]
    fn rtcp_rebinds_only_after_a_long_silence() {
        let opened = Instant::now();
        let c = PartyCounters::default();
        let mut l = latch(RTCP_RULES, "192.168.1.10:4001", opened);
        // A NATed RTCP source is not confirmed during the 10 s head start of the SDP address.
        let rr0 = [0x80u8, 201, 0, 1, 0, 0, 0, 7];
        let v = l.accept(
            addr("203.0.113.5:30001"),
            Class::Candidate(7),
            opened,
            &rr0,
            &c,
        );
        assert_eq!(v, Verdict::Held);
        let at = opened + ms(5000);
        let v = l.accept(addr("203.0.113.5:30001"), Class::Candidate(7), at, &rr0, &c);
        assert_eq!(v, Verdict::Held);
        assert_eq!(l.dest(at), Some(addr("192.168.1.10:4001")));
        let t0 = opened + ms(10_000);
        let rr = |ssrc: u32| {
            let mut p = [0x80u8, 201, 0, 1, 0, 0, 0, 0];
            p[4..].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        let send = |l: &mut Latch, src: &str, ssrc: u32, at: Instant| {
            let p = rr(ssrc);
            l.accept(addr(src), classify(Kind::Rtcp, &p), at, &p, &c)
        };
        // The head start is over: its next report confirms it and releases the held one.
        assert_eq!(
            send(&mut l, "203.0.113.5:30001", 7, t0),
            Verdict::Forward {
                release: true,
                relatched: false
            }
        );
        assert_eq!(send(&mut l, "203.0.113.5:30001", 7, t0 + ms(5000)), FWD);
        // A sprayer between the reports of a live source (every ~5 s) never takes over.
        for i in 0..100 {
            let at = t0 + ms(5000 + 50 * i);
            assert_eq!(send(&mut l, "192.0.2.66:5001", 666, at), Verdict::Foreign);
        }
        assert_eq!(send(&mut l, "203.0.113.5:30001", 7, t0 + ms(10_000)), FWD);
        // The old binding is silent for 12 s: the new one's second report in a row re-latches.
        let t1 = t0 + ms(22_000);
        assert_eq!(send(&mut l, "203.0.113.5:31001", 7, t1), Verdict::Foreign);
        assert_eq!(
            send(&mut l, "203.0.113.5:31001", 7, t1 + ms(5000)),
            Verdict::Forward {
                release: false,
                relatched: true
            }
        );
    }

    /// Receives RTP on `sock` for `window` and returns the SSRCs seen.
    async fn ssrcs(sock: &UdpSocket, window: Duration) -> Vec<u32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        let end = tokio::time::Instant::now() + window;
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
            if let Ok((h, _)) = rtp::parse(&buf[..n]) {
                out.push(h.ssrc);
            }
        }
        out
    }

    #[tokio::test]
    async fn sockets_a_sprayer_before_offer_and_answer_gets_nothing_through() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 43410, 43419);
        let (events_tx, _events) = mpsc::unbounded_channel();
        let relay = spawn(
            Arc::from("sprayed"),
            0,
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            Duration::from_secs(10),
            events_tx,
        )
        .unwrap();
        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_caller_side = relay.local_rtp(Party::Caller);
        let to_callee_side = relay.local_rtp(Party::Callee);
        let rtcp_of = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + 1);
        relay.control(RelayControl::Remote {
            party: Party::Caller,
            rtp: phone.local_addr().unwrap(),
            rtcp: rtcp_of(phone.local_addr().unwrap()),
        });
        // Before the answer: the stream is closed.
        for seq in 0..10 {
            attacker
                .send_to(&rtp_packet(666, seq), to_caller_side)
                .await
                .unwrap();
        }
        tokio::time::sleep(ms(50)).await;
        assert_eq!(
            relay.counters.caller.early_dropped.load(Ordering::Relaxed),
            10
        );
        relay.control(RelayControl::Remote {
            party: Party::Callee,
            rtp: pbx.local_addr().unwrap(),
            rtcp: rtcp_of(pbx.local_addr().unwrap()),
        });
        tokio::time::sleep(ms(20)).await;
        // The sprayer gets in first after the answer, then the phone speaks from its SDP address
        // while the sprayer keeps going.
        for seq in 0..3 {
            attacker
                .send_to(&rtp_packet(666, seq), to_caller_side)
                .await
                .unwrap();
        }
        tokio::time::sleep(ms(20)).await;
        for seq in 0..20 {
            phone
                .send_to(&rtp_packet(1, seq), to_caller_side)
                .await
                .unwrap();
            attacker
                .send_to(&rtp_packet(666, seq), to_caller_side)
                .await
                .unwrap();
            pbx.send_to(&rtp_packet(2, seq), to_callee_side)
                .await
                .unwrap();
            tokio::time::sleep(ms(5)).await;
        }
        let (at_pbx, at_phone, at_attacker) = tokio::join!(
            ssrcs(&pbx, ms(300)),
            ssrcs(&phone, ms(300)),
            ssrcs(&attacker, ms(300))
        );
        assert_eq!(
            at_pbx,
            vec![1; 20],
            "the PBX gets exactly the phone's packets"
        );
        assert_eq!(
            at_phone,
            vec![2; 20],
            "the phone gets exactly the PBX's packets"
        );
        assert!(at_attacker.is_empty(), "nothing bled to the sprayer");
        let caller = &relay.counters.caller;
        assert_eq!(caller.foreign_dropped.load(Ordering::Relaxed), 23);
        assert_eq!(caller.rtp_forwarded.load(Ordering::Relaxed), 20);
    }

    #[tokio::test]
    async fn sockets_a_natted_phone_is_learnt_losslessly_and_follows_a_rebind() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 43420, 43429);
        let (events_tx, _events) = mpsc::unbounded_channel();
        let relay = spawn(
            Arc::from("nat"),
            0,
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            Duration::from_secs(10),
            events_tx,
        )
        .unwrap();
        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rebound = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_caller_side = relay.local_rtp(Party::Caller);
        let to_callee_side = relay.local_rtp(Party::Callee);
        relay.control(RelayControl::Remote {
            party: Party::Caller,
            rtp: addr("127.0.0.1:9"),
            rtcp: addr("127.0.0.1:10"),
        });
        relay.control(RelayControl::Remote {
            party: Party::Callee,
            rtp: pbx.local_addr().unwrap(),
            rtcp: addr("127.0.0.1:11"),
        });
        tokio::time::sleep(RTP_RULES.head_start).await;
        for seq in 0..10 {
            phone
                .send_to(&rtp_packet(1, seq), to_caller_side)
                .await
                .unwrap();
            tokio::time::sleep(ms(5)).await;
        }
        assert_eq!(
            ssrcs(&pbx, ms(100)).await,
            vec![1; 10],
            "nothing lost to learning"
        );
        pbx.send_to(&rtp_packet(2, 0), to_callee_side)
            .await
            .unwrap();
        assert_eq!(ssrcs(&phone, ms(100)).await, vec![2]);
        // The NAT binding changes after more than a second of silence.
        tokio::time::sleep(ms(1100)).await;
        for seq in 10..20 {
            rebound
                .send_to(&rtp_packet(1, seq), to_caller_side)
                .await
                .unwrap();
            tokio::time::sleep(ms(5)).await;
        }
        assert_eq!(
            ssrcs(&pbx, ms(100)).await,
            vec![1; 6],
            "the run's fifth packet re-latches"
        );
        pbx.send_to(&rtp_packet(2, 1), to_callee_side)
            .await
            .unwrap();
        assert_eq!(ssrcs(&rebound, ms(100)).await, vec![2]);
        assert_eq!(relay.counters.caller.relatched.load(Ordering::Relaxed), 1);
        assert_eq!(
            relay
                .counters
                .caller
                .foreign_dropped
                .load(Ordering::Relaxed),
            4
        );
    }

    #[tokio::test]
    async fn disarmed_relay_outlives_the_timeout_and_arm_restarts_it() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 43400, 43409);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let relay = spawn(
            Arc::from("held"),
            0,
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            Duration::from_millis(600),
            events_tx,
        )
        .unwrap();
        // On hold right after answer: no packets, but no timeout either.
        relay.control(RelayControl::Arm);
        relay.control(RelayControl::Disarm);
        let quiet = tokio::time::timeout(Duration::from_millis(1600), events.recv()).await;
        assert!(quiet.is_err(), "a held stream timed out: {quiet:?}");
        // Resumed: the timeout applies again, counted from the Arm.
        let armed = Instant::now();
        relay.control(RelayControl::Arm);
        let ended = tokio::time::timeout(Duration::from_secs(3), events.recv())
            .await
            .expect("timeout after resume");
        assert_eq!(
            ended,
            Some(RelayEvent::Timeout {
                call_id: Arc::from("held"),
                stream: 0
            })
        );
        assert!(armed.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn sockets_a_sprayer_does_not_keep_a_silent_call_alive() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 43430, 43439);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let relay = spawn(
            Arc::from("silent"),
            0,
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            Duration::from_millis(600),
            events_tx,
        )
        .unwrap();
        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (party, sock) in [(Party::Caller, &phone), (Party::Callee, &pbx)] {
            let a = sock.local_addr().unwrap();
            relay.control(RelayControl::Remote {
                party,
                rtp: a,
                rtcp: SocketAddr::new(a.ip(), a.port() + 1),
            });
        }
        relay.control(RelayControl::Arm);
        // Both parties latch at their SDP addresses, then fall silent; an attacker keeps
        // spraying both ports.
        phone
            .send_to(&rtp_packet(1, 0), relay.local_rtp(Party::Caller))
            .await
            .unwrap();
        pbx.send_to(&rtp_packet(2, 0), relay.local_rtp(Party::Callee))
            .await
            .unwrap();
        let start = Instant::now();
        let mut seq = 0u16;
        let timed_out = loop {
            for facing in [Party::Caller, Party::Callee] {
                attacker
                    .send_to(&rtp_packet(666, seq), relay.local_rtp(facing))
                    .await
                    .unwrap();
            }
            seq = seq.wrapping_add(1);
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(20), events.recv()).await
            {
                break Some((start.elapsed(), e));
            }
            if start.elapsed() > Duration::from_secs(3) {
                break None;
            }
        };
        let (after, event) = timed_out.expect("the media timeout despite the sprayer");
        assert!(matches!(event, RelayEvent::Timeout { stream: 0, .. }));
        assert!(after < Duration::from_millis(1500), "{after:?}");
    }
}

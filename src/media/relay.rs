//! The RTP/RTCP relay of one media stream: two port pairs, one facing the caller and one facing the
//! callee. A packet from one party is sent on, from the socket facing the other party, to that
//! party's latched source address (or its SDP address until it has sent anything). Each
//! endpoint's real address is learnt from its first packets (latching, for NAT). A copy of each
//! RTP packet goes to the recorder's tap after forwarding. Nothing here blocks, locks or
//! allocates per packet; counters are relaxed atomics.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::media::ports::PortPair;
use crate::media::tap::Tap;
use crate::sip::proxy::Party;

/// Largest datagram the relay forwards whole (bigger ones are truncated by the kernel and dropped).
const MAX_DATAGRAM: usize = 2048;
/// How often the inactivity timeout is checked.
const TIMEOUT_CHECK: Duration = Duration::from_millis(500);

/// Changes the call registry makes to a running relay.
#[derive(Clone)]
pub enum RelayControl {
    /// A party's SDP named these addresses: send to them until the party's own packets show
    /// where it really is.
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
    /// Packets from a source other than the latched one (dropped: RTP bleed protection).
    pub foreign_dropped: AtomicU64,
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
    let relay = Relay {
        sockets: [Side::new(&caller_facing)?, Side::new(&callee_facing)?],
        _leases: [caller_facing, callee_facing],
        counters: Arc::clone(&counters),
        tap: None,
        timeout,
        armed_at: None,
        last_packet: Instant::now(),
    };
    tokio::spawn(relay.run(call_id, stream, ctl_rx, events));
    Ok(RelayHandle {
        ctl,
        counters,
        caller_facing: caller_addr,
        callee_facing: callee_addr,
    })
}

/// Sockets facing one party, with where that party is.
struct Side {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Address from SDP, then the latched source.
    rtp_dest: Option<SocketAddr>,
    rtcp_dest: Option<SocketAddr>,
    rtp_latched: bool,
    rtcp_latched: bool,
}

impl Side {
    fn new(pair: &PortPair) -> std::io::Result<Side> {
        Ok(Side {
            rtp: UdpSocket::from_std(pair.rtp.try_clone()?)?,
            rtcp: UdpSocket::from_std(pair.rtcp.try_clone()?)?,
            rtp_dest: None,
            rtcp_dest: None,
            rtp_latched: false,
            rtcp_latched: false,
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Rtp,
    Rtcp,
}

struct Relay {
    /// [facing caller, facing callee].
    sockets: [Side; 2],
    /// The pool leases; dropped with the relay, which frees the ports.
    _leases: [PortPair; 2],
    counters: Arc<RelayCounters>,
    tap: Option<Tap>,
    timeout: Duration,
    armed_at: Option<Instant>,
    last_packet: Instant,
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
                r = self.sockets[0].rtp.readable() => { if r.is_err() { break } (Party::Caller, Kind::Rtp) }
                r = self.sockets[1].rtp.readable() => { if r.is_err() { break } (Party::Callee, Kind::Rtp) }
                r = self.sockets[0].rtcp.readable() => { if r.is_err() { break } (Party::Caller, Kind::Rtcp) }
                r = self.sockets[1].rtcp.readable() => { if r.is_err() { break } (Party::Callee, Kind::Rtcp) }
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
                let side = &mut self.sockets[index(party)];
                // A new SDP address (re-INVITE, new port) restarts latching for that party.
                side.rtp_dest = Some(rtp);
                side.rtcp_dest = Some(rtcp);
                side.rtp_latched = false;
                side.rtcp_latched = false;
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
            let socket = match kind {
                Kind::Rtp => &self.sockets[index(from)].rtp,
                Kind::Rtcp => &self.sockets[index(from)].rtcp,
            };
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
            self.last_packet = arrival;
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
        let side = &mut self.sockets[index(from)];
        let (latched, dest) = match kind {
            Kind::Rtp => (&mut side.rtp_latched, &mut side.rtp_dest),
            Kind::Rtcp => (&mut side.rtcp_latched, &mut side.rtcp_dest),
        };
        if !*latched {
            // Symmetric RTP (RFC 4961): the party's real address is where its packets come from.
            *dest = Some(src);
            *latched = true;
        } else if *dest != Some(src) {
            counters.foreign_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let to_side = &self.sockets[index(from.other())];
        let (out_socket, out_dest) = match kind {
            Kind::Rtp => (&to_side.rtp, to_side.rtp_dest),
            Kind::Rtcp => (&to_side.rtcp, to_side.rtcp_dest),
        };
        let sent = out_dest.is_some_and(|to| out_socket.try_send_to(packet, to).is_ok());
        match (sent, kind) {
            (true, Kind::Rtp) => counters.rtp_forwarded.fetch_add(1, Ordering::Relaxed),
            (true, Kind::Rtcp) => counters.rtcp_forwarded.fetch_add(1, Ordering::Relaxed),
            (false, _) => counters.undeliverable.fetch_add(1, Ordering::Relaxed),
        };
        // The recorder gets its copy only after the packet is on its way; a packet with nowhere
        // to go yet is still what the party said, so it is recorded too.
        if let (Kind::Rtp, Some(tap)) = (kind, &self.tap) {
            tap.offer(from, arrival, packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ports::PortPool;

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
}

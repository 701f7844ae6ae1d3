//! The tap: a bounded, non-blocking hand-over of RTP packet copies from the relay to the recorder.
//! The relay calls `offer` after forwarding; a full queue drops the copy and counts it as a gap,
//! so recording can never slow down or stop forwarding. No allocation per packet: packets are
//! copied into a fixed-size slot that moves through a pre-sized channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use crate::sip::proxy::Party;

/// Largest RTP packet the tap copies; bigger ones are counted as dropped. G.711 and G.722 at
/// 20 ms are 172 bytes; 512 leaves room for 60 ms of G.711 and for wideband codecs.
pub const MAX_TAP_PACKET: usize = 512;
/// Default queue depth between relay and recorder (packets): 8192 slots of about 540 bytes,
/// allocated once (about 4.4 MB), about 2 s of 200 recorded calls.
pub const DEFAULT_TAP_QUEUE: usize = 8192;

/// One packet copy for the recorder.
pub struct TapPacket {
    /// Recording slot the packet belongs to.
    pub slot: u64,
    /// Who sent it.
    pub party: Party,
    /// When the relay received it.
    pub arrival: Instant,
    /// Bytes used in `data`.
    pub len: u16,
    /// The whole RTP packet.
    pub data: [u8; MAX_TAP_PACKET],
}

impl TapPacket {
    /// The packet bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(MAX_TAP_PACKET)]
    }
}

/// Packets one recording lost on the way to the recorder, per party.
#[derive(Debug, Default)]
pub struct TapDrops {
    /// Copies of the caller's packets dropped (queue full or too big).
    pub caller: AtomicU64,
    /// Copies of the callee's packets dropped.
    pub callee: AtomicU64,
}

impl TapDrops {
    /// Drops so far for `party`.
    pub fn get(&self, party: Party) -> u64 {
        match party {
            Party::Caller => self.caller.load(Ordering::Relaxed),
            Party::Callee => self.callee.load(Ordering::Relaxed),
        }
    }

    fn count(&self, party: Party) {
        match party {
            Party::Caller => self.caller.fetch_add(1, Ordering::Relaxed),
            Party::Callee => self.callee.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Where one stream's packets go for recording.
#[derive(Clone)]
pub struct Tap {
    /// Recording slot.
    pub slot: u64,
    /// The recorder's packet queue.
    pub queue: SyncSender<TapPacket>,
    /// Drop counters shared with the call registry.
    pub drops: Arc<TapDrops>,
}

impl Tap {
    /// Offers a copy of `packet` (from `party`, received at `arrival`); never blocks, never
    /// allocates: the copy moves by value into the channel's pre-allocated ring.
    pub fn offer(&self, party: Party, arrival: Instant, packet: &[u8]) {
        if packet.len() > MAX_TAP_PACKET {
            self.drops.count(party);
            return;
        }
        let mut copy = TapPacket {
            slot: self.slot,
            party,
            arrival,
            len: packet.len() as u16,
            data: [0; MAX_TAP_PACKET],
        };
        copy.data[..packet.len()].copy_from_slice(packet);
        match self.queue.try_send(copy) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.drops.count(party)
            }
        }
    }
}

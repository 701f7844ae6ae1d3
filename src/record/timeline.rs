//! The recording timeline (sans-IO): places both parties' decoded audio on one sample clock that
//! starts at the recording start, fills loss, hold and late start with silence, and hands out
//! interleaved stereo frames (left = caller, right = callee). It never reads the clock: every
//! time arrives as an `Instant` argument. No IO, and no allocation per packet once built.
//!
//! Placement: each side is anchored to wall-clock arrival (first packet, new SSRC, or when the
//! RTP timestamp drifts more than `resync` from arrival) and packets then go where their RTP
//! timestamp says relative to the anchor, so audio is smooth within a stream while both sides
//! stay aligned with wall-clock time to within one packet.
//!
//! Clock skew: an endpoint whose sample clock runs fast or slow (100 ppm is 0.36 s an hour)
//! drifts against arrival time. Network jitter only ever delays a packet, so the least lag of
//! arrival behind the RTP prediction over a window of packets (2 s) follows the clock offset;
//! when it is `drift` or more, the anchor is slewed by that much (a gap or overlap of about
//! `drift`), so each side stays within about `drift` of its least-delayed arrival and the
//! channels never drift apart however long the call.
//!
//! Masking (DTMF digits that must not be kept): spans of wall-clock time are written as silence
//! on both channels, including audio already placed but not yet emitted.

use std::time::{Duration, Instant};

use crate::media::rtp::RtpHeader;

/// Largest forward sequence jump still taken as loss rather than a restart (RFC 3550 A.1
/// `MAX_DROPOUT`).
const MAX_DROPOUT: i64 = 3000;
/// How many sequence numbers below the highest one are remembered for duplicate detection; the
/// width of the bitmap in `SeqRun`.
const SEQ_HISTORY: i64 = 128;
/// Upper bound of the ring per timeline (2^24 frames: 64 MiB, 35 minutes at 8 kHz).
const MAX_RING_FRAMES: usize = 1 << 24;

/// Which party a packet came from, and which channel it lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The party that sent the initial INVITE; left channel.
    Caller,
    /// The called party; right channel.
    Callee,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }
}

/// Timeline settings.
#[derive(Debug, Clone)]
pub struct TimelineConfig {
    /// Sample rate of the timeline and of the PCM pushed into it (8000).
    pub rate: u32,
    /// How long a position is held open for late or reordered packets before it is emitted (60 ms).
    pub reorder_window: Duration,
    /// Ring capacity per side; audio further ahead forces early emission (2 s).
    pub buffer: Duration,
    /// Re-anchor a stream when its RTP timestamp and its arrival disagree by more than this (250 ms).
    pub resync: Duration,
    /// Slew a stream's anchor when its sender's clock has drifted this far from arrival time
    /// (20 ms).
    pub drift: Duration,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig {
            rate: 8000,
            reorder_window: Duration::from_millis(60),
            buffer: Duration::from_secs(2),
            resync: Duration::from_millis(250),
            drift: Duration::from_millis(20),
        }
    }
}

/// Reception counters of one side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LegStats {
    /// Packets pushed for this side, duplicates and late ones included.
    pub packets: u64,
    /// Packets never received: expected (sequence span per SSRC run) minus distinct received.
    pub lost: u64,
    /// Packets not written because their place was already emitted (or the timeline was closed).
    pub late: u64,
    /// Packets whose sequence number had already been seen; not written again.
    pub duplicates: u64,
    /// Times the sender's clock skew was corrected (anchor slewed by about `drift`).
    pub slews: u64,
}

/// One run of sequence numbers: from a new SSRC (or a confirmed restart) on. Numbers are
/// extended to 64 bits so wrap-around is invisible (RFC 3550 A.1).
#[derive(Debug, Clone, Copy)]
struct SeqRun {
    /// Lowest extended sequence number received.
    first: i64,
    /// Highest extended sequence number received.
    max: i64,
    /// Distinct packets received.
    received: u64,
    /// Bit i set: `max - i` was received.
    seen: u128,
}

impl SeqRun {
    fn new(seq: u16) -> SeqRun {
        SeqRun {
            first: i64::from(seq),
            max: i64::from(seq),
            received: 1,
            seen: 1,
        }
    }

    fn expected(&self) -> u64 {
        u64::try_from(self.max - self.first + 1).unwrap_or(0)
    }
}

/// What the sequence number says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqOutcome {
    /// First packet of a run, or a new highest sequence number.
    Advanced,
    /// Below the highest, not seen before: reordered.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Too far from the run to tell; the run is kept until the next packet confirms a restart.
    Stray,
}

/// Per-side reception state.
#[derive(Debug, Clone, Default)]
struct Leg {
    stats: LegStats,
    ssrc: Option<u32>,
    run: Option<SeqRun>,
    /// Expected and received packets of earlier runs (earlier SSRCs, restarts).
    closed_expected: u64,
    closed_received: u64,
    /// After a stray jump, the sequence number that would confirm a restart (RFC 3550 A.1 bad_seq).
    probation: Option<u16>,
    /// Extended RTP timestamp of the last non-duplicate packet.
    last_ts: i64,
    /// Timeline position (frames) and extended timestamp of the current anchor.
    anchor_pos: i64,
    anchor_ts: i64,
    /// RTP clock the anchor was taken with; a change re-anchors.
    anchor_rate: u32,
    /// Clock-skew tracking: least lag (arrival minus prediction, frames) of the current window
    /// and the packets in it.
    window_min_lag: i64,
    window_packets: u32,
}

/// Packets per skew window: 2 s of 20 ms packets, enough for one to arrive without queueing.
const SKEW_WINDOW: u32 = 100;

impl Leg {
    fn close_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.closed_expected += run.expected();
            self.closed_received += run.received;
        }
        self.probation = None;
    }

    fn track_seq(&mut self, seq: u16) -> SeqOutcome {
        let Some(run) = self.run.as_mut() else {
            self.run = Some(SeqRun::new(seq));
            return SeqOutcome::Advanced;
        };
        // Interpret the 16-bit number as the nearest extended one (RFC 3550 A.1).
        let delta = i64::from(seq.wrapping_sub(run.max as u16) as i16);
        if delta > 0 && delta <= MAX_DROPOUT {
            run.seen = if delta >= SEQ_HISTORY {
                1
            } else {
                (run.seen << delta) | 1
            };
            run.max += delta;
            run.received += 1;
            self.probation = None;
            SeqOutcome::Advanced
        } else if delta <= 0 && -delta < SEQ_HISTORY {
            let bit = 1u128 << -delta;
            if run.seen & bit != 0 {
                return SeqOutcome::Duplicate;
            }
            run.seen |= bit;
            run.received += 1;
            run.first = run.first.min(run.max + delta);
            SeqOutcome::Reordered
        } else if self.probation == Some(seq) {
            // Two consecutive numbers after a jump: the source restarted its numbering
            // (RFC 3550 A.1). The new run holds the stray packet and this one.
            self.close_run();
            let max = i64::from(seq);
            self.run = Some(SeqRun {
                first: max - 1,
                max,
                received: 2,
                seen: 0b11,
            });
            SeqOutcome::Advanced
        } else {
            self.probation = Some(seq.wrapping_add(1));
            SeqOutcome::Stray
        }
    }

    fn anchor(&mut self, pos: i64, ext_ts: i64, ts_rate: u32) {
        self.anchor_pos = pos;
        self.anchor_ts = ext_ts;
        self.anchor_rate = ts_rate;
        self.window_packets = 0;
        self.window_min_lag = i64::MAX;
    }

    /// Feeds one in-order packet's lag into the skew window. At the end of a window whose least
    /// lag is `drift` or more away from zero, slews the anchor by it: the sender's clock has
    /// drifted (or the anchoring packet itself was held up in the network, or the path got
    /// slower for good) and the least-delayed packets show where the stream really is. Returns
    /// the slew applied (frames), if any.
    fn track_skew(&mut self, lag: i64, drift: i64) -> Option<i64> {
        self.window_min_lag = self.window_min_lag.min(lag);
        self.window_packets += 1;
        if self.window_packets < SKEW_WINDOW {
            return None;
        }
        let least = self.window_min_lag;
        self.window_packets = 0;
        self.window_min_lag = i64::MAX;
        if least.abs() < drift {
            return None;
        }
        self.anchor_pos += least;
        self.stats.slews += 1;
        Some(least)
    }

    fn stats(&self) -> LegStats {
        let (expected, received) = match &self.run {
            Some(run) => (
                self.closed_expected + run.expected(),
                self.closed_received + run.received,
            ),
            None => (self.closed_expected, self.closed_received),
        };
        LegStats {
            lost: expected.saturating_sub(received),
            ..self.stats
        }
    }
}

/// Frames not yet emitted, as a ring over absolute positions `emitted .. emitted + capacity`.
/// Emitted slots are zeroed, so an unwritten position reads as silence.
struct Ring {
    frames: Vec<[i16; 2]>,
    /// Absolute position of the first frame not yet emitted.
    emitted: i64,
}

impl Ring {
    fn capacity(&self) -> i64 {
        self.frames.len() as i64
    }

    /// The ring's slots in timeline order starting at absolute position `from`.
    fn slots(&mut self, from: i64) -> impl Iterator<Item = &mut [i16; 2]> {
        let len = self.frames.len();
        let start = usize::try_from(from.rem_euclid(self.capacity())).unwrap_or(0);
        let (before, after) = self.frames.split_at_mut(start.min(len));
        after.iter_mut().chain(before.iter_mut())
    }

    /// Writes one channel of `samples` at absolute positions `from..`; the caller guarantees the
    /// range lies within `emitted .. emitted + capacity`.
    fn write(&mut self, channel: usize, from: i64, samples: &[i16]) {
        for (frame, &s) in self.slots(from).zip(samples) {
            if let Some(slot) = frame.get_mut(channel) {
                *slot = s;
            }
        }
    }

    /// Appends frames `emitted .. to` interleaved to `out`, silence where nothing was written.
    fn emit_to(&mut self, to: i64, out: &mut Vec<i16>) {
        let Ok(count) = usize::try_from(to - self.emitted) else {
            return;
        };
        if count == 0 {
            return;
        }
        let from_ring = count.min(self.frames.len());
        out.reserve(count.saturating_mul(2));
        let emitted = self.emitted;
        for frame in self.slots(emitted).take(from_ring) {
            out.extend_from_slice(frame);
            *frame = [0, 0];
        }
        // Beyond one ring's worth nothing can have been written: pure silence.
        out.resize(out.len() + (count - from_ring) * 2, 0);
        self.emitted = to;
    }
}

/// Both sides of one recording on one sample clock.
pub struct Timeline {
    start: Instant,
    cfg: TimelineConfig,
    /// `cfg.rate`, never 0.
    rate: u32,
    ring: Ring,
    /// Frames emitted early because a packet landed beyond the ring; returned first by the next
    /// drain or finish. Grows only in that overflow case.
    pending: Vec<i16>,
    legs: [Leg; 2],
    closed: bool,
    /// Spans `[from, to)` of positions written as silence on both channels; `to` is `None`
    /// while the span is open. Oldest first, pruned as they are emitted.
    masks: Vec<(i64, Option<i64>)>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("start", &self.start)
            .field("cfg", &self.cfg)
            .field("emitted", &self.ring.emitted)
            .field("pending_frames", &(self.pending.len() / 2))
            .field("caller", &self.legs[0].stats())
            .field("callee", &self.legs[1].stats())
            .field("closed", &self.closed)
            .finish()
    }
}

/// Frames in `d` at `rate`, rounded down (`round`: to nearest), saturating.
fn frames(d: Duration, rate: u32, round: bool) -> i64 {
    let half = if round { 500_000_000 } else { 0 };
    let n = (d.as_nanos() * u128::from(rate) + half) / 1_000_000_000;
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Timeline {
    /// A timeline whose position 0 is `start`; allocates the ring (`cfg.buffer` at `cfg.rate`).
    pub fn new(start: Instant, cfg: TimelineConfig) -> Timeline {
        let rate = cfg.rate.max(1);
        // At least one frame so ring arithmetic never divides by zero; at most MAX_RING_FRAMES
        // so a mistyped buffer cannot take the memory of the whole machine.
        let capacity = usize::try_from(frames(cfg.buffer, rate, false))
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_RING_FRAMES);
        Timeline {
            start,
            rate,
            ring: Ring {
                frames: vec![[0, 0]; capacity],
                emitted: 0,
            },
            pending: Vec::new(),
            legs: [Leg::default(), Leg::default()],
            closed: false,
            masks: Vec::new(),
            cfg,
        }
    }

    /// Timeline position of `t`, negative before the start.
    fn position(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.start) {
            Some(d) => frames(d, self.rate, false),
            None => -frames(self.start.duration_since(t), self.rate, false),
        }
    }

    /// `pcm` is the decoded payload at cfg.rate (caller guarantees same rate); `ts_rate` is the RTP
    /// clock (8000 for G.711).
    pub fn push(
        &mut self,
        side: Side,
        arrival: Instant,
        rtp: &RtpHeader,
        ts_rate: u32,
        pcm: &[i16],
    ) {
        let arrival_pos = self.position(arrival);
        let resync = frames(self.cfg.resync, self.rate, false);
        let rate = self.rate;
        let ts_rate = if ts_rate == 0 { rate } else { ts_rate };
        let closed = self.closed;
        let leg = &mut self.legs[side.index()];
        leg.stats.packets += 1;
        if closed {
            leg.stats.late += 1;
            return;
        }
        let new_source = leg.ssrc != Some(rtp.ssrc);
        if new_source {
            // RFC 3550 §8.2: a new SSRC is a new source with its own numbering and clock.
            leg.close_run();
            leg.ssrc = Some(rtp.ssrc);
        }
        let outcome = leg.track_seq(rtp.seq);
        if outcome == SeqOutcome::Duplicate {
            leg.stats.duplicates += 1;
            return;
        }
        let ext_ts = if new_source {
            i64::from(rtp.timestamp)
        } else {
            // Nearest extended value: wraps in either direction stay continuous.
            leg.last_ts + i64::from(rtp.timestamp.wrapping_sub(leg.last_ts as u32) as i32)
        };
        leg.last_ts = ext_ts;
        let pos = if new_source || leg.anchor_rate != ts_rate {
            leg.anchor(arrival_pos, ext_ts, ts_rate);
            arrival_pos
        } else {
            let ticks = i128::from(ext_ts - leg.anchor_ts);
            let offset = (ticks * i128::from(rate)).div_euclid(i128::from(ts_rate));
            let predicted = leg
                .anchor_pos
                .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX));
            if predicted.abs_diff(arrival_pos) <= resync.unsigned_abs() {
                if outcome == SeqOutcome::Advanced {
                    let drift = frames(self.cfg.drift, rate, false).max(1);
                    match leg.track_skew(arrival_pos - predicted, drift) {
                        Some(moved) => predicted + moved,
                        None => predicted,
                    }
                } else {
                    predicted
                }
            } else if outcome == SeqOutcome::Advanced {
                // Hold/resume, a timestamp jump, or a restart: follow the wall clock again.
                leg.anchor(arrival_pos, ext_ts, ts_rate);
                arrival_pos
            } else {
                // A reordered or stray packet far from its stream's place must not move the
                // anchor of the packets around it; it is too late (or too odd) to place.
                leg.stats.late += 1;
                return;
            }
        };
        self.place(side, pos, pcm);
    }

    /// Counts a packet that carries no audio to place (comfort noise, RFC 4733 events) in its
    /// side's sequence tracking, so that its number is neither lost nor the next audio packet's
    /// gap; its timestamp is not used (an event keeps its start timestamp for its whole length).
    pub fn note(&mut self, side: Side, rtp: &RtpHeader) {
        let leg = &mut self.legs[side.index()];
        leg.stats.packets += 1;
        if leg.ssrc.is_some() && leg.ssrc != Some(rtp.ssrc) {
            // Another source (events sent with their own SSRC): nothing to track against.
            return;
        }
        leg.ssrc = Some(rtp.ssrc);
        if leg.track_seq(rtp.seq) == SeqOutcome::Duplicate {
            leg.stats.duplicates += 1;
        }
    }

    /// Starts writing silence on both channels from `at` (reaching back over audio not yet
    /// emitted) until [`Timeline::unmask`].
    pub fn mask(&mut self, at: Instant) {
        let from = self.position(at).max(self.ring.emitted);
        if self.masks.last().is_some_and(|(_, to)| to.is_none()) {
            return;
        }
        self.masks.push((from, None));
    }

    /// Ends the open mask at `at` (not before where it began).
    pub fn unmask(&mut self, at: Instant) {
        let to = self.position(at);
        if let Some((from, end @ None)) = self.masks.last_mut() {
            *end = Some(to.max(*from));
        }
    }

    /// Zeroes the masked positions among `emitted .. to` in the ring before they are emitted.
    fn apply_masks(&mut self, to: i64) {
        let emitted = self.ring.emitted;
        let capacity = self.ring.capacity();
        for &(from, end) in &self.masks {
            let start = from.max(emitted);
            let stop = end.unwrap_or(i64::MAX).min(to).min(emitted + capacity);
            if start >= stop {
                continue;
            }
            let skip = usize::try_from(start - emitted).unwrap_or(0);
            let count = usize::try_from(stop - start).unwrap_or(0);
            for frame in self.ring.slots(emitted).skip(skip).take(count) {
                *frame = [0, 0];
            }
        }
        self.masks
            .retain(|&(_, end)| end.is_none_or(|end| end > to));
    }

    /// Writes one side's samples at `pos..`, cutting what lies before 0 or before the emission
    /// point, and emitting early into `pending` what the ring cannot hold.
    fn place(&mut self, side: Side, pos: i64, pcm: &[i16]) {
        let end = pos.saturating_add(i64::try_from(pcm.len()).unwrap_or(i64::MAX));
        if end <= 0 {
            // Entirely before the recording started: not audio of this recording, not late.
            return;
        }
        if end <= self.ring.emitted {
            self.legs[side.index()].stats.late += 1;
            return;
        }
        let capacity = self.ring.capacity();
        let mut cur = pos.max(self.ring.emitted).max(0);
        while cur < end {
            let room_end = self.ring.emitted + capacity;
            if cur >= room_end {
                // Keep as much of this packet in the ring as fits; what is emitted early stays in
                // order in `pending` (never dropped, bounded by the packet's distance ahead).
                let early = (end - capacity).min(cur);
                self.apply_masks(early);
                self.ring.emit_to(early, &mut self.pending);
                continue;
            }
            let chunk_end = end.min(room_end);
            let from = usize::try_from(cur - pos).unwrap_or(usize::MAX);
            let to = usize::try_from(chunk_end - pos).unwrap_or(usize::MAX);
            if let Some(samples) = pcm.get(from..to) {
                self.ring.write(side.index(), cur, samples);
            }
            cur = chunk_end;
        }
    }

    /// Appends interleaved stereo frames (L=caller, R=callee) for every sample position older than
    /// (now - start - reorder_window) not yet emitted; unwritten positions are silence (0).
    pub fn drain_ready(&mut self, now: Instant, out: &mut Vec<i16>) {
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        if self.closed {
            return;
        }
        let window = frames(self.cfg.reorder_window, self.rate, false);
        let ready = self.position(now).saturating_sub(window);
        self.apply_masks(ready);
        self.ring.emit_to(ready, out);
    }

    /// Emits everything up to exactly (end - start) * rate frames (rounded to nearest) and closes
    /// the timeline; later pushes are counted as late and ignored. Frames already handed out past
    /// that point (a drain with `now` after `end`) cannot be taken back.
    pub fn finish(&mut self, end: Instant, out: &mut Vec<i16>) {
        if self.closed {
            out.extend_from_slice(&self.pending);
            self.pending.clear();
            return;
        }
        let total = end
            .checked_duration_since(self.start)
            .map_or(0, |d| frames(d, self.rate, true));
        // `pending` holds the frames just below `emitted`; trim what lies past the end.
        let excess = usize::try_from(self.ring.emitted - total)
            .unwrap_or(0)
            .min(self.pending.len() / 2);
        self.pending.truncate(self.pending.len() - excess * 2);
        self.ring.emitted -= excess as i64;
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        self.apply_masks(total);
        self.ring.emit_to(total, out);
        self.closed = true;
    }

    /// Reception counters of one side.
    pub fn stats(&self, side: Side) -> LegStats {
        self.legs[side.index()].stats()
    }

    /// Frames handed out so far by `drain_ready` and `finish`.
    pub fn frames_emitted(&self) -> u64 {
        let held = (self.pending.len() / 2) as i64;
        u64::try_from(self.ring.emitted - held).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PTIME: u64 = 20;
    const SAMPLES: usize = 160;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn hdr(seq: u16, ts: u32, ssrc: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 0,
            seq,
            timestamp: ts,
            ssrc,
        }
    }

    fn block(value: i16) -> Vec<i16> {
        vec![value; SAMPLES]
    }

    /// Splits interleaved frames into (left, right).
    fn channels(out: &[i16]) -> (Vec<i16>, Vec<i16>) {
        assert_eq!(out.len() % 2, 0);
        let left = out.iter().step_by(2).copied().collect();
        let right = out.iter().skip(1).step_by(2).copied().collect();
        (left, right)
    }

    /// Pushes packet `i` of a regular 20 ms stream, arriving at `arrive_ms`.
    #[allow(clippy::too_many_arguments)]
    fn push_regular(
        tl: &mut Timeline,
        t0: Instant,
        side: Side,
        i: u32,
        arrive_ms: u64,
        seq0: u16,
        ts0: u32,
        ssrc: u32,
        value: i16,
    ) {
        let h = hdr(
            seq0.wrapping_add(i as u16),
            ts0.wrapping_add(i * SAMPLES as u32),
            ssrc,
        );
        tl.push(side, at(t0, arrive_ms), &h, 8000, &block(value));
    }

    fn assert_range(ch: &[i16], from: usize, to: usize, value: i16, what: &str) {
        for (i, s) in ch[from..to].iter().enumerate() {
            assert_eq!(*s, value, "{what}: frame {} is {s}, want {value}", from + i);
        }
    }

    #[test]
    fn both_sides_land_on_their_channels_for_the_whole_duration() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..150u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, ms, 10, 1000, 1, 1000);
            // The callee's packets all arrive 7 ms after the tick: anchored 56 frames later.
            push_regular(&mut tl, t0, Side::Callee, i, ms + 7, 500, 9999, 2, -1000);
            tl.drain_ready(at(t0, ms + 7), &mut out);
        }
        tl.finish(at(t0, 3000), &mut out);
        assert_eq!(out.len(), 2 * 24_000);
        assert_eq!(tl.frames_emitted(), 24_000);
        let (l, r) = channels(&out);
        assert_range(&l, 0, 24_000, 1000, "caller");
        assert_range(&r, 0, 56, 0, "callee before its first packet");
        assert_range(&r, 56, 24_000, -1000, "callee");
        for side in [Side::Caller, Side::Callee] {
            assert_eq!(
                tl.stats(side),
                LegStats {
                    packets: 150,
                    ..LegStats::default()
                }
            );
        }
    }

    #[test]
    fn callee_starting_late_gets_leading_silence_on_the_right_only() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..100u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, ms, 0, 0, 1, 1000);
            if ms >= 500 {
                push_regular(&mut tl, t0, Side::Callee, i - 25, ms, 0, 0, 2, -1000);
            }
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 2000), &mut out);
        let (l, r) = channels(&out);
        assert_eq!(l.len(), 16_000);
        assert_range(&l, 0, 16_000, 1000, "caller");
        assert_range(&r, 0, 4000, 0, "callee before answer");
        assert_range(&r, 4000, 16_000, -1000, "callee");
    }

    #[test]
    fn lost_packets_leave_silent_holes_and_are_counted() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..100u32 {
            let ms = u64::from(i) * PTIME;
            if i % 5 != 2 {
                push_regular(&mut tl, t0, Side::Caller, i, ms, 0, 0, 1, 1000);
            }
            push_regular(&mut tl, t0, Side::Callee, i, ms, 0, 0, 2, -1000);
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 2000), &mut out);
        let (l, r) = channels(&out);
        assert_eq!(l.len(), 16_000);
        for i in 0..100usize {
            let want = if i % 5 == 2 { 0 } else { 1000 };
            assert_range(&l, i * SAMPLES, (i + 1) * SAMPLES, want, "caller");
        }
        assert_range(&r, 0, 16_000, -1000, "callee");
        let caller = tl.stats(Side::Caller);
        assert_eq!((caller.packets, caller.lost), (80, 20));
        assert_eq!(tl.stats(Side::Callee).lost, 0);
    }

    #[test]
    fn reordered_packets_within_the_window_land_in_order() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        // Packet 3 arrives 30 ms late, after packets 4 and 5.
        let order: [(u32, u64); 10] = [
            (0, 0),
            (1, 20),
            (2, 40),
            (4, 80),
            (5, 100),
            (3, 101),
            (6, 120),
            (7, 140),
            (8, 160),
            (9, 180),
        ];
        for (i, ms) in order {
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                ms,
                7,
                0,
                1,
                100 * i as i16 + 1,
            );
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 200), &mut out);
        let (l, _) = channels(&out);
        assert_eq!(l.len(), 1600);
        for i in 0..10usize {
            assert_range(
                &l,
                i * SAMPLES,
                (i + 1) * SAMPLES,
                100 * i as i16 + 1,
                "caller",
            );
        }
        assert_eq!(
            tl.stats(Side::Caller),
            LegStats {
                packets: 10,
                ..LegStats::default()
            }
        );
    }

    #[test]
    fn packet_later_than_the_window_is_counted_late_and_not_written() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in (0..20u32).filter(|&i| i != 5) {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, ms, 0, 0, 1, 1000);
            tl.drain_ready(at(t0, ms), &mut out);
        }
        // Due at 100 ms, arrives at 390 ms; by then everything before 320 ms is emitted.
        push_regular(&mut tl, t0, Side::Caller, 5, 390, 0, 0, 1, 5555);
        tl.finish(at(t0, 400), &mut out);
        let (l, _) = channels(&out);
        assert_eq!(l.len(), 3200);
        assert_range(&l, 800, 960, 0, "late packet's slot");
        assert_range(&l, 960, 3200, 1000, "after it");
        let s = tl.stats(Side::Caller);
        assert_eq!((s.packets, s.late, s.lost), (20, 1, 0));
    }

    #[test]
    fn partially_emitted_packet_keeps_its_tail_and_is_not_late() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        // Emit up to frame 80 (70 ms - 60 ms window = 10 ms), then a packet for 0..160 arrives.
        tl.drain_ready(at(t0, 70), &mut out);
        assert_eq!(out.len(), 160);
        tl.push(Side::Callee, at(t0, 70), &hdr(1, 0, 9), 8000, &block(3));
        // It was anchored at its arrival (560), so nothing of it is cut.
        tl.finish(at(t0, 100), &mut out);
        let (_, r) = channels(&out);
        assert_range(&r, 0, 560, 0, "before");
        assert_range(&r, 560, 720, 3, "packet");
        assert_eq!(tl.stats(Side::Callee).late, 0);
        // With an anchor in place, a packet reaching back before the emission point is cut.
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        tl.push(Side::Caller, t0, &hdr(1, 0, 9), 8000, &block(1));
        tl.drain_ready(at(t0, 90), &mut out); // emits 0..240
        tl.push(Side::Caller, at(t0, 90), &hdr(2, 160, 9), 8000, &block(2));
        tl.finish(at(t0, 40), &mut out);
        let (l, _) = channels(&out);
        assert_eq!(l.len(), 320);
        assert_range(&l, 0, 160, 1, "first");
        assert_range(&l, 160, 240, 0, "emitted before the second packet came");
        assert_range(&l, 240, 320, 2, "tail of second");
        assert_eq!(tl.stats(Side::Caller).late, 0);
        // Frames already drained cannot be taken back by an earlier end.
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        tl.drain_ready(at(t0, 90), &mut out);
        tl.finish(at(t0, 10), &mut out);
        assert_eq!(out.len(), 2 * 240);
        assert_eq!(tl.frames_emitted(), 240);
    }

    #[test]
    fn duplicates_are_counted_and_not_rewritten() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..10u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Callee, i, ms, 0, 0, 1, 1000);
            if i == 6 {
                // A copy of packet 3 with different content must not overwrite the original.
                push_regular(&mut tl, t0, Side::Callee, 3, ms, 0, 0, 1, -7);
                push_regular(&mut tl, t0, Side::Callee, 6, ms + 1, 0, 0, 1, -7);
            }
        }
        tl.finish(at(t0, 200), &mut out);
        let (_, r) = channels(&out);
        assert_range(&r, 0, 1600, 1000, "callee");
        let s = tl.stats(Side::Callee);
        assert_eq!((s.packets, s.duplicates, s.lost), (12, 2, 0));
    }

    #[test]
    fn sequence_and_timestamp_wrap_are_continuous() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..100u32 {
            let ms = u64::from(i) * PTIME;
            // Seq wraps after 36 packets; ts wraps after 5 packets on the caller.
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                ms,
                65_500,
                u32::MAX - 800,
                1,
                1000,
            );
            push_regular(&mut tl, t0, Side::Callee, i, ms, 65_535, u32::MAX, 2, -1000);
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 2000), &mut out);
        let (l, r) = channels(&out);
        assert_range(&l, 0, 16_000, 1000, "caller");
        assert_range(&r, 0, 16_000, -1000, "callee");
        for side in [Side::Caller, Side::Callee] {
            let s = tl.stats(side);
            assert_eq!((s.packets, s.lost, s.late, s.duplicates), (100, 0, 0, 0));
        }
    }

    #[test]
    fn ssrc_change_re_anchors_to_arrival() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..50u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                ms,
                100,
                4_000_000,
                0xAAAA,
                1000,
            );
            tl.drain_ready(at(t0, ms), &mut out);
        }
        // New source after a 30 ms pause, unrelated seq and ts.
        for i in 0..50u32 {
            let ms = 1030 + u64::from(i) * PTIME;
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                ms,
                40_000,
                123_456_789,
                0xBBBB,
                2000,
            );
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 2030), &mut out);
        let (l, _) = channels(&out);
        assert_eq!(l.len(), 16_240);
        assert_range(&l, 0, 8000, 1000, "first source");
        assert_range(&l, 8000, 8240, 0, "pause");
        assert_range(&l, 8240, 16_240, 2000, "second source");
        let s = tl.stats(Side::Caller);
        assert_eq!((s.packets, s.lost, s.late), (100, 0, 0));
    }

    #[test]
    fn silence_gap_keeps_alignment_with_and_without_timestamp_jump() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        let mut now = 0;
        for i in 0..50u32 {
            now = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, now, 0, 0, 1, 1000);
            push_regular(&mut tl, t0, Side::Callee, i, now, 0, 0, 2, -1000);
            tl.drain_ready(at(t0, now), &mut out);
        }
        // 3 s without packets (drained regularly meanwhile), then both resume at 4000 ms.
        while now < 4000 {
            now += 20;
            tl.drain_ready(at(t0, now), &mut out);
        }
        for i in 0..50u32 {
            let ms = 4000 + u64::from(i) * PTIME;
            // Caller: seq continues, timestamp advanced by the 3 s of silence (RFC 3551 §4.1).
            let h = hdr(50 + i as u16, (200 + i) * SAMPLES as u32, 1);
            tl.push(Side::Caller, at(t0, ms + 3), &h, 8000, &block(1001));
            // Callee: seq and timestamp both continue as if there had been no gap.
            let h = hdr(50 + i as u16, (50 + i) * SAMPLES as u32, 2);
            tl.push(Side::Callee, at(t0, ms), &h, 8000, &block(-1001));
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 5000), &mut out);
        let (l, r) = channels(&out);
        assert_eq!(l.len(), 40_000);
        assert_range(&l, 0, 8000, 1000, "caller talk");
        assert_range(&l, 8000, 32_000, 0, "caller gap");
        assert_range(&l, 32_000, 40_000, 1001, "caller after gap");
        assert_range(&r, 0, 8000, -1000, "callee talk");
        assert_range(&r, 8000, 32_000, 0, "callee gap");
        assert_range(&r, 32_000, 40_000, -1001, "callee after gap");
        assert_eq!(tl.stats(Side::Caller).lost, 0);
        assert_eq!(tl.stats(Side::Callee).lost, 0);
    }

    /// A deterministic messy call: jitter, loss, reordering on both sides.
    fn messy_call(tl: &mut Timeline, t0: Instant, drains: &[u64], out: &mut Vec<i16>) {
        let mut events: Vec<(u64, Side, u32)> = Vec::new();
        let mut x = 12345u32;
        for i in 0..300u32 {
            for side in [Side::Caller, Side::Callee] {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if (x >> 16) % 10 == 0 {
                    continue; // lost
                }
                let jitter = u64::from((x >> 8) % 40);
                events.push((u64::from(i) * PTIME + 5 + jitter, side, i));
            }
        }
        events.sort_by_key(|e| e.0);
        let mut d = drains.iter().peekable();
        for (ms, side, i) in events {
            while let Some(&&dm) = d.peek() {
                if dm > ms {
                    break;
                }
                tl.drain_ready(at(t0, dm), out);
                d.next();
            }
            let value = if side == Side::Caller { 1 } else { -1 } * (i as i16 + 1);
            push_regular(tl, t0, side, i, ms, 9, 77, side.index() as u32, value);
        }
        tl.finish(at(t0, 6100), out);
    }

    #[test]
    fn irregular_drains_give_the_same_output_as_one_finish() {
        let t0 = Instant::now();
        let mut once = Vec::new();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        messy_call(&mut tl, t0, &[], &mut once);
        let mut x = 7u64;
        let mut drains = Vec::new();
        let mut ms = 0;
        while ms < 6000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ms += 1 + (x >> 33) % 90;
            drains.push(ms);
        }
        let mut pieces = Vec::new();
        let mut tl2 = Timeline::new(t0, TimelineConfig::default());
        messy_call(&mut tl2, t0, &drains, &mut pieces);
        assert_eq!(once.len(), 2 * 48_800);
        assert_eq!(pieces, once);
        assert_eq!(tl.stats(Side::Caller), tl2.stats(Side::Caller));
        assert!(tl.stats(Side::Caller).lost > 0);
        assert_eq!(tl2.stats(Side::Callee).late, 0);
    }

    #[test]
    fn overflow_beyond_the_ring_is_emitted_early_not_dropped() {
        let t0 = Instant::now();
        let cfg = TimelineConfig {
            buffer: Duration::from_millis(100),
            ..TimelineConfig::default()
        };
        let mut tl = Timeline::new(t0, cfg);
        // 1 s of packets with no drain at all: the 800-frame ring overflows many times.
        for i in 0..50u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, ms, 0, 0, 1, 1000);
            push_regular(&mut tl, t0, Side::Callee, i, ms, 0, 0, 2, -1000);
        }
        let mut out = Vec::new();
        tl.drain_ready(at(t0, 500), &mut out);
        assert_eq!(out.len(), 2 * 7200, "pending frames come out first");
        tl.finish(at(t0, 1000), &mut out);
        let (l, r) = channels(&out);
        assert_range(&l, 0, 8000, 1000, "caller");
        assert_range(&r, 0, 8000, -1000, "callee");
        // One packet longer than the whole ring is kept entire as well.
        let mut tl = Timeline::new(
            t0,
            TimelineConfig {
                buffer: Duration::from_millis(10),
                ..TimelineConfig::default()
            },
        );
        let long: Vec<i16> = (0..1000).collect();
        tl.push(Side::Caller, t0, &hdr(0, 0, 1), 8000, &long);
        let mut out = Vec::new();
        tl.finish(at(t0, 125), &mut out);
        let (l, _) = channels(&out);
        assert_eq!(l, long);
    }

    #[test]
    fn packets_before_start_are_cut_at_zero_and_pushes_after_finish_are_late() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let early = t0 - Duration::from_millis(10);
        // 20 ms packet arriving 10 ms before start: its second half is frames 0..80.
        tl.push(Side::Caller, early, &hdr(0, 0, 1), 8000, &block(5));
        tl.push(
            Side::Caller,
            early + Duration::from_millis(20),
            &hdr(1, 160, 1),
            8000,
            &block(6),
        );
        // Entirely before the start: neither written nor late.
        tl.push(
            Side::Callee,
            t0 - Duration::from_millis(500),
            &hdr(0, 0, 2),
            8000,
            &block(9),
        );
        let mut out = Vec::new();
        tl.finish(at(t0, 30), &mut out);
        let (l, r) = channels(&out);
        assert_eq!(l.len(), 240);
        assert_range(&l, 0, 80, 5, "cut packet");
        assert_range(&l, 80, 240, 6, "next packet");
        assert_range(&r, 0, 240, 0, "callee");
        assert_eq!(tl.stats(Side::Callee).late, 0);
        tl.push(Side::Callee, at(t0, 40), &hdr(1, 160, 2), 8000, &block(9));
        assert_eq!(tl.stats(Side::Callee).late, 1);
        assert_eq!(tl.stats(Side::Callee).packets, 2);
        let mut more = Vec::new();
        tl.drain_ready(at(t0, 5000), &mut more);
        tl.finish(at(t0, 5000), &mut more);
        assert!(more.is_empty());
    }

    #[test]
    fn sequence_restart_after_confirmation_opens_a_new_run() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..10u32 {
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                u64::from(i) * PTIME,
                1000,
                0,
                1,
                1,
            );
        }
        // Same SSRC, numbering restarts at 30000 while the timestamp continues.
        for i in 10..20u32 {
            let h = hdr(30_000 + i as u16, i * 160, 1);
            tl.push(
                Side::Caller,
                at(t0, u64::from(i) * PTIME),
                &h,
                8000,
                &block(2),
            );
        }
        tl.finish(at(t0, 400), &mut out);
        let (l, _) = channels(&out);
        assert_range(&l, 0, 1600, 1, "before restart");
        assert_range(&l, 1600, 3200, 2, "after restart");
        let s = tl.stats(Side::Caller);
        assert_eq!((s.packets, s.lost, s.late), (20, 0, 0));
    }

    #[test]
    fn other_rtp_clock_is_scaled_to_the_timeline_rate() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        // A 16 kHz RTP clock: 320 ticks per 20 ms of 160 timeline samples.
        for i in 0..5u32 {
            let h = hdr(i as u16, i * 320, 1);
            tl.push(
                Side::Caller,
                at(t0, u64::from(i) * PTIME),
                &h,
                16_000,
                &block(i as i16 + 1),
            );
        }
        let mut out = Vec::new();
        tl.finish(at(t0, 100), &mut out);
        let (l, _) = channels(&out);
        for i in 0..5usize {
            assert_range(&l, i * 160, (i + 1) * 160, i as i16 + 1, "scaled");
        }
    }

    #[test]
    fn side_and_stats_serialise_as_documented() {
        assert_eq!(serde_json::to_string(&Side::Caller).unwrap(), "\"caller\"");
        assert_eq!(serde_json::to_string(&Side::Callee).unwrap(), "\"callee\"");
        let s = LegStats {
            packets: 1,
            lost: 2,
            late: 3,
            duplicates: 4,
            slews: 5,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"packets":1,"lost":2,"late":3,"duplicates":4,"slews":5}"#
        );
    }

    /// A deterministic generator of jitter (xorshift), so runs are reproducible.
    struct Jitter(u64);

    impl Jitter {
        fn next_ms(&mut self, max: u64) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % (max * 1000)) as f64 / 1000.0
        }
    }

    /// The packet index a sample value stands for (`value = index % 30000 + 1`), unwrapped to
    /// the index nearest `near`.
    fn index_of(value: i16, near: f64) -> f64 {
        let base = f64::from(value - 1);
        let k = ((near - base) / 30000.0).round();
        base + k * 30000.0
    }

    #[test]
    fn an_hour_of_skewed_clocks_and_jitter_keeps_the_channels_aligned() {
        // The caller's clock runs 100 ppm fast, the callee's 100 ppm slow: without correction
        // they would drift 0.72 s apart in the hour. Each packet waits 0-30 ms in the network.
        const HOUR_PACKETS: u32 = 180_000;
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let skews = [100e-6, -100e-6];
        let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
        // (arrival ms, side, packet index), in arrival order.
        let mut arrivals: Vec<(f64, usize, u32)> = Vec::with_capacity(2 * HOUR_PACKETS as usize);
        for (side, skew) in skews.iter().enumerate() {
            for n in 0..HOUR_PACKETS {
                // Packet n is sent when the sender's clock reads n * 20 ms.
                let sent = f64::from(n) * 20.0 / (1.0 + skew);
                arrivals.push((sent + jitter.next_ms(30), side, n));
            }
        }
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out = Vec::new();
        let mut checked = 0u64;
        let mut worst: f64 = 0.0;
        let mut worst_last_minute: f64 = 0.0;
        let mut next_drain = 20.0;
        let mut frame = 0u64;
        let mut check = |out: &mut Vec<i16>, frame: &mut u64| {
            for pair in out.chunks_exact(2) {
                let t_ms = *frame as f64 / 8.0;
                *frame += 1;
                if pair[0] == 0 || pair[1] == 0 {
                    continue;
                }
                // When each side's sample was sent, by the true clock.
                let sent = |side: usize, v: i16| {
                    let near = t_ms * (1.0 + skews[side]) / 20.0;
                    index_of(v, near) * 20.0 / (1.0 + skews[side])
                };
                let apart = (sent(0, pair[0]) - sent(1, pair[1])).abs();
                worst = worst.max(apart);
                if t_ms > 3_540_000.0 {
                    worst_last_minute = worst_last_minute.max(apart);
                }
                checked += 1;
            }
            out.clear();
        };
        for (ms, side, n) in arrivals {
            while ms >= next_drain {
                tl.drain_ready(t0 + Duration::from_secs_f64(next_drain / 1000.0), &mut out);
                check(&mut out, &mut frame);
                next_drain += 20.0;
            }
            let h = hdr(n as u16, n.wrapping_mul(160), 1 + side as u32);
            let value = (n % 30_000) as i16 + 1;
            let s = if side == 0 {
                Side::Caller
            } else {
                Side::Callee
            };
            tl.push(
                s,
                t0 + Duration::from_secs_f64(ms / 1000.0),
                &h,
                8000,
                &block(value),
            );
        }
        // The slow side's last packet arrives about 0.36 s after the hour.
        let end_ms = next_drain + 100.0;
        tl.finish(t0 + Duration::from_secs_f64(end_ms / 1000.0), &mut out);
        check(&mut out, &mut frame);
        // Exactly the recording's length in frames, nearly all with both sides present.
        assert_eq!(frame, (end_ms * 8.0).round() as u64);
        assert!(checked > 3590 * 8000, "{checked} frames with both sides");
        // Same-instant audio of the two sides was sent within 2 x drift + one packet of each
        // other, over the whole hour (uncorrected, 720 ms by the end).
        eprintln!(
            "skew: worst {worst:.1} ms, last minute {worst_last_minute:.1} ms, slews {:?}",
            [tl.stats(Side::Caller).slews, tl.stats(Side::Callee).slews]
        );
        assert!(worst <= 60.0, "channels {worst:.1} ms apart at worst");
        assert!(
            worst_last_minute <= 60.0,
            "{worst_last_minute:.1} ms in the last minute"
        );
        // 0.36 s of drift each, taken in steps of about 20 ms.
        for side in [Side::Caller, Side::Callee] {
            let stats = tl.stats(side);
            assert_eq!(stats.lost, 0);
            assert!((10..=40).contains(&stats.slews), "{side:?}: {stats:?}");
        }
    }

    #[test]
    fn a_masked_span_is_silent_on_both_channels_even_for_audio_already_placed() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..100u32 {
            let ms = u64::from(i) * PTIME;
            push_regular(&mut tl, t0, Side::Caller, i, ms, 1, 0, 1, 1000);
            push_regular(&mut tl, t0, Side::Callee, i, ms, 1, 0, 2, -1000);
            // A digit from 500 ms to 900 ms: the mask starts 40 ms back, over audio already
            // placed but within the reorder window.
            if ms == 540 {
                tl.mask(at(t0, 500));
            }
            if ms == 900 {
                tl.unmask(at(t0, 900));
            }
            tl.drain_ready(at(t0, ms), &mut out);
        }
        tl.finish(at(t0, 2000), &mut out);
        let (l, r) = channels(&out);
        assert_eq!(l.len(), 16_000);
        assert_range(&l, 0, 4000, 1000, "caller before");
        assert_range(&r, 0, 4000, -1000, "callee before");
        assert_range(&l, 4000, 7200, 0, "caller masked");
        assert_range(&r, 4000, 7200, 0, "callee masked");
        assert_range(&l, 7200, 16_000, 1000, "caller after");
        assert_range(&r, 7200, 16_000, -1000, "callee after");
    }

    #[test]
    fn an_open_mask_at_the_end_silences_the_rest() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        for i in 0..50u32 {
            push_regular(
                &mut tl,
                t0,
                Side::Caller,
                i,
                u64::from(i) * PTIME,
                1,
                0,
                1,
                7,
            );
        }
        tl.mask(at(t0, 600));
        tl.finish(at(t0, 1000), &mut out);
        let (l, _) = channels(&out);
        assert_range(&l, 0, 4800, 7, "before");
        assert_range(&l, 4800, 8000, 0, "masked to the end");
    }

    #[test]
    fn comfort_noise_and_event_packets_are_not_counted_as_loss() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0, TimelineConfig::default());
        let mut out = Vec::new();
        // Audio with seq 1..=10, then CN (seq 11, 12), then audio again (13..=20), with an
        // RFC 4733 event packet (seq 21, its own start timestamp) and a duplicate of it.
        let audio = |tl: &mut Timeline, i: u32| {
            push_regular(tl, t0, Side::Caller, i, u64::from(i) * PTIME, 1, 0, 1, 5);
        };
        (0..10).for_each(|i| audio(&mut tl, i));
        tl.note(Side::Caller, &hdr(11, 1600, 1));
        tl.note(Side::Caller, &hdr(12, 1600, 1));
        (12..20).for_each(|i| audio(&mut tl, i));
        tl.note(Side::Caller, &hdr(21, 3000, 1));
        tl.note(Side::Caller, &hdr(21, 3000, 1));
        tl.finish(at(t0, 400), &mut out);
        let stats = tl.stats(Side::Caller);
        assert_eq!(
            (stats.packets, stats.lost, stats.duplicates),
            (22, 0, 1),
            "{stats:?}"
        );
        // The CN stretch is silence: nothing was written for it.
        let (l, _) = channels(&out);
        assert_range(&l, 1600, 1920, 0, "comfort noise as silence");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn output_length_is_duration_times_rate(
            packets in proptest::collection::vec(
                (any::<bool>(), 0u64..120, 0usize..2, any::<bool>()), 1..120),
            drains in proptest::collection::vec(0u64..3000, 0..20),
            garbage in proptest::collection::vec((any::<u16>(), any::<u32>(), any::<u32>()), 0..10),
            end_extra in 0u64..500,
            end_sub_ms in 0u64..1000,
        ) {
            let t0 = Instant::now();
            let mut tl = Timeline::new(t0, TimelineConfig::default());
            let mut events: Vec<(u64, usize, u32, bool)> = packets.iter().enumerate()
                .filter(|(_, p)| !p.0)
                .map(|(i, &(_, jitter, side, dup))| (i as u64 * 20 + jitter, side, i as u32, dup))
                .collect();
            events.sort_by_key(|e| e.0);
            let mut drains = drains;
            drains.sort_unstable();
            let last = events.last().map_or(0, |e| e.0);
            let mut out = Vec::new();
            let mut d = 0;
            for (n, &(ms, side, i, dup)) in events.iter().enumerate() {
                while d < drains.len() && drains[d] <= ms {
                    tl.drain_ready(at(t0, drains[d]), &mut out);
                    d += 1;
                }
                let side = if side == 0 { Side::Caller } else { Side::Callee };
                push_regular(&mut tl, t0, side, i, ms, 65_000, u32::MAX - 3000, 5, 1);
                if dup {
                    push_regular(&mut tl, t0, side, i, ms, 65_000, u32::MAX - 3000, 5, 1);
                }
                if let Some(&(seq, ts, ssrc)) = garbage.get(n) {
                    tl.push(side, at(t0, ms), &hdr(seq, ts, ssrc % 3), 8000, &block(9));
                }
            }
            let end = t0 + Duration::from_millis(last + end_extra)
                + Duration::from_micros(end_sub_ms);
            tl.finish(end, &mut out);
            let want = frames(end - t0, 8000, true);
            prop_assert_eq!(out.len() as i64, 2 * want);
            prop_assert_eq!(tl.frames_emitted() as i64, want);
            for side in [Side::Caller, Side::Callee] {
                let s = tl.stats(side);
                prop_assert!(s.late + s.duplicates <= s.packets);
            }
        }
    }
}

//! The recorder: one OS thread that owns every open WAV and does all recording file IO (WAV
//! samples, periodic header updates with fsync, SHA-256, sidecar writes), fed by the relay's tap
//! queue and by commands from the call registry. It never touches the relay: a slow disk only
//! fills the tap queue, whose overflow is counted as a gap.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::call::metadata::{
    write_sidecar, CallEventRecord, CallRecord, Decision, LegInfo, RecordState,
};
use crate::codec::{Codec, Decoder};
use crate::media::rtp;
use crate::media::tap::TapPacket;
use crate::record::dtmf::{DtmfTracker, DtmfUpdate};
use crate::record::timeline::{Side, Timeline, TimelineConfig};
use crate::record::wav::{repair, sha256_file, WavWriter};
use crate::sip::proxy::Party;

/// How often ready audio is moved from the timelines into the files.
const TICK: Duration = Duration::from_millis(20);
/// Packets handled between two looks at the command queue.
const PACKET_BATCH: usize = 512;
/// Lost packets (in a row) that a codec with loss concealment fills: Opus rebuilds the last
/// one from the next packet's in-band FEC and the others by its PLC; longer gaps stay silent.
const MAX_CONCEALED: u16 = 3;

/// A masked digit's silence starts this much before its first event packet and ends this much
/// after its end packet: phones start the tone before they signal it and the event packets
/// travel beside the audio, not ahead of it. Within the timeline's reorder window.
const MASK_GUARD: Duration = Duration::from_millis(40);

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// How often each WAV header is brought up to date and fsynced.
    pub header_update: Duration,
    /// Timeline settings (rate, reorder window).
    pub timeline: TimelineConfig,
    /// Depth of the tap queue in packets.
    pub tap_queue: usize,
    /// DTMF digits are written as silence and never stored (card numbers).
    pub mask_dtmf: bool,
}

/// Payload type to codec map of one party's stream.
pub type CodecMap = Vec<(u8, Codec)>;

/// What a payload type carries when it is not audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aux {
    /// RFC 4733 telephone-events with this RTP clock.
    TelephoneEvent {
        /// RTP clock of the event stream (8000 for `telephone-event/8000`).
        clock_rate: u32,
    },
    /// RFC 3389 comfort noise: written as silence.
    ComfortNoise,
}

/// Payload types of one party's stream that carry no audio to decode.
pub type AuxMap = Vec<(u8, Aux)>;

/// Everything needed to open a recording.
pub struct StartRecording {
    /// Slot the tap tags packets with.
    pub slot: u64,
    /// WAV path.
    pub wav_path: PathBuf,
    /// Sidecar path.
    pub sidecar_path: PathBuf,
    /// First sample's time.
    pub start: Instant,
    /// Codecs by payload type of the packets each party sends: [caller, callee].
    pub codecs: [CodecMap; 2],
    /// Event and comfort-noise payload types of the packets each party sends.
    pub aux: [AuxMap; 2],
    /// Sample rate of the WAV and its timeline (every codec is decoded to it).
    pub rate: u32,
    /// The record as it stands (written as the first sidecar).
    pub record: CallRecord,
}

/// Work for the recorder thread, handled in order.
pub enum Command {
    /// Open a WAV and write the first sidecar.
    Start(Box<StartRecording>),
    /// New codec maps after a re-negotiation.
    Codecs {
        /// Recording slot.
        slot: u64,
        /// [caller, callee].
        codecs: [CodecMap; 2],
        /// [caller, callee].
        aux: [AuxMap; 2],
    },
    /// Close the WAV at `end`, complete the record with file and media facts, write the sidecar.
    Stop {
        /// Recording slot.
        slot: u64,
        /// Time of the last sample.
        end: Instant,
        /// The record as the registry knows it.
        record: Box<CallRecord>,
        /// Packet copies dropped before reaching us: [caller, callee].
        tap_drops: [u64; 2],
    },
    /// Write a sidecar for a call that was not recorded.
    Sidecar {
        /// Where.
        path: PathBuf,
        /// What.
        record: Box<CallRecord>,
    },
    /// Finish the commands before this one, then stop.
    Shutdown,
}

/// What the recorder tells the daemon (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderEvent {
    /// A sidecar was written in its final state.
    Finalised {
        /// SIP Call-ID.
        call_id: String,
        /// Recording ID.
        recording_id: String,
        /// Final state.
        state: RecordState,
    },
    /// Writing failed; the sidecar says so where it could be written.
    Failed {
        /// Recording ID.
        recording_id: String,
        /// What went wrong.
        error: String,
    },
}

/// Handle to the recorder thread.
pub struct Recorder {
    commands: Sender<Command>,
    tap: SyncSender<TapPacket>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts the thread; events go to `events`.
    pub fn start(
        cfg: RecorderConfig,
        events: tokio::sync::mpsc::UnboundedSender<RecorderEvent>,
    ) -> std::io::Result<Recorder> {
        let (commands, command_rx) = mpsc::channel();
        let (tap, tap_rx) = mpsc::sync_channel(cfg.tap_queue.max(1));
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let mut worker = Worker {
                    cfg,
                    active: HashMap::new(),
                    failed: HashMap::new(),
                    events,
                    deferred: VecDeque::new(),
                };
                worker.run(&command_rx, &tap_rx);
            })?;
        Ok(Recorder {
            commands,
            tap,
            thread: Some(thread),
        })
    }

    /// The queue the relays' taps feed.
    pub fn tap_queue(&self) -> SyncSender<TapPacket> {
        self.tap.clone()
    }

    /// Queues a command.
    pub fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_err() {
            tracing::error!("recorder thread is gone; command lost");
        }
    }

    /// Finishes every queued command and joins the thread.
    pub fn shutdown(mut self) {
        self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("recorder thread panicked");
            }
        }
    }
}

/// One recording: its WAV, its timeline, its decoders and DTMF state. The recorder thread
/// keeps one per active call; `recproxy import` drives one per call with the capture's times.
/// Every method takes the time it is about: nothing here reads the clock.
pub struct Session {
    wav: WavWriter,
    timeline: Timeline,
    /// Time of the first sample (event offsets count from it).
    start: Instant,
    /// Sample rate of the WAV.
    rate: u32,
    /// The decoder of each side's current codec, made when its first packet comes.
    decoders: [Option<Decoder>; 2],
    /// SSRC, sequence number and timestamp of each side's last in-order audio packet, for
    /// loss concealment.
    last_audio: [Option<(u32, u16, u32)>; 2],
    codecs: [CodecMap; 2],
    aux: [AuxMap; 2],
    /// RFC 4733 state per side, and the event clock each side last used.
    dtmf: [DtmfTracker; 2],
    dtmf_clock: [u32; 2],
    /// Digits so far, merged into the record's events at the end.
    dtmf_events: Vec<CallEventRecord>,
    mask_dtmf: bool,
    first_codec: [Option<Codec>; 2],
    header_update: Duration,
    last_header: Instant,
    /// Set when the disk failed: no more writes, the sidecar says why.
    error: Option<String>,
    recording_id: String,
    sidecar: PathBuf,
    /// Decoded samples of one packet, and frames ready for the file: reused.
    pcm: Vec<i16>,
    out: Vec<i16>,
}

struct Worker {
    cfg: RecorderConfig,
    active: HashMap<u64, Session>,
    /// Slots whose WAV could not be opened, with why and where their sidecar goes.
    failed: HashMap<u64, (String, PathBuf)>,
    events: tokio::sync::mpsc::UnboundedSender<RecorderEvent>,
    /// Commands read early while looking for a `Start` (see `pull_forward_setup`), run next in order.
    deferred: VecDeque<Command>,
}

fn side(party: Party) -> Side {
    match party {
        Party::Caller => Side::Caller,
        Party::Callee => Side::Callee,
    }
}

fn idx(party: Party) -> usize {
    match party {
        Party::Caller => 0,
        Party::Callee => 1,
    }
}

impl Worker {
    fn run(&mut self, commands: &Receiver<Command>, tap: &Receiver<TapPacket>) {
        let mut last_tick = Instant::now();
        loop {
            loop {
                let next = match self.deferred.pop_front() {
                    Some(cmd) => Ok(cmd),
                    None => commands.try_recv(),
                };
                match next {
                    Ok(Command::Shutdown) => return self.abandon_all("shutdown"),
                    Ok(cmd) => self.command(cmd, commands, tap),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.abandon_all("daemon stopped"),
                }
            }
            match tap.recv_timeout(TICK) {
                Ok(pkt) => {
                    self.packet(&pkt, commands);
                    for _ in 0..PACKET_BATCH {
                        match tap.try_recv() {
                            Ok(pkt) => self.packet(&pkt, commands),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
        }
    }

    fn command(&mut self, cmd: Command, commands: &Receiver<Command>, tap: &Receiver<TapPacket>) {
        match cmd {
            Command::Start(start) => self.open(*start),
            Command::Codecs { slot, codecs, aux } => {
                if let Some(a) = self.active.get_mut(&slot) {
                    a.set_maps(codecs, aux);
                }
            }
            Command::Stop {
                slot,
                end,
                record,
                tap_drops,
            } => {
                // Packets of this call still queued belong in the file.
                while let Ok(pkt) = tap.try_recv() {
                    self.packet(&pkt, commands);
                }
                self.close(slot, end, *record, tap_drops);
            }
            Command::Sidecar { path, record } => {
                self.write(&path, &record);
            }
            Command::Shutdown => {}
        }
    }

    fn open(&mut self, start: StartRecording) {
        let slot = start.slot;
        let recording_id = start.record.recording_id.clone();
        let sidecar = start.sidecar_path.clone();
        match Session::open(&self.cfg, start) {
            Ok(session) => {
                self.active.insert(slot, session);
            }
            Err(error) => {
                tracing::error!(%recording_id, %error, "cannot open WAV");
                self.failed.insert(slot, (error, sidecar));
            }
        }
    }

    /// The registry queues a recording's `Start` (and a re-negotiation's `Codecs`) before the
    /// packets that need it, but commands and packets travel on different channels: a packet
    /// can be dequeued before its setup. Runs every queued `Start` and `Codecs` now; other
    /// commands keep their order in `deferred`.
    fn pull_forward_setup(&mut self, commands: &Receiver<Command>) {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Start(start) => self.open(*start),
                Command::Codecs { slot, codecs, aux } => {
                    if let Some(a) = self.active.get_mut(&slot) {
                        a.set_maps(codecs, aux);
                    }
                }
                other => self.deferred.push_back(other),
            }
        }
    }

    fn packet(&mut self, pkt: &TapPacket, commands: &Receiver<Command>) {
        let (party, arrival, bytes) = (pkt.party, pkt.arrival, pkt.bytes());
        let handled = self
            .active
            .get_mut(&pkt.slot)
            .is_some_and(|s| s.packet(party, arrival, bytes));
        if handled || self.failed.contains_key(&pkt.slot) {
            return;
        }
        // Its Start or new maps may still be queued behind the packet.
        self.pull_forward_setup(commands);
        if let Some(session) = self.active.get_mut(&pkt.slot) {
            session.packet(party, arrival, bytes);
        }
    }

    fn tick(&mut self, now: Instant) {
        for session in self.active.values_mut() {
            session.tick(now);
        }
    }

    fn close(&mut self, slot: u64, end: Instant, mut record: CallRecord, tap_drops: [u64; 2]) {
        if let Some((reason, sidecar)) = self.failed.remove(&slot) {
            record.state = RecordState::NotRecorded;
            record.service.decision = Decision::Failed;
            record.not_recorded_reason = Some(reason);
            record.wav = None;
            self.finalised(sidecar, record);
            return;
        }
        let Some(session) = self.active.remove(&slot) else {
            tracing::warn!(slot, recording_id = %record.recording_id, "stop for unknown recording");
            return;
        };
        let sidecar = session.sidecar_path().to_path_buf();
        let record = session.close(end, record, tap_drops);
        self.finalised(sidecar, record);
    }

    fn finalised(&mut self, sidecar: PathBuf, record: CallRecord) {
        if self.write(&sidecar, &record) {
            let _ = self.events.send(RecorderEvent::Finalised {
                call_id: record.sip_call_id.clone(),
                recording_id: record.recording_id.clone(),
                state: record.state,
            });
        }
    }

    fn write(&mut self, path: &std::path::Path, record: &CallRecord) -> bool {
        match write_sidecar(path, record) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(recording_id = %record.recording_id, error = %e, "cannot write sidecar");
                let _ = self.events.send(RecorderEvent::Failed {
                    recording_id: record.recording_id.clone(),
                    error: e.to_string(),
                });
                false
            }
        }
    }

    /// The daemon stopped without stopping these recordings: make the files valid at least.
    fn abandon_all(&mut self, why: &str) {
        for (_, mut session) in self.active.drain() {
            let _ = session.wav.update_header();
            tracing::warn!(recording_id = %session.recording_id, why, "recording left open");
        }
    }
}

impl Session {
    /// Creates the WAV (and its directory) and writes the first sidecar. Err: why the WAV
    /// could not be created.
    pub fn open(cfg: &RecorderConfig, start: StartRecording) -> Result<Session, String> {
        let StartRecording {
            wav_path,
            sidecar_path,
            start,
            codecs,
            aux,
            rate,
            record,
            ..
        } = start;
        let wav = wav_path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .map_err(|e| e.to_string())
            .and_then(|()| WavWriter::create(&wav_path, rate, 2).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot create {}: {e}", wav_path.display()))?;
        if let Err(e) = write_sidecar(&sidecar_path, &record) {
            tracing::error!(recording_id = %record.recording_id, error = %e, "cannot write sidecar");
        }
        Ok(Session {
            wav,
            timeline: Timeline::new(
                start,
                TimelineConfig {
                    rate,
                    ..cfg.timeline.clone()
                },
            ),
            start,
            rate,
            decoders: [None, None],
            last_audio: [None, None],
            codecs,
            aux,
            dtmf: [DtmfTracker::new(), DtmfTracker::new()],
            dtmf_clock: [8000; 2],
            dtmf_events: Vec::new(),
            mask_dtmf: cfg.mask_dtmf,
            first_codec: [None, None],
            header_update: cfg.header_update,
            last_header: start,
            error: None,
            recording_id: record.recording_id,
            sidecar: sidecar_path,
            pcm: Vec::with_capacity(2048),
            out: Vec::with_capacity(16_384),
        })
    }

    /// Where its sidecar goes.
    pub fn sidecar_path(&self) -> &Path {
        &self.sidecar
    }

    /// New payload maps after a re-negotiation.
    pub fn set_maps(&mut self, codecs: [CodecMap; 2], aux: [AuxMap; 2]) {
        self.codecs = codecs;
        self.aux = aux;
    }

    /// One RTP packet `party` sent, received at `arrival`: decoded onto the timeline, or
    /// taken as a DTMF event or comfort noise. False, with nothing done, when it is not RTP or
    /// its payload type is in none of the maps (the maps may still be on their way).
    pub fn packet(&mut self, party: Party, arrival: Instant, bytes: &[u8]) -> bool {
        let Ok((header, payload)) = rtp::parse(bytes) else {
            return false;
        };
        let i = idx(party);
        let pt = header.payload_type;
        let codec = self.codecs[i]
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, c)| *c);
        let aux = self.aux[i].iter().find(|(p, _)| *p == pt).map(|(_, x)| *x);
        let codec = match (codec, aux) {
            (Some(codec), _) => codec,
            (None, Some(Aux::ComfortNoise)) => {
                self.timeline.note(side(party), &header);
                return true;
            }
            (None, Some(Aux::TelephoneEvent { clock_rate })) => {
                self.timeline.note(side(party), &header);
                self.dtmf_clock[i] = clock_rate;
                let mut updates = Vec::new();
                self.dtmf[i].push(arrival, &header, payload, clock_rate, &mut updates);
                for update in updates {
                    self.on_dtmf(party, update);
                }
                return true;
            }
            (None, None) => return false,
        };
        self.audio(party, arrival, header, payload, codec);
        true
    }

    /// An audio packet of `codec`: decoded (after concealing the packets lost just before it)
    /// and placed on the timeline.
    fn audio(
        &mut self,
        party: Party,
        arrival: Instant,
        header: rtp::RtpHeader,
        payload: &[u8],
        codec: Codec,
    ) {
        let i = idx(party);
        self.first_codec[i].get_or_insert(codec);
        if self.decoders[i].as_ref().map(Decoder::codec) != Some(codec) {
            // A new codec (re-INVITE) gets a fresh decoder at the WAV's rate.
            match Decoder::new(codec, self.rate) {
                Ok(d) => self.decoders[i] = Some(d),
                Err(e) => {
                    tracing::warn!(recording_id = %self.recording_id, error = %e, "cannot decode");
                    return;
                }
            }
        }
        let Some(decoder) = self.decoders[i].as_mut() else {
            return;
        };
        self.pcm.clear();
        // Packets lost just before this one: a codec with concealment fills their time, and
        // the filled audio goes in front of this packet's (its sequence number alone is
        // counted, so the lost ones stay lost in the figures, and a late original still takes
        // its place).
        let mut placed = header;
        let previous = self.last_audio[i].filter(|(ssrc, _, _)| *ssrc == header.ssrc);
        if let (Codec::Opus, Some((_, seq, ts))) = (codec, previous) {
            let gap = header.seq.wrapping_sub(seq);
            let per = header.timestamp.wrapping_sub(ts) / u32::from(gap.max(1));
            // 2.5 to 120 ms a packet (RFC 7587 frame sizes at 48 kHz).
            if (2..=MAX_CONCEALED + 1).contains(&gap) && (120..=5760).contains(&per) {
                let samples = (u64::from(per) * u64::from(self.rate)
                    / u64::from(codec.rtp_clock_rate())) as usize;
                for missing in 1..gap {
                    let next = (missing == gap - 1).then_some(payload);
                    decoder.conceal(samples, next, &mut self.pcm);
                }
                placed.timestamp = ts.wrapping_add(per);
            }
        }
        if let Err(e) = decoder.decode(payload, &mut self.pcm) {
            // A damaged packet: its place stays silent, like a lost one.
            tracing::debug!(recording_id = %self.recording_id, error = %e, "undecodable packet");
            self.timeline.note(side(party), &header);
            return;
        }
        let advanced = previous.is_none_or(|(_, seq, _)| {
            let d = header.seq.wrapping_sub(seq);
            d != 0 && d < 0x8000
        });
        if advanced {
            self.last_audio[i] = Some((header.ssrc, header.seq, header.timestamp));
        }
        self.timeline.push(
            side(party),
            arrival,
            &placed,
            codec.rtp_clock_rate(),
            &self.pcm,
        );
    }

    /// Ends digits whose end packet never came, moves the audio that can no longer change to
    /// the file, and brings the WAV header up to date every `header_update`.
    pub fn tick(&mut self, now: Instant) {
        for party in [Party::Caller, Party::Callee] {
            let i = idx(party);
            if let Some(update) = self.dtmf[i].poll(now, self.dtmf_clock[i]) {
                self.on_dtmf(party, update);
            }
        }
        self.out.clear();
        self.timeline.drain_ready(now, &mut self.out);
        self.write_out();
        if self.error.is_none()
            && now.saturating_duration_since(self.last_header) >= self.header_update
        {
            self.last_header = now;
            if let Err(e) = self.wav.update_header() {
                self.fail(format!("header update failed: {e}"));
            }
        }
    }

    /// Writes the audio up to `end`, finishes the WAV, and returns `record` completed with the
    /// legs' figures, the digits and the file's size, length and SHA-256 (or why it failed).
    /// `tap_drops`: packet copies that never reached the recorder, per side.
    pub fn close(
        mut self,
        end: Instant,
        mut record: CallRecord,
        tap_drops: [u64; 2],
    ) -> CallRecord {
        for party in [Party::Caller, Party::Callee] {
            let i = idx(party);
            if let Some(update) = self.dtmf[i].close(end, self.dtmf_clock[i]) {
                self.on_dtmf(party, update);
            }
        }
        record.events.append(&mut self.dtmf_events);
        record.events.sort_by_key(|e| e.at_ms);
        self.out.clear();
        self.timeline.finish(end, &mut self.out);
        self.write_out();
        for party in [Party::Caller, Party::Callee] {
            let stats = self.timeline.stats(side(party));
            let leg = LegInfo {
                codec: self.first_codec[idx(party)].map(|c| c.name().to_string()),
                packets: stats.packets,
                lost: stats.lost,
                late: stats.late,
                gap_ms: tap_drops[idx(party)] * 20,
            };
            match party {
                Party::Caller => record.legs.caller = leg,
                Party::Callee => record.legs.callee = leg,
            }
        }
        let path = self.wav.path().to_path_buf();
        let mut error = self.error.take();
        // After a failed write (disk full) the writer still holds samples the disk refused:
        // the file is closed as it is and its header made to cover what did reach the disk.
        let recording_id = self.recording_id.clone();
        let finished = self.wav.finish().or_else(|e| {
            tracing::error!(%recording_id, error = %e, "recording cut short: the disk refused its last audio");
            error.get_or_insert_with(|| format!("cannot finish WAV: {e}"));
            repair(&path)
        });
        match (finished, error) {
            (Ok(summary), error) => {
                if let Some(wav) = record.wav.as_mut() {
                    wav.bytes = Some(summary.file_bytes);
                    wav.duration_ms = Some(summary.frames * 1000 / u64::from(summary.rate.max(1)));
                    wav.sha256 = sha256_file(&path).ok();
                }
                record.state = RecordState::Complete;
                if let Some(error) = error {
                    // Disk trouble mid-call: what was written is kept and the sidecar says so.
                    record.service.decision = Decision::Failed;
                    record.service.reason = Some(error);
                }
            }
            (Err(e), _) => {
                record.state = RecordState::NotRecorded;
                record.service.decision = Decision::Failed;
                record.not_recorded_reason = Some(format!("cannot finish WAV: {e}"));
            }
        }
        record
    }

    /// A digit began or ended on `party`'s stream: masked (silence over its audio on both
    /// channels, from a little before to a little after), and noted as a `dtmf` event at its
    /// start, without the digit when masking.
    fn on_dtmf(&mut self, party: Party, update: DtmfUpdate) {
        let mask = self.mask_dtmf;
        match update {
            DtmfUpdate::Began { at, .. } => {
                if mask {
                    self.timeline.mask(at.checked_sub(MASK_GUARD).unwrap_or(at));
                }
            }
            DtmfUpdate::Ended {
                digit,
                began,
                at,
                duration,
            } => {
                if mask {
                    self.timeline.unmask(at + MASK_GUARD);
                }
                tracing::debug!(recording_id = %self.recording_id, by = ?party, "DTMF digit");
                self.dtmf_events.push(CallEventRecord {
                    at_ms: began.saturating_duration_since(self.start).as_millis() as u64,
                    kind: "dtmf".into(),
                    by: Some(party_name(party).into()),
                    codec: None,
                    digit: (!mask).then(|| digit.to_string()),
                    duration_ms: Some(duration.as_millis() as u64),
                });
            }
        }
    }

    fn write_out(&mut self) {
        if self.out.is_empty() || self.error.is_some() {
            return;
        }
        if let Err(e) = self.wav.append(&self.out) {
            self.fail(format!("write failed: {e}"));
        }
    }

    fn fail(&mut self, error: String) {
        tracing::error!(recording_id = %self.recording_id, %error, "recording stopped; the call goes on");
        self.error = Some(error);
    }
}

fn party_name(party: Party) -> &'static str {
    match party {
        Party::Caller => "caller",
        Party::Callee => "callee",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoder;
    use crate::demo::tone::Tone;
    use crate::media::rtp::{write_header, RtpHeader};

    /// (sequence number, RTP timestamp, payload) of one packet.
    type Packet = (u16, u32, Vec<u8>);

    /// Records `packets` from the caller, 20 ms apart, without those whose sequence number is
    /// in `lost`; the left channel and the caller's leg figures.
    fn record(
        codec: Codec,
        pt: u8,
        rate: u32,
        packets: &[Packet],
        lost: &[u16],
    ) -> (Vec<i16>, LegInfo) {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let cfg = RecorderConfig {
            header_update: Duration::from_secs(5),
            timeline: TimelineConfig::default(),
            tap_queue: 1,
            mask_dtmf: false,
        };
        let mut record = CallRecord::new("01TESTRECORDING0000000000".into(), "loss".into());
        record.wav = Some(crate::call::metadata::WavInfo {
            path: dir.path().join("r.wav").display().to_string(),
            bytes: None,
            sample_rate: rate,
            channels: 2,
            duration_ms: None,
            sha256: None,
        });
        let mut session = Session::open(
            &cfg,
            StartRecording {
                slot: 1,
                wav_path: dir.path().join("r.wav"),
                sidecar_path: dir.path().join("r.json"),
                start,
                codecs: [vec![(pt, codec)], vec![(pt, codec)]],
                aux: [Vec::new(), Vec::new()],
                rate,
                record: record.clone(),
            },
        )
        .unwrap();
        let first = packets.first().map_or(0, |p| p.0);
        for (seq, ts, payload) in packets {
            if lost.contains(seq) {
                continue;
            }
            let mut packet = [0u8; 12].to_vec();
            let header = RtpHeader {
                marker: false,
                payload_type: pt,
                seq: *seq,
                timestamp: *ts,
                ssrc: 9,
            };
            write_header(&header, (&mut packet[..12]).try_into().unwrap());
            packet.extend_from_slice(payload);
            let at = start + Duration::from_millis(20 * u64::from(seq.wrapping_sub(first)));
            session.packet(Party::Caller, at, &packet);
            session.tick(at);
        }
        let end = start + Duration::from_millis(20 * packets.len() as u64 + 20);
        let record = session.close(end, record, [0, 0]);
        let mut reader = hound::WavReader::open(dir.path().join("r.wav")).unwrap();
        let left = reader
            .samples::<i16>()
            .map(|s| s.unwrap())
            .step_by(2)
            .collect();
        (left, record.legs.caller)
    }

    /// Correlation of two equally long sample runs (1 = the same shape).
    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let dot = |x: &[i16], y: &[i16]| {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum::<f64>()
        };
        dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(1.0)
    }

    /// The real Opus stream of fixtures/opus (speech-like SILK with in-band FEC).
    fn opus_fixture() -> Vec<Packet> {
        let data = include_bytes!("../../fixtures/opus/fec_rtp.rtp");
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(head) = data.get(at..at + 8) {
            let seq = u16::from_be_bytes([head[0], head[1]]);
            let ts = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
            let len = usize::from(u16::from_be_bytes([head[6], head[7]]));
            let Some(payload) = data.get(at + 8..at + 8 + len) else {
                break;
            };
            out.push((seq, ts, payload.to_vec()));
            at += 8 + len;
        }
        out
    }

    #[test]
    fn opus_rebuilds_lost_packets_from_fec_and_still_counts_them_lost() {
        let packets = opus_fixture();
        assert_eq!(packets.len(), 400);
        let first = packets[0].0;
        // As the capture's `_fec_dropped` sibling: every 100th packet missing.
        let lost: Vec<u16> = [99u16, 199, 299]
            .iter()
            .map(|i| first.wrapping_add(*i))
            .collect();
        let (clean, _) = record(Codec::Opus, 107, 16000, &packets, &[]);
        let (lossy, leg) = record(Codec::Opus, 107, 16000, &packets, &lost);
        assert_eq!(leg.lost, 3, "{leg:?}");
        for i in [99usize, 199, 299] {
            let frame = |ch: &[i16]| ch[i * 320..(i + 1) * 320].to_vec();
            let c = correlation(&frame(&lossy), &frame(&clean));
            assert!(
                c > 0.9,
                "packet {i}: correlation {c:.3} with the lossless recording"
            );
        }
    }

    #[test]
    fn g711_leaves_lost_packets_silent() {
        let mut enc = Encoder::new(Codec::Pcmu, 8000).unwrap();
        let mut tone = Tone::new(440.0, 8000, 8000);
        let mut pcm = vec![0i16; 160];
        let packets: Vec<Packet> = (0..100u16)
            .map(|seq| {
                tone.fill(&mut pcm);
                let mut p = Vec::new();
                enc.encode(&pcm, &mut p).unwrap();
                (seq, u32::from(seq) * 160, p)
            })
            .collect();
        let (left, leg) = record(Codec::Pcmu, 0, 8000, &packets, &[50]);
        assert_eq!(leg.lost, 1, "{leg:?}");
        assert!(left[50 * 160..51 * 160].iter().all(|&s| s == 0));
        assert!(left[49 * 160..50 * 160].iter().any(|&s| s != 0));
    }
}

//! The call registry: the single owner of call state. It anchors media when the proxy core hands
//! it an SDP body (allocating relay ports, rewriting the SDP), turns call events into the call's
//! metadata record, starts and stops recordings at answer and hang-up, and frees every resource
//! on every end path. It never parses SIP; file IO goes to the recorder thread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::call::metadata::{
    day_dir, format_time, CallEventRecord, CallRecord, Decision, Direction, EndReason, RecordState,
    WavInfo,
};
use crate::codec::Codec;
use crate::media::ports::{PortError, PortPool};
use crate::media::relay::{self, RelayControl, RelayEvent, RelayHandle};
use crate::media::tap::{Tap, TapDrops};
use crate::record::recorder::{Aux, AuxMap, CodecMap, Command, Recorder, StartRecording};
use crate::sdp::{Direction as MediaDirection, MediaView, Sdp};
use crate::sip::proxy::{CallEvent, CallEventKind, InviteInfo, MediaAnchor, Party};

/// What the registry needs from the configuration.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address written into rewritten SDP.
    pub media_advertise: IpAddr,
    /// No media for this long after answer ends the call's media.
    pub media_timeout: Duration,
    /// Root of the recordings tree.
    pub recording_dir: PathBuf,
    /// WAV sample rate of narrowband calls (8000).
    pub sample_rate: u32,
    /// WAV sample rate of calls whose parties can both speak a wideband codec (G.722, Opus):
    /// the whole call is recorded at this rate, whatever codec it uses when.
    pub wideband_rate: u32,
}

/// Wall-clock time of a monotonic `Instant` in the recent past, read afresh each time so that a
/// clock set by NTP after start-up is followed (events are converted as they are handled).
pub fn wall_time(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall = SystemTime::now();
    if at <= now {
        wall - (now - at)
    } else {
        wall + (at - now)
    }
}

struct Stream {
    relay: RelayHandle,
    /// [caller, callee]: that party's latest SDP refused or removed the stream (port 0).
    refused: [bool; 2],
}

/// A change of the call's hold state, with the party it is put down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldChange {
    Hold(Party),
    Resume(Party),
}

/// Whether the call is on hold, from the latest SDP of each party for the recorded (audio)
/// stream. Deliberately simple: the call is on hold while the latest SDP of *either* party is
/// not `sendrecv` (`sendonly`, `recvonly` or `inactive`, RFC 3264 §8.4) or names the
/// connection address `0.0.0.0` (the old RFC 2543 style). A `recvonly` offer (a party muting
/// itself) therefore counts as a hold too.
///
/// Attribution: a hold is put down to the party whose SDP started it (normally the offerer of
/// the holding re-INVITE; the complementary answer changes nothing). A resume is put down to
/// the first party whose SDP stopped holding while the other's still did (normally the offerer
/// of the resuming re-INVITE, even though the hold only ends with the answer), unless the
/// other party then holds anew in its own SDP.
#[derive(Debug, Default, Clone, Copy)]
struct HoldState {
    /// [caller, callee]: that party's latest SDP holds the media.
    held: [bool; 2],
    /// While on hold: who started it.
    by: Option<Party>,
    /// While on hold: the first party whose SDP stopped holding.
    resuming: Option<Party>,
}

impl HoldState {
    fn on_hold(&self) -> bool {
        self.held[0] || self.held[1]
    }

    /// Takes `party`'s latest SDP into account; returns the change of the call's state, if any.
    fn update(&mut self, party: Party, holds: bool) -> Option<HoldChange> {
        let was = self.on_hold();
        let before = std::mem::replace(&mut self.held[idx(party)], holds);
        match (was, self.on_hold()) {
            (false, true) => {
                self.by = Some(party);
                self.resuming = None;
                Some(HoldChange::Hold(party))
            }
            (true, false) => {
                self.by = None;
                Some(HoldChange::Resume(self.resuming.take().unwrap_or(party)))
            }
            (true, true) => {
                if before && !holds {
                    self.resuming.get_or_insert(party);
                } else if holds && self.resuming.is_some_and(|r| r != party) {
                    // The other party answered the resume with a hold of its own.
                    self.resuming = None;
                    self.by = Some(party);
                }
                None
            }
            (false, false) => None,
        }
    }
}

/// Whether one party's SDP for a stream holds its media (see [`HoldState`]).
fn holds(view: &MediaView) -> bool {
    view.direction != MediaDirection::SendRecv
        || view.connection.is_some_and(|ip| ip.is_unspecified())
}

fn party_name(party: Party) -> &'static str {
    match party {
        Party::Caller => "caller",
        Party::Callee => "callee",
    }
}

struct Recording {
    slot: u64,
    drops: Arc<TapDrops>,
}

struct Call {
    call_id: Arc<str>,
    record: CallRecord,
    /// Relays by m= line index.
    streams: Vec<Option<Stream>>,
    /// Index of the stream that is recorded (the first audio stream).
    audio: Option<usize>,
    /// Codecs each party offered/answered for the audio stream: [caller, callee].
    codecs: [CodecMap; 2],
    /// Telephone-event and comfort-noise payload types of each party's SDP: [caller, callee].
    aux: [AuxMap; 2],
    /// The party whose SDP is an offer still waiting for its answer (RFC 3264): the other
    /// party's next SDP answers it.
    pending_offer: Option<Party>,
    /// Encodings named in the audio stream that we cannot decode.
    unknown_codecs: Vec<String>,
    encrypted: bool,
    /// Why media could not be anchored, if it could not.
    media_error: Option<String>,
    invite_at: Option<Instant>,
    answered_at: Option<Instant>,
    recording: Option<Recording>,
    /// Hold state of the audio stream.
    hold: HoldState,
    /// The session timer ran out while media was anchored: a media timeout now ends the call
    /// as `session_expired`.
    session_expired: bool,
    /// Which audio codec the parties' latest SDP agree on.
    codec: CodecState,
}

/// The audio codec the parties' latest SDP negotiated, for `codec_change` events. Deliberately
/// simple, like [`HoldState`]: the negotiated codec is the first codec of the latest SDP that
/// the other party's latest SDP also names (RFC 3264 §6.1: the answerer lists what it will
/// use first, and the offerer sends with what the answer names). While an offer names nothing
/// the other party's SDP has, nothing changes until the answer.
///
/// Attribution: a change is put down to the first party whose SDP put another codec first
/// (normally the offerer of the re-INVITE), else to the party whose SDP completed it.
#[derive(Debug, Default, Clone)]
struct CodecState {
    /// [caller, callee]: the decodable codecs of that party's latest SDP, in its order.
    sdp: [Vec<Codec>; 2],
    negotiated: Option<Codec>,
    /// While a change is being negotiated: who proposed it.
    proposer: Option<Party>,
}

impl CodecState {
    /// Takes `party`'s latest SDP codecs into account; returns the new codec and who changed
    /// it when the negotiated codec changed from one codec to another (not the first time).
    fn update(&mut self, party: Party, codecs: Vec<Codec>) -> Option<(Codec, Party)> {
        let first = codecs.first().copied();
        self.sdp[idx(party)] = codecs;
        if first == self.negotiated {
            // This party is content with the codec in use: nothing pending from it.
            self.proposer = None;
        } else if self.proposer.is_none() {
            self.proposer = Some(party);
        }
        let other = &self.sdp[idx(party.other())];
        let common = self.sdp[idx(party)]
            .iter()
            .find(|c| other.contains(c))
            .copied();
        let new = common.filter(|&c| Some(c) != self.negotiated)?;
        let previous = self.negotiated.replace(new);
        let by = self.proposer.take().unwrap_or(party);
        previous.map(|_| (new, by))
    }
}

/// A party's new codec map with the payload types of its previous one that the new one does
/// not name appended: packets sent with the old codec while the change crosses the proxy (and
/// the codec maps reach the recorder) still decode. A payload type the new map names takes its
/// new meaning.
fn with_previous(new: CodecMap, previous: &CodecMap) -> CodecMap {
    let mut map = new;
    for &(pt, codec) in previous {
        if !map.iter().any(|&(p, _)| p == pt) {
            map.push((pt, codec));
        }
    }
    map
}

impl Call {
    /// An accepted transfer (REFER 2xx, or an INVITE with Replaces taking the call over) is
    /// noted as a `transfer` event; the recording goes on (stopping it is per-service policy).
    fn note_transfer(&mut self, by: Option<Party>, at: Instant) {
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, "call transferred");
        if let (Some(answered), Some(_)) = (self.answered_at, &self.recording) {
            self.record.events.push(CallEventRecord {
                at_ms: at.saturating_duration_since(answered).as_millis() as u64,
                kind: "transfer".into(),
                by: by.map(|p| party_name(p).to_string()),
                codec: None,
                digit: None,
                duration_ms: None,
            });
        }
    }

    /// Applies a hold change: a held call's relays stop timing out (it may carry no RTP for
    /// minutes) and a recorded call notes the event with its offset into the recording.
    fn hold_changed(&mut self, change: HoldChange, at: Instant) {
        let Some(answered) = self.answered_at else {
            return;
        };
        let (kind, by, ctl) = match change {
            HoldChange::Hold(by) => ("hold", by, RelayControl::Disarm),
            HoldChange::Resume(by) => ("resume", by, RelayControl::Arm),
        };
        for stream in self.streams.iter().flatten() {
            stream.relay.control(ctl.clone());
        }
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, by = party_name(by), "call {kind}");
        if self.recording.is_some() {
            // The recording starts at answer in this version.
            self.record.events.push(CallEventRecord {
                at_ms: at.saturating_duration_since(answered).as_millis() as u64,
                kind: kind.to_string(),
                by: Some(party_name(by).to_string()),
                codec: None,
                digit: None,
                duration_ms: None,
            });
        }
    }

    /// Notes a change of the negotiated audio codec in a recorded call.
    fn codec_changed(&mut self, codec: Codec, by: Party, at: Instant) {
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, by = party_name(by), codec = codec.name(), "codec changed");
        let (Some(answered), Some(_)) = (self.answered_at, self.recording.as_ref()) else {
            return;
        };
        self.record.events.push(CallEventRecord {
            at_ms: at.saturating_duration_since(answered).as_millis() as u64,
            kind: "codec_change".to_string(),
            by: Some(party_name(by).to_string()),
            codec: Some(codec.name().to_string()),
            digit: None,
            duration_ms: None,
        });
    }
}

/// See the module docs.
pub struct CallRegistry {
    cfg: RegistryConfig,
    pool: PortPool,
    recorder: Recorder,
    relay_events: mpsc::UnboundedSender<RelayEvent>,
    calls: HashMap<String, Call>,
    next_slot: u64,
}

fn idx(party: Party) -> usize {
    match party {
        Party::Caller => 0,
        Party::Callee => 1,
    }
}

impl CallRegistry {
    /// A registry allocating media ports from `pool` and recording through `recorder`.
    pub fn new(
        cfg: RegistryConfig,
        pool: PortPool,
        recorder: Recorder,
        relay_events: mpsc::UnboundedSender<RelayEvent>,
    ) -> CallRegistry {
        CallRegistry {
            cfg,
            pool,
            recorder,
            relay_events,
            calls: HashMap::new(),
            next_slot: 0,
        }
    }

    /// Calls currently tracked.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Media port pairs currently leased.
    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use()
    }

    fn call_mut(&mut self, call_id: &str) -> &mut Call {
        call_entry(&mut self.calls, call_id)
    }

    /// Handles an event from the proxy core. Returns the Call-ID of a call ended here whose
    /// dialog the core still keeps, so that it can forget it.
    pub fn on_event(&mut self, event: CallEvent) -> Option<String> {
        let CallEvent { call_id, at, kind } = event;
        match kind {
            CallEventKind::Invite(info) => self.invite(&call_id, at, &info),
            CallEventKind::Answered => self.answered(&call_id, at),
            CallEventKind::Failed {
                code,
                reason,
                cancelled,
            } => {
                let mut call = self.calls.remove(&call_id)?;
                let (end, why) = if cancelled {
                    (
                        EndReason::Cancel,
                        "cancelled by the caller before answer".to_string(),
                    )
                } else {
                    (
                        EndReason::Rejected,
                        format!("not answered: {code} {reason}"),
                    )
                };
                call.record.not_recorded_reason = Some(why);
                self.end(call, end, at);
            }
            CallEventKind::Transferred { by } => {
                let before = self.events_of(&call_id);
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.note_transfer(by, at);
                }
                self.persist_if_new_events(&call_id, before);
            }
            CallEventKind::SessionExpired => return self.session_expired(call_id, at),
            CallEventKind::OfferAccepted { by } => self.offer_accepted(&call_id, by, at),
            CallEventKind::Bye { by } => {
                if let Some(call) = self.calls.remove(&call_id) {
                    let reason = match by {
                        Party::Caller => EndReason::ByeCaller,
                        Party::Callee => EndReason::ByeCallee,
                    };
                    self.end(call, reason, at);
                }
            }
        }
        None
    }

    /// `by` accepted the other party's offer without an answer of its own (its ACK had no SDP):
    /// its hold state follows the offer's, as a complementary answer would have (a `sendrecv`
    /// offer ends a hold `by` started, a `sendonly` one keeps or starts it).
    fn offer_accepted(&mut self, call_id: &str, by: Party, at: Instant) {
        let before = self.events_of(call_id);
        if let Some(call) = self.calls.get_mut(call_id) {
            let offer_holds = call.hold.held[idx(by.other())];
            if let Some(change) = call.hold.update(by, offer_holds) {
                call.hold_changed(change, at);
            }
        }
        self.persist_if_new_events(call_id, before);
    }

    /// RFC 4028 expiry. An answered call whose media is anchored goes on: the parties may well
    /// still be talking (one side's timer support is broken, say), and cutting their audio or
    /// the recording would change the call. It gets a `session_expired` event, its relays time
    /// out again even on hold, and the media timeout or a BYE ends it. Anything else ends now.
    fn session_expired(&mut self, call_id: String, at: Instant) -> Option<String> {
        let live = self.calls.get(&call_id).is_some_and(|c| {
            c.answered_at.is_some() && c.streams.iter().flatten().next().is_some()
        });
        if !live {
            let call = self.calls.remove(&call_id)?;
            self.end(call, EndReason::SessionExpired, at);
            return Some(call_id);
        }
        let before = self.events_of(&call_id);
        if let Some(call) = self.calls.get_mut(&call_id) {
            tracing::info!(%call_id, recording_id = %call.record.recording_id, "session timer expired; the call ends when its media stops or a BYE comes");
            call.session_expired = true;
            for stream in call.streams.iter().flatten() {
                stream.relay.control(RelayControl::Arm);
            }
            if let (Some(answered), Some(_)) = (call.answered_at, &call.recording) {
                call.record.events.push(CallEventRecord {
                    at_ms: at.saturating_duration_since(answered).as_millis() as u64,
                    kind: "session_expired".into(),
                    by: None,
                    codec: None,
                    digit: None,
                    duration_ms: None,
                });
            }
        }
        self.persist_if_new_events(&call_id, before);
        None
    }

    /// Handles a relay report. Returns the Call-ID of a call whose media ended, so the proxy core
    /// can forget its dialog.
    pub fn on_relay_event(&mut self, event: RelayEvent, now: Instant) -> Option<String> {
        match event {
            RelayEvent::Timeout { call_id, stream } => {
                let call = self.calls.get_mut(&*call_id)?;
                if call.audio.is_some_and(|a| a != stream) {
                    // An idle secondary stream (video the agent's phone does not send, say)
                    // only gives back its ports; the call's media is its audio.
                    if let Some(slot) = call.streams.get_mut(stream) {
                        *slot = None;
                    }
                    return None;
                }
                let call = self.calls.remove(&*call_id)?;
                tracing::info!(%call_id, stream, recording_id = %call.record.recording_id, "media timeout ends the recording");
                let reason = if call.session_expired {
                    EndReason::SessionExpired
                } else {
                    EndReason::MediaTimeout
                };
                self.end(call, reason, now);
                Some(call_id.to_string())
            }
        }
    }

    /// Ends every call (daemon stopping) and waits for the recorder to finish its files.
    pub fn shutdown(mut self, now: Instant) {
        let calls: Vec<Call> = self.calls.drain().map(|(_, c)| c).collect();
        for mut call in calls {
            if call.answered_at.is_none() {
                call.record.not_recorded_reason =
                    Some("the daemon stopped before the call was answered".into());
            }
            self.end(call, EndReason::Shutdown, now);
        }
        self.recorder.shutdown();
    }

    fn invite(&mut self, call_id: &str, at: Instant, info: &InviteInfo) {
        let time = format_time(wall_time(at));
        let call = self.call_mut(call_id);
        if call.invite_at.is_some() {
            return;
        }
        call.invite_at = Some(at);
        let rec = &mut call.record;
        rec.times.invite = Some(time);
        rec.direction = Some(if info.from_pbx {
            Direction::Outbound
        } else {
            Direction::Inbound
        });
        // The network-asserted identity beats the From header (RFC 3325 §9.1).
        let caller = info
            .asserted_user
            .clone()
            .or_else(|| info.from_user.clone());
        rec.caller_number_raw = caller.clone();
        rec.caller_number = caller;
        rec.called_number = info
            .request_uri_user
            .clone()
            .or_else(|| info.to_user.clone());
        tracing::info!(%call_id, recording_id = %rec.recording_id, caller = ?rec.caller_number, called = ?rec.called_number, "call offered");
    }

    fn answered(&mut self, call_id: &str, at: Instant) {
        let wall = wall_time(at);
        let dir = self.cfg.recording_dir.clone();
        let (narrowband, wideband) = (self.cfg.sample_rate, self.cfg.wideband_rate);
        let tap_queue = self.recorder.tap_queue();
        self.next_slot += 1;
        let slot = self.next_slot;
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.answered_at.is_some() {
            return;
        }
        let rate = if wideband_possible(call) {
            wideband
        } else {
            narrowband
        };
        call.answered_at = Some(at);
        call.record.times.answer = Some(format_time(wall));
        let held = call.hold.on_hold();
        for stream in call.streams.iter().flatten() {
            stream.relay.control(if held {
                RelayControl::Disarm
            } else {
                RelayControl::Arm
            });
        }
        if let Some(reason) = unrecordable(call) {
            tracing::warn!(%call_id, recording_id = %call.record.recording_id, %reason, "call is not recorded");
            call.record.state = RecordState::NotRecorded;
            call.record.service.decision = Decision::Failed;
            call.record.service.reason = Some(reason.clone());
            call.record.not_recorded_reason = Some(reason);
            // Written now, not only at the end: if the call's end never passes the proxy, the
            // register still shows that the call happened and why it was not recorded.
            let path = not_recorded_path(&dir, call);
            self.recorder.send(Command::Sidecar {
                path,
                record: Box::new(call.record.clone()),
            });
            return;
        }
        let Some(stream) = call
            .audio
            .and_then(|i| call.streams.get(i))
            .and_then(|s| s.as_ref())
        else {
            return;
        };
        let day = day_dir(&dir, wall);
        let wav_path = day.join(format!("{}.wav", call.record.recording_id));
        let sidecar_path = day.join(format!("{}.json", call.record.recording_id));
        let rec = &mut call.record;
        rec.state = RecordState::Recording;
        rec.start_reason = Some("answer".into());
        rec.times.recording_start = rec.times.answer.clone();
        rec.wav = Some(WavInfo {
            path: wav_path.display().to_string(),
            bytes: None,
            sample_rate: rate,
            channels: 2,
            duration_ms: None,
            sha256: None,
        });
        let drops = Arc::new(TapDrops::default());
        self.recorder.send(Command::Start(Box::new(StartRecording {
            slot,
            wav_path,
            sidecar_path,
            start: at,
            codecs: decode_maps(&call.codecs),
            aux: decode_aux_maps(&call.aux),
            rate,
            record: call.record.clone(),
        })));
        stream.relay.control(RelayControl::Tap(Some(Tap {
            slot,
            queue: tap_queue,
            drops: Arc::clone(&drops),
        })));
        call.recording = Some(Recording { slot, drops });
        tracing::info!(%call_id, recording_id = %call.record.recording_id, "recording started");
        // Answered straight into a hold (the answer or a late offer said so): noted at 0.
        if let Some(by) = call.hold.by.filter(|_| held) {
            call.hold_changed(HoldChange::Hold(by), at);
        }
    }

    /// Finalises a call that has left the registry: stops its relays (freeing the ports), and
    /// has the recorder close the WAV and write the final sidecar.
    fn end(&mut self, mut call: Call, reason: EndReason, at: Instant) {
        let wall = wall_time(at);
        let rec = &mut call.record;
        rec.times.end = Some(format_time(wall));
        rec.set_end(reason);
        rec.duration_ms = call
            .answered_at
            .map(|a| at.saturating_duration_since(a).as_millis() as u64);
        // Dropping the handles stops the relays and returns their ports to the pool.
        call.streams.clear();
        tracing::info!(call_id = %call.call_id, recording_id = %rec.recording_id, ?reason, "call ended");
        match call.recording.take() {
            Some(recording) => {
                rec.times.recording_end = Some(format_time(wall));
                let tap_drops = [
                    recording.drops.get(Party::Caller),
                    recording.drops.get(Party::Callee),
                ];
                self.recorder.send(Command::Stop {
                    slot: recording.slot,
                    end: at,
                    record: Box::new(call.record),
                    tap_drops,
                });
            }
            None => {
                rec.state = RecordState::NotRecorded;
                if rec.not_recorded_reason.is_none() {
                    rec.not_recorded_reason = Some(match reason {
                        EndReason::Shutdown => "the daemon stopped before recording began".into(),
                        _ => "the call ended before recording began".into(),
                    });
                }
                let path = not_recorded_path(&self.cfg.recording_dir, &call);
                self.recorder.send(Command::Sidecar {
                    path,
                    record: Box::new(call.record),
                });
            }
        }
    }

    /// Number of mid-call events recorded for a call so far.
    fn events_of(&self, call_id: &str) -> usize {
        self.calls.get(call_id).map_or(0, |c| c.record.events.len())
    }

    /// A recording call whose record gained events has its sidecar rewritten (on the recorder
    /// thread, in order between its first and its final write), so the file on disk follows the
    /// call (DESIGN: rewritten at every state change) and a crash keeps the events.
    fn persist_if_new_events(&self, call_id: &str, before: usize) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.recording.is_none() || call.record.events.len() == before {
            return;
        }
        let Some(wav) = &call.record.wav else {
            return;
        };
        self.recorder.send(Command::Sidecar {
            path: PathBuf::from(&wav.path).with_extension("json"),
            record: Box::new(call.record.clone()),
        });
    }

    /// Anchors every stream of one SDP body; all or nothing.
    fn anchor(
        &mut self,
        call_id: &str,
        party: Party,
        sdp: &mut Sdp,
        views: &[MediaView],
        now: Instant,
    ) -> Result<(), PortError> {
        let advertise = self.cfg.media_advertise;
        let timeout = self.cfg.media_timeout;
        let pool = self.pool.clone();
        let events = self.relay_events.clone();
        let recorder = &self.recorder;
        let call = call_entry(&mut self.calls, call_id);
        // Offer or answer: the other party's pending offer makes this its answer.
        let answer = call.pending_offer == Some(party.other());
        call.pending_offer = if answer { None } else { Some(party) };
        // A stream refused or removed (port 0, RFC 3264 §6) gives back its relay and ports with
        // the answer that says so: an offer to remove it only takes effect with the answer, and
        // an offer refused (a 488 to the re-INVITE) changes nothing (RFC 3261 §14.1).
        for view in views.iter().filter(|v| v.port == 0) {
            let Some(slot) = call.streams.get_mut(view.index) else {
                continue;
            };
            let Some(stream) = slot.as_mut() else {
                continue;
            };
            stream.refused[idx(party)] = true;
            if answer || stream.refused[idx(party.other())] {
                *slot = None;
                if call.audio == Some(view.index) {
                    call.audio = None;
                }
            }
        }
        // Streams opened by this SDP, released again if a later one cannot be: streams that
        // were already up (a re-INVITE failing) keep their media and their recording.
        let mut opened: Vec<usize> = Vec::new();
        let mut hold_change = None;
        let mut codec_change = None;
        for view in views.iter().filter(|v| v.port != 0) {
            if call.streams.len() <= view.index {
                call.streams.resize_with(view.index + 1, || None);
            }
            if call.streams[view.index].is_none() {
                let pairs = pool
                    .allocate()
                    .and_then(|a| pool.allocate().map(|b| (a, b)));
                let (caller_facing, callee_facing) = match pairs {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        for index in opened {
                            call.streams[index] = None;
                        }
                        return Err(e);
                    }
                };
                match relay::spawn(
                    Arc::clone(&call.call_id),
                    view.index,
                    caller_facing,
                    callee_facing,
                    timeout,
                    events.clone(),
                ) {
                    Ok(relay) => {
                        if call.answered_at.is_some() && !call.hold.on_hold() {
                            relay.control(RelayControl::Arm);
                        }
                        call.streams[view.index] = Some(Stream {
                            relay,
                            refused: [false; 2],
                        });
                        opened.push(view.index);
                    }
                    Err(e) => {
                        tracing::error!(%call_id, error = %e, "cannot start relay");
                        continue;
                    }
                }
            }
            if let Some(stream) = call.streams[view.index].as_mut() {
                stream.refused[idx(party)] = false;
            }
            let Some(stream) = call.streams[view.index].as_ref() else {
                continue;
            };
            let is_audio = view.kind.eq_ignore_ascii_case("audio")
                && call.audio.is_none_or(|a| a == view.index);
            if is_audio {
                hold_change = call.hold.update(party, holds(view)).or(hold_change);
            }
            // An unspecified address (RFC 3264 §8.4 old-style hold) is passed on as it is.
            let Some(ip) = view.connection.filter(|ip| !ip.is_unspecified()) else {
                continue;
            };
            let rtp = SocketAddr::new(ip, view.port);
            let rtcp = match view.rtcp {
                Some((port, addr)) => SocketAddr::new(addr.unwrap_or(ip), port),
                None => SocketAddr::new(ip, view.port.saturating_add(1)),
            };
            stream
                .relay
                .control(RelayControl::Remote { party, rtp, rtcp });
            // The SDP goes to the other party, who must send to the socket facing it.
            let local = stream.relay.local_rtp(party.other());
            if let Err(e) = sdp.rewrite_media(view.index, advertise, local.port()) {
                tracing::warn!(%call_id, error = %e, "cannot rewrite SDP stream");
            }
            if is_audio {
                call.audio = Some(view.index);
                call.encrypted |= view.encrypted;
                let (map, aux, unknown) = codec_map(view);
                call.aux[idx(party)] = aux;
                let codecs = map.iter().map(|&(_, c)| c).collect();
                codec_change = call.codec.update(party, codecs).or(codec_change);
                call.codecs[idx(party)] = with_previous(map, &call.codecs[idx(party)]);
                call.unknown_codecs = unknown;
                if let Some(rec) = &call.recording {
                    recorder.send(Command::Codecs {
                        slot: rec.slot,
                        codecs: decode_maps(&call.codecs),
                        aux: decode_aux_maps(&call.aux),
                    });
                }
            }
        }
        if let Some(change) = hold_change {
            call.hold_changed(change, now);
        }
        if let Some((codec, by)) = codec_change {
            call.codec_changed(codec, by, now);
        }
        Ok(())
    }
}

impl MediaAnchor for CallRegistry {
    fn on_sdp(
        &mut self,
        call_id: &str,
        party: Party,
        body: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        let mut sdp = match Sdp::parse(body) {
            Ok(sdp) => sdp,
            Err(e) => {
                tracing::warn!(%call_id, ?party, error = %e, "SDP does not parse; media is not anchored");
                self.call_mut(call_id).media_error = Some(format!("SDP does not parse: {e}"));
                return None;
            }
        };
        let views = sdp.media();
        let events_before = self.events_of(call_id);
        match self.anchor(call_id, party, &mut sdp, &views, now) {
            Ok(()) => {
                self.persist_if_new_events(call_id, events_before);
                Some(sdp.to_bytes())
            }
            Err(e) => {
                // The SDP goes on unchanged: media the proxy had not anchored yet flows directly
                // between the parties, media it had anchored stays anchored.
                tracing::error!(%call_id, error = %e, "media not anchored");
                let call = self.call_mut(call_id);
                if call.streams.iter().all(Option::is_none) {
                    call.media_error = Some(format!("media not anchored: {e}"));
                }
                None
            }
        }
    }
}

/// Where the sidecar of a call without a recording goes: the day of its INVITE.
fn not_recorded_path(dir: &std::path::Path, call: &Call) -> PathBuf {
    let started = call
        .invite_at
        .map(wall_time)
        .unwrap_or_else(SystemTime::now);
    day_dir(dir, started).join(format!("{}.json", call.record.recording_id))
}

/// Why an answered call cannot be recorded, if it cannot.
fn unrecordable(call: &Call) -> Option<String> {
    if let Some(e) = &call.media_error {
        return Some(e.clone());
    }
    if call.audio.is_none() {
        return Some("no audio stream was anchored".into());
    }
    if call.encrypted {
        return Some("encrypted media (SRTP) is relayed but not recorded".into());
    }
    if call.codecs.iter().all(|m| m.is_empty()) {
        return Some(format!(
            "codec {} not supported",
            call.unknown_codecs.join(", ")
        ));
    }
    None
}

/// The maps the recorder decodes each party's packets with: [caller's packets, callee's]. A
/// sender uses the payload type numbers of the receiver's SDP (RFC 3264 §5.1), so the other
/// party's map comes first, the sender's own as fallback.
///
/// Static payload types (RFC 3551 §6) that neither SDP names come last with their fixed
/// meaning: a party that starts sending a newly negotiated codec as soon as it sends or gets
/// the answer (RFC 3264 §8.3.2) can have packets reach the recorder before the new maps do.
fn decode_maps(sdp_maps: &[CodecMap; 2]) -> [CodecMap; 2] {
    let statics: CodecMap = (0u8..96)
        .filter_map(|pt| Codec::from_static_pt(pt).map(|c| (pt, c)))
        .collect();
    let merge = |first: &CodecMap, second: &CodecMap| {
        let mut map = first.clone();
        for entry in second.iter().chain(&statics) {
            if !map.iter().any(|(pt, _)| *pt == entry.0) {
                map.push(*entry);
            }
        }
        map
    };
    [
        merge(&sdp_maps[1], &sdp_maps[0]),
        merge(&sdp_maps[0], &sdp_maps[1]),
    ]
}

/// Whether both parties' SDP name a common wideband codec, so the call may be wideband at
/// some point: then it is recorded at the wideband rate from the start.
fn wideband_possible(call: &Call) -> bool {
    call.codecs[0]
        .iter()
        .any(|(_, c)| c.is_wideband() && call.codecs[1].iter().any(|(_, d)| d == c))
}

/// Like [`decode_maps`] for the payload types that carry no audio; static PT 13 is comfort
/// noise (RFC 3551) wherever no SDP names it otherwise.
fn decode_aux_maps(sdp_maps: &[AuxMap; 2]) -> [AuxMap; 2] {
    let merge = |first: &AuxMap, second: &AuxMap| {
        let mut map = first.clone();
        for entry in second.iter().chain(&[(13, Aux::ComfortNoise)]) {
            if !map.iter().any(|(pt, _)| *pt == entry.0) {
                map.push(*entry);
            }
        }
        map
    };
    [
        merge(&sdp_maps[1], &sdp_maps[0]),
        merge(&sdp_maps[0], &sdp_maps[1]),
    ]
}

/// Decodable payload types of an audio stream, its telephone-event and comfort-noise payload
/// types, and the names of those we cannot decode.
fn codec_map(view: &MediaView) -> (CodecMap, AuxMap, Vec<String>) {
    let mut map = Vec::new();
    let mut aux = Vec::new();
    let mut unknown = Vec::new();
    for &pt in &view.payload_types {
        let named = view.rtpmaps.iter().find(|m| m.payload_type == pt);
        let codec = match named {
            Some(m) => Codec::from_rtpmap(&m.encoding, m.clock_rate),
            None => Codec::from_static_pt(pt),
        };
        match (codec, named) {
            (Some(c), _) => map.push((pt, c)),
            (None, Some(m)) if m.encoding.eq_ignore_ascii_case("telephone-event") => aux.push((
                pt,
                Aux::TelephoneEvent {
                    clock_rate: m.clock_rate,
                },
            )),
            (None, Some(m)) if m.encoding.eq_ignore_ascii_case("CN") => {
                aux.push((pt, Aux::ComfortNoise))
            }
            (None, Some(m)) => unknown.push(m.encoding.clone()),
            (None, None) if pt == 13 => aux.push((pt, Aux::ComfortNoise)),
            (None, None) => unknown.push(format!("PT {pt}")),
        }
    }
    (map, aux, unknown)
}

/// The call of `call_id`, created on first sight (the first SDP of a call arrives just before
/// the proxy core reports its INVITE).
fn call_entry<'a>(calls: &'a mut HashMap<String, Call>, call_id: &str) -> &'a mut Call {
    calls.entry(call_id.to_string()).or_insert_with(|| Call {
        call_id: Arc::from(call_id),
        record: CallRecord::new(ulid::Ulid::new().to_string(), call_id.to_string()),
        streams: Vec::new(),
        audio: None,
        codecs: [Vec::new(), Vec::new()],
        aux: [Vec::new(), Vec::new()],
        pending_offer: None,
        unknown_codecs: Vec::new(),
        encrypted: false,
        media_error: None,
        invite_at: None,
        answered_at: None,
        recording: None,
        hold: HoldState::default(),
        session_expired: false,
        codec: CodecState::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::recorder::RecorderConfig;
    use crate::record::timeline::TimelineConfig;

    fn registry(
        timeout: Duration,
        low: u16,
    ) -> (
        CallRegistry,
        mpsc::UnboundedReceiver<RelayEvent>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (recorder_tx, _recorder_rx) = mpsc::unbounded_channel();
        let recorder = Recorder::start(
            RecorderConfig {
                header_update: Duration::from_secs(5),
                timeline: TimelineConfig::default(),
                tap_queue: 64,
                mask_dtmf: false,
            },
            recorder_tx,
        )
        .unwrap();
        let (relay_tx, relay_rx) = mpsc::unbounded_channel();
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), low, low + 99);
        let cfg = RegistryConfig {
            media_advertise: "127.0.0.1".parse().unwrap(),
            media_timeout: timeout,
            recording_dir: dir.path().to_path_buf(),
            sample_rate: 8000,
            wideband_rate: 16000,
        };
        (
            CallRegistry::new(cfg, pool, recorder, relay_tx),
            relay_rx,
            dir,
        )
    }

    fn event(kind: CallEventKind) -> CallEvent {
        CallEvent {
            call_id: "c1".into(),
            at: Instant::now(),
            kind,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_video_stream_frees_its_ports_and_audio_goes_on() {
        let (mut reg, mut relay_events, _dir) = registry(Duration::from_secs(1), 43000);
        let offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nm=video 5002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let answer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
        let now = Instant::now();
        reg.on_sdp("c1", Party::Caller, offer, now).unwrap();
        assert_eq!(reg.ports_in_use(), 4, "two streams, two pairs each");
        reg.on_event(event(CallEventKind::Invite(InviteInfo {
            from_pbx: false,
            source: "127.0.0.1:5060".parse().unwrap(),
            request_uri_user: Some("100".into()),
            to_user: None,
            from_user: None,
            asserted_user: None,
        })));
        let rewritten = reg.on_sdp("c1", Party::Callee, answer, now).unwrap();
        let views = Sdp::parse(&rewritten).unwrap().media();
        assert_eq!(views[1].port, 0, "the refusal is passed on");
        reg.on_event(event(CallEventKind::Answered));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reg.ports_in_use(), 2, "the refused stream's ports are free");
        // Audio keeps flowing for longer than the media timeout: the call stays up.
        let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            caller
                .send_to(
                    &[0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xff],
                    ("127.0.0.1", views[0].port),
                )
                .unwrap();
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(20), relay_events.recv()).await
            {
                panic!("live audio ended by {e:?}");
            }
        }
        assert_eq!(reg.active_calls(), 1);
        reg.on_event(event(CallEventKind::Bye { by: Party::Caller }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((reg.active_calls(), reg.ports_in_use()), (0, 0));
    }

    #[test]
    fn hold_is_put_down_to_the_offerer_and_resume_to_the_resumer() {
        use HoldChange::{Hold, Resume};
        let mut h = HoldState::default();
        // Caller holds (sendonly offer), callee answers recvonly: one hold, by the caller.
        assert_eq!(h.update(Party::Caller, true), Some(Hold(Party::Caller)));
        assert_eq!(h.update(Party::Callee, true), None);
        // A retransmitted answer changes nothing.
        assert_eq!(h.update(Party::Callee, true), None);
        // Caller resumes (sendrecv offer): the hold ends with the sendrecv answer, by the caller.
        assert_eq!(h.update(Party::Caller, false), None);
        assert!(h.on_hold());
        assert_eq!(h.update(Party::Callee, false), Some(Resume(Party::Caller)));
        assert!(!h.on_hold());
        // The callee holds with an old-style c=0.0.0.0 offer the caller answers sendrecv.
        assert_eq!(h.update(Party::Callee, true), Some(Hold(Party::Callee)));
        assert_eq!(h.update(Party::Caller, false), None);
        assert_eq!(h.update(Party::Callee, false), Some(Resume(Party::Callee)));
        // A resume offer answered with a hold of the answerer's own: the answerer resumes later.
        assert_eq!(h.update(Party::Caller, true), Some(Hold(Party::Caller)));
        assert_eq!(h.update(Party::Callee, true), None);
        assert_eq!(h.update(Party::Caller, false), None);
        assert_eq!(h.update(Party::Callee, true), None);
        assert_eq!(h.by, Some(Party::Callee));
        assert_eq!(h.update(Party::Callee, false), Some(Resume(Party::Callee)));
    }

    fn sdp_body(port: u16, addr: &str, direction: &str, version: u32) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n{direction}"
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hold_and_resume_are_recorded_as_events_and_pause_the_media_timeout() {
        let (mut reg, mut relay_events, _dir) = registry(Duration::from_millis(600), 43500);
        let t0 = Instant::now();
        let invite = InviteInfo {
            from_pbx: false,
            source: "127.0.0.1:5060".parse().unwrap(),
            request_uri_user: Some("100".into()),
            to_user: None,
            from_user: None,
            asserted_user: None,
        };
        reg.on_sdp(
            "c1",
            Party::Caller,
            &sdp_body(5000, "127.0.0.1", "a=sendrecv\r\n", 1),
            t0,
        )
        .unwrap();
        reg.on_event(event(CallEventKind::Invite(invite)));
        reg.on_sdp("c1", Party::Callee, &sdp_body(6000, "127.0.0.1", "", 1), t0)
            .unwrap();
        reg.on_event(CallEvent {
            call_id: "c1".into(),
            at: t0,
            kind: CallEventKind::Answered,
        });
        let events = |reg: &CallRegistry| reg.calls["c1"].record.events.clone();
        assert!(events(&reg).is_empty());
        let ms = Duration::from_millis;
        // Caller: sendonly re-INVITE at 1 s; the callee answers recvonly.
        let offer = reg
            .on_sdp(
                "c1",
                Party::Caller,
                &sdp_body(5000, "127.0.0.1", "a=sendonly\r\n", 2),
                t0 + ms(1000),
            )
            .unwrap();
        assert!(
            String::from_utf8(offer).unwrap().contains("a=sendonly"),
            "direction passed on"
        );
        reg.on_sdp(
            "c1",
            Party::Callee,
            &sdp_body(6000, "127.0.0.1", "a=recvonly\r\n", 2),
            t0 + ms(1010),
        )
        .unwrap();
        // No RTP at all for longer than the media timeout: the held call stays up.
        let quiet = tokio::time::timeout(ms(1500), relay_events.recv()).await;
        assert!(quiet.is_err(), "a held call timed out: {quiet:?}");
        // The sidecar on disk already carries the hold, while the call is still recording.
        let wav = reg.calls["c1"].record.wav.clone().expect("recording");
        let on_disk: CallRecord =
            crate::call::metadata::read_sidecar(&PathBuf::from(&wav.path).with_extension("json"))
                .unwrap();
        assert_eq!(on_disk.state, RecordState::Recording);
        assert_eq!(on_disk.events.len(), 1);
        assert_eq!(on_disk.events[0].kind, "hold");
        // Resume with sendrecv at 2.5 s, answered sendrecv.
        reg.on_sdp(
            "c1",
            Party::Caller,
            &sdp_body(5000, "127.0.0.1", "a=sendrecv\r\n", 3),
            t0 + ms(2500),
        )
        .unwrap();
        reg.on_sdp(
            "c1",
            Party::Callee,
            &sdp_body(6000, "127.0.0.1", "a=sendrecv\r\n", 3),
            t0 + ms(2505),
        )
        .unwrap();
        let by = |p: &str| Some(p.to_string());
        assert_eq!(
            events(&reg),
            vec![
                CallEventRecord {
                    at_ms: 1000,
                    kind: "hold".into(),
                    by: by("caller"),
                    codec: None,
                    digit: None,
                    duration_ms: None,
                },
                CallEventRecord {
                    at_ms: 2505,
                    kind: "resume".into(),
                    by: by("caller"),
                    codec: None,
                    digit: None,
                    duration_ms: None,
                },
            ]
        );
        // An old-style hold from the callee (c=0.0.0.0), then resumed by it.
        reg.on_sdp(
            "c1",
            Party::Callee,
            &sdp_body(6000, "0.0.0.0", "", 4),
            t0 + ms(3000),
        )
        .unwrap();
        reg.on_sdp(
            "c1",
            Party::Caller,
            &sdp_body(5000, "127.0.0.1", "", 4),
            t0 + ms(3001),
        )
        .unwrap();
        reg.on_sdp(
            "c1",
            Party::Callee,
            &sdp_body(6000, "127.0.0.1", "", 5),
            t0 + ms(3500),
        )
        .unwrap();
        let tail: Vec<_> = events(&reg).into_iter().skip(2).collect();
        assert_eq!(
            tail,
            vec![
                CallEventRecord {
                    at_ms: 3000,
                    kind: "hold".into(),
                    by: by("callee"),
                    codec: None,
                    digit: None,
                    duration_ms: None,
                },
                CallEventRecord {
                    at_ms: 3500,
                    kind: "resume".into(),
                    by: by("callee"),
                    codec: None,
                    digit: None,
                    duration_ms: None,
                },
            ]
        );
        // Resumed: the media timeout applies again.
        let ended = tokio::time::timeout(Duration::from_secs(3), relay_events.recv()).await;
        assert!(
            matches!(ended, Ok(Some(RelayEvent::Timeout { .. }))),
            "{ended:?}"
        );
    }

    #[test]
    fn codec_change_is_noted_when_the_answer_agrees_and_put_down_to_the_offerer() {
        use Codec::{Pcma, Pcmu};
        let mut c = CodecState::default();
        // Initial offer/answer: the first negotiation is no change.
        assert_eq!(c.update(Party::Caller, vec![Pcmu, Pcma]), None);
        assert_eq!(c.update(Party::Callee, vec![Pcmu]), None);
        assert_eq!(c.negotiated, Some(Pcmu));
        // A hold re-INVITE with the same codec changes nothing.
        assert_eq!(c.update(Party::Caller, vec![Pcmu]), None);
        assert_eq!(c.update(Party::Callee, vec![Pcmu]), None);
        // The caller offers only PCMA: nothing until the callee answers PCMA.
        assert_eq!(c.update(Party::Caller, vec![Pcma]), None);
        assert_eq!(c.negotiated, Some(Pcmu));
        assert_eq!(
            c.update(Party::Callee, vec![Pcma]),
            Some((Pcma, Party::Caller))
        );
        // An offer of both, answered with the codec in use: no change, nothing pending.
        assert_eq!(c.update(Party::Callee, vec![Pcmu, Pcma]), None);
        assert_eq!(c.update(Party::Caller, vec![Pcma]), None);
        assert_eq!(c.proposer, None);
        // The callee switches back.
        assert_eq!(c.update(Party::Callee, vec![Pcmu]), None);
        assert_eq!(
            c.update(Party::Caller, vec![Pcmu]),
            Some((Pcmu, Party::Callee))
        );
    }

    #[test]
    fn previous_payload_types_stay_decodable_after_a_change() {
        let old = vec![(0, Codec::Pcmu), (8, Codec::Pcma)];
        assert_eq!(
            with_previous(vec![(8, Codec::Pcma)], &old),
            vec![(8, Codec::Pcma), (0, Codec::Pcmu)]
        );
        // A reused number takes its new meaning.
        assert_eq!(
            with_previous(vec![(0, Codec::Pcma)], &old),
            vec![(0, Codec::Pcma), (8, Codec::Pcma)]
        );
    }

    #[test]
    fn packets_are_decoded_with_the_receivers_payload_numbers_first() {
        // The caller offered PCMA as 96 (dynamic), the callee answered PCMA as 97: the caller
        // sends 97, the callee sends 96 (RFC 3264 §5.1).
        let caller_sdp = vec![(96, Codec::Pcma), (0, Codec::Pcmu)];
        let callee_sdp = vec![(97, Codec::Pcma), (0, Codec::Pcmu)];
        let [from_caller, from_callee] = decode_maps(&[caller_sdp, callee_sdp]);
        // Static payload types neither SDP names decode by their fixed meaning, last.
        assert_eq!(
            from_caller,
            vec![
                (97, Codec::Pcma),
                (0, Codec::Pcmu),
                (96, Codec::Pcma),
                (8, Codec::Pcma),
                (9, Codec::G722)
            ]
        );
        assert_eq!(
            from_callee,
            vec![
                (96, Codec::Pcma),
                (0, Codec::Pcmu),
                (97, Codec::Pcma),
                (8, Codec::Pcma),
                (9, Codec::G722)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unrecordable_call_has_its_sidecar_on_disk_at_answer() {
        let (mut reg, _relay_events, dir) = registry(Duration::from_secs(5), 43200);
        let srtp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let now = Instant::now();
        reg.on_sdp("c1", Party::Caller, srtp, now).unwrap();
        reg.on_event(event(CallEventKind::Invite(InviteInfo {
            from_pbx: false,
            source: "127.0.0.1:5060".parse().unwrap(),
            request_uri_user: Some("100".into()),
            to_user: None,
            from_user: Some("0401234567".into()),
            asserted_user: None,
        })));
        reg.on_sdp("c1", Party::Callee, srtp, now).unwrap();
        reg.on_event(event(CallEventKind::Answered));
        // The call is up and relayed (ports held), and the register already shows it.
        assert_eq!(reg.ports_in_use(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        let record = loop {
            let found = crate::ops::sidecar_paths(dir.path())
                .into_iter()
                .find_map(|p| crate::call::metadata::read_sidecar(&p).ok());
            if let Some(r) = found {
                break r;
            }
            assert!(Instant::now() < deadline, "no sidecar while the call is up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(record.state, RecordState::NotRecorded);
        assert_eq!(
            record.not_recorded_reason.as_deref(),
            Some("encrypted media (SRTP) is relayed but not recorded")
        );
        assert!(record.wav.is_none());
        assert!(record.times.answer.is_some() && record.times.end.is_none());
    }
}

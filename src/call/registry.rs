//! The call registry: the single owner of call state. It anchors media when the proxy core hands
//! it an SDP body (allocating relay ports, rewriting the SDP), turns call events into the call's
//! metadata record, asks policy for the call's service at INVITE, starts and stops recordings at
//! answer and hang-up (unless policy leaves the call out), and frees every resource on every
//! end path. It never parses SIP; file IO goes to the recorder thread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::call::media_state::{event_record, holds, idx, party_name, AudioState, HoldChange};
use crate::call::metadata::{
    day_dir, format_time, CallRecord, Decision, Direction, EndReason, RecordState, WavInfo,
};
use crate::call::policy::ServicePolicy;
use crate::codec::Codec;
use crate::media::ports::{PortError, PortPool};
use crate::media::relay::{self, RelayControl, RelayEvent, RelayHandle};
use crate::media::tap::{Tap, TapDrops};
use crate::record::recorder::{Command, Recorder, StartRecording};
use crate::sdp::{MediaView, Sdp};
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
    /// Which service a call belongs to and whether it is recorded.
    pub policy: ServicePolicy,
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

struct Recording {
    slot: u64,
    drops: Arc<TapDrops>,
}

struct Call {
    call_id: Arc<str>,
    record: CallRecord,
    /// Relays by m= line index.
    streams: Vec<Option<Stream>>,
    /// The recorded (audio) stream as the parties' SDP describe it.
    audio: AudioState,
    invite_at: Option<Instant>,
    answered_at: Option<Instant>,
    recording: Option<Recording>,
    /// The session timer ran out while media was anchored: a media timeout now ends the call
    /// as `session_expired`.
    session_expired: bool,
}

impl Call {
    /// Notes a mid-call event when the call is being recorded, with its offset into the
    /// recording (which starts at answer in this version).
    fn note_event(&mut self, at: Instant, kind: &str, by: Option<Party>, codec: Option<Codec>) {
        let (Some(answered), Some(_)) = (self.answered_at, &self.recording) else {
            return;
        };
        let at_ms = at.saturating_duration_since(answered).as_millis() as u64;
        self.record
            .events
            .push(event_record(at_ms, kind, by, codec));
    }

    /// An accepted transfer (REFER 2xx, or an INVITE with Replaces taking the call over) is
    /// noted as a `transfer` event; the recording goes on (stopping it is per-service policy).
    fn note_transfer(&mut self, by: Option<Party>, at: Instant) {
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, "call transferred");
        self.note_event(at, "transfer", by, None);
    }

    /// Applies a hold change: a held call's relays stop timing out (it may carry no RTP for
    /// minutes) and a recorded call notes the event with its offset into the recording.
    fn hold_changed(&mut self, change: HoldChange, at: Instant) {
        if self.answered_at.is_none() {
            return;
        }
        let (kind, by, ctl) = match change {
            HoldChange::Hold(by) => ("hold", by, RelayControl::Disarm),
            HoldChange::Resume(by) => ("resume", by, RelayControl::Arm),
        };
        for stream in self.streams.iter().flatten() {
            stream.relay.control(ctl.clone());
        }
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, by = party_name(by), "call {kind}");
        self.note_event(at, kind, Some(by), None);
    }

    /// Notes a change of the negotiated audio codec in a recorded call.
    fn codec_changed(&mut self, codec: Codec, by: Party, at: Instant) {
        tracing::info!(call_id = %self.call_id, recording_id = %self.record.recording_id, by = party_name(by), codec = codec.name(), "codec changed");
        self.note_event(at, "codec_change", Some(by), Some(codec));
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
            if let Some(change) = call.audio.hold.offer_accepted(by) {
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
            call.note_event(at, "session_expired", None, None);
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
                if call.audio.index.is_some_and(|a| a != stream) {
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
        let called = called_number(info);
        let assignment = self.cfg.policy.assign(called.as_deref(), call_id);
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
        let caller = caller_number(info);
        rec.caller_number_raw = caller.clone();
        rec.caller_number = caller;
        rec.called_number = called;
        // Decided now, from the called number and the Call-ID alone, so that a call policy
        // leaves out says so in its sidecar even if it is never answered; acted on at answer.
        if let Some(a) = assignment {
            rec.service.name = Some(a.name);
            rec.service.tenant = a.tenant;
            rec.service.decision = a.decision;
            rec.service.reason = a.reason;
        }
        tracing::info!(%call_id, recording_id = %rec.recording_id, caller = ?rec.caller_number, called = ?rec.called_number, service = ?rec.service.name, decision = ?rec.service.decision, "call offered");
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
        let rate = if call.audio.wideband_possible() {
            wideband
        } else {
            narrowband
        };
        call.answered_at = Some(at);
        call.record.times.answer = Some(format_time(wall));
        let held = call.audio.hold.on_hold();
        for stream in call.streams.iter().flatten() {
            stream.relay.control(if held {
                RelayControl::Disarm
            } else {
                RelayControl::Arm
            });
        }
        // Policy first: a call its service leaves out is not recorded whatever its media.
        let left_out = match call.record.service.decision {
            Decision::PolicyNone | Decision::SampledOut => call.record.service.reason.clone(),
            Decision::Recorded | Decision::Failed => None,
        };
        let skip = match left_out {
            Some(reason) => {
                tracing::info!(%call_id, recording_id = %call.record.recording_id, %reason, "call is not recorded");
                Some(reason)
            }
            None => call.audio.unrecordable().inspect(|reason| {
                tracing::warn!(%call_id, recording_id = %call.record.recording_id, %reason, "call is not recorded");
                call.record.service.decision = Decision::Failed;
                call.record.service.reason = Some(reason.clone());
            }),
        };
        if let Some(reason) = skip {
            call.record.state = RecordState::NotRecorded;
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
            .index
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
            codecs: call.audio.decode_maps(),
            aux: call.audio.decode_aux_maps(),
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
        if let Some(by) = call.audio.hold.by.filter(|_| held) {
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
        let answer = call.audio.offer_answer(party);
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
                if call.audio.index == Some(view.index) {
                    call.audio.index = None;
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
                        if call.answered_at.is_some() && !call.audio.hold.on_hold() {
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
            let is_audio = call.audio.is_audio(view);
            if is_audio {
                hold_change = call.audio.hold.update(party, holds(view)).or(hold_change);
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
                codec_change = call.audio.take_codecs(party, view).or(codec_change);
                if let Some(rec) = &call.recording {
                    recorder.send(Command::Codecs {
                        slot: rec.slot,
                        codecs: call.audio.decode_maps(),
                        aux: call.audio.decode_aux_maps(),
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
                self.call_mut(call_id).audio.error = Some(format!("SDP does not parse: {e}"));
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
                    call.audio.error = Some(format!("media not anchored: {e}"));
                }
                None
            }
        }
    }
}

/// The caller's number of an INVITE: the network-asserted identity beats the From header
/// (RFC 3325 §9.1).
pub(crate) fn caller_number(info: &InviteInfo) -> Option<String> {
    info.asserted_user
        .clone()
        .or_else(|| info.from_user.clone())
}

/// The called number of an INVITE: the Request-URI's user, else the To header's.
pub(crate) fn called_number(info: &InviteInfo) -> Option<String> {
    info.request_uri_user
        .clone()
        .or_else(|| info.to_user.clone())
}

/// Where the sidecar of a call without a recording goes: the day of its INVITE.
fn not_recorded_path(dir: &std::path::Path, call: &Call) -> PathBuf {
    let started = call
        .invite_at
        .map(wall_time)
        .unwrap_or_else(SystemTime::now);
    day_dir(dir, started).join(format!("{}.json", call.record.recording_id))
}

/// The call of `call_id`, created on first sight (the first SDP of a call arrives just before
/// the proxy core reports its INVITE).
fn call_entry<'a>(calls: &'a mut HashMap<String, Call>, call_id: &str) -> &'a mut Call {
    calls.entry(call_id.to_string()).or_insert_with(|| Call {
        call_id: Arc::from(call_id),
        record: CallRecord::new(ulid::Ulid::new().to_string(), call_id.to_string()),
        streams: Vec::new(),
        audio: AudioState::default(),
        invite_at: None,
        answered_at: None,
        recording: None,
        session_expired: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::metadata::CallEventRecord;
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
            policy: ServicePolicy::default(),
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

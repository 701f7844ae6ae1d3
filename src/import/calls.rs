//! Call reconstruction for `recproxy import`, sans-IO: the time-ordered datagrams and SIP messages
//! of a capture in, one [`CallPlan`] per call (per initial INVITE) out. A plan holds what the live
//! daemon's call registry would have put into the call's record, and for a call to be recorded the
//! codec maps and each party's RTP packets in the order the recorder is to see them.
//!
//! The rules are the live daemon's: the proxy core's (who sent a message, which response ends the
//! call) and the registry's (numbers, times, end reasons, offer/answer, hold and codec events, why
//! a call cannot be recorded): the INVITE is read with the proxy core's [`invite_info`], and the
//! audio stream's SDP with the `AudioState` the registry keeps for every call.
//!
//! Media is matched by destination: each party's SDP names the address it receives RTP on, so a
//! packet sent to the callee's address came from the caller and vice versa (source ports may be
//! asymmetric). A packet sent to neither is matched to the party it is sent *to* by where that
//! party's matched packets come from (latching, as the relay does): some phones receive on
//! another address than the one their SDP names. What a capture cannot tell is chosen as an
//! operator would expect; see [`CallPlan::end_reason`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::call::media_state::{event_record, holds, idx, AudioState, HoldChange};
use crate::call::metadata::{
    format_time, CallEventRecord, CallRecord, Decision, Direction, EndReason, RecordState,
};
use crate::call::registry::{called_number, caller_number};
use crate::codec::Codec;
use crate::config::Transport;
use crate::import::capture::Captured;
use crate::media::rtp;
use crate::record::recorder::{AuxMap, CodecMap};
use crate::sdp::{MediaView, Sdp};
use crate::sip::msg::Message;
use crate::sip::proxy::{invite_info, Party};

/// WAV rate of narrowband calls, as the daemon's `SAMPLE_RATE`.
pub const NARROWBAND_RATE: u32 = 8000;
/// WAV rate of calls whose parties can both speak a wideband codec (the daemon's default
/// `recording.wideband_rate`).
pub const WIDEBAND_RATE: u32 = 16000;

/// One call rebuilt from a capture.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// SIP Call-ID.
    pub call_id: String,
    /// ULID of the record: the INVITE's time plus a hash of the Call-ID and the caller's tag, so
    /// importing the same capture again names the same files (and finds them there).
    pub recording_id: String,
    /// User part of the first P-Asserted-Identity, else of From (of the first initial INVITE).
    pub caller_number: Option<String>,
    /// User part of the Request-URI, else of To.
    pub called_number: Option<String>,
    /// The first initial INVITE.
    pub invite: SystemTime,
    /// The first 2xx to the initial INVITE.
    pub answer: Option<SystemTime>,
    /// The end of the call: BYE, final error response, CANCEL (its 487, or the CANCEL itself if
    /// the 487 is not in the capture); when the capture holds none of these, the call's last
    /// packet (SIP or its RTP).
    pub end: SystemTime,
    /// As the daemon sets it; `None` when the end is not in the capture (the capture stopped
    /// first): nothing is made up, like a `recovered` record whose real end was not seen.
    pub end_reason: Option<EndReason>,
    /// Why there is no recording, when there is none.
    pub not_recorded_reason: Option<String>,
    /// Answered, but its media could not be recorded (encrypted, unknown codec, bad SDP): the
    /// service decision becomes `failed`, as in the daemon.
    pub failed: bool,
    /// Hold, resume, codec change and transfer events during the recording, in order
    /// (DTMF events come from the recorder).
    pub events: Vec<CallEventRecord>,
    /// What to record, when the call is recorded.
    pub recording: Option<RecordingPlan>,
    /// RTP packets matched to each party over the whole call: [caller, callee].
    pub rtp_packets: [u64; 2],
}

/// The recording of one call: from the answer to the end.
#[derive(Debug, Clone)]
pub struct RecordingPlan {
    /// WAV rate: wideband when the parties' SDP had a wideband codec in common at any time
    /// during the recording.
    pub rate: u32,
    /// Decode maps at the answer: [caller's packets, callee's].
    pub codecs: [CodecMap; 2],
    /// Event and comfort-noise maps at the answer.
    pub aux: [AuxMap; 2],
    /// Map changes and packets after the answer up to the end, in time order.
    pub steps: Vec<Step>,
}

/// One thing the recorder is to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// New decode maps (an SDP passed).
    Maps {
        /// When.
        at: SystemTime,
        /// [caller's packets, callee's].
        codecs: [CodecMap; 2],
        /// [caller's packets, callee's].
        aux: [AuxMap; 2],
    },
    /// An RTP packet `party` sent: `captured[index]`.
    Packet {
        /// Capture time.
        at: SystemTime,
        /// Sender.
        party: Party,
        /// Index into the capture's list.
        index: usize,
    },
}

impl Step {
    /// When it happened.
    pub fn at(&self) -> SystemTime {
        match self {
            Step::Maps { at, .. } | Step::Packet { at, .. } => *at,
        }
    }
}

/// What the reconstruction saw besides the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconstructStats {
    /// SIP messages parsed.
    pub sip_messages: u64,
    /// Datagrams that looked like SIP but did not parse.
    pub sip_unparsable: u64,
    /// SIP messages of dialogs whose initial INVITE is not in the capture (skipped).
    pub sip_without_invite: u64,
    /// RTP packets (not RTCP) seen.
    pub rtp_packets: u64,
    /// RTP packets matched to a party of a call.
    pub rtp_matched: u64,
}

/// The calls of a capture and what was seen besides.
#[derive(Debug, Clone, Default)]
pub struct Reconstruction {
    /// One per initial INVITE (Call-ID), in INVITE order.
    pub calls: Vec<CallPlan>,
    /// Counters.
    pub stats: ReconstructStats,
}

impl CallPlan {
    /// Whether it is to be recorded.
    pub fn recorded(&self) -> bool {
        self.recording.is_some()
    }

    fn base_record(&self) -> CallRecord {
        let mut rec = CallRecord::new(self.recording_id.clone(), self.call_id.clone());
        rec.direction = Some(Direction::Inbound);
        rec.caller_number_raw = self.caller_number.clone();
        rec.caller_number = self.caller_number.clone();
        rec.called_number = self.called_number.clone();
        rec.times.invite = Some(format_time(self.invite));
        rec.times.answer = self.answer.map(format_time);
        rec
    }

    /// The record as the daemon writes it when the recording starts (state `recording`); the
    /// caller adds `wav`.
    pub fn opening_record(&self) -> CallRecord {
        let mut rec = self.base_record();
        if self.recording.is_some() {
            rec.start_reason = Some("answer".into());
            rec.times.recording_start = rec.times.answer.clone();
        }
        rec
    }

    /// The record as the registry hands it over at the end: a recorded call still `recording`
    /// (the recorder completes it with file and media facts), any other `not_recorded`.
    pub fn final_record(&self) -> CallRecord {
        let mut rec = self.opening_record();
        rec.times.end = Some(format_time(self.end));
        match self.end_reason {
            Some(reason) => rec.set_end(reason),
            None => {
                rec.end_reason = None;
                rec.ended_by = None;
            }
        }
        rec.duration_ms = self.answer.map(|a| millis(self.end, a));
        rec.events = self.events.clone();
        if self.recording.is_some() {
            rec.times.recording_end = Some(format_time(self.end));
        } else {
            rec.state = RecordState::NotRecorded;
            rec.not_recorded_reason = self.not_recorded_reason.clone();
            if self.failed {
                rec.service.decision = Decision::Failed;
                rec.service.reason = self.not_recorded_reason.clone();
            }
        }
        rec
    }
}

fn millis(at: SystemTime, from: SystemTime) -> u64 {
    at.duration_since(from).unwrap_or_default().as_millis() as u64
}

/// Rebuilds the calls of a capture: `captured` as `read_capture` gives it (sorted by time).
pub fn reconstruct(captured: &[Captured]) -> Reconstruction {
    let mut calls: Vec<Call> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut stats = ReconstructStats::default();
    let mut rtp_packets: Vec<usize> = Vec::new();
    for (index, c) in captured.iter().enumerate() {
        let first = c.payload.first().copied().unwrap_or(0);
        if c.transport == Transport::Tcp || first.is_ascii_alphabetic() {
            match Message::parse(&c.payload) {
                Ok((msg, _)) => {
                    stats.sip_messages += 1;
                    sip_message(&mut calls, &mut by_id, &mut stats, c, &msg);
                }
                Err(_) => stats.sip_unparsable += 1,
            }
        } else if rtp::parse(&c.payload).is_ok() && !rtp::is_rtcp(&c.payload) {
            stats.rtp_packets += 1;
            rtp_packets.push(index);
        }
    }
    let matched = match_media(&calls, captured, &rtp_packets);
    stats.rtp_matched = matched.iter().map(Vec::len).sum::<usize>() as u64;
    let calls = calls
        .into_iter()
        .zip(matched)
        .map(|(call, media)| call.finish(media))
        .collect();
    Reconstruction { calls, stats }
}

/// A call being rebuilt.
struct Call {
    call_id: String,
    recording_id: String,
    caller_tag: String,
    caller_source: SocketAddr,
    callee_tag: Option<String>,
    /// CSeq of the latest initial INVITE (a challenged INVITE is re-sent with a new one).
    invite_cseq: u32,
    invite: SystemTime,
    caller_number: Option<String>,
    called_number: Option<String>,
    answer: Option<SystemTime>,
    cancel: Option<SystemTime>,
    end: Option<(SystemTime, EndReason)>,
    not_recorded_reason: Option<String>,
    failed: bool,
    last_sip: SystemTime,
    /// Messages handled, to skip retransmissions and copies of one message seen at two hops.
    seen: Vec<(u32, String, u16, Party)>,
    /// INVITE CSeqs that carried no SDP (their 2xx then carries the offer).
    invites_without_sdp: Vec<u32>,
    /// The party that owes the answer to an offer in a 2xx (in its ACK).
    late_offer: Option<Party>,
    /// REFERs by CSeq and sender.
    refers: Vec<(u32, Party)>,
    media: Media,
    events: Vec<CallEventRecord>,
    recording: Option<RecordingPlan>,
}

/// The audio stream: as the registry tracks it, and where each party receives it.
#[derive(Default)]
struct Media {
    audio: AudioState,
    /// [caller, callee]: that party's latest SDP refused the audio stream (port 0).
    refused: [bool; 2],
    /// [caller, callee]: every address the party's SDP named for receiving the audio stream.
    addresses: [Vec<SocketAddr>; 2],
}

/// A deterministic ULID for a call: the INVITE's millisecond and 80 bits of a hash of what
/// identifies the call in the capture.
fn recording_id(call_id: &str, caller_tag: &str, invite: SystemTime) -> String {
    let ms = invite
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut hash = Sha256::new();
    hash.update(call_id.as_bytes());
    hash.update([0]);
    hash.update(caller_tag.as_bytes());
    hash.update(ms.to_be_bytes());
    let digest = hash.finalize();
    let mut random = [0u8; 16];
    random.copy_from_slice(&digest[..16]);
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random)).to_string()
}

fn sip_message(
    calls: &mut Vec<Call>,
    by_id: &mut HashMap<String, usize>,
    stats: &mut ReconstructStats,
    c: &Captured,
    msg: &Message,
) {
    let Some(call_id) = msg.call_id() else {
        return;
    };
    let Some((cseq, cseq_method)) = msg.cseq() else {
        return;
    };
    let initial_invite = msg.method() == Some("INVITE") && msg.to_tag().is_none();
    let index = match by_id.get(call_id) {
        Some(&i) => i,
        None if initial_invite => {
            let caller_tag = msg.from_tag().unwrap_or_default().to_string();
            let info = invite_info(msg, false, c.src);
            calls.push(Call {
                recording_id: recording_id(call_id, &caller_tag, c.at),
                call_id: call_id.to_string(),
                caller_tag,
                caller_source: c.src,
                callee_tag: None,
                invite_cseq: cseq,
                invite: c.at,
                caller_number: caller_number(&info),
                called_number: called_number(&info),
                answer: None,
                cancel: None,
                end: None,
                not_recorded_reason: None,
                failed: false,
                last_sip: c.at,
                seen: Vec::new(),
                invites_without_sdp: Vec::new(),
                late_offer: None,
                refers: Vec::new(),
                media: Media::default(),
                events: Vec::new(),
                recording: None,
            });
            by_id.insert(call_id.to_string(), calls.len() - 1);
            // RFC 3891: a new call with Replaces naming another takes that one over.
            let replaced = msg
                .header("Replaces")
                .and_then(|r| r.split(';').next())
                .map(|id| id.trim())
                .filter(|id| *id != call_id)
                .and_then(|id| by_id.get(id).copied());
            if let Some(other) = replaced {
                calls[other].transfer(None, c.at);
            }
            calls.len() - 1
        }
        None => {
            stats.sip_without_invite += 1;
            return;
        }
    };
    let cseq_method = cseq_method.to_ascii_uppercase();
    let call = &mut calls[index];
    if call.end.is_some_and(|(at, _)| at < c.at) {
        // The dialog is over for the proxy: late retransmissions change nothing.
        return;
    }
    call.last_sip = c.at;
    match msg.method() {
        Some(method) => call.request(c, msg, method, cseq, initial_invite),
        None => call.response(c, msg, cseq, &cseq_method),
    }
}

impl Call {
    /// Which party sent a request (or, `response`, a response), as the proxy core tells it.
    fn sender(&self, msg: &Message, src: SocketAddr, response: bool) -> Option<Party> {
        let from_tag = msg.from_tag().unwrap_or_default();
        let to_tag = msg.to_tag().unwrap_or_default();
        if let Some(callee_tag) = &self.callee_tag {
            // Another fork's dialog (a second 2xx, its BYE): not the recorded call.
            let ours = (from_tag == self.caller_tag && to_tag == callee_tag)
                || (from_tag == callee_tag && to_tag == self.caller_tag)
                || to_tag.is_empty();
            if !ours {
                return None;
            }
            if *callee_tag == self.caller_tag {
                // Equal tags cannot tell the parties apart; the caller's address can.
                return Some(if src == self.caller_source {
                    Party::Caller
                } else {
                    Party::Callee
                });
            }
        }
        let by_caller = from_tag == self.caller_tag;
        // A response comes from the other party of its request.
        Some(if by_caller != response {
            Party::Caller
        } else {
            Party::Callee
        })
    }

    /// First sight of this message (not a retransmission, nor a copy seen at another hop).
    fn first_sight(&mut self, cseq: u32, method: &str, status: u16, party: Party) -> bool {
        let key = (cseq, method.to_string(), status, party);
        if self.seen.contains(&key) {
            return false;
        }
        self.seen.push(key);
        true
    }

    fn request(
        &mut self,
        c: &Captured,
        msg: &Message,
        method: &str,
        cseq: u32,
        initial_invite: bool,
    ) {
        let method = method.to_ascii_uppercase();
        if initial_invite {
            if msg.from_tag().unwrap_or_default() != self.caller_tag {
                // Another caller reusing the Call-ID: not this call.
                return;
            }
            if !self.first_sight(cseq, &method, 0, Party::Caller) {
                return;
            }
            // The same call re-sent after a 401/407 challenge: same call, one recording.
            self.invite_cseq = cseq;
            self.sdp_of(msg, Party::Caller, c.at, Some(cseq));
            return;
        }
        let Some(party) = self.sender(msg, c.src, false) else {
            return;
        };
        if !self.first_sight(cseq, &method, 0, party) {
            return;
        }
        match method.as_str() {
            "INVITE" => self.sdp_of(msg, party, c.at, Some(cseq)),
            "ACK" => {
                self.sdp_of(msg, party, c.at, None);
                if self.late_offer == Some(party) {
                    self.late_offer = None;
                    if msg.body().is_empty() {
                        self.offer_accepted(party, c.at);
                    }
                }
            }
            "BYE" => {
                self.sdp_of(msg, party, c.at, None);
                if self.end.is_none() {
                    let reason = match party {
                        Party::Caller => EndReason::ByeCaller,
                        Party::Callee => EndReason::ByeCallee,
                    };
                    if self.answer.is_none() {
                        self.not_recorded_reason =
                            Some("the call ended before recording began".into());
                    }
                    self.end = Some((c.at, reason));
                }
            }
            "CANCEL" => {
                if party == Party::Caller && self.answer.is_none() {
                    self.cancel.get_or_insert(c.at);
                }
            }
            "REFER" => {
                self.refers.push((cseq, party));
                self.sdp_of(msg, party, c.at, None);
            }
            _ => self.sdp_of(msg, party, c.at, None),
        }
    }

    fn response(&mut self, c: &Captured, msg: &Message, cseq: u32, method: &str) {
        let Some(status) = msg.status() else {
            return;
        };
        let Some(party) = self.sender(msg, c.src, true) else {
            return;
        };
        if !self.first_sight(cseq, method, status, party) {
            return;
        }
        let initial = method == "INVITE" && cseq == self.invite_cseq;
        // Before the answer every fork's SDP is early media; after it only the answered
        // dialog's gets here (`sender`).
        self.sdp_of(msg, party, c.at, None);
        if method == "INVITE" && (200..300).contains(&status) {
            let offer_in_2xx = self.invites_without_sdp.contains(&cseq) && !msg.body().is_empty();
            self.late_offer = offer_in_2xx.then_some(party.other());
        }
        if initial && status >= 200 && self.answer.is_none() && self.end.is_none() {
            if status < 300 {
                self.callee_tag = msg.to_tag().map(str::to_string);
                self.answered(c.at);
            } else if status != 401 && status != 407 {
                // 401/407: the caller will most likely re-send the INVITE with credentials.
                let (reason, why) = if self.cancel.is_some() {
                    (
                        EndReason::Cancel,
                        "cancelled by the caller before answer".to_string(),
                    )
                } else {
                    let phrase = match msg.start_line() {
                        crate::sip::msg::StartLine::Response { reason, .. } => reason.clone(),
                        crate::sip::msg::StartLine::Request { .. } => String::new(),
                    };
                    (
                        EndReason::Rejected,
                        format!("not answered: {status} {phrase}"),
                    )
                };
                self.not_recorded_reason = Some(why);
                self.end = Some((c.at, reason));
            }
        }
        if method == "REFER" && (200..300).contains(&status) {
            if let Some(&(_, by)) = self.refers.iter().find(|(n, _)| *n == cseq) {
                self.transfer(Some(by), c.at);
            }
        }
    }

    /// An accepted transfer is an event of the recording (the recording goes on).
    fn transfer(&mut self, by: Option<Party>, at: SystemTime) {
        if self.end.is_some() {
            return;
        }
        self.event(at, "transfer", by, None);
    }

    /// Notes an event when the call is being recorded, as the registry does.
    fn event(&mut self, at: SystemTime, kind: &str, by: Option<Party>, codec: Option<Codec>) {
        let (Some(answer), Some(_)) = (self.answer, &self.recording) else {
            return;
        };
        self.events
            .push(event_record(millis(at, answer), kind, by, codec));
    }

    fn hold_changed(&mut self, change: HoldChange, at: SystemTime) {
        match change {
            HoldChange::Hold(by) => self.event(at, "hold", Some(by), None),
            HoldChange::Resume(by) => self.event(at, "resume", Some(by), None),
        }
    }

    /// The ACK of a late offer came without an answer: its sender accepted the offer as it was
    /// (its hold state follows the offer's), as the registry's `offer_accepted`.
    fn offer_accepted(&mut self, by: Party, at: SystemTime) {
        if let Some(change) = self.media.audio.hold.offer_accepted(by) {
            self.hold_changed(change, at);
        }
    }

    /// The answer: the recording starts, or the reason it cannot is noted.
    fn answered(&mut self, at: SystemTime) {
        self.answer = Some(at);
        if let Some(reason) = self.media.audio.unrecordable() {
            self.not_recorded_reason = Some(reason);
            self.failed = true;
            return;
        }
        self.recording = Some(RecordingPlan {
            rate: if self.media.audio.wideband_possible() {
                WIDEBAND_RATE
            } else {
                NARROWBAND_RATE
            },
            codecs: self.media.audio.decode_maps(),
            aux: self.media.audio.decode_aux_maps(),
            steps: Vec::new(),
        });
        // Answered straight into a hold: noted at 0.
        if self.media.audio.hold.on_hold() {
            if let Some(by) = self.media.audio.hold.by {
                self.hold_changed(HoldChange::Hold(by), at);
            }
        }
    }

    /// An SDP body `party` sent (if the message carries one), as the registry's `anchor` takes
    /// it for the audio stream. `invite`: the CSeq of an INVITE, to note one without SDP.
    fn sdp_of(&mut self, msg: &Message, party: Party, at: SystemTime, invite: Option<u32>) {
        let is_sdp = msg.header("Content-Type").is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/sdp")
        });
        if !is_sdp || msg.body().is_empty() {
            if let Some(cseq) = invite {
                self.invites_without_sdp.push(cseq);
            }
            return;
        }
        let sdp = match Sdp::parse(msg.body()) {
            Ok(sdp) => sdp,
            Err(e) => {
                self.media.audio.error = Some(format!("SDP does not parse: {e}"));
                return;
            }
        };
        let (hold_change, codec_change) = self.media.update(party, &sdp.media());
        if let Some(rec) = self.recording.as_mut() {
            if self.media.audio.wideband_possible() {
                rec.rate = WIDEBAND_RATE;
            }
            rec.steps.push(Step::Maps {
                at,
                codecs: self.media.audio.decode_maps(),
                aux: self.media.audio.decode_aux_maps(),
            });
        }
        if let Some(change) = hold_change {
            self.hold_changed(change, at);
        }
        if let Some((codec, by)) = codec_change {
            self.event(at, "codec_change", Some(by), Some(codec));
        }
    }

    /// The call's time span for media: from its INVITE to its end (open while not seen).
    fn spans(&self, at: SystemTime) -> bool {
        at >= self.invite && self.end.is_none_or(|(end, _)| at <= end)
    }

    /// Completes the plan with the call's media: `media` are its packets (index, sender) in
    /// time order.
    fn finish(mut self, media: Vec<(usize, SystemTime, Party)>) -> CallPlan {
        let mut rtp_packets = [0u64; 2];
        for &(_, _, party) in &media {
            rtp_packets[idx(party)] += 1;
        }
        if self.end.is_none() {
            if let Some(at) = self.cancel {
                // The CANCEL is here but its 487 is not: the caller gave up all the same.
                self.end = Some((at, EndReason::Cancel));
                self.not_recorded_reason = Some("cancelled by the caller before answer".into());
            }
        }
        let last = media
            .last()
            .map_or(self.last_sip, |m| m.1.max(self.last_sip));
        let (end, end_reason) = match self.end {
            Some((at, reason)) => (at, Some(reason)),
            None => {
                if self.answer.is_none() {
                    self.not_recorded_reason =
                        Some("the capture ends before the call was answered".into());
                }
                (last, None)
            }
        };
        if let (Some(rec), Some(answer)) = (self.recording.as_mut(), self.answer) {
            rec.steps.extend(
                media
                    .iter()
                    .filter(|(_, at, _)| *at > answer && *at <= end)
                    .map(|&(index, at, party)| Step::Packet { at, party, index }),
            );
            // Stable: an SDP and the packets it describes at the same time keep that order.
            rec.steps.sort_by_key(|s| s.at());
            rec.steps.retain(|s| s.at() <= end);
        }
        CallPlan {
            call_id: self.call_id,
            recording_id: self.recording_id,
            caller_number: self.caller_number,
            called_number: self.called_number,
            invite: self.invite,
            answer: self.answer,
            end,
            end_reason,
            not_recorded_reason: self.not_recorded_reason,
            failed: self.failed,
            events: self.events,
            recording: self.recording,
            rtp_packets,
        }
    }
}

/// Matches RTP packets to calls and senders: first by destination (the address a party's SDP
/// receives on: the other party sent it), then, for packets to no such address, by the address
/// a party's matched packets came from (the party latched there receives them). Among calls
/// whose span holds the packet, the latest INVITE wins (ports are reused from call to call).
/// Returns each call's packets (index, time, sender) in time order.
fn match_media(
    calls: &[Call],
    captured: &[Captured],
    rtp_packets: &[usize],
) -> Vec<Vec<(usize, SystemTime, Party)>> {
    let mut receivers: HashMap<SocketAddr, Vec<(usize, Party)>> = HashMap::new();
    for (i, call) in calls.iter().enumerate() {
        for party in [Party::Caller, Party::Callee] {
            for &addr in &call.media.addresses[idx(party)] {
                receivers.entry(addr).or_default().push((i, party));
            }
        }
    }
    let pick = |table: &HashMap<SocketAddr, Vec<(usize, Party)>>, c: &Captured| {
        table
            .get(&c.dst)?
            .iter()
            .filter(|(i, _)| calls[*i].spans(c.at))
            .max_by_key(|(i, _)| (calls[*i].invite, *i))
            .copied()
    };
    let mut out: Vec<Vec<(usize, SystemTime, Party)>> = vec![Vec::new(); calls.len()];
    let mut latched: HashMap<SocketAddr, Vec<(usize, Party)>> = HashMap::new();
    let mut unmatched = Vec::new();
    for &index in rtp_packets {
        let c = &captured[index];
        match pick(&receivers, c) {
            Some((call, receiver)) => {
                out[call].push((index, c.at, receiver.other()));
                // The sender receives where it sends from (symmetric RTP, RFC 4961).
                let entry = latched.entry(c.src).or_default();
                if !entry.contains(&(call, receiver.other())) {
                    entry.push((call, receiver.other()));
                }
            }
            None => unmatched.push(index),
        }
    }
    for index in unmatched {
        let c = &captured[index];
        if let Some((call, receiver)) = pick(&latched, c) {
            out[call].push((index, c.at, receiver.other()));
        }
    }
    for packets in &mut out {
        packets.sort_by_key(|&(index, at, _)| (at, index));
    }
    out
}

impl Media {
    /// Takes one SDP of `party` into account for the audio stream (the first audio `m=`
    /// line), as the registry's `anchor` does; returns the hold and codec changes.
    fn update(
        &mut self,
        party: Party,
        views: &[MediaView],
    ) -> (Option<HoldChange>, Option<(Codec, Party)>) {
        let answer = self.audio.offer_answer(party);
        for view in views.iter().filter(|v| v.port == 0) {
            if self.audio.index == Some(view.index) {
                self.refused[idx(party)] = true;
                if answer || self.refused[idx(party.other())] {
                    self.audio.index = None;
                }
            }
        }
        let mut hold_change = None;
        let mut codec_change = None;
        for view in views.iter().filter(|v| v.port != 0) {
            if !self.audio.is_audio(view) {
                continue;
            }
            self.refused[idx(party)] = false;
            hold_change = self.audio.hold.update(party, holds(view)).or(hold_change);
            // An unspecified address (RFC 3264 §8.4 old-style hold) names no receiver.
            let Some(ip) = view.connection.filter(|ip| !ip.is_unspecified()) else {
                continue;
            };
            let addr = SocketAddr::new(ip, view.port);
            if !self.addresses[idx(party)].contains(&addr) {
                self.addresses[idx(party)].push(addr);
            }
            codec_change = self.audio.take_codecs(party, view).or(codec_change);
        }
        (hold_change, codec_change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::recorder::Aux;
    use std::time::Duration;

    const CALLER: &str = "10.0.0.1:5060";
    const PBX: &str = "10.0.0.2:5060";
    const T0: u64 = 1_795_000_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(T0 + ms)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sdp(ip: &str, port: u16, pts: &str, extra: &str) -> String {
        let mut maps = String::new();
        for pt in pts.split(' ') {
            let line = match pt {
                "0" => "a=rtpmap:0 PCMU/8000\r\n",
                "8" => "a=rtpmap:8 PCMA/8000\r\n",
                "9" => "a=rtpmap:9 G722/8000\r\n",
                "18" => "a=rtpmap:18 G729/8000\r\n",
                "101" => "a=rtpmap:101 telephone-event/8000\r\n",
                _ => "",
            };
            maps.push_str(line);
        }
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n{maps}{extra}"
        )
    }

    /// A SIP message: `start` line, the dialog's headers, optional SDP body.
    #[allow(clippy::too_many_arguments)]
    fn sip(
        ms: u64,
        src: &str,
        dst: &str,
        start: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: Option<&str>,
        cseq: &str,
        extra: &str,
        body: Option<String>,
    ) -> Captured {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let body = body.unwrap_or_default();
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        let text = format!(
            "{start}\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{ms}\r\n\
             From: \"A\" <sip:0401234567@example.com>;tag={from_tag}\r\n\
             To: <sip:0295120000@example.com>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n\
             {extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Captured {
            at: at(ms),
            transport: Transport::Udp,
            src: addr(src),
            dst: addr(dst),
            payload: text.into_bytes(),
        }
    }

    fn rtp(ms: u64, src: &str, dst: &str, pt: u8, seq: u16) -> Captured {
        let mut payload = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        payload[2..4].copy_from_slice(&seq.to_be_bytes());
        payload[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        payload.extend([0xd5; 160]);
        Captured {
            at: at(ms),
            transport: Transport::Udp,
            src: addr(src),
            dst: addr(dst),
            payload,
        }
    }

    fn invite(ms: u64, call_id: &str, cseq: u32, body: Option<String>) -> Captured {
        sip(
            ms,
            CALLER,
            PBX,
            "INVITE sip:0295120000@example.com SIP/2.0",
            call_id,
            "a1",
            None,
            &format!("{cseq} INVITE"),
            "",
            body,
        )
    }

    fn response(
        ms: u64,
        status: &str,
        call_id: &str,
        to_tag: Option<&str>,
        cseq: &str,
        body: Option<String>,
    ) -> Captured {
        sip(
            ms,
            PBX,
            CALLER,
            &format!("SIP/2.0 {status}"),
            call_id,
            "a1",
            to_tag,
            cseq,
            "",
            body,
        )
    }

    fn request(ms: u64, by: Party, method: &str, call_id: &str, cseq: u32) -> Captured {
        let (src, dst, from, to) = match by {
            Party::Caller => (CALLER, PBX, "a1", "b1"),
            Party::Callee => (PBX, CALLER, "b1", "a1"),
        };
        sip(
            ms,
            src,
            dst,
            &format!("{method} sip:x@example.com SIP/2.0"),
            call_id,
            from,
            Some(to),
            &format!("{cseq} {method}"),
            "",
            None,
        )
    }

    /// A call: offer from 10.0.0.1:4000 (PCMU), answer from 10.0.0.2:6000 at 100 ms.
    fn answered_call(call_id: &str) -> Vec<Captured> {
        vec![
            invite(0, call_id, 1, Some(sdp("10.0.0.1", 4000, "0 101", ""))),
            response(10, "180 Ringing", call_id, Some("b1"), "1 INVITE", None),
            response(
                100,
                "200 OK",
                call_id,
                Some("b1"),
                "1 INVITE",
                Some(sdp("10.0.0.2", 6000, "0 101", "")),
            ),
            request(110, Party::Caller, "ACK", call_id, 1),
        ]
    }

    fn packets(plan: &CallPlan) -> Vec<(u64, Party)> {
        plan.recording
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Packet { at: t, party, .. } => Some((millis(*t, at(0)), *party)),
                Step::Maps { .. } => None,
            })
            .collect()
    }

    #[test]
    fn an_answered_call_is_recorded_from_answer_to_bye_with_media_matched_by_destination() {
        let mut cap = answered_call("c1");
        let mut with_pai = invite(0, "c1", 1, Some(sdp("10.0.0.1", 4000, "0 101", "")));
        let text = String::from_utf8(with_pai.payload).unwrap().replace(
            "CSeq:",
            "P-Asserted-Identity: <sip:+358401234567@example.com>\r\nCSeq:",
        );
        with_pai.payload = text.into_bytes();
        cap[0] = with_pai;
        // Early media before the answer is not recorded.
        cap.push(rtp(50, "10.0.0.2:6000", "10.0.0.1:4000", 0, 1));
        // Asymmetric source ports: the destination decides.
        cap.push(rtp(120, "10.0.0.1:4444", "10.0.0.2:6000", 0, 1));
        cap.push(rtp(125, "10.0.0.2:6002", "10.0.0.1:4000", 0, 2));
        cap.push(request(3000, Party::Callee, "BYE", "c1", 2));
        // After the BYE: not the recording's.
        cap.push(rtp(3010, "10.0.0.1:4444", "10.0.0.2:6000", 0, 2));
        cap.sort_by_key(|c| c.at);
        let rebuilt = reconstruct(&cap);
        assert_eq!(rebuilt.calls.len(), 1);
        let plan = &rebuilt.calls[0];
        assert_eq!(plan.caller_number.as_deref(), Some("+358401234567"));
        assert_eq!(plan.called_number.as_deref(), Some("0295120000"));
        assert_eq!(plan.invite, at(0));
        assert_eq!(plan.answer, Some(at(100)));
        assert_eq!(
            (plan.end, plan.end_reason),
            (at(3000), Some(EndReason::ByeCallee))
        );
        // The packet after the BYE is not the call's.
        assert_eq!(plan.rtp_packets, [1, 2]);
        assert_eq!(
            packets(plan),
            vec![(120, Party::Caller), (125, Party::Callee)]
        );
        let rec = plan.recording.as_ref().unwrap();
        assert_eq!(rec.rate, NARROWBAND_RATE);
        // The caller's packets are decoded with the callee's payload numbers first.
        assert_eq!(rec.codecs[0][0], (0, Codec::Pcmu));
        assert!(rec.aux[0].contains(&(101, Aux::TelephoneEvent { clock_rate: 8000 })));
        let final_record = plan.final_record();
        assert_eq!(final_record.duration_ms, Some(2900));
        assert_eq!(final_record.ended_by.as_deref(), Some("callee"));
        assert_eq!(final_record.start_reason.as_deref(), Some("answer"));
        assert_eq!(final_record.times.recording_end, final_record.times.end);
        assert_eq!(final_record.direction, Some(Direction::Inbound));
        assert_eq!(
            (rebuilt.stats.rtp_packets, rebuilt.stats.rtp_matched),
            (4, 3)
        );
    }

    #[test]
    fn rejected_and_cancelled_calls_are_not_recorded_with_the_daemons_reasons() {
        let cap = vec![
            invite(0, "busy", 1, Some(sdp("10.0.0.1", 4000, "0", ""))),
            response(20, "486 Busy Here", "busy", Some("b1"), "1 INVITE", None),
            invite(100, "gone", 1, Some(sdp("10.0.0.1", 4002, "0", ""))),
            sip(
                200,
                CALLER,
                PBX,
                "CANCEL sip:0295120000@example.com SIP/2.0",
                "gone",
                "a1",
                None,
                "1 CANCEL",
                "",
                None,
            ),
            response(210, "200 OK", "gone", None, "1 CANCEL", None),
            response(
                220,
                "487 Request Terminated",
                "gone",
                Some("b1"),
                "1 INVITE",
                None,
            ),
            // A CANCEL whose 487 is not in the capture still ends the call.
            invite(300, "cut", 1, None),
            sip(
                400,
                CALLER,
                PBX,
                "CANCEL sip:0295120000@example.com SIP/2.0",
                "cut",
                "a1",
                None,
                "1 CANCEL",
                "",
                None,
            ),
        ];
        let calls = reconstruct(&cap).calls;
        let got: Vec<_> = calls
            .iter()
            .map(|c| {
                let r = c.final_record();
                (
                    r.state,
                    r.end_reason,
                    r.ended_by,
                    r.not_recorded_reason,
                    r.service.decision,
                    c.end,
                )
            })
            .collect();
        let caller = Some("caller".to_string());
        assert_eq!(
            got,
            vec![
                (
                    RecordState::NotRecorded,
                    Some(EndReason::Rejected),
                    Some("callee".to_string()),
                    Some("not answered: 486 Busy Here".to_string()),
                    Decision::Recorded,
                    at(20)
                ),
                (
                    RecordState::NotRecorded,
                    Some(EndReason::Cancel),
                    caller.clone(),
                    Some("cancelled by the caller before answer".to_string()),
                    Decision::Recorded,
                    at(220)
                ),
                (
                    RecordState::NotRecorded,
                    Some(EndReason::Cancel),
                    caller,
                    Some("cancelled by the caller before answer".to_string()),
                    Decision::Recorded,
                    at(400)
                ),
            ]
        );
        assert!(calls.iter().all(|c| c.final_record().duration_ms.is_none()));
    }

    #[test]
    fn encrypted_or_undecodable_media_is_not_recorded_and_says_why() {
        let srtp = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let mut cap = vec![
            invite(0, "s", 1, Some(sdp("10.0.0.1", 4000, "0", srtp))),
            response(
                100,
                "200 OK",
                "s",
                Some("b1"),
                "1 INVITE",
                Some(sdp("10.0.0.2", 6000, "0", srtp)),
            ),
            // SRTP packets look like RTP: matched, never decoded.
            rtp(120, "10.0.0.1:4000", "10.0.0.2:6000", 0, 1),
            request(1000, Party::Caller, "BYE", "s", 2),
        ];
        cap.extend([
            invite(2000, "g729", 1, Some(sdp("10.0.0.1", 4000, "18", ""))),
            response(
                2100,
                "200 OK",
                "g729",
                Some("b1"),
                "1 INVITE",
                Some(sdp("10.0.0.2", 6000, "18", "")),
            ),
            request(3000, Party::Caller, "BYE", "g729", 2),
        ]);
        let calls = reconstruct(&cap).calls;
        let srtp = calls[0].final_record();
        assert_eq!(srtp.state, RecordState::NotRecorded);
        assert_eq!(
            srtp.not_recorded_reason.as_deref(),
            Some("encrypted media (SRTP) is relayed but not recorded")
        );
        assert_eq!(srtp.service.decision, Decision::Failed);
        assert_eq!(srtp.service.reason, srtp.not_recorded_reason);
        assert_eq!(srtp.end_reason, Some(EndReason::ByeCaller));
        assert_eq!(srtp.duration_ms, Some(900));
        assert!(srtp.wav.is_none() && srtp.times.recording_start.is_none());
        assert!(calls[0].recording.is_none());
        assert_eq!(
            calls[1].final_record().not_recorded_reason.as_deref(),
            Some("codec G729 not supported")
        );
    }

    #[test]
    fn retransmissions_copies_at_another_hop_and_challenges_make_one_call() {
        let mut cap = vec![
            invite(0, "c", 1, Some(sdp("10.0.0.1", 4000, "0", ""))),
            response(
                5,
                "407 Proxy Authentication Required",
                "c",
                Some("x"),
                "1 INVITE",
                None,
            ),
            request(6, Party::Caller, "ACK", "c", 1),
            invite(10, "c", 2, Some(sdp("10.0.0.1", 4000, "0", ""))),
            // The same INVITE forwarded by a proxy in the capture (a spiral): a copy.
            sip(
                12,
                PBX,
                "10.0.0.3:5060",
                "INVITE sip:0295120000@10.0.0.3 SIP/2.0",
                "c",
                "a1",
                None,
                "2 INVITE",
                "",
                Some(sdp("10.0.0.1", 4000, "0", "")),
            ),
            response(
                100,
                "200 OK",
                "c",
                Some("b1"),
                "2 INVITE",
                Some(sdp("10.0.0.2", 6000, "0", "")),
            ),
            // Retransmitted 200 (and its copy): nothing new.
            response(
                600,
                "200 OK",
                "c",
                Some("b1"),
                "2 INVITE",
                Some(sdp("10.0.0.2", 6000, "0", "")),
            ),
            request(610, Party::Caller, "ACK", "c", 2),
            request(2000, Party::Caller, "BYE", "c", 3),
            request(2500, Party::Caller, "BYE", "c", 3),
        ];
        cap.sort_by_key(|c| c.at);
        let calls = reconstruct(&cap).calls;
        assert_eq!(calls.len(), 1);
        let plan = &calls[0];
        assert_eq!(plan.invite, at(0), "the first INVITE is the call's start");
        assert_eq!(plan.answer, Some(at(100)));
        assert_eq!(
            (plan.end, plan.end_reason),
            (at(2000), Some(EndReason::ByeCaller))
        );
        // One SDP of the answer only: its retransmission is no re-negotiation.
        let maps = plan.recording.as_ref().unwrap().steps.len();
        assert_eq!(maps, 0);
    }

    #[test]
    fn a_call_whose_end_is_not_in_the_capture_ends_at_its_last_packet_without_a_reason() {
        let mut cap = answered_call("open");
        cap.push(rtp(500, "10.0.0.2:6000", "10.0.0.1:4000", 0, 1));
        cap.push(rtp(900, "10.0.0.2:6000", "10.0.0.1:4000", 0, 2));
        cap.push(invite(
            1000,
            "ringing",
            1,
            Some(sdp("10.0.0.1", 4100, "0", "")),
        ));
        cap.push(response(
            1010,
            "180 Ringing",
            "ringing",
            Some("r"),
            "1 INVITE",
            None,
        ));
        let calls = reconstruct(&cap).calls;
        let open = calls[0].final_record();
        assert_eq!(calls[0].end, at(900));
        assert_eq!((open.end_reason, open.ended_by), (None, None));
        assert_eq!(open.duration_ms, Some(800));
        assert_eq!(
            open.state,
            RecordState::Recording,
            "the recorder completes it"
        );
        let ringing = calls[1].final_record();
        assert_eq!(calls[1].end, at(1010));
        assert_eq!(ringing.state, RecordState::NotRecorded);
        assert_eq!(
            ringing.not_recorded_reason.as_deref(),
            Some("the capture ends before the call was answered")
        );
        assert_eq!(ringing.end_reason, None);
    }

    #[test]
    fn packets_to_an_address_no_sdp_names_are_matched_by_where_the_party_sends_from() {
        // As SIP_DTMF2.cap: the caller's phone sends from 10.0.0.9:4376 to the callee's
        // address, and the callee sends to 10.0.0.9:4376, which no SDP names; its first packet
        // comes before the caller's first.
        let mut cap = answered_call("lat");
        cap.push(rtp(200, "10.0.0.2:6002", "10.0.0.9:4376", 0, 1));
        cap.push(rtp(250, "10.0.0.9:4376", "10.0.0.2:6000", 0, 1));
        cap.push(rtp(260, "10.0.0.2:6002", "10.0.0.9:4376", 0, 2));
        // Nobody's address: ignored.
        cap.push(rtp(270, "10.0.0.7:1000", "10.0.0.8:1000", 0, 1));
        cap.push(request(1000, Party::Caller, "BYE", "lat", 2));
        cap.sort_by_key(|c| c.at);
        let rebuilt = reconstruct(&cap);
        assert_eq!(
            packets(&rebuilt.calls[0]),
            vec![
                (200, Party::Callee),
                (250, Party::Caller),
                (260, Party::Callee)
            ]
        );
        assert_eq!(
            (rebuilt.stats.rtp_packets, rebuilt.stats.rtp_matched),
            (4, 3)
        );
    }

    #[test]
    fn ports_reused_by_the_next_call_belong_to_the_newer_call() {
        let mut cap = answered_call("one");
        cap.push(request(1000, Party::Callee, "BYE", "one", 2));
        // The next call offers the same address (as sip-rtp-g711.pcap) and never ends.
        let mut second: Vec<Captured> = answered_call("two")
            .into_iter()
            .map(|mut c| {
                c.at += Duration::from_millis(2000);
                c
            })
            .collect();
        cap.append(&mut second);
        cap.push(rtp(2500, "10.0.0.2:6000", "10.0.0.1:4000", 0, 1));
        let calls = reconstruct(&cap).calls;
        assert_eq!(calls[0].rtp_packets, [0, 0]);
        assert_eq!(packets(&calls[1]), vec![(2500, Party::Callee)]);
        assert_eq!(calls[1].end, at(2500));
    }

    #[test]
    fn late_offer_hold_at_answer_and_a_codec_change_follow_the_registry() {
        let c = "late";
        let cap = vec![
            // No SDP in the INVITE: the offer comes in the 200, the answer in the ACK.
            invite(0, c, 1, None),
            response(
                100,
                "200 OK",
                c,
                Some("b1"),
                "1 INVITE",
                Some(sdp("10.0.0.2", 6000, "0 9", "a=sendonly\r\n")),
            ),
            sip(
                110,
                CALLER,
                PBX,
                "ACK sip:x@example.com SIP/2.0",
                c,
                "a1",
                Some("b1"),
                "1 ACK",
                "",
                Some(sdp("10.0.0.1", 4000, "0", "a=recvonly\r\n")),
            ),
            // The callee resumes and offers G.722 first; the caller answers G.722.
            sip(
                1000,
                PBX,
                CALLER,
                "INVITE sip:a@10.0.0.1 SIP/2.0",
                c,
                "b1",
                Some("a1"),
                "1 INVITE",
                "",
                Some(sdp("10.0.0.2", 6000, "9 0", "")),
            ),
            sip(
                1010,
                CALLER,
                PBX,
                "SIP/2.0 200 OK",
                c,
                "b1",
                Some("a1"),
                "1 INVITE",
                "",
                Some(sdp("10.0.0.1", 4000, "9", "")),
            ),
            request(3000, Party::Caller, "BYE", c, 2),
        ];
        let plan = &reconstruct(&cap).calls[0];
        let events: Vec<_> = plan
            .events
            .iter()
            .map(|e| {
                (
                    e.at_ms,
                    e.kind.as_str(),
                    e.by.as_deref(),
                    e.codec.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            events,
            vec![
                (0, "hold", Some("callee"), None),
                (910, "resume", Some("callee"), None),
                (910, "codec_change", Some("callee"), Some("G722")),
            ]
        );
        let rec = plan.recording.as_ref().unwrap();
        // Narrowband at the answer, but G.722 came later: the whole file is wideband.
        assert_eq!(rec.rate, WIDEBAND_RATE);
        assert_eq!(rec.steps.len(), 3, "ACK, re-INVITE and its 200 carried SDP");
    }

    #[test]
    fn a_bye_of_another_forks_dialog_does_not_end_the_call() {
        let mut cap = answered_call("fork");
        cap.push(sip(
            500,
            PBX,
            CALLER,
            "BYE sip:a@10.0.0.1 SIP/2.0",
            "fork",
            "other-fork",
            Some("a1"),
            "1 BYE",
            "",
            None,
        ));
        cap.push(request(900, Party::Callee, "BYE", "fork", 5));
        let plan = &reconstruct(&cap).calls[0];
        assert_eq!(
            (plan.end, plan.end_reason),
            (at(900), Some(EndReason::ByeCallee))
        );
    }

    #[test]
    fn recording_ids_are_ulids_of_the_invite_time_and_stable_across_imports() {
        let a = recording_id("c1@h", "t1", at(0));
        assert_eq!(a, recording_id("c1@h", "t1", at(0)));
        assert_ne!(a, recording_id("c2@h", "t1", at(0)));
        let ulid: ulid::Ulid = a.parse().unwrap();
        assert_eq!(ulid.timestamp_ms(), T0);
    }

    #[test]
    fn dialogs_without_their_initial_invite_and_noise_are_skipped() {
        let cap = vec![
            request(0, Party::Caller, "BYE", "orphan", 2),
            Captured {
                at: at(1),
                transport: Transport::Udp,
                src: addr(CALLER),
                dst: addr(PBX),
                payload: b"NOT SIP AT ALL".to_vec(),
            },
            Captured {
                at: at(2),
                transport: Transport::Udp,
                src: addr(CALLER),
                dst: addr(PBX),
                payload: b"\r\n\r\n".to_vec(),
            },
        ];
        let rebuilt = reconstruct(&cap);
        assert!(rebuilt.calls.is_empty());
        assert_eq!(rebuilt.stats.sip_without_invite, 1);
        assert_eq!(rebuilt.stats.sip_unparsable, 1);
    }
}

//! What a call's SDP says about its recorded (audio) stream, from the offer/answer exchange:
//! which codecs each party's packets are decoded with, hold and codec changes, and why the
//! call cannot be recorded. Sans-IO and shared by the live call registry and the offline
//! importer (`recproxy import`), so that both read a call's SDP by the same rules.

use crate::call::metadata::CallEventRecord;
use crate::codec::Codec;
use crate::record::recorder::{Aux, AuxMap, CodecMap};
use crate::sdp::{Direction as MediaDirection, MediaView};
use crate::sip::proxy::Party;

/// Index of a party in the `[caller, callee]` arrays.
pub(crate) fn idx(party: Party) -> usize {
    match party {
        Party::Caller => 0,
        Party::Callee => 1,
    }
}

/// A party's name in the call record.
pub(crate) fn party_name(party: Party) -> &'static str {
    match party {
        Party::Caller => "caller",
        Party::Callee => "callee",
    }
}

/// A mid-call event of the record, `at_ms` into the recording (no DTMF fields).
pub(crate) fn event_record(
    at_ms: u64,
    kind: &str,
    by: Option<Party>,
    codec: Option<Codec>,
) -> CallEventRecord {
    CallEventRecord {
        at_ms,
        kind: kind.to_string(),
        by: by.map(|p| party_name(p).to_string()),
        codec: codec.map(|c| c.name().to_string()),
        digit: None,
        duration_ms: None,
    }
}

/// The recorded audio stream as the parties' SDP describe it.
#[derive(Debug, Default, Clone)]
pub(crate) struct AudioState {
    /// Index (m= line) of the stream that is recorded: the first audio stream.
    pub(crate) index: Option<usize>,
    /// Codecs each party offered/answered for the audio stream: [caller, callee].
    pub(crate) codecs: [CodecMap; 2],
    /// Telephone-event and comfort-noise payload types of each party's SDP: [caller, callee].
    pub(crate) aux: [AuxMap; 2],
    /// The party whose SDP is an offer still waiting for its answer (RFC 3264): the other
    /// party's next SDP answers it.
    pub(crate) pending_offer: Option<Party>,
    /// Encodings named in the audio stream that we cannot decode.
    pub(crate) unknown_codecs: Vec<String>,
    /// The audio stream is SRTP.
    pub(crate) encrypted: bool,
    /// Why media could not be anchored (or the SDP read), if it could not.
    pub(crate) error: Option<String>,
    /// Hold state of the audio stream.
    pub(crate) hold: HoldState,
    /// Which audio codec the parties' latest SDP agree on.
    pub(crate) codec: CodecState,
}

impl AudioState {
    /// Takes note of an SDP of `party`: returns whether it answers the other party's pending
    /// offer (else it is an offer, pending until the other party's next SDP).
    pub(crate) fn offer_answer(&mut self, party: Party) -> bool {
        let answer = self.pending_offer == Some(party.other());
        self.pending_offer = if answer { None } else { Some(party) };
        answer
    }

    /// Whether `view` is the recorded audio stream (the first audio stream, once known).
    pub(crate) fn is_audio(&self, view: &MediaView) -> bool {
        view.kind.eq_ignore_ascii_case("audio") && self.index.is_none_or(|a| a == view.index)
    }

    /// Takes the codecs of `party`'s SDP for the audio stream `view` into account; returns the
    /// new codec and who changed it when the negotiated codec changed (see [`CodecState`]).
    pub(crate) fn take_codecs(&mut self, party: Party, view: &MediaView) -> Option<(Codec, Party)> {
        self.index = Some(view.index);
        self.encrypted |= view.encrypted;
        let (map, aux, unknown) = codec_map(view);
        self.aux[idx(party)] = aux;
        let codecs = map.iter().map(|&(_, c)| c).collect();
        let change = self.codec.update(party, codecs);
        self.codecs[idx(party)] = with_previous(map, &self.codecs[idx(party)]);
        self.unknown_codecs = unknown;
        change
    }

    /// Why an answered call cannot be recorded, if it cannot.
    pub(crate) fn unrecordable(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        if self.index.is_none() {
            return Some("no audio stream was anchored".into());
        }
        if self.encrypted {
            return Some("encrypted media (SRTP) is relayed but not recorded".into());
        }
        if self.codecs.iter().all(|m| m.is_empty()) {
            return Some(format!(
                "codec {} not supported",
                self.unknown_codecs.join(", ")
            ));
        }
        None
    }

    /// Whether both parties' SDP name a common wideband codec, so the call may be wideband at
    /// some point: then it is recorded at the wideband rate from the start.
    pub(crate) fn wideband_possible(&self) -> bool {
        self.codecs[0]
            .iter()
            .any(|(_, c)| c.is_wideband() && self.codecs[1].iter().any(|(_, d)| d == c))
    }

    /// The codec maps the recorder decodes each party's packets with (see [`decode_maps`]).
    pub(crate) fn decode_maps(&self) -> [CodecMap; 2] {
        decode_maps(&self.codecs)
    }

    /// The event and comfort-noise maps (see [`decode_aux_maps`]).
    pub(crate) fn decode_aux_maps(&self) -> [AuxMap; 2] {
        decode_aux_maps(&self.aux)
    }
}

/// A change of the call's hold state, with the party it is put down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldChange {
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
pub(crate) struct HoldState {
    /// [caller, callee]: that party's latest SDP holds the media.
    pub(crate) held: [bool; 2],
    /// While on hold: who started it.
    pub(crate) by: Option<Party>,
    /// While on hold: the first party whose SDP stopped holding.
    resuming: Option<Party>,
}

impl HoldState {
    pub(crate) fn on_hold(&self) -> bool {
        self.held[0] || self.held[1]
    }

    /// Takes `party`'s latest SDP into account; returns the change of the call's state, if any.
    pub(crate) fn update(&mut self, party: Party, holds: bool) -> Option<HoldChange> {
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

    /// `by` accepted the other party's offer without an answer of its own (its ACK had no SDP):
    /// its hold state follows the offer's, as a complementary answer would have (a `sendrecv`
    /// offer ends a hold `by` started, a `sendonly` one keeps or starts it).
    pub(crate) fn offer_accepted(&mut self, by: Party) -> Option<HoldChange> {
        let offer_holds = self.held[idx(by.other())];
        self.update(by, offer_holds)
    }
}

/// Whether one party's SDP for a stream holds its media (see [`HoldState`]).
pub(crate) fn holds(view: &MediaView) -> bool {
    view.direction != MediaDirection::SendRecv
        || view.connection.is_some_and(|ip| ip.is_unspecified())
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
pub(crate) struct CodecState {
    /// [caller, callee]: the decodable codecs of that party's latest SDP, in its order.
    sdp: [Vec<Codec>; 2],
    negotiated: Option<Codec>,
    /// While a change is being negotiated: who proposed it.
    proposer: Option<Party>,
}

impl CodecState {
    /// Takes `party`'s latest SDP codecs into account; returns the new codec and who changed
    /// it when the negotiated codec changed from one codec to another (not the first time).
    pub(crate) fn update(&mut self, party: Party, codecs: Vec<Codec>) -> Option<(Codec, Party)> {
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
pub(crate) fn with_previous(new: CodecMap, previous: &CodecMap) -> CodecMap {
    let mut map = new;
    for &(pt, codec) in previous {
        if !map.iter().any(|&(p, _)| p == pt) {
            map.push((pt, codec));
        }
    }
    map
}

/// The maps the recorder decodes each party's packets with: [caller's packets, callee's]. A
/// sender uses the payload type numbers of the receiver's SDP (RFC 3264 §5.1), so the other
/// party's map comes first, the sender's own as fallback.
///
/// Static payload types (RFC 3551 §6) that neither SDP names come last with their fixed
/// meaning: a party that starts sending a newly negotiated codec as soon as it sends or gets
/// the answer (RFC 3264 §8.3.2) can have packets reach the recorder before the new maps do.
pub(crate) fn decode_maps(sdp_maps: &[CodecMap; 2]) -> [CodecMap; 2] {
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

/// Like [`decode_maps`] for the payload types that carry no audio; static PT 13 is comfort
/// noise (RFC 3551) wherever no SDP names it otherwise.
pub(crate) fn decode_aux_maps(sdp_maps: &[AuxMap; 2]) -> [AuxMap; 2] {
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
pub(crate) fn codec_map(view: &MediaView) -> (CodecMap, AuxMap, Vec<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Audio codecs the recorder decodes to 16-bit linear PCM: G.711 µ-law (PCMU) and A-law (PCMA),
//! G.722 and Opus, identified by static payload type (RFC 3551 table 4) or by SDP rtpmap name.
//! [`Decoder`] and [`Encoder`] carry the state the wideband codecs need from one RTP payload to
//! the next and convert between the codec's own sample rate and the caller's. No IO.

pub mod g711;
pub mod g722;
pub mod opus;
pub mod resample;
#[cfg(test)]
mod stream_tests;

use std::str::FromStr;

use self::g722::{G722Decoder, G722Encoder};
use self::opus::{OpusDecoder, OpusEncoder};
use self::resample::Resampler;

/// A codec the recorder decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law, static payload type 8.
    #[serde(rename = "PCMA")]
    Pcma,
    /// G.722 64 kbit/s, static payload type 9: 16 kHz audio on an 8 kHz RTP clock.
    #[serde(rename = "G722")]
    G722,
    /// Opus, dynamic payload type: up to 48 kHz audio on a 48 kHz RTP clock (RFC 7587).
    #[serde(rename = "opus")]
    Opus,
}

/// Why a codec could not be named, set up, or could not decode a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The encoding name is not one the recorder decodes.
    #[error("unsupported codec {0:?}")]
    Unsupported(String),
    /// A sample rate the codec's decoder or encoder does not convert to or from.
    #[error("{codec} cannot work at {rate} Hz")]
    Rate {
        /// The codec.
        codec: Codec,
        /// The rate asked for.
        rate: u32,
    },
    /// A payload (or PCM frame, when encoding) the codec cannot take; nothing was appended.
    #[error("{codec}: {reason}")]
    Payload {
        /// The codec.
        codec: Codec,
        /// What was wrong, from the codec library where it has one.
        reason: String,
    },
}

/// Every codec, in the order offers list them.
pub const ALL: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

impl Codec {
    /// Codec of a static RTP payload type: 0 is PCMU, 8 is PCMA, 9 is G722 (RFC 3551 table 4).
    pub fn from_static_pt(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }

    /// Codec of an SDP `a=rtpmap` entry (encoding names are case-insensitive, RFC 4566 §6):
    /// PCMU, PCMA and G722 at 8000 (RFC 3551 §4.5.2 keeps G.722's RTP clock at 8000 although
    /// it samples at 16 kHz), opus at 48000 with any channel count (RFC 7587 §7 always says
    /// `opus/48000/2`).
    pub fn from_rtpmap(encoding: &str, clock_rate: u32) -> Option<Codec> {
        ALL.into_iter()
            .find(|c| encoding.eq_ignore_ascii_case(c.name()) && clock_rate == c.rtp_clock_rate())
    }

    /// The SDP encoding name: "PCMU", "PCMA", "G722" or "opus" (also how serde writes it).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// RTP timestamp clock rate (RFC 3551 table 4, RFC 7587 §4.1): 8000, except 48000 for Opus.
    pub fn rtp_clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// Same as [`Codec::rtp_clock_rate`] (the RTP clock, not the audio rate), for the callers
    /// from before G.722 made the two differ.
    pub fn clock_rate(self) -> u32 {
        self.rtp_clock_rate()
    }

    /// Sample rate of the decoded audio in the codec's own terms: 8000 for G.711, 16000 for
    /// G.722, 48000 for Opus (whose encoder may send less bandwidth; libopus always decodes to
    /// the rate asked).
    pub fn audio_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// Whether the codec carries audio above 4 kHz (worth a 16 kHz recording).
    pub fn is_wideband(self) -> bool {
        matches!(self, Codec::G722 | Codec::Opus)
    }

    /// Whether the codec is stateless (G.711), so [`Codec::decode`] and [`Codec::encode`]
    /// work on it; the others need a [`Decoder`] or [`Encoder`] per stream.
    pub fn is_stateless(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma)
    }

    /// Decodes a G.711 payload and appends the 8 kHz samples to `out`; allocates nothing beyond
    /// `out`'s growth. Stateful codecs (G.722, Opus) append nothing here: their state lives in
    /// a [`Decoder`], one per stream.
    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        let table: fn(u8) -> i16 = match self {
            Codec::Pcmu => g711::ulaw_to_linear,
            Codec::Pcma => g711::alaw_to_linear,
            Codec::G722 | Codec::Opus => return,
        };
        out.extend(payload.iter().map(|&b| table(b)));
    }

    /// Encodes 8 kHz PCM samples as G.711 and appends the codes to `out`. Stateful codecs
    /// append nothing here: use an [`Encoder`].
    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        let table: fn(i16) -> u8 = match self {
            Codec::Pcmu => g711::linear_to_ulaw,
            Codec::Pcma => g711::linear_to_alaw,
            Codec::G722 | Codec::Opus => return,
        };
        out.extend(pcm.iter().map(|&s| table(s)));
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = CodecError;

    /// Parses an encoding name ("PCMU", "PCMA", "G722", "opus", any case) as used in config and
    /// metadata.
    fn from_str(s: &str) -> Result<Codec, CodecError> {
        ALL.into_iter()
            .find(|c| s.eq_ignore_ascii_case(c.name()))
            .ok_or_else(|| CodecError::Unsupported(s.to_string()))
    }
}

/// The codec-specific half of a [`Decoder`].
#[derive(Debug)]
enum DecodeState {
    G711(fn(u8) -> i16),
    G722(Box<G722Decoder>),
    Opus(Box<OpusDecoder>),
}

/// Decodes one RTP stream to mono PCM at a chosen rate: the codec's state carried from payload
/// to payload, resampling where the codec's rate differs from the output's, and concealment of
/// lost packets.
#[derive(Debug)]
pub struct Decoder {
    codec: Codec,
    out_rate: u32,
    state: DecodeState,
    /// From the codec's native rate to `out_rate`, when they differ (never for Opus, which
    /// libopus decodes at `out_rate` directly).
    resampler: Option<Resampler>,
    /// Native-rate PCM on its way to the resampler, kept to avoid allocating per payload.
    scratch: Vec<i16>,
}

impl Decoder {
    /// A decoder for `codec` producing PCM at `out_rate` (8000 or 16000; resampled from the
    /// codec's native rate where they differ).
    pub fn new(codec: Codec, out_rate: u32) -> Result<Decoder, CodecError> {
        if !matches!(out_rate, 8000 | 16000) {
            return Err(CodecError::Rate {
                codec,
                rate: out_rate,
            });
        }
        let (state, native) = match codec {
            Codec::Pcmu => (DecodeState::G711(g711::ulaw_to_linear), 8000),
            Codec::Pcma => (DecodeState::G711(g711::alaw_to_linear), 8000),
            Codec::G722 => (DecodeState::G722(Box::default()), 16000),
            Codec::Opus => {
                let d = OpusDecoder::new(out_rate)
                    .map_err(|e| CodecError::Payload { codec, reason: e.0 })?;
                (DecodeState::Opus(Box::new(d)), out_rate)
            }
        };
        let resampler = if native == out_rate {
            None
        } else {
            let r = Resampler::new(native, out_rate).map_err(|_| CodecError::Rate {
                codec,
                rate: out_rate,
            })?;
            Some(r)
        };
        Ok(Decoder {
            codec,
            out_rate,
            state,
            resampler,
            scratch: Vec::with_capacity(native as usize / 50),
        })
    }

    /// The codec decoded.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Rate of the PCM produced.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Decodes one RTP payload, appending PCM at `out_rate` to `out`; returns the samples
    /// appended. A payload the codec rejects gives an error and appends nothing; no input
    /// panics. (With resampling, a packet's output may be a sample more or less than its
    /// share; over a stream the count is exact.)
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        let target: &mut Vec<i16> = if self.resampler.is_some() {
            self.scratch.clear();
            &mut self.scratch
        } else {
            &mut *out
        };
        let before = target.len();
        match &mut self.state {
            DecodeState::G711(table) => target.extend(payload.iter().map(|&b| table(b))),
            DecodeState::G722(d) => d.decode(payload, target),
            DecodeState::Opus(d) => {
                d.decode(payload, target).map_err(|e| CodecError::Payload {
                    codec: self.codec,
                    reason: e.0,
                })?;
            }
        }
        let decoded = target.len() - before;
        match &mut self.resampler {
            Some(r) => Ok(r.process(&self.scratch, out)),
            None => Ok(decoded),
        }
    }

    /// Appends `samples` (at `out_rate`) covering lost audio: Opus's packet loss concealment,
    /// silence for the codecs without one. When the packet after the gap is at hand (`next`),
    /// Opus rebuilds the last lost frame from that packet's in-band FEC (LBRR) data; `next`
    /// itself is then decoded with [`Decoder::decode`] as usual.
    pub fn conceal(&mut self, samples: usize, next: Option<&[u8]>, out: &mut Vec<i16>) {
        match &mut self.state {
            DecodeState::Opus(d) => d.conceal(samples, next, out),
            DecodeState::G711(_) | DecodeState::G722(_) => out.resize(out.len() + samples, 0),
        }
    }
}

/// The codec-specific half of an [`Encoder`].
#[derive(Debug)]
enum EncodeState {
    G711(fn(i16) -> u8),
    G722(Box<G722Encoder>),
    Opus(Box<OpusEncoder>),
}

/// Encodes PCM into RTP payloads of one codec: for the test peers and the demo.
#[derive(Debug)]
pub struct Encoder {
    codec: Codec,
    in_rate: u32,
    state: EncodeState,
    /// From `in_rate` to the codec's native rate, when they differ (never for Opus).
    resampler: Option<Resampler>,
    scratch: Vec<i16>,
}

impl Encoder {
    /// An encoder for `codec` taking PCM at `in_rate` (8000, 16000 or 48000), resampled to the
    /// codec's native rate where they differ; Opus takes every one of them directly.
    pub fn new(codec: Codec, in_rate: u32) -> Result<Encoder, CodecError> {
        let bad_rate = CodecError::Rate {
            codec,
            rate: in_rate,
        };
        if !matches!(in_rate, 8000 | 16000 | 48000) {
            return Err(bad_rate);
        }
        let (state, native) = match codec {
            Codec::Pcmu => (EncodeState::G711(g711::linear_to_ulaw), 8000),
            Codec::Pcma => (EncodeState::G711(g711::linear_to_alaw), 8000),
            Codec::G722 => (EncodeState::G722(Box::default()), 16000),
            Codec::Opus => {
                let e = OpusEncoder::new(in_rate)
                    .map_err(|e| CodecError::Payload { codec, reason: e.0 })?;
                (EncodeState::Opus(Box::new(e)), in_rate)
            }
        };
        let resampler = if native == in_rate {
            None
        } else {
            Some(Resampler::new(in_rate, native).map_err(|_| bad_rate)?)
        };
        Ok(Encoder {
            codec,
            in_rate,
            state,
            resampler,
            scratch: Vec::with_capacity(native as usize / 50),
        })
    }

    /// The codec encoded.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Rate of the PCM taken.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Samples per 20 ms frame at `in_rate`: what one call to [`Encoder::encode`] should take
    /// for a 20 ms packet.
    pub fn frame_samples(&self) -> usize {
        (self.in_rate / 50) as usize
    }

    /// Encodes `pcm` (one packet's worth) and appends the RTP payload to `out`. Opus takes
    /// only whole Opus frame sizes (2.5 to 60 ms); an error appends nothing.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let pcm: &[i16] = match &mut self.resampler {
            Some(r) => {
                self.scratch.clear();
                r.process(pcm, &mut self.scratch);
                &self.scratch
            }
            None => pcm,
        };
        match &mut self.state {
            EncodeState::G711(table) => out.extend(pcm.iter().map(|&s| table(s))),
            EncodeState::G722(e) => e.encode(pcm, out),
            EncodeState::Opus(e) => e.encode(pcm, out).map_err(|e| CodecError::Payload {
                codec: self.codec,
                reason: e.0,
            })?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_payload_types_and_rtpmap_names() {
        assert_eq!(Codec::from_static_pt(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_static_pt(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_pt(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_pt(3), None);
        assert_eq!(Codec::from_static_pt(101), None);
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PcMa", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("PCMU", 16000), None);
        assert_eq!(Codec::from_rtpmap("G722", 8000), Some(Codec::G722));
        // G.722's RTP clock is 8000 (RFC 3551 §4.5.2); 16000 is a common mistake, not G.722.
        assert_eq!(Codec::from_rtpmap("g722", 16000), None);
        assert_eq!(Codec::from_rtpmap("opus", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("OPUS", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 16000), None);
        assert_eq!(Codec::from_rtpmap("G729", 8000), None);
        assert_eq!(Codec::from_rtpmap("telephone-event", 8000), None);
        assert_eq!("pcma".parse::<Codec>(), Ok(Codec::Pcma));
        assert_eq!("G722".parse::<Codec>(), Ok(Codec::G722));
        assert_eq!("Opus".parse::<Codec>(), Ok(Codec::Opus));
        assert_eq!(
            "g729".parse::<Codec>(),
            Err(CodecError::Unsupported("g729".into()))
        );
    }

    #[test]
    fn names_clock_and_serde_agree() {
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::Pcma.to_string(), "PCMA");
        assert_eq!(Codec::Pcma.clock_rate(), 8000);
        assert_eq!(serde_json::to_string(&Codec::Pcmu).unwrap(), "\"PCMU\"");
        assert_eq!(serde_json::to_string(&Codec::Pcma).unwrap(), "\"PCMA\"");
        for c in ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
            assert_eq!(c.name().parse::<Codec>(), Ok(c));
            assert_eq!(Codec::from_rtpmap(c.name(), c.rtp_clock_rate()), Some(c));
            assert_eq!(c.clock_rate(), c.rtp_clock_rate());
        }
        let rates: Vec<_> = ALL
            .iter()
            .map(|c| (c.rtp_clock_rate(), c.audio_rate()))
            .collect();
        assert_eq!(
            rates,
            [(8000, 8000), (8000, 8000), (8000, 16000), (48000, 48000)]
        );
        let wide: Vec<_> = ALL.iter().map(|c| c.is_wideband()).collect();
        assert_eq!(wide, [false, false, true, true]);
    }

    #[test]
    fn decode_appends_without_clearing() {
        let mut out = vec![7];
        Codec::Pcmu.decode(&[0xFF, 0x00], &mut out);
        Codec::Pcma.decode(&[0xD5, 0x55], &mut out);
        assert_eq!(out, vec![7, 0, -32124, 8, -8]);
        let mut codes = vec![1];
        Codec::Pcma.encode(&[0, -1], &mut codes);
        Codec::Pcmu.encode(&[0], &mut codes);
        assert_eq!(codes, vec![1, 0xD5, 0x55, 0xFF]);
    }

    fn snr_db(codec: Codec) -> f64 {
        let pcm: Vec<i16> = (0..8000)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * 1000.0 * f64::from(n) / 8000.0;
                (phase.sin() * 16000.0).round() as i16
            })
            .collect();
        let mut codes = Vec::new();
        codec.encode(&pcm, &mut codes);
        assert_eq!(codes.len(), pcm.len());
        let mut back = Vec::new();
        codec.decode(&codes, &mut back);
        assert_eq!(back.len(), pcm.len());
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        for (x, y) in pcm.iter().zip(&back) {
            signal += f64::from(*x).powi(2);
            noise += (f64::from(*x) - f64::from(*y)).powi(2);
        }
        10.0 * (signal / noise).log10()
    }

    #[test]
    fn a_1khz_sine_survives_with_snr_above_30_db() {
        let u = snr_db(Codec::Pcmu);
        let a = snr_db(Codec::Pcma);
        assert!(u > 30.0, "PCMU SNR {u:.1} dB");
        assert!(a > 30.0, "PCMA SNR {a:.1} dB");
    }
}

//! Audio codecs the recorder can decode to 16-bit linear PCM: G.711 µ-law (PCMU) and A-law
//! (PCMA), identified by static payload type (RFC 3551 table 4) or by SDP rtpmap name. Pure
//! functions over caller-owned buffers; no IO.

pub mod g711;

use std::str::FromStr;

/// A codec the recorder decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law, static payload type 8.
    #[serde(rename = "PCMA")]
    Pcma,
}

/// Why a codec name could not be turned into a `Codec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The encoding name is not one the recorder decodes.
    #[error("unsupported codec {0:?}")]
    Unsupported(String),
}

impl Codec {
    /// Codec of a static RTP payload type: 0 is PCMU, 8 is PCMA (RFC 3551 table 4).
    pub fn from_static_pt(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Codec of an SDP `a=rtpmap` entry: "PCMU"/"PCMA" in any case at 8000 Hz (RFC 4566 §6,
    /// encoding names are case-insensitive; RFC 3551 §4.5.14 fixes G.711 at 8000 Hz).
    pub fn from_rtpmap(encoding: &str, clock_rate: u32) -> Option<Codec> {
        if clock_rate != 8000 {
            return None;
        }
        if encoding.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if encoding.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The SDP encoding name: "PCMU" or "PCMA" (also how serde writes it).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// RTP clock rate, which for G.711 is also the sample rate of the decoded PCM.
    pub fn clock_rate(self) -> u32 {
        8000
    }

    /// Decodes a payload and appends the samples to `out`; allocates nothing beyond `out`'s growth.
    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        let table: fn(u8) -> i16 = match self {
            Codec::Pcmu => g711::ulaw_to_linear,
            Codec::Pcma => g711::alaw_to_linear,
        };
        out.extend(payload.iter().map(|&b| table(b)));
    }

    /// Encodes PCM samples and appends the codes to `out` (for the test peer and the demo).
    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        let table: fn(i16) -> u8 = match self {
            Codec::Pcmu => g711::linear_to_ulaw,
            Codec::Pcma => g711::linear_to_alaw,
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

    /// Parses an encoding name ("PCMU"/"PCMA", any case) as used in config and metadata.
    fn from_str(s: &str) -> Result<Codec, CodecError> {
        Codec::from_rtpmap(s, 8000).ok_or_else(|| CodecError::Unsupported(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_payload_types_and_rtpmap_names() {
        assert_eq!(Codec::from_static_pt(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_static_pt(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_pt(9), None);
        assert_eq!(Codec::from_static_pt(101), None);
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PcMa", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("PCMU", 16000), None);
        assert_eq!(Codec::from_rtpmap("G722", 8000), None);
        assert_eq!("pcma".parse::<Codec>(), Ok(Codec::Pcma));
        assert_eq!(
            "opus".parse::<Codec>(),
            Err(CodecError::Unsupported("opus".into()))
        );
    }

    #[test]
    fn names_clock_and_serde_agree() {
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::Pcma.to_string(), "PCMA");
        assert_eq!(Codec::Pcma.clock_rate(), 8000);
        assert_eq!(serde_json::to_string(&Codec::Pcmu).unwrap(), "\"PCMU\"");
        assert_eq!(serde_json::to_string(&Codec::Pcma).unwrap(), "\"PCMA\"");
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

//! Opus (RFC 6716) through libopus, as carried in RTP by RFC 7587: one Opus packet per RTP
//! payload, 48 kHz RTP clock whatever the audio bandwidth, mono or stereo. The decoder is mono
//! (libopus downmixes a stereo stream) at the rate the caller wants, which libopus produces
//! directly (8, 16 or 48 kHz); loss is concealed by libopus's PLC, or from the in-band FEC
//! (LBRR) copy that the next packet carries of the lost one.

use ::opus::{Application, Bandwidth, Bitrate, Channels};

/// Longest Opus packet duration (RFC 6716 §3.2.5: 120 ms), in ms.
const MAX_PACKET_MS: usize = 120;
/// Largest payload we hand to libopus: 120 ms of 1275-byte frames is 7.6 KB (RFC 6716 §3.4
/// R1-R7); anything longer is not Opus.
const MAX_PAYLOAD: usize = 8 * 1024;
/// Largest packet the encoder may produce (one MTU).
const MAX_ENCODED: usize = 1500;
/// Bit rate of the encoder: wideband SILK speech with room for LBRR (RFC 7587 §3.1.1).
const ENCODER_BITRATE: i32 = 32_000;
/// Packet loss the encoder plans for; with in-band FEC on, this makes it add LBRR data.
const ENCODER_LOSS_PERCENT: i32 = 20;

/// What went wrong in libopus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpusError(pub String);

impl From<::opus::Error> for OpusError {
    fn from(e: ::opus::Error) -> OpusError {
        OpusError(e.to_string())
    }
}

/// Mono Opus decoder at a fixed output rate.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: ::opus::Decoder,
    rate: u32,
    /// Decode buffer: 120 ms at `rate`, allocated once.
    buf: Vec<i16>,
    /// Samples of the last packet decoded: the frame size PLC repeats.
    last_frame: usize,
}

impl OpusDecoder {
    /// A decoder producing mono PCM at `rate` (8000, 12000, 16000, 24000 or 48000).
    pub fn new(rate: u32) -> Result<OpusDecoder, OpusError> {
        let inner = ::opus::Decoder::new(rate, Channels::Mono)?;
        let per_ms = (rate / 1000) as usize;
        Ok(OpusDecoder {
            inner,
            rate,
            buf: vec![0; per_ms * MAX_PACKET_MS],
            last_frame: per_ms * 20,
        })
    }

    /// Decodes one RTP payload, appending the PCM to `out`; returns the samples appended.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, OpusError> {
        if payload.is_empty() {
            // libopus would take an empty packet as a loss; on the wire it is an error.
            return Err(OpusError("empty Opus payload".into()));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(OpusError(format!("{} byte Opus payload", payload.len())));
        }
        let n = self.inner.decode(payload, &mut self.buf, false)?;
        let pcm = self.buf.get(..n).unwrap_or_default();
        out.extend_from_slice(pcm);
        self.last_frame = n.max(1);
        Ok(n)
    }

    /// Appends `samples` of concealment for lost packets: libopus's PLC, except that when the
    /// packet after the gap is at hand the last lost frame is rebuilt from its FEC data (RFC
    /// 7587 §3.3). Then `next` is to be decoded as usual.
    pub fn conceal(&mut self, samples: usize, next: Option<&[u8]>, out: &mut Vec<i16>) {
        let start = out.len();
        // The FEC copy covers the packet just before `next`, whose duration is taken to be
        // next's own (constant packetisation); libopus wants exactly that length.
        let fec = next
            .filter(|p| !p.is_empty() && p.len() <= MAX_PAYLOAD)
            .and_then(|p| Some((p, self.inner.get_nb_samples(p).ok()?)))
            .filter(|&(_, n)| n > 0 && n <= samples && n <= self.buf.len());
        let plc = samples - fec.map_or(0, |(_, n)| n);
        self.plc(plc, out);
        if let Some((packet, n)) = fec {
            match self.inner.decode(packet, &mut self.buf[..n], true) {
                Ok(got) => out.extend_from_slice(self.buf.get(..got).unwrap_or_default()),
                Err(e) => tracing::debug!(error = %e, "Opus FEC decode failed"),
            }
        }
        // Whatever libopus could not give is silence, so the length is always what was asked.
        out.resize(start + samples, 0);
    }

    /// PLC in steps libopus accepts: multiples of 2.5 ms, at most 120 ms, the last packet's
    /// duration while that fits; a remainder under 2.5 ms is concealed whole and cut.
    fn plc(&mut self, mut samples: usize, out: &mut Vec<i16>) {
        let quantum = (self.rate as usize) / 400; // 2.5 ms
        while samples > 0 {
            let step = if samples >= self.last_frame && self.last_frame % quantum == 0 {
                self.last_frame
            } else if samples >= quantum {
                (samples / quantum * quantum).min(self.buf.len())
            } else {
                quantum
            };
            let step = step.min(self.buf.len());
            match self.inner.decode(&[], &mut self.buf[..step], false) {
                Ok(got) => {
                    let take = got.min(samples);
                    out.extend_from_slice(self.buf.get(..take).unwrap_or_default());
                    samples -= take;
                    if got == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Opus PLC failed");
                    break;
                }
            }
        }
    }
}

/// Mono Opus encoder for VoIP with in-band FEC, for the test peers and the demo.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: ::opus::Encoder,
    buf: Vec<u8>,
}

impl OpusEncoder {
    /// An encoder taking mono PCM at `rate` (8000, 12000, 16000, 24000 or 48000).
    pub fn new(rate: u32) -> Result<OpusEncoder, OpusError> {
        let mut inner = ::opus::Encoder::new(rate, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::Bits(ENCODER_BITRATE))?;
        inner.set_max_bandwidth(Bandwidth::Wideband)?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(ENCODER_LOSS_PERCENT)?;
        Ok(OpusEncoder {
            inner,
            buf: vec![0; MAX_ENCODED],
        })
    }

    /// Encodes one frame (2.5, 5, 10, 20, 40 or 60 ms of PCM) as one packet appended to `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), OpusError> {
        let n = self.inner.encode(pcm, &mut self.buf)?;
        out.extend_from_slice(self.buf.get(..n).unwrap_or_default());
        Ok(())
    }
}

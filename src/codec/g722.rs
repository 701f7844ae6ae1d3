//! ITU-T G.722 (09/2012) at 64 kbit/s (mode 1): 16 kHz linear PCM in, one octet per pair of
//! samples out, and back. Written from the Recommendation's block descriptions; the section and
//! block names in the comments (QUANTL, LOGSCL, UPPOL2, ...) are the Recommendation's, so each
//! step can be checked against it. Arithmetic is the Recommendation's 16-bit fixed point
//! (saturating adds, arithmetic shifts), so a stream decodes the same here as anywhere else.
//!
//! Scaling: the sub-band signals are 15-bit (the 14-bit input of the Recommendation with one
//! more bit of headroom); 16-bit PCM is halved into the transmit QMF and doubled out of the
//! receive QMF, so a round trip keeps the level.

/// QMF coefficients h0..h23 (§3.2, Table 3 of G.722 scaled by 2^13); the filter is symmetric,
/// h(i) = h(23 - i), and the even and odd taps each sum to 4096.
const QMF: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32,
    -156, 12, 53, -11, -11, 3,
];

/// Lower sub-band quantizer decision levels (§3.3.2, Table 6), multiplied by the scale factor
/// and divided by 2^12 before the comparison; index 0 and 30.. are unused.
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Six-bit code of quantizer interval `mil` for a negative difference signal (Table 6, ILN).
const ILN: [u8; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
/// Six-bit code of quantizer interval `mil` for a non-negative difference signal (Table 6, ILP).
const ILP: [u8; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Four-bit inverse quantizer outputs (§3.4.1, Table 7, QM4), indexed by the code's top 4 bits.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Six-bit inverse quantizer outputs (§4.4.1, Table 9, QM6): the decoder's 64 kbit/s output.
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Four-bit code to magnitude class for the lower band's log scale factor (§3.5.1, RIL -> IL4).
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Lower band log scale factor multipliers (§3.5.1, Table 8, WL).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// Inverse log2 table of the scale factor (§3.5.2, ILB): 2048 * 2^(i/32), rounded.
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Higher band two-bit inverse quantizer outputs (§3.4.2, Table 7, QM2).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// Higher band code for a negative / non-negative difference by interval (§3.3.3, IHN/IHP).
const IHN: [u8; 3] = [0, 1, 0];
const IHP: [u8; 3] = [0, 3, 2];
/// Higher band code to magnitude class (§3.5.3, RH2) and its log scale multipliers (WH).
const RH2: [usize; 4] = [2, 1, 2, 1];
const WH: [i32; 3] = [0, -214, 798];
/// Higher band quantizer decision level (§3.3.3): 564 / 2^12 of the scale factor.
const QH: i32 = 564;

/// Limits to the 16-bit two's complement range, as every adder of the Recommendation does.
#[inline]
fn sat(x: i32) -> i32 {
    x.clamp(-32768, 32767)
}

/// Sign as the Recommendation takes it: the sign bit of a 16-bit value (zero counts positive).
#[inline]
fn negative(x: i32) -> bool {
    x < 0
}

/// Adaptive predictor of one sub-band: block 4 (§3.6), identical in encoder and decoder, plus
/// the scale factor adaptation of blocks 3L/3H (§3.5).
#[derive(Debug, Clone)]
struct Band {
    /// Predicted signal value SL/SH (PREDIC).
    s: i32,
    /// Pole section output SPL/SPH (FILTEP).
    sp: i32,
    /// Zero section output SZL/SZH (FILTEZ).
    sz: i32,
    /// Reconstructed signal RLT, with its two delayed values at index 1 and 2.
    r: [i32; 3],
    /// Partially reconstructed signal PLT (PARREC), current and two delayed.
    p: [i32; 3],
    /// Pole coefficients AL1, AL2 (index 0 unused).
    a: [i32; 3],
    /// Quantized difference DLT, current and six delayed.
    d: [i32; 7],
    /// Zero coefficients BL1..BL6 (index 0 unused).
    b: [i32; 7],
    /// Log scale factor NBL/NBH.
    nb: i32,
    /// Scale factor DETL/DETH.
    det: i32,
}

impl Band {
    fn new(det: i32) -> Band {
        Band {
            s: 0,
            sp: 0,
            sz: 0,
            r: [0; 3],
            p: [0; 3],
            a: [0; 3],
            d: [0; 7],
            b: [0; 7],
            nb: 0,
            det,
        }
    }

    /// LOGSCL/LOGSCH then SCALEL/SCALEH (§3.5): leak the log scale factor by 127/128, add the
    /// code's multiplier, clamp to `nb_max`, and take the inverse log; `shift` is 8 for the
    /// lower band and 10 for the higher.
    fn adapt_scale(&mut self, multiplier: i32, nb_max: i32, shift: i32) {
        self.nb = ((self.nb * 127) >> 7) + multiplier;
        self.nb = self.nb.clamp(0, nb_max);
        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        let exponent = shift - (self.nb >> 11);
        let wd3 = if exponent < 0 {
            mantissa << -exponent
        } else {
            mantissa >> exponent
        };
        self.det = wd3 << 2;
    }

    /// Block 4 (§3.6) with the quantized difference signal `dq` of this sample.
    fn predict(&mut self, dq: i32) {
        // RECONS and PARREC (§3.6.1, §3.6.2).
        self.d[0] = dq;
        self.r[0] = sat(self.s + dq);
        self.p[0] = sat(self.sz + dq);

        // UPPOL2 (§3.6.3): second pole coefficient.
        let sg0 = negative(self.p[0]);
        let sg1 = negative(self.p[1]);
        let sg2 = negative(self.p[2]);
        let wd1 = sat(self.a[1] << 2);
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        let ap2 = (wd3 + ((self.a[2] * 32512) >> 15)).clamp(-12288, 12288);

        // UPPOL1 (§3.6.4): first pole coefficient, bounded by the second for stability.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = sat(15360 - ap2);
        let ap1 = sat(wd1 + wd2).clamp(-limit, limit);

        // UPZERO (§3.6.5): sign-sign update of the six zero coefficients.
        let step = if dq == 0 { 0 } else { 128 };
        let sgd = negative(dq);
        let mut bp = [0i32; 7];
        for (i, bpi) in bp.iter_mut().enumerate().skip(1) {
            let wd2 = if negative(self.d[i]) == sgd {
                step
            } else {
                -step
            };
            *bpi = sat(wd2 + ((self.b[i] * 32640) >> 15));
        }

        // DELAYA (§3.6.6): shift the histories, take the new coefficients.
        self.d.copy_within(0..6, 1);
        self.b = bp;
        self.r.copy_within(0..2, 1);
        self.p.copy_within(0..2, 1);
        self.a = [0, ap1, ap2];

        // FILTEP (§3.6.7): two-pole section on the reconstructed signal.
        let wd1 = (self.a[1] * sat(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat(self.r[2] + self.r[2])) >> 15;
        self.sp = sat(wd1 + wd2);

        // FILTEZ (§3.6.8): six-zero section on the quantized difference.
        let sz: i32 = (1..7)
            .map(|i| (self.b[i] * sat(self.d[i] + self.d[i])) >> 15)
            .sum();
        self.sz = sat(sz);

        // PREDIC (§3.6.9).
        self.s = sat(self.sp + self.sz);
    }
}

/// Lower band state after one 6-bit code: INVQAL, LOGSCL, SCALEL and block 4 (§3.4–3.6). The
/// predictor only ever sees the 4-bit truncated code, which is what makes the lower band
/// embedded (the 56 and 48 kbit/s modes drop the two low bits without desynchronising).
fn update_lower(band: &mut Band, code: u8) {
    let ril = usize::from(code >> 2);
    let dlt = (band.det * QM4[ril]) >> 15;
    band.adapt_scale(WL[RL42[ril]], 18432, 8);
    band.predict(dlt);
}

/// Higher band state after one 2-bit code: INVQAH, LOGSCH, SCALEH and block 4; returns the
/// quantized difference DH, which is also the decoder's reconstruction increment.
fn update_higher(band: &mut Band, code: u8) -> i32 {
    let ih = usize::from(code & 3);
    let dh = (band.det * QM2[ih]) >> 15;
    band.adapt_scale(WH[RH2[ih]], 22528, 10);
    band.predict(dh);
    dh
}

/// G.722 encoder state (§3). Consumes 16 kHz PCM in pairs; an odd sample left over at the end
/// of one call is kept for the next.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    /// Input history for the transmit QMF, newest first: `hist[k]` = x(2j - k).
    hist: [i32; 24],
    lower: Band,
    higher: Band,
    /// First sample of a pair whose second has not arrived yet.
    pending: Option<i16>,
}

impl Default for G722Encoder {
    fn default() -> Self {
        G722Encoder::new()
    }
}

impl G722Encoder {
    /// Fresh encoder in the reset state of §3.7 (scale factors at their minimum).
    pub fn new() -> G722Encoder {
        G722Encoder {
            hist: [0; 24],
            lower: Band::new(32),
            higher: Band::new(8),
            pending: None,
        }
    }

    /// Encodes 16 kHz samples, appending one octet per pair to `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len().div_ceil(2));
        for &x in pcm {
            match self.pending.take() {
                None => self.pending = Some(x),
                Some(first) => out.push(self.encode_pair(first, x)),
            }
        }
    }

    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF (§3.2): xL = xA + xB, xH = xA - xB, where xA runs over the even taps and
        // xB over the odd ones; 16-bit input, so one more shift than for the 14-bit input.
        self.hist.copy_within(0..22, 2);
        self.hist[1] = i32::from(first);
        self.hist[0] = i32::from(second);
        let (mut xa, mut xb) = (0i32, 0i32);
        for k in 0..12 {
            xa += QMF[2 * k] * self.hist[2 * k];
            xb += QMF[2 * k + 1] * self.hist[2 * k + 1];
        }
        let xl = (xa + xb) >> 14;
        let xh = (xa - xb) >> 14;

        // Lower band: SUBTRA (§3.3.1) and QUANTL (§3.3.2), a 6-bit code.
        let el = sat(xl - self.lower.s);
        let wd = if el >= 0 { el } else { -(el + 1) };
        let det = self.lower.det;
        let mil = (1..30).find(|&i| wd < (Q6[i] * det) >> 12).unwrap_or(30);
        let il = if el < 0 { ILN[mil] } else { ILP[mil] };
        update_lower(&mut self.lower, il);

        // Higher band: SUBTRA and QUANTH (§3.3.3), a 2-bit code.
        let eh = sat(xh - self.higher.s);
        let wd = if eh >= 0 { eh } else { -(eh + 1) };
        let mih = if wd >= (QH * self.higher.det) >> 12 {
            2
        } else {
            1
        };
        let ih = if eh < 0 { IHN[mih] } else { IHP[mih] };
        update_higher(&mut self.higher, ih);

        // Octet: the two higher band bits above the six lower band bits (§1.4.4, RFC 3551
        // §4.5.2 sends the octets in order).
        (ih << 6) | il
    }
}

/// G.722 decoder state (§4), 64 kbit/s mode: every octet is valid input and yields two 16 kHz
/// samples.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    /// Receive QMF histories, newest first: rL - rH and rL + rH.
    diff: [i32; 12],
    sum: [i32; 12],
    lower: Band,
    higher: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        G722Decoder::new()
    }
}

impl G722Decoder {
    /// Fresh decoder in the reset state.
    pub fn new() -> G722Decoder {
        G722Decoder {
            diff: [0; 12],
            sum: [0; 12],
            lower: Band::new(32),
            higher: Band::new(8),
        }
    }

    /// Decodes octets, appending two 16 kHz samples per octet to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len() * 2);
        for &octet in payload {
            let (a, b) = self.decode_octet(octet);
            out.push(a);
            out.push(b);
        }
    }

    fn decode_octet(&mut self, octet: u8) -> (i16, i16) {
        let il = octet & 0x3F;
        let ih = octet >> 6;

        // Lower band output: INVQBL with the full 6-bit code (§4.4.1, mode 1) and RECONS,
        // limited to the 15-bit range (§4.4.2); the predictor takes the 4-bit path.
        let dl = (self.lower.det * QM6[usize::from(il)]) >> 15;
        let rl = (self.lower.s + dl).clamp(-16384, 16383);
        update_lower(&mut self.lower, il);

        // Higher band output (§4.5): INVQAH and RECONS, same limit.
        let sh = self.higher.s;
        let dh = update_higher(&mut self.higher, ih);
        let rh = (sh + dh).clamp(-16384, 16383);

        // Receive QMF (§4.6): xout1 = 2 Σ h(2i)·xd(j-i), xout2 = 2 Σ h(2i+1)·xs(j-i), with
        // xd = rL - rH and xs = rL + rH; scaled back from 15-bit sub-bands to 16-bit output.
        self.diff.copy_within(0..11, 1);
        self.sum.copy_within(0..11, 1);
        self.diff[0] = rl - rh;
        self.sum[0] = rl + rh;
        let (mut even, mut odd) = (0i32, 0i32);
        for k in 0..12 {
            even += QMF[2 * k] * self.diff[k];
            odd += QMF[2 * k + 1] * self.sum[k];
        }
        (sat(even >> 11) as i16, sat(odd >> 11) as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::tone::{goertzel, rms, Tone};
    use proptest::prelude::*;

    fn tone(hz: f64, n: usize, amplitude: i16) -> Vec<i16> {
        let mut t = Tone::new(hz, 16_000, amplitude);
        let mut v = vec![0i16; n];
        t.fill(&mut v);
        v
    }

    fn round_trip(pcm: &[i16]) -> Vec<i16> {
        let mut codes = Vec::new();
        G722Encoder::new().encode(pcm, &mut codes);
        assert_eq!(codes.len(), pcm.len() / 2);
        let mut back = Vec::new();
        G722Decoder::new().decode(&codes, &mut back);
        assert_eq!(back.len(), pcm.len());
        back
    }

    /// SNR of `decoded` against `original` delayed by the codec's group delay, searched over a
    /// small range (the QMF pair delays by 23 samples).
    fn snr_db(original: &[i16], decoded: &[i16]) -> (f64, usize) {
        let skip = 1600; // let the adaptation settle: 100 ms
        (0..48)
            .map(|delay| {
                let (mut signal, mut noise) = (0.0f64, 0.0f64);
                for n in skip..original.len() - delay {
                    let x = f64::from(original[n]);
                    let y = f64::from(decoded[n + delay]);
                    signal += x * x;
                    noise += (x - y) * (x - y);
                }
                (10.0 * (signal / noise.max(1.0)).log10(), delay)
            })
            .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
    }

    #[test]
    fn tones_in_both_sub_bands_survive_with_snr_above_20_db() {
        for hz in [1000.0, 5000.0] {
            let pcm = tone(hz, 16_000, 10_000);
            let back = round_trip(&pcm);
            let (snr, delay) = snr_db(&pcm, &back);
            let tail = &back[1600..];
            let at = goertzel(tail, 16_000, hz);
            let total = rms(tail).powi(2);
            let dominance = 10.0 * (at / (total - at).max(1.0)).log10();
            println!(
                "G.722 {hz} Hz: SNR {snr:.1} dB at delay {delay}, tone over rest {dominance:.1} dB"
            );
            assert!(snr > 20.0, "{hz} Hz: SNR {snr:.1} dB");
            assert!(dominance > 20.0, "{hz} Hz: dominance {dominance:.1} dB");
            // Level kept: within 1 dB.
            let level = 20.0 * (rms(tail) / rms(&pcm[1600..])).log10();
            assert!(level.abs() < 1.0, "{hz} Hz: level {level:.2} dB");
        }
    }

    #[test]
    fn a_broadband_mix_is_rebuilt_across_both_sub_bands() {
        // Five tones on no common period, both sides of the 4 kHz band split: only a QMF pair
        // that cancels its aliases and an exact delay give a good SNR here.
        // The lower band's 6-bit ADPCM does far better than the higher band's 2 bits.
        for (name, freqs, min_snr) in [
            ("lower band", &[440.0, 1330.0, 2750.0][..], 30.0),
            ("higher band", &[4410.0, 6170.0][..], 10.0),
            (
                "both bands",
                &[440.0, 1330.0, 2750.0, 4410.0, 6170.0][..],
                15.0,
            ),
        ] {
            let mixes: Vec<Vec<i16>> = freqs.iter().map(|&hz| tone(hz, 16_000, 2500)).collect();
            let pcm: Vec<i16> = (0..16_000)
                .map(|n| mixes.iter().map(|m| m[n]).sum())
                .collect();
            let back = round_trip(&pcm);
            let (snr, delay) = snr_db(&pcm, &back);
            println!("G.722 {name} mix: SNR {snr:.1} dB at delay {delay}");
            assert!(snr > min_snr, "{name}: SNR {snr:.1} dB");
            assert_eq!(delay, 22, "QMF analysis + synthesis delay");
        }
    }

    #[test]
    fn a_5khz_tone_lands_in_the_higher_band_and_is_kept() {
        // 5 kHz is above G.711's 4 kHz Nyquist limit: only a wideband codec can carry it.
        let pcm = tone(5000.0, 8000, 8000);
        let back = round_trip(&pcm);
        let at5 = goertzel(&back[1600..], 16_000, 5000.0);
        let at3 = goertzel(&back[1600..], 16_000, 3000.0);
        assert!(at5 > 0.5 * 32.0e6, "5 kHz power {at5}");
        assert!(at5 / at3.max(1.0) > 1000.0, "{at5} vs alias {at3}");
    }

    #[test]
    fn packets_decode_like_one_block() {
        let pcm = tone(1000.0, 8000, 8000);
        let mut codes = Vec::new();
        let mut enc = G722Encoder::new();
        // Odd-sized input pieces: the pending sample carries over.
        for piece in pcm.chunks(333) {
            enc.encode(piece, &mut codes);
        }
        let mut whole = Vec::new();
        G722Encoder::new().encode(&pcm, &mut whole);
        assert_eq!(codes, whole, "encoder state carries across calls");

        let mut one = Vec::new();
        G722Decoder::new().decode(&codes, &mut one);
        let mut dec = G722Decoder::new();
        let mut pieces = Vec::new();
        for packet in codes.chunks(160) {
            dec.decode(packet, &mut pieces);
        }
        assert_eq!(one, pieces);
        // And a fresh decoder per packet would not: state matters.
        let mut fresh = Vec::new();
        for packet in codes.chunks(160) {
            G722Decoder::new().decode(packet, &mut fresh);
        }
        assert_ne!(one, fresh);
    }

    #[test]
    fn silence_stays_quiet_and_full_scale_does_not_wrap() {
        let back = round_trip(&[0i16; 3200]);
        assert!(back.iter().all(|&s| s.abs() < 16), "{:?}", &back[..16]);
        // A full-scale square wave: saturating arithmetic, no wrap-around.
        let square: Vec<i16> = (0..3200)
            .map(|n| {
                if (n / 20) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let back = round_trip(&square);
        let same_sign = square[400..]
            .iter()
            .zip(&back[400 + 23..])
            .filter(|(a, b)| (**a > 0) == (**b > 0))
            .count();
        assert!(same_sign > 2400, "{same_sign}");
    }

    /// Samples of a little-endian 16-bit raw file.
    fn s16le(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn decoder_is_bit_exact_with_an_independent_implementation_on_a_real_call() {
        // The first 50 payloads of the captured call, and FFmpeg 5.1's decoding of them
        // (fixtures/g722/README.md).
        let fixture = include_bytes!("../../fixtures/g722/sip-rtp-g722.rtp");
        let mut codes = Vec::new();
        let mut rest = &fixture[..];
        for _ in 0..50 {
            let len = usize::from(u16::from_be_bytes([rest[6], rest[7]]));
            codes.extend_from_slice(&rest[8..8 + len]);
            rest = &rest[8 + len..];
        }
        let want = s16le(include_bytes!(
            "../../fixtures/g722/sip-rtp-g722.first50.ffmpeg.s16le"
        ));
        let mut got = Vec::new();
        G722Decoder::new().decode(&codes, &mut got);
        assert_eq!(got.len(), want.len());
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "differs from FFmpeg's decoding");
    }

    #[test]
    fn encoder_is_bit_exact_with_an_independent_implementation() {
        // FFmpeg 5.1's G.722 encoding (no trellis) of 1 s of a 1 kHz, 8000-peak sine.
        let want = include_bytes!("../../fixtures/g722/tone-1khz.ffmpeg.g722");
        let pcm = tone(1000.0, 16_000, 8000);
        let mut got = Vec::new();
        G722Encoder::new().encode(&pcm, &mut got);
        assert_eq!(got.len(), want.len());
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "differs from FFmpeg's encoding");
    }

    proptest! {
        #[test]
        fn arbitrary_octets_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut out = Vec::new();
            let mut dec = G722Decoder::new();
            dec.decode(&bytes, &mut out);
            dec.decode(&bytes, &mut out);
            prop_assert_eq!(out.len(), bytes.len() * 4);
        }

        #[test]
        fn arbitrary_pcm_encodes_without_panic(pcm in proptest::collection::vec(any::<i16>(), 0..2000)) {
            let mut codes = Vec::new();
            G722Encoder::new().encode(&pcm, &mut codes);
            prop_assert_eq!(codes.len(), pcm.len() / 2);
            let mut out = Vec::new();
            G722Decoder::new().decode(&codes, &mut out);
        }
    }
}

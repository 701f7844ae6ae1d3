//! Sample-rate conversion between the rates the codecs and the recorder use (8, 16 and 48 kHz):
//! a polyphase FIR resampler by an integer up factor L and down factor M, with a Kaiser-windowed
//! sinc low-pass that both removes the images of upsampling and keeps aliases out of
//! downsampling. Stateful: a signal fed in pieces (20 ms packets) gives exactly the samples it
//! gives in one go, so packet boundaries leave no trace. No allocation per call once the history
//! buffer has grown to the largest piece seen.

use std::f64::consts::PI;

/// Stop-band attenuation the filters are designed for, in dB (Kaiser's β and length follow).
const STOPBAND_DB: f64 = 80.0;

/// A stateful rational resampler between two of the supported rates.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    up: usize,
    down: usize,
    /// Taps per polyphase branch.
    width: usize,
    /// Branch `p` (phase p of the L-fold upsampled grid), reversed so that the dot product runs
    /// forward over the input history: `branches[p*width + i]` weights `input[newest - width + 1 + i]`.
    branches: Vec<f32>,
    /// Input not yet consumed, preceded by the `width - 1` samples the next outputs still reach.
    history: Vec<f32>,
    /// Position of the next output on the upsampled grid, relative to `history[0]`.
    next: usize,
}

/// Why a resampler cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no resampler from {from} Hz to {to} Hz")]
pub struct UnsupportedRates {
    /// Input rate.
    pub from: u32,
    /// Output rate.
    pub to: u32,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz: 8000↔16000, 48000→16000 and 48000→8000 (and the
    /// identity, which copies).
    pub fn new(from: u32, to: u32) -> Result<Resampler, UnsupportedRates> {
        let (up, down) = match (from, to) {
            (a, b) if a == b && matches!(a, 8000 | 16000 | 48000) => (1, 1),
            (8000, 16000) => (2, 1),
            (16000, 8000) => (1, 2),
            (48000, 16000) => (1, 3),
            (48000, 8000) => (1, 6),
            _ => return Err(UnsupportedRates { from, to }),
        };
        // Pass band up to 7/16 of the lower rate, stop band from half of it (its Nyquist
        // frequency): 3.5/4 kHz around 8 kHz, 7/8 kHz around 16 kHz. Telephone speech ends
        // at 3.4 kHz, wideband at 7 kHz, so the transition band holds nothing worth keeping.
        let low = f64::from(from.min(to));
        let (pass, stop) = (low * 7.0 / 16.0, low / 2.0);
        let grid = f64::from(from) * up as f64; // the filter's own rate
        let taps = design_lowpass(pass, stop, grid, up as f64);
        let width = taps.len().div_ceil(up);
        let mut branches = vec![0.0f32; up * width];
        for (k, &t) in taps.iter().enumerate() {
            // Tap k belongs to branch k % L, position k / L counted back from the newest input.
            let (p, i) = (k % up, k / up);
            branches[p * width + (width - 1 - i)] = t as f32;
        }
        let mut history = Vec::with_capacity(width + 2 * 960);
        history.resize(width - 1, 0.0);
        Ok(Resampler {
            from,
            to,
            up,
            down,
            width,
            branches,
            history,
            next: (width - 1) * up,
        })
    }

    /// Input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Delay the filter adds, in output samples (half its length: linear phase).
    pub fn delay(&self) -> usize {
        (self.width * self.up) / 2 / self.down
    }

    /// Resamples `input`, appending the output samples to `out`; returns how many. Over a whole
    /// stream, output length is input length × to/from (within one sample).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> usize {
        let before = out.len();
        if self.up == 1 && self.down == 1 {
            out.extend_from_slice(input);
            return input.len();
        }
        self.history.extend(input.iter().map(|&s| f32::from(s)));
        out.reserve((input.len() * self.up).div_ceil(self.down));
        let w = self.width;
        // Output n sits at `next` on the upsampled grid; its newest input is next / L, and the
        // branch is next % L. It can be computed once that input is in the history.
        while self.next / self.up < self.history.len() {
            let newest = self.next / self.up;
            let phase = self.next % self.up;
            let taps = &self.branches[phase * w..(phase + 1) * w];
            let window = &self.history[newest + 1 - w..=newest];
            let acc: f32 = taps.iter().zip(window).map(|(t, x)| t * x).sum();
            // `as` saturates: an overshoot of a full-scale input clips instead of wrapping.
            out.push(acc.round() as i16);
            self.next += self.down;
        }
        // Keep only the inputs the next output still reaches.
        let keep_from = (self.next / self.up + 1).saturating_sub(w);
        if keep_from > 0 {
            let keep_from = keep_from.min(self.history.len());
            self.history.copy_within(keep_from.., 0);
            self.history.truncate(self.history.len() - keep_from);
            self.next -= keep_from * self.up;
        }
        out.len() - before
    }

    /// Forgets the history (a new stream starts).
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(self.width - 1, 0.0);
        self.next = (self.width - 1) * self.up;
    }
}

/// Kaiser-windowed sinc low-pass for a signal at `rate` Hz: pass band to `pass` Hz, stop band
/// from `stop` Hz at [`STOPBAND_DB`]; DC gain `gain` (L for an L-fold interpolator, whose zero
/// stuffing divides the level by L). Odd length, symmetric: linear phase.
fn design_lowpass(pass: f64, stop: f64, rate: f64, gain: f64) -> Vec<f64> {
    let a = STOPBAND_DB;
    // Kaiser's formulas (Oppenheim & Schafer, 7.6): β from the attenuation, length from
    // attenuation and transition width.
    let beta = if a > 50.0 {
        0.1102 * (a - 8.7)
    } else if a >= 21.0 {
        0.5842 * (a - 21.0).powf(0.4) + 0.07886 * (a - 21.0)
    } else {
        0.0
    };
    let transition = 2.0 * PI * (stop - pass) / rate;
    let order = ((a - 8.0) / (2.285 * transition)).ceil() as usize;
    let len = order | 1; // odd: a centre tap
    let centre = (len / 2) as f64;
    let cutoff = (pass + stop) / 2.0 / rate; // cycles per sample
    let i0_beta = bessel_i0(beta);
    (0..len)
        .map(|k| {
            let m = k as f64 - centre;
            let sinc = if m == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * PI * cutoff * m).sin() / (PI * m)
            };
            let r = m / centre;
            let window = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            gain * sinc * window
        })
        .collect()
}

/// Modified Bessel function of the first kind, order 0 (power series; converges fast for the
/// β values of a Kaiser window).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::tone::{goertzel, rms, Tone};

    fn tone(hz: f64, rate: u32, n: usize) -> Vec<i16> {
        let mut t = Tone::new(hz, rate, 10_000);
        let mut v = vec![0i16; n];
        t.fill(&mut v);
        v
    }

    fn resample_all(from: u32, to: u32, input: &[i16]) -> Vec<i16> {
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = Vec::new();
        r.process(input, &mut out);
        out
    }

    /// One second of `pcm` after the filter has settled: a whole number of cycles of every
    /// integer frequency, so Goertzel measures each without leakage from the others.
    fn settled(pcm: &[i16], rate: u32) -> &[i16] {
        &pcm[pcm.len() / 4..pcm.len() / 4 + rate as usize]
    }

    /// Level of `hz` in `pcm` relative to a 10000-peak sine, dB.
    fn level_db(pcm: &[i16], rate: u32, hz: f64) -> f64 {
        10.0 * (goertzel(settled(pcm, rate), rate, hz) / 50.0e6).log10()
    }

    #[test]
    fn chunked_equals_one_go_sample_for_sample() {
        for (from, to) in [(8000, 16000), (16000, 8000), (48000, 16000), (48000, 8000)] {
            let input = tone(1234.0, from, from as usize);
            let whole = resample_all(from, to, &input);
            let mut r = Resampler::new(from, to).unwrap();
            let mut pieces = Vec::new();
            // 20 ms packets, then odd sizes that split the down-sampling phase.
            let (packets, rest) = input.split_at(input.len() / 2);
            for chunk in packets.chunks((from / 50) as usize) {
                r.process(chunk, &mut pieces);
            }
            for chunk in rest.chunks(7) {
                r.process(chunk, &mut pieces);
            }
            assert_eq!(whole, pieces, "{from} -> {to}");
            let expected = input.len() * to as usize / from as usize;
            assert!(
                whole.len().abs_diff(expected) <= 1,
                "{from} -> {to}: {} samples, expected {expected}",
                whole.len()
            );
        }
    }

    #[test]
    fn upsampling_8k_to_16k_passes_3500_hz_and_creates_nothing_above_4k() {
        let input = tone(3500.0, 8000, 16000);
        let out = resample_all(8000, 16000, &input);
        let pass = level_db(&out, 16000, 3500.0);
        // The image of 3.5 kHz at 8 - 3.5 = 4.5 kHz, and anything else above 4 kHz.
        let image = level_db(&out, 16000, 4500.0);
        let window = settled(&out, 16000);
        let total = rms(window).powi(2);
        let rest = 10.0 * ((total - goertzel(window, 16000, 3500.0)).max(1e-3) / 50.0e6).log10();
        println!(
            "8k->16k: 3.5 kHz {pass:.2} dB, 4.5 kHz image {image:.1} dB, all else {rest:.1} dB"
        );
        assert!(pass.abs() < 0.5, "3.5 kHz passes: {pass:.2} dB");
        assert!(image < -60.0, "image at 4.5 kHz: {image:.1} dB");
        assert!(rest < -50.0, "everything but the tone: {rest:.1} dB");
        // A 1 kHz tone keeps its level and the alignment is the filter delay.
        let r = Resampler::new(8000, 16000).unwrap();
        assert!(r.delay() > 0 && r.delay() < 160, "{}", r.delay());
    }

    #[test]
    fn downsampling_removes_what_would_alias() {
        // 16k -> 8k: 6 kHz would fold to 2 kHz.
        let out = resample_all(16000, 8000, &tone(6000.0, 16000, 32000));
        let alias = level_db(&out, 8000, 2000.0);
        let total = 20.0 * (rms(settled(&out, 8000)) / (10_000.0 / 2f64.sqrt())).log10();
        println!("16k->8k: 6 kHz folded to 2 kHz {alias:.1} dB, total {total:.1} dB");
        assert!(alias < -40.0 && total < -40.0, "{alias:.1} / {total:.1} dB");
        let kept = level_db(
            &resample_all(16000, 8000, &tone(3000.0, 16000, 32000)),
            8000,
            3000.0,
        );
        assert!(kept.abs() < 0.5, "3 kHz kept: {kept:.2} dB");

        // 48k -> 16k: 10 kHz would fold to 6 kHz; 6.5 kHz passes.
        let out = resample_all(48000, 16000, &tone(10_000.0, 48000, 96000));
        let alias = level_db(&out, 16000, 6000.0);
        let kept = level_db(
            &resample_all(48000, 16000, &tone(6500.0, 48000, 96000)),
            16000,
            6500.0,
        );
        println!("48k->16k: 10 kHz folded {alias:.1} dB, 6.5 kHz {kept:.2} dB");
        assert!(alias < -60.0, "{alias:.1} dB");
        assert!(kept.abs() < 0.5, "{kept:.2} dB");

        // 48k -> 8k: 5 kHz would fold to 3 kHz; 1 kHz passes.
        let out = resample_all(48000, 8000, &tone(5000.0, 48000, 96000));
        let alias = level_db(&out, 8000, 3000.0);
        let kept = level_db(
            &resample_all(48000, 8000, &tone(1000.0, 48000, 96000)),
            8000,
            1000.0,
        );
        println!("48k->8k: 5 kHz folded {alias:.1} dB, 1 kHz {kept:.2} dB");
        assert!(alias < -60.0, "{alias:.1} dB");
        assert!(kept.abs() < 0.5, "{kept:.2} dB");
    }

    /// Gain of a designed filter at `hz`, in dB relative to its DC gain.
    fn response_db(taps: &[f64], rate: f64, hz: f64) -> f64 {
        let w = 2.0 * PI * hz / rate;
        let (re, im) = taps
            .iter()
            .enumerate()
            .fold((0.0, 0.0), |(re, im), (k, t)| {
                (re + t * (w * k as f64).cos(), im - t * (w * k as f64).sin())
            });
        let dc: f64 = taps.iter().sum();
        20.0 * ((re * re + im * im).sqrt() / dc).log10()
    }

    #[test]
    fn designed_filters_meet_their_bands() {
        // (low rate, filter rate): the 8/16 kHz pair runs at 16 kHz, the 48 kHz ones at 48 kHz.
        for (low, grid) in [(8000.0, 16000.0), (16000.0, 48000.0), (8000.0, 48000.0)] {
            let (pass, stop) = (low * 7.0 / 16.0, low / 2.0);
            let taps = design_lowpass(pass, stop, grid, 1.0);
            let ripple = (0..=20)
                .map(|i| response_db(&taps, grid, pass * f64::from(i) / 20.0).abs())
                .fold(0.0, f64::max);
            let rejection = (0..=200)
                .map(|i| {
                    response_db(
                        &taps,
                        grid,
                        stop + (grid / 2.0 - stop) * f64::from(i) / 200.0,
                    )
                })
                .fold(f64::MIN, f64::max);
            println!(
                "{low} Hz side at {grid} Hz: {} taps, pass band to {pass} Hz within {ripple:.4} dB, \
                 stop band from {stop} Hz below {rejection:.1} dB",
                taps.len()
            );
            assert!(ripple < 0.01, "{ripple}");
            assert!(rejection < -75.0, "{rejection}");
        }
    }

    #[test]
    fn unsupported_pairs_are_refused_and_identity_copies() {
        assert!(Resampler::new(8000, 48000).is_err());
        assert!(Resampler::new(44100, 8000).is_err());
        assert!(Resampler::new(0, 0).is_err());
        let mut id = Resampler::new(16000, 16000).unwrap();
        let mut out = vec![1];
        assert_eq!(id.process(&[5, 6], &mut out), 2);
        assert_eq!(out, vec![1, 5, 6]);
    }

    #[test]
    fn full_scale_input_clips_instead_of_wrapping() {
        let square: Vec<i16> = (0..4000)
            .map(|n| if (n / 8) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let out = resample_all(8000, 16000, &square);
        // Gibbs overshoot saturates; a wrap would put large values of the wrong sign next to
        // the plateau.
        for w in out.windows(2) {
            let jump = (i32::from(w[1]) - i32::from(w[0])).abs();
            assert!(jump < 50_000, "{w:?}");
        }
    }
}

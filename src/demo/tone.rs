//! Test tones for the demo agents and the tests that check recordings: a sine generator whose
//! phase runs on across frames, a Goertzel single-frequency power detector and an RMS level.
//! Pure arithmetic, no IO.

use std::f64::consts::TAU;

/// Sine generator with continuous phase across frames.
#[derive(Debug, Clone)]
pub struct Tone {
    /// Phase advance per sample, in radians.
    step: f64,
    /// Current phase in `[0, 2π)`; carried between `fill` calls so frames join without clicks.
    phase: f64,
    /// Peak amplitude in 16-bit PCM units.
    amplitude: f64,
}

impl Tone {
    /// A tone of `freq_hz` sampled at `rate` Hz with peak `amplitude`; a zero rate yields silence.
    pub fn new(freq_hz: f64, rate: u32, amplitude: i16) -> Tone {
        let step = if rate == 0 || !freq_hz.is_finite() {
            0.0
        } else {
            TAU * freq_hz / f64::from(rate)
        };
        Tone {
            step,
            phase: 0.0,
            amplitude: f64::from(amplitude),
        }
    }

    /// Fills `out` with the next `out.len()` samples of the tone.
    pub fn fill(&mut self, out: &mut [i16]) {
        for sample in out.iter_mut() {
            // The float-to-int `as` cast saturates, so rounding can never wrap.
            *sample = (self.amplitude * self.phase.sin()).round() as i16;
            // Wrapping keeps the phase small so precision does not degrade over long calls.
            self.phase = (self.phase + self.step).rem_euclid(TAU);
        }
    }
}

/// Goertzel power of `freq_hz` in `samples` (normalised so it is comparable across frequencies and lengths).
///
/// Uses the generalised Goertzel recurrence with the exact angular frequency (no rounding to a DFT
/// bin), scaled by `2 / N²`: a pure sine of peak `A` at `freq_hz` gives about `A² / 2`, the same as
/// `rms(samples)²`, whatever the length. Empty input or a zero rate gives 0.
pub fn goertzel(samples: &[i16], rate: u32, freq_hz: f64) -> f64 {
    if samples.is_empty() || rate == 0 {
        return 0.0;
    }
    let omega = TAU * freq_hz / f64::from(rate);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    2.0 * power.max(0.0) / (n * n)
}

/// RMS level of samples (0 for an empty slice).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, n: usize) -> Vec<i16> {
        let mut t = Tone::new(freq, 8000, 8000);
        let mut v = vec![0i16; n];
        t.fill(&mut v);
        v
    }

    #[test]
    fn goertzel_distinguishes_440_from_1000() {
        for n in [160usize, 800, 8000] {
            let a = tone(440.0, n);
            let b = tone(1000.0, n);
            let a_at_a = goertzel(&a, 8000, 440.0);
            let a_at_b = goertzel(&a, 8000, 1000.0);
            let b_at_b = goertzel(&b, 8000, 1000.0);
            let b_at_a = goertzel(&b, 8000, 440.0);
            assert!(a_at_a / a_at_b > 100.0, "n={n}: {a_at_a} vs {a_at_b}");
            assert!(b_at_b / b_at_a > 100.0, "n={n}: {b_at_b} vs {b_at_a}");
        }
    }

    #[test]
    fn goertzel_is_normalised_to_mean_square() {
        // A² / 2 = 8000² / 2 = 32e6 for every length and frequency.
        for (freq, n) in [(440.0, 800usize), (1000.0, 1600), (1000.0, 8000)] {
            let v = tone(freq, n);
            let p = goertzel(&v, 8000, freq);
            assert!((p - 32.0e6).abs() / 32.0e6 < 0.05, "f={freq} n={n} p={p}");
            let r = rms(&v);
            assert!((r * r - p).abs() / p < 0.05, "rms² {} vs {p}", r * r);
        }
        assert_eq!(goertzel(&[], 8000, 440.0), 0.0);
        assert_eq!(goertzel(&[1, 2, 3], 0, 440.0), 0.0);
    }

    #[test]
    fn tone_phase_is_continuous_across_fill_calls() {
        let whole = tone(440.0, 480);
        let mut t = Tone::new(440.0, 8000, 8000);
        let mut pieces = Vec::new();
        for len in [160usize, 7, 153, 160] {
            let mut buf = vec![0i16; len];
            t.fill(&mut buf);
            pieces.extend_from_slice(&buf);
        }
        assert_eq!(pieces.len(), whole.len());
        for (i, (a, b)) in pieces.iter().zip(&whole).enumerate() {
            assert!(
                (i32::from(*a) - i32::from(*b)).abs() <= 1,
                "sample {i}: {a} vs {b}"
            );
        }
        // The join between frames is as smooth as the inside: no step bigger than the sine's
        // maximum slope (A·ω ≈ 2765 per sample at 440 Hz, 8 kHz).
        let max_step = pieces
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0);
        assert!(max_step <= 2800, "max step {max_step}");
        assert!(max_step > 2000, "a tone should move: {max_step}");
    }

    #[test]
    fn rms_of_known_values() {
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(rms(&[3, -3, 3, -3]), 3.0);
        let r = rms(&tone(1000.0, 8000));
        assert!((r - 8000.0 / 2f64.sqrt()).abs() < 10.0, "{r}");
    }
}

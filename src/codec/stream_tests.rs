//! Tests of the stateful [`Decoder`] and [`Encoder`] over whole streams: tones through every
//! codec and rate, Opus loss concealment and FEC, real payloads from captures (fixtures/g722,
//! fixtures/opus), and arbitrary bytes.

use super::*;
use crate::demo::tone::{goertzel, rms, Tone};
use proptest::prelude::*;

/// 20 ms frames of a tone at `rate`.
fn tone_frames(hz: f64, rate: u32, frames: usize, amplitude: i16) -> Vec<Vec<i16>> {
    let mut t = Tone::new(hz, rate, amplitude);
    (0..frames)
        .map(|_| {
            let mut f = vec![0i16; (rate / 50) as usize];
            t.fill(&mut f);
            f
        })
        .collect()
}

/// Encodes frames into payloads, one per frame.
fn encode_all(codec: Codec, rate: u32, frames: &[Vec<i16>]) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec, rate).unwrap();
    assert_eq!(enc.frame_samples(), (rate / 50) as usize);
    frames
        .iter()
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p).unwrap();
            p
        })
        .collect()
}

fn decode_all(codec: Codec, rate: u32, payloads: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = Decoder::new(codec, rate).unwrap();
    let mut out = Vec::new();
    for p in payloads {
        dec.decode(p, &mut out).unwrap();
    }
    out
}

/// Power at `hz` over everything else in `pcm`, in dB, over a window of whole 10 ms periods
/// (every integer multiple of 100 Hz completes its cycles: no leakage).
fn dominance_db(pcm: &[i16], rate: u32, hz: f64) -> f64 {
    let period = (rate / 100) as usize;
    let start = pcm.len() / 4;
    let len = (pcm.len() - start) / period * period;
    let w = &pcm[start..start + len];
    let at = goertzel(w, rate, hz);
    let total = rms(w).powi(2);
    10.0 * (at / (total - at).max(1e-3)).log10()
}

/// Normalised cross-correlation of two equally long signals (1 = same shape).
fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

#[test]
fn every_codec_carries_a_tone_at_both_output_rates() {
    for codec in ALL {
        let native = codec.audio_rate();
        let frames = tone_frames(1000.0, native, 50, 8000);
        let payloads = encode_all(codec, native, &frames);
        for out_rate in [8000, 16000] {
            let pcm = decode_all(codec, out_rate, &payloads);
            let expected = 50 * (out_rate / 50) as usize;
            assert!(
                pcm.len().abs_diff(expected) <= 1,
                "{codec} at {out_rate}: {} samples",
                pcm.len()
            );
            let d = dominance_db(&pcm, out_rate, 1000.0);
            println!("{codec} -> {out_rate} Hz: 1 kHz over the rest {d:.1} dB");
            assert!(d > 20.0, "{codec} at {out_rate}: {d:.1} dB");
        }
    }
}

#[test]
fn g711_decoder_matches_the_stateless_tables() {
    let payload: Vec<u8> = (0..=255).collect();
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let mut want = Vec::new();
        codec.decode(&payload, &mut want);
        let mut dec = Decoder::new(codec, 8000).unwrap();
        let mut got = vec![42];
        assert_eq!(dec.decode(&payload, &mut got).unwrap(), 256);
        assert_eq!(got[0], 42, "appends");
        assert_eq!(&got[1..], &want[..]);
        let mut codes = Vec::new();
        codec.encode(&want, &mut codes);
        let mut enc = Encoder::new(codec, 8000).unwrap();
        let mut again = Vec::new();
        enc.encode(&want, &mut again).unwrap();
        assert_eq!(codes, again);
    }
    // The stateless path does nothing for the stateful codecs, and says so.
    let mut out = Vec::new();
    Codec::G722.decode(&[1, 2, 3], &mut out);
    Codec::Opus.decode(&[1, 2, 3], &mut out);
    assert!(out.is_empty());
    assert!(Codec::Pcma.is_stateless() && !Codec::G722.is_stateless());
}

#[test]
fn encoders_take_pcm_at_any_supported_rate() {
    // G.722 fed 8 kHz and 48 kHz PCM, G.711 fed 16 and 48 kHz: 160 octets per 20 ms always.
    for (codec, rate) in [
        (Codec::G722, 8000),
        (Codec::G722, 48000),
        (Codec::Pcmu, 16000),
        (Codec::Pcma, 48000),
    ] {
        let frames = tone_frames(1000.0, rate, 50, 8000);
        let payloads = encode_all(codec, rate, &frames);
        let total: usize = payloads.iter().map(Vec::len).sum();
        assert!(
            total.abs_diff(50 * 160) <= 1,
            "{codec} from {rate}: {total}"
        );
        let pcm = decode_all(codec, 16000, &payloads);
        let d = dominance_db(&pcm, 16000, 1000.0);
        assert!(d > 20.0, "{codec} from {rate}: {d:.1} dB");
    }
    assert!(matches!(
        Encoder::new(Codec::G722, 44100),
        Err(CodecError::Rate { rate: 44100, .. })
    ));
    assert!(Decoder::new(Codec::Opus, 48000).is_err());
    assert!(Decoder::new(Codec::Pcmu, 0).is_err());
    // Opus takes only whole Opus frames.
    let mut enc = Encoder::new(Codec::Opus, 48000).unwrap();
    let mut out = Vec::new();
    assert!(enc.encode(&[0; 100], &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn a_5khz_tone_needs_a_wideband_codec() {
    let frames = tone_frames(5000.0, 16000, 50, 8000);
    for (codec, survives) in [
        (Codec::G722, true),
        (Codec::Opus, true),
        (Codec::Pcmu, false),
    ] {
        let payloads = encode_all(codec, 16000, &frames);
        let pcm = decode_all(codec, 16000, &payloads);
        let level = 10.0 * (goertzel(&pcm[pcm.len() / 4..], 16000, 5000.0) / 32.0e6).log10();
        println!("{codec}: 5 kHz tone at {level:.1} dB of its input level");
        assert_eq!(level > -3.0, survives, "{codec}: {level:.1} dB");
    }
}

#[test]
fn g722_decoder_state_runs_across_packets() {
    let frames = tone_frames(1000.0, 16000, 25, 8000);
    let payloads = encode_all(Codec::G722, 16000, &frames);
    let joined: Vec<u8> = payloads.concat();
    let one_block = decode_all(Codec::G722, 16000, std::slice::from_ref(&joined));
    let packets = decode_all(Codec::G722, 16000, &payloads);
    assert_eq!(one_block, packets);
    // And through the 16 -> 8 kHz resampler, packet boundaries leave no trace either.
    assert_eq!(
        decode_all(Codec::G722, 8000, &[joined]),
        decode_all(Codec::G722, 8000, &payloads)
    );
}

#[test]
fn opus_decodes_a_tone_at_16k_directly() {
    let frames = tone_frames(1000.0, 48000, 50, 8000);
    let payloads = encode_all(Codec::Opus, 48000, &frames);
    assert!(payloads.iter().all(|p| !p.is_empty() && p.len() < 400));
    let mut dec = Decoder::new(Codec::Opus, 16000).unwrap();
    let mut out = Vec::new();
    for p in &payloads {
        assert_eq!(dec.decode(p, &mut out).unwrap(), 320, "20 ms at 16 kHz");
    }
    let d = dominance_db(&out, 16000, 1000.0);
    let level = 20.0 * (rms(&out[out.len() / 4..]) / (8000.0 / 2f64.sqrt())).log10();
    println!("Opus 1 kHz at 16 kHz: dominance {d:.1} dB, level {level:.2} dB");
    assert!(
        d > 20.0 && level.abs() < 2.0,
        "{d:.1} dB, level {level:.2} dB"
    );
    assert!(
        dec.decode(&[], &mut out).is_err(),
        "an empty payload is no packet"
    );
}

/// 2 s of a speech-like test signal at 48 kHz: a pitch with six harmonics (a buzz, as vocal
/// folds make) plus a little breath noise, hopping to another pitch and level every 20 ms frame,
/// so that concealment which only extrapolates the last frame is visibly wrong; every fourth
/// frame is a pause (as between syllables), without which the encoder's voice activity detector
/// takes the steady signal for background noise and stops sending FEC data.
fn hopping_frames() -> Vec<Vec<i16>> {
    let pitches = [130.0, 180.0, 220.0, 150.0, 250.0, 110.0, 200.0];
    let mut phase = 0.0f64;
    let mut seed = 0x2545_f491_u32;
    (0..100)
        .map(|i| {
            let hz = pitches[i % pitches.len()];
            let amp = if i % 4 == 3 {
                0.0
            } else {
                1500.0 + 1000.0 * ((i % 3) as f64)
            };
            (0..960)
                .map(|_| {
                    phase += std::f64::consts::TAU * hz / 48000.0;
                    let buzz: f64 = (1..=6)
                        .map(|h| (f64::from(h) * phase).sin() / f64::from(h))
                        .sum();
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let noise = f64::from(seed >> 16) / 65536.0 - 0.5;
                    (amp * buzz + 600.0 * noise).round() as i16
                })
                .collect()
        })
        .collect()
}

/// Decodes `payloads` at `rate`, losing the packets at `lost`; each loss is concealed with the
/// next packet's FEC (`fec`) or by PLC alone. Returns the PCM.
fn decode_with_loss(payloads: &[Vec<u8>], rate: u32, lost: &[usize], fec: bool) -> Vec<i16> {
    let mut dec = Decoder::new(Codec::Opus, rate).unwrap();
    let frame = (rate / 50) as usize;
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        if lost.contains(&i) {
            let next = payloads.get(i + 1).filter(|_| fec).map(Vec::as_slice);
            let before = out.len();
            dec.conceal(frame, next, &mut out);
            assert_eq!(
                out.len() - before,
                frame,
                "conceal gives exactly what was asked"
            );
        } else {
            dec.decode(p, &mut out).unwrap();
        }
    }
    out
}

/// Correlation of each lost frame's concealment with the same frame decoded without loss:
/// (median, mean).
fn concealment_quality(
    reference: &[i16],
    concealed: &[i16],
    lost: &[usize],
    frame: usize,
) -> (f64, f64) {
    let mut c: Vec<f64> = lost
        .iter()
        .map(|&i| {
            let span = i * frame..(i + 1) * frame;
            correlation(&reference[span.clone()], &concealed[span])
        })
        .collect();
    println!("  per lost frame: {c:.2?}");
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    c.sort_by(f64::total_cmp);
    (c[c.len() / 2], mean)
}

#[test]
fn opus_fec_rebuilds_a_lost_frame_from_the_next_packet() {
    let frames = hopping_frames();
    let payloads = encode_all(Codec::Opus, 48000, &frames);
    // Voiced frames only (not i % 4 == 3), a different pitch each time.
    let lost: Vec<usize> = (9..95).step_by(8).collect();
    for rate in [16000, 8000] {
        let frame = (rate / 50) as usize;
        let reference = decode_with_loss(&payloads, rate, &[], true);
        let with_fec = decode_with_loss(&payloads, rate, &lost, true);
        let plc_only = decode_with_loss(&payloads, rate, &lost, false);
        assert_eq!(with_fec.len(), reference.len());
        let (fec_median, fec_mean) = concealment_quality(&reference, &with_fec, &lost, frame);
        let (plc_median, plc_mean) = concealment_quality(&reference, &plc_only, &lost, frame);
        println!(
            "Opus at {rate} Hz, {} lost frames: FEC correlation median {fec_median:.3} (mean {fec_mean:.3}), \
             PLC only median {plc_median:.3} (mean {plc_mean:.3}), silence 0",
            lost.len()
        );
        // libopus's voice activity detector decides per frame whether FEC data goes out, so a
        // few frames may have none and fall back to PLC; most must be rebuilt closely.
        assert!(
            fec_median > 0.9 && fec_mean > 0.7,
            "FEC {fec_median:.3} / {fec_mean:.3}"
        );
        assert!(
            fec_mean > plc_mean + 0.3,
            "FEC {fec_mean:.3} vs PLC {plc_mean:.3}"
        );
    }
}

#[test]
fn conceal_lengths_are_exact_for_every_codec_and_odd_sizes() {
    for codec in ALL {
        for rate in [8000, 16000] {
            let mut dec = Decoder::new(codec, rate).unwrap();
            let mut out = Vec::new();
            for samples in [0usize, 1, 7, 160, 321, 2000, 5000] {
                let before = out.len();
                dec.conceal(samples, None, &mut out);
                assert_eq!(out.len() - before, samples, "{codec} at {rate}: {samples}");
                dec.conceal(samples, Some(&[0xFF, 0x00, 0x13]), &mut out);
                assert_eq!(
                    out.len() - before,
                    2 * samples,
                    "{codec} at {rate}: {samples} with junk next"
                );
            }
        }
    }
}

/// Packets of a fixture file: (seq, timestamp, payload) records, see fixtures/*/README.md.
fn read_fixture(bytes: &[u8]) -> Vec<(u16, u32, Vec<u8>)> {
    let mut packets = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let seq = u16::from_be_bytes([rest[0], rest[1]]);
        let ts = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
        let len = usize::from(u16::from_be_bytes([rest[6], rest[7]]));
        let payload = rest[8..8 + len].to_vec();
        packets.push((seq, ts, payload));
        rest = &rest[8 + len..];
    }
    assert!(rest.is_empty(), "fixture ends on a record boundary");
    packets
}

#[test]
fn real_g722_call_decodes_to_speech_like_audio() {
    let packets = read_fixture(include_bytes!("../../fixtures/g722/sip-rtp-g722.rtp"));
    assert_eq!(packets.len(), 250);
    let mut dec = Decoder::new(Codec::G722, 16000).unwrap();
    let mut pcm = Vec::new();
    for (i, (seq, ts, p)) in packets.iter().enumerate() {
        assert_eq!(p.len(), 160);
        if let Some((prev_seq, prev_ts, _)) = i.checked_sub(1).map(|j| &packets[j]) {
            assert_eq!(seq.wrapping_sub(*prev_seq), 1);
            assert_eq!(ts.wrapping_sub(*prev_ts), 160, "8 kHz RTP clock, 20 ms");
        }
        assert_eq!(dec.decode(p, &mut pcm).unwrap(), 320);
    }
    // Speech: loud and quiet 20 ms frames (syllables and pauses), no clipped runs, and energy
    // spread over the band rather than one tone.
    let levels: Vec<f64> = pcm.chunks(320).map(rms).collect();
    let loud = levels.iter().copied().fold(0.0, f64::max);
    let quiet = levels.iter().copied().fold(f64::MAX, f64::min);
    let clipped_run = pcm
        .windows(3)
        .filter(|w| w.iter().all(|s| s.unsigned_abs() >= 32_000))
        .count();
    let overall = rms(&pcm);
    let dynamics = 20.0 * (loud / quiet.max(1.0)).log10();
    println!(
        "real G.722: overall RMS {overall:.0}, loudest frame {loud:.0}, quietest {quiet:.0}, \
         dynamics {dynamics:.1} dB, clipped runs {clipped_run}"
    );
    assert!(overall > 100.0, "not silent: {overall:.0}");
    assert!(dynamics > 20.0, "speech has pauses: {dynamics:.1} dB");
    assert_eq!(clipped_run, 0);
    // The decoder's output must not be dominated by a single frequency.
    let strongest = (1..80)
        .map(|k| goertzel(&pcm, 16000, f64::from(k) * 100.0))
        .fold(0.0, f64::max);
    assert!(strongest < 0.5 * overall * overall, "no single tone");
}

#[test]
fn real_opus_stream_with_fec_conceals_the_dropped_packets() {
    let packets = read_fixture(include_bytes!("../../fixtures/opus/fec_rtp.rtp"));
    assert_eq!(packets.len(), 400);
    for w in packets.windows(2) {
        assert_eq!(w[1].1.wrapping_sub(w[0].1), 960, "48 kHz RTP clock, 20 ms");
    }
    let payloads: Vec<Vec<u8>> = packets.into_iter().map(|(_, _, p)| p).collect();
    // The `_fec_dropped` capture lacks every 100th packet (99, 199, ...): see the README. The
    // last (399) has no next packet in this excerpt, so the test loses the three before it.
    let lost = [99, 199, 299];
    for rate in [16000, 8000] {
        let frame = (rate / 50) as usize;
        let reference = decode_with_loss(&payloads, rate, &[], true);
        let overall = rms(&reference);
        assert!(overall > 100.0, "not silent: {overall:.0}");
        let with_fec = decode_with_loss(&payloads, rate, &lost, true);
        let plc_only = decode_with_loss(&payloads, rate, &lost, false);
        let (fec_median, fec_mean) = concealment_quality(&reference, &with_fec, &lost, frame);
        let (plc_median, plc_mean) = concealment_quality(&reference, &plc_only, &lost, frame);
        println!(
            "real Opus at {rate} Hz: RMS {overall:.0}; FEC correlation median {fec_median:.3} (mean {fec_mean:.3}), \
             PLC only median {plc_median:.3} (mean {plc_mean:.3})"
        );
        assert!(
            fec_mean > 0.9 && fec_mean > plc_mean,
            "FEC {fec_mean:.3} vs PLC {plc_mean:.3}"
        );
        // After the gap both converge back to the lossless decode.
        let tail = 50 * frame;
        let c = correlation(
            &reference[reference.len() - tail..],
            &with_fec[with_fec.len() - tail..],
        );
        assert!(c > 0.95, "recovers: {c:.3}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_payloads_never_panic(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..8),
        gap in 0usize..3000,
    ) {
        for codec in ALL {
            for rate in [8000, 16000] {
                let mut dec = Decoder::new(codec, rate).unwrap();
                let mut out = Vec::new();
                for p in &payloads {
                    let before = out.len();
                    match dec.decode(p, &mut out) {
                        Ok(n) => prop_assert_eq!(out.len() - before, n),
                        Err(_) => prop_assert_eq!(out.len(), before),
                    }
                    let mid = out.len();
                    dec.conceal(gap, Some(p), &mut out);
                    prop_assert_eq!(out.len() - mid, gap);
                }
            }
        }
    }

    #[test]
    fn arbitrary_pcm_never_panics_the_encoders(
        pcm in proptest::collection::vec(any::<i16>(), 0..2000),
    ) {
        for codec in ALL {
            for rate in [8000, 16000, 48000] {
                let mut enc = Encoder::new(codec, rate).unwrap();
                let mut out = Vec::new();
                let _ = enc.encode(&pcm, &mut out);
            }
        }
    }
}

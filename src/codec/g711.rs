//! ITU-T G.711 µ-law and A-law, table driven: 256-entry decode tables and encode tables over the
//! 14-bit (µ-law) and 13-bit (A-law) linear ranges that G.711 is defined on, all built at compile
//! time by `const fn` from the segment rules of the ITU-T reference implementation (G.191 STL).

/// µ-law bias added before segment search, in the 14-bit domain (0x84 >> 2, G.711 table 2a).
const ULAW_BIAS_14: i32 = 0x21;
/// Largest 14-bit magnitude µ-law can represent before the bias pushes it out of segment 7.
const ULAW_CLIP_14: i32 = 8159;

/// Decoded value of every µ-law code.
static ULAW_DECODE: [i16; 256] = build_ulaw_decode();
/// Decoded value of every A-law code.
static ALAW_DECODE: [i16; 256] = build_alaw_decode();
/// µ-law code for every 14-bit linear value, indexed by `(sample >> 2) + 8192`.
static ULAW_ENCODE: [u8; 16384] = build_ulaw_encode();
/// A-law code for every 13-bit linear value, indexed by `(sample >> 3) + 4096`.
static ALAW_ENCODE: [u8; 8192] = build_alaw_encode();

/// Decodes one µ-law code to 16-bit linear PCM.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Decodes one A-law code to 16-bit linear PCM.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// Encodes one 16-bit linear sample to µ-law (the two low bits are below µ-law's 14-bit input).
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // (sample >> 2) is in -8192..=8191, so the index is in 0..16384: cannot go out of bounds.
    ULAW_ENCODE[((i32::from(sample) >> 2) + 8192) as usize]
}

/// Encodes one 16-bit linear sample to A-law (the three low bits are below A-law's 13-bit input).
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    // (sample >> 3) is in -4096..=4095, so the index is in 0..8192: cannot go out of bounds.
    ALAW_ENCODE[((i32::from(sample) >> 3) + 4096) as usize]
}

const fn ulaw_decode(code: u8) -> i16 {
    // Codes are transmitted inverted (G.711 §3.2); mantissa, segment and sign then expand with the
    // bias 0x84 (132) that made segment boundaries powers of two.
    let u = !code;
    let mut t = (((u & 0x0F) as i32) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        (0x84 - t) as i16
    } else {
        (t - 0x84) as i16
    }
}

const fn alaw_decode(code: u8) -> i16 {
    // Even bits are inverted on the line (G.711 §3.3, XOR 0x55); the result is the centre of the
    // quantisation interval, scaled from 13 to 16 bits.
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// Segment (0..=8) whose upper end (`0x3F` doubling for µ-law, `0x1F` for A-law) is not below
/// `value`; 8 means beyond the last segment.
const fn segment(value: i32, first_end: i32) -> i32 {
    let mut seg = 0;
    while seg < 8 && value > ((first_end + 1) << seg) - 1 {
        seg += 1;
    }
    seg
}

const fn ulaw_encode14(value: i32) -> u8 {
    let (mut magnitude, mask) = if value < 0 {
        (-value, 0x7F)
    } else {
        (value, 0xFF)
    };
    if magnitude > ULAW_CLIP_14 {
        magnitude = ULAW_CLIP_14;
    }
    magnitude += ULAW_BIAS_14;
    let seg = segment(magnitude, 0x3F);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let code = (seg << 4) | ((magnitude >> (seg + 1)) & 0x0F);
    (code as u8) ^ mask
}

const fn alaw_encode13(value: i32) -> u8 {
    let (magnitude, mask) = if value >= 0 {
        (value, 0xD5)
    } else {
        (-value - 1, 0x55)
    };
    let seg = segment(magnitude, 0x1F);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = if seg < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> seg) & 0x0F
    };
    (((seg << 4) | mantissa) as u8) ^ mask
}

const fn build_ulaw_decode() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_decode(i as u8);
        i += 1;
    }
    table
}

const fn build_alaw_decode() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_decode(i as u8);
        i += 1;
    }
    table
}

const fn build_ulaw_encode() -> [u8; 16384] {
    let mut table = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        table[i] = ulaw_encode14(i as i32 - 8192);
        i += 1;
    }
    table
}

const fn build_alaw_encode() -> [u8; 8192] {
    let mut table = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        table[i] = alaw_encode13(i as i32 - 4096);
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ulaw_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
    }

    #[test]
    fn known_alaw_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xD4), 24);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn decode_tables_are_odd_symmetric_and_monotonic() {
        for code in 0u8..128 {
            // µ-law: sign is bit 7 (set = positive after inversion); A-law likewise.
            assert_eq!(ulaw_to_linear(code), -ulaw_to_linear(code | 0x80));
            assert_eq!(alaw_to_linear(code), -alaw_to_linear(code | 0x80));
        }
        // Positive µ-law codes 0xFF..=0x80 increase in magnitude as the code decreases.
        for code in 0x81u8..=0xFF {
            assert!(ulaw_to_linear(code) < ulaw_to_linear(code - 1));
        }
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            // 0x7F is µ-law's negative zero; it decodes to 0, which encodes as positive zero.
            let want = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, want, "ulaw code {code:#04x}");
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "alaw code {code:#04x}"
            );
        }
    }

    /// Quantisation step (16-bit scale) of the segment a µ-law code belongs to.
    fn ulaw_step(code: u8) -> i32 {
        8 << ((!code & 0x70) >> 4)
    }

    /// Quantisation step (16-bit scale) of the segment an A-law code belongs to.
    fn alaw_step(code: u8) -> i32 {
        let seg = ((code ^ 0x55) & 0x70) >> 4;
        16 << seg.saturating_sub(1)
    }

    #[test]
    fn round_trip_error_is_bounded_for_every_sample() {
        for x in i16::MIN..=i16::MAX {
            let x32 = i32::from(x);
            let code = linear_to_ulaw(x);
            let u = ulaw_to_linear(code);
            let err = (i32::from(u) - x32).abs();
            // Half a step from quantisation plus the 4-sample resolution of the 14-bit input;
            // beyond the clip level (±32124 decoded) the error is the clipping itself.
            let bound = ulaw_step(code) / 2 + 4;
            assert!(
                err <= bound || (x32.abs() > 32124 && err <= x32.abs() - 32124 + 4),
                "ulaw x={x} decoded={u} err={err} bound={bound}"
            );
            let code = linear_to_alaw(x);
            let a = alaw_to_linear(code);
            let err = (i32::from(a) - x32).abs();
            let bound = alaw_step(code) / 2 + 8;
            assert!(
                err <= bound || (x32.abs() > 32256 && err <= x32.abs() - 32256 + 8),
                "alaw x={x} decoded={a} err={err} bound={bound}"
            );
        }
    }
}

//! RTP header view (RFC 3550 §5.1) and RTP/RTCP demultiplexing (RFC 5761 §4) for the relay and the
//! recorder. Parsing borrows the packet and never allocates, so it is safe to call per packet; bad
//! input from the network yields an `RtpError`, never a panic.

/// Length of the fixed RTP header (RFC 3550 §5.1), without CSRCs or extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// The fields of an RTP header that the relay and the recorder use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (for audio: first packet of a talk spurt, RFC 3551 §4.1).
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Media timestamp in the payload's clock rate.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("packet of {len} bytes is shorter than the 12-byte RTP header")]
    TooShort {
        /// Length of the datagram.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    /// The CSRC count announces more identifiers than the packet holds.
    #[error("CSRC list of {count} entries runs past the end of the packet")]
    TruncatedCsrc {
        /// CSRC count from the header.
        count: u8,
    },
    /// The header extension (X bit) is cut short or its length runs past the end of the packet.
    #[error("header extension runs past the end of the packet")]
    BadExtension,
    /// The P bit is set but the padding count is 0 or larger than the payload.
    #[error("padding count {count} does not fit a payload of {payload_len} bytes")]
    BadPadding {
        /// Padding count (last byte of the packet).
        count: u8,
        /// Bytes after the header, padding included.
        payload_len: usize,
    },
}

/// Parses an RTP packet (RFC 3550 §5.1): skips CSRCs and header extension, strips padding. Returns
/// header and payload slice.
pub fn parse(packet: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    let Some((fixed, rest)) = packet.split_first_chunk::<FIXED_HEADER_LEN>() else {
        return Err(RtpError::TooShort { len: packet.len() });
    };
    let version = fixed[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let padding = fixed[0] & 0x20 != 0;
    let extension = fixed[0] & 0x10 != 0;
    let csrc_count = fixed[0] & 0x0F;
    let header = RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7F,
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    };
    let rest = rest
        .get(usize::from(csrc_count) * 4..)
        .ok_or(RtpError::TruncatedCsrc { count: csrc_count })?;
    let rest = if extension {
        // RFC 3550 §5.3.1: 16-bit profile field, 16-bit length in 32-bit words, then the words.
        let (ext, after) = rest
            .split_first_chunk::<4>()
            .ok_or(RtpError::BadExtension)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        after.get(words * 4..).ok_or(RtpError::BadExtension)?
    } else {
        rest
    };
    let payload = if padding {
        // RFC 3550 §5.1: the last octet counts the padding octets, itself included.
        let count = rest.last().copied().unwrap_or(0);
        let bad = RtpError::BadPadding {
            count,
            payload_len: rest.len(),
        };
        if count == 0 {
            return Err(bad);
        }
        let keep = rest.len().checked_sub(usize::from(count)).ok_or(bad)?;
        rest.get(..keep).ok_or(bad)?
    } else {
        rest
    };
    Ok((header, payload))
}

/// Tells RTCP apart from RTP on a shared (rtcp-mux) or RTCP port: version 2 and a second byte in
/// 192..=223, the RTCP packet types (SR 200 .. XR 207 and the reserved rest), which RFC 5761 §4 keeps
/// free of RTP by forbidding payload types 64..=95 (72..=76 with the marker bit look like 200..=204).
/// A datagram shorter than the 8-byte minimal RTCP packet (RFC 3550 §6.4.2) is not RTCP.
pub fn is_rtcp(packet: &[u8]) -> bool {
    match packet {
        [first, second, _, _, _, _, _, _, ..] => first >> 6 == 2 && (192..=223).contains(second),
        _ => false,
    }
}

/// Writes a 12-byte RTP header (version 2, no CSRC/extension) into out (for the test peer).
pub fn write_header(h: &RtpHeader, out: &mut [u8; 12]) {
    out[0] = 0x80;
    out[1] = (u8::from(h.marker) << 7) | (h.payload_type & 0x7F);
    out[2..4].copy_from_slice(&h.seq.to_be_bytes());
    out[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 8,
            seq: 0xBEEF,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let mut buf = [0u8; 12];
        write_header(&header(), &mut buf);
        assert_eq!(
            buf,
            [0x80, 0x88, 0xBE, 0xEF, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4]
        );
        let mut packet = buf.to_vec();
        packet.extend_from_slice(&[9, 8, 7]);
        let (h, payload) = parse(&packet).unwrap();
        assert_eq!(h, header());
        assert_eq!(payload, &[9, 8, 7]);
    }

    #[test]
    fn payload_type_is_masked_to_seven_bits() {
        let mut buf = [0u8; 12];
        let h = RtpHeader {
            marker: false,
            payload_type: 0xFF,
            ..header()
        };
        write_header(&h, &mut buf);
        assert_eq!(buf[1], 0x7F);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        // V=2, P=1, X=1, CC=2; M=0, PT=0.
        let mut p = vec![0xB2, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        p.extend_from_slice(&[0xAA; 8]); // two CSRCs
        p.extend_from_slice(&[0xBE, 0xDE, 0, 2]); // extension header, 2 words
        p.extend_from_slice(&[0xCC; 8]);
        p.extend_from_slice(&[1, 2, 3, 4, 5]); // payload
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let (h, payload) = parse(&p).unwrap();
        assert_eq!(h.seq, 1);
        assert_eq!(h.timestamp, 160);
        assert_eq!(h.ssrc, 7);
        assert!(!h.marker);
        assert_eq!(payload, &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn padding_may_consume_the_whole_payload() {
        let mut p = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(parse(&p).unwrap().1, &[] as &[u8]);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort { len: 0 }));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort { len: 11 }));
        let mut v1 = [0u8; 12];
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(RtpError::BadVersion(1)));
        let mut cc = vec![0x83];
        cc.extend_from_slice(&[0; 11 + 8]); // CC=3 needs 12 bytes, 8 present
        assert_eq!(parse(&cc), Err(RtpError::TruncatedCsrc { count: 3 }));
        let mut ext_short = vec![0x90];
        ext_short.extend_from_slice(&[0; 11 + 3]);
        assert_eq!(parse(&ext_short), Err(RtpError::BadExtension));
        let mut ext_long = vec![0x90];
        ext_long.extend_from_slice(&[0; 11]);
        ext_long.extend_from_slice(&[0, 0, 0, 5, 1, 2, 3, 4]); // claims 5 words, has 1
        assert_eq!(parse(&ext_long), Err(RtpError::BadExtension));
        let mut pad_zero = vec![0xA0];
        pad_zero.extend_from_slice(&[0; 11]);
        pad_zero.extend_from_slice(&[1, 0]);
        assert_eq!(
            parse(&pad_zero),
            Err(RtpError::BadPadding {
                count: 0,
                payload_len: 2
            })
        );
        let mut pad_big = vec![0xA0];
        pad_big.extend_from_slice(&[0; 11]);
        pad_big.extend_from_slice(&[1, 9]);
        assert_eq!(
            parse(&pad_big),
            Err(RtpError::BadPadding {
                count: 9,
                payload_len: 2
            })
        );
        let mut pad_empty = vec![0xA0];
        pad_empty.extend_from_slice(&[0; 11]);
        assert_eq!(
            parse(&pad_empty),
            Err(RtpError::BadPadding {
                count: 0,
                payload_len: 0
            })
        );
    }

    #[test]
    fn every_truncation_of_a_valid_packet_is_handled() {
        let mut p = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 1, 1, 1, 1];
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 2, 2, 2, 2, 5, 5, 2]);
        assert_eq!(parse(&p).unwrap().1, &[5]);
        for len in 0..p.len() {
            assert!(parse(&p[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }

    #[test]
    fn rtcp_is_told_apart_from_rtp() {
        // Sender report (PT 200) and receiver report (PT 201), minimal 8 bytes.
        assert!(is_rtcp(&[0x80, 200, 0, 1, 0, 0, 0, 1]));
        assert!(is_rtcp(&[0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]));
        assert!(is_rtcp(&[0x80, 207, 0, 1, 0, 0, 0, 1])); // XR

        // PCMU and PCMA with and without marker bit.
        assert!(!is_rtcp(&[0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]));
        assert!(!is_rtcp(&[0x80, 0x88, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]));
        assert!(!is_rtcp(&[0x80, 101, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])); // telephone-event
        assert!(!is_rtcp(&[0x80, 0xE0, 0, 1, 0, 0, 0, 1])); // 224: marker + PT 96
        assert!(!is_rtcp(&[0x40, 200, 0, 1, 0, 0, 0, 1])); // version 1
        assert!(!is_rtcp(&[0x80, 200, 0, 1])); // too short
        assert!(!is_rtcp(&[]));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((_, payload)) = parse(&bytes) {
                prop_assert!(payload.len() + FIXED_HEADER_LEN <= bytes.len());
            }
            let _ = is_rtcp(&bytes);
        }

        #[test]
        fn written_headers_parse_back(marker: bool, pt in 0u8..128, seq: u16, ts: u32, ssrc: u32,
                                      payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = RtpHeader { marker, payload_type: pt, seq, timestamp: ts, ssrc };
            let mut buf = [0u8; 12];
            write_header(&h, &mut buf);
            let mut p = buf.to_vec();
            p.extend_from_slice(&payload);
            let (back, body) = parse(&p).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(body, &payload[..]);
        }
    }
}

//! RFC 4733 telephone-events (DTMF) of one side, sans-IO: packets with their arrival time in,
//! digit begin/end out. An event is one RTP timestamp (its start); its packets repeat that
//! timestamp with a growing duration, and its end is sent three times with the E bit. A lost
//! end packet is made up for by a timeout; duplicates and retransmitted ends are ignored.

use std::time::{Duration, Instant};

use crate::media::rtp::RtpHeader;

/// An event whose packets stop without an end packet is taken as ended this long after its
/// last packet (RFC 4733 senders refresh at least every 50 ms).
pub const END_TIMEOUT: Duration = Duration::from_millis(250);

/// What a packet (or the passing of time) changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfUpdate {
    /// A digit started: its first packet arrived at `at`.
    Began {
        /// `0`-`9`, `*`, `#`, `A`-`D`, or `F` for flash.
        digit: char,
        /// Arrival of its first packet.
        at: Instant,
    },
    /// A digit ended.
    Ended {
        /// As in `Began`.
        digit: char,
        /// Arrival of its first packet.
        began: Instant,
        /// When it ended: arrival of its end packet, or its last packet for a timeout.
        at: Instant,
        /// Its length as the sender measured it (RTP duration field).
        duration: Duration,
    },
}

/// The digit of an RFC 4733 event code, if it is one (events 0-16, §3.2).
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        16 => Some('F'),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    ts: u32,
    digit: char,
    began: Instant,
    last: Instant,
    /// Largest duration field seen, in RTP clock ticks.
    ticks: u32,
}

/// Telephone-event state of one side.
#[derive(Debug, Clone, Default)]
pub struct DtmfTracker {
    current: Option<Current>,
    /// Start timestamp of the last event that ended, so its repeated end packets are ignored.
    finished: Option<u32>,
}

impl DtmfTracker {
    /// A tracker with nothing seen.
    pub fn new() -> DtmfTracker {
        DtmfTracker::default()
    }

    /// One telephone-event packet. `clock_rate` is the event stream's RTP clock (8000 for
    /// `telephone-event/8000`). A packet that begins a new event while another is open ends
    /// the old one first; both updates come back in order.
    pub fn push(
        &mut self,
        arrival: Instant,
        rtp: &RtpHeader,
        payload: &[u8],
        clock_rate: u32,
        out: &mut Vec<DtmfUpdate>,
    ) {
        let Some(&[event, flags, d_hi, d_lo]) = payload.first_chunk::<4>() else {
            return;
        };
        let Some(digit) = digit_of(event) else {
            return;
        };
        let end = flags & 0x80 != 0;
        let ticks = u32::from(u16::from_be_bytes([d_hi, d_lo]));
        let ts = rtp.timestamp;
        if self.finished == Some(ts) {
            return;
        }
        let clock = clock_rate.max(1);
        match &mut self.current {
            Some(cur) if cur.ts == ts => {
                cur.last = arrival;
                cur.ticks = cur.ticks.max(ticks);
            }
            _ => {
                if let Some(old) = self.current.take() {
                    out.push(ended(old, old.last, clock));
                    self.finished = Some(old.ts);
                }
                self.current = Some(Current {
                    ts,
                    digit,
                    began: arrival,
                    last: arrival,
                    ticks,
                });
                out.push(DtmfUpdate::Began { digit, at: arrival });
            }
        }
        if end {
            if let Some(cur) = self.current.take() {
                out.push(ended(cur, arrival, clock));
                self.finished = Some(cur.ts);
            }
        }
    }

    /// Ends an event whose packets stopped without an end packet ([`END_TIMEOUT`]).
    pub fn poll(&mut self, now: Instant, clock_rate: u32) -> Option<DtmfUpdate> {
        let cur = self.current?;
        if now.saturating_duration_since(cur.last) < END_TIMEOUT {
            return None;
        }
        self.current = None;
        self.finished = Some(cur.ts);
        Some(ended(cur, cur.last, clock_rate.max(1)))
    }

    /// Ends the open event, if any, at `at` (the recording stops).
    pub fn close(&mut self, at: Instant, clock_rate: u32) -> Option<DtmfUpdate> {
        let cur = self.current.take()?;
        self.finished = Some(cur.ts);
        Some(ended(cur, at.max(cur.last), clock_rate.max(1)))
    }
}

fn ended(cur: Current, at: Instant, clock: u32) -> DtmfUpdate {
    DtmfUpdate::Ended {
        digit: cur.digit,
        began: cur.began,
        at,
        duration: Duration::from_micros(u64::from(cur.ticks) * 1_000_000 / u64::from(clock)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u16, ts: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 101,
            seq,
            timestamp: ts,
            ssrc: 7,
        }
    }

    fn payload(event: u8, end: bool, ticks: u16) -> [u8; 4] {
        let d = ticks.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    #[test]
    fn digit_codes_follow_rfc_4733() {
        let digits: String = (0..=16).filter_map(digit_of).collect();
        assert_eq!(digits, "0123456789*#ABCDF");
        assert_eq!(digit_of(17), None);
    }

    /// One digit as senders send it: packets every 50 ms, then three end packets.
    #[test]
    fn a_digit_begins_once_and_ends_once_despite_repeated_end_packets() {
        let t0 = Instant::now();
        let mut dt = DtmfTracker::new();
        let mut out = Vec::new();
        for (i, ticks) in [400u16, 800, 1200].iter().enumerate() {
            let at = t0 + Duration::from_millis(50 * i as u64);
            dt.push(
                at,
                &hdr(i as u16, 8000),
                &payload(5, false, *ticks),
                8000,
                &mut out,
            );
        }
        for i in 0..3u16 {
            let at = t0 + Duration::from_millis(160 + u64::from(i) * 5);
            dt.push(
                at,
                &hdr(3 + i, 8000),
                &payload(5, true, 1280),
                8000,
                &mut out,
            );
        }
        assert_eq!(
            out,
            [
                DtmfUpdate::Began { digit: '5', at: t0 },
                DtmfUpdate::Ended {
                    digit: '5',
                    began: t0,
                    at: t0 + Duration::from_millis(160),
                    duration: Duration::from_millis(160),
                }
            ]
        );
        assert_eq!(dt.poll(t0 + Duration::from_secs(5), 8000), None);
    }

    #[test]
    fn a_lost_end_is_made_up_by_the_timeout_and_a_new_event_ends_the_old_one() {
        let t0 = Instant::now();
        let mut dt = DtmfTracker::new();
        let mut out = Vec::new();
        dt.push(t0, &hdr(1, 100), &payload(11, false, 400), 8000, &mut out);
        // A new timestamp before any end: '#' ends at its last packet, '*' begins.
        let t1 = t0 + Duration::from_millis(100);
        dt.push(t1, &hdr(2, 2000), &payload(10, false, 400), 8000, &mut out);
        assert!(matches!(out[1], DtmfUpdate::Ended { digit: '#', at, .. } if at == t0));
        assert_eq!(out[2], DtmfUpdate::Began { digit: '*', at: t1 });
        assert_eq!(dt.poll(t1 + Duration::from_millis(100), 8000), None);
        let ended = dt.poll(t1 + END_TIMEOUT, 8000);
        assert!(matches!(ended, Some(DtmfUpdate::Ended { digit: '*', at, .. }) if at == t1));
        // A late packet of the finished event starts nothing.
        out.clear();
        dt.push(
            t1 + Duration::from_secs(1),
            &hdr(3, 2000),
            &payload(10, true, 800),
            8000,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn short_or_unknown_payloads_are_ignored() {
        let t0 = Instant::now();
        let mut dt = DtmfTracker::new();
        let mut out = Vec::new();
        dt.push(t0, &hdr(1, 1), &[5, 0, 1], 8000, &mut out);
        dt.push(t0, &hdr(2, 1), &payload(200, false, 10), 8000, &mut out);
        assert!(out.is_empty());
        assert_eq!(dt.close(t0, 8000), None);
    }
}

//! Per-source rate limit for SIP (flood protection): a token bucket per source IP address,
//! refilled at `rate` messages per second up to one second's worth. Sans-IO: time comes in as
//! `now`. Memory is bounded: when the table is full, sources whose bucket has refilled (idle
//! ones) are forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most sources tracked at once (about 48 bytes each).
pub const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Over the limit now (to log transitions, not every dropped message).
    limited: bool,
}

/// What `SourceLimiter::check` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit; the first message of a burst over it says `first`.
    Drop {
        /// This source just went over the limit (log it once).
        first: bool,
    },
}

/// Token buckets per source address.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl SourceLimiter {
    /// `rate` messages per second per source, with bursts of up to `rate` messages.
    pub fn new(rate: u32) -> SourceLimiter {
        SourceLimiter {
            rate: f64::from(rate.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for a message from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.forget_idle(now);
        }
        let rate = self.rate;
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            last: now,
            limited: false,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.limited = false;
            Verdict::Allow
        } else {
            let first = !bucket.limited;
            bucket.limited = true;
            Verdict::Drop { first }
        }
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    fn forget_idle(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let refilled = b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate;
            refilled < rate
        });
        if self.buckets.len() >= MAX_SOURCES {
            // Every source is busy (a spoofed flood): start afresh rather than grow.
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_over_the_rate_is_dropped_and_logged_once_then_refills() {
        let mut lim = SourceLimiter::new(10);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(lim.check(ip, t0), Verdict::Allow);
        }
        assert_eq!(lim.check(ip, t0), Verdict::Drop { first: true });
        assert_eq!(lim.check(ip, t0), Verdict::Drop { first: false });
        // 100 ms later one token is back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(lim.check(ip, t1), Verdict::Allow);
        assert_eq!(lim.check(ip, t1), Verdict::Drop { first: true });
        // Another source is not affected.
        assert_eq!(
            lim.check("198.51.100.8".parse().unwrap(), t1),
            Verdict::Allow
        );
    }

    #[test]
    fn a_steady_source_at_the_rate_is_never_dropped() {
        let mut lim = SourceLimiter::new(50);
        let ip: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            assert_eq!(
                lim.check(ip, t0 + Duration::from_millis(20 * i)),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn the_table_stays_bounded_under_spoofed_sources() {
        let mut lim = SourceLimiter::new(10);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 1000) {
            let ip = IpAddr::from(i.to_be_bytes());
            lim.check(ip, t0 + Duration::from_secs(2));
        }
        assert!(lim.sources() <= MAX_SOURCES);
    }
}

//! The media port pool: hands out RTP/RTCP port pairs (even RTP port, RTCP on the next odd port,
//! RFC 3550 §11) from the configured range, bound and ready, and takes them back when a lease is
//! dropped, so ports cannot leak on any end path.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// Why no port pair could be had.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Every pair of the range is in use (by us or by another process).
    #[error("no free media port pair in {low}-{high}")]
    Exhausted {
        /// Range start.
        low: u16,
        /// Range end.
        high: u16,
    },
}

#[derive(Debug)]
struct PoolState {
    low: u16,
    high: u16,
    /// Next even port to try, so ports are reused as late as possible (a late packet for an
    /// ended call must not land in a new one).
    cursor: u16,
    in_use: BTreeSet<u16>,
}

/// Shared pool of port pairs; cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PortPool {
    bind: IpAddr,
    state: Arc<Mutex<PoolState>>,
}

/// A bound RTP/RTCP socket pair; the ports go back to the pool when it is dropped.
#[derive(Debug)]
pub struct PortPair {
    /// RTP socket (even port).
    pub rtp: UdpSocket,
    /// RTCP socket (RTP port + 1).
    pub rtcp: UdpSocket,
    lease: Lease,
}

/// The claim on a port pair: the ports go back to the pool when it is dropped.
#[derive(Debug)]
pub struct Lease {
    port: u16,
    state: Arc<Mutex<PoolState>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.in_use.remove(&self.port);
        }
    }
}

impl PortPair {
    /// The RTP port.
    pub fn port(&self) -> u16 {
        self.lease.port
    }

    /// The two sockets and the lease, for a user that takes the sockets over (one descriptor
    /// each: no clones); keep the lease as long as the sockets.
    pub fn into_parts(self) -> (UdpSocket, UdpSocket, Lease) {
        (self.rtp, self.rtcp, self.lease)
    }
}

impl PortPool {
    /// A pool over `low..=high` (low even) binding on `bind`.
    pub fn new(bind: IpAddr, low: u16, high: u16) -> PortPool {
        let low = low + low % 2;
        PortPool {
            bind,
            state: Arc::new(Mutex::new(PoolState {
                low,
                high,
                cursor: low,
                in_use: BTreeSet::new(),
            })),
        }
    }

    /// Number of pairs currently leased (for leak checks and metrics).
    pub fn in_use(&self) -> usize {
        self.state.lock().map(|s| s.in_use.len()).unwrap_or(0)
    }

    /// Leases the next free pair, binding both sockets non-blocking. Ports that another process
    /// holds are skipped.
    pub fn allocate(&self) -> Result<PortPair, PortError> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let pairs = u32::from(state.high.saturating_sub(state.low)).div_ceil(2);
        for _ in 0..pairs {
            let port = state.cursor;
            state.cursor = if u32::from(port) + 3 > u32::from(state.high) {
                state.low
            } else {
                port + 2
            };
            if state.in_use.contains(&port) || port.checked_add(1).is_none_or(|p| p > state.high) {
                continue;
            }
            let Ok(rtp) = bind_nonblocking(SocketAddr::new(self.bind, port)) else {
                continue;
            };
            let Ok(rtcp) = bind_nonblocking(SocketAddr::new(self.bind, port + 1)) else {
                continue;
            };
            state.in_use.insert(port);
            return Ok(PortPair {
                rtp,
                rtcp,
                lease: Lease {
                    port,
                    state: Arc::clone(&self.state),
                },
            });
        }
        Err(PortError::Exhausted {
            low: state.low,
            high: state.high,
        })
    }
}

fn bind_nonblocking(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_and_return_on_drop() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41000, 41011);
        let a = pool.allocate().unwrap();
        assert_eq!(a.port() % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.port() + 1);
        let mut held = vec![a];
        while let Ok(p) = pool.allocate() {
            held.push(p);
        }
        assert!(held.len() <= 6, "range holds 6 pairs, got {}", held.len());
        assert_eq!(pool.in_use(), held.len());
        held.clear();
        assert_eq!(pool.in_use(), 0);
        assert!(pool.allocate().is_ok());
    }

    #[test]
    fn exhausted_pool_reports_range() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41100, 41101);
        let _a = pool.allocate().unwrap();
        let err = pool.allocate().unwrap_err();
        assert_eq!(err.to_string(), "no free media port pair in 41100-41101");
    }
}

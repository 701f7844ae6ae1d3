//! Running SIPp (Debian package `sip-tester`) in tests: free ports on 127.0.0.1, a bounded
//! process, and a reader for the message trace SIPp writes with `-trace_msg`.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Ports handed to SIPp come from 20000-29999: below the kernel's ephemeral range (32768 and
/// up), so no socket bound to port 0 (a daemon's SIP socket, a test phone, a TCP connection)
/// can take one between our probe and SIPp's bind, and away from the daemons' media ranges
/// (40000-49999).
const SIPP_PORTS: std::ops::Range<u16> = 20000..30000;

/// Ports handed out so far: never handed out twice, so tests running at the same time in one
/// process cannot be given the same port before either has bound it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port of `SIPP_PORTS` that can be bound now, not handed out before; the search starts at a
/// place that depends on the process, so two test processes rarely probe the same ports.
fn ephemeral_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(SIPP_PORTS.end - SIPP_PORTS.start);
    let offset = std::process::id() % span;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = SIPP_PORTS.start + ((offset + n * 7) % span) as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A free UDP port on 127.0.0.1 for SIPp, never handed out twice in this process.
pub fn free_udp_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = ephemeral_port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// An even UDP port `p` on 127.0.0.1 with `p`..=`p + 3` free a moment ago and not handed out
/// before: SIPp's `-mp`, which binds `p` (audio) and `p + 2` (video).
pub fn free_media_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = ephemeral_port();
        if port % 2 != 0 || port > 65000 || (port..=port + 3).any(|p| handed_out.contains(&p)) {
            continue;
        }
        let held: Vec<_> = (port..=port + 3)
            .map(|p| UdpSocket::bind(("127.0.0.1", p)))
            .collect();
        if held.iter().all(Result::is_ok) {
            handed_out.extend(port..=port + 3);
            return port;
        }
    }
}

/// Starts SIPp with `args` in `cwd`. Its output is dropped (nobody would read a pipe, and a
/// full one would stall it): what went wrong is in its `-error_file`.
pub fn sipp(cwd: &Path, args: &[String]) -> Child {
    Command::new("sipp")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run sipp ({e}): install it with `apt-get install sip-tester` (.ci/run does)")
        })
}

/// Waits for `child` at most `limit`; kills it and panics after that.
pub fn wait(mut child: Child, name: &str, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most `limit`) until `child` has bound UDP `port` on 127.0.0.1, as listed in
/// `/proc/net/udp` (without binding the port here, which could make the child's bind fail).
/// False if `child` exited first or it did not happen in time.
pub fn wait_bound(child: &mut Child, port: u16, limit: Duration) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
            // No such table here: give the child a moment instead.
            std::thread::sleep(Duration::from_millis(500));
            return true;
        };
        if table
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(wanted.as_str()))
        {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One SIP message of a SIPp `-trace_msg` file, as it went over the wire.
#[derive(Debug, Clone)]
pub struct Traced {
    /// Sent by this SIPp (else received).
    pub sent: bool,
    /// The datagram.
    pub bytes: Vec<u8>,
}

impl Traced {
    /// The datagram as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The start line.
    pub fn start_line(&self) -> String {
        self.text().lines().next().unwrap_or_default().to_string()
    }

    /// The method of a request, the status code of a response ("200").
    pub fn kind(&self) -> String {
        let line = self.start_line();
        let mut words = line.split(' ');
        let first = words.next().unwrap_or_default();
        if first == "SIP/2.0" {
            words.next().unwrap_or_default().to_string()
        } else {
            first.to_string()
        }
    }

    /// Every header line named `name` (case-insensitive), byte for byte without its CRLF, in
    /// order.
    pub fn header_lines(&self, name: &str) -> Vec<Vec<u8>> {
        let head_end = find(&self.bytes, b"\r\n\r\n").unwrap_or(self.bytes.len());
        self.bytes[..head_end]
            .split(|&b| b == b'\n')
            .skip(1)
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                String::from_utf8_lossy(&line[..colon])
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// The value of the first header named `name`, trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let line = self.header_lines(name).into_iter().next()?;
        let text = String::from_utf8_lossy(&line).into_owned();
        text.split_once(':').map(|(_, v)| v.trim().to_string())
    }

    /// The body (after the empty line).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads a SIPp `-trace_msg` file: each entry is a line `UDP message sent (N bytes):` or
/// `UDP message received [N] bytes :`, an empty line and the N bytes of the datagram. A file
/// that does not exist reads as no messages.
pub fn read_trace(path: &Path) -> Vec<Traced> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&data[at..], b"UDP message ") {
        let start = at + pos;
        let Some(eol) = find(&data[start..], b"\n").map(|e| start + e) else {
            break;
        };
        let line = String::from_utf8_lossy(&data[start..eol]).into_owned();
        let sent = line.contains(" sent ");
        let len: Option<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse().ok());
        let body_start = eol + 2;
        match len {
            Some(len) if data.get(eol + 1) == Some(&b'\n') && body_start + len <= data.len() => {
                out.push(Traced {
                    sent,
                    bytes: data[body_start..body_start + len].to_vec(),
                });
                at = body_start + len;
            }
            _ => at = eol,
        }
    }
    out
}

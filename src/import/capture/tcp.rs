//! TCP reassembly for captured SIP: each direction of a connection is put back in sequence order
//! (retransmissions and overlaps dropped, early segments held within a bound, holes that never
//! fill counted and skipped), then cut into SIP messages by Content-Length (RFC 3261 §18.3).
//! A direction that does not start with a SIP start line is ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::{CaptureStats, Captured, Transport};
use crate::sip::msg::{Message, ParseError};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

/// Early segments held per direction while waiting for a hole to fill; beyond either bound the
/// hole is taken as lost from the capture.
const MAX_HELD_SEGMENTS: usize = 64;
const MAX_HELD_BYTES: usize = 256 << 10;
/// A segment further ahead than this is not waited for: the hole is declared at once.
const MAX_AHEAD: u64 = 1 << 20;
/// Longest SIP message framed; a longer one means the stream is not what it seems. Generous:
/// an import should not lose what a lenient peer accepted.
const MAX_MESSAGE: usize = 1 << 20;
/// Longest header section waited for: without its empty line by then, it is not SIP.
const MAX_HEADER: usize = 64 << 10;
/// Longest line searched for a start line; a longer one is not SIP.
const MAX_LINE: usize = 8 << 10;
/// A direction first seen mid-stream is searched this far for a SIP start line before it is
/// given up as not SIP.
const MAX_PROBE: u64 = 64 << 10;

/// One TCP segment as decoded from the IP layer.
pub(super) struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing framed yet: the first line decides whether this is SIP.
    Probe,
    /// SIP; `resync` when bytes were lost and framing restarts at the next start line.
    Sip { resync: bool },
    /// Not SIP: segments are counted and dropped.
    Ignored,
}

/// One direction of one connection.
struct Stream {
    mode: Mode,
    /// The sequence number of the next byte expected.
    next_seq: u32,
    /// Stream position of `next_seq` (64-bit, so held segments order across sequence wrap).
    next_pos: u64,
    /// In-order bytes not yet framed.
    buf: Vec<u8>,
    /// Bytes `buf` must hold before the message at its start can be complete (its headers
    /// announced a body): saves parsing the headers again for every segment of a long body.
    need: usize,
    /// Segments that arrived ahead of `next_pos`, by stream position, with their times.
    held: BTreeMap<u64, (SystemTime, Vec<u8>)>,
    held_bytes: usize,
    /// Bytes searched for a start line while probing a stream first seen mid-way.
    probed: u64,
    /// Whether the SYN was seen: then the very first bytes must be SIP.
    from_start: bool,
    /// The buffer starts where bytes were lost (or where the capture began), perhaps inside
    /// a line: its first line only counts as a start line with a well-known method.
    cut_line: bool,
}

impl Stream {
    fn new(next_seq: u32, from_start: bool) -> Stream {
        Stream {
            mode: Mode::Probe,
            next_seq,
            next_pos: 0,
            buf: Vec::new(),
            need: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            probed: 0,
            from_start,
            cut_line: !from_start,
        }
    }
}

/// Where framed messages go.
struct Sink<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    out: &'a mut VecDeque<Captured>,
    stats: &'a mut CaptureStats,
}

/// All TCP directions of a capture, keyed by (source, destination).
#[derive(Default)]
pub(super) struct Streams {
    streams: HashMap<(SocketAddr, SocketAddr), Stream>,
}

impl Streams {
    pub(super) fn segment(
        &mut self,
        at: SystemTime,
        seg: Segment<'_>,
        out: &mut VecDeque<Captured>,
        stats: &mut CaptureStats,
    ) {
        let key = (seg.src, seg.dst);
        let mut payload = seg.payload;
        let mut seq = seg.seq;
        if seg.flags & SYN != 0 {
            // A new connection (or a reused port pair): start over.
            seq = seq.wrapping_add(1);
            self.streams.insert(key, Stream::new(seq, true));
        }
        let closing = seg.flags & (FIN | RST) != 0;
        if payload.is_empty() && !closing {
            return;
        }
        let stream = match self.streams.get_mut(&key) {
            Some(s) => s,
            None if payload.is_empty() => return,
            // Capture started mid-connection: take this segment as the start and search it
            // for a SIP start line.
            None => self.streams.entry(key).or_insert(Stream::new(seq, false)),
        };
        let mut sink = Sink {
            src: seg.src,
            dst: seg.dst,
            out,
            stats,
        };
        if stream.mode != Mode::Ignored && !payload.is_empty() {
            let ahead = seq.wrapping_sub(stream.next_seq) as i32;
            if ahead < 0 {
                let seen = ahead.unsigned_abs() as usize;
                if payload.len() <= seen {
                    sink.stats.tcp_retransmissions += 1;
                    payload = &[];
                } else {
                    // Overlap: keep only the new tail.
                    payload = &payload[seen..];
                }
            }
            if !payload.is_empty() {
                if ahead > 0 {
                    hold(stream, at, ahead as u64, payload, &mut sink);
                } else {
                    append(stream, payload);
                    frame(stream, at, &mut sink);
                    // This segment may have filled a hole: it completes what was held.
                    take_held(stream, Some(at), &mut sink);
                }
            }
        }
        if closing {
            // Whatever is held will never be completed by this connection.
            flush_held(stream, &mut sink);
            if !stream.buf.is_empty() && matches!(stream.mode, Mode::Sip { resync: false }) {
                sink.stats.tcp_incomplete += 1;
            }
            self.streams.remove(&key);
        }
    }

    /// End of capture: held data is framed across its holes; unfinished messages are counted.
    pub(super) fn finish(&mut self, out: &mut VecDeque<Captured>, stats: &mut CaptureStats) {
        let mut keys: Vec<_> = self.streams.keys().copied().collect();
        // Deterministic output order.
        keys.sort();
        for key in keys {
            let Some(mut stream) = self.streams.remove(&key) else {
                continue;
            };
            let mut sink = Sink {
                src: key.0,
                dst: key.1,
                out: &mut *out,
                stats: &mut *stats,
            };
            flush_held(&mut stream, &mut sink);
            if !stream.buf.is_empty() && matches!(stream.mode, Mode::Sip { resync: false }) {
                sink.stats.tcp_incomplete += 1;
            }
        }
    }
}

/// Appends in-order bytes.
fn append(stream: &mut Stream, payload: &[u8]) {
    if stream.mode != Mode::Ignored {
        stream.buf.extend_from_slice(payload);
    }
    stream.next_seq = stream.next_seq.wrapping_add(payload.len() as u32);
    stream.next_pos += payload.len() as u64;
}

/// Holds a segment that starts `ahead` bytes after the next expected one.
fn hold(stream: &mut Stream, at: SystemTime, ahead: u64, payload: &[u8], sink: &mut Sink<'_>) {
    let pos = stream.next_pos + ahead;
    if ahead > MAX_AHEAD {
        // Far beyond anything a window allows: what lies between is lost from the capture.
        flush_held(stream, sink);
        if pos > stream.next_pos {
            sink.stats.tcp_gaps += 1;
            lose_bytes(stream, pos);
        }
        // A held segment may have reached into this one.
        let seen = (stream.next_pos - pos) as usize;
        if seen < payload.len() {
            append(stream, &payload[seen..]);
            frame(stream, at, sink);
        }
        return;
    }
    match stream.held.get(&pos) {
        Some((_, old)) if old.len() >= payload.len() => {
            sink.stats.tcp_retransmissions += 1;
            return;
        }
        Some((_, old)) => stream.held_bytes -= old.len(),
        None => sink.stats.tcp_out_of_order += 1,
    }
    stream.held_bytes += payload.len();
    stream.held.insert(pos, (at, payload.to_vec()));
    while stream.held.len() > MAX_HELD_SEGMENTS || stream.held_bytes > MAX_HELD_BYTES {
        skip_gap(stream, sink.stats);
        take_held(stream, None, sink);
    }
}

/// Moves held segments that now continue the stream into the buffer, framing after each. A
/// message completed by a held segment gets the later of that segment's time and `filled_at`
/// (the time of the segment that filled the hole, if one did).
fn take_held(stream: &mut Stream, filled_at: Option<SystemTime>, sink: &mut Sink<'_>) {
    while let Some(entry) = stream.held.first_entry() {
        let pos = *entry.key();
        if pos > stream.next_pos {
            break;
        }
        let (at, data) = entry.remove();
        stream.held_bytes -= data.len();
        let seen = (stream.next_pos - pos) as usize;
        if data.len() <= seen {
            sink.stats.tcp_retransmissions += 1;
            continue;
        }
        append(stream, &data[seen..]);
        frame(stream, filled_at.map_or(at, |f| f.max(at)), sink);
    }
}

/// Frames everything held, declaring each hole before it lost.
fn flush_held(stream: &mut Stream, sink: &mut Sink<'_>) {
    while !stream.held.is_empty() {
        skip_gap(stream, sink.stats);
        take_held(stream, None, sink);
    }
}

/// Declares the hole before the first held segment lost: the stream continues there.
fn skip_gap(stream: &mut Stream, stats: &mut CaptureStats) {
    if let Some((&pos, _)) = stream.held.first_key_value() {
        if pos > stream.next_pos {
            stats.tcp_gaps += 1;
            lose_bytes(stream, pos);
        }
    }
}

/// Moves the expected position to `pos`, forgetting the unframed bytes before the hole: the
/// message they began cannot be completed. Framing restarts at the next start line.
fn lose_bytes(stream: &mut Stream, pos: u64) {
    let skipped = pos - stream.next_pos;
    stream.next_seq = stream.next_seq.wrapping_add(skipped as u32);
    stream.next_pos = pos;
    stream.buf.clear();
    stream.need = 0;
    stream.cut_line = true;
    match stream.mode {
        Mode::Sip { .. } => stream.mode = Mode::Sip { resync: true },
        Mode::Probe => stream.from_start = false,
        Mode::Ignored => {}
    }
}

/// Frames as many whole SIP messages as the buffer holds; they are stamped `at`.
fn frame(stream: &mut Stream, at: SystemTime, sink: &mut Sink<'_>) {
    loop {
        // Keep-alives (RFC 5626 §3.5.1) and stray line ends between messages.
        let lead = stream
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        stream.buf.drain(..lead);
        if stream.buf.is_empty() {
            return;
        }
        match stream.mode {
            Mode::Ignored => {
                stream.buf = Vec::new();
                return;
            }
            Mode::Probe if stream.from_start => match first_line(&stream.buf) {
                Some(line) if is_start_line(line) => stream.mode = Mode::Sip { resync: false },
                None if stream.buf.len() <= MAX_LINE => return,
                _ => {
                    ignore(stream, sink.stats);
                    return;
                }
            },
            Mode::Probe | Mode::Sip { resync: true } => {
                let before = stream.buf.len();
                let found = seek_start_line(&mut stream.buf, &mut stream.cut_line);
                if stream.mode == Mode::Probe {
                    stream.probed += (before - stream.buf.len()) as u64;
                    if !found && stream.probed + stream.buf.len() as u64 > MAX_PROBE {
                        ignore(stream, sink.stats);
                        return;
                    }
                }
                if !found {
                    return;
                }
                stream.mode = Mode::Sip { resync: false };
            }
            Mode::Sip { resync: false } => {}
        }
        if stream.buf.len() < stream.need {
            return;
        }
        stream.need = 0;
        match Message::parse_stream(&stream.buf) {
            Ok((_, n)) if n <= MAX_MESSAGE => {
                sink.stats.tcp_messages += 1;
                sink.out.push_back(Captured {
                    at,
                    transport: Transport::Tcp,
                    src: sink.src,
                    dst: sink.dst,
                    payload: stream.buf[..n].to_vec(),
                });
                stream.buf.drain(..n);
            }
            Err(ParseError::Incomplete) if stream.buf.len() <= MAX_HEADER => return,
            Err(ParseError::BodyTruncated {
                declared,
                available,
            }) if needed(stream.buf.len(), available, declared) <= MAX_MESSAGE => {
                stream.need = needed(stream.buf.len(), available, declared);
                return;
            }
            // Oversize, or bytes that do not frame: skip the start line and look for the next.
            _ => {
                sink.stats.tcp_unframable += 1;
                let line_end = stream
                    .buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(stream.buf.len(), |i| i + 1);
                stream.buf.drain(..line_end);
                stream.mode = Mode::Sip { resync: true };
            }
        }
    }
}

/// Length of a message whose body has `available` of `declared` bytes in a `len`-byte buffer.
fn needed(len: usize, available: usize, declared: usize) -> usize {
    len.saturating_sub(available).saturating_add(declared)
}

fn ignore(stream: &mut Stream, stats: &mut CaptureStats) {
    stream.mode = Mode::Ignored;
    stream.buf = Vec::new();
    stream.held.clear();
    stream.held_bytes = 0;
    stats.tcp_non_sip_streams += 1;
}

/// The first line of `buf` without its line end, if a line end has arrived.
fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..end];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// Drops bytes up to the first SIP start line; `false` if there is none yet (the unfinished
/// last line is kept, if it is short enough to become one). `cut_line`: the first line may be
/// the tail of a longer one (cleared once a line end is passed).
///
/// A start line may also be found glued to the end of a line: a body without a final CRLF (a
/// MESSAGE text, say) runs straight into the next message.
fn seek_start_line(buf: &mut Vec<u8>, cut_line: &mut bool) -> bool {
    let mut start = 0;
    while start < buf.len() {
        let Some(len) = buf[start..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &buf[start..start + len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let whole = if *cut_line {
            is_start_line(line) && has_known_method(line)
        } else {
            is_start_line(line)
        };
        let found = if whole {
            Some(0)
        } else {
            glued_start_line(line)
        };
        if let Some(k) = found {
            buf.drain(..start + k);
            return true;
        }
        start += len + 1;
        *cut_line = false;
    }
    if buf.len() - start > MAX_LINE {
        start = buf.len();
        *cut_line = true;
    }
    buf.drain(..start);
    false
}

/// Methods of RFC 3261 and its common extensions: a line cut by a gap can still look like a
/// request line (`VITE sip:...`), so only these are trusted there.
const KNOWN_METHODS: [&[u8]; 14] = [
    b"SUBSCRIBE",
    b"REGISTER",
    b"OPTIONS",
    b"MESSAGE",
    b"PUBLISH",
    b"CANCEL",
    b"INVITE",
    b"NOTIFY",
    b"UPDATE",
    b"PRACK",
    b"REFER",
    b"INFO",
    b"BYE",
    b"ACK",
];

/// A status line, or a request line whose method is well known.
fn has_known_method(line: &[u8]) -> bool {
    line.len() > 4 && line[..4].eq_ignore_ascii_case(b"SIP/")
        || KNOWN_METHODS
            .iter()
            .any(|m| line.starts_with(m) && line.get(m.len()) == Some(&b' '))
}

/// Where a start line begins inside `line` after other bytes, if one does: `SIP/2.0 ddd ...` or
/// a well-known method directly before ` Request-URI SIP/2.0` at the end.
fn glued_start_line(line: &[u8]) -> Option<usize> {
    const VERSION: &[u8] = b"SIP/2.0";
    if line.len() > MAX_LINE || line.len() < VERSION.len() + 2 {
        return None;
    }
    let tail = &line[line.len() - VERSION.len()..];
    if tail.eq_ignore_ascii_case(VERSION) && line[line.len() - VERSION.len() - 1] == b' ' {
        let head = &line[..line.len() - VERSION.len() - 1];
        let uri_space = head.iter().rposition(|&b| b == b' ')?;
        let word = &head[..uri_space];
        return KNOWN_METHODS
            .iter()
            .find(|m| word.len() > m.len() && word.ends_with(m))
            .map(|m| uri_space - m.len());
    }
    (1..=line.len() - VERSION.len())
        .find(|&k| line[k..].starts_with(VERSION) && is_start_line(&line[k..]))
}

/// `Method SP Request-URI SP SIP/x.y` or `SIP/x.y SP 3DIGIT SP Reason` (RFC 3261 §7.1, §7.2).
fn is_start_line(line: &[u8]) -> bool {
    let is_version = |v: &[u8]| v.len() > 4 && v[..4].eq_ignore_ascii_case(b"SIP/");
    if line.len() > MAX_LINE {
        return false;
    }
    if is_version(line) {
        // Status line: version, space, three digits, then a space or the end.
        let Some(sp) = line.iter().position(|&b| b == b' ') else {
            return false;
        };
        let code = &line[sp + 1..];
        return code.len() >= 3
            && code[..3].iter().all(u8::is_ascii_digit)
            && (code.len() == 3 || code[3] == b' ');
    }
    // A method is a token, so a request line never begins with "SIP/".
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|&b| is_token_char(b))
        && !uri.is_empty()
        && is_version(version)
}

/// RFC 3261 §25.1 token characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_lines() {
        for ok in [
            &b"INVITE sip:bob@example.com SIP/2.0"[..],
            b"SIP/2.0 200 OK",
            b"SIP/2.0 100",
            b"sip/2.0 180 Ringing",
            b"NEWMETHOD sip:x SIP/2.0",
        ] {
            assert!(is_start_line(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"GET / HTTP/1.1"[..],
            b"HTTP/1.1 200 OK",
            b"SIP/2.0 20 OK",
            b"INVITE sip:bob@example.com",
            b"INVITE  sip:bob SIP/2.0",
            b"Via: SIP/2.0/TCP host",
            b"\x16\x03\x01",
            b"",
        ] {
            assert!(!is_start_line(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn seek_keeps_short_partial_line() {
        let mut cut = true;
        let mut buf = b"garbage\r\nmore garbage\r\nINVITE sip:a@b SI".to_vec();
        assert!(!seek_start_line(&mut buf, &mut cut));
        assert_eq!(buf, b"INVITE sip:a@b SI");
        assert!(!cut);
        buf.extend_from_slice(b"P/2.0\r\n");
        assert!(seek_start_line(&mut buf, &mut cut));
        assert!(buf.starts_with(b"INVITE"));
    }

    #[test]
    fn seek_distrusts_a_cut_first_line() {
        // The tail of "INVITE sip:..." after a gap, then a real message.
        let mut cut = true;
        let mut buf = b"VITE sip:a@b SIP/2.0\r\nVia: x\r\nXFOO sip:a@b SIP/2.0\r\n".to_vec();
        assert!(seek_start_line(&mut buf, &mut cut));
        assert!(
            buf.starts_with(b"XFOO"),
            "a whole line may carry an extension method"
        );
        let mut cut = true;
        let mut buf = b"SIP/2.0 200 OK\r\n".to_vec();
        assert!(seek_start_line(&mut buf, &mut cut));
    }

    #[test]
    fn start_lines_glued_to_a_body() {
        assert_eq!(glued_start_line(b"helloBYE sip:b@b SIP/2.0"), Some(5));
        assert_eq!(glued_start_line(b"okSIP/2.0 200 OK"), Some(2));
        assert_eq!(glued_start_line(b"xPRACK sip:b SIP/2.0"), Some(1));
        assert_eq!(glued_start_line(b"BYE sip:b@b SIP/2.0"), None);
        assert_eq!(glued_start_line(b"helloFOO sip:b@b SIP/2.0"), None);
        assert_eq!(glued_start_line(b"Via: SIP/2.0/TCP host"), None);
    }
}

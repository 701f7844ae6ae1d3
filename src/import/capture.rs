//! Capture reader: classic pcap and pcapng files in, time-stamped UDP datagrams and whole SIP
//! messages (framed out of reassembled TCP streams) out. The file formats are parsed here; the
//! link, IP and fragment layers live in `net`, TCP reassembly and SIP framing in `tcp`.
//!
//! Formats follow draft-ietf-opsawg-pcap (classic pcap: both byte orders, microsecond and
//! nanosecond magic, the modified/Kuznetzov variant) and draft-ietf-opsawg-pcapng (sections of
//! either byte order, interfaces with their own link type, `if_tsresol` and `if_tsoffset`,
//! enhanced, simple and obsolete packet blocks; other blocks are skipped).
//!
//! Nothing here trusts the file: every length is checked before it is used, a damaged file gives a
//! [`CaptureError`] naming the byte offset of the bad record, and a file cut off inside its last
//! record simply ends there (counted in [`CaptureStats::truncated_records`]).

mod net;
mod tcp;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use crate::config::Transport;

/// One datagram or SIP message as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Capture timestamp. For a reassembled IP datagram or a TCP message: the time of the packet
    /// that completed it.
    pub at: SystemTime,
    /// UDP: a datagram (any payload: SIP, RTP, RTCP, DNS...). TCP: one SIP message.
    pub transport: Transport,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// UDP: the whole datagram payload (IPv4/IPv6 fragments reassembled). TCP: one whole SIP
    /// message (start line, headers, Content-Length bytes of body) framed out of the reassembled
    /// byte stream; keep-alive CRLFs between messages are dropped.
    pub payload: Vec<u8>,
}

/// Which of the two file formats a capture is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic libpcap format (including the nanosecond and modified variants).
    Pcap,
    /// pcapng.
    PcapNg,
}

/// What the reader saw and what it had to leave out. Each packet record is counted once in one
/// of `udp`, `tcp_segments`, `fragments`, `skipped_non_ip`, `skipped_other`, `truncated` and
/// `malformed`, except that a reassembled datagram is counted there too (and in
/// `fragments_reassembled`): `packets = udp + tcp_segments + fragments - fragments_reassembled +
/// skipped_non_ip + skipped_other + truncated + malformed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// File format, once the header has been read.
    pub format: Option<CaptureFormat>,
    /// Packet records read (pcap records; pcapng EPB, SPB and PB blocks).
    pub packets: u64,
    /// Earliest packet timestamp in the file (of any packet, IP or not).
    pub first: Option<SystemTime>,
    /// Latest packet timestamp in the file.
    pub last: Option<SystemTime>,
    /// UDP datagrams delivered (a reassembled datagram counts once).
    pub udp: u64,
    /// TCP segments seen (with or without payload, SIP or not).
    pub tcp_segments: u64,
    /// SIP messages framed out of TCP streams.
    pub tcp_messages: u64,
    /// Packets that carry no IP: ARP, LLDP, STP, unknown link types or ethertypes.
    pub skipped_non_ip: u64,
    /// IP packets that are neither UDP nor TCP (ICMP, IGMP, ESP, ...).
    pub skipped_other: u64,
    /// Packets cut short (snap length) before the end of the headers or payload they announce.
    pub truncated: u64,
    /// Packets whose headers make no sense (bad IP version, header lengths, UDP length...).
    pub malformed: u64,
    /// 1 when the file ends inside a record: the capture ends there, everything before it counts.
    pub truncated_records: u64,
    /// IP fragments seen (IPv4 with MF or an offset; IPv6 with a non-atomic fragment header).
    pub fragments: u64,
    /// Datagrams rebuilt from fragments.
    pub fragments_reassembled: u64,
    /// Fragment sets given up: incomplete after the timeout or at the end of the capture,
    /// inconsistent, or evicted because too many were pending.
    pub fragments_dropped: u64,
    /// TCP segments whose payload had already been received (retransmissions, full overlaps).
    pub tcp_retransmissions: u64,
    /// TCP segments that arrived ahead of a hole and were held until it filled.
    pub tcp_out_of_order: u64,
    /// Holes in a TCP stream that never filled (missing from the capture): the stream was
    /// resynchronised at the next SIP start line after each.
    pub tcp_gaps: u64,
    /// Stretches of a SIP stream that could not be framed as a SIP message (bad start line,
    /// headers, missing Content-Length, oversize) and were skipped up to the next start line.
    pub tcp_unframable: u64,
    /// TCP directions ignored because they do not carry SIP (HTTP, TLS, ...).
    pub tcp_non_sip_streams: u64,
    /// TCP directions that ended (FIN, RST or end of capture) inside an unfinished SIP message.
    pub tcp_incomplete: u64,
}

impl CaptureStats {
    /// Time from the first to the last packet, zero for an empty capture.
    pub fn duration(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.duration_since(first).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
}

/// A capture that cannot be read. Offsets count bytes from the start of the file and name the
/// start of the record or block at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading failed.
    #[error("read error at byte {offset}: {source}")]
    Io {
        /// Where reading stopped.
        offset: u64,
        /// Why.
        source: io::Error,
    },
    /// Neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng file: magic {magic:02x?} at byte 0")]
    UnknownFormat {
        /// The first bytes (fewer than four if the file is that short).
        magic: Vec<u8>,
    },
    /// A header, record or block that breaks the format.
    #[error("byte {offset}: {what}")]
    Malformed {
        /// Start of the record or block at fault.
        offset: u64,
        /// What is wrong with it.
        what: String,
    },
}

/// Reads a whole capture file: UDP datagrams and SIP-over-TCP messages sorted by capture time
/// (stably, so packets with equal times keep file order), and the counters.
pub fn read_capture(path: &Path) -> Result<(Vec<Captured>, CaptureStats), CaptureError> {
    let file = File::open(path).map_err(|source| CaptureError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read_capture_from(BufReader::with_capacity(1 << 16, file))
}

/// [`read_capture`] over any reader (an in-memory file, stdin).
pub fn read_capture_from<R: Read>(src: R) -> Result<(Vec<Captured>, CaptureStats), CaptureError> {
    let mut capture = Capture::new(src)?;
    let mut out = Vec::new();
    for item in capture.by_ref() {
        out.push(item?);
    }
    // Stable: equal timestamps keep file order (a request and its retransmission, say).
    out.sort_by_key(|c| c.at);
    Ok((out, capture.stats))
}

/// Streaming form: yields datagrams and messages in file order (a TCP message when the packet
/// completing it is read), without sorting and without holding the whole capture. After an
/// error the iterator ends.
pub struct Capture<R> {
    records: RecordReader<R>,
    decoder: net::Decoder,
    queue: VecDeque<Captured>,
    stats: CaptureStats,
    done: bool,
}

impl<R: Read> Capture<R> {
    /// Reads the file header (pcap) or first section header (pcapng).
    pub fn new(src: R) -> Result<Self, CaptureError> {
        let records = RecordReader::open(src)?;
        let stats = CaptureStats {
            format: Some(records.format()),
            ..CaptureStats::default()
        };
        Ok(Capture {
            records,
            decoder: net::Decoder::default(),
            queue: VecDeque::new(),
            stats,
            done: false,
        })
    }

    /// Counters so far (final once the iterator has ended).
    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }
}

impl<R: Read> Iterator for Capture<R> {
    type Item = Result<Captured, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Some(Ok(c));
            }
            if self.done {
                return None;
            }
            match self.records.next_record(&mut self.stats) {
                Ok(Some(rec)) => {
                    let stats = &mut self.stats;
                    stats.packets += 1;
                    stats.first = Some(stats.first.map_or(rec.at, |t| t.min(rec.at)));
                    stats.last = Some(stats.last.map_or(rec.at, |t| t.max(rec.at)));
                    self.decoder
                        .packet(rec.at, rec.link, rec.data, &mut self.queue, stats);
                }
                Ok(None) => {
                    self.decoder.finish(&mut self.queue, &mut self.stats);
                    self.done = true;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Larger records or blocks than this are taken for corruption rather than allocated. Real
/// snap lengths stop at 256 KiB; this leaves room for odd writers.
const MAX_RECORD: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    fn u64(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Endian::Little => u64::from_le_bytes(a),
            Endian::Big => u64::from_be_bytes(a),
        }
    }
}

/// Timestamp units of a pcapng interface (`if_tsresol`, pcapng §4.2).
#[derive(Debug, Clone, Copy)]
enum Resolution {
    /// 10^-n seconds, n <= 19 (beyond that a u64 count could not hold one second).
    Decimal(u32),
    /// 2^-n seconds, n <= 63.
    Binary(u32),
}

#[derive(Debug, Clone)]
struct Interface {
    link: u16,
    snaplen: u32,
    resolution: Resolution,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_secs: i64,
}

enum Kind {
    Pcap {
        endian: Endian,
        nanos: bool,
        /// Modified (Kuznetzov) pcap: 8 more bytes per record header.
        modified: bool,
        link: u16,
    },
    PcapNg {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// One packet record, borrowing the reader's buffer.
struct Record<'a> {
    at: SystemTime,
    link: u16,
    data: &'a [u8],
}

/// Reads records one at a time into a reused buffer (no allocation per packet once the buffer
/// has grown to the largest record).
struct RecordReader<R> {
    src: R,
    /// Bytes consumed so far: the offset of the next record.
    offset: u64,
    kind: Kind,
    buf: Vec<u8>,
    /// pcapng simple packet blocks carry no time: they get the previous packet's.
    last_at: SystemTime,
}

/// Result of trying to fill a buffer.
enum Fill {
    Full,
    /// End of file before the first byte.
    Eof,
    /// End of file part way.
    Partial,
}

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

impl<R: Read> RecordReader<R> {
    fn open(mut src: R) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut src, &mut magic)
            .map_err(|source| CaptureError::Io { offset: 0, source })?;
        if got < 4 {
            return Err(CaptureError::UnknownFormat {
                magic: magic[..got].to_vec(),
            });
        }
        let mut reader = RecordReader {
            src,
            offset: 4,
            kind: Kind::Pcap {
                endian: Endian::Little,
                nanos: false,
                modified: false,
                link: 0,
            },
            buf: Vec::new(),
            last_at: SystemTime::UNIX_EPOCH,
        };
        let (endian, nanos, modified) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (Endian::Little, false, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (Endian::Big, false, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (Endian::Little, true, false),
            [0xa1, 0xb2, 0x3c, 0x4d] => (Endian::Big, true, false),
            [0x34, 0xcd, 0xb2, 0xa1] => (Endian::Little, false, true),
            [0xa1, 0xb2, 0xcd, 0x34] => (Endian::Big, false, true),
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                reader.kind = Kind::PcapNg {
                    endian: Endian::Little,
                    interfaces: Vec::new(),
                };
                reader.section_header(0)?;
                return Ok(reader);
            }
            _ => {
                return Err(CaptureError::UnknownFormat {
                    magic: magic.to_vec(),
                })
            }
        };
        // version (2+2), thiszone, sigfigs, snaplen, link type and FCS bits.
        let mut hdr = [0u8; 20];
        match reader.fill(&mut hdr)? {
            Fill::Full => {}
            _ => return Err(reader.malformed(0, "file header cut short")),
        }
        // The upper 16 bits carry FCS information (pcap §4); payload lengths come from the IP
        // headers, so a trailing FCS is ignored without looking at them.
        let link = (endian.u32(&hdr[16..20]) & 0xFFFF) as u16;
        reader.kind = Kind::Pcap {
            endian,
            nanos,
            modified,
            link,
        };
        Ok(reader)
    }

    fn format(&self) -> CaptureFormat {
        match self.kind {
            Kind::Pcap { .. } => CaptureFormat::Pcap,
            Kind::PcapNg { .. } => CaptureFormat::PcapNg,
        }
    }

    fn malformed(&self, offset: u64, what: impl Into<String>) -> CaptureError {
        CaptureError::Malformed {
            offset,
            what: what.into(),
        }
    }

    /// Fills `buf` from the file, advancing the offset.
    fn fill(&mut self, buf: &mut [u8]) -> Result<Fill, CaptureError> {
        let got = read_up_to(&mut self.src, buf).map_err(|source| CaptureError::Io {
            offset: self.offset,
            source,
        })?;
        self.offset += got as u64;
        Ok(if got == buf.len() {
            Fill::Full
        } else if got == 0 {
            Fill::Eof
        } else {
            Fill::Partial
        })
    }

    /// Reads `len` bytes into `self.buf` (replacing its contents). The buffer grows only as
    /// bytes actually arrive, so a corrupt huge length in a short file allocates nothing big.
    fn fill_buf(&mut self, len: usize) -> Result<Fill, CaptureError> {
        self.buf.clear();
        let got = (&mut self.src)
            .take(len as u64)
            .read_to_end(&mut self.buf)
            .map_err(|source| CaptureError::Io {
                offset: self.offset,
                source,
            })?;
        self.offset += got as u64;
        Ok(if got == len {
            Fill::Full
        } else if got == 0 {
            Fill::Eof
        } else {
            Fill::Partial
        })
    }

    /// The next packet record, `None` at the end of the file (or at a record cut off by the
    /// end of the file, which is counted).
    fn next_record(
        &mut self,
        stats: &mut CaptureStats,
    ) -> Result<Option<Record<'_>>, CaptureError> {
        match self.kind {
            Kind::Pcap { .. } => self.next_pcap(stats),
            Kind::PcapNg { .. } => self.next_pcapng(stats),
        }
    }

    fn next_pcap(&mut self, stats: &mut CaptureStats) -> Result<Option<Record<'_>>, CaptureError> {
        let Kind::Pcap {
            endian,
            nanos,
            modified,
            link,
        } = self.kind
        else {
            return Ok(None);
        };
        let start = self.offset;
        let mut hdr = [0u8; 24];
        let hlen = if modified { 24 } else { 16 };
        match self.fill(&mut hdr[..hlen])? {
            Fill::Full => {}
            Fill::Eof => return Ok(None),
            Fill::Partial => {
                stats.truncated_records += 1;
                return Ok(None);
            }
        }
        let secs = endian.u32(&hdr[0..4]);
        let frac = endian.u32(&hdr[4..8]);
        let caplen = endian.u32(&hdr[8..12]);
        if caplen > MAX_RECORD {
            return Err(self.malformed(
                start,
                format!("record length {caplen} is beyond any snap length (corrupt file?)"),
            ));
        }
        if !matches!(self.fill_buf(caplen as usize)?, Fill::Full) {
            stats.truncated_records += 1;
            return Ok(None);
        }
        let nanos = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        // Duration normalises a sub-second field of 10^9 or more (seen from sloppy writers).
        let at = epoch_plus(i128::from(secs), Duration::from_nanos(nanos));
        self.last_at = at;
        Ok(Some(Record {
            at,
            link,
            data: &self.buf,
        }))
    }

    fn next_pcapng(
        &mut self,
        stats: &mut CaptureStats,
    ) -> Result<Option<Record<'_>>, CaptureError> {
        loop {
            let start = self.offset;
            let mut head = [0u8; 4];
            match self.fill(&mut head)? {
                Fill::Full => {}
                Fill::Eof => return Ok(None),
                Fill::Partial => {
                    stats.truncated_records += 1;
                    return Ok(None);
                }
            }
            if head == PCAPNG_SHB.to_be_bytes() {
                match self.section_header_or_eof(start)? {
                    true => continue,
                    false => {
                        stats.truncated_records += 1;
                        return Ok(None);
                    }
                }
            }
            let Kind::PcapNg { endian, .. } = self.kind else {
                return Ok(None);
            };
            let block_type = endian.u32(&head);
            let mut len = [0u8; 4];
            match self.fill(&mut len)? {
                Fill::Full => {}
                _ => {
                    stats.truncated_records += 1;
                    return Ok(None);
                }
            }
            let total = endian.u32(&len);
            if total < 12 || total % 4 != 0 || total > MAX_RECORD {
                return Err(self.malformed(
                    start,
                    format!("block type {block_type:#x} has an invalid total length {total}"),
                ));
            }
            // Body plus the trailing copy of the total length.
            match self.fill_buf(total as usize - 8)? {
                Fill::Full => {}
                _ => {
                    stats.truncated_records += 1;
                    return Ok(None);
                }
            }
            let body_len = self.buf.len() - 4;
            if endian.u32(&self.buf[body_len..]) != total {
                return Err(self.malformed(
                    start,
                    format!(
                        "block type {block_type:#x}: trailing length {} differs from {total}",
                        endian.u32(&self.buf[body_len..])
                    ),
                ));
            }
            match block_type {
                PCAPNG_IDB => self.interface(start, endian, body_len)?,
                PCAPNG_EPB | PCAPNG_PB | PCAPNG_SPB => {
                    let (at, link, range) =
                        self.packet_block(start, endian, block_type, body_len)?;
                    self.last_at = at;
                    return Ok(Some(Record {
                        at,
                        link,
                        data: &self.buf[range],
                    }));
                }
                // Name resolution, interface statistics, decryption secrets, custom...
                _ => {}
            }
        }
    }

    /// Section header block whose 4-byte type has been read (at `start`).
    fn section_header(&mut self, start: u64) -> Result<(), CaptureError> {
        match self.section_header_or_eof(start)? {
            true => Ok(()),
            false => Err(self.malformed(start, "section header block cut short")),
        }
    }

    /// Reads a section header after its type; `false` if the file ends inside it.
    fn section_header_or_eof(&mut self, start: u64) -> Result<bool, CaptureError> {
        let mut head = [0u8; 8];
        match self.fill(&mut head)? {
            Fill::Full => {}
            _ => return Ok(false),
        }
        let endian = match head[4..8] {
            [0x4d, 0x3c, 0x2b, 0x1a] => Endian::Little,
            [0x1a, 0x2b, 0x3c, 0x4d] => Endian::Big,
            _ => {
                return Err(self.malformed(
                    start,
                    format!(
                        "section header with unknown byte-order magic {:02x?}",
                        &head[4..8]
                    ),
                ))
            }
        };
        debug_assert_eq!(endian.u32(&head[4..8]), BYTE_ORDER_MAGIC);
        let total = endian.u32(&head[0..4]);
        if total < 28 || total % 4 != 0 || total > MAX_RECORD {
            return Err(self.malformed(
                start,
                format!("section header has an invalid total length {total}"),
            ));
        }
        match self.fill_buf(total as usize - 12)? {
            Fill::Full => {}
            _ => return Ok(false),
        }
        let body_len = self.buf.len() - 4;
        if endian.u32(&self.buf[body_len..]) != total {
            return Err(self.malformed(start, "section header: trailing length differs"));
        }
        let major = endian.u16(&self.buf[0..2]);
        if major != 1 {
            return Err(self.malformed(
                start,
                format!("pcapng major version {major} is not supported"),
            ));
        }
        self.kind = Kind::PcapNg {
            endian,
            interfaces: Vec::new(),
        };
        Ok(true)
    }

    /// Interface description block: body in `self.buf[..body_len]`.
    fn interface(
        &mut self,
        start: u64,
        endian: Endian,
        body_len: usize,
    ) -> Result<(), CaptureError> {
        if body_len < 8 {
            return Err(self.malformed(start, "interface description block too short"));
        }
        let body = &self.buf[..body_len];
        let mut iface = Interface {
            link: endian.u16(&body[0..2]),
            snaplen: endian.u32(&body[4..8]),
            resolution: Resolution::Decimal(6),
            offset_secs: 0,
        };
        let mut bad = None;
        for_each_option(endian, &body[8..], |code, value| {
            match (code, value.len()) {
                // if_tsresol
                (9, 1) => {
                    let v = value[0];
                    iface.resolution = if v & 0x80 == 0 {
                        Resolution::Decimal(u32::from(v))
                    } else {
                        Resolution::Binary(u32::from(v & 0x7f))
                    };
                    match iface.resolution {
                        Resolution::Decimal(n) if n > 19 => {
                            bad = Some(format!("if_tsresol 10^-{n}"))
                        }
                        Resolution::Binary(n) if n > 63 => bad = Some(format!("if_tsresol 2^-{n}")),
                        _ => {}
                    }
                }
                // if_tsoffset
                (14, 8) => iface.offset_secs = endian.u64(value) as i64,
                _ => {}
            }
        })
        .map_err(|what| self.malformed(start, format!("interface description block: {what}")))?;
        if let Some(what) = bad {
            return Err(self.malformed(start, format!("unsupported {what}")));
        }
        if let Kind::PcapNg { interfaces, .. } = &mut self.kind {
            interfaces.push(iface);
        }
        Ok(())
    }

    /// EPB, SPB or obsolete PB: body in `self.buf[..body_len]`. Returns the time, link type and
    /// where the packet bytes are in `self.buf`.
    fn packet_block(
        &self,
        start: u64,
        endian: Endian,
        block_type: u32,
        body_len: usize,
    ) -> Result<(SystemTime, u16, std::ops::Range<usize>), CaptureError> {
        let Kind::PcapNg { interfaces, .. } = &self.kind else {
            return Err(self.malformed(start, "packet block outside a section"));
        };
        let body = &self.buf[..body_len];
        let (name, fixed) = match block_type {
            PCAPNG_EPB => ("enhanced packet block", 20),
            PCAPNG_PB => ("packet block", 20),
            _ => ("simple packet block", 4),
        };
        if body_len < fixed {
            return Err(self.malformed(start, format!("{name} too short")));
        }
        let iface_id = match block_type {
            PCAPNG_EPB => endian.u32(&body[0..4]) as usize,
            PCAPNG_PB => usize::from(endian.u16(&body[0..2])),
            _ => 0,
        };
        let Some(iface) = interfaces.get(iface_id) else {
            return Err(self.malformed(
                start,
                format!(
                    "{name} names interface {iface_id}, the section describes {}",
                    interfaces.len()
                ),
            ));
        };
        if block_type == PCAPNG_SPB {
            // The captured length is implied: original length, cut to the snap length and to
            // what the block holds (pcapng §4.4).
            let orig = endian.u32(&body[0..4]) as usize;
            let mut len = orig.min(body_len - 4);
            if iface.snaplen != 0 {
                len = len.min(iface.snaplen as usize);
            }
            return Ok((self.last_at, iface.link, 4..4 + len));
        }
        let ts = (u64::from(endian.u32(&body[4..8])) << 32) | u64::from(endian.u32(&body[8..12]));
        let caplen = endian.u32(&body[12..16]) as usize;
        if caplen > body_len - 20 {
            return Err(self.malformed(
                start,
                format!(
                    "{name}: captured length {caplen} exceeds the {} bytes in the block",
                    body_len - 20
                ),
            ));
        }
        Ok((timestamp(iface, ts), iface.link, 20..20 + caplen))
    }
}

/// Walks pcapng options (code, length, value padded to 4 bytes) until `opt_endofopt` or the end.
fn for_each_option(
    endian: Endian,
    mut opts: &[u8],
    mut f: impl FnMut(u16, &[u8]),
) -> Result<(), String> {
    while opts.len() >= 4 {
        let code = endian.u16(&opts[0..2]);
        let len = usize::from(endian.u16(&opts[2..4]));
        if code == 0 {
            return Ok(());
        }
        let padded = (len + 3) & !3;
        if 4 + padded > opts.len() {
            return Err(format!("option {code} of {len} bytes overruns the block"));
        }
        f(code, &opts[4..4 + len]);
        opts = &opts[4 + padded..];
    }
    Ok(())
}

/// A pcapng timestamp in the interface's units, plus its offset.
fn timestamp(iface: &Interface, ts: u64) -> SystemTime {
    let (secs, nanos) = match iface.resolution {
        Resolution::Decimal(n) => {
            let unit = 10u64.pow(n);
            let frac = ts % unit;
            let nanos = if n <= 9 {
                frac * 10u64.pow(9 - n)
            } else {
                frac / 10u64.pow(n - 9)
            };
            (ts / unit, nanos)
        }
        Resolution::Binary(n) => {
            let frac = ts & ((1u64 << n) - 1);
            let nanos = ((u128::from(frac) * 1_000_000_000) >> n) as u64;
            (ts >> n, nanos)
        }
    };
    epoch_plus(
        i128::from(secs) + i128::from(iface.offset_secs),
        Duration::from_nanos(nanos),
    )
}

/// The Unix epoch plus `secs` (may be negative) and `frac`; out-of-range values (only a broken
/// file has them) saturate to the epoch rather than panic.
fn epoch_plus(secs: i128, frac: Duration) -> SystemTime {
    let base = if secs >= 0 {
        u64::try_from(secs)
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
    } else {
        u64::try_from(-secs)
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(s)))
    };
    base.and_then(|b| b.checked_add(frac))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests;

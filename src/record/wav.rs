//! Crash-safe 16-bit PCM WAV files: a writer whose header is brought up to date and fsynced on
//! request, repair of a file left behind by a crash, and SHA-256 of a finished file. The layout is
//! fixed: RIFF/WAVE, a 16-byte "fmt " chunk (format 1), then "data" at byte 36; 44-byte header.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Size of our canonical header; samples start at this offset.
pub const HEADER_LEN: u64 = 44;
/// Write buffer in front of the file: large enough that appends rarely reach the kernel.
const WRITE_BUFFER: usize = 64 * 1024;
/// Largest data chunk a RIFF file can describe (its sizes are 32-bit; RIFF size = 36 + data).
const MAX_DATA_BYTES: u64 = u32::MAX as u64 - 36;
/// Bytes per sample: 16-bit PCM only.
const BYTES_PER_SAMPLE: u16 = 2;

/// What can go wrong writing, repairing or hashing a WAV.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The operating system refused a read, write, seek or sync.
    #[error("WAV IO: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a WAV in our layout; the text says which check failed.
    #[error("not a recproxy WAV file: {0}")]
    NotWav(String),
    /// Sample rate or channel count cannot be described in a WAV header.
    #[error("unsupported WAV format: {rate} Hz, {channels} channels")]
    BadFormat {
        /// Requested sample rate.
        rate: u32,
        /// Requested channel count.
        channels: u16,
    },
    /// An append held a number of samples that is not a whole number of frames.
    #[error("{samples} samples are not a whole number of {channels}-channel frames")]
    PartialFrame {
        /// Samples in the rejected append.
        samples: usize,
        /// Channels per frame.
        channels: u16,
    },
    /// The data would outgrow the 4 GiB a RIFF header can describe.
    #[error("WAV data would exceed the 4 GiB RIFF limit")]
    TooLarge,
}

/// Sizes and format of a WAV file as last written or repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavSummary {
    /// Length of the file in bytes (header included).
    pub file_bytes: u64,
    /// Length of the sample data in bytes.
    pub data_bytes: u64,
    /// Number of frames (one sample per channel).
    pub frames: u64,
    /// Sample rate in Hz.
    pub rate: u32,
    /// Channel count.
    pub channels: u16,
}

/// An open WAV being appended to; owns the file and counts what was written.
pub struct WavWriter {
    file: BufWriter<File>,
    path: PathBuf,
    rate: u32,
    channels: u16,
    /// Bytes of sample data handed to `append` so far (buffered ones included).
    data_bytes: u64,
}

impl std::fmt::Debug for WavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("path", &self.path)
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .field("data_bytes", &self.data_bytes)
            .finish()
    }
}

/// The 44-byte header for `data_bytes` of samples (RIFF and WAVE as Microsoft defined them).
fn header(rate: u32, channels: u16, data_bytes: u32) -> [u8; HEADER_LEN as usize] {
    let block_align = channels.saturating_mul(BYTES_PER_SAMPLE);
    let byte_rate = rate.saturating_mul(u32::from(block_align));
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // WAVE_FORMAT_PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&(BYTES_PER_SAMPLE * 8).to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Writes the two size fields of the header for `data_bytes` (file offsets 4 and 40).
fn write_sizes(file: &mut File, data_bytes: u64) -> Result<(), WavError> {
    let data = u32::try_from(data_bytes).map_err(|_| WavError::TooLarge)?;
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&data.saturating_add(36).to_le_bytes())?;
    file.seek(SeekFrom::Start(40))?;
    file.write_all(&data.to_le_bytes())?;
    Ok(())
}

/// Makes a new directory entry durable (a created file survives power loss only once its
/// directory is synced too).
fn sync_parent(path: &Path) -> Result<(), WavError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()?;
    Ok(())
}

impl WavWriter {
    /// Creates a new file (never overwrites: fails if `path` exists), writes a header with zero
    /// sizes and fsyncs file and directory, so even an immediate crash leaves a valid empty WAV.
    pub fn create(path: &Path, rate: u32, channels: u16) -> Result<WavWriter, WavError> {
        let byte_rate = u64::from(rate) * u64::from(channels) * u64::from(BYTES_PER_SAMPLE);
        if rate == 0 || channels == 0 || byte_rate > u64::from(u32::MAX) {
            return Err(WavError::BadFormat { rate, channels });
        }
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(&header(rate, channels, 0))?;
        file.sync_all()?;
        sync_parent(path)?;
        Ok(WavWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            path: path.to_path_buf(),
            rate,
            channels,
            data_bytes: 0,
        })
    }

    /// Appends interleaved frames as little-endian 16-bit samples. The samples must be a whole
    /// number of frames; they reach the disk at the next `update_header` or `finish`.
    pub fn append(&mut self, interleaved: &[i16]) -> Result<(), WavError> {
        let channels = usize::from(self.channels);
        if interleaved.len() % channels != 0 {
            return Err(WavError::PartialFrame {
                samples: interleaved.len(),
                channels: self.channels,
            });
        }
        let bytes = interleaved.len() as u64 * u64::from(BYTES_PER_SAMPLE);
        if self.data_bytes + bytes > MAX_DATA_BYTES {
            return Err(WavError::TooLarge);
        }
        // Convert through a stack buffer: one write call per 2 KiB instead of one per sample.
        let mut buf = [0u8; 2048];
        for chunk in interleaved.chunks(buf.len() / 2) {
            let mut n = 0;
            for (dst, s) in buf.chunks_exact_mut(2).zip(chunk) {
                dst.copy_from_slice(&s.to_le_bytes());
                n += 2;
            }
            // On error part of this append may be in the file; the header describes only whole
            // appends, the next `update_header` seeks past just those, and `repair` trims a
            // trailing partial frame.
            self.file.write_all(buf.get(..n).unwrap_or_default())?;
        }
        self.data_bytes += bytes;
        Ok(())
    }

    /// Flushes buffered samples, rewrites RIFF and data sizes for everything written so far, seeks
    /// back to the end and fsyncs (sync_data), so a crash leaves a valid WAV holding all audio up
    /// to this call.
    pub fn update_header(&mut self) -> Result<(), WavError> {
        self.file.flush()?;
        let data_bytes = self.data_bytes;
        let file = self.file.get_mut();
        write_sizes(file, data_bytes)?;
        file.seek(SeekFrom::Start(HEADER_LEN + data_bytes))?;
        file.sync_data()?;
        Ok(())
    }

    /// Brings the header up to date, syncs data and metadata, closes the file and returns its
    /// summary.
    pub fn finish(mut self) -> Result<WavSummary, WavError> {
        self.update_header()?;
        self.file.get_ref().sync_all()?;
        Ok(WavSummary {
            file_bytes: HEADER_LEN + self.data_bytes,
            data_bytes: self.data_bytes,
            frames: self.frames(),
            rate: self.rate,
            channels: self.channels,
        })
    }

    /// Frames appended so far (buffered ones included).
    pub fn frames(&self) -> u64 {
        self.data_bytes / (u64::from(self.channels) * u64::from(BYTES_PER_SAMPLE))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Recovery after a crash: reads the file, fixes RIFF/data sizes from the actual file length
/// (dropping a trailing partial frame by truncation), fsyncs, returns the summary. Errors clearly
/// on a file that is not our WAV layout.
pub fn repair(path: &Path) -> Result<WavSummary, WavError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut h = [0u8; HEADER_LEN as usize];
    if len < HEADER_LEN {
        return Err(WavError::NotWav(format!(
            "{} is {len} bytes, shorter than the 44-byte header",
            path.display()
        )));
    }
    file.read_exact(&mut h)?;
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let not_wav = |what: &str| Err(WavError::NotWav(format!("{}: {what}", path.display())));
    if &h[0..4] != b"RIFF" || &h[8..12] != b"WAVE" {
        return not_wav("no RIFF/WAVE signature");
    }
    if &h[12..16] != b"fmt " || u32_at(16) != 16 {
        return not_wav("no 16-byte \"fmt \" chunk at offset 12");
    }
    if u16_at(20) != 1 || u16_at(34) != BYTES_PER_SAMPLE * 8 {
        return not_wav("not 16-bit integer PCM");
    }
    if &h[36..40] != b"data" {
        return not_wav("no \"data\" chunk at offset 36");
    }
    let channels = u16_at(22);
    let rate = u32_at(24);
    if channels == 0 || rate == 0 || u16_at(32) != channels.saturating_mul(BYTES_PER_SAMPLE) {
        return not_wav("inconsistent channel count or block alignment");
    }
    let block = u64::from(channels) * u64::from(BYTES_PER_SAMPLE);
    let available = (len - HEADER_LEN).min(MAX_DATA_BYTES);
    let data_bytes = available - available % block;
    if HEADER_LEN + data_bytes != len {
        // A crash mid-write can leave half a frame; a partial frame would shift the channels of
        // anything appended later and is not playable audio anyway.
        file.set_len(HEADER_LEN + data_bytes)?;
    }
    write_sizes(&mut file, data_bytes)?;
    file.sync_all()?;
    Ok(WavSummary {
        file_bytes: HEADER_LEN + data_bytes,
        data_bytes,
        frames: data_bytes / block,
        rate,
        channels,
    })
}

/// Streams the file through SHA-256; lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, WavError> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BUFFER];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn header_bytes_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.wav");
        let mut w = WavWriter::create(&path, 8000, 2).unwrap();
        assert_eq!(
            read_all(&path),
            [
                b'R', b'I', b'F', b'F', 36, 0, 0, 0, b'W', b'A', b'V', b'E', //
                b'f', b'm', b't', b' ', 16, 0, 0, 0, 1, 0, 2, 0, //
                0x40, 0x1F, 0, 0, 0x00, 0x7D, 0, 0, 4, 0, 16, 0, //
                b'd', b'a', b't', b'a', 0, 0, 0, 0,
            ]
        );
        w.append(&[1, -2, 0x1234, -1]).unwrap();
        w.update_header().unwrap();
        let bytes = read_all(&path);
        assert_eq!(bytes.len(), 52);
        assert_eq!(&bytes[4..8], &44u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &8u32.to_le_bytes());
        assert_eq!(&bytes[44..], &[1, 0, 0xFE, 0xFF, 0x34, 0x12, 0xFF, 0xFF]);
    }

    #[test]
    fn create_never_overwrites_and_rejects_bad_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        std::fs::write(&path, b"keep me").unwrap();
        assert!(matches!(
            WavWriter::create(&path, 8000, 2),
            Err(WavError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists
        ));
        assert_eq!(read_all(&path), b"keep me");
        let other = dir.path().join("y.wav");
        assert!(matches!(
            WavWriter::create(&other, 0, 2),
            Err(WavError::BadFormat { .. })
        ));
        assert!(matches!(
            WavWriter::create(&other, 8000, 0),
            Err(WavError::BadFormat { .. })
        ));
        assert!(!other.exists());
    }

    #[test]
    fn partial_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WavWriter::create(&dir.path().join("p.wav"), 8000, 2).unwrap();
        assert!(matches!(
            w.append(&[1, 2, 3]),
            Err(WavError::PartialFrame {
                samples: 3,
                channels: 2
            })
        ));
        assert_eq!(w.frames(), 0);
    }

    #[test]
    fn hound_reads_what_update_header_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut w = WavWriter::create(&path, 8000, 2).unwrap();
        let frames: Vec<i16> = (0..8000i32)
            .flat_map(|i| [(i % 3000) as i16, -((i % 2000) as i16)])
            .collect();
        // Appends of uneven sizes, larger and smaller than the conversion buffer.
        w.append(&frames[..2]).unwrap();
        w.append(&frames[2..5002]).unwrap();
        w.append(&frames[5002..]).unwrap();
        assert_eq!(w.frames(), 8000);
        w.update_header().unwrap();
        let reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 8000, 16)
        );
        assert_eq!(reader.duration(), 8000);
        let read: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(read, frames);
        // More audio after an update, then finish: everything is there.
        w.append(&[5, 6]).unwrap();
        let summary = w.finish().unwrap();
        assert_eq!(
            summary,
            WavSummary {
                file_bytes: 44 + 8001 * 4,
                data_bytes: 8001 * 4,
                frames: 8001,
                rate: 8000,
                channels: 2
            }
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.file_bytes);
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.duration(), 8001);
    }

    /// What a crash leaves: our header with zero sizes (or stale ones) followed by raw samples.
    fn crashed_file(path: &Path, frames: usize, extra_bytes: &[u8]) {
        let mut bytes = header(8000, 2, 0).to_vec();
        for i in 0..frames {
            bytes.extend_from_slice(&(i as i16).to_le_bytes());
            bytes.extend_from_slice(&(-(i as i16)).to_le_bytes());
        }
        bytes.extend_from_slice(extra_bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn repair_fixes_sizes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.wav");
        crashed_file(&path, 1234, &[]);
        let summary = repair(&path).unwrap();
        assert_eq!(summary.frames, 1234);
        assert_eq!(summary.data_bytes, 1234 * 4);
        assert_eq!((summary.rate, summary.channels), (8000, 2));
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.duration(), 1234);
        let read: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(read[2 * 1233], 1233);
        assert_eq!(read[2 * 1233 + 1], -1233);
        // Repair is idempotent.
        assert_eq!(repair(&path).unwrap(), summary);
    }

    #[test]
    fn repair_truncates_a_partial_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.wav");
        crashed_file(&path, 10, &[0xAB, 0xCD, 0xEF]);
        let summary = repair(&path).unwrap();
        assert_eq!(summary.frames, 10);
        assert_eq!(summary.file_bytes, 44 + 40);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 84);
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 10);
    }

    #[test]
    fn repair_refuses_files_that_are_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.wav");
        std::fs::write(&short, b"RIFF").unwrap();
        assert!(matches!(repair(&short), Err(WavError::NotWav(m)) if m.contains("shorter")));
        let text = dir.path().join("text.wav");
        std::fs::write(&text, [b'x'; 100]).unwrap();
        assert!(matches!(repair(&text), Err(WavError::NotWav(m)) if m.contains("RIFF")));
        let mut float = header(8000, 1, 0);
        float[20] = 3; // WAVE_FORMAT_IEEE_FLOAT
        let float_path = dir.path().join("float.wav");
        std::fs::write(&float_path, float).unwrap();
        assert!(matches!(repair(&float_path), Err(WavError::NotWav(m)) if m.contains("PCM")));
        assert_eq!(std::fs::read(&float_path).unwrap(), float, "left untouched");
        assert!(matches!(
            repair(&dir.path().join("missing.wav")),
            Err(WavError::Io(_))
        ));
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Larger than the read buffer, so several reads are hashed in order.
        let big = dir.path().join("big");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let want: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha256_file(&big).unwrap(), want);
    }
}

//! RTP endpoint of the demo and test user agents: one UDP socket that plays a tone as 20 ms
//! packets on an absolute schedule (optionally dropping every Nth to simulate loss, or pausing
//! from outside while the call is on hold) in any codec of [`crate::codec`], and counts what
//! comes back on the same socket (symmetric RTP, so a relay can latch on our source), decoding
//! the start of it so a test can tell which tone the other side played.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use crate::codec::{Codec, Decoder, Encoder};
use crate::demo::tone::{goertzel, rms, Tone};
use crate::media::rtp::{self, RtpHeader};

/// Packetisation interval: 20 ms, the usual G.711 ptime (RFC 3551 §4.5).
const PTIME: Duration = Duration::from_millis(20);
/// Peak amplitude of the played tone: loud but well clear of clipping after G.711.
const TONE_AMPLITUDE: i16 = 8000;
/// Payload type used when the codec has no static one (first dynamic PT, RFC 3551 §6).
const DYNAMIC_PT: u8 = 96;
/// Dynamic payload type these agents give Opus (the one most phones and WebRTC use).
pub(crate) const OPUS_PT: u8 = 111;
/// How much of the received audio is decoded and kept ([`Heard`]), in 16 kHz samples: 0.5 s.
const HEARD_MAX: usize = 8000;
/// Largest datagram we read; anything longer is truncated by the kernel and still counted.
const RECV_BUF: usize = 2048;

/// What to play.
#[derive(Debug, Clone)]
pub struct PlayConfig {
    /// Codec to encode the tone with.
    pub codec: Codec,
    /// Payload type to send it with when the SDP negotiated one of its own (a dynamic type);
    /// `None` takes [`payload_type`]'s.
    pub payload_type: Option<u8>,
    /// Tone frequency in Hz.
    pub tone_hz: f64,
    /// How long to play; the schedule is `duration / 20 ms` packets.
    pub duration: Duration,
    /// drop every Nth packet before sending (counted, not sent) to simulate loss before the proxy
    pub drop_every: Option<u32>,
    /// SSRC of the stream.
    pub ssrc: u32,
    /// Switch to pause sending from outside (hold).
    pub pause: Pause,
    /// Mid-call changes from outside: another codec, another socket.
    pub steer: Steer,
}

/// Mid-call changes to a playing [`RtpPeer`], applied from the next packet on. The RTP stream
/// itself goes on (same SSRC, next sequence number and timestamp), as with a phone that
/// renegotiates its codec or moves its media to another port (RFC 3264 §8.3).
#[derive(Debug, Clone, Default)]
pub struct Steer(Arc<Mutex<SteerState>>);

#[derive(Debug, Default)]
struct SteerState {
    codec: Option<Codec>,
    socket: Option<UdpSocket>,
    remote: Option<SocketAddr>,
}

impl Steer {
    fn state(&self) -> std::sync::MutexGuard<'_, SteerState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encodes with `codec` (its static payload type) from the next packet on.
    pub fn set_codec(&self, codec: Codec) {
        self.state().codec = Some(codec);
    }

    /// Sends from, and receives on, `socket` from the next packet on; the old socket is no
    /// longer read.
    pub fn move_to(&self, socket: UdpSocket) {
        self.state().socket = Some(socket);
    }

    /// Sends to `remote` from the next packet on (the peer moved its media).
    pub fn send_to(&self, remote: SocketAddr) {
        self.state().remote = Some(remote);
    }

    fn take(&self) -> (Option<Codec>, Option<UdpSocket>, Option<SocketAddr>) {
        let mut s = self.state();
        (s.codec.take(), s.socket.take(), s.remote.take())
    }
}

/// A shared switch that pauses a playing [`RtpPeer`] (a call on hold) and resumes it. While
/// paused nothing is sent, but the RTP clock runs on as with a real phone: the first packet
/// after the pause carries the marker bit, the next sequence number, and a timestamp that has
/// jumped by the length of the pause (RFC 3550 §5.1, RFC 3551 §4.1).
#[derive(Debug, Clone, Default)]
pub struct Pause(Arc<AtomicBool>);

impl Pause {
    /// Stops sending from the next packet on.
    pub fn pause(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Sends again from the next packet on.
    pub fn resume(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Whether sending is paused.
    pub fn is_paused(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What happened while playing.
#[derive(Debug, Clone, Default)]
pub struct RtpStats {
    /// Packets sent.
    pub sent: u64,
    /// Packets scheduled but deliberately not sent (`drop_every`).
    pub dropped: u64,
    /// Packet times that passed while paused (nothing sent, no sequence number used).
    pub paused: u64,
    /// RTP packets received on our socket (RTCP and non-RTP datagrams are not counted).
    pub received: u64,
    /// Source of the first received RTP packet.
    pub first_rx_from: Option<SocketAddr>,
    /// Wall-clock time of the first packet sent.
    pub first_sent_at: Option<SystemTime>,
    /// Wall-clock time of the last packet sent.
    pub last_sent_at: Option<SystemTime>,
    /// RTP packets received on the socket [`Steer::move_to`] moved to.
    pub received_after_move: u64,
    /// Packets sent with a codec set by [`Steer::set_codec`].
    pub sent_after_codec_change: u64,
    /// The start of the received audio, decoded.
    pub heard: Heard,
}

/// The first 0.5 s of the audio received, decoded with the codec of each
/// packet's payload type and converted to 16 kHz, so that a test can tell which tone the other
/// side played whatever the codec.
#[derive(Clone, Default)]
pub struct Heard {
    pcm: Vec<i16>,
    /// Received RTP packets whose payload the codec refused, or whose payload type names no
    /// codec we know.
    pub undecodable: u64,
}

impl Heard {
    /// Sample rate of [`Heard::pcm`].
    pub const RATE: u32 = 16000;

    /// The decoded audio at [`Heard::RATE`].
    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }

    /// Of `candidates` (Hz), the tone strongest in what was heard, and how far it stands above
    /// everything else, in dB; `None` when nothing was heard. The first 100 ms are skipped:
    /// codecs and resamplers start from silence.
    pub fn dominant_tone(&self, candidates: &[f64]) -> Option<(f64, f64)> {
        let settled = self.pcm.get(1600..).filter(|p| p.len() >= 1600)?;
        let total = rms(settled).powi(2);
        candidates
            .iter()
            .map(|&hz| (hz, goertzel(settled, Self::RATE, hz)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(hz, p)| (hz, 10.0 * (p / (total - p).max(1e-3)).log10()))
    }

    /// Decodes one received packet into the capture while there is room, with `decoder`
    /// (made anew when the packet's codec is another).
    fn take(&mut self, decoder: &mut Option<Decoder>, codec: Option<Codec>, payload: &[u8]) {
        if self.pcm.len() >= HEARD_MAX {
            return;
        }
        let Some(codec) = codec else {
            self.undecodable += 1;
            return;
        };
        if decoder.as_ref().is_none_or(|d| d.codec() != codec) {
            *decoder = Decoder::new(codec, Self::RATE).ok();
        }
        let decoded = decoder.as_mut().map(|d| d.decode(payload, &mut self.pcm));
        if !matches!(decoded, Some(Ok(_))) {
            self.undecodable += 1;
        }
        self.pcm.truncate(HEARD_MAX);
    }
}

impl std::fmt::Debug for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heard")
            .field("samples", &self.pcm.len())
            .field("rms", &rms(&self.pcm).round())
            .field("undecodable", &self.undecodable)
            .finish()
    }
}

/// An RTP endpoint bound to an ephemeral UDP port.
#[derive(Debug)]
pub struct RtpPeer {
    socket: UdpSocket,
    local: SocketAddr,
}

/// Payload type these agents use for `codec`: its static one, found through the codec table
/// itself so new codecs need no change here; [`OPUS_PT`] for Opus; the first dynamic type for
/// any other codec without one.
pub(crate) fn payload_type(codec: Codec) -> u8 {
    if codec == Codec::Opus {
        return OPUS_PT;
    }
    (0u8..DYNAMIC_PT)
        .find(|&pt| Codec::from_static_pt(pt) == Some(codec))
        .unwrap_or(DYNAMIC_PT)
}

/// Codec of a received payload type: the one we send with when the type is ours (the agents
/// negotiate one codec for both directions), else the static table or our Opus type.
fn codec_of(pt: u8, sending: (u8, Codec)) -> Option<Codec> {
    if pt == sending.0 {
        return Some(sending.1);
    }
    Codec::from_static_pt(pt).or((pt == OPUS_PT).then_some(Codec::Opus))
}

/// What a codec needs per 20 ms packet: PCM samples of the tone at its audio rate, RTP
/// timestamp step on its RTP clock (they differ for G.722: 320 samples, 160 ticks).
fn packet_sizes(codec: Codec) -> (usize, u32) {
    (
        (codec.audio_rate() / 50) as usize,
        codec.rtp_clock_rate() / 50,
    )
}

/// A tone encoder for `codec` at the codec's own audio rate; every codec has one, so failure
/// means libopus could not allocate, and the packets go out empty (and are logged).
fn encoder_for(codec: Codec) -> Option<Encoder> {
    match Encoder::new(codec, codec.audio_rate()) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, %codec, "no encoder for the tone");
            None
        }
    }
}

/// Random bits for SSRCs, sequence and timestamp starts (RFC 3550 §5.1 wants random initial
/// values); ULIDs carry 80 bits from the OS random source, so no extra dependency is needed.
pub(crate) fn random_u64() -> u64 {
    // Truncation to the low 64 of the 80 random bits is intended.
    ulid::Ulid::new().random() as u64
}

impl RtpPeer {
    /// Binds a UDP socket on `ip` with an ephemeral port.
    pub async fn bind(ip: IpAddr) -> std::io::Result<RtpPeer> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        Ok(RtpPeer { socket, local })
    }

    /// Address the socket is bound to (put this in the SDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for one datagram on the socket; `true` if it was RTP (not RTCP or junk). For
    /// counting what arrives before playing starts (early media).
    pub async fn recv_rtp(&self) -> bool {
        let mut buf = [0u8; RECV_BUF];
        match self.socket.recv_from(&mut buf).await {
            Ok((len, _)) => buf.get(..len).is_some_and(is_rtp),
            Err(e) => {
                tracing::debug!(error = %e, "RTP receive error");
                false
            }
        }
    }

    /// Sends 20 ms packets (the tone at the codec's audio rate, encoded; seq and timestamp
    /// increasing from random starts, the timestamp by 20 ms of the codec's RTP clock; marker on
    /// first) to `remote`, paced on an absolute schedule for `cfg.duration`, while counting
    /// packets received on the same socket (symmetric RTP: the proxy latches on our source) and
    /// decoding the first of them into [`RtpStats::heard`]. Stops early when `stop` resolves
    /// (e.g. BYE received).
    pub async fn play(
        &self,
        mut remote: SocketAddr,
        cfg: &PlayConfig,
        stop: impl Future<Output = ()>,
    ) -> RtpStats {
        let mut stats = RtpStats::default();
        let mut codec = cfg.codec;
        let (samples_per_packet, mut ts_step) = packet_sizes(codec);
        let mut encoder = encoder_for(codec);
        let total = (cfg.duration.as_millis() / PTIME.as_millis()) as u64;
        let pt = cfg.payload_type.unwrap_or_else(|| payload_type(codec));
        let mut sending = (pt, codec);
        let mut rx_decoder: Option<Decoder> = None;
        let mut codec_changed = false;
        let mut moved: Option<UdpSocket> = None;
        let start_bits = random_u64();
        let mut header = RtpHeader {
            marker: true,
            payload_type: pt,
            seq: (start_bits & 0xffff) as u16,
            timestamp: (start_bits >> 16) as u32,
            ssrc: cfg.ssrc,
        };
        let mut tone = Tone::new(cfg.tone_hz, codec.audio_rate(), TONE_AMPLITUDE);
        let mut pcm = vec![0i16; samples_per_packet];
        let mut packet: Vec<u8> = Vec::with_capacity(12 + samples_per_packet);
        let mut rx = [0u8; RECV_BUF];

        // The last packet covers [t_{n-1}, t_n], so we keep listening until the schedule's end;
        // that also catches the peer's packets still in flight when our last one leaves.
        let start = Instant::now();
        let end = start + PTIME * u32::try_from(total).unwrap_or(u32::MAX);
        // Burst: if the task is delayed, catch up so the packet count matches wall-clock time.
        let mut ticker = tokio::time::interval_at(start, PTIME);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut index: u64 = 0;
        tokio::pin!(stop);

        loop {
            let socket = moved.as_ref().unwrap_or(&self.socket);
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = ticker.tick(), if index < total => {
                    // Changes apply from this packet on (before it, so that nothing more
                    // leaves a socket we moved away from).
                    match cfg.steer.take() {
                        (None, None, None) => {}
                        (new_codec, new_socket, new_remote) => {
                            if let Some(to) = new_remote {
                                remote = to;
                            }
                            if let Some(c) = new_codec.filter(|&c| c != codec) {
                                if c.audio_rate() != codec.audio_rate() {
                                    // The tone goes on; only a new sampling rate restarts it.
                                    tone = Tone::new(cfg.tone_hz, c.audio_rate(), TONE_AMPLITUDE);
                                    pcm.resize(packet_sizes(c).0, 0);
                                }
                                ts_step = packet_sizes(c).1;
                                codec = c;
                                encoder = encoder_for(c);
                                codec_changed = true;
                                header.payload_type = payload_type(c);
                                sending = (header.payload_type, c);
                            }
                            if new_socket.is_some() {
                                moved = new_socket;
                            }
                        }
                    }
                    tone.fill(&mut pcm);
                    index += 1;
                    if cfg.pause.is_paused() {
                        // Silence, not loss: the clock runs on, the sequence does not, and the
                        // first packet after the pause starts a talkspurt.
                        stats.paused += 1;
                        header.marker = true;
                        header.timestamp = header.timestamp.wrapping_add(ts_step);
                        continue;
                    }
                    let drop_this = matches!(cfg.drop_every, Some(n) if n > 0 && index % u64::from(n) == 0);
                    if drop_this {
                        stats.dropped += 1;
                    } else {
                        let mut fixed = [0u8; 12];
                        rtp::write_header(&header, &mut fixed);
                        packet.clear();
                        packet.extend_from_slice(&fixed);
                        if let Some(enc) = encoder.as_mut() {
                            if let Err(e) = enc.encode(&pcm, &mut packet) {
                                tracing::warn!(error = %e, %codec, "tone encoding failed");
                            }
                        }
                        let socket = moved.as_ref().unwrap_or(&self.socket);
                        match socket.send_to(&packet, remote).await {
                            Ok(_) => {
                                stats.sent += 1;
                                stats.sent_after_codec_change += u64::from(codec_changed);
                                let now = SystemTime::now();
                                stats.first_sent_at.get_or_insert(now);
                                stats.last_sent_at = Some(now);
                            }
                            Err(e) => tracing::debug!(error = %e, %remote, "RTP send failed"),
                        }
                    }
                    // A dropped packet still consumes its sequence number and timestamp: to the
                    // receiver it is indistinguishable from loss on the wire.
                    header.marker = false;
                    header.seq = header.seq.wrapping_add(1);
                    header.timestamp = header.timestamp.wrapping_add(ts_step);
                }
                r = socket.recv_from(&mut rx) => match r {
                    Ok((len, from)) => {
                        if let Some(data) = rx.get(..len) {
                            if let Some((h, payload)) = rtp_audio(data) {
                                let c = codec_of(h.payload_type, sending);
                                stats.heard.take(&mut rx_decoder, c, payload);
                                stats.received += 1;
                                stats.received_after_move += u64::from(moved.is_some());
                                stats.first_rx_from.get_or_insert(from);
                            }
                        }
                    }
                    // On Linux an ICMP port unreachable from an earlier send surfaces here;
                    // it says nothing about what we should receive, so carry on.
                    Err(e) => tracing::debug!(error = %e, "RTP receive error"),
                },
                () = tokio::time::sleep_until(end) => break,
            }
        }
        stats
    }
}

/// RTP rather than RTCP or junk: RTCP shares the version bits but uses payload types 72-76 in
/// the RTP header position (RFC 5761 §4).
fn is_rtp(data: &[u8]) -> bool {
    rtp_audio(data).is_some()
}

/// Header and payload of an RTP packet (not RTCP, not junk).
fn rtp_audio(data: &[u8]) -> Option<(RtpHeader, &[u8])> {
    rtp::parse(data)
        .ok()
        .filter(|(h, _)| !(72..=76).contains(&h.payload_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn cfg(duration_ms: u64, drop_every: Option<u32>) -> PlayConfig {
        PlayConfig {
            codec: Codec::Pcmu,
            payload_type: None,
            tone_hz: 440.0,
            duration: Duration::from_millis(duration_ms),
            drop_every,
            ssrc: 0x1234_5678,
            pause: Pause::default(),
            steer: Steer::default(),
        }
    }

    #[tokio::test]
    async fn two_peers_exchange_packets_with_increasing_seq() {
        let a = RtpPeer::bind(LOCALHOST).await.unwrap();
        let b = RtpPeer::bind(LOCALHOST).await.unwrap();
        let (ca, cb) = (cfg(200, None), cfg(200, Some(2)));
        let (sa, sb) = tokio::join!(
            a.play(b.local_addr(), &ca, std::future::pending()),
            b.play(a.local_addr(), &cb, std::future::pending()),
        );
        assert_eq!(sa.sent, 10);
        assert_eq!(sa.dropped, 0);
        assert_eq!((sb.sent, sb.dropped), (5, 5));
        assert!(sa.received >= 4 && sa.received <= 5, "{sa:?}");
        assert!(sb.received >= 9 && sb.received <= 10, "{sb:?}");
        assert_eq!(sb.first_rx_from, Some(a.local_addr()));
        assert!(sa.first_sent_at <= sa.last_sent_at);
    }

    #[tokio::test]
    async fn packets_carry_header_fields_and_tone() {
        let a = RtpPeer::bind(LOCALHOST).await.unwrap();
        let sink = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let dest = sink.local_addr().unwrap();
        let c = PlayConfig {
            codec: Codec::Pcma,
            tone_hz: 1000.0,
            ..cfg(100, None)
        };
        let stats = a.play(dest, &c, std::future::pending()).await;
        assert_eq!(stats.sent, 5);
        let mut buf = [0u8; 2048];
        let mut headers = Vec::new();
        let mut pcm = Vec::new();
        for _ in 0..5 {
            let (len, from) = sink.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, a.local_addr());
            let (h, payload) = rtp::parse(&buf[..len]).unwrap();
            assert_eq!(payload.len(), 160);
            Codec::Pcma.decode(payload, &mut pcm);
            headers.push(h);
        }
        assert!(headers[0].marker);
        assert!(headers[1..].iter().all(|h| !h.marker));
        for w in headers.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
            assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
            assert_eq!(w[1].ssrc, 0x1234_5678);
            assert_eq!(w[1].payload_type, 8);
        }
        let at = crate::demo::tone::goertzel(&pcm, 8000, 1000.0);
        let off = crate::demo::tone::goertzel(&pcm, 8000, 440.0);
        assert!(at / off > 100.0, "{at} vs {off}");
    }

    #[tokio::test]
    async fn stop_future_ends_play_early() {
        let a = RtpPeer::bind(LOCALHOST).await.unwrap();
        let sink = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let began = std::time::Instant::now();
        let stats = a
            .play(
                sink.local_addr().unwrap(),
                &cfg(10_000, None),
                tokio::time::sleep(Duration::from_millis(100)),
            )
            .await;
        assert!(began.elapsed() < Duration::from_secs(2));
        assert!(stats.sent >= 4 && stats.sent <= 7, "{stats:?}");
    }

    #[tokio::test]
    async fn paused_peer_keeps_its_clock_and_sequence_running_silently() {
        let a = RtpPeer::bind(LOCALHOST).await.unwrap();
        let sink = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let c = cfg(400, None);
        let pause = c.pause.clone();
        let play = a.play(sink.local_addr().unwrap(), &c, std::future::pending());
        let switch = async {
            // Paused from about packet 5 to about packet 12.
            tokio::time::sleep(Duration::from_millis(90)).await;
            pause.pause();
            tokio::time::sleep(Duration::from_millis(140)).await;
            pause.resume();
        };
        let (stats, ()) = tokio::join!(play, switch);
        assert_eq!(stats.sent + stats.paused, 20, "{stats:?}");
        assert!((5..=9).contains(&stats.paused), "{stats:?}");
        let mut buf = [0u8; 2048];
        let mut headers = Vec::new();
        for _ in 0..stats.sent {
            let (len, _) = sink.recv_from(&mut buf).await.unwrap();
            headers.push(rtp::parse(&buf[..len]).unwrap().0);
        }
        let mut jumps = 0;
        for w in headers.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "no sequence gap");
            let step = w[1].timestamp.wrapping_sub(w[0].timestamp);
            if step == 160 {
                assert!(!w[1].marker);
            } else {
                assert_eq!(u64::from(step), 160 * (stats.paused + 1));
                assert!(w[1].marker, "a talkspurt starts after the pause");
                jumps += 1;
            }
        }
        assert_eq!(jumps, 1);
    }

    /// Receives `n` packets on `sink`: (header, payload) each.
    async fn collect(sink: &UdpSocket, n: u64) -> Vec<(RtpHeader, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut packets = Vec::new();
        for _ in 0..n {
            let (len, _) = sink.recv_from(&mut buf).await.unwrap();
            let (h, payload) = rtp::parse(&buf[..len]).unwrap();
            packets.push((h, payload.to_vec()));
        }
        packets
    }

    #[tokio::test]
    async fn wideband_packets_carry_native_rate_audio_on_the_rtp_clock() {
        // (codec, payload type, timestamp step per 20 ms, payload bytes if fixed)
        for (codec, pt, step, size) in [
            (Codec::G722, 9u8, 160u32, Some(160usize)),
            (Codec::Opus, OPUS_PT, 960, None),
            (Codec::Pcmu, 0, 160, Some(160)),
        ] {
            let a = RtpPeer::bind(LOCALHOST).await.unwrap();
            let sink = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let c = PlayConfig {
                codec,
                tone_hz: 1000.0,
                ..cfg(400, None)
            };
            let stats = a
                .play(sink.local_addr().unwrap(), &c, std::future::pending())
                .await;
            assert_eq!(stats.sent, 20, "{codec}");
            let packets = collect(&sink, stats.sent).await;
            let mut dec = Decoder::new(codec, 16000).unwrap();
            let mut pcm = Vec::new();
            for w in packets.windows(2) {
                assert_eq!(w[1].0.payload_type, pt, "{codec}");
                assert_eq!(
                    w[1].0.timestamp.wrapping_sub(w[0].0.timestamp),
                    step,
                    "{codec}"
                );
            }
            for (_, payload) in &packets {
                if let Some(size) = size {
                    assert_eq!(payload.len(), size, "{codec}");
                }
                assert_eq!(
                    dec.decode(payload, &mut pcm).unwrap(),
                    320,
                    "{codec}: 20 ms at 16 kHz"
                );
            }
            let settled = &pcm[1600..];
            let at = goertzel(settled, 16000, 1000.0);
            let off = goertzel(settled, 16000, 440.0);
            assert!(at / off > 100.0, "{codec}: {at} vs {off}");
        }
    }

    #[tokio::test]
    async fn each_peer_hears_the_others_tone_in_every_codec() {
        for codec in crate::codec::ALL {
            let a = RtpPeer::bind(LOCALHOST).await.unwrap();
            let b = RtpPeer::bind(LOCALHOST).await.unwrap();
            let ca = PlayConfig {
                codec,
                tone_hz: 440.0,
                ..cfg(600, None)
            };
            let cb = PlayConfig {
                codec,
                tone_hz: 1000.0,
                ..cfg(600, None)
            };
            let (sa, sb) = tokio::join!(
                a.play(b.local_addr(), &ca, std::future::pending()),
                b.play(a.local_addr(), &cb, std::future::pending()),
            );
            let tones = [440.0, 1000.0];
            let (heard_by_a, da) = sa.heard.dominant_tone(&tones).unwrap();
            let (heard_by_b, db) = sb.heard.dominant_tone(&tones).unwrap();
            assert_eq!(heard_by_a, 1000.0, "{codec}: {sa:?}");
            assert_eq!(heard_by_b, 440.0, "{codec}: {sb:?}");
            assert!(da > 20.0 && db > 20.0, "{codec}: {da:.1} / {db:.1} dB");
            assert_eq!((sa.heard.undecodable, sb.heard.undecodable), (0, 0));
            assert!(sa.heard.pcm().len() >= 6400, "{codec}: {sa:?}");
        }
    }

    #[test]
    fn heard_counts_what_it_cannot_decode_and_stops_when_full() {
        let mut heard = Heard::default();
        let mut decoder = None;
        heard.take(&mut decoder, None, &[1, 2, 3]);
        heard.take(&mut decoder, Some(Codec::Opus), &[]);
        assert_eq!(heard.undecodable, 2);
        assert_eq!(heard.dominant_tone(&[440.0]), None);
        for _ in 0..100 {
            heard.take(&mut decoder, Some(Codec::Pcmu), &[0x80; 160]);
        }
        assert_eq!(heard.pcm().len(), HEARD_MAX);
        assert!(format!("{heard:?}").contains("samples: 8000"));
    }

    #[test]
    fn static_payload_types() {
        assert_eq!(payload_type(Codec::Pcmu), 0);
        assert_eq!(payload_type(Codec::Pcma), 8);
        assert_eq!(payload_type(Codec::G722), 9);
        assert_eq!(payload_type(Codec::Opus), OPUS_PT);
        assert_eq!(codec_of(9, (OPUS_PT, Codec::Opus)), Some(Codec::G722));
        assert_eq!(codec_of(96, (96, Codec::Opus)), Some(Codec::Opus));
        assert_eq!(codec_of(OPUS_PT, (0, Codec::Pcmu)), Some(Codec::Opus));
        assert_eq!(codec_of(101, (0, Codec::Pcmu)), None);
        assert!(!is_rtp(&[0x80, 200, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_rtp(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_rtp(&[0x80, 0, 0]));
    }
}

//! SIP over TCP (RFC 3261 §18): one task per connection that frames messages out of the byte
//! stream by Content-Length (§18.3), answers RFC 5626 §4.4.1 CRLF keep-alive pings, writes what
//! the driver queues for it, and closes after a configurable idle time. Connections are opened
//! by peers (accepted) or by us (to a next hop that has none); the driver keeps the table and
//! reuses one connection per remote address. No SIP decisions are taken here.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::sip::msg::{Message, ParseError};
use crate::sip::proxy::Peer;

/// Messages queued for one connection before further ones are dropped (a peer that stopped
/// reading must not make the driver wait).
pub const WRITE_QUEUE: usize = 256;
/// How long opening a connection to a next hop may take before it counts as a transport error
/// (RFC 3261 §18.1.1 falls back to UDP, other requests get 503).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Bytes read per system call.
const READ_CHUNK: usize = 16 * 1024;
/// After a framing error the connection stays open this long, reading nothing, so the 400/513
/// the driver queues for it can still be written.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection task tells the driver.
#[derive(Debug)]
pub enum ConnEvent {
    /// One framed message (leading CRLFs removed).
    Message {
        /// The connection's remote end.
        from: Peer,
        /// The message bytes.
        data: Vec<u8>,
    },
    /// The stream cannot be framed any more (no or invalid Content-Length, or a message over
    /// the size limit); `data` holds what was buffered so the request can still be answered.
    /// The connection is closed after this.
    Unframable {
        /// The connection's remote end.
        from: Peer,
        /// Buffered bytes (at most the size limit).
        data: Vec<u8>,
        /// The message is over `max_message_size` (513) rather than malformed (400).
        oversized: bool,
        /// What was wrong.
        why: String,
    },
    /// Opening the connection failed.
    ConnectFailed {
        /// Connection number.
        id: u64,
        /// Where we tried to connect.
        to: Peer,
        /// Why.
        why: String,
    },
    /// Writing to an open connection failed; it is closed after this.
    WriteFailed {
        /// Connection number.
        id: u64,
        /// Its remote end.
        to: Peer,
        /// Why.
        why: String,
    },
    /// The connection ended (closed by the peer, idle, or an error).
    Closed {
        /// Connection number.
        id: u64,
        /// Its remote end.
        remote: SocketAddr,
    },
}

/// Settings shared by every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// Largest message accepted.
    pub max_message_size: usize,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
}

/// Opens a connection to `to` (bounded by [`CONNECT_TIMEOUT`]) and serves it; on failure
/// reports [`ConnEvent::ConnectFailed`] and drops what was queued.
pub async fn connect_and_serve(
    id: u64,
    to: SocketAddr,
    queue: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<ConnEvent>,
    cfg: ConnConfig,
) {
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(stream)) => {
            tracing::debug!(%to, id, "TCP connection opened");
            serve(id, stream, to, queue, events, cfg).await;
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
    };
    let _ = events
        .send(ConnEvent::ConnectFailed {
            id,
            to: Peer::tcp(to),
            why,
        })
        .await;
}

/// Serves one established connection until it closes, then reports [`ConnEvent::Closed`].
pub async fn serve(
    id: u64,
    mut stream: TcpStream,
    remote: SocketAddr,
    mut queue: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<ConnEvent>,
    cfg: ConnConfig,
) {
    let _ = stream.set_nodelay(true);
    let from = Peer::tcp(remote);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut idle_at = Instant::now() + cfg.idle_timeout;
    // Set once the stream broke: no more reading, only the reply to write.
    let mut closing = false;
    let why = loop {
        tokio::select! {
            read = stream.read(&mut chunk), if !closing => {
                let n = match read {
                    Ok(0) => break "closed by peer".to_string(),
                    Ok(n) => n,
                    Err(e) => break e.to_string(),
                };
                idle_at = Instant::now() + cfg.idle_timeout;
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                let Drained { pongs, frames, fatal } =
                    drain_frames(&mut buf, from, cfg.max_message_size);
                for _ in 0..pongs {
                    if let Err(e) = stream.write_all(b"\r\n").await {
                        tracing::debug!(%remote, error = %e, "keep-alive pong failed");
                    }
                }
                for event in frames {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                if let Some(event) = fatal {
                    let _ = events.send(event).await;
                    closing = true;
                    idle_at = Instant::now() + LINGER;
                }
            }
            msg = queue.recv() => {
                // The driver dropped its handle: the table let this connection go.
                let Some(data) = msg else { break "released".to_string() };
                if let Err(e) = stream.write_all(&data).await {
                    // What was being written is lost: a request among it must not wait for
                    // Timer B.
                    let _ = events
                        .send(ConnEvent::WriteFailed {
                            id,
                            to: from,
                            why: e.to_string(),
                        })
                        .await;
                    break e.to_string();
                }
                if !closing {
                    idle_at = Instant::now() + cfg.idle_timeout;
                }
            }
            () = tokio::time::sleep_until(idle_at) => {
                break if closing { "stream cannot be framed" } else { "idle" }.to_string();
            }
        }
    };
    tracing::debug!(%remote, id, reason = %why, "TCP connection closed");
    let _ = stream.shutdown().await;
    let _ = events.send(ConnEvent::Closed { id, remote }).await;
}

/// What one pass over the receive buffer found.
struct Drained {
    /// Keep-alive pings to answer.
    pongs: usize,
    /// Whole messages, in order.
    frames: Vec<ConnEvent>,
    /// The stream broke: report this and close.
    fatal: Option<ConnEvent>,
}

/// Takes every whole message off the front of `buf`, leaving a partial one in place.
fn drain_frames(buf: &mut Vec<u8>, from: Peer, max: usize) -> Drained {
    let mut out = Drained {
        pongs: 0,
        frames: Vec::new(),
        fatal: None,
    };
    loop {
        // CRLFs between messages are ignored (RFC 3261 §7.5); a double CRLF is a keep-alive
        // ping, answered with one CRLF (RFC 5626 §4.4.1).
        let mut start = 0;
        while buf.get(start..start + 2) == Some(b"\r\n") {
            if buf.get(start..start + 4) == Some(b"\r\n\r\n") {
                out.pongs += 1;
                start += 4;
            } else if buf.len() >= start + 4 || buf.get(start + 2).is_some_and(|&b| b != b'\r') {
                start += 2;
            } else {
                // "\r\n" or "\r\n\r" at the end: wait to see whether it is a ping.
                break;
            }
        }
        buf.drain(..start);
        if buf.is_empty() || buf.starts_with(b"\r\n") {
            return out;
        }
        match Message::parse_stream(buf) {
            Ok((_, consumed)) if consumed <= max => {
                out.frames.push(ConnEvent::Message {
                    from,
                    data: buf.drain(..consumed).collect(),
                });
            }
            Ok((_, consumed)) => {
                out.fatal = Some(unframable(
                    buf,
                    from,
                    max,
                    true,
                    format!("{consumed} bytes"),
                ));
                return out;
            }
            // Line-break fragments ("\r") and unfinished heads: wait for more.
            Err(ParseError::Empty | ParseError::Incomplete) if buf.len() <= max => return out,
            Err(ParseError::BodyTruncated {
                declared,
                available,
            }) if buf.len() - available + declared <= max => return out,
            Err(
                e @ (ParseError::Empty | ParseError::Incomplete | ParseError::BodyTruncated { .. }),
            ) => {
                out.fatal = Some(unframable(buf, from, max, true, e.to_string()));
                return out;
            }
            Err(e) => {
                out.fatal = Some(unframable(buf, from, max, false, e.to_string()));
                return out;
            }
        }
    }
}

fn unframable(buf: &[u8], from: Peer, max: usize, oversized: bool, why: String) -> ConnEvent {
    ConnEvent::Unframable {
        from,
        data: buf.get(..buf.len().min(max)).unwrap_or_default().to_vec(),
        oversized,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer::tcp("127.0.0.1:40000".parse().unwrap())
    }

    const OPTIONS: &str = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bK1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nMax-Forwards: 70\r\nContent-Length: 4\r\n\r\nbody";

    fn frames(d: &Drained) -> Vec<Vec<u8>> {
        d.frames
            .iter()
            .map(|e| match e {
                ConnEvent::Message { data, .. } => data.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn messages_split_anywhere_are_framed_by_content_length() {
        let stream = format!("\r\n{OPTIONS}{OPTIONS}\r\n\r\n{OPTIONS}");
        let bytes = stream.as_bytes();
        // Feed the stream in every split into two reads.
        for cut in 0..bytes.len() {
            let mut buf = bytes[..cut].to_vec();
            let mut got = Vec::new();
            let mut pongs = 0;
            let first = drain_frames(&mut buf, peer(), 65_535);
            assert!(first.fatal.is_none(), "cut {cut}");
            got.extend(frames(&first));
            pongs += first.pongs;
            buf.extend_from_slice(&bytes[cut..]);
            let second = drain_frames(&mut buf, peer(), 65_535);
            assert!(second.fatal.is_none(), "cut {cut}");
            got.extend(frames(&second));
            pongs += second.pongs;
            assert_eq!(got.len(), 3, "cut {cut}");
            assert!(got.iter().all(|f| f == OPTIONS.as_bytes()), "cut {cut}");
            assert_eq!(pongs, 1, "cut {cut}");
            assert!(
                buf.is_empty(),
                "cut {cut}: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    #[test]
    fn a_lone_ping_is_answered_and_a_half_ping_waits() {
        let mut buf = b"\r\n\r\n".to_vec();
        let d = drain_frames(&mut buf, peer(), 65_535);
        assert_eq!((d.pongs, d.frames.len(), buf.len()), (1, 0, 0));
        let mut buf = b"\r\n".to_vec();
        let d = drain_frames(&mut buf, peer(), 65_535);
        assert_eq!((d.pongs, buf.len()), (0, 2));
        buf.extend_from_slice(b"\r\n");
        let d = drain_frames(&mut buf, peer(), 65_535);
        assert_eq!((d.pongs, buf.len()), (1, 0));
    }

    #[test]
    fn missing_content_length_breaks_the_stream_with_the_head_kept() {
        let text = OPTIONS.replace("Content-Length: 4\r\n", "");
        let mut buf = text.as_bytes().to_vec();
        let d = drain_frames(&mut buf, peer(), 65_535);
        match d.fatal {
            Some(ConnEvent::Unframable {
                data, oversized, ..
            }) => {
                assert!(!oversized);
                assert!(data.starts_with(b"OPTIONS sip:a@127.0.0.1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_announcing_more_than_the_limit_is_refused_before_its_body_arrives() {
        let text = OPTIONS.replace("Content-Length: 4", "Content-Length: 5000");
        let head_only = text.trim_end_matches("body");
        let mut buf = head_only.as_bytes().to_vec();
        let d = drain_frames(&mut buf, peer(), 2048);
        match d.fatal {
            Some(ConnEvent::Unframable { oversized, .. }) => assert!(oversized),
            other => panic!("{other:?}"),
        }
        // Under the limit it waits for the body instead.
        let mut buf = head_only.as_bytes().to_vec();
        let d = drain_frames(&mut buf, peer(), 65_535);
        assert!(d.fatal.is_none() && d.frames.is_empty());
    }

    /// Serves one accepted loopback connection with `idle`; the client end and the events.
    async fn served(
        idle: Duration,
    ) -> (TcpStream, mpsc::Receiver<ConnEvent>, mpsc::Sender<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, remote) = listener.accept().await.unwrap();
        let (events_tx, events) = mpsc::channel(16);
        let (queue, queue_rx) = mpsc::channel(16);
        let cfg = ConnConfig {
            max_message_size: 65_535,
            idle_timeout: idle,
        };
        tokio::spawn(serve(7, server, remote, queue_rx, events_tx, cfg));
        (client, events, queue)
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_traffic_keeps_one_open() {
        let idle = Duration::from_millis(300);
        let (mut client, mut events, queue) = served(idle).await;
        // Keep-alives every 100 ms for 900 ms keep it open (each is answered).
        for _ in 0..9 {
            client.write_all(b"\r\n\r\n").await.unwrap();
            let mut pong = [0u8; 2];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"\r\n");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // So does what the driver writes.
        queue.send(OPTIONS.as_bytes().to_vec()).await.unwrap();
        let mut got = vec![0u8; OPTIONS.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, OPTIONS.as_bytes());
        // Then silence: closed after the idle time, and the driver is told.
        let started = Instant::now();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest))
            .await
            .expect("closed within 2 s")
            .unwrap();
        assert_eq!(n, 0);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        match events.recv().await {
            Some(ConnEvent::Closed { id: 7, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn messages_read_are_handed_over_whole() {
        let (mut client, mut events, _queue) = served(Duration::from_secs(60)).await;
        let (a, b) = OPTIONS.as_bytes().split_at(40);
        client.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b).await.unwrap();
        match events.recv().await {
            Some(ConnEvent::Message { data, from }) => {
                assert_eq!(data, OPTIONS.as_bytes());
                assert_eq!(from.transport, crate::config::Transport::Tcp);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endless_headers_are_cut_at_the_limit() {
        let mut buf = b"OPTIONS sip:a@h SIP/2.0\r\n".to_vec();
        while buf.len() <= 4096 {
            buf.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let d = drain_frames(&mut buf, peer(), 4096);
        match d.fatal {
            Some(ConnEvent::Unframable {
                oversized, data, ..
            }) => {
                assert!(oversized);
                assert_eq!(data.len(), 4096);
            }
            other => panic!("{other:?}"),
        }
    }
}

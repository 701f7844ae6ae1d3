//! SIP transport and the driver loop: binds the UDP listen sockets, feeds every datagram and every
//! timer expiry into the sans-IO proxy core, executes its outputs (sends, call events to the
//! registry), and relays media and recorder reports. No protocol decisions are taken here.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::call::registry::CallRegistry;
use crate::media::relay::RelayEvent;
use crate::record::recorder::RecorderEvent;
use crate::sip::proxy::{Output, Proxy};

/// Datagrams waiting between the socket readers and the core.
const INBOUND_QUEUE: usize = 4096;
/// Peers whose receiving socket is remembered (about 40 bytes each); past this the table starts
/// afresh rather than grow.
const MAX_KNOWN_PEERS: usize = 65_536;

/// Error starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A listen address could not be bound.
    #[error("cannot listen on udp:{addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Bound SIP sockets.
pub struct SipSockets {
    sockets: Vec<Arc<UdpSocket>>,
}

impl SipSockets {
    /// Binds every UDP listen address.
    pub async fn bind(addrs: &[SocketAddr]) -> Result<SipSockets, TransportError> {
        let mut sockets = Vec::new();
        for &addr in addrs {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| TransportError::Bind { addr, source })?;
            sockets.push(Arc::new(socket));
        }
        Ok(SipSockets { sockets })
    }

    /// The addresses actually bound (ephemeral ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// The driver: owns the core, the registry and the sockets.
pub struct Driver {
    sockets: SipSockets,
    proxy: Proxy,
    registry: CallRegistry,
    relay_events: mpsc::UnboundedReceiver<RelayEvent>,
    recorder_events: mpsc::UnboundedReceiver<RecorderEvent>,
    max_message_size: usize,
    /// Which listen socket each peer last sent to.
    peers: HashMap<SocketAddr, usize>,
}

impl Driver {
    /// Assembles a driver.
    pub fn new(
        sockets: SipSockets,
        proxy: Proxy,
        registry: CallRegistry,
        relay_events: mpsc::UnboundedReceiver<RelayEvent>,
        recorder_events: mpsc::UnboundedReceiver<RecorderEvent>,
        max_message_size: usize,
    ) -> Driver {
        Driver {
            sockets,
            proxy,
            registry,
            relay_events,
            recorder_events,
            max_message_size,
            peers: HashMap::new(),
        }
    }

    /// Runs until `shutdown` resolves, then ends every call (recordings finalised with end
    /// reason `shutdown`) and waits for the recorder to finish writing.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let (tx, mut inbound) = mpsc::channel::<(usize, SocketAddr, Vec<u8>)>(INBOUND_QUEUE);
        let mut readers = Vec::new();
        for (index, socket) in self.sockets.sockets.iter().enumerate() {
            readers.push(tokio::spawn(read_loop(
                index,
                Arc::clone(socket),
                tx.clone(),
            )));
        }
        drop(tx);
        tokio::pin!(shutdown);
        loop {
            let deadline = self
                .proxy
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                got = inbound.recv() => {
                    let Some((socket, from, data)) = got else { break };
                    if self.peers.len() >= MAX_KNOWN_PEERS && !self.peers.contains_key(&from) {
                        self.peers.clear();
                    }
                    self.peers.insert(from, socket);
                    if data.len() > self.max_message_size {
                        self.proxy.handle_oversized(Instant::now(), from, &data);
                    } else {
                        self.proxy.handle_datagram(Instant::now(), from, &data, &mut self.registry);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.proxy.handle_timeout(Instant::now());
                }
                Some(event) = self.relay_events.recv() => {
                    if let Some(call_id) = self.registry.on_relay_event(event, Instant::now()) {
                        self.proxy.forget_call(&call_id);
                    }
                }
                Some(event) = self.recorder_events.recv() => {
                    match event {
                        RecorderEvent::Finalised { call_id, recording_id, state } =>
                            tracing::info!(%call_id, %recording_id, ?state, "recording finalised"),
                        RecorderEvent::Failed { recording_id, error } =>
                            tracing::error!(%recording_id, %error, "recording write failed"),
                    }
                }
                () = &mut shutdown => {
                    tracing::info!("shutting down: finalising active calls");
                    break;
                }
            }
            self.execute().await;
        }
        for reader in readers {
            reader.abort();
        }
        let (server_txns, client_txns, dialogs) = self.proxy.sizes();
        tracing::info!(
            active_calls = self.registry.active_calls(),
            media_port_pairs = self.registry.ports_in_use(),
            server_txns,
            client_txns,
            dialogs,
            "state at shutdown"
        );
        let registry = self.registry;
        let now = Instant::now();
        // The recorder joins its thread; keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || registry.shutdown(now)).await;
    }

    /// Executes everything the core has queued.
    async fn execute(&mut self) {
        while let Some(output) = self.proxy.poll_output() {
            match output {
                Output::Send { to, data } => {
                    let Some(socket) = self.socket_for(to) else {
                        tracing::warn!(%to, "no SIP socket of that address family");
                        continue;
                    };
                    if let Err(e) = socket.send_to(&data, to).await {
                        tracing::warn!(%to, error = %e, "SIP send failed");
                    }
                }
                Output::Event(event) => self.registry.on_event(event),
            }
        }
    }

    /// The socket a peer last sent to (so replies and its in-dialog requests leave from the
    /// address it talks to, with several listen sockets of one family), else the first socket of
    /// its address family.
    fn socket_for(&self, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        if let Some(socket) = self
            .peers
            .get(&to)
            .and_then(|&i| self.sockets.sockets.get(i))
        {
            return Some(socket);
        }
        self.sockets
            .sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == to.is_ipv4()))
    }
}

async fn read_loop(
    index: usize,
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<(usize, SocketAddr, Vec<u8>)>,
) {
    // Whole datagrams are read (the largest UDP payload), so that one over `max_message_size`
    // can still be answered 513 from its head; the driver applies the limit.
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let Some(data) = buf.get(..len) else { continue };
                if tx.send((index, from, data.to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // ICMP port unreachable from an earlier send shows up here on Linux; it concerns
                // one peer, not the socket.
                tracing::debug!(error = %e, "SIP receive error");
            }
        }
    }
}

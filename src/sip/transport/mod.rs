//! SIP transport and the driver loop: binds the UDP and TCP listen sockets, feeds every datagram,
//! every message framed out of a TCP stream and every timer expiry into the sans-IO proxy core,
//! executes its outputs (sends, call events to the registry), keeps the TCP connection table
//! (one connection per remote address, reused both ways, opened on demand, closed when idle),
//! and relays media and recorder reports. No protocol decisions are taken here.

pub mod tcp;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::call::registry::CallRegistry;
use crate::config::{SipAddr, Transport};
use crate::media::relay::RelayEvent;
use crate::record::recorder::RecorderEvent;
use crate::sip::dns::Resolver;
use crate::sip::proxy::{NameQuery, Output, Peer, Proxy, Resolved};
use tcp::{ConnConfig, ConnEvent};

/// Datagrams waiting between the socket readers and the core.
const INBOUND_QUEUE: usize = 4096;
/// Peers whose receiving socket is remembered (about 40 bytes each); past this the table starts
/// afresh rather than grow.
const MAX_KNOWN_PEERS: usize = 65_536;
/// Open TCP connections (accepted and our own) at most; past this new ones are refused.
pub const MAX_TCP_CONNECTIONS: usize = 10_000;

/// Error starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SipAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Bound SIP sockets.
pub struct SipSockets {
    sockets: Vec<Arc<UdpSocket>>,
    listeners: Vec<TcpListener>,
}

impl SipSockets {
    /// Binds every listen address: a UDP socket or a TCP listener each.
    pub async fn bind(addrs: &[SipAddr]) -> Result<SipSockets, TransportError> {
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        for &addr in addrs {
            let bind_error = |source| TransportError::Bind { addr, source };
            match addr.transport {
                Transport::Udp => {
                    let socket = UdpSocket::bind(addr.addr).await.map_err(bind_error)?;
                    sockets.push(Arc::new(socket));
                }
                Transport::Tcp => {
                    listeners.push(TcpListener::bind(addr.addr).await.map_err(bind_error)?);
                }
            }
        }
        Ok(SipSockets { sockets, listeners })
    }

    /// The addresses actually bound (ephemeral ports resolved): UDP ones first, then TCP.
    pub fn local_addrs(&self) -> Vec<Peer> {
        let udp = self
            .sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(Peer::udp);
        let tcp = self
            .listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(Peer::tcp);
        udp.chain(tcp).collect()
    }
}

/// One TCP connection in the table.
struct Conn {
    /// Tells a reopened connection from the one it replaced.
    id: u64,
    /// Messages to write.
    queue: mpsc::Sender<Vec<u8>>,
}

/// A lookup's answer on its way back to the core.
type DnsAnswer = (NameQuery, Result<Resolved, String>);

/// Transport settings of the driver.
pub struct DriverOptions {
    /// Largest SIP message accepted.
    pub max_message_size: usize,
    /// TCP connections close after this long without traffic.
    pub tcp_idle: Duration,
    /// Resolves next hops named by host names.
    pub resolver: Resolver,
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
    /// Open TCP connections by remote address.
    conns: HashMap<SocketAddr, Conn>,
    /// Addresses peers on TCP name themselves by -> remote address of their connection.
    aliases: HashMap<SocketAddr, SocketAddr>,
    next_conn: u64,
    conn_cfg: ConnConfig,
    conn_events: (mpsc::Sender<ConnEvent>, Option<mpsc::Receiver<ConnEvent>>),
    resolver: Resolver,
    /// DNS answers on their way back from lookup tasks.
    resolved: (
        mpsc::UnboundedSender<DnsAnswer>,
        Option<mpsc::UnboundedReceiver<DnsAnswer>>,
    ),
}

impl Driver {
    /// Assembles a driver.
    pub fn new(
        sockets: SipSockets,
        proxy: Proxy,
        registry: CallRegistry,
        relay_events: mpsc::UnboundedReceiver<RelayEvent>,
        recorder_events: mpsc::UnboundedReceiver<RecorderEvent>,
        options: DriverOptions,
    ) -> Driver {
        let DriverOptions {
            max_message_size,
            tcp_idle,
            resolver,
        } = options;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let (dns_tx, dns_rx) = mpsc::unbounded_channel();
        Driver {
            sockets,
            proxy,
            registry,
            relay_events,
            recorder_events,
            max_message_size,
            peers: HashMap::new(),
            conns: HashMap::new(),
            aliases: HashMap::new(),
            next_conn: 0,
            conn_cfg: ConnConfig {
                max_message_size,
                idle_timeout: tcp_idle,
            },
            conn_events: (tx, Some(rx)),
            resolver,
            resolved: (dns_tx, Some(dns_rx)),
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
        let (accept_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        for listener in std::mem::take(&mut self.sockets.listeners) {
            readers.push(tokio::spawn(accept_loop(listener, accept_tx.clone())));
        }
        drop(accept_tx);
        let (Some(mut conn_events), Some(mut resolved)) =
            (self.conn_events.1.take(), self.resolved.1.take())
        else {
            return;
        };
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
                        self.proxy.handle_oversized(Instant::now(), Peer::udp(from), &data);
                    } else {
                        self.proxy.handle_datagram(Instant::now(), from, &data, &mut self.registry);
                    }
                }
                Some((stream, remote)) = accepted.recv() => self.accept(stream, remote),
                Some(event) = conn_events.recv() => self.on_conn_event(event),
                Some((query, result)) = resolved.recv() => {
                    self.proxy.handle_resolved(Instant::now(), query, result, &mut self.registry);
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
            tcp_connections = self.conns.len(),
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
                Output::Send { to, data } if to.transport == Transport::Tcp => {
                    self.send_tcp(to.addr, data);
                }
                Output::Send { to, data } => {
                    let to = to.addr;
                    let Some(socket) = self.socket_for(to) else {
                        tracing::warn!(%to, "no SIP socket of that address family");
                        continue;
                    };
                    if let Err(e) = socket.send_to(&data, to).await {
                        tracing::warn!(%to, error = %e, "SIP send failed");
                    }
                }
                Output::Event(event) => {
                    if let Some(call_id) = self.registry.on_event(event) {
                        self.proxy.forget_call(&call_id);
                    }
                }
                Output::Resolve(query) => {
                    let resolver = self.resolver.clone();
                    let back = self.resolved.0.clone();
                    tokio::spawn(async move {
                        let result = resolver.resolve(&query).await;
                        let _ = back.send((query, result));
                    });
                }
                Output::Alias { alias, conn } => {
                    if self.aliases.len() >= MAX_KNOWN_PEERS && !self.aliases.contains_key(&alias) {
                        self.aliases.clear();
                    }
                    self.aliases.insert(alias, conn);
                }
            }
        }
    }

    /// Queues a message on the connection to `to`, opening one if there is none (RFC 3261
    /// §18.1.1 / §18.2.2: reuse the connection the peer opened, else connect).
    fn send_tcp(&mut self, to: SocketAddr, data: Vec<u8>) {
        let to = match self.aliases.get(&to) {
            Some(conn) if !self.conns.contains_key(&to) && self.conns.contains_key(conn) => *conn,
            _ => to,
        };
        let data = match self.conns.get(&to) {
            Some(conn) => match conn.queue.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%to, "TCP peer is not reading: SIP message dropped");
                    return;
                }
                // The task ended and its Closed event is still on the way.
                Err(mpsc::error::TrySendError::Closed(data)) => {
                    self.conns.remove(&to);
                    data
                }
            },
            None => data,
        };
        if self.conns.len() >= MAX_TCP_CONNECTIONS {
            tracing::warn!(%to, limit = MAX_TCP_CONNECTIONS, "too many TCP connections: cannot connect");
            self.proxy
                .handle_transport_error(Instant::now(), Peer::tcp(to), &mut self.registry);
            return;
        }
        let (tx, rx) = mpsc::channel(tcp::WRITE_QUEUE);
        // A fresh channel has room for this first message.
        let _ = tx.try_send(data);
        let id = self.new_conn(to, tx);
        tokio::spawn(tcp::connect_and_serve(
            id,
            to,
            rx,
            self.conn_events.0.clone(),
            self.conn_cfg,
        ));
    }

    fn new_conn(&mut self, remote: SocketAddr, queue: mpsc::Sender<Vec<u8>>) -> u64 {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(remote, Conn { id, queue });
        id
    }

    /// A peer opened a connection to one of our listeners.
    fn accept(&mut self, stream: TcpStream, remote: SocketAddr) {
        if self.conns.len() >= MAX_TCP_CONNECTIONS {
            tracing::warn!(%remote, limit = MAX_TCP_CONNECTIONS, "too many TCP connections: refusing one");
            return;
        }
        let (tx, rx) = mpsc::channel(tcp::WRITE_QUEUE);
        let id = self.new_conn(remote, tx);
        tokio::spawn(tcp::serve(
            id,
            stream,
            remote,
            rx,
            self.conn_events.0.clone(),
            self.conn_cfg,
        ));
    }

    fn on_conn_event(&mut self, event: ConnEvent) {
        let now = Instant::now();
        match event {
            ConnEvent::Message { from, data } => {
                self.proxy
                    .handle_message(now, from, &data, &mut self.registry);
            }
            ConnEvent::Unframable {
                from,
                data,
                oversized,
                why,
            } => {
                tracing::warn!(%from, reason = %why, "closing a TCP connection whose stream cannot be framed");
                if oversized {
                    self.proxy.handle_oversized(now, from, &data);
                } else {
                    self.proxy.handle_framing_error(now, from, &data, &why);
                }
            }
            ConnEvent::ConnectFailed { id, to, why } | ConnEvent::WriteFailed { id, to, why } => {
                tracing::warn!(%to, reason = %why, "TCP connection failed");
                self.release_conn(id, to.addr);
                self.proxy
                    .handle_transport_error(now, to, &mut self.registry);
            }
            ConnEvent::Closed { id, remote } => self.release_conn(id, remote),
        }
    }

    /// Forgets a connection that ended, unless a newer one to the same address replaced it.
    fn release_conn(&mut self, id: u64, remote: SocketAddr) {
        if self.conns.get(&remote).is_some_and(|c| c.id == id) {
            self.conns.remove(&remote);
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

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<(TcpStream, SocketAddr)>) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                if tx.send(accepted).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
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

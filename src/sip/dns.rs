//! Resolving next-hop host names as RFC 3263 §4 says, for the driver: the proxy core asks
//! (`Output::Resolve`) and gets the answer back (`Proxy::handle_resolved`). NAPTR is not
//! consulted: a URI with a `transport` parameter or a port uses that (UDP without one) and A/AAAA
//! records; otherwise SRV records `_sip._udp` then `_sip._tcp` are tried (by priority, then
//! weight), and without any, the A/AAAA records with port 5060 over UDP (§4.2).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::Transport;
use crate::sip::proxy::{NameQuery, Peer, Resolved};

/// Time for one query to one server; with the retry a lookup gives up within about 4 s, well
/// inside Timer B.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A DNS resolver for next hops.
#[derive(Clone)]
pub struct Resolver {
    /// The resolver, or why there is none (every lookup then fails with that reason, so a
    /// setup without DNS still starts and routes by IP).
    inner: Result<TokioResolver, String>,
}

impl Resolver {
    /// Uses `servers` (IP and port of each name server), or the system's `/etc/resolv.conf`
    /// when the list is empty.
    pub fn new(servers: &[SocketAddr]) -> Resolver {
        let inner = Self::build(servers);
        if let Err(e) = &inner {
            tracing::warn!(error = %e, "no DNS resolver: next hops named by host names will get 502");
        }
        Resolver { inner }
    }

    fn build(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("/etc/resolv.conf: {e}"))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        builder.build().map_err(|e| e.to_string())
    }

    /// Resolves `query` to targets, best first.
    pub async fn resolve(&self, query: &NameQuery) -> Result<Resolved, String> {
        let inner = self
            .inner
            .as_ref()
            .map_err(|e| format!("no DNS resolver: {e}"))?;
        // A fully qualified name: no search-list suffixes.
        let fqdn = format!("{}.", query.host);
        if query.port.is_some() || query.transport.is_some() {
            let transport = query.transport.unwrap_or(Transport::Udp);
            let port = query.port.unwrap_or(5060);
            return addresses(inner, &fqdn, port, transport).await;
        }
        for transport in [Transport::Udp, Transport::Tcp] {
            let name = format!("_sip._{transport}.{fqdn}");
            let srv = match inner.lookup(name.as_str(), RecordType::SRV).await {
                Ok(srv) => srv,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => continue,
                Err(e) => return Err(format!("SRV {name}: {e}")),
            };
            let mut records: Vec<(u16, u16, u16, String)> = srv
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            // RFC 2782: lowest priority first; among equals, heavier first (a fixed order,
            // so that every call to the name goes the same way).
            records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let mut targets = Vec::new();
            let mut valid_until = srv.valid_until();
            for (_, _, port, target) in records {
                if target == "." {
                    continue;
                }
                if let Ok(found) = addresses(inner, &target, port, transport).await {
                    valid_until = valid_until.min(found.valid_until);
                    targets.extend(found.targets);
                }
            }
            if targets.is_empty() {
                return Err(format!("SRV {name}: no target has an address"));
            }
            return Ok(Resolved {
                targets,
                valid_until,
            });
        }
        addresses(inner, &fqdn, 5060, Transport::Udp).await
    }
}

/// The A and AAAA records of `host` as targets with `port` and `transport`.
async fn addresses(
    inner: &TokioResolver,
    host: &str,
    port: u16,
    transport: Transport,
) -> Result<Resolved, String> {
    let found = inner
        .lookup_ip(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let targets: Vec<Peer> = found
        .iter()
        .map(|ip: IpAddr| Peer {
            transport,
            addr: SocketAddr::new(ip, port),
        })
        .collect();
    if targets.is_empty() {
        return Err(format!("{host}: no address"));
    }
    Ok(Resolved {
        targets,
        valid_until: found
            .valid_until()
            .min(Instant::now() + Duration::from_secs(3600)),
    })
}

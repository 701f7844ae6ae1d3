//! A call over IPv6 loopback end to end: SIP on [::1], media anchored on [::1] (SDP rewritten with
//! `c=IN IP6 ::1`), recorded with the right tone on each side.

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome, Pbx, Phone};
use support::{dominance, Daemon, Wav};

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

#[test]
fn call_over_ipv6_loopback_is_relayed_and_recorded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let pbx = rt.block_on(Pbx::bind(SocketAddr::new(V6, 0))).unwrap();
    let config = root.path().join("recproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:[::1]:0\"]\npbx = \"udp:{}\"\n\n\
             [media]\nbind = \"::1\"\nadvertise = \"::1\"\nports = \"43300-43399\"\ntimeout = \"10s\"\n\n\
             [recording]\ndir = \"{}\"\n",
            pbx.local_addr(),
            root.path().join("recordings").display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    assert!(daemon.sip.is_ipv6(), "listening on {}", daemon.sip);
    let mut pbx = {
        let _guard = rt.enter();
        pbx.spawn(Arc::new(|_: &str| Answer::Accept {
            ring: Duration::from_millis(100),
            tone_hz: 1000.0,
        }))
    };
    let spec = CallSpec::new(
        "0401234567",
        "0295120000",
        Codec::Pcma,
        440.0,
        Duration::from_secs(2),
    );
    let proxy = daemon.sip;
    let report = rt.block_on(async {
        let phone = Phone::bind(V6).await.unwrap();
        phone.call(proxy, &spec).await.unwrap()
    });
    assert_eq!(report.outcome, Outcome::Answered);
    let uas = rt
        .block_on(pbx.next_report(Duration::from_secs(10)))
        .expect("PBX report");
    // Media crossed the proxy on IPv6 both ways, from the proxy's own address.
    let caller_rtp = report.rtp.clone().unwrap();
    let callee_rtp = uas.rtp.clone().unwrap();
    assert!(caller_rtp.received > 80 && callee_rtp.received > 80);
    let from = caller_rtp.first_rx_from.unwrap();
    assert!(
        from.is_ipv6() && (43300..=43399).contains(&from.port()),
        "{from}"
    );

    let (_, v) = daemon.final_sidecar(&report.call_id);
    assert_eq!(v["state"], "complete");
    assert_eq!(v["legs"]["caller"]["codec"], "PCMA");
    assert_eq!(
        v["legs"]["caller"]["packets"].as_u64().unwrap(),
        caller_rtp.sent
    );
    let wav = Wav::read(std::path::Path::new(v["wav"]["path"].as_str().unwrap()));
    assert!(
        wav.duration_ms() > 1900 && wav.duration_ms() < 2300,
        "{} ms",
        wav.duration_ms()
    );
    assert!(dominance(&wav.left, 8000, 440.0, &[1000.0]) > 50.0);
    assert!(dominance(&wav.right, 8000, 1000.0, &[440.0]) > 50.0);
}

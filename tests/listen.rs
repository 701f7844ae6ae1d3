//! Several listen sockets: a phone that talks to the second one gets its answers from the
//! second one (NAT and firewalls drop replies from another address).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use support::{write_config, Daemon};

#[test]
fn replies_leave_from_the_socket_the_peer_talks_to() {
    let root = tempfile::tempdir().unwrap();
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = write_config(root.path(), pbx.local_addr().unwrap(), (43900, 43999), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = [\"udp:127.0.0.1:0\"]",
        "listen = [\"udp:127.0.0.1:0\", \"udp:127.0.0.2:0\"]",
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let log = daemon.log_text();
    let second: SocketAddr = log
        .lines()
        .find_map(|l| l.split("udp:127.0.0.2:").nth(1))
        .and_then(|rest| rest.split([',', ' ']).next())
        .map(|port| format!("127.0.0.2:{port}").parse().unwrap())
        .expect("second listen address in the log");

    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    pbx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = phone.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:0295120000@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKls1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:0401234567@127.0.0.1>;tag=l1\r\nTo: <sip:0295120000@127.0.0.2>\r\n\
Call-ID: listen-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(options.as_bytes(), second).unwrap();
    let mut buf = [0u8; 4096];
    let (n, proxy_side) = pbx.recv_from(&mut buf).expect("forwarded to the PBX");
    let fwd = String::from_utf8_lossy(&buf[..n]).to_string();
    // The PBX answers to the top Via (the proxy's advertised address).
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for line in fwd.lines().filter(|l| l.starts_with("Via:")) {
        ok.push_str(line);
        ok.push_str("\r\n");
    }
    ok.push_str("From: <sip:0401234567@127.0.0.1>;tag=l1\r\nTo: <sip:0295120000@127.0.0.2>;tag=p1\r\nCall-ID: listen-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    pbx.send_to(ok.as_bytes(), proxy_side).unwrap();
    let (n, from) = phone
        .recv_from(&mut buf)
        .expect("the 200 reaches the phone");
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK\r\n"));
    assert_eq!(from, second, "answered from the address the phone sent to");
}

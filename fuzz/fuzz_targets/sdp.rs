//! Fuzz target for `recproxy::sdp`: any bytes must parse or be rejected without panicking; a
//! body that parses must print back byte-identical, and anchoring every live stream must give
//! a body that parses again.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use recproxy::sdp::Sdp;

fuzz_target!(|data: &[u8]| {
    let Ok(mut sdp) = Sdp::parse(data) else {
        return;
    };
    assert_eq!(
        sdp.to_bytes(),
        data,
        "unmodified print must equal the input"
    );
    let views = sdp.media();
    for (i, view) in views.iter().enumerate() {
        // Alternate address families so both IN IP4 and IN IP6 output is exercised.
        let addr = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        // Stays within 30000..=49998 however many streams there are.
        let port = 30000 + 2 * (i % 10000) as u16;
        let result = sdp.rewrite_media(view.index, addr, port);
        assert_eq!(
            result.is_ok(),
            view.port != 0,
            "only port-0 streams are refused"
        );
    }
    sdp.rewrite_origin_address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
    let printed = sdp.to_bytes();
    let again = Sdp::parse(&printed).expect("a rewritten body must parse");
    assert_eq!(again.media().len(), views.len());
});

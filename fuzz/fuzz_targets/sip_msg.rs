//! Fuzz target for `recproxy::sip::msg`: any bytes must parse or be rejected without panicking;
//! a message that parses must print to bytes that parse again and print identically, and its
//! value decoders and `validate` must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recproxy::sip::msg::{parse_name_addr, parse_uri, parse_via, Message};

fuzz_target!(|data: &[u8]| {
    let Ok((msg, consumed)) = Message::parse(data) else {
        return;
    };
    assert!(consumed <= data.len(), "consumed more than the input");
    let _ = msg.validate();
    let _ = (
        msg.top_via(),
        msg.cseq(),
        msg.from_tag(),
        msg.to_tag(),
        msg.max_forwards(),
    );
    for name in ["via", "contact", "route", "record-route", "from", "to"] {
        for value in msg.values(name) {
            let _ = (parse_via(value), parse_name_addr(value), parse_uri(value));
        }
    }
    if let Some(uri) = msg.request_uri() {
        let _ = parse_uri(uri);
    }
    let printed = msg.to_bytes();
    let (again, n) = Message::parse(&printed).expect("a printed message must parse again");
    assert_eq!(
        n,
        printed.len(),
        "the printed message must be consumed whole"
    );
    assert_eq!(again.to_bytes(), printed, "printing must be stable");
});

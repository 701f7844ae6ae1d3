//! Fuzz target for `recproxy::import::capture`: any bytes as a pcap or pcapng file must be read
//! or refused with an error naming an offset, never panic; what is read adds up (every packet
//! counted once in the statistics) and comes out in time order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recproxy::import::capture::read_capture_from;

fuzz_target!(|data: &[u8]| {
    let Ok((captured, stats)) = read_capture_from(std::io::Cursor::new(data)) else {
        return;
    };
    assert!(captured.windows(2).all(|w| w[0].at <= w[1].at), "sorted by time");
    assert!(captured.len() as u64 <= stats.packets + stats.tcp_messages);
});

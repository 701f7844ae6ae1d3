//! Offline import: rebuilding calls from packet captures made elsewhere (`recproxy import`).
//! [`capture`] turns a pcap/pcapng file into time-stamped UDP datagrams and whole SIP messages.

pub mod capture;

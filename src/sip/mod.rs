//! SIP: the message layer (`msg`), the sans-IO proxy core (`txn`, `dialog`, `proxy`), the thin
//! transport driver that feeds the core with messages and time (`transport`), and next-hop name
//! resolution for the driver (`dns`).

pub mod dialog;
pub mod dns;
pub mod limit;
pub mod msg;
pub mod proxy;
pub mod transport;
pub mod txn;

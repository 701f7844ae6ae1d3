//! SIP: the message layer (`msg`), the sans-IO proxy core (`txn`, `dialog`, `proxy`) and the thin
//! transport driver that feeds the core with datagrams and time (`transport`).

pub mod dialog;
pub mod limit;
pub mod msg;
pub mod proxy;
pub mod transport;
pub mod txn;

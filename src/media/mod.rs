//! Media plane: the port pool, the RTP/RTCP relay with latching and counters, the RTP header view,
//! and the tap that offers a copy of each packet to the recorder without ever waiting for it.

pub mod ports;
pub mod relay;
pub mod rtp;
pub mod tap;

//! Recording: the sans-IO timeline that places both parties' audio on one clock, the WAV writer,
//! and the recorder thread that owns all recording file IO.

pub mod dtmf;
pub mod recorder;
pub mod timeline;
pub mod wav;

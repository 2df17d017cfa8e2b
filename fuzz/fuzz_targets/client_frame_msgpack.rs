//! Client frames in MessagePack, as they arrive in WebSocket binary messages and on client
//! QUIC streams: see `selvage_fuzz::client_frame` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selvage_shared::Format;

fuzz_target!(|data: &[u8]| selvage_fuzz::client_frame(data, Format::MsgPack));

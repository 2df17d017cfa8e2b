//! Client frames in JSON, as they arrive in WebSocket text messages: see
//! `selvage_fuzz::client_frame` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selvage_shared::Format;

fuzz_target!(|data: &[u8]| selvage_fuzz::client_frame(data, Format::Json));

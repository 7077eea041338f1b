//! The browser API's decoder: any text frame a client sends, through
//! `decode`, the routing of the decoded message to the call core, and the
//! encoding of the error we would answer with.
#![no_main]

use gangway_signal::core_map::route;
use gangway_signal::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(message) => {
            if let Err(e) = route(message) {
                let _ = encode(&e.into_message());
            }
        }
        Err(e) => {
            let _ = encode(&e.into_message());
        }
    }
});

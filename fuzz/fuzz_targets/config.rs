//! The configuration loader: a `gangway.toml` over the defaults, through
//! figment and serde into `Config`, then every section parsed and checked
//! (`Config::settings`), as `Config::load` does at start-up.
#![no_main]

use gangway::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        // `from_toml` validated it: the settings and timers must be there.
        let settings = config.settings().expect("a validated config has settings");
        let _ = (settings, config.call_timers(), config.drain_timeout());
    }
});

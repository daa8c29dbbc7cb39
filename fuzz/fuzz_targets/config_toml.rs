//! `Config::from_toml` answers any text with a config or an error, never a panic.
#![no_main]

use crosstalk::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text);
    }
});

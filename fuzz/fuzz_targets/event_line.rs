//! A WebSocket event line is an observation or a rejection, never a panic.
#![no_main]

use crosstalk::config::Config;
use crosstalk::normalize::{Extractor, Tally};
use crosstalk::normalize::events::observe_event_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ex = Extractor::new(&Config::default_config());
    let _ = observe_event_line(data, &ex, 1, &mut Tally::default());
});

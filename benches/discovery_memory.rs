//! Discovery's memory under a hostile key flood: thousands of `service.name` values, tens of
//! thousands of attribute keys and random values, fed through the same `Discovery::observe` the
//! live feed uses, with the default `[discovery]` settings. Measures the resident-set growth of
//! the process (allocator overhead included) and prints `discovery_flood_mb=N` for
//! `scripts/bench`; the budget is 32 MB.

use crosstalk::correlate::discovery::{Discovery, Record, Settings};
use crosstalk::normalize::TraceId;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rounds: u64 = std::env::var("CROSSTALK_FLOOD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kb();
    let mut d = Discovery::new(Settings::default(), ["user.id".to_owned()]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut peak = 0;
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let service = format!("svc-{}", next() % 5_000);
        let keys: Vec<String> = (0..8).map(|_| format!("k{:x}", next() % 50_000)).collect();
        let values: Vec<String> = (0..8).map(|_| format!("{:016x}", next())).collect();
        let user = format!("u{}", next() % 100_000);
        let attrs: Vec<(&str, &str)> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&next().to_le_bytes());
        t[8] = 1;
        d.observe(&Record {
            service: &service,
            trace: Some(TraceId(t)),
            user: (round % 4 != 0).then_some(user.as_str()),
            time_ns: round,
            attributes: &attrs,
        });
        if round % 50_000 == 0 {
            peak = peak.max(rss_kb().saturating_sub(before));
        }
    }
    peak = peak.max(rss_kb().saturating_sub(before));
    println!(
        "{rounds} flood records ({:.1} s): {} keys tracked, {} evicted, estimated heap {:.1} MB, \
         resident growth {:.1} MB",
        started.elapsed().as_secs_f64(),
        d.key_count(),
        d.evicted,
        d.heap_bytes() as f64 / 1048576.0,
        peak as f64 / 1024.0
    );
    println!("discovery_flood_mb={:.1}", peak as f64 / 1024.0);
}

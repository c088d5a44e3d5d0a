//! Shared helpers of the runtime benchmarks.

use std::time::Duration;

/// The `p`-quantile (0..=1) of `samples` (sorted in place).
pub fn quantile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints `usage` and exits with status 0 when the arguments are `-h` or `--help`, so that
/// `--help` answers without starting a cluster.
pub fn exit_on_help(usage: &str) {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{}", usage.trim_end());
        std::process::exit(0);
    }
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

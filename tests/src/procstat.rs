//! Resource use of a process, read from `/proc`: resident memory and CPU time.

use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

fn ticks_per_second() -> u64 {
    // Linux has used 100 Hz USER_HZ for /proc for decades on every architecture we run on.
    100
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        at: Instant::now(),
        cpu_ticks: utime + stime,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// CPU use between two samples, as a percentage of one core.
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / ticks_per_second() as f64 / secs * 100.0
}

/// Samples `pid` every `every` for `total`; returns all samples.
pub async fn watch(pid: u32, total: Duration, every: Duration) -> Vec<Sample> {
    let mut out = vec![];
    let end = Instant::now() + total;
    while Instant::now() < end {
        if let Some(s) = sample(pid) {
            out.push(s);
        }
        tokio::time::sleep(every).await;
    }
    if let Some(s) = sample(pid) {
        out.push(s);
    }
    out
}

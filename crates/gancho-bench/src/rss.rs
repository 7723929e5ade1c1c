//! Resident memory from `/proc`: this process's, for the benchmarks that measure in-process
//! (the engine, the outbox's deliveries), and the daemon's: `VmRSS` and `VmHWM` of
//! `/proc/PID/status` (Linux only).

/// This process's resident memory now and at its peak, in KiB; `None` off Linux.
pub fn memory_kb() -> Option<(u64, u64)> {
    memory_kb_of("self")
}

/// The resident memory of process `pid` (or `self`) now and at its peak, in KiB.
pub fn memory_kb_of(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak (`VmHWM`) to the RSS now (writing 5 to `/proc/self/clear_refs`, Linux 4.0
/// on) and returns that RSS in KiB; `None` where the kernel does not allow it, and then no peak
/// is shown rather than one that includes what ran before.
pub fn reset_peak() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    memory_kb().map(|(rss, _)| rss)
}

/// The peak since the last [`reset_peak`], as a table cell: `123.4 MB`, or `?`.
pub fn peak_shown() -> String {
    match memory_kb() {
        Some((_, peak)) => format!("{:.1} MB", peak as f64 / 1024.0),
        None => "?".to_owned(),
    }
}

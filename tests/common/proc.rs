//! A process's CPU time and memory, read from `/proc`, for the benchmarks.

/// A process's CPU time so far, user + system, in seconds (`/proc/PID/stat`; threads that
/// have exited included). `pid` is a number or "self".
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in brackets and may hold spaces: state is
    // the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// A process's (current RSS, peak RSS) in KiB.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    (status_field(pid, "VmRSS:"), status_field(pid, "VmHWM:"))
}

/// A process's thread count.
pub(crate) fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// A number of `/proc/PID/status` (its unit, if any, left off).
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

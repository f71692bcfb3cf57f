//! The standard `process_*` families (CPU seconds, memory, file descriptors, start time), read
//! from `/proc/self` at scrape time, in the text format the exposition appends to the registry.

use std::fmt::Write as _;

/// `/proc` reports CPU times in USER_HZ, which the kernel fixes at 100 for every architecture
/// Linux exposes to user space (the value `sysconf(_SC_CLK_TCK)` returns).
const USER_HZ: f64 = 100.0;

/// What one scrape read; a field that could not be read is left out of the exposition rather
/// than reported as zero.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<u64>,
    pub(crate) virtual_bytes: Option<u64>,
    pub(crate) start_time_seconds: Option<f64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) max_fds: Option<u64>,
}

pub(crate) fn render() -> String {
    format_sample(&read())
}

fn read() -> Sample {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let status = std::fs::read_to_string("/proc/self/status").ok();
    Sample {
        cpu_seconds: fields.as_ref().map(|f| (f.utime + f.stime) as f64 / USER_HZ),
        resident_bytes: status.as_deref().and_then(vm_rss_bytes),
        virtual_bytes: fields.as_ref().map(|f| f.vsize),
        start_time_seconds: fields.as_ref().zip(btime).map(|(f, b)| b as f64 + f.starttime as f64 / USER_HZ),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        max_fds: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft),
    }
}

#[derive(Debug, PartialEq)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Fields of `/proc/self/stat` after the command name, which may itself hold spaces and
/// parentheses, so parsing starts after the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23.
    let at = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(StatFields { utime: at(14)?, stime: at(15)?, starttime: at(22)?, vsize: at(23)? })
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn vm_rss_bytes(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

fn format_sample(s: &Sample) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n");
        }
    };
    family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", s.cpu_seconds.map(float));
    family("process_open_fds", "gauge", "Number of open file descriptors.", s.open_fds.map(|v| v.to_string()));
    family("process_max_fds", "gauge", "Maximum number of open file descriptors.", s.max_fds.map(|v| v.to_string()));
    family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", s.virtual_bytes.map(|v| v.to_string()));
    family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", s.resident_bytes.map(|v| v.to_string()));
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds.map(float),
    );
    out
}

/// Always with a decimal point, so both parsers read a float.
fn float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_after_the_command_name() {
        let stat = "1234 (ferry (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 4200 123456789 2000 18446744073709551615";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f, StatFields { utime: 250, stime: 50, starttime: 4200, vsize: 123456789 });
        assert_eq!(stat_fields("garbage"), None);
        assert_eq!(stat_fields("1 (a) S 1"), None);
    }

    #[test]
    fn status_and_boot_time() {
        assert_eq!(vm_rss_bytes("Name:\tferry\nVmRSS:\t   2048 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tferry\n"), None);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_reports_every_family() {
        let s = read();
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        assert!(s.max_fds.is_some_and(|m| m >= s.open_fds.unwrap_or(0)), "{s:?}");
        assert!(s.resident_bytes.is_some_and(|r| r > 0), "{s:?}");
        assert!(s.start_time_seconds.is_some_and(|t| t > 1e9), "{s:?}");
        let text = format_sample(&s);
        for name in ["process_cpu_seconds_total ", "process_open_fds ", "process_max_fds ", "process_resident_memory_bytes "] {
            assert!(text.contains(&format!("\n{name}")), "{name} missing in {text}");
        }
    }
}

//! The standard `process_*` metrics (the names and meanings every Prometheus client library
//! exports), read from `/proc/self` at each scrape: no thread, no crate, nothing on the request
//! path. Where `/proc` cannot be read (not Linux, or a sandbox hiding it) the lines are left
//! out rather than guessed.

use std::fmt::Write as _;

/// What one scrape read; each field is `None` when its source could not be read.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Sample {
    /// Reads this process's figures now.
    pub fn read() -> Sample {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| Stat::parse(&text));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Sample {
            cpu_seconds: stat
                .as_ref()
                .filter(|_| ticks > 0.0)
                .map(|s| (s.utime + s.stime) as f64 / ticks),
            resident_bytes: stat.as_ref().map(|s| s.rss_pages.saturating_mul(page)),
            virtual_bytes: stat.as_ref().map(|s| s.vsize),
            start_time_seconds: stat
                .as_ref()
                .zip(boot)
                .filter(|_| ticks > 0.0)
                .map(|(s, boot)| boot as f64 + s.starttime as f64 / ticks),
            open_fds,
            max_fds,
        }
    }

    /// Appends the exposition lines of what was read.
    pub fn write(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
                );
            }
        };
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|v| v.to_string()),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.map(|v| v.to_string()),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.map(|v| v.to_string()),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v.to_string()),
        );
    }
}

/// Appends this process's metrics to an exposition.
pub fn render(out: &mut String) {
    Sample::read().write(out);
}

/// The fields of `/proc/self/stat` used here (proc(5): utime is field 14, stime 15, starttime
/// 22, vsize 23, rss 24).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Stat> {
        // The command name (field 2) is in parentheses and may hold spaces and ')': the fields
        // that follow start after the last ')'.
        let (_, rest) = text.rsplit_once(')')?;
        // `rest` starts at field 3 (the state).
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n.checked_sub(3)?)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// The boot time in unix seconds, from `/proc/stat`'s `btime` line.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let text = "4242 (gate) house (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 987654321 2048 18446744073709551615";
        let stat = Stat::parse(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                utime: 250,
                stime: 50,
                starttime: 12345,
                vsize: 987654321,
                rss_pages: 2048,
            }
        );
        assert_eq!(Stat::parse("4242 (truncated"), None);
        assert_eq!(Stat::parse("4242 (short) S 1 2"), None);
    }

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_every_figure() {
        let sample = Sample::read();
        assert!(sample.cpu_seconds.is_some_and(|v| v >= 0.0), "{sample:?}");
        assert!(sample.resident_bytes.is_some_and(|v| v > 0), "{sample:?}");
        assert!(sample.virtual_bytes.is_some_and(|v| v > 0), "{sample:?}");
        assert!(sample.open_fds.is_some_and(|v| v > 0), "{sample:?}");
        assert!(sample.max_fds.is_some_and(|v| v > 0), "{sample:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = sample.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}

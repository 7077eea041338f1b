//! The `process_*` metrics that Prometheus client libraries export under
//! these names (CPU time, memory, descriptors, threads, start time), read
//! from `/proc/self` on every scrape. Linux only: elsewhere the collector
//! is not registered and the series are absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The fields of `/proc/self/stat` the metrics need, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)). The command name, in parentheses,
/// may itself hold spaces and parentheses, so the fields are counted from
/// the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub(crate) fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// One scrape's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
}

impl Sample {
    pub(crate) fn new(stat: Stat, boot_time: u64, ticks_per_second: u64, page_size: u64) -> Self {
        let tps = ticks_per_second.max(1) as f64;
        Sample {
            cpu_seconds: stat.cpu_ticks as f64 / tps,
            resident_bytes: stat.resident_pages.saturating_mul(page_size),
            virtual_bytes: stat.virtual_bytes,
            threads: stat.threads,
            start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / tps,
        }
    }
}

/// Reads `/proc/self` on each scrape; registered on Linux only.
#[derive(Debug, Default)]
pub struct ProcessCollector;

fn sysconf(name: libc::c_int) -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).unwrap_or(0)
}

/// Which soft limit to read.
#[derive(Clone, Copy)]
enum Limit {
    OpenFiles,
    AddressSpace,
}

/// The soft limit, `None` when unreadable; unlimited is `RLIM_INFINITY`
/// (2^64 - 1 on Linux), as other client libraries export it.
fn soft_limit(which: Limit) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // The resource's type differs between C libraries: no variable holds it.
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe {
        match which {
            Limit::OpenFiles => libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            Limit::AddressSpace => libc::getrlimit(libc::RLIMIT_AS, &mut lim),
        }
    };
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    (rc == 0).then_some(lim.rlim_cur as u64)
}

fn read_sample() -> Option<Sample> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    Some(Sample::new(
        stat,
        boot,
        sysconf(libc::_SC_CLK_TCK),
        sysconf(libc::_SC_PAGESIZE),
    ))
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A /proc that cannot be read (hidepid, a sandbox) leaves the
        // series out rather than failing the whole scrape.
        if let Some(s) = read_sample() {
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process.",
                s.threads,
            )?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = soft_limit(Limit::OpenFiles) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = soft_limit(Limit::AddressSpace) {
            gauge(
                &mut encoder,
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                n,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        // Fields 3.. as proc(5) numbers them; the name is "gw (x) y".
        let line = "4242 (gw (x) y) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 104_857_600,
                resident_pages: 2560,
            }
        );
        let s = Sample::new(stat, 1_700_000_000, 100, 4096);
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 2560 * 4096);
        assert_eq!(s.start_time_seconds, 1_700_000_000.0 + 1234.56);
    }

    #[test]
    fn truncated_or_garbled_stat_lines_give_nothing() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (gw) S 1 2 3"), None);
        assert_eq!(
            parse_stat("1 gw S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"),
            None
        );
    }

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        let text = "cpu  1 2 3 4\nintr 5\nbtime 1764700000\nprocesses 9\n";
        assert_eq!(parse_boot_time(text), Some(1_764_700_000));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn this_process_reads_and_encodes_every_family() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for family in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_threads ",
            "process_open_fds ",
            "process_max_fds ",
            "process_virtual_memory_max_bytes ",
        ] {
            assert!(out.contains(family), "{family} in\n{out}");
        }
        let resident: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(resident > 0.0, "{out}");
    }
}

//! What a long run watches for leaks: a process's file descriptors, threads
//! and UDP sockets (from /proc), the gateway's own gauges (from `/metrics`)
//! and how busy the machine is.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Open file descriptors of a process.
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A numeric field of /proc/PID/status (`Threads`, `VmRSS`, ...).
pub fn status_field(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// UDP sockets the process holds: its socket fds whose inode appears in its
/// network namespace's UDP tables. The gateway's RTP ports are among them
/// (plus one WebRTC socket per media shard and the SIP socket).
pub fn udp_sockets(pid: &str) -> usize {
    let mut udp_inodes = HashSet::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if let Some(inode) = line.split_whitespace().nth(9) {
                udp_inodes.insert(inode.to_string());
            }
        }
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .filter(|inode| udp_inodes.contains(inode))
        .count()
}

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The gateway's `/metrics`, summed per series name (labels dropped).
#[derive(Default, Clone, Debug)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// Scrapes `http://{http}/metrics`; empty if the gateway does not answer.
    pub fn scrape(http: SocketAddr) -> Metrics {
        let mut map = HashMap::new();
        let Ok(mut conn) = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(2))
        else {
            return Metrics(map);
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: gangway\r\n\r\n");
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        for line in text.lines().filter(|l| l.starts_with("gangway_")) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *map.entry(name.to_string()).or_default() += v;
            }
        }
        Metrics(map)
    }

    /// A series' value (summed over its labels); `NaN` if absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(f64::NAN)
    }

    /// Whether the scrape returned nothing (the gateway did not answer).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `gangway_calls_ended_total` by reason, from a fresh scrape (for the report).
pub fn ended_reasons(http: SocketAddr) -> Vec<(String, f64)> {
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(2)) else {
        return Vec::new();
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: gangway\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("gangway_calls_ended_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            let v: f64 = value.trim().parse().ok()?;
            (v > 0.0).then(|| (reason.to_string(), v))
        })
        .collect()
}

/// The last row of a sipp `-trace_stat` CSV file, by column name.
pub fn sipp_stats(path: &std::path::Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    header
        .split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A counter column of a sipp stats row (`SuccessfulCall(C)`, ...), 0 if absent.
pub fn sipp_count(stats: &HashMap<String, String>, column: &str) -> u64 {
    stats
        .get(column)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

//! One row of a long run's figures: the gateway process (from /proc), its
//! gauges (from `/metrics`), the machine, and the calls so far.

use std::net::SocketAddr;

use crate::probe::{fd_count, load1, machine_jiffies, status_field, udp_sockets, Metrics};
use crate::{cpu_seconds, rss_kib};

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub label: String,
    /// Seconds since the load started.
    pub elapsed: f64,
    /// Calls whose media flows, by the generator's count.
    pub bench_calls: i64,
    /// The gateway's gauges (NaN when it did not answer).
    pub calls_active: f64,
    pub rtp_ports: f64,
    pub peers: f64,
    pub ws: f64,
    pub parked: f64,
    pub udp: usize,
    pub fds: usize,
    pub threads: f64,
    pub rss_kib: f64,
    /// Cumulative gateway CPU seconds, and machine jiffies (busy, total).
    pub cpu: f64,
    pub jiffies: (u64, u64),
    /// Over the interval since the previous sample.
    pub gw_cpu_pct: f64,
    pub per_call_cpu_pct: f64,
    pub busy_pct: f64,
    pub load1: f64,
    pub attempts: u64,
    pub ok: u64,
    pub failed: u64,
    pub setup_p95: f64,
}

impl Sample {
    /// Reads the process and the gateway now; the interval figures are
    /// relative to `prev` and `call_seconds` (calls × seconds of media since).
    pub fn take(
        label: &str,
        elapsed: f64,
        pid: &str,
        http: SocketAddr,
        prev: Option<&Sample>,
        call_seconds: f64,
    ) -> Sample {
        let m = Metrics::scrape(http);
        let mut s = Sample {
            label: label.to_string(),
            elapsed,
            calls_active: m.get("gangway_calls_active"),
            rtp_ports: m.get("gangway_rtp_ports_active"),
            peers: m.get("gangway_webrtc_peers_active"),
            ws: m.get("gangway_ws_connections_active"),
            parked: m.get("gangway_sessions_parked"),
            udp: udp_sockets(pid),
            fds: fd_count(pid),
            threads: status_field(pid, "Threads"),
            rss_kib: rss_kib(pid),
            cpu: cpu_seconds(pid),
            jiffies: machine_jiffies(),
            load1: load1(),
            ..Sample::default()
        };
        if let Some(p) = prev {
            let dt = (elapsed - p.elapsed).max(0.001);
            let dcpu = s.cpu - p.cpu;
            s.gw_cpu_pct = 100.0 * dcpu / dt;
            s.per_call_cpu_pct = if call_seconds > 0.0 {
                100.0 * dcpu / call_seconds
            } else {
                f64::NAN
            };
            let busy = s.jiffies.0.saturating_sub(p.jiffies.0) as f64;
            let total = s.jiffies.1.saturating_sub(p.jiffies.1).max(1) as f64;
            // Of both cores together: 100 % = the machine is saturated.
            s.busy_pct = 100.0 * busy / total;
        }
        s
    }

    pub const CSV_HEADER: &'static str = "label,elapsed_s,bench_calls,gw_calls_active,\
rtp_ports_active,udp_sockets,webrtc_peers,ws_active,sessions_parked,fds,threads,rss_kib,\
gw_cpu_pct,per_call_cpu_pct,machine_busy_pct,load1,attempts,ok,failed,setup_p95_s";

    pub fn csv(&self) -> String {
        format!(
            "{},{:.0},{},{},{},{},{},{},{},{},{},{:.0},{:.1},{:.3},{:.1},{:.2},{},{},{},{:.2}",
            self.label,
            self.elapsed,
            self.bench_calls,
            self.calls_active,
            self.rtp_ports,
            self.udp,
            self.peers,
            self.ws,
            self.parked,
            self.fds,
            self.threads,
            self.rss_kib,
            self.gw_cpu_pct,
            self.per_call_cpu_pct,
            self.busy_pct,
            self.load1,
            self.attempts,
            self.ok,
            self.failed,
            self.setup_p95
        )
    }

    pub const TABLE_HEADER: &'static str = "| point | min | calls up | gw calls | RTP ports | \
UDP socks | peers | fds | threads | RSS MiB | gw CPU % | per call % | machine % | load | ok | failed | setup p95 s |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// A Markdown table row (as pasted into docs/performance.md).
    pub fn row(&self) -> String {
        format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.3} | {:.0} | {:.2} | {} | {} | {:.2} |",
            self.label,
            self.elapsed / 60.0,
            self.bench_calls,
            self.calls_active,
            self.rtp_ports,
            self.udp,
            self.peers,
            self.fds,
            self.threads,
            self.rss_kib / 1024.0,
            self.gw_cpu_pct,
            self.per_call_cpu_pct,
            self.busy_pct,
            self.load1,
            self.ok,
            self.failed,
            self.setup_p95
        )
    }
}

/// The 95th percentile of `values` (0 when empty).
pub fn p95(mut values: Vec<f32>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() as f64) * 0.95).ceil() as usize;
    values[i.clamp(1, values.len()) - 1] as f64
}

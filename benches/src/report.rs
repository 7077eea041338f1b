//! The end of a soak run: the start/middle/end/after table, what happened to
//! the calls, and the verdicts (leak, chaos) that set the exit status.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::churn::{Churn, Tally};
use crate::probe::Metrics;
use crate::relay::RelayStats;
use crate::sample::{p95, Sample};

/// Call counts and the setup p95 since `since` (seconds after `t0`).
pub fn fill_calls(s: &mut Sample, churn: &Churn, since: f64, t0: Instant) {
    s.bench_calls = churn.in_media.load(Ordering::Relaxed);
    let t = churn.tally.lock().unwrap();
    s.attempts = t.attempts;
    s.ok = t.ok();
    s.failed = t.failed();
    let from = t0 + Duration::from_secs_f64(since);
    s.setup_p95 = p95(t
        .setups
        .iter()
        .filter(|(at, _)| *at > from)
        .map(|(_, d)| *d)
        .collect());
}

/// The rows the report compares: idle before the load, its start (first
/// sample), middle (the sample labelled so, else the nearest to half time),
/// end (none after SIGTERM: the gateway is gone) and idle after.
pub struct Points<'a> {
    pub before: Option<&'a Sample>,
    pub start: Option<&'a Sample>,
    pub middle: Option<&'a Sample>,
    pub end: Option<&'a Sample>,
    pub after: Option<&'a Sample>,
}

impl<'a> Points<'a> {
    pub fn pick(samples: &'a [Sample], total: Duration, has_end: bool) -> Points<'a> {
        let by = |label: &str| samples.iter().find(|s| s.label == label);
        let busy: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.label != "idle before" && s.label != "after (idle)")
            .collect();
        let half = total.as_secs_f64() / 2.0;
        let nearest_half = busy.iter().copied().min_by(|x, y| {
            (x.elapsed - half)
                .abs()
                .total_cmp(&(y.elapsed - half).abs())
        });
        Points {
            before: by("idle before"),
            start: busy.first().copied(),
            middle: by("middle").or(nearest_half),
            end: if has_end {
                by("end").or(busy.last().copied())
            } else {
                None
            },
            after: by("after (idle)"),
        }
    }

    pub fn print(&self) {
        println!("\n{}", Sample::TABLE_HEADER);
        for (name, s) in [
            ("idle before", self.before),
            ("start", self.start),
            ("middle", self.middle),
            ("end", self.end),
            ("after (idle)", self.after),
        ] {
            if let Some(s) = s {
                let mut s = s.clone();
                s.label = name.into();
                println!("{}", s.row());
            }
        }
        println!();
    }

    /// Leak checks: the end against the middle (RSS, fds, UDP sockets within
    /// `tolerance_pct` plus a small slack, threads +2), and nothing left once
    /// every call has ended. Returns 1 on a suspected leak.
    pub fn leak_verdict(&self, tolerance_pct: f64, notes: &mut Vec<String>) -> i32 {
        let mut exit = 0;
        let tol = 1.0 + tolerance_pct / 100.0;
        if let (Some(m), Some(e)) = (self.middle, self.end) {
            let checks = [
                ("RSS KiB", m.rss_kib, e.rss_kib, 4096.0),
                ("fds", m.fds as f64, e.fds as f64, 20.0),
                ("UDP sockets", m.udp as f64, e.udp as f64, 20.0),
                ("threads", m.threads, e.threads, 2.0),
            ];
            for (what, mv, ev, slack) in checks {
                if m.label != e.label && ev > mv * tol + slack {
                    let allowed = mv * tol + slack;
                    notes.push(format!(
                        "LEAK? {what}: middle {mv:.0}, end {ev:.0} (allowed {allowed:.0})"
                    ));
                    exit = 1;
                }
            }
        }
        if let (Some(b), Some(x)) = (self.before, self.after) {
            for (what, v) in [
                ("calls_active", x.calls_active),
                ("rtp_ports_active", x.rtp_ports),
                ("webrtc_peers_active", x.peers),
                ("ws_connections_active", x.ws),
            ] {
                if v != 0.0 {
                    notes.push(format!("LEAK? {what} = {v} once every call had ended"));
                    exit = 1;
                }
            }
            if x.udp > b.udp || x.fds > b.fds + 5 {
                notes.push(format!(
                    "LEAK? idle before / after: UDP sockets {} / {}, fds {} / {}",
                    b.udp, x.udp, b.fds, x.fds
                ));
                exit = 1;
            }
        }
        exit
    }
}

/// What happened to the calls, in lines.
pub fn tally_lines(t: &Tally) -> Vec<String> {
    let mut out = vec![format!(
        "calls placed {}, ok {} (browser hung up {}, PBX hung up {}), failed {} ({:.2} %)",
        t.attempts,
        t.ok(),
        t.ok_browser,
        t.ok_pbx,
        t.failed(),
        100.0 * t.failed() as f64 / t.attempts.max(1) as f64
    )];
    for (cause, n) in &t.failures {
        out.push(format!("  failed: {n:>6}  {cause}"));
    }
    out.push(format!(
        "frames sent / echoed back (browser-ended calls) {} / {} ({:.2} % short)",
        t.frames_sent,
        t.frames_received,
        100.0 * t.frames_sent.saturating_sub(t.frames_received) as f64
            / t.frames_sent.max(1) as f64
    ));
    out
}

/// The gateway's own view of the SIP leg's media, from `/metrics`.
pub fn media_line(m: &Metrics) -> String {
    let calls = m.get("gangway_sip_leg_loss_ratio_count");
    format!(
        "gateway: SIP-leg loss per call (mean) {:.2} % over {calls} calls; \
         concealed frames {}; rtp_dropped {}; port exhaustions {}",
        100.0 * m.get("gangway_sip_leg_loss_ratio_sum") / calls.max(1.0),
        m.get("gangway_concealed_frames_total"),
        m.get("gangway_rtp_dropped_total"),
        m.get("gangway_rtp_port_exhausted_total"),
    )
}

/// What the impairing relay did.
pub fn relay_line(s: &RelayStats) -> String {
    let (f, d, o) = (
        s.rtp_forwarded.load(Ordering::Relaxed),
        s.rtp_dropped.load(Ordering::Relaxed),
        s.rtp_reordered.load(Ordering::Relaxed),
    );
    let all = (f + d).max(1) as f64;
    format!(
        "relay RTP forwarded {f}, dropped {d} ({:.2} %), reordered {o} ({:.2} %); \
         SIP forwarded {}, dropped {}; call sockets {} opened, {} open now",
        100.0 * d as f64 / all,
        100.0 * o as f64 / all,
        s.sip_forwarded.load(Ordering::Relaxed),
        s.sip_dropped.load(Ordering::Relaxed),
        s.calls_total.load(Ordering::Relaxed),
        s.calls_open.load(Ordering::Relaxed)
    )
}

/// What happened around the chaos event, from the calls' side.
pub fn chaos_notes(t: &Tally, at: Instant, restarted: Option<Instant>, up: i64) -> Vec<String> {
    let mut notes = vec![format!("chaos: {up} calls had media at the event")];
    let mut delays: Vec<f32> = Vec::new();
    let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
    for (started, ended, reason) in &t.gateway_ends {
        if *started < at && *ended >= at {
            delays.push((*ended - at).as_secs_f32());
            *reasons.entry(reason).or_default() += 1;
        }
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    if !delays.is_empty() {
        notes.push(format!(
            "calls up at the event that the gateway ended: {} {reasons:?}, \
             after {:.1} / {:.1} / {:.1} s (min / median / max)",
            delays.len(),
            delays[0],
            delays[delays.len() / 2],
            delays[delays.len() - 1]
        ));
    }
    if let Some(r) = restarted {
        let answered: Vec<f64> = t
            .setups
            .iter()
            .filter(|(a, _)| *a > r)
            .map(|(a, _)| (*a - r).as_secs_f64())
            .collect();
        let first = answered.iter().copied().fold(f64::INFINITY, f64::min);
        notes.push(format!(
            "after the restart: first call answered {first:.1} s later; {} calls answered since",
            answered.len()
        ));
    }
    notes
}

pub async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Panics of call tasks are counted as failed calls; their messages go to
/// a file instead of flooding the terminal.
pub fn quiet_panics(path: PathBuf) {
    let file = std::sync::Mutex::new(std::fs::File::create(path).expect("create the panic log"));
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write;
        let _ = writeln!(file.lock().unwrap(), "{info}");
    }));
}

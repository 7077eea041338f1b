//! Soak and chaos runs: N concurrent transcoded calls with churn (calls end
//! and new ones start all the time) through the release gateway's SIP leg to
//! sipp (`benches/sipp/uas_soak.xml`, echoing RTP), for minutes to hours.
//! Every `--sample-secs` it records the gateway's RSS, fds, threads, UDP
//! sockets, its call/RTP-port/peer gauges and CPU per call (CSV in `--out`),
//! and at the end prints the start/middle/end/after figures as a table.
//! Exit status: 0 = flat, 1 = a leak (end beyond tolerance of the middle, or
//! something left after the calls ended), 2 = a chaos check failed, 3 = too
//! many failed calls (mode `none`).
//!
//! Chaos modes (`--chaos`), each at the middle of the run:
//! - `loss`: the SIP leg goes through `relay` (random loss and reordering of
//!   the RTP each way, optionally of SIP) for the whole run;
//! - `pbx-restart`: sipp is killed and started again on the same port;
//! - `sigterm`: the gateway gets SIGTERM and must drain: exit 0, every call
//!   answered by sipp gets its BYE (none left "current" in sipp's stats).
//!
//! cargo build --release -p gangway -p gangway-benches
//! nice -n 5 target/release/soak --calls 200 --minutes 60 --hold-secs 20

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use gangway_benches::churn::{Churn, ChurnConfig};
use gangway_benches::probe::{ended_reasons, sipp_count, sipp_stats, Metrics};
use gangway_benches::relay::{Impairment, Relay};
use gangway_benches::report::{
    chaos_notes, fill_calls, join_all, media_line, quiet_panics, relay_line, tally_lines, Points,
};
use gangway_benches::sample::Sample;
use gangway_benches::{BrowserOpus, GatewayProcess};
use gangway_tests::sip_peers::{free_udp_port, free_udp_range, Sipp};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Chaos {
    None,
    Loss,
    PbxRestart,
    Sigterm,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    /// Concurrent calls (slots).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Mean call length: browser hang-ups after 0.5–1.5 × this; the PBX
    /// hangs up after 0.5, 1 or 1.5 × this.
    #[arg(long, default_value_t = 20)]
    hold_secs: u64,
    /// Share of calls the PBX hangs up (percent).
    #[arg(long, default_value_t = 30.0)]
    pbx_hangup_pct: f64,
    #[arg(long, value_enum, default_value_t = Chaos::None)]
    chaos: Chaos,
    #[arg(long, default_value_t = 5.0)]
    loss_pct: f64,
    #[arg(long, default_value_t = 5.0)]
    reorder_pct: f64,
    #[arg(long, default_value_t = 0.0)]
    sip_loss_pct: f64,
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
    /// pbx-restart: seconds sipp stays down.
    #[arg(long, default_value_t = 5)]
    restart_delay_secs: u64,
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    #[arg(long, default_value_t = 30)]
    media_timeout_secs: u64,
    /// The gateway's OPTIONS keepalive to the trunk every this many seconds
    /// (`sip.keepalive_interval_secs`; the scenario answers them); 0: off.
    #[arg(long, default_value_t = 0)]
    keepalive_secs: u64,
    /// Allowed growth from the middle to the end (RSS, fds, UDP sockets).
    #[arg(long, default_value_t = 10.0)]
    tolerance_pct: f64,
    /// Mode `none`: more failed calls than this share fails the run.
    #[arg(long, default_value_t = 1.0)]
    max_failed_pct: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn start_sipp(scenario: &str, port: u16, stat: &std::path::Path) -> Sipp {
    let stat = stat.display().to_string();
    Sipp::uas(
        scenario,
        port,
        &[
            "-rtp_echo",
            "-m",
            "100000000",
            "-trace_stat",
            "-stf",
            &stat,
            "-fd",
            "1",
            // The message trace would grow by ~100 MB an hour.
            "-ringbuffer_files",
            "1",
            "-ringbuffer_size",
            "20000000",
        ],
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out).expect("create the output directory");
    let tag = format!("{:?}-{}", a.chaos, a.calls).to_lowercase();
    quiet_panics(a.out.join(format!("{tag}-panics.log")));
    let hold = Duration::from_secs(a.hold_secs);
    let scenario = a.out.join("uas_soak.xml");
    let ms = |f: f64| format!("{:.0}", hold.as_millis() as f64 * f);
    let xml = include_str!("../sipp/uas_soak.xml")
        .replace("@EARLY@", &ms(0.5))
        .replace("@MID@", &ms(1.0))
        .replace("@LATE@", &ms(1.5));
    std::fs::write(&scenario, xml).expect("write the scenario");
    let scenario = std::fs::canonicalize(&scenario)
        .unwrap()
        .display()
        .to_string();
    let stat1 = std::fs::canonicalize(&a.out)
        .unwrap()
        .join(format!("{tag}-sipp1.csv"));
    let stat2 = stat1.with_file_name(format!("{tag}-sipp2.csv"));
    let _ = std::fs::remove_file(&stat1);
    let _ = std::fs::remove_file(&stat2);

    let mut sipp = Some(start_sipp(&scenario, 0, &stat1));
    let sipp_port = sipp.as_ref().unwrap().port();
    let relay = if a.chaos == Chaos::Loss {
        let imp = Impairment {
            loss: a.loss_pct / 100.0,
            reorder: a.reorder_pct / 100.0,
            sip_loss: a.sip_loss_pct / 100.0,
        };
        Some(Relay::start(sipp.as_ref().unwrap().addr(), imp, a.seed).await)
    } else {
        None
    };
    let trunk_port = relay.as_ref().map_or(sipp_port, |r| r.sip_port());
    let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let ports = (a.calls * 2 + 64) as u16;
    let rtp = free_udp_range(ports);
    let env = [
        ("GANGWAY_LOG__LEVEL", a.log_level.clone()),
        ("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0".into()),
        ("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "60".into()),
        ("GANGWAY_CALLS__MAX_PER_ADDRESS", "100000".into()),
        ("GANGWAY_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "100000".into()),
        ("GANGWAY_SIP__ENABLED", "true".into()),
        ("GANGWAY_SIP__LISTEN", "127.0.0.1:0".into()),
        ("GANGWAY_SIP__RTP_PORT_MIN", rtp.to_string()),
        ("GANGWAY_SIP__RTP_PORT_MAX", (rtp + ports - 1).to_string()),
        ("GANGWAY_SIP__TRUNK__HOST", "127.0.0.1".into()),
        ("GANGWAY_SIP__TRUNK__PORT", trunk_port.to_string()),
        ("GANGWAY_SIP__TRUNK__DOMAIN", "pbx.test".into()),
        (
            "GANGWAY_SIP__KEEPALIVE_INTERVAL_SECS",
            a.keepalive_secs.to_string(),
        ),
        (
            "GANGWAY_MEDIA__TIMEOUT_SECS",
            a.media_timeout_secs.to_string(),
        ),
        (
            "GANGWAY_SHUTDOWN__DRAIN_TIMEOUT_SECS",
            a.drain_secs.to_string(),
        ),
    ];
    let log = a.out.join(format!("{tag}-gateway.log"));
    let mut gateway = Some(GatewayProcess::start_logged(
        &a.gateway,
        http,
        &env,
        Some(&log),
    ));
    let pid = gateway.as_ref().unwrap().pid();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let churn = Churn::new(ChurnConfig {
        http,
        hold,
        pbx_share: a.pbx_hangup_pct / 100.0,
        seed: a.seed,
        frames: Arc::new(BrowserOpus::Fullband.frames()),
    });
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let mut samples = vec![Sample::take("idle before", 0.0, &pid, http, None, 0.0)];
    let max_calls = (total.as_secs() + 60) as usize;
    let mut slots = Vec::new();
    for i in 0..a.calls {
        let delay = hold.mul_f64(i as f64 / a.calls as f64);
        slots.push(tokio::spawn(churn.clone().run_slot(i, delay, max_calls)));
    }
    let csv_path = a.out.join(format!("{tag}.csv"));
    let mut csv = vec![Sample::CSV_HEADER.to_string(), samples[0].csv()];
    println!("{}", Sample::TABLE_HEADER);
    println!("{}", samples[0].row());

    let mid = total / 2;
    let mut chaos_at = None;
    let mut chaos_done = a.chaos == Chaos::None || a.chaos == Chaos::Loss;
    let mut restarted_at = None;
    let mut calls_at_chaos = 0;
    let mut reasons_before_stop = Vec::new();
    let mut media_before_stop = None;
    let mut call_seconds = 0.0;
    let mut next_sample = Duration::from_secs(a.sample_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Bounded: one pass a second for the run's length.
    for _ in 0..(total.as_secs() + 1) {
        tick.tick().await;
        call_seconds += churn.in_media.load(Ordering::Relaxed).max(0) as f64;
        let now = t0.elapsed();
        let last = now >= total;
        if now >= next_sample || last || (!chaos_done && now >= mid) {
            let label = if last {
                "end".to_string()
            } else {
                format!("t+{:.0}s", now.as_secs_f64())
            };
            let mut s = Sample::take(
                &label,
                now.as_secs_f64(),
                &pid,
                http,
                samples.last(),
                call_seconds,
            );
            fill_calls(
                &mut s,
                &churn,
                samples.last().map_or(0.0, |p| p.elapsed),
                t0,
            );
            call_seconds = 0.0;
            println!("{}", s.row());
            csv.push(s.csv());
            let _ = std::fs::write(&csv_path, csv.join("\n") + "\n");
            samples.push(s);
            next_sample = now + Duration::from_secs(a.sample_secs);
        }
        if !chaos_done && now >= mid {
            chaos_done = true;
            samples.last_mut().unwrap().label = "middle".into();
            chaos_at = Some(Instant::now());
            calls_at_chaos = churn.in_media.load(Ordering::Relaxed);
            if a.chaos == Chaos::PbxRestart {
                let old = sipp.take().unwrap();
                tokio::task::spawn_blocking(move || drop(old))
                    .await
                    .unwrap();
                eprintln!("sipp killed with {calls_at_chaos} calls up");
                tokio::time::sleep(Duration::from_secs(a.restart_delay_secs)).await;
                let (sc, st) = (scenario.clone(), stat2.clone());
                sipp = Some(
                    tokio::task::spawn_blocking(move || start_sipp(&sc, sipp_port, &st))
                        .await
                        .unwrap(),
                );
                restarted_at = Some(Instant::now());
                eprintln!("sipp started again on port {sipp_port}");
            } else {
                reasons_before_stop = ended_reasons(http);
                media_before_stop = Some(Metrics::scrape(http));
                break;
            }
        }
        if last {
            break;
        }
    }

    churn.stop.store(true, Ordering::Relaxed);
    let mut exit = 0;
    let mut notes = Vec::new();
    if a.chaos == Chaos::Sigterm {
        let mut gw = gateway.take().unwrap();
        gw.terminate();
        let sent = Instant::now();
        let (gw, status) = tokio::task::spawn_blocking(move || {
            let s = gw.wait_exit(Duration::from_secs(a.drain_secs + 40));
            (gw, s)
        })
        .await
        .unwrap();
        let took = sent.elapsed().as_secs_f64();
        notes.push(format!(
            "SIGTERM with {calls_at_chaos} calls up: exit {status:?} after {took:.1} s"
        ));
        if !status.is_some_and(|s| s.success()) {
            notes.push("FAIL: the gateway did not exit 0 after SIGTERM".into());
            exit = 2;
        }
        drop(gw);
    }
    // Calls in progress finish as planned (bounded by their own timeouts).
    let wait = hold * 3 + Duration::from_secs(120);
    let joined = tokio::time::timeout(wait, join_all(slots)).await.is_ok();
    if !joined {
        notes.push(format!(
            "FAIL: call slots still busy {wait:?} after the stop"
        ));
        exit = exit.max(2);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    if gateway.is_some() {
        // Every call has ended: each has its per-call histograms in.
        media_before_stop = Some(Metrics::scrape(http));
        reasons_before_stop = ended_reasons(http);
    }
    if let Some(m) = &media_before_stop {
        notes.push(media_line(m));
    }
    if gateway.is_some() {
        let mut s = Sample::take(
            "after (idle)",
            t0.elapsed().as_secs_f64(),
            &pid,
            http,
            samples.last(),
            0.0,
        );
        fill_calls(
            &mut s,
            &churn,
            samples.last().map_or(0.0, |p| p.elapsed),
            t0,
        );
        csv.push(s.csv());
        samples.push(s);
    }
    let _ = std::fs::write(&csv_path, csv.join("\n") + "\n");

    // sipp's view: every call it answered must have ended (its BYE came).
    let stat = if restarted_at.is_some() {
        &stat2
    } else {
        &stat1
    };
    let st = sipp_stats(stat);
    let current = sipp_count(&st, "CurrentCall");
    notes.push(format!(
        "sipp{}: incoming {}, successful {}, failed {}, current {}",
        if restarted_at.is_some() {
            " (after the restart)"
        } else {
            ""
        },
        sipp_count(&st, "IncomingCall(C)"),
        sipp_count(&st, "SuccessfulCall(C)"),
        sipp_count(&st, "FailedCall(C)"),
        current
    ));
    if current > 0 {
        notes.push(format!("FAIL: {current} calls at sipp never got a BYE"));
        exit = exit.max(2);
    }
    drop(sipp);

    let t = churn.tally.lock().unwrap();
    let points = Points::pick(&samples, total, a.chaos != Chaos::Sigterm);
    points.print();
    for line in tally_lines(&t) {
        println!("{line}");
    }
    println!("gateway calls_ended_total by reason: {reasons_before_stop:?}");
    if let Some(r) = &relay {
        println!("{}", relay_line(&r.stats));
    }
    if let Some(at) = chaos_at {
        notes.extend(chaos_notes(&t, at, restarted_at, calls_at_chaos));
    }
    exit = exit.max(points.leak_verdict(a.tolerance_pct, &mut notes));
    let failed_pct = 100.0 * t.failed() as f64 / t.attempts.max(1) as f64;
    if a.chaos == Chaos::None && failed_pct > a.max_failed_pct {
        notes.push(format!("FAIL: {failed_pct:.2} % of the calls failed"));
        exit = exit.max(3);
    }
    for n in &notes {
        println!("{n}");
    }
    let (csv, log) = (csv_path.display(), log.display());
    println!("figures: {csv}; gateway log: {log}");
    drop(t);
    // process::exit runs no destructors: stop the gateway first.
    drop(gateway);
    std::process::exit(exit);
}

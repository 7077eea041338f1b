//! Call-setup latency through the SIP leg.
//!
//! Starts the gateway binary ([`sip_leg::with_sipp`]) with its trunk
//! pointed at sipp's built-in auto-answering UAS, places N sequential calls
//! over the JSON API from a str0m peer, and reports two latencies per call:
//! - API `call` sent → INVITE received by sipp (sipp's own receive
//!   timestamps in its message trace; same machine, same clock);
//! - API `call` sent → `answered` received by the client.
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/call-setup --gateway target/release/gangway --calls 50

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use gangway_benches::sip_leg;
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    #[arg(long, default_value_t = 50)]
    calls: usize,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Receive times of the INVITEs in sipp's message trace, in UNIX seconds.
/// Entries look like `----- 2026-11-21 12:35:20.013665` then
/// `UDP message received [671] bytes :` then the request line.
fn invite_times(trace: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let lines: Vec<&str> = trace.lines().collect();
    for i in 0..lines.len().saturating_sub(3) {
        let stamp = lines[i].trim_start_matches('-').trim();
        if !lines[i].starts_with("-----")
            || !lines[i + 1].starts_with("UDP message received")
            || !lines[i + 3].starts_with("INVITE ")
        {
            continue;
        }
        if let Some(t) = parse_stamp(stamp) {
            out.push(t);
        }
    }
    out
}

/// One line per message in sipp's trace: time, direction, first line.
fn ladder(trace: &str) -> Vec<String> {
    let lines: Vec<&str> = trace.lines().collect();
    let mut out = Vec::new();
    for i in 0..lines.len().saturating_sub(3) {
        if lines[i].starts_with("-----") {
            let time = lines[i].trim_start_matches('-').trim();
            let dir = if lines[i + 1].contains("received") {
                "<-"
            } else {
                "->"
            };
            out.push(format!("{time} {dir} {}", lines[i + 3]));
        }
    }
    out
}

/// `2026-11-21 12:35:20.013665` (local time; the machine runs UTC) → UNIX seconds.
fn parse_stamp(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(' ')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.')?;
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let days = days_from_civil(d[0], d[1], d[2]);
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as f64 + format!("0.{frac}").parse::<f64>().ok()?)
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<28} n={:<3} min {:>7.2} ms  median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        v[0] * 1e3,
        pct(0.5) * 1e3,
        pct(0.9) * 1e3,
        v[v.len() - 1] * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    // The built-in UAS answers 180 + 200 at once and waits for our BYE.
    let sipp = Sipp::uas("uas", 0, &["-m", &args.calls.to_string()]);
    // Calls are sequential: a few RTP ports are enough.
    let leg = sip_leg::with_sipp(&args.gateway, sipp, 16, &[]);
    let mut api = ApiClient::connect_to(leg.http).await;

    let mut sent_at = Vec::new();
    let mut to_answered = Vec::new();
    for i in 0..args.calls {
        let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
        let id = format!("setup-{i}");
        let t0 = Instant::now();
        sent_at.push(unix_now());
        api.call(&id, "1000", &offer).await;
        loop {
            let m = api.recv().await;
            match m["type"].as_str() {
                Some("answered") => break,
                Some("ended") | Some("error") => panic!("call {i} failed: {m}"),
                _ => {}
            }
        }
        to_answered.push(t0.elapsed().as_secs_f64());
        api.hangup(&id).await;
        api.expect("ended").await;
    }
    // Let sipp flush its trace.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let trace = leg.sipp.messages();
    println!("first call as sipp saw it:");
    for line in ladder(&trace).iter().take(7) {
        println!("  {line}");
    }
    let invites = invite_times(&trace);
    assert_eq!(
        invites.len(),
        args.calls,
        "one INVITE per call in sipp's trace"
    );
    let to_invite: Vec<f64> = invites.iter().zip(&sent_at).map(|(r, s)| r - s).collect();
    summary("API call -> INVITE at sipp", to_invite);
    summary("API call -> answered", to_answered);
}

//! Speech quality per CPU: real speech (two synthesized talkers, about 10 s
//! each) sent both ways through the gateway at each Opus complexity towards
//! the browser, and through rtpengine, scored with ITU-T P.862 (PESQ,
//! narrowband MOS-LQO, the `pesq` package in a virtual environment of the
//! bench's own) against the original; also with `--loss` of the phone's
//! packets lost on the SIP leg, and the CPU per transcoded call at each
//! complexity (`transcode-load`'s workload). The ceiling is G.711 alone;
//! "codecs alone" is the gateway's codec chain without any networking.
//! Installs `espeak-ng`, Python's venv and `rtpengine-daemon` when missing
//! (root; not part of CI).
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/speech-quality

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gangway_benches::speech::{self, Talker, Tools};
use gangway_benches::speech_calls::{through_gangway, through_rtpengine, Heard};
use gangway_benches::speech_phone::SpeechPhone;
use gangway_benches::{
    codec_floor, plain_calls, rtpengine, transcode, BrowserOpus, GatewayProcess,
};
use gangway_tests::sip_peers::{free_udp_port, free_udp_range};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    /// Opus complexities towards the browser to try (`media.opus_complexity`).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,5,7,10")]
    complexities: Vec<u8>,
    /// Share of the phone's packets lost on the SIP leg in the lossy runs.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Concurrent calls for the CPU figures (0: no CPU figures).
    #[arg(long, default_value_t = 40)]
    load_calls: usize,
    #[arg(long, default_value_t = 10)]
    load_seconds: u64,
    /// Where the virtual environment, speech and scored tracks go.
    #[arg(long, default_value = "target/speech-quality")]
    dir: PathBuf,
    #[arg(long)]
    skip_rtpengine: bool,
}

/// One row: MOS-LQO per talker, each direction, clean and lossy.
struct Row {
    path: String,
    to_phone: Vec<f64>,
    to_browser: Vec<f64>,
    to_browser_lossy: Vec<f64>,
    cpu_per_call: Option<f64>,
    missing: usize,
}

fn mean(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!(
        "**{:.2}** ({})",
        v.iter().sum::<f64>() / v.len() as f64,
        each.join(", ")
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let tools = Tools::prepare(&args.dir);
    let talkers = tools.talkers();
    let score = |talker: &Talker, track: &[i16]| tools.pesq(&talker.pcm_8k, &[track.to_vec()])[0];
    let mut rows = Vec::new();

    let ceiling: Vec<f64> = talkers
        .iter()
        .map(|t| score(t, &speech::through_pcmu(&t.pcm_8k)))
        .collect();
    rows.push(Row {
        path: "G.711 alone (ceiling)".into(),
        to_phone: ceiling.clone(),
        to_browser: ceiling,
        to_browser_lossy: Vec::new(),
        cpu_per_call: None,
        missing: 0,
    });

    // Browser to phone without the gateway: Chromium's Opus at the 24 kb/s
    // the gateway's answer asks for, decoded at 8 kHz and sent on as
    // µ-law, as the gateway does.
    let to_phone_offline: Vec<f64> = talkers
        .iter()
        .map(|t| score(t, &speech::offline_to_phone(&t.pcm_48k, 24_000)))
        .collect();
    // What the browser sends at other bitrates: 12 kb/s is what Chromium
    // picks for `maxplaybackrate=8000` when the answer asks for none; the
    // gateway asks for 24 kb/s.
    for bitrate in [12_000, 16_000, 20_000] {
        rows.push(Row {
            path: format!("codecs alone, browser at {} kb/s", bitrate / 1000),
            to_phone: talkers
                .iter()
                .map(|t| score(t, &speech::offline_to_phone(&t.pcm_48k, bitrate)))
                .collect(),
            to_browser: Vec::new(),
            to_browser_lossy: Vec::new(),
            cpu_per_call: None,
            missing: 0,
        });
    }
    for &complexity in &args.complexities {
        let offline: Vec<f64> = talkers
            .iter()
            .map(|t| score(t, &speech::offline_to_browser(&t.pcm_8k, complexity)))
            .collect();
        // The codec floor at this complexity: libopus's own cost per call.
        let (floor, _) =
            codec_floor::opus_floor(BrowserOpus::Narrowband, complexity.into(), 24_000, 400);
        rows.push(Row {
            path: format!("codecs alone, complexity {complexity}"),
            to_phone: to_phone_offline.clone(),
            to_browser: offline,
            to_browser_lossy: Vec::new(),
            cpu_per_call: Some(100.0 * floor),
            missing: 0,
        });
        let mut row = gangway_row(&args, &tools, &talkers, complexity).await;
        if args.load_calls > 0 {
            let settings = [("GANGWAY_MEDIA__OPUS_COMPLEXITY", complexity.to_string())];
            let load = transcode::run(
                &args.gateway,
                args.load_calls,
                args.load_seconds,
                BrowserOpus::Narrowband,
                &settings,
            )
            .await;
            row.cpu_per_call = Some(load.cpu_per_call_pct());
        }
        rows.push(row);
    }

    if !args.skip_rtpengine {
        rtpengine::ensure_installed();
        let mut engine = rtpengine::RtpEngine::start(
            {
                let low = free_udp_range(64);
                (low, low + 63)
            },
            2,
        );
        let mut row = Row {
            path: "rtpengine (its default Opus settings)".into(),
            to_phone: Vec::new(),
            to_browser: Vec::new(),
            to_browser_lossy: Vec::new(),
            cpu_per_call: None,
            missing: 0,
        };
        for (n, talker) in talkers.iter().enumerate() {
            let clean = through_rtpengine(&mut engine, &format!("q{n}"), talker, 0.0).await;
            let lossy = through_rtpengine(&mut engine, &format!("l{n}"), talker, args.loss).await;
            add(&mut row, &tools, talker, &clean, &lossy);
        }
        drop(engine);
        if args.load_calls > 0 {
            let load = plain_calls::run(
                args.load_calls,
                args.load_seconds,
                2,
                BrowserOpus::Narrowband,
            )
            .await;
            row.cpu_per_call = Some(load.cpu_per_call_pct());
        }
        rows.push(row);
    }

    println!(
        "P.862 narrowband MOS-LQO (mean, then {}); {:.0} % loss on the SIP leg towards the \
         gateway in the lossy column; CPU per call: {} transcoded calls for {} s\n",
        talkers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.loss * 100.0,
        args.load_calls,
        args.load_seconds
    );
    println!("| path | browser → phone | phone → browser | phone → browser, lossy | CPU per call (% of a core; codecs alone: the codec floor) |");
    println!("|---|---|---|---|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.path,
            mean(&r.to_phone),
            mean(&r.to_browser),
            mean(&r.to_browser_lossy),
            r.cpu_per_call
                .map(|c| format!("{c:.3}"))
                .unwrap_or("–".into())
        );
        if r.missing > 0 {
            println!(
                "|   ({} frames never arrived on the clean runs) | | | | |",
                r.missing
            );
        }
    }
}

/// Both talkers through a gateway at `complexity`, clean and lossy.
async fn gangway_row(args: &Args, tools: &Tools, talkers: &[Talker], complexity: u8) -> Row {
    let mut phone = SpeechPhone::start().await;
    let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let rtp = free_udp_range(8);
    let env = [
        ("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0".to_string()),
        ("GANGWAY_SIP__ENABLED", "true".into()),
        ("GANGWAY_SIP__LISTEN", "127.0.0.1:0".into()),
        ("GANGWAY_SIP__RTP_PORT_MIN", rtp.to_string()),
        ("GANGWAY_SIP__RTP_PORT_MAX", (rtp + 7).to_string()),
        ("GANGWAY_SIP__TRUNK__HOST", "127.0.0.1".into()),
        ("GANGWAY_SIP__TRUNK__PORT", phone.sip_port().to_string()),
        ("GANGWAY_SIP__TRUNK__DOMAIN", "pbx.test".into()),
        ("GANGWAY_SIP__KEEPALIVE_INTERVAL_SECS", "0".into()),
        ("GANGWAY_MEDIA__OPUS_COMPLEXITY", complexity.to_string()),
    ];
    let gateway = GatewayProcess::start(&args.gateway, http, &env);
    let mut row = Row {
        path: format!("Gangway, complexity {complexity}"),
        to_phone: Vec::new(),
        to_browser: Vec::new(),
        to_browser_lossy: Vec::new(),
        cpu_per_call: None,
        missing: 0,
    };
    for talker in talkers {
        let clean = through_gangway(http, &mut phone, talker, 0.0).await;
        let lossy = through_gangway(http, &mut phone, talker, args.loss).await;
        add(&mut row, tools, talker, &clean, &lossy);
    }
    drop(gateway);
    row
}

fn add(row: &mut Row, tools: &Tools, talker: &Talker, clean: &Heard, lossy: &Heard) {
    let scores = tools.pesq(
        &talker.pcm_8k,
        &[
            clean.at_phone.clone(),
            clean.at_browser.clone(),
            lossy.at_browser.clone(),
        ],
    );
    row.to_phone.push(scores[0]);
    row.to_browser.push(scores[1]);
    row.to_browser_lossy.push(scores[2]);
    row.missing += clean.missing_at_phone + clean.missing_at_browser;
}

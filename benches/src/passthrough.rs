//! Passthrough calls near the floor (issue 15): PCMU browsers ⇄ the
//! gateway's SIP leg ⇄ sipp echoing RTP, G.711 end to end, no transcoding;
//! and in the same sitting the floor for those packets: a minimal relay
//! (one mio loop, two sockets per call, recv_from → send_to, the same
//! packet rate and datagram sizes the gateway saw) plus SRTP at the
//! cipher str0m negotiates (AEAD_AES_256_GCM, aws-lc-rs). Prints CPU per
//! call for each, Gangway / floor (the goal: within 3×), loss and memory,
//! and checks the gateway did not transcode (its answer named PCMU, no
//! browser Opus packets, no concealed frames).
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/passthrough --calls 50 --seconds 20 --rounds 2

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use gangway_benches::floor::{self, Protected, Sizes};
use gangway_benches::sip_leg::metric_sum;
use gangway_benches::LoadArgs;
use gangway_benches::{pcmu_tone_frames, transcode};
use gangway_tests::rtc_client::ClientCodec;
use gangway_tests::sip_peers::Sipp;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Gangway and the relay alternate this many times (drift on a shared
    /// machine hits both).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// G.711 at 20 ms.
const PAYLOAD: usize = 160;
/// The SRTP authentication tag of AEAD_AES_256_GCM.
const TAG: usize = 16;
/// RTP header extensions on the browser leg, estimated: a one-byte
/// extension block with the audio level and the mid, the two the gateway
/// answers. (The counters give the browser leg's bytes with RTCP mixed in;
/// the rest of them is put on the RTCP.)
const EXTENSIONS: usize = 8;
/// SRTCP: the 8-byte header authenticated, the 4-byte index after the
/// payload.
const SRTCP_HEADER: usize = 8;
const SRTCP_INDEX: usize = 4;

/// Datagrams per call-second and their mean size over the media phase,
/// from the gateway's counters `gangway_<what>_{packets,bytes}_<dir>_total`.
fn traffic(before: &str, after: &str, what: &str, dir: &str, call_seconds: f64) -> (f64, usize) {
    let delta = |name: String| metric_sum(after, &name) - metric_sum(before, &name);
    let packets = delta(format!("gangway_{what}_packets_{dir}_total"));
    let bytes = delta(format!("gangway_{what}_bytes_{dir}_total"));
    (
        packets / call_seconds,
        (bytes / packets.max(1.0)).round() as usize,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let frames = Arc::new(pcmu_tone_frames());
    // The echo the relay sends to: sipp -rtp_echo, as for the gateway.
    let echo_sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo", "-m", "1"]);
    let echo: SocketAddr = ([127, 0, 0, 1], echo_sipp.media_port()).into();
    let mut rows = Vec::new();
    let (mut gw_sum, mut relay_sum) = (0.0, 0.0);
    let mut sizes = Sizes {
        browser: 12 + EXTENSIONS + PAYLOAD + TAG,
        pbx: 12 + PAYLOAD,
        rtcp_per_second: 0.0,
        rtcp: 64,
    };
    for round in 1..=args.rounds {
        let g = transcode::run_calls(
            &args.load.gateway,
            args.load.calls,
            args.load.seconds,
            ClientCodec::Pcmu,
            frames.clone(),
            &[],
        )
        .await;
        let m = &g.metrics;
        let opus = metric_sum(m, "gangway_browser_opus_packets_total");
        let concealed = metric_sum(m, "gangway_concealed_frames_total");
        assert!(
            g.answered_codecs == ["PCMU"] && opus == 0.0 && concealed == 0.0,
            "the gateway transcoded: answered {:?}, {opus} browser Opus packets, \
             {concealed} concealed frames",
            g.answered_codecs
        );
        // The media phase's datagrams as the gateway counted them.
        let call_seconds = g.seconds * args.load.calls as f64;
        let mut flows = Vec::new();
        for what in ["webrtc", "rtp"] {
            for dir in ["received", "sent"] {
                let (rate, size) = traffic(&g.metrics_connected, m, what, dir, call_seconds);
                flows.push(format!("{what} {dir} {rate:.1}/s of {size} B"));
            }
        }
        println!("round {round}, per call: {}", flows.join(", "));
        let (rx_rate, rx_size) =
            traffic(&g.metrics_connected, m, "webrtc", "received", call_seconds);
        let (rtp_rate, rtp_size) = traffic(&g.metrics_connected, m, "rtp", "sent", call_seconds);
        let extra = (rx_rate - rtp_rate).max(0.0);
        sizes.pbx = rtp_size;
        sizes.browser = rtp_size + EXTENSIONS + TAG;
        sizes.rtcp_per_second = 50.0 * extra / rtp_rate.max(1.0);
        if extra > 0.0 {
            let rest = rx_rate * rx_size as f64 - rtp_rate * sizes.browser as f64;
            sizes.rtcp = ((rest / extra).round() as usize).max(SRTCP_HEADER + SRTCP_INDEX + TAG);
        }
        rows.push(format!(
            "| {round} | Gangway | {:.3} | {:.3} | {:.1} | {:.1} |",
            g.cpu_per_call_pct(),
            g.loss_pct(),
            g.rss_per_call_kib(),
            100.0 * g.generator_cpu / g.seconds
        ));
        if g.failed > 0 {
            rows.push(format!(
                "|   | ({} calls did not connect) | | | | |",
                g.failed
            ));
        }
        gw_sum += g.cpu_per_call_pct();
        println!("round {round}, gateway counters:\n{}", g.counters);
        let r = floor::relay(args.load.calls, args.load.seconds, sizes, echo).await;
        rows.push(format!(
            "| {round} | bare relay | {:.3} | {:.3} | — | {:.1} |",
            r.cpu_per_call_pct(),
            r.loss_pct(),
            100.0 * r.generator_cpu / r.seconds
        ));
        relay_sum += r.cpu_per_call_pct();
    }
    let header = sizes.browser.saturating_sub(PAYLOAD + TAG).max(12);
    let rtcp_payload = sizes.rtcp - SRTCP_HEADER - SRTCP_INDEX - TAG;
    let kinds = [
        Protected {
            per_second: 50,
            header,
            payload: PAYLOAD,
        },
        Protected {
            per_second: sizes.rtcp_per_second.round() as usize,
            header: SRTCP_HEADER,
            payload: rtcp_payload,
        },
    ];
    let srtp_pct = 100.0 * floor::srtp(&kinds, 20_000);
    let rounds = args.rounds as f64;
    let (gw, relay) = (gw_sum / rounds, relay_sum / rounds);
    let floor_pct = relay + srtp_pct;
    println!(
        "\n{} passthrough calls (PCMU browser ⇄ sipp echo), {} s of media each, {} rounds; \
         datagrams: {} B browser side, {} B SIP side, browser RTCP {:.1}/s of {} B each way\n",
        args.load.calls,
        args.load.seconds,
        args.rounds,
        sizes.browser,
        sizes.pbx,
        sizes.rtcp_per_second,
        sizes.rtcp
    );
    println!("| round | system | CPU per call (% of a core) | round-trip loss % | RSS per call KiB | generator CPU % |");
    println!("|---|---|---:|---:|---:|---:|");
    rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!("mean CPU per call: Gangway {gw:.3} %, bare relay {relay:.3} %");
    println!(
        "SRTP (AEAD_AES_256_GCM, aws-lc-rs; per call-second each way 50 RTP of {PAYLOAD} B \
         behind {header} B, {} RTCP of {rtcp_payload} B): {srtp_pct:.4} % per call",
        kinds[1].per_second
    );
    println!("floor (relay + SRTP): {floor_pct:.3} % per call");
    println!("Gangway / floor: {:.2}x", gw / floor_pct);
}

//! Memory per call, part by part, measured (issue 15): the WebRTC leg
//! (str0m `Rtc` as the gateway configures it, driven in process against
//! str0m peers) before and after DTLS and after media, libopus's encoder
//! and decoder, the `Transcoder`'s buffers, the reorder buffer, a bridge
//! and its shard entries, a session's queues; then the whole gateway's RSS
//! per call for echo, passthrough (PCMU) and transcoded calls.
//!
//! cargo build --locked --release -p gangway -p gangway-benches
//! target/release/call-memory --calls 50 --seconds 10
//!
//! Heap figures come from a counting global allocator that tags each block
//! with the side that made it (gateway code or test peer); aws-lc's C
//! allocations are routed through it (`CRYPTO_set_mem_functions`), so they
//! are counted too. libopus allocates with malloc: its states are sized by
//! `opus_*_get_size` and checked against glibc's `mallinfo2`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use gangway_benches::rtc_pair::Pair;
use gangway_benches::tally::{self, as_side, live, malloc_in_use, Side, Tally};
use gangway_benches::transcode::{self, Browser};
use gangway_benches::BrowserOpus;
use gangway_media::footprint;
use gangway_media::jitter::{JitterBuffer, MAX_PACKET};
use gangway_media::transcode::Transcoder;
use gangway_media::{LegEvent, OpusSettings};
use gangway_tests::rtc_client::ClientCodec;

#[global_allocator]
static ALLOC: Tally = Tally;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    /// Calls for the gateway runs and the in-process WebRTC legs.
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Media phase of each gateway run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Made-up seconds of media on the in-process WebRTC legs.
    #[arg(long, default_value_t = 60)]
    leg_seconds: u64,
    /// Only the in-process parts, no gateway runs.
    #[arg(long)]
    parts_only: bool,
}

struct Table(Vec<(String, f64, String)>);

impl Table {
    fn row(&mut self, part: impl Into<String>, bytes: f64, how: impl Into<String>) {
        self.0.push((part.into(), bytes, how.into()));
    }

    fn print(&self) {
        println!("| part | bytes per call | how measured |");
        println!("| --- | ---: | --- |");
        for (part, bytes, how) in &self.0 {
            println!("| {part} | {bytes:.0} | {how} |");
        }
    }
}

/// Live gateway-side heap (bytes, blocks) and malloc's in-use bytes.
fn snapshot() -> (isize, isize, usize) {
    let (bytes, blocks) = live(Side::Gateway);
    (bytes, blocks, malloc_in_use())
}

fn webrtc_leg(n: usize, leg_seconds: u64, t: &mut Table) {
    let mut pair = as_side(Side::Other, Pair::new);
    let base = snapshot();
    let peers_base = live(Side::Peer).0;
    let per = |s: (isize, isize, usize)| {
        (
            (s.0 - base.0) as f64 / n as f64,
            (s.1 - base.1) as f64 / n as f64,
        )
    };
    pair.add_calls(n);
    let (b, k) = per(snapshot());
    t.row(
        "WebRTC leg: Rtc after offer/answer",
        b,
        format!("counting allocator, gateway side, {n} legs ({k:.0} blocks per call)"),
    );
    let t0 = pair.now;
    assert!(pair.connect(), "the in-process legs did not connect");
    let (b, k) = per(snapshot());
    t.row(
        "WebRTC leg: Rtc after ICE + DTLS",
        b,
        format!(
            "same, {:.0} ms of made-up time ({k:.0} blocks per call)",
            (pair.now - t0).as_secs_f64() * 1000.0
        ),
    );
    pair.media(5, 0);
    let (b, k) = per(snapshot());
    t.row(
        "WebRTC leg: Rtc after 5 s of Opus both ways",
        b,
        format!(
            "same, {} frames echoed ({k:.0} blocks per call)",
            pair.echoed
        ),
    );
    let mut done = 5;
    for until in [30, leg_seconds] {
        if until <= done {
            continue;
        }
        pair.media(until - done, done * 50);
        done = until;
        let (b, k) = per(snapshot());
        t.row(
            format!("WebRTC leg: Rtc after {until} s of Opus both ways"),
            b,
            format!("same ({k:.0} blocks per call)"),
        );
    }
    let s = snapshot();
    let (b, _) = per(s);
    let peer_side = (live(Side::Peer).0 - peers_base) as f64;
    let malloc = s.2 as f64 - base.2 as f64;
    t.row(
        "  cross-check: malloc in use, both sides",
        malloc / n as f64 / 2.0,
        format!(
            "mallinfo2 delta / {n} / 2 (gateway {:.0} + peer {:.0} counted, plus 16 B tag and malloc's chunk header per block)",
            b,
            peer_side / n as f64
        ),
    );
    t.row(
        "  of which inline in the endpoint's map: str0m Rtc",
        std::mem::size_of::<str0m::Rtc>() as f64,
        "size_of::<str0m::Rtc>() (held in HashMap<PeerId, Peer>, which doubles as it grows)",
    );
    pair.hang_up();
    let (b, _) = per(snapshot());
    t.row(
        "  left after hang-up",
        b,
        "counting allocator (shared maps and queues keep their capacity)",
    );
}

fn codec_state(t: &mut Table) {
    // SAFETY: plain size queries.
    let (enc, dec) = unsafe {
        (
            opusic_sys::opus_encoder_get_size(1),
            opusic_sys::opus_decoder_get_size(1),
        )
    };
    t.row(
        "libopus encoder, 8 kHz mono",
        f64::from(enc),
        "opus_encoder_get_size(1) (malloc'd by libopus)",
    );
    t.row(
        "libopus decoder, 8 kHz mono",
        f64::from(dec),
        "opus_decoder_get_size(1)",
    );
    const N: usize = 100;
    let (before, m0) = (live(Side::Gateway).0, malloc_in_use());
    let held: Vec<Transcoder> = as_side(Side::Gateway, || {
        let v: Vec<Transcoder> = (0..N)
            .map(|_| Transcoder::new(OpusSettings::default()).expect("transcoder"))
            .collect();
        v
    });
    let rust = (live(Side::Gateway).0 - before) as f64 / N as f64;
    let malloc = (malloc_in_use() as f64 - m0 as f64) / N as f64;
    t.row(
        "Transcoder: its own buffers (Rust heap)",
        rust - std::mem::size_of::<Transcoder>() as f64,
        "counting allocator over 100 Transcoder::new, less the Vec holding them",
    );
    t.row(
        "  cross-check: Transcoder::new in malloc",
        malloc,
        "mallinfo2 delta / 100 (encoder + decoder + buffers + headers)",
    );
    as_side(Side::Gateway, || drop(held));
}

fn media_tables(t: &mut Table) {
    let mut jb = as_side(Side::Gateway, JitterBuffer::default);
    let before = live(Side::Gateway).0;
    let now = Instant::now();
    as_side(Side::Gateway, || {
        for k in 0..16u64 {
            jb.push(1000 + k * 160, &[0xff; 160], false, now);
        }
    });
    let grew = live(Side::Gateway).0 - before;
    let (b0, _) = live(Side::Gateway);
    let jb2 = as_side(Side::Gateway, JitterBuffer::default);
    let boxed = live(Side::Gateway).0 - b0;
    t.row(
        "Reorder buffer (JitterBuffer), transcoded calls",
        (boxed as usize + std::mem::size_of::<JitterBuffer>()) as f64,
        format!(
            "counting allocator: its boxed 16 slots of {MAX_PACKET} B, full or empty (filling it with 16 packets allocated {grew} B more)"
        ),
    );
    drop((jb, jb2));
    for (opus, name) in [(false, "passthrough"), (true, "transcoded")] {
        let (b0, m0) = (live(Side::Gateway).0, malloc_in_use());
        let bridge = as_side(Side::Gateway, || footprint::bridge(opus).expect("bridge"));
        let rust = live(Side::Gateway).0 - b0;
        let malloc = malloc_in_use() as isize - m0 as isize;
        t.row(
            format!("Bridge, {name} (all its parts)"),
            rust as f64,
            format!("counting allocator (Rust heap); malloc delta {malloc} B incl. libopus"),
        );
        drop(bridge);
    }
    for (name, size) in footprint::inline_sizes() {
        t.row(format!("  inline: {name}"), size as f64, "size_of");
    }
    t.row(
        "SIP-leg RTP + RTCP sockets",
        0.0,
        "2 UDP sockets per bridged call: kernel memory (socket structs, receive queues), not in RSS",
    );
}

fn queues(t: &mut Table) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (b0, _) = live(Side::Gateway);
    let ch = as_side(Side::Gateway, || {
        tokio::sync::mpsc::channel::<(gangway_rtc::PeerId, LegEvent)>(256)
    });
    let made = live(Side::Gateway).0 - b0;
    t.row(
        "Session: leg-event queue (256 × LegEvent)",
        made as f64,
        format!(
            "counting allocator at creation: tokio allocates blocks of 32 slots as it fills, so 256 × {} B is only an upper bound",
            std::mem::size_of::<(gangway_rtc::PeerId, LegEvent)>()
        ),
    );
    drop(ch);
}

async fn whole(args: &Args) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let pcmu: Vec<Vec<u8>> = (0..50).map(|k| vec![0xff - (k as u8 % 8); 160]).collect();
    let runs = [
        (
            "echo (Opus, gateway's echo line)",
            Browser {
                codec: ClientCodec::Opus,
                number: "echo",
                frames: Arc::new(BrowserOpus::Narrowband.frames()),
            },
        ),
        (
            "passthrough (PCMU to sipp)",
            Browser {
                codec: ClientCodec::Pcmu,
                number: "1000",
                frames: Arc::new(pcmu),
            },
        ),
        (
            "transcoded (Opus to PCMU, sipp)",
            Browser {
                codec: ClientCodec::Opus,
                number: "1000",
                frames: Arc::new(BrowserOpus::Narrowband.frames()),
            },
        ),
    ];
    for (name, browser) in runs {
        let r = transcode::run_with(&args.gateway, args.calls, args.seconds, browser, &[]).await;
        println!(
            "{name}: {} calls, {} failed, frames {} / {}, RSS {:.0} -> {:.0} KiB",
            r.calls, r.failed, r.sent, r.received, r.idle_rss_kib, r.busy_rss_kib
        );
        out.push((name.to_string(), r.rss_per_call_kib() * 1024.0));
    }
    out
}

fn main() {
    let hooked = tally::route_aws_lc();
    assert!(hooked, "aws-lc refused the allocator hooks");
    let args = Args::parse();
    let mut t = Table(Vec::new());
    webrtc_leg(args.calls, args.leg_seconds, &mut t);
    codec_state(&mut t);
    media_tables(&mut t);
    queues(&mut t);
    if !args.parts_only {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for (name, bytes) in rt.block_on(whole(&args)) {
            t.row(
                format!("Whole gateway, {name}"),
                bytes,
                format!(
                    "RSS busy − idle / {} calls (release gateway, {} s media)",
                    args.calls, args.seconds
                ),
            );
        }
    }
    t.print();
}

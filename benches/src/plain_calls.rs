//! The transcoded-call workload through rtpengine, as close to
//! [`crate::transcode`]'s as a plain-RTP media proxy allows: per call an
//! Opus caller (the same pre-encoded frames, 20 ms, PT 111) and a
//! PCMU callee that echoes what it gets, as sipp `-rtp_echo` does for the
//! gateway. rtpengine is told to offer the callee PCMU only and to keep
//! taking Opus from the caller (`codec: {transcode: [PCMU], mask: [opus]}`),
//! so every packet is transcoded twice, as through the gateway. What it does
//! not do that the gateway does: ICE, DTLS, SRTP, RTCP generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::bencode::Value;
use crate::rtpengine::{audio_port, RtpEngine};
use crate::{cpu_seconds, rss_kib, BrowserOpus};
use gangway_tests::sip_peers::free_udp_range;

/// What one run measured.
pub struct EngineRun {
    pub calls: usize,
    pub seconds: f64,
    pub engine_cpu: f64,
    pub generator_cpu: f64,
    pub sent: usize,
    pub received: usize,
    pub idle_rss_kib: f64,
    pub busy_rss_kib: f64,
}

impl EngineRun {
    pub fn cpu_per_call_pct(&self) -> f64 {
        100.0 * self.engine_cpu / self.seconds / self.calls as f64
    }

    pub fn loss_pct(&self) -> f64 {
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }

    pub fn rss_per_call_kib(&self) -> f64 {
        (self.busy_rss_kib - self.idle_rss_kib) / self.calls as f64
    }
}

pub fn caller_sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n\
         a=fmtp:111 useinbandfec=1\r\na=rtcp-mux\r\na=sendrecv\r\n"
    )
}

pub fn callee_sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\na=sendrecv\r\n"
    )
}

/// An RTP packet (not RTCP) with payload type `pt`.
fn is_rtp(packet: &[u8], pt: u8) -> bool {
    packet.len() > 12 && packet[0] >> 6 == 2 && packet[1] & 0x7f == pt
}

/// Runs `calls` transcoded calls for `seconds` through a fresh rtpengine
/// with `threads` worker threads, the caller sending `opus`.
pub async fn run(calls: usize, seconds: u64, threads: usize, opus: BrowserOpus) -> EngineRun {
    let span = (calls * 4 + 16) as u16;
    let low = free_udp_range(span);
    let mut engine = RtpEngine::start((low, low + span - 1), threads);
    let pid = engine.pid();
    let idle_rss_kib = rss_kib(&pid);
    let frames = Arc::new(opus.frames());
    let mut legs = Vec::new();
    for i in 0..calls {
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let call = format!("sbs-{i}");
        let codec = Value::dict(vec![
            ("transcode", Value::list(&["PCMU"])),
            ("mask", Value::list(&["opus"])),
        ]);
        let to_callee = engine
            .offer(
                &call,
                &caller_sdp(caller.local_addr().unwrap().port()),
                codec,
            )
            .unwrap_or_else(|e| panic!("rtpengine offer for {call}: {e}"));
        assert!(
            to_callee.contains("PCMU") && !to_callee.contains("opus"),
            "rtpengine offered the callee: {to_callee}"
        );
        let to_caller = engine
            .answer(&call, &callee_sdp(callee.local_addr().unwrap().port()))
            .unwrap_or_else(|e| panic!("rtpengine answer for {call}: {e}"));
        assert!(
            to_caller.contains("opus"),
            "rtpengine answered: {to_caller}"
        );
        let caller_to: SocketAddr = ([127, 0, 0, 1], audio_port(&to_caller).unwrap()).into();
        let callee_to: SocketAddr = ([127, 0, 0, 1], audio_port(&to_callee).unwrap()).into();
        legs.push((caller, caller_to, callee, callee_to));
    }
    let per_call = (seconds * 50) as usize;
    let start = Arc::new(tokio::sync::Barrier::new(calls + 1));
    let mut tasks = Vec::new();
    for (n, (caller, caller_to, callee, callee_to)) in legs.into_iter().enumerate() {
        let (start, frames) = (start.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            stream(
                n as u32, &caller, caller_to, &callee, callee_to, &frames, per_call,
            )
            .await
        }));
    }
    start.wait().await;
    let (engine0, self0, t0) = (cpu_seconds(&pid), cpu_seconds("self"), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let busy_rss_kib = rss_kib(&pid);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("call task"));
    }
    let run = EngineRun {
        calls,
        seconds: t0.elapsed().as_secs_f64(),
        engine_cpu: cpu_seconds(&pid) - engine0,
        generator_cpu: cpu_seconds("self") - self0,
        sent: results.iter().map(|r| r.0).sum(),
        received: results.iter().map(|r| r.1).sum(),
        idle_rss_kib,
        busy_rss_kib,
    };
    for i in 0..calls {
        engine.delete(&format!("sbs-{i}"));
    }
    run
}

/// One call's media: `count` Opus frames from the caller every 20 ms, the
/// callee echoing RTP back to where it came from; returns the frames sent
/// and the Opus packets the caller got back (until 500 ms after the last).
async fn stream(
    ssrc: u32,
    caller: &UdpSocket,
    caller_to: SocketAddr,
    callee: &UdpSocket,
    callee_to: SocketAddr,
    frames: &[Vec<u8>],
    count: usize,
) -> (usize, usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut sent, mut received) = (0usize, 0usize);
    let mut packet = Vec::with_capacity(512);
    let (mut from_engine, mut to_echo) = (vec![0u8; 1500], vec![0u8; 1500]);
    let mut drain_until = None;
    // The callee answers first: rtpengine learns its address from the SDP.
    let _ = callee
        .send_to(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], callee_to)
        .await;
    loop {
        tokio::select! {
            _ = tick.tick(), if sent < count => {
                let frame = &frames[sent % frames.len()];
                packet.clear();
                packet.extend_from_slice(&[0x80, 111]);
                packet.extend_from_slice(&(sent as u16).to_be_bytes());
                packet.extend_from_slice(&((sent as u32) * 960).to_be_bytes());
                packet.extend_from_slice(&(0x5b5_0000 + ssrc).to_be_bytes());
                packet.extend_from_slice(frame);
                let _ = caller.send_to(&packet, caller_to).await;
                sent += 1;
                if sent == count {
                    drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
            }
            Ok((n, _)) = caller.recv_from(&mut from_engine) => {
                if is_rtp(&from_engine[..n], 111) {
                    received += 1;
                }
            }
            Ok((n, from)) = callee.recv_from(&mut to_echo) => {
                if is_rtp(&to_echo[..n], 0) {
                    let _ = callee.send_to(&to_echo[..n], from).await;
                }
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))), if drain_until.is_some() => {
                return (sent, received);
            }
        }
    }
}

//! The floor under a passthrough call (G.711 relayed between a browser's
//! SRTP and a PBX's RTP, no transcoding): what any relay pays for the same
//! packets, measured in the same sitting as the gateway.
//!
//! - [`relay`]: a minimal relay, one thread and one mio poll loop (the
//!   model of one gateway media shard, without str0m), two UDP sockets per
//!   call, `recv_from` → `send_to` each way between a generator and an echo
//!   (sipp `-rtp_echo`), at the gateway's packet rate and datagram sizes.
//!   The browser's RTCP, at the rate the gateway counted in the same
//!   sitting, is answered by the relay with one datagram of the same size,
//!   as the gateway's own reports go back at about the same rate. Only the
//!   relay thread's CPU is counted.
//! - [`srtp`]: the SRTP a browser leg needs per call-second at the cipher
//!   str0m negotiates between str0m peers (AEAD_AES_256_GCM: dimpl's
//!   server picks it first and str0m offers it first), with the crypto
//!   library str0m uses (aws-lc-rs): 50 RTP packets sealed towards the
//!   browser and 50 opened from it, and the RTCP likewise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use mio::{Events, Interest, Poll, Token};

use crate::cpu_seconds;

/// Datagram sizes of a call: browser side (SRTP, header extensions and
/// tag included) and PBX side (plain RTP), and the browser leg's RTCP:
/// datagrams per second each way and their size.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub browser: usize,
    pub pbx: usize,
    pub rtcp_per_second: f64,
    pub rtcp: usize,
}

/// RTCP payload type 205 (transport-layer feedback), in the second byte.
const RTPFB: u8 = 205;

/// What one relay run measured.
pub struct RelayRun {
    pub calls: usize,
    pub seconds: f64,
    /// CPU seconds of the relay thread.
    pub relay_cpu: f64,
    pub generator_cpu: f64,
    pub sent: usize,
    pub received: usize,
}

impl RelayRun {
    pub fn cpu_per_call_pct(&self) -> f64 {
        100.0 * self.relay_cpu / self.seconds / self.calls as f64
    }

    pub fn loss_pct(&self) -> f64 {
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }
}

/// Relays `calls` calls for `seconds` to the echo at `echo`: each call's
/// generator socket sends a `sizes.browser` datagram every 20 ms to the
/// relay, which sends `sizes.pbx` bytes of it to the echo and, when they
/// come back, `sizes.browser` bytes to the generator; and RTCP at
/// `sizes.rtcp_per_second`, which the relay answers itself.
pub async fn relay(calls: usize, seconds: u64, sizes: Sizes, echo: SocketAddr) -> RelayRun {
    let poll = Poll::new().expect("poll");
    let mut legs = Vec::new();
    let mut fronts = Vec::new();
    for i in 0..calls {
        let front = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        fronts.push(front.local_addr().unwrap());
        front.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let (mut front, mut back) = (
            mio::net::UdpSocket::from_std(front),
            mio::net::UdpSocket::from_std(back),
        );
        let r = poll.registry();
        r.register(&mut front, Token(2 * i), Interest::READABLE)
            .unwrap();
        r.register(&mut back, Token(2 * i + 1), Interest::READABLE)
            .unwrap();
        legs.push((front, back));
    }
    let waker = mio::Waker::new(poll.registry(), WAKE).expect("waker");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay_loop(poll, legs, echo, sizes, &stop2))
        .expect("relay thread");
    let start = Arc::new(tokio::sync::Barrier::new(calls + 1));
    let mut tasks = Vec::new();
    for front in fronts {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            start.wait().await;
            generate(&socket, front, sizes, (seconds * 50) as usize).await
        }));
    }
    start.wait().await;
    let (self0, t0) = (cpu_seconds("self"), std::time::Instant::now());
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("generator task"));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let generator_cpu = cpu_seconds("self") - self0;
    stop.store(true, Ordering::SeqCst);
    let _ = waker.wake();
    // The relay sleeps in its poll until the generators start.
    let relay_cpu = thread.join().expect("relay thread");
    RelayRun {
        calls,
        seconds,
        relay_cpu,
        generator_cpu: generator_cpu - relay_cpu,
        sent: results.iter().map(|r| r.0).sum(),
        received: results.iter().map(|r| r.1).sum(),
    }
}

type Legs = Vec<(mio::net::UdpSocket, mio::net::UdpSocket)>;

/// The token of the waker that stops the relay.
const WAKE: Token = Token(usize::MAX);

/// The relay, on `poll` where call i's sockets are tokens 2i and 2i + 1:
/// returns the CPU seconds its thread used, once told to stop.
fn relay_loop(
    mut poll: Poll,
    legs: Legs,
    echo: SocketAddr,
    sizes: Sizes,
    stop: &AtomicBool,
) -> f64 {
    let mut browsers: Vec<Option<SocketAddr>> = vec![None; legs.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let cpu0 = cpu_seconds("thread-self");
    while !stop.load(Ordering::SeqCst) {
        let _ = poll.poll(&mut events, None);
        for ev in &events {
            if ev.token() == WAKE {
                continue;
            }
            let i = ev.token().0 / 2;
            let (front, back) = &legs[i];
            if ev.token().0 % 2 == 0 {
                while let Ok((n, from)) = front.recv_from(&mut buf) {
                    if buf[1] == RTPFB {
                        let _ = front.send_to(&buf[..n], from);
                        continue;
                    }
                    browsers[i] = Some(from);
                    let _ = back.send_to(&buf[..sizes.pbx], echo);
                }
            } else {
                while back.recv_from(&mut buf).is_ok() {
                    if let Some(to) = browsers[i] {
                        let _ = front.send_to(&buf[..sizes.browser], to);
                    }
                }
            }
        }
    }
    cpu_seconds("thread-self") - cpu0
}

/// One call's generator: `count` media datagrams to `to`, one per 20 ms,
/// and RTCP at its rate; returns the media datagrams sent and those that
/// came back (until 500 ms after the last).
async fn generate(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    sizes: Sizes,
    count: usize,
) -> (usize, usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let rtcp_every = Duration::from_secs_f64(1.0 / sizes.rtcp_per_second.max(0.1));
    let mut rtcp_tick = tokio::time::interval(rtcp_every);
    let rtcp = [&[0x8f, RTPFB][..], &vec![0u8; sizes.rtcp.saturating_sub(2)]].concat();
    let (mut sent, mut received) = (0, 0);
    let mut packet = vec![0x80u8; sizes.browser];
    let mut buf = vec![0u8; 2048];
    let drain = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = tick.tick(), if sent < count => {
                packet[2..4].copy_from_slice(&(sent as u16).to_be_bytes());
                let _ = socket.send_to(&packet, to).await;
                sent += 1;
                if sent == count {
                    drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(500));
                }
            }
            _ = rtcp_tick.tick(), if sent < count && sizes.rtcp_per_second > 0.0 => {
                let _ = socket.send_to(&rtcp, to).await;
            }
            Ok(_) = socket.recv_from(&mut buf) => if buf[1] != RTPFB { received += 1 },
            _ = &mut drain => return (sent, received),
        }
    }
}

/// A kind of packet on the browser leg: per call-second this many each
/// way, with this much authenticated header and encrypted payload.
#[derive(Clone, Copy, Debug)]
pub struct Protected {
    pub per_second: usize,
    pub header: usize,
    pub payload: usize,
}

/// CPU seconds per call-second of SRTP at AEAD_AES_256_GCM: each kind's
/// packets sealed towards the browser and as many opened from it, over
/// `call_seconds` call-seconds in this thread.
pub fn srtp(kinds: &[Protected], call_seconds: usize) -> f64 {
    let key = |k: u8| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[k; 32]).unwrap());
    let (towards, from) = (key(1), key(2));
    let mut sink = 0usize;
    let mut cpu = 0.0;
    for kind in kinds {
        let aad = vec![0x80u8; kind.header];
        // What the browser sent: sealed here, outside the measurement.
        let incoming: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                let mut p = vec![0xd5u8; kind.payload];
                let tag = from
                    .seal_in_place_separate_tag(nonce(i), Aad::from(&aad), &mut p)
                    .unwrap();
                p.extend_from_slice(tag.as_ref());
                p
            })
            .collect();
        let mut out = vec![0u8; kind.payload];
        let mut scratch = vec![0u8; kind.payload + 16];
        let cpu0 = cpu_seconds("thread-self");
        for n in 0..call_seconds * kind.per_second {
            let i = (n % 50) as u32;
            out.fill(i as u8);
            let tag = towards
                .seal_in_place_separate_tag(nonce(n as u32), Aad::from(&aad), &mut out)
                .unwrap();
            sink += tag.as_ref()[0] as usize;
            scratch.copy_from_slice(&incoming[i as usize]);
            let plain = from
                .open_in_place(nonce(i), Aad::from(&aad), &mut scratch)
                .unwrap();
            sink += plain.first().copied().unwrap_or(0) as usize;
        }
        cpu += cpu_seconds("thread-self") - cpu0;
    }
    std::hint::black_box(sink);
    cpu / call_seconds as f64
}

/// An SRTP-style 12-byte IV that differs per packet index.
fn nonce(index: u32) -> Nonce {
    let mut iv = [0x5au8; 12];
    iv[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(iv)
}

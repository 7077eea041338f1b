//! Calls that end and are replaced, for long runs: each of N slots places a
//! call from an Opus-only str0m peer through the gateway's SIP leg, streams
//! audio for a bounded, varying time, has the call hung up by one side or
//! the other, and places the next one.
//!
//! Who hangs up is picked per call: the browser (`hangup` after 0.5–1.5 ×
//! the hold time, destination `1000`) or the PBX (destination `2000`, which
//! the soak scenario answers and then hangs up itself with a BYE).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};

use crate::relay::Lcg;

/// Destination the soak scenario only answers (the browser hangs up).
pub const BROWSER_HANGS_UP: &str = "1000";
/// Destination the soak scenario answers and hangs up itself.
pub const PBX_HANGS_UP: &str = "2000";

pub struct ChurnConfig {
    pub http: SocketAddr,
    /// Mean call length; browser hang-ups fall in 0.5–1.5 × this.
    pub hold: Duration,
    /// Share (0–1) of calls the PBX hangs up.
    pub pbx_share: f64,
    pub seed: u64,
    /// Pre-encoded Opus frames the peers send round-robin.
    pub frames: Arc<Vec<Vec<u8>>>,
}

/// Counts of what happened to the calls, kept by [`Churn`].
#[derive(Default)]
pub struct Tally {
    pub attempts: u64,
    /// Ended as planned: the browser's `hangup`, or the PBX's BYE.
    pub ok_browser: u64,
    pub ok_pbx: u64,
    /// Everything else, by a short cause.
    pub failures: BTreeMap<String, u64>,
    /// Frames sent and received back (sipp echoes) in browser-ended calls.
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Calls the gateway ended while their media ran (not a planned hang-up):
    /// when media started, when `ended` came, and its reason.
    pub gateway_ends: Vec<(Instant, Instant, String)>,
    /// When each answered call was answered, and its setup time in seconds
    /// (`call` sent to `answered` received).
    pub setups: Vec<(Instant, f32)>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.ok_browser + self.ok_pbx
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// The shared state of a churning load.
pub struct Churn {
    pub cfg: ChurnConfig,
    /// Set to stop placing new calls; calls in progress finish as planned.
    pub stop: AtomicBool,
    /// Calls whose media is flowing now.
    pub in_media: AtomicI64,
    pub tally: Mutex<Tally>,
}

enum Outcome {
    Ok {
        by_pbx: bool,
        sent: usize,
        received: usize,
    },
    Failed(String),
    EndedByGateway {
        up: Instant,
        reason: String,
    },
}

struct InMedia<'a>(&'a AtomicI64);

impl Drop for InMedia<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Churn {
    pub fn new(cfg: ChurnConfig) -> Arc<Churn> {
        Arc::new(Churn {
            cfg,
            stop: AtomicBool::new(false),
            in_media: AtomicI64::new(0),
            tally: Mutex::new(Tally::default()),
        })
    }

    /// One slot: waits `start_delay`, then places calls one after the other
    /// until told to stop or `max_calls` have been placed.
    pub async fn run_slot(self: Arc<Self>, slot: usize, start_delay: Duration, max_calls: usize) {
        tokio::time::sleep(start_delay).await;
        let mut rng = Lcg(self.cfg.seed ^ (slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for n in 0..max_calls {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let by_pbx = rng.unit() < self.cfg.pbx_share;
            let lifetime = if by_pbx {
                // A cap: the PBX hangs up well before (see the scenario).
                self.cfg.hold * 3
            } else {
                self.cfg.hold.mul_f64(0.5 + rng.unit())
            };
            let id = format!("s{slot}c{n}");
            let call = tokio::spawn(self.clone().one_call(id, by_pbx, lifetime));
            let outcome = match call.await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("panic: {}", panic_text(e))),
            };
            let failed = !matches!(outcome, Outcome::Ok { .. });
            self.record(outcome);
            if failed {
                // No hot loop while the gateway or the PBX is down.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn record(&self, outcome: Outcome) {
        let mut t = self.tally.lock().unwrap();
        t.attempts += 1;
        match outcome {
            Outcome::Ok {
                by_pbx: true,
                sent,
                received,
            } => {
                t.ok_pbx += 1;
                t.frames_sent += sent as u64;
                t.frames_received += received as u64;
            }
            Outcome::Ok { sent, received, .. } => {
                t.ok_browser += 1;
                t.frames_sent += sent as u64;
                t.frames_received += received as u64;
            }
            Outcome::Failed(cause) => *t.failures.entry(cause).or_default() += 1,
            Outcome::EndedByGateway { up, reason } => {
                *t.failures
                    .entry(format!("ended in call: {reason}"))
                    .or_default() += 1;
                t.gateway_ends.push((up, Instant::now(), reason));
            }
        }
    }

    async fn one_call(self: Arc<Self>, id: String, by_pbx: bool, lifetime: Duration) -> Outcome {
        let mut api = ApiClient::connect_to(self.cfg.http).await;
        let (mut client, offer) = RtcClient::new(ClientCodec::Opus).await;
        let to = if by_pbx {
            PBX_HANGS_UP
        } else {
            BROWSER_HANGS_UP
        };
        let placed = Instant::now();
        api.call(&id, to, &offer).await;
        // The gateway's SDP answer for the WebRTC leg.
        loop {
            let Some(m) = api.recv_within(Duration::from_secs(30)).await else {
                api.close().await;
                return Outcome::Failed("no answer message".into());
            };
            match m["type"].as_str() {
                Some("answer") => {
                    client.accept_answer(m["sdp"].as_str().unwrap_or(""));
                    break;
                }
                Some("error") => {
                    api.close().await;
                    return Outcome::Failed(format!("error: {}", m["code"]));
                }
                Some("ended") => {
                    api.close().await;
                    return Outcome::Failed(format!("ended before answer: {}", m["reason"]));
                }
                _ => {}
            }
        }
        if !client.connect(Duration::from_secs(20)).await {
            api.hangup(&id).await;
            api.close().await;
            return Outcome::Failed("ICE/DTLS did not connect".into());
        }
        // The far end's 200 OK.
        loop {
            let Some(m) = api.recv_within(Duration::from_secs(45)).await else {
                api.hangup(&id).await;
                api.close().await;
                return Outcome::Failed("not answered within 45 s".into());
            };
            match m["type"].as_str() {
                Some("answered") => break,
                Some("ended") => {
                    api.close().await;
                    return Outcome::Failed(format!("ended before answered: {}", m["reason"]));
                }
                _ => {}
            }
        }
        let up = Instant::now();
        self.tally
            .lock()
            .unwrap()
            .setups
            .push((up, (up - placed).as_secs_f32()));
        self.in_media.fetch_add(1, Ordering::Relaxed);
        let media = InMedia(&self.in_media);
        let frames = (lifetime.as_millis() / 20) as usize;
        let streamed = {
            let stream = client.stream_frames(&self.cfg.frames, frames, Duration::ZERO);
            tokio::pin!(stream);
            loop {
                tokio::select! {
                    r = &mut stream => break Ok(r),
                    m = api.recv_within(lifetime + Duration::from_secs(60)) => {
                        if let Some(m) = m.filter(|m| m["type"] == "ended") {
                            break Err(m["reason"].as_str().unwrap_or("?").to_string());
                        }
                    }
                }
            }
        };
        drop(media);
        let outcome = match streamed {
            Err(reason) if by_pbx && reason == "remote_hangup" => Outcome::Ok {
                by_pbx,
                sent: 0,
                received: 0,
            },
            Err(reason) => Outcome::EndedByGateway { up, reason },
            Ok((sent, received)) => {
                api.hangup(&id).await;
                let mut ended = None;
                for _ in 0..20 {
                    match api.recv_within(Duration::from_secs(10)).await {
                        Some(m) if m["type"] == "ended" => {
                            ended = Some(m["reason"].as_str().unwrap_or("?").to_string());
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                match ended {
                    _ if by_pbx => Outcome::Failed("PBX did not hang up".into()),
                    Some(r) if r == "hangup" => Outcome::Ok {
                        by_pbx,
                        sent,
                        received,
                    },
                    Some(r) => Outcome::Failed(format!("hangup ended as {r}")),
                    None => Outcome::Failed("no ended after hangup".into()),
                }
            }
        };
        api.close().await;
        outcome
    }
}

/// The message of a panicked task, shortened to one line.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "cancelled".into();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let line = text.lines().next().unwrap_or("").to_string();
    line.chars().take(90).collect()
}

//! Shared pieces of the load generators: the gateway as a child process and
//! its CPU and memory, read from /proc.

pub mod bencode;
pub mod churn;
pub mod codec_floor;
pub mod floor;
pub mod plain_calls;
pub mod probe;
pub mod relay;
pub mod report;
pub mod rtc_pair;
pub mod rtpengine;
pub mod sample;
pub mod setup_burst;
pub mod sip_leg;
pub mod speech;
pub mod speech_calls;
pub mod speech_phone;
pub mod tally;
pub mod transcode;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// utime + stime of a process (`self` for this one, `thread-self` for
/// the calling thread), in seconds (10 ms ticks).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// The arguments every load run takes: which gateway, how many calls, how
// long. (Not a doc comment: clap would show it as each binary's about.)
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[arg(long, default_value = "target/release/gangway")]
    pub gateway: PathBuf,
    #[arg(long, default_value_t = 50)]
    pub calls: usize,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

/// The gateway binary running as a child; killed on drop.
pub struct GatewayProcess {
    child: Child,
    pub http: SocketAddr,
}

impl GatewayProcess {
    /// Starts `binary` with HTTP on `http` plus `env` overrides and waits for `/healthz`.
    pub fn start(binary: &Path, http: SocketAddr, env: &[(&str, String)]) -> GatewayProcess {
        Self::start_logged(binary, http, env, None)
    }

    /// Like [`GatewayProcess::start`], with the gateway's log (its stdout
    /// and stderr) written to the file `log`.
    pub fn start_logged(
        binary: &Path,
        http: SocketAddr,
        env: &[(&str, String)],
        log: Option<&Path>,
    ) -> GatewayProcess {
        let mut cmd = Command::new(binary);
        cmd.env("GANGWAY_HTTP__LISTEN", http.to_string())
            .env("GANGWAY_LOG__LEVEL", "warn")
            // A load generator is one address placing calls as fast as it
            // can: the per-address and trunk call rates would refuse it.
            .env("GANGWAY_CALLS__MAX_NEW_PER_SECOND_PER_ADDRESS", "0")
            .env("GANGWAY_SIP__MAX_CALLS_PER_SECOND", "0")
            .stdout(Stdio::null());
        if let Some(log) = log {
            let file = std::fs::File::create(log).expect("create the gateway log");
            cmd.stdout(file.try_clone().expect("clone the log file"))
                .stderr(file);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start gateway");
        let gw = GatewayProcess { child, http };
        let url = format!("http://{http}/healthz");
        let deadline = Instant::now() + Duration::from_secs(10);
        while ureq::get(&url).call().is_err() {
            assert!(Instant::now() < deadline, "gateway did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends SIGTERM (the start of a graceful drain).
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running (it is killed on drop).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU and memory over the media phase of a load run.
pub struct MediaPhase {
    /// Seconds the phase lasted.
    pub seconds: f64,
    /// CPU seconds the gateway and this generator used during it.
    pub gateway_cpu: f64,
    pub generator_cpu: f64,
    /// Gateway RSS halfway through, KiB.
    pub busy_rss_kib: f64,
}

/// Measures the media phase: samples CPU now, the gateway's RSS after
/// `half`, and CPU again once every call task has finished.
pub async fn measure_media_phase<T>(
    pid: &str,
    half: Duration,
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> (MediaPhase, Vec<T>) {
    let gw_cpu0 = cpu_seconds(pid);
    let self_cpu0 = cpu_seconds("self");
    let t0 = Instant::now();
    tokio::time::sleep(half).await;
    let busy_rss_kib = rss_kib(pid);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("call task"));
    }
    let phase = MediaPhase {
        seconds: t0.elapsed().as_secs_f64(),
        gateway_cpu: cpu_seconds(pid) - gw_cpu0,
        generator_cpu: cpu_seconds("self") - self_cpu0,
        busy_rss_kib,
    };
    (phase, results)
}

/// The Opus a generator's browsers send: 50 frames (1 s) of a 1 kHz tone,
/// 20 ms each, at 48 kHz as RTP counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrowserOpus {
    /// What Chromium sends after the gateway's answer on bridged calls
    /// (`maxplaybackrate=8000;maxaveragebitrate=24000`): narrowband SILK
    /// (maximum bandwidth NB), 24 kb/s, in-band FEC, complexity 9 (WebRTC's
    /// default on desktop).
    Narrowband,
    /// libopus at its defaults (VoIP): full-band CELT/hybrid, as the
    /// generators sent before 2026-12-02 and the soak still does.
    Fullband,
}

impl BrowserOpus {
    /// A 48 kHz encoder with these settings.
    pub fn encoder(self) -> opus::Encoder {
        use opus::{Application, Bandwidth, Bitrate, Channels, Encoder};
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        if self == BrowserOpus::Narrowband {
            enc.set_max_bandwidth(Bandwidth::Narrowband).unwrap();
            enc.set_bitrate(Bitrate::Bits(24_000)).unwrap();
            enc.set_inband_fec(true).unwrap();
            enc.set_complexity(9).unwrap();
        }
        enc
    }

    pub fn frames(self) -> Vec<Vec<u8>> {
        let mut enc = self.encoder();
        (0..50)
            .map(|f| {
                let pcm: Vec<i16> = (0..960)
                    .map(|i| {
                        let t = (f * 960 + i) as f64 / 48_000.0;
                        (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
                    })
                    .collect();
                enc.encode_vec(&pcm, 400).unwrap()
            })
            .collect()
    }
}

/// What PCMU browsers send in the load generators: 50 frames (1 s) of a
/// 1 kHz tone at half scale, 160 µ-law bytes (20 ms) each.
pub fn pcmu_tone_frames() -> Vec<Vec<u8>> {
    (0..50)
        .map(|f| {
            (0..160)
                .map(|i| {
                    let t = (f * 160 + i) as f64 / 8000.0;
                    let v = 0.5 * 32767.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin();
                    gangway_media::g711::linear_to_ulaw(v as i16)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::BrowserOpus;

    #[test]
    fn narrowband_frames_are_narrowband() {
        for (kind, want) in [
            (BrowserOpus::Narrowband, opus::Bandwidth::Narrowband),
            (BrowserOpus::Fullband, opus::Bandwidth::Fullband),
        ] {
            let frames = kind.frames();
            assert_eq!(frames.len(), 50);
            // The first frames may still be settling; the rest must be it.
            for f in &frames[5..] {
                assert_eq!(opus::packet::get_bandwidth(f).unwrap(), want, "{kind:?}");
            }
        }
    }
}

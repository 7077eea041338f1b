//! Real SIP peers for the interoperability tests: baresip 1.0 (a SIP phone
//! that plays a tone and records what it receives) and sipp 3.6 (scripted
//! SIP scenarios from `tests/sipp/`). Everything runs on 127.0.0.1 on ports
//! picked free at start, so parallel tests never collide.
//!
//! Both are blocking: call them from `tokio::task::spawn_blocking` in async
//! tests. Dropping a [`Baresip`] or a [`Sipp`] kills its process group and
//! deletes its working directory. A missing peer is an error (a panic at
//! start), never a skip: `scripts/deps.sh test` installs them.
//!
//! Pitfalls found with these versions (Debian 12 packages):
//! - baresip's `aufile` source must have the codec's sample rate (8000 Hz
//!   for PCMU/PCMA) or the call fails ("must have sample-rate 8000 Hz"), and
//!   when the file ends the menu module hangs the call up ("audio error
//!   (0,end of file)"): the tone WAV is 8 kHz and longer than any test call.
//! - baresip's `sndfile` filter writes `dump-<date>-<time>-dec.wav` at the
//!   codec's rate (8000 Hz mono for G.711), and only from the first decoded
//!   packet: no leading silence.
//! - baresip without `net_interface` binds every interface, and without
//!   `dns_server` queries the resolver from /etc/resolv.conf: both are pinned
//!   to loopback here. It also listens on TCP SIP port + 1 (TLS).
//! - ctrl_tcp sends events only to its newest connection: [`Baresip`] keeps
//!   one connection for its lifetime; open no other. Events from before
//!   that connection (the first `REGISTER_OK`) are lost: use
//!   [`Baresip::wait_registered`], which polls `reginfo`.
//! - baresip needs `menu.so` for the `dial`/`hangup` commands and the
//!   auto-answer; `alsa,null` is a working speaker without a sound card.
//! - sipp's control socket binds 0.0.0.0:8888 unless `-ci`/`-cp` say
//!   otherwise; audio RTP uses `-mp` and `-mp`+2 (video).
//! - sipp's `play_pcap_audio` path is read when the scenario loads (no
//!   keywords): [`Sipp`] writes `pcmu_tone.pcap` and `pcmu_tone_b.pcap`
//!   into sipp's working directory before starting it. A second
//!   `play_pcap_audio` in a call stops the first; the packets are replayed
//!   unchanged (SSRC, sequence numbers and timestamps as in the file).
//!   sipp 3.6 looks for pcaps next to the scenario first: keep no
//!   `pcmu_tone*.pcap` in `tests/sipp/`.
//! - A message arriving while sipp runs a `<nop>` action (a pcap starting
//!   stops the previous one first, which takes a moment) is "unexpected"
//!   and aborts the call: the ACK right after a 200, for one. Start media
//!   in the `<recv>` of the ACK instead.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::audio::{i16le_to_f32, write_tone_wav};
use crate::webdriver::TempDir;

/// Where Debian's `baresip` package installs the phone.
pub const DEFAULT_BARESIP: &str = "/usr/bin/baresip";
/// Where Debian's `baresip-core` package installs its modules.
pub const DEFAULT_BARESIP_MODULES: &str = "/usr/lib/baresip/modules";
/// Where Debian's `sip-tester` package installs sipp.
pub const DEFAULT_SIPP: &str = "/usr/bin/sipp";

/// The tone [`Sipp`] plays as early media (`tests/sipp/uas_early_media.xml`).
pub const EARLY_MEDIA_TONE_HZ: f64 = 700.0;
/// Length of that tone; the pcap is played once.
pub const EARLY_MEDIA_SECONDS: f64 = 5.0;
/// File name of that pcap in sipp's working directory.
pub const EARLY_MEDIA_PCAP: &str = "pcmu_tone.pcap";
/// The tone [`Sipp`] plays once answered in
/// `tests/sipp/uas_early_then_answer.xml` (after [`EARLY_MEDIA_PCAP`]).
pub const ANSWER_MEDIA_TONE_HZ: f64 = 1200.0;
/// Length of that tone; the pcap is played once.
pub const ANSWER_MEDIA_SECONDS: f64 = 10.0;
/// File name of that pcap in sipp's working directory. Its RTP stream has
/// another SSRC than [`EARLY_MEDIA_PCAP`]'s, as a new stream from a real
/// PBX would (sipp replays the packets unchanged: both start at sequence
/// number 0 and timestamp 0).
pub const ANSWER_MEDIA_PCAP: &str = "pcmu_tone_b.pcap";
/// The tone [`Sipp`] plays in PCMA in `tests/sipp/uas_answer_play_pcma.xml`.
pub const PCMA_TONE_HZ: f64 = 600.0;
/// Length of that tone; the pcap is played once.
pub const PCMA_TONE_SECONDS: f64 = 10.0;
/// File name of that pcap (PT 8) in sipp's working directory.
pub const PCMA_TONE_PCAP: &str = "pcma_tone.pcap";
/// The same tone in 30 ms packets, for `tests/sipp/uas_answer_play_pcma_30ms.xml`.
pub const PCMA_TONE_30MS_PCAP: &str = "pcma_tone_30ms.pcap";
/// The SSRC of the [`ANSWER_MEDIA_PCAP`] stream.
const ANSWER_MEDIA_SSRC: u32 = 0x4741_4e32; // "GAN2"

const INSTALL_HINT: &str = "install the SIP peers with `scripts/deps.sh test` (Debian packages \
     `sip-tester` and `baresip`), or set BARESIP_BIN / SIPP_BIN";

/// Sample rate of baresip's tone file: G.711's, which aufile requires.
const TONE_SAMPLE_RATE: u32 = 8000;
/// Length of baresip's tone file: baresip hangs up when it ends.
const TONE_SECONDS: f64 = 120.0;
/// How long baresip may take to accept its control connection.
const BARESIP_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ctrl_tcp command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sipp may take to bind its SIP port.
const SIPP_START_TIMEOUT: Duration = Duration::from_secs(5);
/// Ports per baresip instance for RTP (+ RTCP, no rtcp-mux).
const BARESIP_RTP_PORTS: u16 = 16;
/// Ports per sipp instance for media: -mp (audio), -mp+2 (video), and their +1.
const SIPP_MEDIA_PORTS: u16 = 4;

// ---------------------------------------------------------------------------
// Ports

/// A loopback port that is currently free for both UDP and TCP (SIP may use
/// either). Free when picked: another process may still take it before use.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP port on 127.0.0.1");
        let port = udp.local_addr().expect("UDP local address").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP after 100 attempts");
}

/// A port free for UDP and TCP whose successor is free for TCP too: baresip
/// listens on `sip_listen`'s port (UDP, TCP) and that port + 1 (TLS).
fn free_baresip_sip_port() -> u16 {
    for _ in 0..100 {
        let port = free_udp_port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port pair free for baresip's SIP listener after 100 attempts");
}

/// The first port (even) of `len` consecutive loopback ports that are free
/// for UDP now, below the kernel's ephemeral range (so the ports that
/// `bind(0)` hands out elsewhere do not land in it) and never handed out
/// twice by this process. For RTP port ranges.
pub fn free_udp_range(len: u16) -> u16 {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000; // Linux's ephemeral range starts at 32768.
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    static CURSOR: AtomicU64 = AtomicU64::new(0);
    let len = u32::from(len.max(1));
    assert!(len < HIGH - LOW, "port range too long: {len}");
    let span = HIGH - LOW - len;
    // Different processes start at different places (pid and time), then walk.
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or_default();
    let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let step = CURSOR.fetch_add(1, Ordering::Relaxed);
        let offset = (seed.wrapping_add(step.wrapping_mul(u64::from(len) + 2)) % u64::from(span))
            as u32
            & !1;
        let base = (LOW + offset) as u16;
        let ports: Vec<u16> = (0..len as u16).map(|i| base + i).collect();
        let mut taken = taken.lock().unwrap();
        if ports.iter().any(|p| taken.contains(p)) {
            continue;
        }
        let all_free = ports
            .iter()
            .all(|&p| UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            taken.extend(ports);
            return base;
        }
    }
    panic!("no {len} consecutive free UDP ports in {LOW}..{HIGH}");
}

// ---------------------------------------------------------------------------
// Processes

/// Finds an executable: the environment variable if set, else the default path.
fn locate(env_var: &str, default: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if !path.is_file() {
        panic!(
            "{what} not found at {} (override with {env_var}); {INSTALL_HINT}",
            path.display()
        );
    }
    path
}

/// SIGKILLs every process in the child's group and reaps the child. The child
/// must not have been reaped yet: until then its pid (the group id) is ours.
fn kill_process_group(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !killed {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Whether some socket is bound to UDP `port` on 127.0.0.1 or 0.0.0.0,
/// according to /proc/net/udp (`0100007F:13C4`: address and port in hex).
fn udp_port_bound(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| wanted.iter().any(|w| w == local))
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// baresip

/// A baresip (PCMU, auto-answering with a `tone_hz` tone) registered at
/// `registrar` as `user`, started and waited for off the async runtime.
pub async fn registered_baresip(
    registrar: String,
    user: &'static str,
    password: &'static str,
    tone_hz: f64,
    timeout: Duration,
) -> Arc<Baresip> {
    let peer = tokio::task::spawn_blocking(move || {
        let peer = Baresip::start(BaresipOptions {
            user,
            tone_hz,
            codecs: &["PCMU"],
            register: Some((&registrar, password)),
            extra_config: &[],
        });
        peer.wait_registered(timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        peer
    })
    .await
    .expect("baresip start task");
    Arc::new(peer)
}

/// What a [`Baresip`] instance is: its SIP user, the tone it sends, the
/// codecs it offers or accepts, and whether it registers.
#[derive(Debug, Clone)]
pub struct BaresipOptions<'a> {
    /// The user part of its address, `sip:<user>@127.0.0.1:<port>`.
    pub user: &'a str,
    /// The sine it sends in every call (8 kHz, half full scale).
    pub tone_hz: f64,
    /// Audio codecs in order of preference: `PCMU`, `PCMA`.
    pub codecs: &'a [&'a str],
    /// `Some((registrar URI, password))`: the account registers as
    /// `sip:<user>@<registrar host:port>` with digest user `<user>` (every
    /// 60 s) instead of being a local, unregistered UA.
    pub register: Option<(&'a str, &'a str)>,
    /// Further lines for baresip's `config` file.
    pub extra_config: &'a [&'a str],
}

impl Default for BaresipOptions<'_> {
    fn default() -> Self {
        BaresipOptions {
            user: "baresip",
            tone_hz: 440.0,
            codecs: &["PCMU"],
            register: None,
            extra_config: &[],
        }
    }
}

/// Messages from baresip's ctrl_tcp connection, filled by a reader thread.
#[derive(Default)]
struct CtrlState {
    /// Events in arrival order, each with a "consumed" flag for
    /// [`Baresip::wait_for_event`].
    events: Vec<(Value, bool)>,
    responses: Vec<Value>,
    /// Set when the connection ends (baresip exited).
    closed: Option<String>,
}

type Shared = Arc<(Mutex<CtrlState>, Condvar)>;

/// A running baresip 1.0 on 127.0.0.1 that auto-answers, sends a tone and
/// records what it receives; driven over ctrl_tcp.
pub struct Baresip {
    child: Child,
    user: String,
    aor: String,
    sip_port: u16,
    rtp_ports: (u16, u16),
    tone_hz: f64,
    ctrl: TcpStream,
    state: Shared,
    reader: Option<JoinHandle<()>>,
    token: AtomicU64,
    log_path: PathBuf,
    rec_dir: PathBuf,
    // Dropped last (fields drop in declaration order, after Drop::drop runs).
    dir: TempDir,
}

impl Baresip {
    /// Writes a config directory and starts baresip; panics (with baresip's
    /// output) if it does not come up.
    pub fn start(options: BaresipOptions<'_>) -> Baresip {
        let bin = locate("BARESIP_BIN", DEFAULT_BARESIP, "baresip");
        let modules = std::env::var_os("BARESIP_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BARESIP_MODULES));
        for m in [
            "g711.so",
            "aufile.so",
            "sndfile.so",
            "ctrl_tcp.so",
            "menu.so",
        ] {
            if !modules.join(m).is_file() {
                panic!(
                    "baresip module {m} not found in {} (override with BARESIP_MODULES); \
                     {INSTALL_HINT}",
                    modules.display()
                );
            }
        }
        assert!(
            !options.user.is_empty() && !options.codecs.is_empty(),
            "baresip needs a user and at least one codec"
        );
        // Ports are free when picked but may be taken before baresip binds
        // them; a few attempts make that race harmless.
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&bin, &modules, &options) {
                Ok(b) => return b,
                Err(e) => errors.push(e),
            }
        }
        panic!("baresip did not start:\n{}", errors.join("\n---\n"));
    }

    fn try_start(bin: &Path, modules: &Path, o: &BaresipOptions<'_>) -> Result<Baresip, String> {
        let dir = TempDir::new("gangway-baresip")
            .map_err(|e| format!("cannot create a baresip config dir: {e}"))?;
        let rec_dir = dir.path().join("rec");
        std::fs::create_dir_all(&rec_dir).map_err(|e| format!("cannot create {rec_dir:?}: {e}"))?;
        let tone = dir.path().join("tone.wav");
        write_tone_wav(&tone, o.tone_hz, TONE_SECONDS, TONE_SAMPLE_RATE)
            .map_err(|e| format!("cannot write {tone:?}: {e}"))?;

        let sip_port = free_baresip_sip_port();
        let ctrl_port = free_udp_port();
        let rtp_lo = free_udp_range(BARESIP_RTP_PORTS);
        let rtp_hi = rtp_lo + BARESIP_RTP_PORTS - 1;
        let config = baresip_config(BaresipConfig {
            sip_port,
            ctrl_port,
            rtp: (rtp_lo, rtp_hi),
            tone: &tone,
            rec_dir: &rec_dir,
            modules,
            extra: o.extra_config,
        });
        std::fs::write(dir.path().join("config"), config)
            .map_err(|e| format!("cannot write baresip config: {e}"))?;

        let codecs = o.codecs.join(",");
        let (aor, account) = match o.register {
            None => {
                let aor = format!("sip:{}@127.0.0.1:{sip_port}", o.user);
                let line =
                    format!("<{aor}>;answermode=auto;audio_codecs={codecs};regint=0;mwi=no\n");
                (aor, line)
            }
            Some((registrar, password)) => {
                let hostport = registrar
                    .trim_start_matches("sip:")
                    .split(';')
                    .next()
                    .unwrap_or_default();
                let aor = format!("sip:{}@{hostport}", o.user);
                let line = format!(
                    "<{aor}>;auth_user={};auth_pass={password};answermode=auto;\
                     audio_codecs={codecs};regint=60;mwi=no\n",
                    o.user
                );
                (aor, line)
            }
        };
        std::fs::write(dir.path().join("accounts"), account)
            .map_err(|e| format!("cannot write baresip accounts: {e}"))?;

        let log_path = dir.path().join("baresip.log");
        let log = File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone log: {e}"))?;
        let mut child = Command::new(bin)
            .arg("-f")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()))?;

        // ctrl_tcp is loaded last, after the SIP stack and the account: a
        // connection means baresip is ready.
        let deadline = Instant::now() + BARESIP_START_TIMEOUT;
        let ctrl = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "baresip exited at startup ({status}):\n{}",
                    read_lossy(&log_path)
                ));
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ctrl_port));
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                break s;
            }
            if Instant::now() >= deadline {
                kill_process_group(&mut child);
                return Err(format!(
                    "baresip's ctrl_tcp (127.0.0.1:{ctrl_port}) not up after \
                     {BARESIP_START_TIMEOUT:?}:\n{}",
                    read_lossy(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = ctrl.set_nodelay(true);
        let state: Shared = Arc::new((Mutex::new(CtrlState::default()), Condvar::new()));
        let reader = ctrl
            .try_clone()
            .map_err(|e| format!("cannot clone the ctrl_tcp stream: {e}"))
            .and_then(|stream| {
                let state = state.clone();
                std::thread::Builder::new()
                    .name(format!("baresip-ctrl-{}", o.user))
                    .spawn(move || read_ctrl(stream, state))
                    .map_err(|e| format!("cannot spawn the ctrl_tcp reader: {e}"))
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                kill_process_group(&mut child);
                return Err(e);
            }
        };
        Ok(Baresip {
            child,
            user: o.user.to_string(),
            aor,
            sip_port,
            rtp_ports: (rtp_lo, rtp_hi),
            tone_hz: o.tone_hz,
            ctrl,
            state,
            reader: Some(reader),
            token: AtomicU64::new(0),
            log_path,
            rec_dir,
            dir,
        })
    }

    /// Where to call it directly: `sip:<user>@127.0.0.1:<port>`.
    pub fn sip_uri(&self) -> String {
        format!("sip:{}@127.0.0.1:{}", self.user, self.sip_port)
    }

    /// Its SIP listener (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.sip_port))
    }

    /// Its account's address of record (the registered one with `register`).
    pub fn aor(&self) -> &str {
        &self.aor
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The tone it sends.
    pub fn tone_hz(&self) -> f64 {
        self.tone_hz
    }

    /// Its RTP/RTCP port range (inclusive).
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp_ports
    }

    /// Its config directory (config, accounts, tone.wav, baresip.log, rec/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a ctrl_tcp command (a baresip menu command such as `dial`,
    /// `hangup`, `accept`, `sndcode`) and returns its response's `data`.
    pub fn command(&self, command: &str, params: &str) -> Result<String, String> {
        let token = format!("t{}", self.token.fetch_add(1, Ordering::Relaxed));
        let body = json!({ "command": command, "params": params, "token": token }).to_string();
        let frame = format!("{}:{body},", body.len());
        (&self.ctrl)
            .write_all(frame.as_bytes())
            .map_err(|e| self.fail(format!("ctrl_tcp write of {command}: {e}")))?;
        let (lock, cvar) = &*self.state;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(i) = st
                .responses
                .iter()
                .position(|r| r.get("token").and_then(Value::as_str) == Some(token.as_str()))
            {
                let r = st.responses.remove(i);
                let data = r
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                drop(st);
                return if r.get("ok").and_then(Value::as_bool) == Some(true) {
                    Ok(data)
                } else {
                    Err(self.fail(format!("command {command} {params:?} failed: {r}")))
                };
            }
            if let Some(why) = &st.closed {
                let why = why.clone();
                drop(st);
                return Err(self.fail(format!("command {command}: ctrl_tcp closed: {why}")));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(self.fail(format!(
                    "command {command}: no response within {COMMAND_TIMEOUT:?}"
                )));
            }
            st = cvar.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Places a call to `uri` (`sip:user@host:port`). Returns once baresip
    /// accepted the command; watch the progress with [`Self::wait_for_event`].
    pub fn dial(&self, uri: &str) -> Result<(), String> {
        self.command("dial", uri).map(|_| ())
    }

    /// Hangs up the current call.
    pub fn hangup(&self) -> Result<(), String> {
        self.command("hangup", "").map(|_| ())
    }

    /// Waits for the oldest not yet waited-for event of type `kind` (e.g.
    /// `CALL_RINGING`, `CALL_PROGRESS`, `CALL_ESTABLISHED`, `CALL_CLOSED`,
    /// `REGISTER_OK`, `REGISTER_FAIL`) and returns it (JSON with `type`,
    /// `param`, `peeruri`, ...). On `CALL_CLOSED`, `param` is the reason.
    pub fn wait_for_event(&self, kind: &str, timeout: Duration) -> Result<Value, String> {
        let (lock, cvar) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some((event, consumed)) = st.events.iter_mut().find(|(e, consumed)| {
                !*consumed && e.get("type").and_then(Value::as_str) == Some(kind)
            }) {
                *consumed = true;
                return Ok(event.clone());
            }
            let seen: Vec<String> = st
                .events
                .iter()
                .filter_map(|(e, _)| e.get("type").and_then(Value::as_str).map(String::from))
                .collect();
            if let Some(why) = &st.closed {
                let why = why.clone();
                drop(st);
                return Err(self.fail(format!(
                    "no {kind} event: ctrl_tcp closed ({why}); events seen: {seen:?}"
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(self.fail(format!(
                    "no {kind} event within {timeout:?}; events seen: {seen:?}"
                )));
            }
            st = cvar.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits until the account (started with `register`) is registered.
    ///
    /// baresip registers while it starts, before ctrl_tcp accepts our
    /// connection, so the first `REGISTER_OK` event is usually lost: this
    /// polls the `reginfo` command (`... OK` once registered) instead.
    pub fn wait_registered(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = strip_ansi(&self.command("reginfo", "")?);
            if info.split_whitespace().any(|w| w == "OK") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!(
                    "not registered within {timeout:?}; reginfo: {info:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<Value> {
        let st = self.state.0.lock().unwrap();
        st.events.iter().map(|(e, _)| e.clone()).collect()
    }

    /// The files the sndfile filter wrote with what this instance received
    /// (`dump-*-dec.wav`), oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&self.rec_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        name.starts_with("dump-") && name.ends_with("-dec.wav")
                    })
                    .map(|p| {
                        let mtime = p
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(UNIX_EPOCH);
                        (mtime, p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// What the newest call received, as mono samples and their rate (8000
    /// for G.711). Read it after `CALL_CLOSED`: the WAV is complete then.
    pub fn try_recorded_audio(&self) -> Result<(Vec<f32>, u32), String> {
        let path = self.recordings().pop().ok_or_else(|| {
            self.fail(format!(
                "baresip recorded nothing (no dump-*-dec.wav in {})",
                self.rec_dir.display()
            ))
        })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        parse_wav_mono(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`Self::try_recorded_audio`], panicking (with baresip's log) on failure.
    pub fn recorded_audio(&self) -> (Vec<f32>, u32) {
        self.try_recorded_audio().unwrap_or_else(|e| panic!("{e}"))
    }

    /// baresip's output so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// `msg` with the last lines of baresip's output.
    fn fail(&self, msg: String) -> String {
        format!(
            "baresip {}: {msg}\n--- baresip output (last lines) ---\n{}",
            self.sip_uri(),
            tail(&self.log(), 40)
        )
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.ctrl.shutdown(Shutdown::Both);
        kill_process_group(&mut self.child);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

struct BaresipConfig<'a> {
    sip_port: u16,
    ctrl_port: u16,
    rtp: (u16, u16),
    tone: &'a Path,
    rec_dir: &'a Path,
    modules: &'a Path,
    extra: &'a [&'a str],
}

/// baresip 1.0's `config`: loopback only, G.711, a WAV as microphone, ALSA's
/// `null` device as speaker, every received stream recorded by `sndfile`,
/// driven by `menu` commands over `ctrl_tcp`.
fn baresip_config(c: BaresipConfig<'_>) -> String {
    let mut s = format!(
        "\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip}
call_local_timeout\t120
call_max_calls\t\t4
audio_player\t\talsa,null
audio_source\t\taufile,{tone}
audio_alert\t\talsa,null
ausrc_format\t\ts16
auplay_format\t\ts16
auenc_format\t\ts16
audec_format\t\ts16
audio_buffer\t\t20-160
rtp_tos\t\t\t184
rtp_ports\t\t{rtp_lo}-{rtp_hi}
rtcp_mux\t\tno
jitter_buffer_delay\t5-10
rtp_stats\t\tno
dns_server\t\t127.0.0.1:53
net_interface\t\t127.0.0.1
module_path\t\t{modules}
module\t\t\tg711.so
module\t\t\tsndfile.so
module\t\t\taufile.so
module\t\t\talsa.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl}
snd_path\t\t{rec}
statmode_default\toff
ringback_disabled\tyes
",
        sip = c.sip_port,
        tone = c.tone.display(),
        rtp_lo = c.rtp.0,
        rtp_hi = c.rtp.1,
        modules = c.modules.display(),
        ctrl = c.ctrl_port,
        rec = c.rec_dir.display(),
    );
    for line in c.extra {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Reads netstrings (`<len>:<json>,`) from ctrl_tcp until the connection ends.
fn read_ctrl(mut stream: TcpStream, state: Shared) {
    let (lock, cvar) = &*state;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let why = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        }
        let mut messages = Vec::new();
        // The buffer always starts at a netstring: its first ':' ends the length.
        while let Some(colon) = buf.iter().position(|&b| b == b':') {
            let Some(len) = std::str::from_utf8(&buf[..colon])
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
            else {
                // Not a netstring: drop the garbage up to the colon.
                buf.drain(..=colon);
                continue;
            };
            if buf.len() < colon + 1 + len + 1 {
                break;
            }
            let body = buf[colon + 1..colon + 1 + len].to_vec();
            buf.drain(..colon + 1 + len + 1); // the trailing ','
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                messages.push(v);
            }
        }
        if !messages.is_empty() {
            let mut st = lock.lock().unwrap();
            for v in messages {
                if v.get("event").and_then(Value::as_bool) == Some(true) {
                    st.events.push((v, false));
                } else if v.get("response").and_then(Value::as_bool) == Some(true) {
                    st.responses.push(v);
                }
            }
            cvar.notify_all();
        }
    };
    lock.lock().unwrap().closed = Some(why);
    cvar.notify_all();
}

/// Parses a RIFF/WAVE file of 16-bit PCM (mono, or the channels averaged).
/// Tolerates a data chunk whose size was not yet updated (file being written).
pub fn parse_wav_mono(bytes: &[u8]) -> Result<(Vec<f32>, u32), String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None; // format, channels, rate, bits
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err("truncated fmt chunk".into());
            }
            fmt = Some((
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
            // 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM subformat assumed).
            if !(format == 1 || format == 0xFFFE) || bits != 16 || channels == 0 {
                return Err(format!(
                    "unsupported WAV format {format:#x}, {bits} bits, {channels} channels"
                ));
            }
            let available = bytes.len() - body;
            let len = if len == 0 || len > available {
                available
            } else {
                len
            };
            let samples = i16le_to_f32(&bytes[body..body + (len & !1)]);
            let ch = usize::from(channels);
            let mono = if ch == 1 {
                samples
            } else {
                samples
                    .chunks_exact(ch)
                    .map(|f| f.iter().sum::<f32>() / ch as f32)
                    .collect()
            };
            return Ok((mono, rate));
        }
        pos = body + len + (len & 1);
    }
    Err("no data chunk".into())
}

// ---------------------------------------------------------------------------
// sipp

/// Where the scenario files live: this crate's `sipp/` directory.
pub fn sipp_scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// A sipp 3.6 process running one scenario on 127.0.0.1, in the background.
pub struct Sipp {
    child: Child,
    scenario: String,
    port: u16,
    media_port: u16,
    status: Option<ExitStatus>,
    // Dropped last (fields drop in declaration order, after Drop::drop runs).
    dir: TempDir,
}

impl Sipp {
    /// Starts a UAS on `127.0.0.1:port` (0 = a free port, see
    /// [`Self::port`]) running `scenario` and returns once it listens.
    ///
    /// `scenario` is a file in `tests/sipp/` (`"uas_busy.xml"`), a path to
    /// an XML file, or the name of a scenario built into sipp (`"uas"`).
    /// By default sipp handles one call (`-m 1`) and then exits; `extra_args`
    /// come last (e.g. `["-rtp_echo", "-d", "3000", "-set", "authuser", "u"]`,
    /// or `-m N` to take more calls).
    pub fn uas(scenario: &str, port: u16, extra_args: &[&str]) -> Sipp {
        Self::start(scenario, None, port, extra_args)
    }

    /// Starts a UAC that sends its calls to `target` (from a free local
    /// port). Pass `-s USER` in `extra_args` for the Request-URI's user.
    pub fn uac(scenario: &str, target: SocketAddr, extra_args: &[&str]) -> Sipp {
        Self::start(scenario, Some(target), 0, extra_args)
    }

    fn start(scenario: &str, target: Option<SocketAddr>, port: u16, extra: &[&str]) -> Sipp {
        let bin = locate("SIPP_BIN", DEFAULT_SIPP, "sipp");
        let scenario_args = resolve_scenario(scenario);
        let mut errors = Vec::new();
        // With ports we picked, a lost race for one is retried; a given port is not.
        let attempts = if port == 0 { 3 } else { 1 };
        for _ in 0..attempts {
            match Self::try_start(&bin, scenario, &scenario_args, target, port, extra) {
                Ok(s) => return s,
                Err(e) => errors.push(e),
            }
        }
        panic!("sipp {scenario} did not start:\n{}", errors.join("\n---\n"));
    }

    fn try_start(
        bin: &Path,
        scenario: &str,
        scenario_args: &[String],
        target: Option<SocketAddr>,
        port: u16,
        extra: &[&str],
    ) -> Result<Sipp, String> {
        let dir = TempDir::new("gangway-sipp").map_err(|e| format!("cannot create a dir: {e}"))?;
        write_pcmu_tone_pcap(
            dir.path().join(EARLY_MEDIA_PCAP),
            EARLY_MEDIA_TONE_HZ,
            EARLY_MEDIA_SECONDS,
        )
        .map_err(|e| format!("cannot write {EARLY_MEDIA_PCAP}: {e}"))?;
        write_pcmu_tone_pcap_with_ssrc(
            dir.path().join(ANSWER_MEDIA_PCAP),
            ANSWER_MEDIA_TONE_HZ,
            ANSWER_MEDIA_SECONDS,
            ANSWER_MEDIA_SSRC,
        )
        .map_err(|e| format!("cannot write {ANSWER_MEDIA_PCAP}: {e}"))?;
        write_pcma_tone_pcap(
            dir.path().join(PCMA_TONE_PCAP),
            PCMA_TONE_HZ,
            PCMA_TONE_SECONDS,
        )
        .map_err(|e| format!("cannot write {PCMA_TONE_PCAP}: {e}"))?;
        write_pcma_tone_pcap_30ms(
            dir.path().join(PCMA_TONE_30MS_PCAP),
            PCMA_TONE_HZ,
            PCMA_TONE_SECONDS,
        )
        .map_err(|e| format!("cannot write {PCMA_TONE_30MS_PCAP}: {e}"))?;
        let port = if port == 0 { free_udp_port() } else { port };
        let media_port = free_udp_range(SIPP_MEDIA_PORTS);
        let control_port = free_udp_port();
        let file = |name: &str| dir.path().join(name).display().to_string();

        let mut args: Vec<String> = Vec::new();
        if let Some(t) = target {
            args.push(t.to_string());
        }
        args.extend(scenario_args.iter().cloned());
        let (port_s, media_s, control_s) = (
            port.to_string(),
            media_port.to_string(),
            control_port.to_string(),
        );
        let (errors, messages, actions, screen) = (
            file("errors.log"),
            file("messages.log"),
            file("actions.log"),
            file("screen.log"),
        );
        for (flag, value) in [
            ("-i", "127.0.0.1"),
            ("-p", &port_s),
            ("-mi", "127.0.0.1"),
            ("-mp", &media_s),
            // The control socket binds 0.0.0.0:8888 unless told otherwise.
            ("-ci", "127.0.0.1"),
            ("-cp", &control_s),
            ("-error_file", &errors),
            ("-message_file", &messages),
            ("-log_file", &actions),
            ("-screen_file", &screen),
        ] {
            args.extend([flag.to_string(), value.to_string()]);
        }
        for flag in [
            "-nostdin",
            "-trace_err",
            "-trace_msg",
            "-trace_logs",
            "-trace_screen",
        ] {
            args.push(flag.to_string());
        }
        if !extra.contains(&"-m") {
            args.extend(["-m".to_string(), "1".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));

        let stdout = File::create(dir.path().join("stdout.log"))
            .map_err(|e| format!("cannot create stdout.log: {e}"))?;
        let stderr = File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("cannot create stderr.log: {e}"))?;
        std::fs::write(dir.path().join("command.txt"), args.join(" ")).ok();
        let mut child = Command::new(bin)
            .args(&args)
            // play_pcap_audio paths are relative to it.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()))?;

        // Ready when its SIP port shows up bound (probing by binding it
        // ourselves could steal it from sipp).
        let deadline = Instant::now() + SIPP_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // A UAC may legitimately be done already; a UAS may not.
                if target.is_some() {
                    return Ok(Sipp {
                        child,
                        scenario: scenario.to_string(),
                        port,
                        media_port,
                        status: Some(status),
                        dir,
                    });
                }
                return Err(format!(
                    "sipp exited at startup ({status}):\n{}",
                    SippLogs(dir.path()).report()
                ));
            }
            if udp_port_bound(port) {
                break;
            }
            if Instant::now() >= deadline {
                kill_process_group(&mut child);
                return Err(format!(
                    "sipp did not bind 127.0.0.1:{port} within {SIPP_START_TIMEOUT:?}:\n{}",
                    SippLogs(dir.path()).report()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Sipp {
            child,
            scenario: scenario.to_string(),
            port,
            media_port,
            status: None,
            dir,
        })
    }

    /// Its SIP port (UDP on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `sip:<user>@127.0.0.1:<port>`: where a UAS takes calls.
    pub fn sip_uri(&self, user: &str) -> String {
        format!("sip:{user}@127.0.0.1:{}", self.port)
    }

    /// Its audio RTP port (`[media_port]` in the scenarios' SDP; `-rtp_echo`
    /// echoes there).
    pub fn media_port(&self) -> u16 {
        self.media_port
    }

    /// Its working directory (logs, the pcaps it plays).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            _ => true,
        }
    }

    /// Waits until sipp exits: `Ok` if its status is 0 (every call passed
    /// the scenario), else an error with the status and sipp's error log,
    /// final statistics and SIP trace. After `timeout` it is killed (error).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                kill_process_group(&mut self.child);
                return Err(format!(
                    "sipp {} did not finish within {timeout:?} (killed)\n{}",
                    self.scenario,
                    self.logs().report()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.status.expect("exited");
        if status.success() {
            Ok(())
        } else {
            let meaning = match status.code() {
                Some(1) => "at least one call failed",
                Some(97) => "exit on internal command",
                Some(99) => "normal exit without calls processed",
                Some(253) => "fatal error: RTP validation failure",
                Some(254) => "fatal error binding a socket",
                Some(255) => "fatal error",
                _ => "",
            };
            Err(format!(
                "sipp {} failed ({status}: {meaning})\n{}",
                self.scenario,
                self.logs().report()
            ))
        }
    }

    /// The SIP messages sipp sent and received so far (`-trace_msg`).
    pub fn messages(&self) -> String {
        read_lossy(&self.dir.path().join("messages.log"))
    }

    /// Unexpected messages and other errors (`-trace_err`).
    pub fn errors(&self) -> String {
        read_lossy(&self.dir.path().join("errors.log"))
    }

    /// What the scenario's `<log>` actions wrote (`-trace_logs`).
    pub fn action_log(&self) -> String {
        read_lossy(&self.dir.path().join("actions.log"))
    }

    fn logs(&self) -> SippLogs<'_> {
        SippLogs(self.dir.path())
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill_process_group(&mut self.child);
        }
    }
}

/// sipp's log files in its working directory.
struct SippLogs<'a>(&'a Path);

impl SippLogs<'_> {
    fn report(&self) -> String {
        let read = |name: &str| read_lossy(&self.0.join(name));
        let mut out = format!("--- command ---\nsipp {}\n", read("command.txt"));
        for (name, lines) in [
            ("stderr.log", 20),
            ("errors.log", 40),
            ("actions.log", 20),
            ("screen.log", 30),
            ("messages.log", 80),
        ] {
            let text = read(name);
            if !text.trim().is_empty() {
                out.push_str(&format!(
                    "--- sipp {name} (last lines) ---\n{}\n",
                    tail(&text, lines)
                ));
            }
        }
        out
    }
}

/// `-sf <file>` for a file (in `tests/sipp/` or a path), `-sn <name>` for a
/// scenario built into sipp.
fn resolve_scenario(scenario: &str) -> Vec<String> {
    let as_path = Path::new(scenario);
    let file = if as_path.is_absolute() || scenario.contains('/') {
        Some(as_path.to_path_buf())
    } else if scenario.ends_with(".xml") {
        Some(sipp_scenario_dir().join(scenario))
    } else {
        None
    };
    match file {
        Some(f) => {
            assert!(f.is_file(), "sipp scenario {} does not exist", f.display());
            vec!["-sf".into(), f.display().to_string()]
        }
        None => vec!["-sn".into(), scenario.into()],
    }
}

// ---------------------------------------------------------------------------
// pcap

/// G.711 µ-law encoding, shared with the gateway.
pub use gangway_media::g711::linear_to_ulaw;

/// Writes a pcap (Ethernet, IPv4 127.0.0.1 -> 127.0.0.1, UDP) of RTP PCMU
/// packets (PT 0, 20 ms, 8 kHz) carrying a sine of `freq_hz` at half full
/// scale, for sipp's `play_pcap_audio`.
pub fn write_pcmu_tone_pcap(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
) -> std::io::Result<()> {
    write_pcmu_tone_pcap_with_ssrc(path, freq_hz, seconds, 0x4741_4e47) // "GANG"
}

/// [`write_pcmu_tone_pcap`] with the RTP stream's SSRC chosen: sipp replays
/// packets unchanged, so two pcaps played one after the other in a call
/// need different SSRCs to be told apart as two streams.
pub fn write_pcmu_tone_pcap_with_ssrc(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
    ssrc: u32,
) -> std::io::Result<()> {
    write_g711_tone_pcap(path, freq_hz, seconds, ssrc, false, 160)
}

/// A pcap of RTP PCMA (PT 8) packets carrying a tone, like
/// [`write_pcmu_tone_pcap`].
pub fn write_pcma_tone_pcap(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
) -> std::io::Result<()> {
    write_g711_tone_pcap(path, freq_hz, seconds, 0x4741_4e41, true, 160) // "GANA"
}

/// [`write_pcma_tone_pcap`] in 30 ms packets (240 samples), as some PBXs send.
pub fn write_pcma_tone_pcap_30ms(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
) -> std::io::Result<()> {
    write_g711_tone_pcap(path, freq_hz, seconds, 0x4741_4e33, true, 240)
}

fn write_g711_tone_pcap(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
    ssrc: u32,
    alaw: bool,
    samples: usize,
) -> std::io::Result<()> {
    let (pt, encode): (u8, fn(i16) -> u8) = if alaw {
        (8, gangway_media::g711::linear_to_alaw)
    } else {
        (0, linear_to_ulaw)
    };
    let packets = (seconds * 8000.0 / samples as f64).round() as usize;
    let mut out = Vec::with_capacity(24 + packets * (16 + 42 + 12 + samples));
    // Global header: magic, v2.4, GMT offset, accuracy, snaplen, LINKTYPE_ETHERNET.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for n in 0..packets {
        let mut rtp = Vec::with_capacity(12 + samples);
        rtp.push(0x80); // V=2
        rtp.push(if n == 0 { 0x80 | pt } else { pt }); // marker on the first
        rtp.extend_from_slice(&(n as u16).to_be_bytes());
        rtp.extend_from_slice(&((n * samples) as u32).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        for i in 0..samples {
            let t = (n * samples + i) as f64 / 8000.0;
            let v = 0.5 * (2.0 * std::f64::consts::PI * freq_hz * t).sin();
            rtp.push(encode((v * f64::from(i16::MAX)).round() as i16));
        }
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(14 + ip_len);
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(n as u16).to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&[127, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[127, 0, 0, 1]);
        let sum = ip
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&40000u16.to_be_bytes()); // source port
        frame.extend_from_slice(&40002u16.to_be_bytes()); // destination port
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&0u16.to_be_bytes()); // no checksum
        frame.extend_from_slice(&rtp);
        // Record header: timestamp (one packet time apart), captured and original length.
        let us = (n * samples) as u64 * 125;
        out.extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    let mut f = File::create(path)?;
    f.write_all(&out)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_g711_reference_points() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        assert_eq!(linear_to_ulaw(-1000), 0x4E);
    }

    #[test]
    fn wav_parser_reads_what_the_writer_wrote_and_tolerates_open_files() {
        let dir = TempDir::new("gangway-sip-peers-test").unwrap();
        let path = dir.path().join("t.wav");
        write_tone_wav(&path, 440.0, 0.5, 8000).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let (s, rate) = parse_wav_mono(&bytes).unwrap();
        assert_eq!((s.len(), rate), (4000, 8000));
        // A header not yet updated by the writer: data size 0.
        bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_wav_mono(&bytes).unwrap().0.len(), 4000);
        assert!(parse_wav_mono(b"RIFF....WAVEjunk").is_err());
    }

    #[test]
    fn bound_udp_ports_are_seen() {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(udp_port_bound(port));
        drop(socket);
        assert!(!udp_port_bound(port));
    }

    #[test]
    fn ansi_escapes_are_stripped() {
        assert_eq!(strip_ansi("> a \u{1b}[32mOK \u{1b}[;m  x"), "> a OK   x");
    }

    #[test]
    fn udp_ranges_do_not_overlap() {
        let a = free_udp_range(16);
        let b = free_udp_range(16);
        assert!(a.is_multiple_of(2) && b.is_multiple_of(2));
        assert!(a + 16 <= b || b + 16 <= a, "{a} and {b} overlap");
    }
}

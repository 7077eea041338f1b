//! rtpengine (Sipwise NGCP, the Debian package `rtpengine-daemon`) as the
//! side-by-side bench's peer: started in userspace (`--table=-1`) on
//! loopback and driven over its ng control protocol (bencode over UDP).

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bencode::{decode, Value};
use gangway_tests::sip_peers::free_udp_port;

/// Installs `rtpengine-daemon` with apt-get when `rtpengine` is missing
/// (needs root; the bench is not part of CI).
pub fn ensure_installed() {
    let present = Command::new("rtpengine")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return;
    }
    eprintln!("== installing rtpengine-daemon (apt-get)");
    let ok = Command::new("sh")
        .args([
            "-c",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             rtpengine-daemon >/dev/null",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "could not install rtpengine-daemon: run as root, or install it yourself"
    );
}

/// A running rtpengine; killed on drop.
pub struct RtpEngine {
    child: Child,
    ng: UdpSocket,
    serial: u64,
}

impl RtpEngine {
    /// Starts it with its media ports in `ports` and `threads` workers.
    pub fn start(ports: (u16, u16), threads: usize) -> RtpEngine {
        let ng_port = free_udp_port();
        let child = Command::new("rtpengine")
            .args([
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--log-level=3",
                "--table=-1",
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                &format!("--port-min={}", ports.0),
                &format!("--port-max={}", ports.1),
                &format!("--num-threads={threads}"),
                "--delete-delay=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rtpengine (is rtpengine-daemon installed?)");
        let ng = UdpSocket::bind("127.0.0.1:0").expect("ng socket");
        ng.connect(("127.0.0.1", ng_port)).expect("ng connect");
        ng.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut engine = RtpEngine {
            child,
            ng,
            serial: 0,
        };
        // Ready once it answers a ping (until it binds, the kernel
        // refuses the datagrams at once).
        for _ in 0..100 {
            if engine
                .command(Value::dict(vec![("command", Value::str("ping"))]))
                .is_ok()
            {
                return engine;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rtpengine did not answer its ng port {ng_port}");
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// One ng command; its answer's dictionary (`result` must not be
    /// `error`).
    pub fn command(&mut self, command: Value) -> Result<Value, String> {
        self.serial += 1;
        let cookie = format!("b{}_{}", std::process::id(), self.serial);
        let mut msg = format!("{cookie} ").into_bytes();
        command.encode(&mut msg);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..3 {
            self.ng.send(&msg).map_err(|e| e.to_string())?;
            let Ok(n) = self.ng.recv(&mut buf) else {
                continue;
            };
            let reply = &buf[..n];
            let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                continue;
            };
            let (value, _) = decode(body)?;
            if value.get_str("result").as_deref() == Some("error") {
                return Err(value.get_str("error-reason").unwrap_or_default());
            }
            return Ok(value);
        }
        Err("rtpengine did not answer".into())
    }

    /// `offer` for a call: `sdp` from the caller; returns the SDP for the
    /// callee. `codec` is the ng `codec` dictionary (transcoding options).
    pub fn offer(&mut self, call: &str, sdp: &str, codec: Value) -> Result<String, String> {
        let answer = self.command(Value::dict(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str("caller")),
            ("sdp", Value::str(sdp)),
            ("codec", codec),
            ("replace", Value::list(&["origin", "session-connection"])),
        ]))?;
        answer.get_str("sdp").ok_or_else(|| "offer: no SDP".into())
    }

    /// `answer`: `sdp` from the callee; returns the SDP for the caller.
    pub fn answer(&mut self, call: &str, sdp: &str) -> Result<String, String> {
        let answer = self.command(Value::dict(vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str("caller")),
            ("to-tag", Value::str("callee")),
            ("sdp", Value::str(sdp)),
            ("replace", Value::list(&["origin", "session-connection"])),
        ]))?;
        answer.get_str("sdp").ok_or_else(|| "answer: no SDP".into())
    }

    pub fn delete(&mut self, call: &str) {
        let _ = self.command(Value::dict(vec![
            ("command", Value::str("delete")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str("caller")),
        ]));
    }
}

impl Drop for RtpEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The audio port of an SDP's first `m=audio` line.
pub fn audio_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

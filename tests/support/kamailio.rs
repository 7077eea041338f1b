//! kamailio 5.6 as a PBX stand-in for the interoperability tests: a
//! registrar and stateful proxy on 127.0.0.1 (UDP and TCP, one free port)
//! with digest authentication against users kept in an htable — no
//! database. REGISTER is challenged with 401, every other dialog-starting
//! request (INVITE) with 407; calls go to the contacts registered for the
//! Request-URI's user.
//!
//! The config is `tests/kamailio/kamailio.cfg.tpl` with its placeholders
//! filled in. kamailio runs in the foreground (`-DD -E`), its stderr (the
//! log, with `GWKAM-*` markers written by the script's `xlog` calls) going to
//! a file in its own directory, where its pid file, runtime dir and `ctl`
//! socket (for `kamcmd`) live too. It is blocking: call it from
//! `tokio::task::spawn_blocking` in async tests if it matters. Dropping a
//! [`Kamailio`] stops its process group and deletes the directory. A
//! missing kamailio is an error (a panic at start), never a skip:
//! `scripts/deps.sh test` installs it.
//!
//! Pitfalls found with this version (Debian 12's `kamailio` 5.6.3, which
//! ships every module used here: tm, sl, rr, pv, maxfwd, textops, siputils,
//! xlog, usrloc, registrar, auth, htable, ctl, kex, corex):
//! - `t_precheck_trans` is in `tmx`, not `tm`; the script does without it.
//! - `pv_auth_check` (auth) only checks: the 401/407 itself is sent by
//!   `www_challenge`/`proxy_challenge`, statelessly (sl absorbs the ACK).
//!   Their flag `1` asks for `qop=auth`; kamailio then logs "qop set, but
//!   nonce-count support disabled" at start, which is harmless.
//!   Without the `htable:mod-init` event route there is no place to fill the
//!   htable without a database.
//! - A placeholder inside a template comment is replaced too, and a
//!   multi-line value (the users) spills out of the comment as code: the
//!   template's comments name the placeholders without their `@` signs.
//! - Without `-Y` kamailio wants /run/kamailio; without `ctl`'s `binrpc`
//!   parameter `ctl` binds /run/kamailio/kamailio_ctl, shared by every
//!   instance: both are pointed into the instance's directory.
//! - A caller that preloads `Route: <sip:kamailio;lr>` (Gangway does: the
//!   trunk is its outbound proxy) has it removed for initial requests.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::webdriver::TempDir;

/// Where Debian's `kamailio` package installs the server.
pub const DEFAULT_KAMAILIO: &str = "/usr/sbin/kamailio";
/// Where Debian's `kamailio` package installs the RPC client.
pub const DEFAULT_KAMCMD: &str = "/usr/sbin/kamcmd";

const INSTALL_HINT: &str = "install kamailio with `scripts/deps.sh test` (Debian package \
     `kamailio`), or set KAMAILIO_BIN / KAMCMD_BIN";

/// How long kamailio may take to bind its port and answer RPC.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long kamailio may take to stop on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Shared and private memory, in MB: plenty for a few calls.
const SHM_MB: &str = "32";
const PKG_MB: &str = "4";

/// What a [`Kamailio`] serves: its users (digest user name, plain-text
/// password) and the SIP domain it takes as its own besides its address.
#[derive(Debug, Clone)]
pub struct KamailioOptions<'a> {
    pub users: &'a [(&'a str, &'a str)],
    /// An IP (`127.0.0.1`, nothing to add) or a name such as `pbx.test`,
    /// which becomes an `alias` (so `uri == myself` holds for it). Digest
    /// realms are the From domain of each request, whatever it is.
    pub domain: &'a str,
}

impl Default for KamailioOptions<'_> {
    fn default() -> Self {
        KamailioOptions {
            users: &[],
            domain: "127.0.0.1",
        }
    }
}

/// [`Kamailio::start`] off the async runtime (it blocks until kamailio is up).
pub async fn start_kamailio(
    users: &'static [(&'static str, &'static str)],
    domain: &'static str,
) -> Kamailio {
    tokio::task::spawn_blocking(move || Kamailio::start(KamailioOptions { users, domain }))
        .await
        .expect("kamailio start task")
}

/// One registered contact, from `ul.dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The address-of-record key (the user: usrloc runs with use_domain=0).
    pub aor: String,
    /// The contact URI, e.g. `sip:bob-0x...@127.0.0.1:20010`.
    pub contact: String,
    /// Seconds the binding has left, as kamailio reports them.
    pub expires: Option<i64>,
    pub user_agent: Option<String>,
}

/// A running kamailio registrar/proxy on 127.0.0.1.
pub struct Kamailio {
    child: Child,
    port: u16,
    domain: String,
    kamcmd: PathBuf,
    ctl: PathBuf,
    log_path: PathBuf,
    status: Option<ExitStatus>,
    // Dropped last (fields drop in declaration order, after Drop::drop runs).
    dir: TempDir,
}

impl Kamailio {
    /// Writes the config and starts kamailio; returns once it listens and
    /// answers RPC. Panics (with kamailio's output) if it does not come up.
    pub fn start(options: KamailioOptions<'_>) -> Kamailio {
        let bin = locate("KAMAILIO_BIN", DEFAULT_KAMAILIO, "kamailio");
        let kamcmd = locate("KAMCMD_BIN", DEFAULT_KAMCMD, "kamcmd");
        let domain = options.domain.trim();
        assert!(
            !domain.is_empty()
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)),
            "kamailio domain must be a host name or IPv4 address: {domain:?}"
        );
        for (user, password) in options.users {
            assert!(
                !user.is_empty()
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)),
                "kamailio user name {user:?} is not a plain SIP user"
            );
            assert!(
                !password
                    .chars()
                    .any(|c| c == '"' || c == '\\' || c.is_control()),
                "password of {user:?} cannot go into a kamailio string literal"
            );
        }
        // The port is free when picked but may be taken before kamailio
        // binds it; a few attempts make that race harmless.
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&bin, &kamcmd, domain, options.users) {
                Ok(k) => return k,
                Err(e) => errors.push(e),
            }
        }
        panic!("kamailio did not start:\n{}", errors.join("\n---\n"));
    }

    fn try_start(
        bin: &Path,
        kamcmd: &Path,
        domain: &str,
        users: &[(&str, &str)],
    ) -> Result<Kamailio, String> {
        let dir = TempDir::new("gangway-kamailio")
            .map_err(|e| format!("cannot create a kamailio dir: {e}"))?;
        let port = free_port();
        let ctl = dir.path().join("ctl.sock");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("cannot create {run_dir:?}: {e}"))?;
        let cfg = render_config(&ConfigValues {
            port,
            domain,
            ctl: &ctl,
            users,
        })?;
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).map_err(|e| format!("cannot write {cfg_path:?}: {e}"))?;

        let log_path = dir.path().join("kamailio.log");
        let log = File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone log: {e}"))?;
        let args: Vec<String> = [
            "-DD",
            "-E",
            "-f",
            &cfg_path.display().to_string(),
            "-m",
            SHM_MB,
            "-M",
            PKG_MB,
            "-Y",
            &run_dir.display().to_string(),
            "-P",
            &dir.path().join("kamailio.pid").display().to_string(),
            "-w",
            &dir.path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        std::fs::write(
            dir.path().join("command.txt"),
            format!("{} {}", bin.display(), args.join(" ")),
        )
        .ok();
        let child = Command::new(bin)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()))?;

        let mut k = Kamailio {
            child,
            port,
            domain: domain.to_string(),
            kamcmd: kamcmd.to_path_buf(),
            ctl,
            log_path,
            status: None,
            dir,
        };
        // Ready when the SIP port is bound and ctl answers (ctl's process is
        // forked after the SIP workers).
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !k.is_running() {
                let status = k.status.expect("exited");
                return Err(format!(
                    "kamailio exited at startup ({status}):\n{}",
                    tail(&k.log(), 40)
                ));
            }
            if udp_port_bound(port) && k.ctl.exists() && k.rpc(&["core.version"]).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                // Drop stops it.
                return Err(format!(
                    "kamailio not ready on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                    tail(&k.log(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !k.log().contains("GWKAM-READY") {
            return Err(format!(
                "kamailio runs but its htable:mod-init route did not:\n{}",
                tail(&k.log(), 40)
            ));
        }
        Ok(k)
    }

    /// Its SIP port (UDP and TCP on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The domain it serves (an alias when not an IP).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Where phones register: `sip:127.0.0.1:<port>`.
    pub fn registrar_uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// Its directory (kamailio.cfg, kamailio.log, pid file, ctl socket).
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

    /// kamailio's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The script's `GWKAM-*` marker lines so far, from the marker on (e.g.
    /// `GWKAM-CHALLENGE 407 INVITE from=gangway rc=-5`).
    pub fn markers(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.find("GWKAM-").map(|i| l[i..].trim_end().to_string()))
            .collect()
    }

    /// How many `code` (401/407) challenges it sent for `method` requests.
    pub fn challenges(&self, code: u16, method: &str) -> usize {
        let prefix = format!("GWKAM-CHALLENGE {code} {method} ");
        self.markers()
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .count()
    }

    /// How many `method` requests it relayed (after authentication).
    pub fn relayed(&self, method: &str) -> usize {
        let prefix = format!("GWKAM-RELAY {method} ");
        self.markers()
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .count()
    }

    /// Waits until a marker line containing `needle` shows up; returns it.
    pub fn wait_for_marker(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.markers().into_iter().find(|m| m.contains(needle)) {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!("no marker with {needle:?} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs an RPC command over the ctl socket (`kamcmd -s unix:<sock> ...`)
    /// and returns its output.
    pub fn rpc(&self, command: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.kamcmd)
            .arg("-s")
            .arg(format!("unix:{}", self.ctl.display()))
            .args(command)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.kamcmd.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !stdout.trim_start().starts_with("error:") {
            Ok(stdout)
        } else {
            Err(format!(
                "kamcmd {} failed ({}): {stdout}{}",
                command.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Every binding in the `location` table (`ul.dump`).
    pub fn location(&self) -> Result<Vec<Registration>, String> {
        let dump = self.rpc(&["ul.dump"])?;
        Ok(parse_ul_dump(&dump))
    }

    /// Waits until `user` has at least one registered contact; returns them.
    pub fn wait_registered(
        &self,
        user: &str,
        timeout: Duration,
    ) -> Result<Vec<Registration>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let regs: Vec<Registration> = self
                .location()?
                .into_iter()
                .filter(|r| r.aor == user)
                .collect();
            if !regs.is_empty() {
                return Ok(regs);
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!("{user} not registered within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `msg` with the last lines of kamailio's log.
    fn fail(&self, msg: String) -> String {
        format!(
            "kamailio 127.0.0.1:{}: {msg}\n--- kamailio log (last lines) ---\n{}",
            self.port,
            tail(&self.log(), 40)
        )
    }

    fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        // SIGTERM to the main process: it stops its children and exits.
        signal(&format!("{}", self.child.id()), "-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (its pid is ours until reaped).
        if self.is_running() {
            signal(&format!("-{}", self.child.id()), "-KILL");
            let _ = self.child.wait();
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct ConfigValues<'a> {
    port: u16,
    domain: &'a str,
    ctl: &'a Path,
    users: &'a [(&'a str, &'a str)],
}

/// Where the template lives: this crate's `kamailio/` directory.
pub fn kamailio_template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kamailio")
        .join("kamailio.cfg.tpl")
}

/// The template with its `@NAME@` placeholders filled in.
fn render_config(v: &ConfigValues<'_>) -> Result<String, String> {
    let path = kamailio_template();
    let template =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let aliases = if v.domain.parse::<Ipv4Addr>().is_ok() {
        String::new()
    } else {
        format!("alias=\"{}\"", v.domain)
    };
    let users: String = v
        .users
        .iter()
        .map(|(u, p)| format!("\t$sht(users=>{u}) = \"{p}\";\n"))
        .collect();
    let mut out = template;
    for (name, value) in [
        ("ADDR", "127.0.0.1".to_string()),
        ("PORT", v.port.to_string()),
        ("ALIASES", aliases),
        ("CTL", v.ctl.display().to_string()),
        ("USERS", users),
    ] {
        let key = format!("@{name}@");
        if !out.contains(&key) {
            return Err(format!("{path:?} has no {key} placeholder"));
        }
        out = out.replace(&key, &value);
    }
    Ok(out)
}

/// Extracts the bindings from `kamcmd ul.dump` output, whose records look like
/// `AoR: bob` followed by `Contacts: { Contact: { Address: sip:...`,
/// `Expires: 59`, `User-Agent: baresip ...`.
fn parse_ul_dump(dump: &str) -> Vec<Registration> {
    let mut out = Vec::new();
    let mut aor: Option<String> = None;
    for line in dump.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "AoR" => aor = Some(value.to_string()),
            "Address" => {
                if let Some(a) = &aor {
                    out.push(Registration {
                        aor: a.clone(),
                        contact: value.to_string(),
                        expires: None,
                        user_agent: None,
                    });
                }
            }
            "Expires" => {
                if let Some(r) = out.last_mut() {
                    r.expires = value.parse().ok();
                }
            }
            "User-Agent" => {
                if let Some(r) = out.last_mut() {
                    r.user_agent = Some(value.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

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

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP port on 127.0.0.1");
        let port = udp.local_addr().expect("UDP local address").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP after 100 attempts");
}

/// Whether some socket is bound to UDP `port` on 127.0.0.1 or 0.0.0.0
/// (/proc/net/udp: `0100007F:13C4`, address and port in hex).
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

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ul_dump_is_parsed() {
        let dump = "{\n\tDomains: {\n\t\tDomain: {\n\t\t\tDomain: location\n\t\t\tSize: 1024\n\
            \t\t\tAoRs: {\n\t\t\t\tInfo: {\n\t\t\t\t\tAoR: bob\n\t\t\t\t\tHashID: 1\n\
            \t\t\t\t\tContacts: {\n\t\t\t\t\t\tContact: {\n\
            \t\t\t\t\t\t\tAddress: sip:bob@127.0.0.1:5062;transport=udp\n\
            \t\t\t\t\t\t\tExpires: 58\n\t\t\t\t\t\t\tUser-Agent: baresip v1.0.0\n\
            \t\t\t\t\t\t}\n\t\t\t\t\t}\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n";
        assert_eq!(
            parse_ul_dump(dump),
            vec![Registration {
                aor: "bob".into(),
                contact: "sip:bob@127.0.0.1:5062;transport=udp".into(),
                expires: Some(58),
                user_agent: Some("baresip v1.0.0".into()),
            }]
        );
    }

    #[test]
    fn template_renders_without_leftover_placeholders() {
        let cfg = render_config(&ConfigValues {
            port: 5070,
            domain: "pbx.test",
            ctl: Path::new("/tmp/x/ctl.sock"),
            users: &[("alice", "pw"), ("bob", "bob pw")],
        })
        .unwrap();
        assert!(cfg.contains("listen=udp:127.0.0.1:5070"));
        assert!(cfg.contains("alias=\"pbx.test\""));
        assert!(cfg.contains("$sht(users=>bob) = \"bob pw\";"));
        assert!(cfg.contains("unix:/tmp/x/ctl.sock"));
        for name in ["ADDR", "PORT", "ALIASES", "CTL", "USERS"] {
            assert!(!cfg.contains(&format!("@{name}@")), "{name} left");
        }
    }
}

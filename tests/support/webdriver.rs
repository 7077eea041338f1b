//! A minimal, blocking W3C WebDriver client that drives headless Chromium
//! through chromedriver, for the browser end-to-end tests.
//!
//! [`Browser::launch`] starts `chromedriver` on a free loopback port, waits
//! until it is ready and opens a session with the Chromium flags our tests
//! need (fake microphone from a WAV file, no network beyond loopback, WebRTC
//! allowed on loopback). Everything is blocking: call it from
//! `tokio::task::spawn_blocking` in async tests.
//!
//! Dropping a [`Browser`] ends the session, kills chromedriver's whole
//! process group (Chromium included) and deletes the profile directory, so
//! nothing is left behind when a test fails or panics.
//!
//! A missing Chromium or chromedriver is an error, never a skip.

use std::fmt;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Where Debian's `chromium` package installs the browser.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package installs chromedriver.
pub const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const INSTALL_HINT: &str = "run the project's test script (.ci/run), which installs them \
     (Debian packages `chromium` and `chromium-driver`), or set CHROMIUM_BIN / CHROMEDRIVER_BIN";

/// How long chromedriver may take to answer `GET /status` with ready.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for any single WebDriver command (including async scripts).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Upper bound for the best-effort `DELETE /session` on drop.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A WebDriver or setup failure, with enough detail to diagnose it.
#[derive(Debug, Clone)]
pub struct WebDriverError(pub String);

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebDriverError {}

pub type Result<T> = std::result::Result<T, WebDriverError>;

fn err(msg: impl Into<String>) -> WebDriverError {
    WebDriverError(msg.into())
}

/// A directory under the system temp dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory: `<tmp>/<prefix>-<pid>-<nanos>-<n>`.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Chromium may still be flushing its profile for a moment after exit.
        for _ in 0..5 {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// What to launch Chromium with, beyond the fixed flags of [`chromium_args`].
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// A 48 kHz 16-bit mono WAV file played (in a loop) as the fake microphone.
    pub fake_audio_capture: Option<PathBuf>,
    /// Further Chromium command-line switches.
    pub extra_args: Vec<String>,
}

/// The Chromium switches every test browser gets: headless, isolated from
/// the network and from the desktop, fake media devices that need no
/// permission prompt, autoplay allowed, and WebRTC host candidates on
/// loopback (no mDNS obfuscation).
pub fn chromium_args(user_data_dir: &Path, fake_audio_capture: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--allow-loopback-in-peer-connection",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", user_data_dir.display()));
    if let Some(wav) = fake_audio_capture {
        args.push(format!(
            "--use-file-for-fake-audio-capture={}",
            wav.display()
        ));
    }
    args
}

/// Finds an executable: the environment variable if set, else the default path.
fn locate(env_var: &str, default: &str, what: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if path.is_file() {
        Ok(path)
    } else {
        Err(err(format!(
            "{what} not found at {} (override with {env_var}); {INSTALL_HINT}",
            path.display()
        )))
    }
}

/// Picks a currently free loopback TCP port (bind to port 0, then release).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| err(format!("cannot bind a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("cannot read the free port: {e}")))
}

fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // WebDriver reports failures as 4xx/5xx with a JSON body we want to read.
        .http_status_as_error(false)
        // Loopback only; never go through a proxy from the environment.
        .proxy(None)
        .timeout_global(Some(timeout))
        .build();
    ureq::Agent::new_with_config(config)
}

/// A running chromedriver with one Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: Option<String>,
    agent: ureq::Agent,
    quit_agent: ureq::Agent,
    driver_log: PathBuf,
    // Dropped last (fields drop in declaration order, after Drop::drop runs).
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session.
    pub fn launch(options: BrowserOptions) -> Result<Browser> {
        let chromium = locate("CHROMIUM_BIN", DEFAULT_CHROMIUM, "Chromium")?;
        let chromedriver = locate("CHROMEDRIVER_BIN", DEFAULT_CHROMEDRIVER, "chromedriver")?;
        if let Some(wav) = &options.fake_audio_capture {
            if !wav.is_file() {
                return Err(err(format!(
                    "fake audio capture file {} does not exist",
                    wav.display()
                )));
            }
        }
        let profile = TempDir::new("gangway-chromium")
            .map_err(|e| err(format!("cannot create a Chromium profile dir: {e}")))?;

        // The port is free when picked but could be taken before chromedriver
        // binds it; a few attempts make that race harmless.
        let mut last_error = None;
        for attempt in 0..3 {
            let driver_log = profile.path().join(format!("chromedriver-{attempt}.log"));
            match start_driver(&chromedriver, &driver_log) {
                Ok((driver, base)) => {
                    let mut browser = Browser {
                        driver,
                        base,
                        session: None,
                        agent: agent(COMMAND_TIMEOUT),
                        quit_agent: agent(QUIT_TIMEOUT),
                        driver_log,
                        _profile: profile,
                    };
                    let user_data_dir = browser._profile.path().join("profile");
                    let mut args =
                        chromium_args(&user_data_dir, options.fake_audio_capture.as_deref());
                    args.extend(options.extra_args);
                    browser.new_session(&chromium, args)?;
                    return Ok(browser);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| err("chromedriver did not start")))
    }

    fn new_session(&mut self, chromium: &Path, args: Vec<String>) -> Result<()> {
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let value = self.command("POST", "/session", Some(caps))?;
        let id = value
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("new session: no sessionId in {value}")))?;
        self.session = Some(id.to_string());
        Ok(())
    }

    fn session_path(&self, suffix: &str) -> Result<String> {
        let id = self
            .session
            .as_deref()
            .ok_or_else(|| err("no WebDriver session"))?;
        Ok(format!("/session/{id}{suffix}"))
    }

    /// Sends one WebDriver command and returns its `value`, or the WebDriver
    /// error (code and message) as an error.
    pub fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        send(&self.agent, &self.base, method, path, body).map_err(|e| self.with_log(e))
    }

    /// Navigates the current tab and waits for the page to load.
    pub fn navigate(&self, url: &str) -> Result<()> {
        self.command(
            "POST",
            &self.session_path("/url")?,
            Some(json!({ "url": url })),
        )?;
        Ok(())
    }

    /// Sets the limit for scripts run by [`Self::execute_async_script`].
    pub fn set_script_timeout(&self, timeout: Duration) -> Result<()> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.command(
            "POST",
            &self.session_path("/timeouts")?,
            Some(json!({ "script": ms })),
        )?;
        Ok(())
    }

    /// Runs `script` as the body of a function; its return value is returned.
    pub fn execute_script(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.command(
            "POST",
            &self.session_path("/execute/sync")?,
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` as the body of a function whose last argument is the
    /// completion callback; the value passed to it is returned. Fails with a
    /// `script timeout` error if the callback is not called within the
    /// script timeout (see [`Self::set_script_timeout`]).
    pub fn execute_async_script(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.command(
            "POST",
            &self.session_path("/execute/async")?,
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Ends the session, which closes Chromium. Drop does this too.
    pub fn quit(&mut self) -> Result<()> {
        if let Some(id) = self.session.take() {
            send(
                &self.quit_agent,
                &self.base,
                "DELETE",
                &format!("/session/{id}"),
                None,
            )?;
        }
        Ok(())
    }

    /// The first element matching the CSS `selector` (its WebDriver reference).
    pub fn find(&self, selector: &str) -> Result<String> {
        let value = self.command(
            "POST",
            &self.session_path("/element")?,
            Some(json!({ "using": "css selector", "value": selector })),
        )?;
        value
            .get(ELEMENT_KEY)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| err(format!("{selector}: no element reference in {value}")))
    }

    /// Clicks the element matching `selector` as a user would (WebDriver
    /// Element Click: scrolled into view, fails if hidden or covered).
    pub fn click(&self, selector: &str) -> Result<()> {
        let id = self.find(selector)?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/click"))?,
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Replaces the text of the field matching `selector` by typing `text`
    /// into it (WebDriver Element Clear, then Element Send Keys).
    pub fn type_into(&self, selector: &str, text: &str) -> Result<()> {
        let id = self.find(selector)?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/clear"))?,
            Some(json!({})),
        )?;
        self.send_keys_to(&id, text)
    }

    /// Types `text` as key presses with the element matching `selector`
    /// focused (WebDriver Element Send Keys, without clearing).
    pub fn send_keys(&self, selector: &str, text: &str) -> Result<()> {
        let id = self.find(selector)?;
        self.send_keys_to(&id, text)
    }

    fn send_keys_to(&self, id: &str, text: &str) -> Result<()> {
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/value"))?,
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// chromedriver's output so far, for diagnosing failures.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.driver_log).unwrap_or_default()
    }

    fn with_log(&self, e: WebDriverError) -> WebDriverError {
        let log = self.driver_log();
        if log.trim().is_empty() {
            return e;
        }
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        err(format!(
            "{e}\n--- chromedriver output (last lines) ---\n{}",
            tail.join("\n")
        ))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.quit();
        kill_process_group(&mut self.driver);
    }
}

/// Starts chromedriver in its own process group on a free port and waits
/// until `GET /status` reports ready.
fn start_driver(chromedriver: &Path, log_path: &Path) -> Result<(Child, String)> {
    let port = free_port()?;
    let log = File::create(log_path)
        .map_err(|e| err(format!("cannot create {}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| err(format!("cannot clone the chromedriver log handle: {e}")))?;
    let mut child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own group, so Chromium and its helpers can be killed together.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e}; {INSTALL_HINT}",
                chromedriver.display()
            ))
        })?;
    let base = format!("http://127.0.0.1:{port}");
    let probe = agent(Duration::from_secs(2));
    let deadline = Instant::now() + DRIVER_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(err(format!(
                "chromedriver exited at startup ({status}): {}",
                out.trim()
            )));
        }
        if let Ok(value) = send(&probe, &base, "GET", "/status", None) {
            if value.get("ready").and_then(Value::as_bool) == Some(true) {
                return Ok((child, base));
            }
        }
        if Instant::now() >= deadline {
            kill_process_group(&mut child);
            let out = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(err(format!(
                "chromedriver on port {port} not ready after {DRIVER_START_TIMEOUT:?}: {}",
                out.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs every process in the child's group (chromedriver, Chromium and
/// Chromium's helpers) and reaps the child. The child must not have been
/// reaped yet: until then its pid, which is the group id, cannot be reused.
fn kill_process_group(child: &mut Child) {
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

/// One HTTP round trip to chromedriver; unwraps `value` and turns WebDriver
/// errors (`{"value": {"error", "message"}}`) into [`WebDriverError`].
fn send(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let url = format!("{base}{path}");
    let result = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", body) => agent
            .post(&url)
            .send_json(body.unwrap_or_else(|| json!({}))),
        (m, _) => return Err(err(format!("unsupported HTTP method {m}"))),
    };
    let mut response = result.map_err(|e| err(format!("{method} {path}: {e}")))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| err(format!("{method} {path}: reading the response: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        let head: String = text.chars().take(300).collect();
        err(format!(
            "{method} {path}: HTTP {status}, not JSON ({e}): {head}"
        ))
    })?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    // Only the status marks an error: a script's result may well have an `error` field.
    if !status.is_success() {
        let code = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        let message = value.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(err(format!(
            "{method} {path}: HTTP {status}: {code}: {message}"
        )));
    }
    Ok(value)
}

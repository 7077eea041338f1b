//! The browser side of the SIP-over-WebSocket tests: JsSIP and SIP.js,
//! unmodified from npm (`tests/sipws/package-lock.json`), bundled with
//! esbuild into browser scripts; a loopback HTTP server for the test page
//! (`tests/sipws/page.js`, API `window.T`) and the bundles; and a
//! [`SipPhone`], a headless Chromium on that page.
//!
//! The bundles are built once per lock file and machine, into
//! `<target>/sipws/<hash>/`; `npm ci` runs only when `tests/sipws/node_modules`
//! was installed from another lock file. Several test binaries may ask at
//! once: a directory created as a lock serialises them. A missing `node`
//! or `npm` is an error, never a skip (`scripts/deps.sh test` installs them).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::browser_call::pretty;
use crate::webdriver::{Browser, TempDir};

/// The page API (`window.T`), served as `/page.js`.
pub const PAGE_JS: &str = include_str!("../sipws/page.js");
/// The JsSIP phone the docs give users, served as `/example.html`.
const EXAMPLE_HTML: &str = include_str!("../../docs/examples/jssip.html");

/// The test page: the tap and API first, then the two libraries.
const PAGE_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
<title>gangway sip-ws tests</title></head><body>\n\
<script src=\"/page.js\"></script>\n<script src=\"/jssip.js\"></script>\n\
<script src=\"/sip.js\"></script>\n</body></html>\n";

/// Bumped when the esbuild invocation changes, so old bundles are not reused.
const BUILD_RECIPE: &str = "esbuild iife v1";
/// How long one process waits for another one's `npm ci` + esbuild.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit for each page call; the page's own waits are shorter, so a
/// failure comes back with its event log instead of a bare timeout.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The two browser bundles.
#[derive(Debug, Clone)]
pub struct Bundles {
    /// Defines the global `JsSIP`.
    pub jssip: PathBuf,
    /// Defines the global `SIP`.
    pub sipjs: PathBuf,
}

/// `tests/sipws`: package.json, the lock file, page.js.
pub fn sipws_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipws")
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target`.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// FNV-1a, enough to tell lock files apart.
pub(crate) fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Builds the bundles if this machine has none for the current lock file;
/// returns their paths. Cached for the process.
pub fn bundles() -> Result<Bundles, String> {
    static BUNDLES: OnceLock<Result<Bundles, String>> = OnceLock::new();
    BUNDLES.get_or_init(build_bundles).clone()
}

fn build_bundles() -> Result<Bundles, String> {
    let src = sipws_dir();
    let lock = std::fs::read(src.join("package-lock.json"))
        .map_err(|e| format!("cannot read {}/package-lock.json: {e}", src.display()))?;
    let hash = format!("{:016x}", fnv64(&[&lock, BUILD_RECIPE.as_bytes()]));
    let root = target_dir().join("sipws");
    let out = root.join(&hash);
    let found = || Bundles {
        jssip: out.join("jssip.js"),
        sipjs: out.join("sip.js"),
    };
    if out.join("jssip.js").is_file() && out.join("sip.js").is_file() {
        return Ok(found());
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let _guard = DirLock::acquire(&root.join(".lock"), LOCK_TIMEOUT)?;
    // Another process may have finished while we waited.
    if out.join("jssip.js").is_file() && out.join("sip.js").is_file() {
        return Ok(found());
    }
    npm_ci_if_needed(&src, &hash)?;
    let tmp = root.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let esbuild = src.join("node_modules/.bin/esbuild");
    for (entry, global, file) in [
        ("node_modules/jssip/lib/JsSIP.js", "JsSIP", "jssip.js"),
        ("node_modules/sip.js/lib/index.js", "SIP", "sip.js"),
    ] {
        let outfile = tmp.join(file);
        run(
            Command::new(&esbuild)
                .current_dir(&src)
                .arg(entry)
                .args(["--bundle", "--format=iife", "--platform=browser"])
                .arg(format!("--global-name={global}"))
                .arg("--log-level=warning")
                .arg(format!("--outfile={}", outfile.display())),
            &format!("esbuild {entry}"),
        )?;
    }
    std::fs::rename(&tmp, &out)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), out.display()))?;
    Ok(found())
}

/// `npm ci` unless node_modules was installed from this very lock file
/// (a stamp we write after a successful install says so).
pub(crate) fn npm_ci_if_needed(src: &Path, hash: &str) -> Result<(), String> {
    let stamp = src.join("node_modules/.gangway-lock-hash");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(hash)
        && src.join("node_modules/.bin/esbuild").exists()
    {
        return Ok(());
    }
    run(
        Command::new("npm").current_dir(src).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]),
        "npm ci (install node and npm with `scripts/deps.sh test`)",
    )?;
    std::fs::write(&stamp, hash).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A lock held by creating a directory (atomic on every file system). The
/// owner's pid inside lets a later process break the lock of a dead one.
pub(crate) struct DirLock(PathBuf);

impl DirLock {
    pub(crate) fn acquire(path: &Path, timeout: Duration) -> Result<DirLock, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(DirLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let dead = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                    if dead {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => return Err(format!("cannot create lock {}: {e}", path.display())),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} still locked after {timeout:?} (another test building the bundles?)",
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A static HTTP server on 127.0.0.1 for the page and the bundles, one
/// thread per connection, `Connection: close`. Stops on drop.
pub struct PageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Builds (or finds) the bundles and starts serving.
    pub fn start() -> Result<PageServer, String> {
        let b = bundles()?;
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        PageServer::serve(vec![
            (
                "/",
                "text/html; charset=utf-8",
                PAGE_HTML.as_bytes().to_vec(),
            ),
            ("/page.js", "text/javascript", PAGE_JS.as_bytes().to_vec()),
            (
                "/example.html",
                "text/html; charset=utf-8",
                EXAMPLE_HTML.as_bytes().to_vec(),
            ),
            ("/jssip.js", "text/javascript", read(&b.jssip)?),
            ("/sip.js", "text/javascript", read(&b.sipjs)?),
        ])
    }

    /// Serves `files` (path, content type, body) until dropped.
    pub fn serve(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> Result<PageServer, String> {
        let files = Arc::new(files);
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("page server bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sipws-page-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let files = files.clone();
                    std::thread::spawn(move || serve(conn, &files));
                }
            })
            .map_err(|e| format!("page server thread: {e}"))?;
        Ok(PageServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: what the gateway must allow as Origin.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The page's URL (a secure context: loopback).
    pub fn url(&self) -> String {
        format!("{}/", self.origin())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, files: &[(&str, &str, Vec<u8>)]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head is not needed, but is read so the client sees
    // an orderly close.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let found = files.iter().find(|(p, _, _)| *p == path);
    let (status, ctype, body): (&str, &str, &[u8]) = match (method, found) {
        ("GET" | "HEAD", Some((_, ctype, body))) => ("200 OK", ctype, body),
        ("GET" | "HEAD", None) => ("404 Not Found", "text/plain", b"not found\n"),
        _ => ("405 Method Not Allowed", "text/plain", b"GET only\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = &conn;
    let _ = w.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = w.write_all(body);
    }
    let _ = w.flush();
}

/// A headless Chromium on the test page whose microphone plays
/// [`BROWSER_TONE_HZ`]; drive it with [`SipPhone::call`].
pub struct SipPhone {
    pub browser: Browser,
    _wav: TempDir,
}

impl SipPhone {
    /// Launches Chromium, opens `page` and checks both libraries loaded.
    pub fn launch(page: &str) -> Result<SipPhone, String> {
        let phone = SipPhone::open(page)?;
        let loaded = phone.call("loaded", json!([]))?;
        if loaded["jssip"].is_null() || loaded["sipjs"].is_null() || loaded["secure"] != true {
            return Err(format!("the page did not load both libraries: {loaded}"));
        }
        Ok(phone)
    }

    /// Launches Chromium (its microphone a 1000 Hz tone) on any page.
    pub fn open(page: &str) -> Result<SipPhone, String> {
        let (browser, dir) = crate::browser_call::launch_browser(page)?;
        // The libraries' own steps take longer than our client's.
        browser
            .set_script_timeout(SCRIPT_TIMEOUT)
            .map_err(|e| format!("setting the script timeout: {e}"))?;
        Ok(SipPhone { browser, _wav: dir })
    }

    /// Runs `T.<method>(...args)` and waits for its promise. A rejection
    /// comes back as an error with the page's event log and SIP frames.
    pub fn call(&self, method: &str, args: Value) -> Result<Value, String> {
        let script = r#"
const [method, args] = arguments;
const done = arguments[arguments.length - 1];
Promise.resolve()
  .then(() => T[method](...args))
  .then((v) => done({ ok: v ?? null }))
  .catch(async (e) => done({ failure: String(e?.stack ?? e), ...(await T.snapshot()) }));
"#;
        let result = self
            .browser
            .execute_async_script(script, vec![json!(method), args])
            .map_err(|e| format!("T.{method}: {e}"))?;
        match result.get("failure") {
            Some(f) => Err(format!(
                "T.{method} failed: {}\n--- page events ---\n{}\n--- SIP over WebSocket ---\n{}\n\
                 --- peer connection ---\n{}",
                f.as_str().unwrap_or_default(),
                lines(&result["events"]),
                lines(&result["wire"]),
                pretty(&result["stats"])
            )),
            None => Ok(result["ok"].clone()),
        }
    }

    /// The page's events and frames so far, for failure messages.
    pub fn context(&self) -> String {
        match self.call("snapshot", json!([])) {
            Ok(s) => format!(
                "\n--- page events ---\n{}\n--- SIP over WebSocket ---\n{}",
                lines(&s["events"]),
                lines(&s["wire"])
            ),
            Err(e) => format!("\n(no page snapshot: {e})"),
        }
    }

    /// Whole SIP messages the page sent or received whose first line
    /// matches the JS regular expression `re`.
    pub fn wire_messages(&self, re: &str) -> Vec<Value> {
        let script = "const [re] = arguments; return T.wireMessages(re);";
        self.browser
            .execute_script(script, vec![json!(re)])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

fn lines(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    l.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| l.to_string())
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| v.to_string())
}

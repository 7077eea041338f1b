//! The JS client as an app consumes it: `tests/jsclient` is an npm project
//! that depends on the `gangway-client` package (`crates/gangway-signal/
//! assets`, linked by `file:`, the same files the gateway serves) and
//! imports it by name (`tests/jsclient/app.js`); esbuild bundles it into a
//! browser script that defines the global `GangwayApp`. [`app_page`] serves
//! that bundle on a loopback page.
//!
//! `npm ci` runs only when `tests/jsclient/node_modules` was installed from
//! another lock file; the bundle is rebuilt on every run (it is small), so a
//! change to the client is always what the test sees. A missing `node` or
//! `npm` is an error, never a skip (`scripts/deps.sh test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::sipws_page::{fnv64, npm_ci_if_needed, run, target_dir, DirLock, PageServer};

/// How long one process waits for another one's `npm ci`.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The app page: the bundle, nothing else.
const PAGE_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
<title>gangway-client package test</title></head><body>\n\
<script src=\"/app.js\"></script>\n</body></html>\n";

/// `tests/jsclient`: package.json, its lock file and app.js.
pub fn jsclient_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jsclient")
}

/// Installs the app's dependencies if needed and bundles it; returns the
/// bundle's path.
pub fn app_bundle() -> Result<PathBuf, String> {
    let src = jsclient_dir();
    let lock = std::fs::read(src.join("package-lock.json"))
        .map_err(|e| format!("cannot read {}/package-lock.json: {e}", src.display()))?;
    let hash = format!("{:016x}", fnv64(&[&lock]));
    let root = target_dir().join("jsclient");
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    {
        let _guard = DirLock::acquire(&root.join(".lock"), LOCK_TIMEOUT)?;
        npm_ci_if_needed(&src, &hash)?;
    }
    let out = root.join(format!("app-{}.js", std::process::id()));
    run(
        Command::new(src.join("node_modules/.bin/esbuild"))
            .current_dir(&src)
            .arg("app.js")
            .args(["--bundle", "--format=iife", "--platform=browser"])
            .arg("--global-name=GangwayApp")
            .arg("--log-level=warning")
            .arg(format!("--outfile={}", out.display())),
        "esbuild app.js",
    )?;
    Ok(out)
}

/// A loopback page serving the bundled app at `/app.js`.
pub fn app_page() -> Result<PageServer, String> {
    let bundle = app_bundle()?;
    let body = std::fs::read(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let _ = std::fs::remove_file(&bundle);
    PageServer::serve(vec![
        (
            "/",
            "text/html; charset=utf-8",
            PAGE_HTML.as_bytes().to_vec(),
        ),
        ("/app.js", "text/javascript", body),
    ])
}

//! The JS client as a package (`gangway-client`, in
//! `crates/gangway-signal/assets`): an app in `tests/jsclient` imports it by
//! name, esbuild bundles it through the package's `exports`, and headless
//! Chromium runs that bundle on a page of its own origin (not the
//! gateway's). The bundled client places an echo call through the gateway;
//! its 1000 Hz microphone tone must come back, and a 440 Hz tone, never
//! sent, must not.
//!
//! Needs Debian's `chromium`, `chromium-driver`, `nodejs` and `npm`
//! (`scripts/deps.sh test`); without them the test fails, it never skips.

use std::time::Duration;

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, pretty, run_script, Recording, BROWSER_TONE_HZ, CALL_SCRIPT,
};
use gangway_tests::gateway::{assert_no_leftovers, start_gateway_with};
use gangway_tests::js_package::{app_page, jsclient_dir};
use serde_json::{json, Value};

const CONTROL_HZ: f64 = 440.0;
const SETTLE_MS: u64 = 1_000;
const RECORD_MS: u64 = 4_000;

/// The package's version and the protocol version its client speaks.
fn package_version() -> String {
    let path = jsclient_dir().join("../../crates/gangway-signal/assets/package.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_package_places_an_echo_call_with_audio() {
    let page = tokio::task::spawn_blocking(app_page)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building the app: {e}"));
    let origin = page.origin();
    let gw = start_gateway_with(move |c| c.http.allowed_origins = vec![origin]).await;
    let ws = format!("ws://{}/ws", gw.http_addr());
    let url = page.url();

    // The call script of the other browser tests, with the client taken
    // from the bundle instead of the gateway's /client.js.
    let import =
        "const { GangwayClient } = await import(new URL('/client.js', location.href).href);";
    let connect = "GangwayClient.connect()";
    assert!(CALL_SCRIPT.contains(import) && CALL_SCRIPT.contains(connect));
    let script = CALL_SCRIPT
        .replace(import, "const { GangwayClient } = window.GangwayApp;")
        .replace(connect, "GangwayClient.connect(opts.ws)");

    let outcome = tokio::task::spawn_blocking(move || -> Result<(Value, Value), String> {
        let (browser, _wav) = launch_browser(&url)?;
        let app = browser
            .execute_script(
                "return { version: window.GangwayApp?.packageVersion ?? null, \
                 client: typeof window.GangwayApp?.GangwayClient?.connect, \
                 origin: location.origin };",
                Vec::new(),
            )
            .map_err(|e| e.to_string())?;
        let rec = run_script(
            &browser,
            &script,
            json!({ "to": "echo", "codec": "opus", "ws": ws,
                    "holdMs": SETTLE_MS + RECORD_MS + 200, "hangup": true }),
        )?;
        Ok((app, rec))
    })
    .await
    .unwrap();
    let (app, rec) = outcome.unwrap_or_else(|e| panic!("{e}"));
    println!("app: {app}");
    assert_eq!(
        app["client"], "function",
        "the bundle exports GangwayClient"
    );
    assert_eq!(app["version"], package_version(), "the bundled package");
    assert_ne!(app["origin"], json!(format!("http://{}", gw.http_addr())));

    let rec = Recording::parse(rec);
    println!("events: {}", rec.events());
    let from = rec.mark("answered") + rec.ms(SETTLE_MS);
    let heard = rec.window(from, from + rec.ms(RECORD_MS));
    let seconds = rec.seconds(heard.len());
    let (tone, control) = (
        tone_coverage(heard, rec.rate, BROWSER_TONE_HZ),
        tone_coverage(heard, rec.rate, CONTROL_HZ),
    );
    println!(
        "recorded {seconds:.2} s: {BROWSER_TONE_HZ} Hz in {tone:.3} of frames, {CONTROL_HZ} Hz {control:.3}"
    );
    assert!(
        seconds >= RECORD_MS as f64 / 1000.0 * 0.9,
        "recorded {seconds:.2} s"
    );
    assert!(
        tone >= 0.9,
        "the echo of the tone: {tone:.3}; peer connection: {}",
        pretty(&rec.result["stats"])
    );
    assert!(control < 0.1, "negative control: {control:.3}");
    assert_eq!(rec.result["endReason"]["reason"], "hangup");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

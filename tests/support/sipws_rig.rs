//! The SIP-over-WebSocket acceptance rig: kamailio (registrar and
//! authenticating proxy for `pbx.test`), a gateway whose trunk it is and
//! whose `/sip` the page may open, baresip bob registered at kamailio, the
//! page server, and one [`SipPhone`] signed in as alice with JsSIP or SIP.js.
//! Plus the tone checks both ways, with their negative controls.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::audio::tone_coverage;
use crate::browser_call::{level_dbfs, pretty, Recording, BROWSER_TONE_HZ};
use crate::gateway::start_sip_gateway;
use crate::kamailio::{start_kamailio, Kamailio};
use crate::sip_peers::{registered_baresip, Baresip};
use crate::sipws_page::{PageServer, SipPhone};

pub const DOMAIN: &str = "pbx.test";
pub const USERS: &[(&str, &str)] = &[("alice", "pw"), ("bob", "bobpw"), ("carol", "carolpw")];
pub const ALICE: &str = "sip:alice@pbx.test";
pub const BOB: &str = "sip:bob@pbx.test";
pub const BOB_TONE_HZ: f64 = 440.0;
pub const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
/// Jitter buffers and codecs settle this long before the analysed audio.
pub const SETTLE_MS: u64 = 500;
/// What baresip's recording loses at its start before the analysis.
pub const BARESIP_TRIM_S: f64 = 0.5;

pub struct Rig {
    pub kam: Kamailio,
    pub gw: gangway::Gateway,
    pub bob: Arc<Baresip>,
    pub server: PageServer,
}

impl Rig {
    /// kamailio, the page server, a gateway that allows the page's Origin
    /// (its trunk: kamailio over UDP, no trunk credentials: the browser's
    /// own answer kamailio's challenges), and bob registered.
    pub async fn start() -> Rig {
        Rig::start_with(|_| {}).await
    }

    /// As [`Rig::start`], with more gateway configuration.
    pub async fn start_with(f: impl FnOnce(&mut gangway::Config) + Send + 'static) -> Rig {
        let kam = start_kamailio(USERS, DOMAIN).await;
        let server = tokio::task::spawn_blocking(PageServer::start)
            .await
            .expect("page server task")
            .unwrap_or_else(|e| panic!("page server: {e}"));
        let origin = server.origin();
        let gw = start_sip_gateway(kam.port(), DOMAIN, move |c| {
            c.http.allowed_origins = vec![origin];
            c.sip.trunk.transport = "udp".into();
            f(c);
        })
        .await;
        let bob = registered_baresip(
            kam.registrar_uri(),
            "bob",
            "bobpw",
            BOB_TONE_HZ,
            SIGNALING_TIMEOUT,
        )
        .await;
        Rig {
            kam,
            gw,
            bob,
            server,
        }
    }

    /// The gateway's SIP-over-WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/sip", self.gw.http_addr())
    }

    /// bob's events and log, the last of kamailio's log.
    pub fn context(&self) -> String {
        let log = self.kam.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "\n--- kamailio markers ---\n{:#?}\n--- kamailio log (last lines) ---\n{}\n\
             --- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            self.kam.markers(),
            lines[lines.len().saturating_sub(30)..].join("\n"),
            self.bob.events(),
            self.bob.log()
        )
    }

    /// A Chromium on the page, signed in as alice with `lib` (`jssip`,
    /// `sipjs`); checks kamailio challenged the REGISTER and holds a
    /// binding for alice that points at the gateway, not at the page's
    /// `.invalid` host.
    pub async fn alice(&self, lib: &str) -> Arc<SipPhone> {
        let phone = self.browser().await;
        let arg = json!([{ "lib": lib, "wsUrl": self.ws_url(), "uri": ALICE, "user": "alice",
            "password": "pw" }]);
        page(&phone, "register", arg)
            .await
            .unwrap_or_else(|e| panic!("[{lib}] registering alice: {e}{}", self.context()));
        let markers = self.kam.markers();
        let challenged = markers
            .iter()
            .position(|m| m.starts_with("GWKAM-CHALLENGE 401 REGISTER from=alice"));
        let registered = markers
            .iter()
            .position(|m| m.starts_with("GWKAM-REGISTERED sip:alice@"));
        assert!(
            matches!((challenged, registered), (Some(c), Some(r)) if c < r),
            "[{lib}] kamailio challenged alice's REGISTER with 401, then registered her: \
             {markers:#?}"
        );
        let bindings = self
            .kam
            .wait_registered("alice", SIGNALING_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        println!("[{lib}] kamailio location for alice: {bindings:?}");
        let gw_sip = self.gw.sip_addr().expect("the gateway's SIP address");
        for b in &bindings {
            assert!(
                b.contact.contains(&gw_sip.to_string()) && !b.contact.contains(".invalid"),
                "[{lib}] alice's binding points at the gateway ({gw_sip}): {bindings:?}"
            );
        }
        phone
    }

    /// A Chromium on the documented example page (`docs/examples/jssip.html`).
    pub async fn example_page(&self) -> Arc<SipPhone> {
        let url = format!("{}example.html", self.server.url());
        let phone = tokio::task::spawn_blocking(move || SipPhone::open(&url))
            .await
            .expect("browser task")
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(phone)
    }

    /// A Chromium on the page, not registered.
    pub async fn browser(&self) -> Arc<SipPhone> {
        let url = self.server.url();
        let phone = tokio::task::spawn_blocking(move || SipPhone::launch(&url))
            .await
            .expect("browser task")
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(phone)
    }

    /// Checks kamailio challenged alice's INVITE with 407 and accepted the
    /// library's credentials.
    pub fn assert_invite_authenticated(&self, t: &str) {
        let markers = self.kam.markers();
        let challenged = markers
            .iter()
            .position(|m| m.starts_with("GWKAM-CHALLENGE 407 INVITE from=alice"));
        let ok = markers
            .iter()
            .position(|m| m == "GWKAM-AUTHOK INVITE user=alice");
        assert!(
            matches!((challenged, ok), (Some(c), Some(o)) if c < o),
            "[{t}] kamailio challenged the INVITE with 407, then took alice's credentials: \
             {markers:#?}"
        );
    }

    /// Waits for baresip event `kind` off the runtime.
    pub async fn bob_event(&self, kind: &'static str) -> Value {
        let bob = self.bob.clone();
        tokio::task::spawn_blocking(move || bob.wait_for_event(kind, SIGNALING_TIMEOUT))
            .await
            .expect("baresip wait task")
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `T.<method>(...args)` on the page, off the async runtime.
pub async fn page(
    phone: &Arc<SipPhone>,
    method: &'static str,
    args: Value,
) -> Result<Value, String> {
    let phone = phone.clone();
    tokio::task::spawn_blocking(move || phone.call(method, args))
        .await
        .expect("browser task")
}

/// The page's events and SIP frames, off the async runtime.
pub async fn page_context(phone: &Arc<SipPhone>) -> String {
    let phone = phone.clone();
    tokio::task::spawn_blocking(move || phone.context())
        .await
        .expect("browser task")
}

/// The page's recording (stopped now).
pub async fn take_recording(phone: &Arc<SipPhone>, rig: &Rig, t: &str) -> Recording {
    let v = page(phone, "takeRecording", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] the page's recording: {e}{}", rig.context()));
    Recording::parse(v)
}

/// The browser heard bob (≥ 90% of 20 ms frames) and not itself (the
/// negative control) from `from` (a mark) + [`SETTLE_MS`] to `to`.
pub fn assert_browser_heard_bob(t: &str, rec: &Recording, from: &str, to: &str) {
    let start = rec.mark(from) + rec.ms(SETTLE_MS);
    let heard = rec.window(start, rec.mark(to));
    let seconds = rec.seconds(heard.len());
    let bob = tone_coverage(heard, rec.rate, BOB_TONE_HZ);
    let control = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
    println!(
        "[{t}] browser heard {seconds:.2} s ({from}..{to}, {:.1} dBFS, codec in {} out {}): \
         {BOB_TONE_HZ} Hz in {bob:.3}, {BROWSER_TONE_HZ} Hz (control) in {control:.3}\n  {}",
        level_dbfs(heard),
        rec.result["codec"],
        rec.result["outboundCodec"],
        rec.timeline(start, &[('b', BOB_TONE_HZ), ('B', BROWSER_TONE_HZ)])
    );
    assert!(
        seconds >= 1.5,
        "[{t}] only {seconds:.2} s recorded; events: {}",
        rec.events()
    );
    assert!(
        bob >= 0.9,
        "[{t}] the browser heard bob's {BOB_TONE_HZ} Hz in only {:.1}% of frames; stats {}\n\
         events: {}",
        bob * 100.0,
        pretty(&rec.result["stats"]),
        rec.events()
    );
    assert!(
        control < 0.1,
        "[{t}] negative control: the browser heard {BROWSER_TONE_HZ} Hz in {:.1}%",
        control * 100.0
    );
}

/// bob's newest recording, after the trim: samples and rate.
pub fn bob_heard(rig: &Rig) -> (Vec<f32>, u32) {
    let (samples, rate) = rig.bob.recorded_audio();
    let trim = ((BARESIP_TRIM_S * f64::from(rate)) as usize).min(samples.len());
    (samples[trim..].to_vec(), rate)
}

/// bob heard the browser (≥ 90%) and not himself (control) for ≥ `min_s`.
pub fn assert_bob_heard_browser(t: &str, rig: &Rig, min_s: f64) {
    let (heard, rate) = bob_heard(rig);
    let seconds = heard.len() as f64 / f64::from(rate);
    let browser = tone_coverage(&heard, rate, BROWSER_TONE_HZ);
    let control = tone_coverage(&heard, rate, BOB_TONE_HZ);
    println!(
        "[{t}] bob heard {seconds:.2} s ({:.1} dBFS): {BROWSER_TONE_HZ} Hz in {browser:.3}, \
         {BOB_TONE_HZ} Hz (control) in {control:.3}",
        level_dbfs(&heard)
    );
    assert!(
        seconds >= min_s,
        "[{t}] bob recorded only {seconds:.2} s{}",
        rig.context()
    );
    assert!(
        browser >= 0.9,
        "[{t}] bob heard the browser's {BROWSER_TONE_HZ} Hz in only {:.1}% of frames{}",
        browser * 100.0,
        rig.context()
    );
    assert!(
        control < 0.1,
        "[{t}] negative control: bob heard {BOB_TONE_HZ} Hz in {:.1}%",
        control * 100.0
    );
}

/// Per 100 ms block of `samples`: `T` where `hz` dominates, else `.`.
pub fn timeline(samples: &[f32], rate: u32, hz: f64) -> String {
    samples
        .chunks_exact((rate / 10) as usize)
        .map(|b| {
            if tone_coverage(b, rate, hz) >= 0.8 {
                'T'
            } else {
                '.'
            }
        })
        .collect()
}

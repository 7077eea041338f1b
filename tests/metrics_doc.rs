//! Every metric family docs/operations.md documents is exported, with at
//! least one sample, by a freshly started gateway, with the documented
//! type, before any call or SIP message; and every family exported is
//! documented. The table is
//! parsed, so the doc and this test cannot drift apart.

use gangway_tests::gateway::{scrape, start_sip_gateway};
use gangway_tests::metrics_doc::{documented_families, exported_families, operations_doc};
use gangway_tests::sip_peers::free_udp_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_exports_exactly_the_documented_families() {
    let documented = documented_families(&operations_doc());
    // The SIP leg on (its trunk a port nobody answers), keepalive off: no
    // SIP message is ever sent, no call placed.
    let gw = start_sip_gateway(free_udp_port(), "pbx.test", |_| {}).await;
    let text = scrape(&gw).await;
    let exported = exported_families(&text);
    gw.shutdown(std::time::Duration::ZERO).await;

    let missing: Vec<String> = documented
        .iter()
        .filter(|(name, _)| !exported.contains_key(*name))
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/operations.md but without a sample in /metrics of a fresh gateway: {missing:?}\n{text}"
    );
    let wrong_type: Vec<String> = documented
        .iter()
        .filter_map(|(name, kind)| {
            let got = exported.get(name)?;
            (got != kind).then(|| format!("{name}: documented {kind}, exported {got}"))
        })
        .collect();
    assert!(wrong_type.is_empty(), "{wrong_type:?}");
    let undocumented: Vec<&String> = exported
        .keys()
        .filter(|name| !documented.contains_key(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but missing from the metrics table of docs/operations.md: {undocumented:?}"
    );
    // Which build runs: the workspace version, and a commit or `unknown`.
    let prefix = format!(
        "gangway_build_info{{version=\"{}\",revision=\"",
        env!("CARGO_PKG_VERSION")
    );
    let info = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix}…\"}} 1 in /metrics:\n{text}"));
    let (revision, value) = info.split_once("\"} ").expect("a build_info sample");
    assert_eq!(value, "1");
    assert!(
        revision == "unknown"
            || (revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "revision {revision:?}"
    );
    println!(
        "{} families, documented and exported; revision {revision}",
        documented.len()
    );
}

//! The operations artefacts against the real tools: a real Prometheus
//! scrapes a gateway while an echo call and a SIP call (sipp) run, loads
//! deploy/prometheus/alerts.yml (which promtool must pass), and answers
//! every panel query of deploy/grafana/gangway.json with data; every alert
//! rule's expression must parse and evaluate, and the rules pass their
//! promtool unit tests (deploy/prometheus/alerts_test.yml).

use std::process::Command;
use std::time::Duration;

use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::{assert_no_leftovers, start_sip_gateway};
use gangway_tests::prometheus::{repo_file, sample_value, Prometheus};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use serde_json::Value;

/// What Grafana puts for its built-in interval variables; the dashboard's
/// own variables get their "All" value.
const GRAFANA_BUILTINS: [(&str, &str); 4] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "5s"),
    ("$__range", "1m"),
    ("$__range_s", "60"),
];

/// One call through the gateway: `to` is `echo` or a SIP destination
/// (sipp echoes RTP). Audio goes both ways and comes back.
async fn call(gw: &gangway::Gateway, id: &str, to: &str) {
    let mut api = ApiClient::connect(gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call(id, to, &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "{id}: WebRTC leg connects"
    );
    let mut m = api.recv().await;
    if m["type"] == "ringing" {
        m = api.recv().await;
    }
    assert_eq!(m["type"], "answered", "{id}: {m}");
    // Long enough for a few scrapes while the call is up.
    let report = client
        .echo_exchange(1, 200, Duration::from_millis(500))
        .await;
    assert_eq!(report.foreign, 0, "{id}: {report:?}");
    assert!(report.echoed >= 180, "{id}: audio came back: {report:?}");
    api.hangup(id).await;
    assert_eq!(api.expect("ended").await["reason"], "hangup", "{id}");
    api.close().await;
}

/// Every panel of the dashboard (rows' nested panels included): title and
/// its targets' `refId` and expression.
fn panel_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default().to_string();
                let ref_id = t["refId"].as_str().unwrap_or("?").to_string();
                out.push((title.clone(), ref_id, expr));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The expression with Grafana's variables replaced as Grafana would with
/// every instance selected.
fn substitute(expr: &str, dashboard: &Value) -> String {
    let mut e = expr.to_string();
    for (name, value) in GRAFANA_BUILTINS {
        e = e.replace(name, value);
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap_or_default();
        let all = var["allValue"].as_str().unwrap_or(".+");
        e = e
            .replace(&format!("${{{name}}}"), all)
            .replace(&format!("${name}"), all);
    }
    e
}

fn promtool_check_rules(rules: &std::path::Path) -> usize {
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(rules)
        .output()
        .expect("run promtool (scripts/deps.sh test installs the `prometheus` package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    // "SUCCESS: 20 rules found"
    text.split("SUCCESS: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("rule count in promtool's output:\n{text}"))
}

/// deploy/prometheus/alerts_test.yml: alerts fire on made-up series that
/// should fire them, after their `for:`, with their annotations filled in,
/// and stay quiet otherwise.
#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let out = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(repo_file("deploy/prometheus/alerts_test.yml"))
        .output()
        .expect("run promtool (scripts/deps.sh test installs the `prometheus` package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_work_against_a_real_prometheus() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let rule_count = promtool_check_rules(&rules);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/gangway.json"))
            .expect("read deploy/grafana/gangway.json"),
    )
    .expect("the dashboard is JSON");

    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let prom = tokio::task::block_in_place(|| Prometheus::start(gw.http_addr(), &rules));
    let scraping = tokio::task::block_in_place(|| {
        prom.wait_for("up{job=\"gangway\"}", Duration::from_secs(30), |v| v == 1.0)
    });
    assert!(scraping, "Prometheus scrapes the gateway:\n{}", prom.log());

    call(&gw, "echo-call", "echo").await;
    call(&gw, "sip-call", "1000").await;
    sipp.wait(Duration::from_secs(10))
        .expect("sipp saw INVITE, ACK and our BYE");
    assert_no_leftovers(&gw).await;

    // Both calls' ends and the SIP call's media summary scraped.
    let scraped = tokio::task::block_in_place(|| {
        prom.wait_for(
            "sum(gangway_calls_ended_total{reason=\"hangup\"}) + sum(gangway_call_mos_count)",
            Duration::from_secs(30),
            |v| v >= 3.0,
        )
    });
    assert!(scraped, "Prometheus has the calls' metrics");

    tokio::task::block_in_place(|| {
        // The instance variable: label_values(gangway_build_info, instance).
        let info = prom
            .query("gangway_build_info")
            .expect("gangway_build_info");
        let instance = info
            .first()
            .and_then(|s| s["metric"]["instance"].as_str())
            .map(str::to_string);
        assert_eq!(instance, Some(gw.http_addr().to_string()), "{info:?}");

        let queries = panel_queries(&dashboard);
        assert!(queries.len() > 40, "panel queries found: {}", queries.len());
        let mut failures = Vec::new();
        for (panel, ref_id, expr) in &queries {
            let e = substitute(expr, &dashboard);
            if e.contains('$') {
                failures.push(format!("panel '{panel}' {ref_id}: variable left in {e}"));
                continue;
            }
            match prom.query(&e) {
                Err(err) => failures.push(format!("panel '{panel}' {ref_id}: {err}\n  {e}")),
                Ok(r) if r.is_empty() => {
                    failures.push(format!("panel '{panel}' {ref_id}: no data\n  {e}"))
                }
                Ok(_) => {}
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} dashboard queries failed:\n{}",
            failures.len(),
            queries.len(),
            failures.join("\n")
        );
        // A few panels must show what the calls did, not only zeros.
        for (expr, what) in [
            (
                "sum(increase(gangway_calls_started_total[1m]))",
                "calls started",
            ),
            ("sum(increase(gangway_call_mos_count[1m]))", "MOS observed"),
            ("sum(increase(process_cpu_seconds_total[1m]))", "CPU used"),
            // Scraped while the calls were up, not only after.
            (
                "max_over_time(gangway_calls_active[1m])",
                "a call in progress",
            ),
            (
                "max_over_time(gangway_rtp_ports_active[1m])",
                "a SIP call in progress",
            ),
        ] {
            let v = prom
                .query(expr)
                .ok()
                .and_then(|r| r.first().and_then(sample_value));
            assert!(v.is_some_and(|v| v > 0.0), "{what}: {expr} = {v:?}");
        }
        println!("{} dashboard queries answered with data", queries.len());

        // Every alert rule loaded and evaluated without error, and its
        // expression runs as a query of its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let evaluated = loop {
            let v = prom.api("rules", &[("type", "alert")]);
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let all_ran = rules.len() == rule_count
                && rules
                    .iter()
                    .all(|r| r["health"] == "ok" || r["health"] == "err");
            if all_ran || std::time::Instant::now() >= deadline {
                break rules;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(evaluated.len(), rule_count, "rules loaded by Prometheus");
        let mut bad = Vec::new();
        for r in &evaluated {
            let name = r["name"].as_str().unwrap_or("?");
            let expr = r["query"].as_str().unwrap_or_default();
            if r["health"] != "ok" {
                bad.push(format!("{name}: health {} {}", r["health"], r["lastError"]));
            }
            if let Err(e) = prom.query(expr) {
                bad.push(format!("{name}: {e}\n  {expr}"));
            }
        }
        assert!(bad.is_empty(), "alert rules:\n{}", bad.join("\n"));
        // Nothing is wrong with this gateway: no critical alert may fire.
        let firing: Vec<String> = evaluated
            .iter()
            .filter(|r| r["state"] != "inactive" && r["labels"]["severity"] == "critical")
            .map(|r| format!("{} ({})", r["name"], r["state"]))
            .collect();
        assert!(
            firing.is_empty(),
            "critical alerts pending or firing: {firing:?}"
        );
        println!("{rule_count} alert rules evaluated");
    });
    drop(prom);
    gw.shutdown(Duration::ZERO).await;
}

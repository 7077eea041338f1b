//! A real Prometheus (Debian's `prometheus` package) run by a test: its
//! own config, storage in a temporary directory, a free loopback port,
//! scraping every second. Never the system service.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::webdriver::TempDir;

/// A file of this repository, by its path from the root.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (job `gangway`) every second
    /// and evaluating `rule_file` every second; waits until it is ready.
    pub fn start(target: SocketAddr, rule_file: &Path) -> Prometheus {
        let config_text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: gangway\n    static_configs:\n      - targets: ['{target}']\n",
            rules = rule_file.display(),
        );
        // The port is free when picked; another process may take it before
        // Prometheus binds it, so a start that exits at once is retried.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free TCP port")
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            // Each try gets a directory of its own (Drop removes the last).
            let dir = TempDir::new("gangway-prometheus").expect("a temporary directory");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(&config, &config_text).expect("write prometheus.yml");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("run prometheus (scripts/deps.sh test installs the `prometheus` package)");
            let mut prom = Prometheus { child, addr, dir };
            if prom.wait_ready(Duration::from_secs(60)) {
                return prom;
            }
            eprintln!("prometheus did not start on {addr}:\n{}", prom.log());
        }
        panic!("prometheus did not start after 5 attempts");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            let ready = agent()
                .get(format!("http://{}/-/ready", self.addr))
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with query parameters: the whole JSON answer
    /// (`status` is `success` or `error`, with `error` saying why).
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut req = agent().get(format!("http://{}/api/v1/{path}", self.addr));
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        let mut resp = req
            .call()
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {e}"));
        resp.body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("JSON from /api/v1/{path}: {e}"))
    }

    /// An instant query now: `Ok(result vector)`, or `Err(Prometheus's error)`.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.api("query", &[("query", expr)]);
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // Scalars and strings are `[time, "value"]`.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Polls `expr` until its first sample's value satisfies `ok`.
    pub fn wait_for(&self, expr: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(result) = self.query(expr) {
                if result.first().and_then(sample_value).is_some_and(&ok) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

/// The value of one sample of a vector result.
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

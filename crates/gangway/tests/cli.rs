//! The command line as an operator meets it: `--help`, `--check-config`,
//! configuration errors and the log on a pipe.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn gangway(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gangway"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the gateway binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_explains_the_configuration_sources_and_overrides() {
    let out = gangway(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "config/gangway.toml",
        "GANGWAY_<SECTION>__<KEY>",
        "GANGWAY_SIP__TRUNK__HOST",
        "RUST_LOG",
        "SIGTERM",
        "docs/operations.md",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn check_config_prints_every_value_but_no_secret() {
    let out = gangway(
        &["--check-config"],
        &[
            ("GANGWAY_SIP__TRUNK__PASSWORD", "trunk-hunter2"),
            ("GANGWAY_SIP__TRUNK__USERNAME", "gw-user"),
            ("GANGWAY_AUTH__TOKEN_SECRET", "jwt-s3cr3t"),
            ("GANGWAY_AUTH__USERS", "{alice=\"alice-pw9\"}"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for secret in ["trunk-hunter2", "jwt-s3cr3t", "alice-pw9"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    let v: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(v["sip"]["trunk"]["password"], "<redacted>");
    assert_eq!(v["auth"]["token_secret"], "<redacted>");
    assert_eq!(v["auth"]["users"]["alice"], "<redacted>");
    assert_eq!(v["sip"]["trunk"]["username"], "gw-user", "not a secret");
}

#[test]
fn a_bad_configuration_names_the_key_and_the_file_and_exits_2() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"[calls]\nsetup_timeout_secs = 0\n").unwrap();
    let path = f.path().to_str().unwrap();
    let out = gangway(&["--config", path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`calls.setup_timeout_secs`") && err.contains(path),
        "{err}"
    );

    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"[calls\n").unwrap();
    let path = f.path().to_str().unwrap();
    let out = gangway(&["--config", path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(path) && err.contains("line 1"),
        "a syntax error names the file and line: {err}"
    );

    let out = gangway(&[], &[("GANGWAY_HTTP__LISTEN", "nowhere")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("GANGWAY_HTTP__LISTEN"), "{err}");
}

#[test]
fn the_human_log_on_a_pipe_has_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gangway"))
        .env("GANGWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0")
        .env("GANGWAY_LOG__FORMAT", "human")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("http://");
            lines.push(line);
            if done {
                let _ = tx.send(lines);
                return;
            }
        }
    });
    let lines = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.expect("the gateway logs its address");
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code on a pipe: {line:?}"
        );
        assert!(line.contains("INFO") || line.contains("WARN"), "{line:?}");
    }
}

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gangway::config::log_filter;
use gangway::{Config, Gateway, LogFormat};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Gangway: a WebRTC-to-SIP gateway.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Cli {
    /// Configuration file [default: config/gangway.toml if present]
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective values as JSON
    /// (passwords and secrets shown as "<redacted>") and exit.
    #[arg(long)]
    check_config: bool,
}

const AFTER_HELP: &str = "\
Configuration, later sources winning:
  1. built-in defaults (config/gangway.toml in the source tree shows them all)
  2. the file given with --config, else config/gangway.toml in the current
     directory if it exists
  3. environment variables GANGWAY_<SECTION>__<KEY>, nested tables with more
     `__`, e.g. GANGWAY_HTTP__LISTEN=0.0.0.0:8080,
     GANGWAY_SIP__ENABLED=true, GANGWAY_SIP__TRUNK__HOST=pbx.example.com
  RUST_LOG, when set and valid, replaces log.level.

Signals: SIGTERM or SIGINT drains calls (up to shutdown.drain_timeout_secs)
and exits 0; a second one ends every call at once and exits 3.
Exit status 2: the configuration is invalid (the message names the key and
the file or variable it came from).

Reference: docs/operations.md (every key, metric and endpoint).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gangway: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match effective_config_json(&config) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gangway: configuration is valid but cannot be printed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&config);
    match gangway::fd_limit::raise() {
        Some(limit) if limit < gangway::fd_limit::needed(&config) => warn!(
            limit,
            needed = gangway::fd_limit::needed(&config),
            "the open-file limit is below what the connection caps allow: raise it (ulimit -n, LimitNOFILE) or lower http.max_connections / sip.max_tcp_connections"
        ),
        Some(limit) => info!(limit, "open-file limit"),
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let drain = config.drain_timeout();
    // Listen for signals before anything is announced: a SIGTERM sent as
    // soon as the address is logged must drain, not kill the process.
    let mut signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gangway: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gangway: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "demo page: http://{}/ (call `{}`)",
        gateway.http_addr(),
        gateway.config().calls.echo_destination
    );
    signals.next().await;
    info!(
        drain_secs = drain.as_secs(),
        "shutting down: draining calls (signal again to stop now)"
    );
    let stop_now = gateway.stop_now_handle();
    let shutdown = gateway.shutdown(drain);
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => return ExitCode::SUCCESS,
        _ = signals.next() => {}
    }
    // A forced stop still says goodbye: one BYE (or CANCEL) per call, then
    // out with a status that says the drain was cut short.
    warn!("second signal: ending every call now (signal again to exit at once)");
    stop_now.now();
    tokio::select! {
        _ = &mut shutdown => {}
        _ = signals.next() => warn!("third signal: exiting without waiting"),
    }
    ExitCode::from(FORCED_STOP)
}

/// Exit status after a forced stop (a second signal during the drain).
const FORCED_STOP: u8 = 3;

/// SIGINT and SIGTERM, registered once for the life of the process so that
/// no signal falls between two waits.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn listen() -> std::io::Result<Self> {
        Ok(Self {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(config: &Config) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| log_filter(d).is_ok())
        .unwrap_or_else(|| config.log.level.clone());
    let filter =
        log_filter(&quiet_sip_stack(&directives)).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: never into files,
    // pipes or journald, and never when NO_COLOR is set.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// rsipstack logs every SIP message whole at `info` (4-9 KB per INVITE):
/// it stays at `warn` unless the filter names it (`rsipstack=debug` to
/// trace SIP; a capture is the better way). Its TCP accept loop retries at
/// once when accept fails, with a warning each time: out of descriptors
/// that is millions of lines, so that one module only logs errors (the
/// gateway keeps descriptors in reserve instead: `fd_limit`).
fn quiet_sip_stack(directives: &str) -> String {
    if directives.contains("rsipstack") {
        directives.to_string()
    } else {
        format!("{directives},rsipstack=warn,rsipstack::transport::tcp_listener=error")
    }
}

fn effective_config_json(config: &Config) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&gangway::config::redacted(config)?)
}

#[cfg(test)]
mod tests {
    use super::quiet_sip_stack;

    #[test]
    fn the_sip_stack_is_quiet_unless_named() {
        assert_eq!(
            quiet_sip_stack("info"),
            "info,rsipstack=warn,rsipstack::transport::tcp_listener=error"
        );
        assert_eq!(
            quiet_sip_stack("info,rsipstack=debug"),
            "info,rsipstack=debug"
        );
    }
}

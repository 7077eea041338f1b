//! Outbound calls against a real SIP peer: sipp (Debian package `sip-tester`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gangway_sip::sdp::{self, G711};
use gangway_sip::SipLabels;
use gangway_sip::{
    OutboundCall, SipCall, SipConfig, SipEvent, SipMetrics, SipService, Transport, Trunk,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{channel, Receiver};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gangway_sip=debug,rsipstack=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A port that was free a moment ago (bind to 0, read it, release it).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind((LOCALHOST, 0)).expect("bind udp");
    s.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind tcp");
    s.local_addr().unwrap().port()
}

/// A sipp UAS child process, killed when dropped.
struct Sipp {
    child: Child,
    port: u16,
}

impl Sipp {
    /// `scenario`: `Builtin("uas")` or a file under `tests/sipp/`.
    fn spawn(scenario: Scenario) -> Sipp {
        Sipp::spawn_with(scenario, Transport::Udp)
    }

    fn spawn_with(scenario: Scenario, transport: Transport) -> Sipp {
        let port = match transport {
            Transport::Udp => free_udp_port(),
            Transport::Tcp => free_tcp_port(),
        };
        let control_port = free_udp_port();
        let media_port = free_udp_port();
        let mut cmd = Command::new("sipp");
        match scenario {
            Scenario::Builtin(name) => {
                cmd.args(["-sn", name]);
            }
            Scenario::File(file) => {
                let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "sipp", file]
                    .iter()
                    .collect();
                cmd.arg("-sf").arg(path);
            }
        }
        cmd.args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            .args(["-cp", &control_port.to_string()])
            .args(["-mp", &media_port.to_string()])
            .args(["-m", "1", "-timeout", "20s", "-nostdin"])
            .args(match transport {
                Transport::Udp => ["-t", "u1"],
                Transport::Tcp => ["-t", "t1"],
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .expect("sipp not found: apt-get install -y sip-tester");
        Sipp { child, port }
    }

    /// Wait for sipp to finish its one call and return its exit code.
    async fn finish(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(25), self.child.wait())
            .await
            .expect("sipp did not exit in time")
            .expect("wait for sipp");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr).await;
        }
        (status.code().unwrap_or(-1), stderr)
    }
}

enum Scenario {
    Builtin(&'static str),
    File(&'static str),
}

async fn start_service() -> SipService {
    start_service_with_metrics(SipMetrics::default()).await
}

async fn start_service_with_metrics(metrics: SipMetrics) -> SipService {
    init_tracing();
    SipService::start(
        SipConfig {
            listen: SocketAddr::new(LOCALHOST, 0),
            public_ip: None,
            user_agent: "Gangway-test/0.1".into(),
            prack: true,
            session_expires: 1800,
            max_calls_per_second: 0,
            tcp: Default::default(),
        },
        metrics,
    )
    .await
    .expect("start SIP service")
}

fn trunk(port: u16, username: Option<&str>, password: Option<&str>) -> Trunk {
    Trunk {
        host: "127.0.0.1".into(),
        port,
        transport: Transport::Udp,
        domain: "pbx.test".into(),
        username: username.map(Into::into),
        password: password.map(Into::into),
    }
}

fn call(key: u64, trunk: Trunk, service: &SipService, correlation: &str) -> OutboundCall {
    OutboundCall {
        key,
        request_uri: format!("sip:1000@127.0.0.1:{}", trunk.port),
        trunk,
        from_user: "gangway".into(),
        from_display: Some("Gangway Test".into()),
        sdp_offer: sdp::offer(
            service.advertised_ip(),
            40000,
            &[G711::Pcmu, G711::Pcma],
            101,
            1234,
        ),
        correlation_id: correlation.into(),
        auth: Default::default(),
    }
}

struct Events {
    key: u64,
    rx: Receiver<(u64, SipEvent)>,
}

impl Events {
    async fn next(&mut self) -> SipEvent {
        let (key, event) = tokio::time::timeout(EVENT_TIMEOUT, self.rx.recv())
            .await
            .expect("timed out waiting for a SIP event")
            .expect("event channel closed");
        assert_eq!(key, self.key);
        event
    }

    /// Skip provisional responses; return the first other event.
    async fn next_non_provisional(&mut self) -> SipEvent {
        loop {
            match self.next().await {
                SipEvent::Provisional { .. } => continue,
                other => return other,
            }
        }
    }

    /// After `Ended` nothing else may arrive.
    async fn assert_no_more(&mut self) {
        match tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await {
            Err(_) => {}
            Ok(None) => {}
            Ok(Some(ev)) => panic!("unexpected event after Ended: {ev:?}"),
        }
    }
}

fn place(service: &SipService, call: OutboundCall) -> (SipCall, Events) {
    let (tx, rx) = channel(64);
    let key = call.key;
    let handle = service.place_call(call, tx);
    (handle, Events { key, rx })
}

fn assert_sipp_ok((code, stderr): (i32, String)) {
    assert_eq!(code, 0, "sipp scenario failed (exit {code}): {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_then_local_hangup() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::Builtin("uas"));
    let (handle, mut events) = place(
        &service,
        call(1, trunk(sipp.port, None, None), &service, "corr-uas"),
    );

    // The built-in uas sends 180 then 200.
    assert_eq!(
        events.next().await,
        SipEvent::Provisional {
            status: 180,
            sdp: None
        }
    );
    let sdp = match events.next().await {
        SipEvent::Answered { sdp } => sdp,
        other => panic!("expected Answered, got {other:?}"),
    };
    let media = sdp::parse_answer(&sdp, &[G711::Pcmu, G711::Pcma]).expect("usable answer");
    assert_eq!(media.codec, G711::Pcmu);
    assert_eq!(media.addr.ip(), LOCALHOST);

    handle.hangup();
    handle.hangup(); // idempotent
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.active_calls(), 0);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_486_fails() {
    let metrics = SipMetrics::default();
    let service = start_service_with_metrics(metrics.clone()).await;
    let sipp = Sipp::spawn(Scenario::File("busy_486.xml"));
    let (_handle, mut events) = place(
        &service,
        call(2, trunk(sipp.port, None, None), &service, "corr-486"),
    );

    assert_eq!(
        events.next_non_provisional().await,
        SipEvent::Failed {
            status: 486,
            reason: "Busy Here".into()
        }
    );
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);

    let count = |family: &Family<SipLabels, Counter>, labels: SipLabels| {
        family.get_or_create(&labels).get()
    };
    assert!(
        count(
            &metrics.requests,
            [("direction", "sent"), ("method", "INVITE")]
        ) >= 1
    );
    assert!(
        count(
            &metrics.requests,
            [("direction", "sent"), ("method", "ACK")]
        ) >= 1
    );
    assert!(
        count(
            &metrics.responses,
            [("direction", "received"), ("status", "486")]
        ) >= 1
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_ringing_cancels() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::File("ring_cancel.xml"));
    let (handle, mut events) = place(
        &service,
        call(3, trunk(sipp.port, None, None), &service, "corr-cancel"),
    );

    assert_eq!(
        events.next().await,
        SipEvent::Provisional {
            status: 180,
            sdp: None
        }
    );
    handle.hangup();
    // CANCEL → 200, INVITE → 487: only Ended is reported after our hangup.
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_right_password_answers() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::File("auth_401.xml"));
    let (handle, mut events) = place(
        &service,
        call(
            4,
            trunk(sipp.port, Some("trunkuser"), Some("s3cret")),
            &service,
            "corr-auth-ok",
        ),
    );

    let sdp = match events.next_non_provisional().await {
        SipEvent::Answered { sdp } => sdp,
        other => panic!("expected Answered, got {other:?}"),
    };
    let media = sdp::parse_answer(&sdp, &[G711::Pcmu, G711::Pcma]).expect("usable answer");
    assert_eq!(media.codec, G711::Pcma);

    handle.hangup();
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_wrong_password_fails() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::File("auth_401.xml"));
    let (_handle, mut events) = place(
        &service,
        call(
            5,
            trunk(sipp.port, Some("trunkuser"), Some("wrong")),
            &service,
            "corr-auth-bad",
        ),
    );

    match events.next_non_provisional().await {
        SipEvent::Failed { status: 401, .. } => {}
        other => panic!("expected Failed 401, got {other:?}"),
    }
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_bye_reports_remote_hangup() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::File("answer_then_bye.xml"));
    let (_handle, mut events) = place(
        &service,
        call(6, trunk(sipp.port, None, None), &service, "corr-bye"),
    );

    let sdp = match events.next_non_provisional().await {
        SipEvent::Answered { sdp } => sdp,
        other => panic!("expected Answered, got {other:?}"),
    };
    let media = sdp::parse_answer(&sdp, &[G711::Pcmu]).expect("usable answer");
    assert_eq!(media.dtmf_pt, Some(101));
    assert_eq!(events.next().await, SipEvent::RemoteHangup);
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.active_calls(), 0);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trunk_answered_then_local_hangup() {
    let service = start_service().await;
    let sipp = Sipp::spawn_with(Scenario::Builtin("uas"), Transport::Tcp);
    let mut t = trunk(sipp.port, None, None);
    t.transport = Transport::Tcp;
    let (handle, mut events) = place(&service, call(7, t, &service, "corr-tcp"));

    match events.next_non_provisional().await {
        SipEvent::Answered { .. } => {}
        other => panic!("expected Answered, got {other:?}"),
    }
    handle.hangup();
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hangs_up_live_calls() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::Builtin("uas"));
    let (_handle, mut events) = place(
        &service,
        call(8, trunk(sipp.port, None, None), &service, "corr-stop"),
    );

    match events.next_non_provisional().await {
        SipEvent::Answered { .. } => {}
        other => panic!("expected Answered, got {other:?}"),
    }
    assert_eq!(service.active_calls(), 1);
    service.stop().await;
    // stop() sent BYE and waited for the call to end.
    assert_eq!(service.active_calls(), 0);
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_hold_is_answered_recvonly() {
    let service = start_service().await;
    let sipp = Sipp::spawn(Scenario::File("reinvite_hold.xml"));
    let (_handle, mut events) = place(
        &service,
        call(9, trunk(sipp.port, None, None), &service, "corr-hold"),
    );

    match events.next_non_provisional().await {
        SipEvent::Answered { .. } => {}
        other => panic!("expected Answered, got {other:?}"),
    }
    // The re-INVITE is answered inside the crate (sipp checks a=recvonly)
    // and reported with the far end's offer; then the far end hangs up.
    match events.next().await {
        SipEvent::RemoteOffer { sdp } => assert!(sdp.contains("a=sendonly"), "{sdp}"),
        other => panic!("expected RemoteOffer, got {other:?}"),
    }
    assert_eq!(events.next().await, SipEvent::RemoteHangup);
    assert_eq!(events.next().await, SipEvent::Ended);
    events.assert_no_more().await;
    assert_sipp_ok(sipp.finish().await);
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

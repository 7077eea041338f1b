//! Calls survive a lost WebSocket: the session is parked with its calls
//! (media keeps flowing on both legs) until a new socket resumes it with
//! its token, or the grace period ends the calls with a BYE to the PBX.
//! And the WebRTC leg alone can be renegotiated (an ICE restart onto a new
//! client address) without anything reaching the SIP leg.
//!
//! The far end is sipp echoing RTP, so a tone the str0m client sends goes
//! browser → gateway → sipp → gateway → browser and is checked by Goertzel.

use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{
    assert_no_leftovers, metric_or_zero, scrape_metric, start_gateway_with, start_sip_gateway,
    wait_metric,
};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use serde_json::{json, Value};

const TONE_HZ: f64 = 1000.0;
const CONTROL_HZ: f64 = 440.0;
const SETTLE: Duration = Duration::from_secs(5);
const SIGNALING: Duration = Duration::from_secs(10);

const PARKED: &str = "gangway_sessions_parked";
const RESUMED: &str = "gangway_session_resumes_total{outcome=\"resumed\"}";
const REFUSED: &str = "gangway_session_resumes_total{outcome=\"refused\"}";
const EXPIRED: &str = "gangway_session_resumes_total{outcome=\"expired\"}";
const ENDED_EXPIRED: &str = "gangway_calls_ended_total{reason=\"session_expired\"}";
const INVITES_SENT: &str = "gangway_sip_requests_total{direction=\"sent\",method=\"INVITE\"}";
const BYES_SENT: &str = "gangway_sip_requests_total{direction=\"sent\",method=\"BYE\"}";

/// Places a call to sipp (`1000`) and waits until it is answered with
/// media connected.
async fn answered_call(api: &mut ApiClient, id: &str) -> (RtcClient, String) {
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call(id, "1000", &offer).await;
    let answer = api.expect("answer").await;
    let sdp = answer["sdp"].as_str().unwrap().to_string();
    client.accept_answer(&sdp);
    assert!(client.connect(SIGNALING).await, "WebRTC leg connects");
    loop {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("answered") => break,
            Some("ringing") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    (client, sdp)
}

fn ice_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag")
        .to_string()
}

fn is_token(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The tone came back through sipp in at least 90 % of the frames, the
/// 440 Hz control in almost none, and few frames went missing.
fn assert_tone_heard(what: &str, tones: &gangway_tests::rtc_client::ToneExchange) {
    let heard = tone_coverage(&tones.received, 8000, TONE_HZ);
    let control = tone_coverage(&tones.received, 8000, CONTROL_HZ);
    println!(
        "{what}: sent {} frames, received {}; 1000 Hz in {heard:.3} of them, 440 Hz {control:.3}",
        tones.sent_frames, tones.received_frames
    );
    assert!(heard >= 0.9, "{what}: our tone came back: {heard:.3}");
    assert!(control < 0.1, "{what}: negative control: {control:.3}");
    assert!(
        tones.received_frames as f64 >= 0.9 * tones.sent_frames as f64,
        "{what}: frames came back: {} of {}",
        tones.received_frames,
        tones.sent_frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_socket_is_resumed_and_audio_flows_through_the_gap() {
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    assert!(is_token(&api.hello["resume_token"]), "{}", api.hello);
    assert_eq!(api.hello["resume_grace_secs"], 30);
    let old_token = api.resume_token().unwrap();
    let session = api.hello["session"].clone();
    let (mut client, _) = answered_call(&mut api, "r1").await;

    // One stretch of tone from well before the drop to well after the
    // resume; meanwhile the WebSocket is dropped and a new one resumes.
    let signalling = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let dropped_at = Instant::now();
        api.drop_abruptly();
        assert_eq!(
            wait_metric(&gw, PARKED, 1.0, SETTLE).await,
            1.0,
            "the gateway parked the session"
        );
        assert_eq!(scrape_metric(&gw, "gangway_calls_active").await, 1.0);
        assert_eq!(
            scrape_metric(&gw, "gangway_ws_connections_active").await,
            0.0
        );
        // Stay away a while: the gap audio must cross without a socket.
        tokio::time::sleep_until((dropped_at + Duration::from_millis(2000)).into()).await;
        let mut api = ApiClient::connect(&gw).await;
        let resumed = api.resume_session(&old_token).await;
        let resumed_at = Instant::now();
        (api, resumed, dropped_at, resumed_at)
    };
    let (tones, (mut api, resumed, dropped_at, resumed_at)) = tokio::join!(
        client.send_pcmu_tone(TONE_HZ, 6.0, Duration::from_millis(300)),
        signalling
    );
    println!("{resumed}");
    assert_eq!(resumed["type"], "session_resumed", "{resumed}");
    assert_eq!(resumed["session"], session, "the same session");
    assert_eq!(
        resumed["calls"],
        json!([{"call": "r1", "state": "answered"}]),
        "{resumed}"
    );
    assert!(is_token(&resumed["resume_token"]), "{resumed}");
    assert_ne!(resumed["resume_token"], old_token.as_str(), "a new token");

    assert_tone_heard("whole call, gap included", &tones);
    let gap = resumed_at - dropped_at;
    let in_gap = tones.frames_between(dropped_at, resumed_at);
    let expected = gap.as_millis() as f64 / 20.0;
    println!("{in_gap} frames arrived in the {gap:?} without a socket (~{expected:.0} sent)");
    assert!(
        in_gap as f64 >= 0.9 * expected,
        "audio kept flowing without a socket: {in_gap} frames in {gap:?}"
    );
    assert_eq!(scrape_metric(&gw, PARKED).await, 0.0);
    assert_eq!(scrape_metric(&gw, RESUMED).await, 1.0);

    // The used token is spent; the connection that tried it is a fresh session.
    let mut other = ApiClient::connect(&gw).await;
    let refused = other.resume_session(&old_token).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unknown_session")),
        "{refused}"
    );
    other.send(json!({"type": "ping"})).await;
    other.expect("pong").await;
    other.close().await;
    assert_eq!(scrape_metric(&gw, REFUSED).await, 1.0);

    // The resumed socket carries on: hangup, BYE to sipp.
    api.hangup("r1").await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "hangup", "{ended}");
    sipp.wait(SIGNALING)
        .unwrap_or_else(|e| panic!("sipp got our BYE (and nothing else): {e}"));
    assert_eq!(scrape_metric(&gw, ENDED_EXPIRED).await, 0.0);
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresumed_session_expires_and_the_pbx_gets_its_bye() {
    const GRACE: Duration = Duration::from_secs(2);
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| {
        c.calls.resume_grace_secs = GRACE.as_secs();
    })
    .await;
    let mut api = ApiClient::connect(&gw).await;
    assert_eq!(api.hello["resume_grace_secs"], 2);
    let token = api.resume_token().unwrap();
    let (mut client, _) = answered_call(&mut api, "x1").await;

    // Media keeps going while the session waits; nobody resumes it.
    let watch = async {
        let dropped_at = Instant::now();
        api.drop_abruptly();
        assert_eq!(wait_metric(&gw, PARKED, 1.0, SETTLE).await, 1.0);
        tokio::time::sleep_until((dropped_at + GRACE - Duration::from_millis(300)).into()).await;
        assert_eq!(
            metric_or_zero(&gw, BYES_SENT).await,
            0.0,
            "no BYE within the grace period"
        );
        assert_eq!(scrape_metric(&gw, "gangway_calls_active").await, 1.0);
        assert_eq!(
            wait_metric(&gw, ENDED_EXPIRED, 1.0, GRACE + SETTLE).await,
            1.0,
            "the call ended with session_expired"
        );
        dropped_at.elapsed()
    };
    let (tones, expired_after) =
        tokio::join!(client.send_pcmu_tone(TONE_HZ, 4.0, Duration::ZERO), watch);
    println!("expired {expired_after:?} after the drop");
    assert!(
        expired_after >= GRACE,
        "not before the grace period: {expired_after:?}"
    );
    assert!(
        expired_after < GRACE + Duration::from_secs(2),
        "soon after it: {expired_after:?}"
    );
    // The tone came back while the session waited (the gateway let go of
    // the call at about half of it).
    let first = *tones.arrivals.first().expect("the tone came back at all");
    let parked_frames = tones.frames_between(first, first + GRACE);
    assert!(
        parked_frames >= 80,
        "media flowed while parked: {parked_frames}"
    );
    sipp.wait(SIGNALING)
        .unwrap_or_else(|e| panic!("sipp got the BYE: {e}"));
    assert_eq!(scrape_metric(&gw, BYES_SENT).await, 1.0);
    assert_eq!(scrape_metric(&gw, PARKED).await, 0.0);
    assert_eq!(scrape_metric(&gw, EXPIRED).await, 1.0);
    assert_eq!(scrape_metric(&gw, RESUMED).await, 0.0);

    // The expired session's token is refused; the connection stays usable.
    let mut late = ApiClient::connect(&gw).await;
    let refused = late.resume_session(&token).await;
    assert_eq!(refused["code"], "unknown_session", "{refused}");
    assert_eq!(refused["call"], Value::Null);
    late.send(json!({"type": "ping"})).await;
    late.expect("pong").await;
    assert_eq!(scrape_metric(&gw, REFUSED).await, 1.0);
    assert_eq!(
        scrape_metric(&gw, "gangway_api_errors_total{code=\"unknown_session\"}").await,
        1.0
    );
    assert_no_leftovers(&gw).await;
    late.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_onto_a_new_address_touches_only_the_webrtc_leg() {
    // sipp aborts (and fails) on any request its scenario does not expect,
    // such as a re-INVITE or UPDATE; it expects only our BYE.
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, first_answer) = answered_call(&mut api, "ice").await;
    let tones = client
        .send_pcmu_tone(TONE_HZ, 1.5, Duration::from_millis(200))
        .await;
    assert_tone_heard("before the restart", &tones);
    assert_eq!(scrape_metric(&gw, INVITES_SENT).await, 1.0);

    // A bad offer is refused, typed, and the call carries on.
    api.send(json!({"type": "renegotiate", "call": "ice", "sdp": "v=0\r\nnonsense"}))
        .await;
    let refused = api.expect("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["call"].as_str()),
        (Some("invalid_sdp"), Some("ice")),
        "{refused}"
    );
    api.send(json!({"type": "renegotiate", "call": "nope", "sdp": "v=0"}))
        .await;
    assert_eq!(api.expect("error").await["code"], "unknown_call");

    // The client moves to a new UDP socket and restarts ICE.
    let old_addr = client.local_addr();
    let offer = client.ice_restart_offer(true).await;
    assert_ne!(client.local_addr(), old_addr);
    api.send(json!({"type": "renegotiate", "call": "ice", "sdp": offer}))
        .await;
    let answer = api.expect("answer").await;
    assert_eq!(answer["call"], "ice");
    let sdp = answer["sdp"].as_str().unwrap();
    assert_ne!(
        ice_ufrag(sdp),
        ice_ufrag(&first_answer),
        "the gateway answers with new ICE credentials"
    );
    client.accept_answer(sdp);
    // The browser trickles its new candidate with the usual message.
    api.send(json!({"type": "candidate", "call": "ice",
        "candidate": {"candidate": client.host_candidate(), "sdpMid": "0"}}))
        .await;
    let t0 = Instant::now();
    assert!(
        client.wait_ice_connected(SIGNALING).await,
        "ICE connects again on the new address"
    );
    println!("ICE reconnected in {:?}", t0.elapsed());

    let tones = client
        .send_pcmu_tone(TONE_HZ, 2.0, Duration::from_millis(300))
        .await;
    assert_tone_heard("after the restart, from the new address", &tones);
    api.expect_silence(Duration::from_millis(200)).await;

    // Nothing reached the SIP leg: still one INVITE, no UPDATE.
    assert_eq!(scrape_metric(&gw, INVITES_SENT).await, 1.0);
    assert_eq!(
        metric_or_zero(
            &gw,
            "gangway_sip_requests_total{direction=\"sent\",method=\"UPDATE\"}"
        )
        .await,
        0.0
    );
    api.hangup("ice").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(SIGNALING)
        .unwrap_or_else(|e| panic!("sipp saw only INVITE, ACK and BYE: {e}"));
    assert_eq!(scrape_metric(&gw, INVITES_SENT).await, 1.0);
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// A close frame with a code other than 1000 parks the session just like a
/// lost connection; 1000 ends the calls at once, as before. Echo calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_decide_between_parking_and_ending() {
    let gw = start_gateway_with(|_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    let token = api.resume_token().unwrap();
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("e1", "echo", &offer).await;
    api.expect("answer").await;
    api.expect("answered").await;

    // 1001 (a browser leaving the page): parked, then resumed.
    api.close_with(1001).await;
    assert_eq!(wait_metric(&gw, PARKED, 1.0, SETTLE).await, 1.0);
    let mut api = ApiClient::connect(&gw).await;
    // Someone else's garbage first: refused, nothing taken over.
    let refused = api.resume_session("not-a-token").await;
    assert_eq!(refused["code"], "unknown_session", "{refused}");
    let resumed = api.resume_session(&token).await;
    assert_eq!(resumed["type"], "session_resumed", "{resumed}");
    assert_eq!(
        resumed["calls"],
        json!([{"call": "e1", "state": "answered"}])
    );
    let fresh = resumed["resume_token"].as_str().unwrap().to_string();
    // Resuming the session it already is: refused without spending the token.
    let own = api.resume_session(&fresh).await;
    assert_eq!(own["code"], "invalid_state", "{own}");

    // 1000: the calls end now, nothing is parked.
    api.close_with(1000).await;
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"socket_closed\"}").await,
        1.0
    );
    assert_eq!(scrape_metric(&gw, PARKED).await, 0.0);
    let mut late = ApiClient::connect(&gw).await;
    assert_eq!(
        late.resume_session(&fresh).await["code"],
        "unknown_session",
        "a session that ended cannot be resumed"
    );
    late.close().await;
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// A resume while the old socket still looks open at the gateway (a
/// half-open connection after a network change): the new socket wins and
/// the old one is closed with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_session_whose_old_socket_is_still_open() {
    let gw = start_gateway_with(|_| {}).await;
    let mut old = ApiClient::connect(&gw).await;
    let token = old.resume_token().unwrap();
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    old.call("e1", "echo", &offer).await;
    old.expect("answer").await;
    old.expect("answered").await;

    let mut new = ApiClient::connect(&gw).await;
    let resumed = new.resume_session(&token).await;
    assert_eq!(resumed["type"], "session_resumed", "{resumed}");
    assert_eq!(resumed["session"], old.hello["session"]);
    assert_eq!(
        resumed["calls"],
        json!([{"call": "e1", "state": "answered"}])
    );
    let end = old.try_recv(SIGNALING).await;
    assert_eq!(
        end,
        Err(gangway_tests::api_client::Closed::Close(Some(4001.into()))),
        "the superseded socket is closed"
    );
    assert_eq!(scrape_metric(&gw, PARKED).await, 0.0, "never parked");
    assert_eq!(
        wait_metric(&gw, "gangway_ws_connections_active", 1.0, SETTLE).await,
        1.0
    );
    // The call is the new socket's now.
    new.hangup("e1").await;
    assert_eq!(new.expect("ended").await["reason"], "hangup");
    new.close().await;
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// `calls.resume_grace_secs = 0`: no token, and a lost socket ends its
/// calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_can_be_turned_off() {
    let gw = start_gateway_with(|c| c.calls.resume_grace_secs = 0).await;
    let mut api = ApiClient::connect(&gw).await;
    assert_eq!(api.hello["resume_token"], Value::Null, "{}", api.hello);
    assert_eq!(api.hello["resume_grace_secs"], 0);
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("e1", "echo", &offer).await;
    api.expect("answer").await;
    api.expect("answered").await;
    api.drop_abruptly();
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"socket_closed\"}").await,
        1.0
    );
    assert_eq!(scrape_metric(&gw, PARKED).await, 0.0);
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

//! Browser-side WebRTC peers call SIP destinations through the gateway's
//! SIP leg, against sipp as the far end: signalling outcomes and media
//! passed through byte for byte (sipp echoes the RTP it receives).

use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::{
    assert_no_leftovers, metric_value, scrape, scrape_metric, start_sip_gateway,
};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use serde_json::Value;

/// A gateway whose trunk is the given SIP peer on loopback.
async fn gateway_to(trunk_port: u16) -> gangway::Gateway {
    start_sip_gateway(trunk_port, "pbx.test", |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_call_passes_media_both_ways_and_hangs_up_with_bye() {
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = gateway_to(sipp.port()).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    let t0 = Instant::now();
    api.call("browser-call-7f3a", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "WebRTC leg connects"
    );
    let answered = api.expect("answered").await;
    assert_eq!(answered["call"], "browser-call-7f3a");
    println!("call -> answered in {:?}", t0.elapsed());

    let report = client
        .echo_exchange(1, 100, Duration::from_millis(500))
        .await;
    println!("{report:?}");
    assert_eq!(report.foreign, 0, "only our own frames come back");
    assert!(
        report.echoed >= 90,
        "frames returned through SIP/RTP: {report:?}"
    );

    api.hangup("browser-call-7f3a").await;
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].clone()),
        (Some("hangup"), Value::Null)
    );
    sipp.wait(Duration::from_secs(10))
        .expect("sipp saw INVITE, ACK and our BYE");
    let messages = sipp.messages();
    assert!(
        messages.contains("X-Gangway-Call-ID:"),
        "correlation header present"
    );
    assert!(
        !messages.contains("browser-call-7f3a"),
        "the browser's call id stays off the SIP leg"
    );
    assert_no_leftovers(&gw).await;
    assert!(scrape_metric(&gw, "gangway_rtp_packets_sent_total").await >= 90.0);
    // The call's media summary: one observation, and loopback lost nothing.
    assert_eq!(
        scrape_metric(&gw, "gangway_sip_leg_loss_ratio_count").await,
        1.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_sip_leg_loss_ratio_sum").await,
        0.0
    );
    // A clean loopback call scores near the narrowband ceiling.
    let mos = scrape_metric(&gw, "gangway_call_mos_sum").await;
    assert!((4.3..=4.5).contains(&mos), "estimated MOS {mos}");
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_ends_with_486() {
    let mut sipp = Sipp::uas("uas_busy.xml", 0, &[]);
    let gw = gateway_to(sipp.port()).await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("busy", "1000", &offer).await;
    api.expect("answer").await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "busy", "{ended}");
    assert_eq!(ended["code"], 486);
    sipp.wait(Duration::from_secs(10))
        .expect("sipp scenario passes (ACK for the 486)");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_ringing_sends_cancel() {
    let mut sipp = Sipp::uas("uas_no_answer.xml", 0, &[]);
    let gw = gateway_to(sipp.port()).await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("ring", "1000", &offer).await;
    api.expect("answer").await;
    assert_eq!(api.expect("ringing").await["call"], "ring");
    api.hangup("ring").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(Duration::from_secs(10))
        .expect("sipp got CANCEL, answered 200 + 487 and got the ACK");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_bye_ends_the_call() {
    let mut sipp = Sipp::uas("uas_answer_then_bye.xml", 0, &[]);
    let gw = gateway_to(sipp.port()).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("bye", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    // uas_answer_then_bye sends 180 first.
    let mut m = api.recv().await;
    if m["type"] == "ringing" {
        m = api.recv().await;
    }
    assert_eq!(m["type"], "answered", "{m}");
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    sipp.wait(Duration::from_secs(10))
        .expect("sipp got 200 for its BYE");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_transcoding_opus_only_browsers_get_incompatible_codecs_and_no_invite() {
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &[]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| {
        c.media.codec_policy = gangway::config::CodecPolicySetting::PassthroughOnly;
    })
    .await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Opus).await;
    api.call("opus", "1000", &offer).await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "incompatible_codecs", "{ended}");
    assert!(sipp.is_running(), "no INVITE reached the far end");
    let invites = metric_value(
        &scrape(&gw).await,
        "gangway_sip_requests_total{direction=\"sent\",method=\"INVITE\"}",
    );
    assert_eq!(invites.unwrap_or(0.0), 0.0, "no INVITE was sent");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allow_list_are_refused() {
    let gw = start_sip_gateway(9, "pbx.test", |c| {
        c.sip.trunk.allow = vec![r"^sip:[0-9]{4}@pbx\.test$".into()];
    })
    .await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    for (to, reason) in [
        ("sip:1000@evil.example", "forbidden"),
        ("12345", "forbidden"),
        ("10 00", "not_found"),
    ] {
        api.call("x", to, &offer).await;
        let ended = api.expect("ended").await;
        assert_eq!(ended["reason"], reason, "{to}: {ended}");
    }
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// The trunk answers the INVITE with 401; the gateway retries once with its
/// configured credentials.
async fn gateway_with_credentials(trunk_port: u16, password: &str) -> gangway::Gateway {
    start_sip_gateway(trunk_port, "pbx.test", |c| {
        c.sip.trunk.username = Some("gw-user".into());
        c.sip.trunk.password = Some(password.to_string());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_challenge_is_answered_with_the_trunk_credentials() {
    let mut sipp = Sipp::uas(
        "uas_auth.xml",
        0,
        &[
            "-set", "authuser", "gw-user", "-set", "authpass", "s3cret", "-d", "1500",
        ],
    );
    let gw = gateway_with_credentials(sipp.port(), "s3cret").await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("auth", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    assert_eq!(api.expect("answered").await["call"], "auth");
    // sipp hangs up after its pause.
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    sipp.wait(Duration::from_secs(10))
        .expect("sipp verified our Authorization");
    assert!(
        sipp.messages().contains("Authorization: Digest"),
        "credentials were sent"
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_trunk_password_fails_cleanly() {
    let mut sipp = Sipp::uas(
        "uas_auth.xml",
        0,
        &["-set", "authuser", "gw-user", "-set", "authpass", "s3cret"],
    );
    let gw = gateway_with_credentials(sipp.port(), "wrong").await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("badauth", "1000", &offer).await;
    api.expect("answer").await;
    let ended = api.expect("ended").await;
    // This trunk refuses bad credentials with 403 (others re-challenge: auth_failed).
    assert_eq!(ended["reason"], "rejected", "{ended}");
    assert_eq!(ended["code"], 403);
    // sipp's scenario itself fails (it waited for a good INVITE); the gateway sent one retry only.
    let _ = sipp.wait(Duration::from_secs(15));
    let invites = sipp.messages().matches("INVITE sip:1000@pbx.test").count();
    assert_eq!(invites, 2, "one INVITE, one authenticated retry, no more");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_far_end_ends_the_call_with_media_timeout() {
    // sipp answers but sends no RTP, as a PBX that vanished would.
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &[]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| c.media.timeout_secs = 2).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("quiet", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    api.expect("answered").await;
    let answered_at = Instant::now();
    let ended = api.expect("ended").await;
    let after = answered_at.elapsed();
    assert_eq!(ended["reason"], "media_timeout", "{ended}");
    assert!(
        after >= Duration::from_millis(1500),
        "ended too early: {after:?}"
    );
    sipp.wait(Duration::from_secs(10))
        .expect("sipp got our BYE");
    assert_eq!(
        scrape_metric(&gw, "gangway_media_timeouts_total").await,
        1.0
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flowing_both_ways_never_times_out() {
    // Negative control: with audio both ways the same 1 s timeout never fires.
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| c.media.timeout_secs = 1).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("talking", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    api.expect("answered").await;
    let report = client
        .echo_exchange(9, 150, Duration::from_millis(200))
        .await;
    assert!(report.echoed >= 130, "{report:?}");
    api.hangup("talking").await;
    let ended = api.expect("ended").await;
    assert_eq!(
        ended["reason"], "hangup",
        "3 s of audio did not time out: {ended}"
    );
    sipp.wait(Duration::from_secs(10))
        .expect("sipp got our BYE");
    assert_eq!(
        scrape_metric(&gw, "gangway_media_timeouts_total").await,
        0.0
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// With one RTP port pair, a second bridged call is refused with
/// `no_capacity` (not `invalid_sdp`) while the first goes on, and nothing
/// leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_rtp_ports_is_no_capacity_and_the_first_call_goes_on() {
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| {
        c.sip.rtp_port_min += c.sip.rtp_port_min % 2;
        c.sip.rtp_port_max = c.sip.rtp_port_min + 1;
    })
    .await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut first, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("first", "1000", &offer).await;
    let answer = api.expect("answer").await;
    first.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        first.connect(Duration::from_secs(10)).await,
        "first connects"
    );
    assert_eq!(api.expect("answered").await["call"], "first");

    let (_second, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("second", "1001", &offer).await;
    let error = api.expect("error").await;
    assert_eq!(
        (error["call"].as_str(), error["code"].as_str()),
        (Some("second"), Some("no_capacity")),
        "{error}"
    );
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["call"].as_str(), ended["reason"].as_str()),
        (Some("second"), Some("failed")),
        "{ended}"
    );
    assert_eq!(ended["code"], Value::Null, "{ended}");
    let metrics = scrape(&gw).await;
    assert_eq!(
        metric_value(&metrics, "gangway_rtp_port_exhausted_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "gangway_api_errors_total{code=\"no_capacity\"}"),
        Some(1.0)
    );

    // The first call still carries audio both ways through sipp's echo.
    let report = first.echo_exchange(1, 50, Duration::from_millis(500)).await;
    assert!(report.echoed >= 45, "first call still bridged: {report:?}");
    api.hangup("first").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(Duration::from_secs(10))
        .expect("sipp saw our BYE");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

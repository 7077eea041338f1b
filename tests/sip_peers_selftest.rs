//! Self-tests of the SIP peer harness (`support/sip_peers.rs`), without the
//! gateway: baresip calls baresip with a different tone each way and both
//! recordings are checked frame by frame; every sipp UAS scenario in
//! `tests/sipp/` is driven by a sipp UAC, and some by baresip.
//!
//! The peers must be installed (`scripts/deps.sh test`); a missing one fails
//! the test, it is never skipped.

use std::thread::sleep;
use std::time::{Duration, Instant};

use gangway_tests::audio::tone_coverage;
use gangway_tests::sip_peers::{Baresip, BaresipOptions, Sipp, EARLY_MEDIA_TONE_HZ};

const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const SIPP_TIMEOUT: Duration = Duration::from_secs(15);

fn coverage(b: &Baresip, hz: f64) -> f64 {
    let (samples, rate) = b.recorded_audio();
    tone_coverage(&samples, rate, hz)
}

/// alice (1000 Hz) calls bob (440 Hz, auto-answer), they talk for `talk`,
/// alice hangs up; each recording must hold the other's tone (>= 0.9 of the
/// 20 ms frames) and not its own (< 0.1, the negative control).
fn two_way_call(alice_codecs: &[&str], bob_codecs: &[&str], talk: Duration) -> (Baresip, Baresip) {
    let bob = Baresip::start(BaresipOptions {
        user: "bob",
        tone_hz: 440.0,
        codecs: bob_codecs,
        ..Default::default()
    });
    let alice = Baresip::start(BaresipOptions {
        user: "alice",
        tone_hz: 1000.0,
        codecs: alice_codecs,
        ..Default::default()
    });

    alice.dial(&bob.sip_uri()).unwrap();
    let established = alice
        .wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)
        .unwrap();
    assert_eq!(
        established["peeruri"].as_str(),
        Some(bob.sip_uri().as_str()),
        "{established}"
    );
    let incoming = bob
        .wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)
        .unwrap();
    assert_eq!(
        incoming["direction"].as_str(),
        Some("incoming"),
        "{incoming}"
    );

    sleep(talk);
    alice.hangup().unwrap();
    alice
        .wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)
        .unwrap();
    let closed = bob
        .wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)
        .unwrap();
    println!("bob's call closed: {}", closed["param"]);

    let (bob_heard, rate) = bob.recorded_audio();
    let (alice_heard, alice_rate) = alice.recorded_audio();
    let seconds = |n: usize, r: u32| n as f64 / f64::from(r);
    let (bob_s, alice_s) = (
        seconds(bob_heard.len(), rate),
        seconds(alice_heard.len(), alice_rate),
    );
    println!("bob recorded {bob_s:.2} s at {rate} Hz, alice {alice_s:.2} s at {alice_rate} Hz");
    let min = talk.as_secs_f64() - 1.0;
    assert!(
        bob_s >= min && alice_s >= min,
        "recordings shorter than {min} s"
    );

    let bob_1000 = tone_coverage(&bob_heard, rate, 1000.0);
    let bob_440 = tone_coverage(&bob_heard, rate, 440.0);
    let alice_440 = tone_coverage(&alice_heard, alice_rate, 440.0);
    let alice_1000 = tone_coverage(&alice_heard, alice_rate, 1000.0);
    println!(
        "bob heard 1000 Hz {bob_1000:.3} (440 Hz {bob_440:.3}); \
         alice heard 440 Hz {alice_440:.3} (1000 Hz {alice_1000:.3})"
    );
    assert!(
        bob_1000 >= 0.9,
        "bob heard alice's 1000 Hz in {bob_1000:.3} of frames"
    );
    assert!(
        alice_440 >= 0.9,
        "alice heard bob's 440 Hz in {alice_440:.3} of frames"
    );
    assert!(bob_440 < 0.1, "bob heard 440 Hz in {bob_440:.3} of frames");
    assert!(
        alice_1000 < 0.1,
        "alice heard 1000 Hz in {alice_1000:.3} of frames"
    );
    (alice, bob)
}

#[test]
fn baresip_calls_baresip_with_two_way_audio() {
    let (alice, bob) = two_way_call(&["PCMU"], &["PCMU"], Duration::from_secs(6));
    assert!(alice.log().contains("Set audio encoder: PCMU"));
    assert!(bob.log().contains("Set audio encoder: PCMU"));
}

/// The `codecs` option: alice offers PCMA only, bob accepts either.
#[test]
fn baresip_negotiates_pcma() {
    let (alice, bob) = two_way_call(&["PCMA"], &["PCMU", "PCMA"], Duration::from_secs(3));
    assert!(
        alice.log().contains("Set audio encoder: PCMA"),
        "{}",
        alice.log()
    );
    assert!(
        bob.log().contains("Set audio encoder: PCMA"),
        "{}",
        bob.log()
    );
}

#[test]
fn sipp_uac_gets_busy_from_uas_busy() {
    let mut uas = Sipp::uas("uas_busy.xml", 0, &[]);
    let mut uac = Sipp::uac("uac_expect_busy.xml", uas.addr(), &["-s", "bob"]);
    uac.wait(SIPP_TIMEOUT).unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();
    assert!(uas.messages().contains("SIP/2.0 486 Busy Here"));
}

#[test]
fn sipp_uac_hangs_up_on_uas_answer_wait_bye() {
    let mut uas = Sipp::uas("uas_answer_wait_bye.xml", 0, &[]);
    let mut uac = Sipp::uac("uac_simple.xml", uas.addr(), &["-s", "bob", "-d", "500"]);
    uac.wait(SIPP_TIMEOUT).unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();
    let trace = uas.messages();
    assert!(trace.contains(&format!("m=audio {} RTP/AVP 0", uas.media_port())));
    assert!(trace.contains("BYE sip:"));
}

#[test]
fn sipp_uas_answer_then_bye_hangs_up_itself() {
    let mut uas = Sipp::uas("uas_answer_then_bye.xml", 0, &["-d", "500"]);
    let mut uac = Sipp::uac("uac_wait_bye.xml", uas.addr(), &["-s", "bob"]);
    uac.wait(SIPP_TIMEOUT).unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();
}

#[test]
fn sipp_uas_no_answer_takes_a_cancel() {
    let mut uas = Sipp::uas("uas_no_answer.xml", 0, &[]);
    let mut uac = Sipp::uac("uac_cancel.xml", uas.addr(), &["-s", "bob", "-d", "300"]);
    uac.wait(SIPP_TIMEOUT).unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();
    assert!(uas.messages().contains("SIP/2.0 487 Request Terminated"));
}

#[test]
fn sipp_uas_auth_accepts_the_right_password_only() {
    let creds = ["-set", "authuser", "alice", "-set", "authpass", "s3cret"];
    let mut uas = Sipp::uas("uas_auth.xml", 0, &[&creds[..], &["-d", "200"]].concat());
    let mut uac = Sipp::uac(
        "uac_auth.xml",
        uas.addr(),
        &["-s", "bob", "-au", "alice", "-ap", "s3cret"],
    );
    uac.wait(SIPP_TIMEOUT).unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();

    // Negative control: a wrong password gets a 403 and fails the UAS.
    let mut uas = Sipp::uas("uas_auth.xml", 0, &creds);
    let mut uac = Sipp::uac(
        "uac_auth.xml",
        uas.addr(),
        &["-s", "bob", "-au", "alice", "-ap", "wrong"],
    );
    assert!(
        uac.wait(SIPP_TIMEOUT).is_err(),
        "the UAC got in with a wrong password"
    );
    let err = uas
        .wait(SIPP_TIMEOUT)
        .expect_err("the UAS accepted a wrong password");
    assert!(uas.messages().contains("SIP/2.0 403 Forbidden"), "{err}");
}

/// A real UA against the UAS scenarios: busy, and an answered call whose
/// media sipp echoes (`-rtp_echo`), so baresip must hear its own tone.
#[test]
fn baresip_calls_sipp_uas_scenarios() {
    let alice = Baresip::start(BaresipOptions {
        user: "alice",
        tone_hz: 1000.0,
        codecs: &["PCMU"],
        ..Default::default()
    });

    let mut busy = Sipp::uas("uas_busy.xml", 0, &[]);
    alice.dial(&busy.sip_uri("bob")).unwrap();
    let closed = alice
        .wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)
        .unwrap();
    println!("busy: {}", closed["param"]);
    assert!(
        closed["param"].as_str().unwrap_or("").contains("486"),
        "{closed}"
    );
    busy.wait(SIPP_TIMEOUT).unwrap();

    let mut echo = Sipp::uas("uas_answer_then_bye.xml", 0, &["-rtp_echo", "-d", "3000"]);
    let start = Instant::now();
    alice.dial(&echo.sip_uri("bob")).unwrap();
    alice
        .wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)
        .unwrap();
    alice
        .wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)
        .unwrap();
    echo.wait(SIPP_TIMEOUT).unwrap();
    let echoed = coverage(&alice, 1000.0);
    let other = coverage(&alice, 440.0);
    println!(
        "echo call {:.1} s: alice heard her 1000 Hz in {echoed:.3} of frames (440 Hz {other:.3})",
        start.elapsed().as_secs_f64()
    );
    assert!(echoed >= 0.9, "echoed 1000 Hz coverage {echoed:.3}");
    assert!(other < 0.1, "440 Hz coverage {other:.3}");
}

/// Early media: sipp answers 183 with SDP and plays a PCMU tone pcap for 3 s
/// before the 200; baresip must record that tone.
#[test]
fn baresip_hears_sipp_early_media() {
    let alice = Baresip::start(BaresipOptions {
        user: "alice",
        tone_hz: 1000.0,
        codecs: &["PCMU"],
        ..Default::default()
    });
    let mut uas = Sipp::uas("uas_early_media.xml", 0, &["-d", "3000"]);
    alice.dial(&uas.sip_uri("bob")).unwrap();
    alice
        .wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)
        .unwrap();
    alice.hangup().unwrap();
    alice
        .wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)
        .unwrap();
    uas.wait(SIPP_TIMEOUT).unwrap();
    let (samples, rate) = alice.recorded_audio();
    let early = tone_coverage(&samples, rate, EARLY_MEDIA_TONE_HZ);
    let own = tone_coverage(&samples, rate, 1000.0);
    println!(
        "early media: {:.2} s recorded, {EARLY_MEDIA_TONE_HZ} Hz in {early:.3} of frames \
         (1000 Hz {own:.3})",
        samples.len() as f64 / f64::from(rate)
    );
    assert!(early >= 0.9, "early media tone coverage {early:.3}");
    assert!(own < 0.1, "1000 Hz coverage {own:.3}");
}

/// The `register` option: baresip registers with digest auth (to a sipp
/// registrar standing in for kamailio).
#[test]
fn baresip_registers_with_digest_auth() {
    let mut registrar = Sipp::uas(
        "uas_register.xml",
        0,
        &["-set", "authuser", "carol", "-set", "authpass", "pw123"],
    );
    let registrar_uri = format!("sip:127.0.0.1:{}", registrar.port());
    let carol = Baresip::start(BaresipOptions {
        user: "carol",
        tone_hz: 440.0,
        codecs: &["PCMU", "PCMA"],
        register: Some((&registrar_uri, "pw123")),
        ..Default::default()
    });
    assert_eq!(
        carol.aor(),
        format!("sip:carol@127.0.0.1:{}", registrar.port())
    );
    carol.wait_registered(SIGNALING_TIMEOUT).unwrap();
    println!("reginfo: {:?}", carol.command("reginfo", "").unwrap());
    registrar.wait(SIPP_TIMEOUT).unwrap();
}

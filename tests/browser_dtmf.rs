//! DTMF from a real SIP phone to a real browser: baresip (PCMU, playing
//! 440 Hz) sends the digits 5 then 9 as RFC 4733 telephone events; the
//! gateway relays them as telephone-event on the browser's stream (48 kHz
//! for an Opus browser, whose audio it transcodes; 8 kHz for a PCMU one,
//! passed through) and headless Chromium plays them as tones (its NetEq
//! generates DTMF from received events). The browser's recording must hold
//! each digit's pair of frequencies (770 + 1336 Hz for 5, 852 + 1477 Hz for
//! 9) after that digit was sent, and not before it, not the other digit's
//! pair, not the pair of a digit never sent (1), and baresip's 440 Hz must
//! come back once the digits are over. A digit a PBX (sipp) sends in SIP
//! INFO is synthesized as an event on the browser's stream and heard too.
//!
//! Needs Debian's `chromium`, `chromium-driver`, `baresip` and `sip-tester`; without them
//! the tests fail (they never skip). They run one at a time.

use std::time::{Duration, Instant};

use gangway_tests::audio::{dtmf_frames, tone_coverage};
use gangway_tests::browser_call::{
    launch_browser, pretty, recording_or_panic, run_script, serial, Recording, CALL_SCRIPT,
};
use gangway_tests::gateway::{assert_no_leftovers, start_sip_gateway};
use gangway_tests::sip_peers::{Baresip, BaresipOptions};
use serde_json::json;

const BARESIP_TONE_HZ: f64 = 440.0;
/// Audio left to settle after the answer before the first digit.
const SETTLE_MS: u64 = 1_500;
/// From sending one digit to the next (baresip's digit lasts 180 ms).
const DIGIT_MS: u64 = 1_500;
/// Least frames (20 ms) in which a digit's pair must sound: 120 ms of 180.
const MIN_DIGIT_FRAMES: usize = 6;
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks the recording's current position under a name.
const MARK_SCRIPT: &str = r#"
const [name] = arguments;
const done = arguments[arguments.length - 1];
mark(name);
log(name);
done({});
"#;

/// Hangs up the call placed by `CALL_SCRIPT` and returns the recording.
const HANGUP_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  S.stopRecording();
  S.lastStats = await stats();
  mark('hangup');
  S.call.hangup();
  await withTimeout(S.ended, 5000, "'ended' after hangup");
  return await S.finish();
})().then(done, (e) => S.fail(e).then(done));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_digits_sound_in_an_opus_browser() {
    phone_digits_sound_in_the_browser("opus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_digits_sound_in_a_pcmu_browser() {
    phone_digits_sound_in_the_browser("PCMU").await;
}

/// Frames of `samples` (20 ms each) in which `digit`'s pair sounds.
fn hits(rec: &Recording, samples: &[f32], digit: char) -> usize {
    dtmf_frames(samples, rec.rate, digit)
        .iter()
        .filter(|h| **h)
        .count()
}

/// One character per 20 ms frame: the digit among `digits` that sounds, or `.`.
fn timeline(rec: &Recording, samples: &[f32], digits: &[char]) -> String {
    let per_digit: Vec<Vec<bool>> = digits
        .iter()
        .map(|d| dtmf_frames(samples, rec.rate, *d))
        .collect();
    (0..per_digit[0].len())
        .map(|i| {
            digits
                .iter()
                .zip(&per_digit)
                .find(|(_, f)| f[i])
                .map_or('.', |(d, _)| *d)
        })
        .collect()
}

async fn phone_digits_sound_in_the_browser(codec: &'static str) {
    let t = format!("baresip DTMF -> {codec} browser");
    let _serial = serial().await;
    let started = Instant::now();
    let bob = tokio::task::spawn_blocking(|| {
        Baresip::start(BaresipOptions {
            user: "bob",
            tone_hz: BARESIP_TONE_HZ,
            codecs: &["PCMU"],
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let gw = start_sip_gateway(bob.sip_addr().port(), "127.0.0.1", |_| {}).await;
    let page = format!("http://{}/", gw.http_addr());

    let (bob, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = launch_browser(&page).and_then(|(browser, _wav)| {
            run_script(
                &browser,
                CALL_SCRIPT,
                json!({ "to": "bob", "codec": codec, "holdMs": 0, "hangup": false }),
            )?;
            bob.wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)?;
            std::thread::sleep(Duration::from_millis(SETTLE_MS));
            for digit in ["5", "9"] {
                run_script(&browser, MARK_SCRIPT, json!(format!("digit{digit}")))?;
                bob.command("sndcode", digit)?;
                std::thread::sleep(Duration::from_millis(DIGIT_MS));
            }
            run_script(&browser, HANGUP_SCRIPT, json!(null))
        });
        (bob, outcome)
    })
    .await
    .expect("browser task panicked");
    let rec = recording_or_panic(&t, outcome, &bob);
    println!("[{t}] browser events: {}", rec.events());
    println!("[{t}] marks: {:?}", rec.marks);
    let negotiated = rec.result["codec"].as_str().unwrap_or("");
    assert!(
        negotiated.eq_ignore_ascii_case(&format!("audio/{codec}")),
        "[{t}] browser's inbound codec {negotiated:?}"
    );

    let from = rec.mark("answered") + rec.ms(500);
    let (d5, d9, stop) = (rec.mark("digit5"), rec.mark("digit9"), rec.mark("stop"));
    let before = rec.window(from, d5);
    let after5 = rec.window(d5, d9);
    let after9 = rec.window(d9, stop);
    let all = rec.window(from, stop);
    println!(
        "[{t}] 20 ms frames from answered + 500 ms (5 at {:.2} s, 9 at {:.2} s):\n{}",
        rec.seconds(d5 - from),
        rec.seconds(d9 - from),
        timeline(&rec, all, &['5', '9', '1'])
    );
    let figures = [
        ("before: 5", hits(&rec, before, '5')),
        ("before: 9", hits(&rec, before, '9')),
        ("after 5 sent: 5", hits(&rec, after5, '5')),
        ("after 5 sent: 9", hits(&rec, after5, '9')),
        ("after 9 sent: 9", hits(&rec, after9, '9')),
        ("after 9 sent: 5", hits(&rec, after9, '5')),
        ("anywhere: 1", hits(&rec, all, '1')),
    ];
    println!("[{t}] frames with the pair: {figures:?}");
    let tone_before = tone_coverage(before, rec.rate, BARESIP_TONE_HZ);
    // baresip's tone again from 500 ms after 9 was sent to the end.
    let tail = rec.window(d9 + rec.ms(500), stop);
    let tone_after = tone_coverage(tail, rec.rate, BARESIP_TONE_HZ);
    println!(
        "[{t}] {BARESIP_TONE_HZ} Hz in {tone_before:.3} of the frames before the digits, \
         {tone_after:.3} after them"
    );

    let stats = pretty(&rec.result["stats"]);
    assert!(
        tone_before >= 0.8,
        "[{t}] the browser did not hear baresip before the digits; stats {stats}"
    );
    assert_eq!(
        figures[0].1 + figures[1].1,
        0,
        "[{t}] no digit before any was sent"
    );
    assert!(
        figures[2].1 >= MIN_DIGIT_FRAMES,
        "[{t}] the browser played 5 in {} frames; stats {stats}",
        figures[2].1
    );
    assert_eq!(figures[3].1, 0, "[{t}] 9 is not 5");
    assert!(
        figures[4].1 >= MIN_DIGIT_FRAMES,
        "[{t}] the browser played 9 in {} frames",
        figures[4].1
    );
    assert_eq!(figures[5].1, 0, "[{t}] 5 played once, not again with 9");
    assert_eq!(figures[6].1, 0, "[{t}] 1 was never sent");
    assert!(
        tone_after >= 0.8,
        "[{t}] baresip's audio came back after the digits in only {tone_after:.3}"
    );

    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::from_secs(1)).await;
    drop(bob);
    println!("[{t}] done in {:.1} s", started.elapsed().as_secs_f64());
}

/// A PBX (sipp, PCMA only, playing 600 Hz) sends the digit 5 in a SIP INFO
/// 2.5 s after the answer: the gateway synthesizes it as a 160 ms RFC 4733
/// event on the Opus browser's stream, which Chromium plays as the tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sip_info_digit_sounds_in_the_browser() {
    const T: &str = "SIP INFO DTMF -> opus browser";
    const PBX_TONE_HZ: f64 = gangway_tests::sip_peers::PCMA_TONE_HZ;
    let _serial = serial().await;
    let sipp = tokio::task::spawn_blocking(|| {
        gangway_tests::sip_peers::Sipp::uas("uas_answer_play_info_dtmf.xml", 0, &[])
    })
    .await
    .unwrap();
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let page = format!("http://{}/", gw.http_addr());
    let outcome = tokio::task::spawn_blocking(move || {
        let (browser, _wav) = launch_browser(&page)?;
        run_script(
            &browser,
            CALL_SCRIPT,
            json!({ "to": "1000", "codec": "opus", "holdMs": 4_500, "hangup": true }),
        )
    })
    .await
    .expect("browser task panicked");
    let mut sipp = sipp;
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => {
            let _ = sipp.wait(Duration::ZERO);
            panic!(
                "[{T}] browser side failed: {e}\n--- sipp errors ---\n{}",
                sipp.errors()
            )
        }
    };
    sipp.wait(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("[{T}] sipp sent its INFO and got our BYE: {e}"));
    println!("[{T}] browser events: {}", rec.events());
    let answered = rec.mark("answered");
    let all = rec.window(answered, rec.mark("stop"));
    println!(
        "[{T}] 20 ms frames from answered (INFO sent 2.5 s after the ACK):\n{}",
        timeline(&rec, all, &['5', '9', '1'])
    );
    // The INFO leaves sipp 2.5 s after the ACK: nothing before 2 s.
    let before = rec.window(answered + rec.ms(500), answered + rec.ms(2_000));
    let after = rec.window(answered + rec.ms(2_000), rec.mark("stop"));
    let figures = [
        ("before: 5", hits(&rec, before, '5')),
        ("after: 5", hits(&rec, after, '5')),
        ("after: 9", hits(&rec, after, '9')),
        ("anywhere: 1", hits(&rec, all, '1')),
    ];
    let tone_before = tone_coverage(before, rec.rate, PBX_TONE_HZ);
    println!(
        "[{T}] frames with the pair: {figures:?}; {PBX_TONE_HZ} Hz before in {tone_before:.3}"
    );
    assert!(
        tone_before >= 0.8,
        "[{T}] the browser did not hear the PBX's tone"
    );
    assert_eq!(figures[0].1, 0, "[{T}] no digit before the INFO");
    assert!(
        figures[1].1 >= MIN_DIGIT_FRAMES,
        "[{T}] the browser played 5 in {} frames; stats {}",
        figures[1].1,
        pretty(&rec.result["stats"])
    );
    assert_eq!(figures[2].1 + figures[3].1, 0, "[{T}] only the digit sent");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::from_secs(1)).await;
}

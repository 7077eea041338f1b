//! One call of speech each way, through the gateway or through rtpengine:
//! the browser side sends a talker as Chromium's Opus, the phone side the
//! same talker as µ-law, at once; each side keeps what it hears, decoded as
//! that side would play it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::bencode::Value;
use crate::plain_calls::{callee_sdp, caller_sdp};
use crate::rtpengine::{audio_port, RtpEngine};
use crate::speech::{
    answered_bitrate, browser_opus_at, opus_track, pcmu_frames, pcmu_track, Talker,
};
use crate::speech_phone::{play_and_keep, Kept, SpeechPhone, Stream};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};

/// What each side heard, 8 kHz, and how many 20 ms frames never came.
pub struct Heard {
    /// Browser → phone: µ-law as the phone received it.
    pub at_phone: Vec<i16>,
    pub missing_at_phone: usize,
    /// Phone → browser: Opus as the browser received it, decoded at 8 kHz.
    pub at_browser: Vec<i16>,
    pub missing_at_browser: usize,
}

/// After the last frame, how long each side keeps listening.
const LINGER: Duration = Duration::from_millis(1500);
const PHONE: Stream = Stream {
    pt: 0,
    step: 160,
    ssrc: 0x5eec_0001,
};

/// Places a call from a str0m browser through the gateway at `http` to
/// `phone` (its SIP trunk), then plays `talker` both ways, the phone's
/// packets losing `loss` on the way to the gateway.
pub async fn through_gangway(
    http: SocketAddr,
    phone: &mut SpeechPhone,
    talker: &Talker,
    loss: f64,
) -> Heard {
    let to_browser = pcmu_frames(&talker.pcm_8k);
    phone.expect_call();
    let mut api = ApiClient::connect_to(http).await;
    let (mut browser, offer) = RtcClient::new(ClientCodec::Opus).await;
    api.call("speech", "1000", &offer).await;
    let answer = api.expect("answer").await;
    let answer = answer["sdp"].as_str().expect("answer sdp");
    browser.accept_answer(answer);
    let to_phone = browser_opus_at(&talker.pcm_48k, answered_bitrate(answer));
    assert!(
        browser.connect(Duration::from_secs(10)).await,
        "WebRTC leg connects"
    );
    loop {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("answered") => break,
            Some("ended") | Some("error") => panic!("speech call: {m}"),
            _ => {}
        }
    }
    let gateway_rtp = phone
        .peer_rtp(Duration::from_secs(5))
        .await
        .expect("the gateway's INVITE reached the phone");
    let rtp = phone.rtp.clone();
    let phone_side = tokio::spawn(async move {
        play_and_keep(&rtp, gateway_rtp, &to_browser, PHONE, 0, loss, LINGER).await
    });
    let at_browser = browser.stream_frames_keeping(&to_phone, LINGER).await;
    let at_phone = phone_side.await.expect("phone task");
    api.hangup("speech").await;
    let _ = api.expect("ended").await;
    api.close().await;
    heard(&at_phone, &at_browser)
}

/// The same through rtpengine: the caller plain RTP with the browser's
/// Opus, the callee PCMU only (`codec: {transcode: [PCMU], mask: [opus]}`).
pub async fn through_rtpengine(
    engine: &mut RtpEngine,
    call: &str,
    talker: &Talker,
    loss: f64,
) -> Heard {
    let to_browser = pcmu_frames(&talker.pcm_8k);
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let codec = Value::dict(vec![
        ("transcode", Value::list(&["PCMU"])),
        ("mask", Value::list(&["opus"])),
    ]);
    let to_callee = engine
        .offer(
            call,
            &caller_sdp(caller.local_addr().unwrap().port()),
            codec,
        )
        .unwrap_or_else(|e| panic!("rtpengine offer: {e}"));
    let to_caller = engine
        .answer(call, &callee_sdp(callee.local_addr().unwrap().port()))
        .unwrap_or_else(|e| panic!("rtpengine answer: {e}"));
    let opus_pt = opus_pt(&to_caller).expect("rtpengine answered the caller with Opus");
    let to_phone = browser_opus_at(&talker.pcm_48k, answered_bitrate(&to_caller));
    let caller_to: SocketAddr = ([127, 0, 0, 1], audio_port(&to_caller).unwrap()).into();
    let callee_to: SocketAddr = ([127, 0, 0, 1], audio_port(&to_callee).unwrap()).into();
    let phone_side = tokio::spawn(async move {
        play_and_keep(&callee, callee_to, &to_browser, PHONE, 0, loss, LINGER).await
    });
    let browser = Stream {
        pt: 111,
        step: 960,
        ssrc: 0x5eec_0002,
    };
    let at_browser =
        play_and_keep(&caller, caller_to, &to_phone, browser, opus_pt, 0.0, LINGER).await;
    let at_phone = phone_side.await.expect("callee task");
    engine.delete(call);
    let at_browser: Vec<(u64, Vec<u8>)> = match at_browser.first() {
        Some(&(_, first, _)) => at_browser
            .into_iter()
            .map(|(_, ts, p)| (u64::from(ts.wrapping_sub(first)), p))
            .collect(),
        None => Vec::new(),
    };
    heard(&at_phone, &at_browser)
}

fn heard(at_phone: &[Kept], at_browser: &[(u64, Vec<u8>)]) -> Heard {
    let pcmu: Vec<(u16, Vec<u8>)> = at_phone.iter().map(|(s, _, p)| (*s, p.clone())).collect();
    let (at_phone, missing_at_phone) = pcmu_track(&pcmu);
    let (at_browser, missing_at_browser) = opus_track(at_browser);
    Heard {
        at_phone,
        missing_at_phone,
        at_browser,
        missing_at_browser,
    }
}

/// The payload type an SDP gives Opus.
fn opus_pt(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .to_ascii_lowercase()
            .starts_with("opus/")
            .then(|| pt.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_opus_payload_type() {
        let sdp = "m=audio 1 RTP/AVP 96 0\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 opus/48000/2\r\n";
        assert_eq!(super::opus_pt(sdp), Some(96));
        assert_eq!(super::opus_pt("a=rtpmap:0 PCMU/8000\r\n"), None);
    }
}

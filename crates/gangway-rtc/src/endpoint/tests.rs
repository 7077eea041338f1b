use super::*;

/// The audio part of an offer as Chromium makes it (trimmed of video and
/// extensions that play no part here).
const CHROME_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Hx8q\r\n\
a=ice-pwd:3Yy0kq9ZqBkWJ7W2QOZz2T9A\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 9B:4E:8A:6E:AF:BC:9F:4D:0A:34:6E:1D:9C:1F:43:3A:7A:2B:5C:7D:6E:8F:90:A1:B2:C3:D4:E5:F6:07:18:29\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:- 1b2c3d4e-0000-4000-8000-000000000001\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1001 cname:abcdefgh\r\n";

fn endpoint(codecs: Vec<AudioCodec>) -> Endpoint {
    Endpoint::new(EndpointConfig {
        candidate_addr: "203.0.113.7:40000".parse().unwrap(),
        codecs,
    })
    .unwrap()
}

fn all() -> Vec<AudioCodec> {
    vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma]
}

/// The Chrome offer reduced to the given payload types (m-line and attributes).
fn only_payloads(pts: &[&str]) -> String {
    let keeps = |l: &str| {
        let Some(rest) = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .find_map(|p| l.strip_prefix(p))
        else {
            return true;
        };
        pts.contains(&rest.split_whitespace().next().unwrap_or(""))
    };
    CHROME_OFFER
        .replace("111 63 9 0 8 13 110 126", &pts.join(" "))
        .lines()
        .filter(|l| keeps(l))
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

/// The payload names in the answer's audio m-line, in order.
fn answered_codecs(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect()
}

#[test]
fn answers_a_chrome_offer_with_audio_codecs_telephone_event_and_our_candidate() {
    let mut ep = endpoint(all());
    let answer = ep
        .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
        .unwrap();
    let codecs = answered_codecs(&answer);
    for want in [
        "opus/48000/2",
        "PCMU/8000",
        "PCMA/8000",
        "telephone-event/48000",
        "telephone-event/8000",
    ] {
        assert!(
            codecs.iter().any(|c| c == want),
            "{want} missing from {codecs:?}"
        );
    }
    assert!(!codecs.iter().any(|c| c.starts_with("G722")), "{codecs:?}");
    assert!(answer.contains("a=ice-lite"), "ICE-lite is announced");
    assert!(answer.contains("a=rtcp-mux"));
    assert!(
        answer.contains("203.0.113.7 40000 typ host"),
        "the advertised address is the candidate:\n{answer}"
    );
    assert_eq!(ep.peer_count(), 1);
}

/// Chromium's audio header extensions, as its offers list them.
const CHROME_EXTMAPS: &str = "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";

#[test]
fn the_answer_keeps_mid_and_audio_level_but_no_congestion_control_extensions() {
    let offer = CHROME_OFFER.replace("a=mid:0\r\n", &format!("a=mid:0\r\n{CHROME_EXTMAPS}"));
    let mut ep = endpoint(all());
    let answer = ep.add_peer(PeerId(1), &offer, &[], Instant::now()).unwrap();
    let extmaps: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=extmap:"))
        .collect();
    assert!(
        extmaps.contains(&"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"),
        "BUNDLE needs the MID: {extmaps:?}"
    );
    assert!(
        extmaps.contains(&"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        "{extmaps:?}"
    );
    assert_eq!(extmaps.len(), 2, "only those two: {extmaps:?}");
    assert!(
        !answer.contains("transport-cc") && !answer.contains("transport-wide"),
        "no transport-wide congestion control:\n{answer}"
    );
}

#[test]
fn a_per_peer_restriction_narrows_the_answer_further() {
    let mut ep = endpoint(all());
    let g711 = [AudioCodec::Pcmu, AudioCodec::Pcma];
    let answer = ep
        .add_peer(PeerId(1), CHROME_OFFER, &g711, Instant::now())
        .unwrap();
    let codecs = answered_codecs(&answer);
    assert!(!codecs.iter().any(|c| c.starts_with("opus")), "{codecs:?}");
    assert!(ep.supports(PeerId(1), AudioCodec::Pcmu));
    assert!(ep.supports(PeerId(1), AudioCodec::Pcma));
    assert!(!ep.supports(PeerId(1), AudioCodec::Opus));
    let opus_only = only_payloads(&["111", "110"]);
    assert_eq!(
        ep.add_peer(PeerId(2), &opus_only, &[AudioCodec::Pcmu], Instant::now()),
        Err(SetupError::IncompatibleCodecs),
        "a browser offering only Opus cannot be passed through to G.711"
    );
}

#[test]
fn restricting_codecs_narrows_the_answer() {
    let mut ep = endpoint(vec![AudioCodec::Pcmu]);
    let answer = ep
        .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
        .unwrap();
    let codecs = answered_codecs(&answer);
    assert!(codecs.iter().any(|c| c == "PCMU/8000"), "{codecs:?}");
    assert!(
        !codecs
            .iter()
            .any(|c| c.starts_with("opus") || c.starts_with("PCMA")),
        "{codecs:?}"
    );
}

#[test]
fn bad_offers_are_refused_with_a_reason() {
    let mut ep = endpoint(all());
    let now = Instant::now();
    assert!(matches!(
        ep.add_peer(PeerId(1), "hello", &[], now),
        Err(SetupError::InvalidSdp(_))
    ));
    let g722_only = only_payloads(&["9"]);
    assert_eq!(
        ep.add_peer(PeerId(2), &g722_only, &[], now),
        Err(SetupError::IncompatibleCodecs)
    );
    let video_only = CHROME_OFFER.replace("m=audio", "m=video");
    assert!(ep.add_peer(PeerId(3), &video_only, &[], now).is_err());
    assert_eq!(ep.peer_count(), 0, "refused offers leave nothing behind");
}

#[test]
fn peers_are_unique_and_removable() {
    let mut ep = endpoint(all());
    let now = Instant::now();
    ep.add_peer(PeerId(1), CHROME_OFFER, &[], now).unwrap();
    assert_eq!(
        ep.add_peer(PeerId(1), CHROME_OFFER, &[], now),
        Err(SetupError::DuplicatePeer(PeerId(1)))
    );
    assert!(ep.remove_peer(PeerId(1)));
    assert!(!ep.remove_peer(PeerId(1)));
    assert_eq!(ep.peer_count(), 0);
    assert_eq!(
        ep.add_remote_candidate(PeerId(1), "candidate:1 1 udp 1 127.0.0.1 9 typ host"),
        Err(CandidateError::UnknownPeer)
    );
}

fn ice_ufrag(sdp: &str) -> &str {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag")
}

#[test]
fn a_new_offer_with_new_ice_credentials_restarts_ice() {
    let mut ep = endpoint(all());
    let first = ep
        .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
        .unwrap();
    let restart = CHROME_OFFER
        .replace("o=- 4611731400430051336 2", "o=- 4611731400430051336 3")
        .replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w")
        .replace(
            "a=ice-pwd:3Yy0kq9ZqBkWJ7W2QOZz2T9A",
            "a=ice-pwd:8Kk1pq0ZrCmXK8X3RPaA3U0B",
        );
    let second = ep.renegotiate(PeerId(1), &restart).unwrap();
    assert_ne!(
        ice_ufrag(&first),
        ice_ufrag(&second),
        "new local credentials answer an ICE restart:\n{second}"
    );
    assert!(second.contains("a=ice-lite"));
    assert!(
        second.contains("203.0.113.7 40000 typ host"),
        "our candidate stays:\n{second}"
    );
    assert_eq!(
        answered_codecs(&first),
        answered_codecs(&second),
        "same codecs as before"
    );
}

#[test]
fn a_refused_renegotiation_leaves_the_peer_usable() {
    let mut ep = endpoint(all());
    ep.add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
        .unwrap();
    assert!(matches!(
        ep.renegotiate(PeerId(1), "hello"),
        Err(SetupError::InvalidSdp(_))
    ));
    let other_mid = CHROME_OFFER
        .replace("a=mid:0", "a=mid:1")
        .replace("a=group:BUNDLE 0", "a=group:BUNDLE 1");
    assert!(matches!(
        ep.renegotiate(PeerId(1), &other_mid),
        Err(SetupError::InvalidSdp(m)) if m.contains("mid")
    ));
    assert!(matches!(
        ep.renegotiate(PeerId(2), CHROME_OFFER),
        Err(SetupError::InvalidSdp(_))
    ));
    assert_eq!(ep.peer_count(), 1);
    let restart = CHROME_OFFER.replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w");
    ep.renegotiate(PeerId(1), &restart)
        .expect("a good offer still works after bad ones");
}

fn opus_fmtp(sdp: &str) -> Vec<&str> {
    let pt = sdp
        .lines()
        .find_map(|l| l.strip_suffix(" opus/48000/2")?.strip_prefix("a=rtpmap:"))
        .expect("an Opus rtpmap");
    let prefix = format!("a=fmtp:{pt} ");
    sdp.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn narrowband_opus_is_asked_for_only_when_wanted_and_kept_on_renegotiation() {
    let mut ep = endpoint(all());
    let now = Instant::now();
    let narrow = AnswerOptions {
        narrowband_opus: true,
    };
    let fullband = ep.add_peer(PeerId(1), CHROME_OFFER, &[], now).unwrap();
    assert!(
        !fullband.contains("maxplaybackrate"),
        "the echo line keeps fullband:\n{fullband}"
    );
    let answer = ep
        .add_peer_with(PeerId(2), CHROME_OFFER, &[AudioCodec::Opus], narrow, now)
        .unwrap();
    let params = opus_fmtp(&answer);
    assert_eq!(params.len(), 1, "one fmtp line:\n{answer}");
    let params: Vec<&str> = params[0].split(';').collect();
    for want in [
        "maxplaybackrate=8000",
        "sprop-maxcapturerate=8000",
        "maxaveragebitrate=24000",
        "useinbandfec=1",
    ] {
        assert_eq!(
            params.iter().filter(|p| **p == want).count(),
            1,
            "{want} once in {params:?}"
        );
    }
    assert!(answer.ends_with("\r\n") && !answer.replace("\r\n", "").contains('\n'));
    str0m::change::SdpAnswer::from_sdp_string(&answer).expect("still valid SDP");
    let restart = CHROME_OFFER.replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w");
    let again = ep.renegotiate(PeerId(2), &restart).unwrap();
    assert_eq!(
        opus_fmtp(&again),
        opus_fmtp(&answer),
        "renegotiation keeps it"
    );
    // A G.711 answer has nothing to narrow.
    let g711 = ep
        .add_peer_with(PeerId(3), CHROME_OFFER, &[AudioCodec::Pcmu], narrow, now)
        .unwrap();
    assert!(!g711.contains("maxplaybackrate") && !g711.contains("opus"));
}

#[test]
fn stray_datagrams_belong_to_no_peer() {
    let mut ep = endpoint(all());
    ep.add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
        .unwrap();
    let source = "198.51.100.1:5000".parse().unwrap();
    assert_eq!(ep.handle_receive(Instant::now(), source, b"garbage"), None);
    assert_eq!(ep.handle_receive(Instant::now(), source, &[]), None);
    // An RTP-looking packet from an unknown source is not accepted either.
    let mut rtp = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 1];
    rtp.extend([0u8; 160]);
    assert_eq!(ep.handle_receive(Instant::now(), source, &rtp), None);
}

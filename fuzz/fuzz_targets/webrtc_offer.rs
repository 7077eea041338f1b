//! A browser's SDP offer through the WebRTC leg, as the media shard takes
//! it: `Endpoint::add_peer` (str0m's parser, our credential checks, the
//! codec choice, the answer), then a renegotiation and a trickled
//! candidate for the peer, then its removal.
//!
//! Input: a first byte of options, then up to three parts split at NUL
//! bytes: the offer, a later offer, a candidate line.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use gangway_rtc::{AnswerOptions, AudioCodec, Endpoint, EndpointConfig, PeerId};
use libfuzzer_sys::fuzz_target;

thread_local! {
    // One endpoint for all inputs, as in the gateway: its DTLS certificate
    // is made once, not per call (nor per input).
    static ENDPOINT: RefCell<Endpoint> = RefCell::new(
        Endpoint::new(EndpointConfig {
            candidate_addr: "192.0.2.1:40000".parse().unwrap(),
            codecs: vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma],
        })
        .expect("an endpoint"),
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.split('\0');
    let offer = parts.next().unwrap_or_default();
    let allowed: &[AudioCodec] = match options & 3 {
        0 => &[],
        1 => &[AudioCodec::Pcmu, AudioCodec::Pcma],
        2 => &[AudioCodec::Opus],
        _ => &[AudioCodec::Pcma],
    };
    let answer = AnswerOptions {
        narrowband_opus: options & 4 != 0,
    };
    let now = Instant::now();
    ENDPOINT.with_borrow_mut(|ep| {
        let id = PeerId(1);
        if ep.add_peer_with(id, offer, allowed, answer, now).is_ok() {
            if let Some(again) = parts.next() {
                let _ = ep.renegotiate(id, again);
            }
            if let Some(candidate) = parts.next() {
                let _ = ep.add_remote_candidate(id, candidate);
            }
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
            assert!(ep.remove_peer(id));
        }
        assert_eq!(ep.peer_count(), 0, "a refused offer leaves nothing behind");
    });
});

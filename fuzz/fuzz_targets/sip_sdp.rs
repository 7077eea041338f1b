//! The SIP side's SDP: a far end's offer or answer read with
//! `parse_answer`, our answer to it, and the RFC 3264 dialog rules
//! (`DialogSdp`: settle, answer a re-offer, hold and resume re-offers).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use gangway_core::sdp::{self, DialogSdp, G711};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: which codecs we offered; the rest: the far end's SDP.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(remote) = std::str::from_utf8(rest) else {
        return;
    };
    let offered: &[G711] = match pick % 3 {
        0 => &[G711::Pcmu, G711::Pcma],
        1 => &[G711::Pcmu],
        _ => &[G711::Pcma],
    };
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let ours = sdp::offer(ip, 40000, offered, 101, 7);
    // Reading the far end's body as an answer to our offer (outbound) ...
    if let Ok(media) = sdp::parse_answer(remote, offered) {
        let mut dialog = DialogSdp::new(ours.clone());
        dialog.settle(remote);
        if let Some(reoffer) = dialog.reoffer(pick & 0x80 != 0) {
            dialog.reoffer_accepted(reoffer, &media);
        }
        let _ = dialog.answer(&media);
    }
    // ... and as an offer we answer (inbound), then as a re-offer.
    if let Ok(offer) = sdp::parse_answer(remote, &[G711::Pcmu, G711::Pcma]) {
        let answer = sdp::answer(ip, 40002, &offer, 9);
        assert!(
            sdp::parse_own(&answer).is_some(),
            "our own answer reads back"
        );
        let mut dialog = DialogSdp::new(answer);
        let _ = dialog.answer(&offer);
    }
    let _ = sdp::parse_own(remote);
});

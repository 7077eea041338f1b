//! Answered calls: hold and resume from either side (RFC 3264), DTMF both
//! ways, renegotiation of the WebRTC leg.

use super::*;
use crate::HoldParty;

fn held(by: HoldParty) -> Out {
    notify("c1", Notification::Held { by })
}

fn resumed(by: HoldParty) -> Out {
    notify("c1", Notification::Resumed { by })
}

const MUTE_TO_SIP: AudioFlow = AudioFlow {
    to_sip: false,
    from_sip: true,
};

const SILENT: AudioFlow = AudioFlow {
    to_sip: false,
    from_sip: false,
};

#[test]
fn browser_holds_and_resumes() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    assert_eq!(
        out,
        vec![sip(SipCommand::Hold {
            sip: sip_leg,
            hold: true
        })]
    );
    // A second request while the first is pending is refused.
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: false,
    });
    let message = "a hold or resume is already in progress";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidState, message)]
    );
    // The PBX answers our sendonly with recvonly: no audio either way.
    let answer = pbx_sdp("10.0.0.5", 20_000, 0, "recvonly");
    let out = h.sip(
        sip_leg,
        SipInput::OfferAccepted {
            sdp: answer,
            hold: true,
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, true, SILENT),
            held(HoldParty::Local),
        ]
    );
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    assert_eq!(
        out,
        vec![refuse(
            Some("c1"),
            Problem::InvalidState,
            "the call is already on hold"
        )]
    );
    h.request(Request::Hold {
        call: id("c1"),
        hold: false,
    });
    let answer = pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv");
    let out = h.sip(
        sip_leg,
        SipInput::OfferAccepted {
            sdp: answer,
            hold: false,
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, true, AudioFlow::BOTH),
            resumed(HoldParty::Local),
        ]
    );
}

#[test]
fn a_refused_hold_leaves_the_call_as_it_was() {
    let mut h = Harness::new();
    let (_, sip_leg) = h.answered_call("c1", "10.0.0.5");
    h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    let out = h.sip(
        sip_leg,
        SipInput::OfferRefused {
            status: 491,
            hold: true,
        },
    );
    let message = "the far end refused the hold (491)";
    assert_eq!(out, vec![refuse(Some("c1"), Problem::HoldFailed, message)]);
    // Not held, nothing pending: another try goes out.
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    assert_eq!(
        out,
        vec![sip(SipCommand::Hold {
            sip: sip_leg,
            hold: true
        })]
    );
}

#[test]
fn far_end_holds_with_inactive_then_resumes_with_a_new_address_and_codec() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let offer = pbx_sdp("10.0.0.5", 20_000, 0, "inactive");
    let out = h.sip(sip_leg, SipInput::RemoteOffer { sdp: offer });
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, true, SILENT),
            held(HoldParty::Remote),
        ]
    );
    // Another re-offer that still holds (sendonly: music on hold) says
    // nothing new to the browser, but the media follows it.
    let offer = pbx_sdp("10.0.0.5", 20_000, 0, "sendonly");
    let out = h.sip(sip_leg, SipInput::RemoteOffer { sdp: offer });
    assert_eq!(
        out,
        vec![connect(
            leg,
            "10.0.0.5",
            20_000,
            G711::Pcmu,
            true,
            MUTE_TO_SIP
        )]
    );
    // Resumed from a media server elsewhere, in A-law.
    let offer = pbx_sdp("10.0.0.9", 30_000, 8, "sendrecv");
    let out = h.sip(sip_leg, SipInput::RemoteOffer { sdp: offer });
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.9", 30_000, G711::Pcma, true, AudioFlow::BOTH),
            resumed(HoldParty::Remote),
        ]
    );
}

#[test]
fn holds_from_both_sides_are_each_their_own() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    let answer = pbx_sdp("10.0.0.5", 20_000, 0, "recvonly");
    h.sip(
        sip_leg,
        SipInput::OfferAccepted {
            sdp: answer,
            hold: true,
        },
    );
    // The far end holds too (c=0.0.0.0, RFC 2543 style), then resumes:
    // the browser's hold stays.
    let offer = pbx_sdp("0.0.0.0", 20_000, 0, "sendrecv");
    let out = h.sip(sip_leg, SipInput::RemoteOffer { sdp: offer });
    assert_eq!(
        out,
        vec![
            connect(leg, "0.0.0.0", 20_000, G711::Pcmu, true, SILENT),
            held(HoldParty::Remote),
        ]
    );
    let offer = pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv");
    let out = h.sip(sip_leg, SipInput::RemoteOffer { sdp: offer });
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, true, MUTE_TO_SIP),
            resumed(HoldParty::Remote),
        ]
    );
}

#[test]
fn hold_needs_an_answered_sip_call() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    h.leg_ready("c1", leg, "sip:1000@pbx.test");
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    let message = "hold and resume need an answered SIP call";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidState, message)]
    );
}

#[test]
fn dtmf_goes_where_the_settings_say() {
    let mut h = Harness::new();
    let (leg, _) = h.answered_call("c1", "10.0.0.5");
    let out = h.request(Request::Dtmf {
        call: id("c1"),
        digits: "12#".into(),
    });
    let digits = "12#".to_string();
    assert_eq!(out, vec![media(MediaCommand::SendDtmf { leg, digits })]);
    let out = h.request(Request::Dtmf {
        call: id("c1"),
        digits: "12x".into(),
    });
    let message = "digits must be 1-32 of 0-9 * # A-D";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidMessage, message)]
    );

    let mut h = Harness::with(Settings {
        dtmf: DtmfRoute::Info,
        ..settings()
    });
    let (_, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = h.request(Request::Dtmf {
        call: id("c1"),
        digits: "5".into(),
    });
    let digits = "5".to_string();
    assert_eq!(
        out,
        vec![sip(SipCommand::DtmfInfo {
            sip: sip_leg,
            digits
        })]
    );
}

#[test]
fn dtmf_from_either_leg_reaches_the_browser() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    // By INFO: the browser hears it as RFC 4733 and is told.
    let out = h.sip(sip_leg, SipInput::Dtmf { digit: '7' });
    assert_eq!(
        out,
        vec![
            media(MediaCommand::PlayDtmf { leg, digit: '7' }),
            notify("c1", Notification::Dtmf { digit: '7' }),
        ]
    );
    // By RFC 4733 on the RTP: the shard plays it; the browser is told.
    let out = h.media(leg, MediaEvent::Dtmf('8'));
    assert_eq!(out, vec![notify("c1", Notification::Dtmf { digit: '8' })]);
    let out = h.media(leg, MediaEvent::DtmfRefused);
    let message = "the far end did not accept telephone-event (RFC 4733)";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::DtmfUnavailable, message)]
    );
}

#[test]
fn an_ice_restart_stays_on_the_webrtc_leg() {
    let mut h = Harness::new();
    let (leg, _) = h.answered_call("c1", "10.0.0.5");
    let out = h.request(Request::Renegotiate {
        call: id("c1"),
        offer: "restart".into(),
    });
    let offer = "restart".to_string();
    assert_eq!(out, vec![media(MediaCommand::Renegotiate { leg, offer })]);
    let out = h.media(
        leg,
        MediaEvent::Renegotiated {
            answer: "a2".into(),
        },
    );
    assert_eq!(
        out,
        vec![notify("c1", Notification::Answer { sdp: "a2".into() })]
    );
    let out = h.media(leg, MediaEvent::RenegotiationFailed("bad ufrag".into()));
    let message = "bad ufrag; the call carries on with its current session";
    assert_eq!(out, vec![refuse(Some("c1"), Problem::InvalidSdp, message)]);
}

#[test]
fn candidates_go_to_the_leg_and_the_end_of_candidates_to_nobody() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let out = h.request(Request::Candidate {
        call: id("c1"),
        candidate: Some("candidate:1".into()),
    });
    let candidate = "candidate:1".to_string();
    assert_eq!(out, vec![media(MediaCommand::Candidate { leg, candidate })]);
    let out = h.request(Request::Candidate {
        call: id("c1"),
        candidate: None,
    });
    assert_eq!(out, vec![]);
}

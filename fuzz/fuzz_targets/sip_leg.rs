//! The SIP leg's handling of what a trunk or PBX sends, above rsipstack's
//! parser: a datagram parsed by rsipstack as the transport does, then the
//! readers our dialogs apply to it. Requests: session timer headers and
//! the 422 decision (INVITE, re-INVITE, UPDATE), Replaces, the SDP offer,
//! DTMF in INFO, REFER's Refer-To, NOTIFY's sipfrag. Responses: the timer
//! headers of a 2xx, the failure a final response becomes, the SDP answer.
#![no_main]

use gangway_core::sdp::{self, G711};
use gangway_sip::fuzzing::{
    info_dtmf_digit, parse_replaces, refer_target, sipfrag_status, timer_headers,
};
use gangway_sip::session_timer::{self, answer_request};
use gangway_sip::{SipFailure, StatusCode};
use libfuzzer_sys::fuzz_target;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, SipMessage};

fn sdp_body(body: &[u8], offered: &[G711]) {
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = sdp::parse_answer(text, offered);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = SipMessage::try_from(data) else {
        return;
    };
    match message {
        SipMessage::Request(req) => {
            let timer = timer_headers(req.headers.iter());
            let _ = answer_request(&timer, 0);
            let _ = answer_request(&timer, 1800);
            match req.method {
                Method::Invite | Method::Update => {
                    if let Some(replaces) = req.header_value("Replaces") {
                        let _ = parse_replaces(&replaces);
                    }
                    sdp_body(&req.body, &[G711::Pcmu, G711::Pcma]);
                }
                Method::Ack => sdp_body(&req.body, &[G711::Pcmu, G711::Pcma]),
                Method::Info => {
                    let content_type = req.headers.iter().find_map(|h| match h {
                        Header::ContentType(v) => Some(v.to_string()),
                        _ => None,
                    });
                    let _ = info_dtmf_digit(content_type.as_deref(), &req.body);
                }
                Method::Refer => {
                    if let Some(to) = req.header_value("Refer-To") {
                        let _ = refer_target(&to);
                    }
                }
                Method::Notify => {
                    let _ = req.header_value("Event");
                    let _ = req.header_value("Subscription-State");
                    let _ = sipfrag_status(&req.body);
                }
                _ => {}
            }
        }
        SipMessage::Response(resp) => {
            let code = resp.status_code.code();
            let Some(status) = StatusCode::new(code) else {
                return;
            };
            if status.is_success() {
                let _ = session_timer::on_response(&timer_headers(resp.headers.iter()));
            }
            if !status.is_provisional() && !status.is_success() {
                let failure = SipFailure::response(status, resp.wire_reason.clone());
                let _ = (failure.reason(), failure.status(), failure.challenge());
                let _ = resp.header_value("WWW-Authenticate");
                let _ = resp.header_value("Proxy-Authenticate");
                let _ = resp.header_value("Min-SE");
            }
            sdp_body(&resp.body, &[G711::Pcmu]);
        }
    }
});

//! The browser's requests inside a call: BYE, CANCEL, re-INVITE and
//! UPDATE (hold, resume, session refresh), INFO (DTMF) and REFER (blind
//! or attended transfer).

use gangway_core::calls::Request;
use gangway_core::valid_dtmf;
use rsipstack::sip::prelude::HeadersExt;

use super::wire::{self, Incoming};
use super::{FrontOutput, SipWsFront};
use crate::CallId;

impl SipWsFront {
    /// The dialog a request names (by Call-ID), or a 481 to it.
    fn dialog_of(&mut self, req: &Incoming) -> Option<CallId> {
        let call = CallId::new(req.reply.call_id.clone())
            .ok()
            .filter(|c| self.dialogs.contains_key(c));
        if call.is_none() {
            self.out.push_back(FrontOutput::Rejected("no_dialog"));
            self.reply(req, 481, &[]);
        }
        call
    }

    pub(super) fn on_cancel(&mut self, req: Incoming) {
        let Some(call) = self.dialog_of(&req) else {
            return;
        };
        self.reply(&req, 200, &[]);
        if self.dialogs[&call].invite.is_some() {
            // The 487 follows when the core has ended the call.
            self.out
                .push_back(FrontOutput::Core(Request::Hangup { call }));
        }
    }

    pub(super) fn on_bye(&mut self, req: Incoming) {
        let Some(call) = self.dialog_of(&req) else {
            return;
        };
        self.reply(&req, 200, &[]);
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.gone = true;
        }
        self.out
            .push_back(FrontOutput::Core(Request::Hangup { call }));
    }

    /// A re-INVITE or UPDATE. With an offer it renegotiates the WebRTC leg
    /// (the 200 carries the answer) and holds or resumes the SIP leg when
    /// its direction says so; without one it is a session refresh.
    pub(super) fn on_reoffer(&mut self, req: Incoming) {
        let Some(call) = self.dialog_of(&req) else {
            return;
        };
        let d = &self.dialogs[&call];
        if d.reoffer.is_some() {
            return self.reply(&req, 491, &[]);
        }
        let Some((content_type, offer)) = wire::body_of(&req.request) else {
            let mut extra = Vec::new();
            if let Some(se) = d.session_expires {
                extra.push(("Session-Expires", format!("{se};refresher=uac")));
                extra.push(("Require", "timer".to_string()));
            }
            if req.method == "UPDATE" {
                self.refreshed(&call);
                return self.reply(&req, 200, &extra);
            }
            // A re-INVITE without an offer wants ours, which only the
            // browser can make here.
            self.out
                .push_back(FrontOutput::Rejected("offerless_reinvite"));
            return self.reply(&req, 488, &[]);
        };
        if content_type != "application/sdp" {
            return self.reply(&req, 415, &[("Accept", "application/sdp".into())]);
        }
        if self.dialogs[&call].far_hold.offering() {
            // Our own offer is out (RFC 3261 §14.2).
            return self.reply(&req, 491, &[]);
        }
        let hold = wire::offer_holds(&offer);
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        d.reoffer = Some((offer.clone(), req.reply.clone()));
        if d.held != hold {
            // Only a change of direction reaches the PBX; an ICE restart
            // or a refresh with an offer stays on the WebRTC leg.
            d.held = hold;
            self.out.push_back(FrontOutput::Core(Request::Hold {
                call: call.clone(),
                hold,
            }));
        }
        self.out
            .push_back(FrontOutput::Core(Request::Renegotiate { call, offer }));
    }

    /// INFO: DTMF as `application/dtmf-relay` (`Signal=5`) or
    /// `application/dtmf` (the digit).
    pub(super) fn on_info(&mut self, req: Incoming) {
        let Some(call) = self.dialog_of(&req) else {
            return;
        };
        let digits = match wire::body_of(&req.request) {
            Some((t, body)) if t == "application/dtmf-relay" => body.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("signal")
                    .then(|| v.trim().to_string())
            }),
            Some((t, body)) if t == "application/dtmf" => Some(body.trim().to_string()),
            _ => {
                self.out.push_back(FrontOutput::Rejected("info"));
                return self.reply(
                    &req,
                    415,
                    &[("Accept", "application/dtmf-relay, application/dtmf".into())],
                );
            }
        };
        let digits = digits.map(|d| d.to_ascii_uppercase());
        match digits.filter(|d| valid_dtmf(d)) {
            Some(digits) => {
                self.reply(&req, 200, &[]);
                self.out
                    .push_back(FrontOutput::Core(Request::Dtmf { call, digits }));
            }
            None => {
                self.out.push_back(FrontOutput::Rejected("info"));
                self.reply(&req, 400, &[]);
            }
        }
    }

    /// REFER: a blind transfer to its `Refer-To`, or an attended one when
    /// that names another of this flow's calls with `Replaces`.
    pub(super) fn on_refer(&mut self, req: Incoming) {
        let Some(call) = self.dialog_of(&req) else {
            return;
        };
        let Some(refer_to) = req.request.header_value("Refer-To") else {
            self.out.push_back(FrontOutput::Rejected("refer"));
            return self.reply(&req, 400, &[]);
        };
        let uri = wire::uri_of(&refer_to);
        let (target, headers) = uri.split_once('?').unwrap_or((&uri, ""));
        let replaces = headers
            .split('&')
            .find_map(|h| h.strip_prefix("Replaces="))
            .map(|r| {
                percent_decode(r)
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .and_then(|id| CallId::new(id).ok())
            .filter(|id| self.dialogs.contains_key(id));
        let request = match replaces {
            Some(other) => Request::Transfer {
                call: call.clone(),
                to: None,
                replaces: Some(other),
            },
            None if headers.is_empty() => Request::Transfer {
                call: call.clone(),
                to: Some(target.to_string()),
                replaces: None,
            },
            None => {
                self.out.push_back(FrontOutput::Rejected("refer"));
                return self.reply(&req, 400, &[]);
            }
        };
        self.reply(&req, 202, &[]);
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.referring = true;
        }
        self.out.push_back(FrontOutput::Core(request));
    }

    /// Reports a REFER's progress (RFC 3515 §2.4.5).
    pub(super) fn notify_refer(&mut self, call: &CallId, status: u16, done: bool) {
        let state = if done {
            "terminated;reason=noresource".to_string()
        } else {
            "active;expires=60".to_string()
        };
        let frag = format!("SIP/2.0 {status} {}\r\n", super::reason_phrase(status));
        self.send_in_dialog(
            call,
            "NOTIFY",
            &[("Event", "refer".into()), ("Subscription-State", state)],
            Some(("message/sipfrag;version=2.0", &frag)),
        );
    }
}

/// `%XX` escapes decoded (a Refer-To's embedded Replaces).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

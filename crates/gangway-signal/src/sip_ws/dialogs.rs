//! Calls on the browser side. A call the browser places is its INVITE's
//! dialog, keyed by its Call-ID; we answer it as the core's notifications
//! come (180, 183 with our answer for early media, 200, or the failure).
//! A call offered to the browser is our INVITE to its registered Contact,
//! without SDP: the browser offers in its 200 OK (WebRTC offers come from
//! browsers), the core answers, and our answer goes in the ACK (RFC 3261
//! §13.2.1, a delayed offer; JsSIP and SIP.js both take it).

use gangway_core::calls::{Caller, Notification, Request};
use gangway_core::{valid_sip_user, EndReason, HoldParty};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::Response;

use super::far_hold::FarHold;
use super::wire::{self, Incoming, Reply, ALLOW};
use super::{credentials_of, reason_phrase, FrontOutput, SipWsFront};
use crate::CallId;

/// The shortest session interval we grant (RFC 4028's Min-SE default).
const MIN_SE: u32 = 90;

/// One call's browser-side dialog.
#[derive(Debug)]
pub(super) struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    /// Our From/To value (with our tag) and the browser's.
    pub local: String,
    pub remote: String,
    /// The browser's Contact: where our in-dialog requests go.
    pub target: String,
    /// Our next CSeq for requests of ours.
    pub cseq: u32,
    /// The browser's INVITE until its final response.
    pub invite: Option<Reply>,
    /// What the browser's INVITE asked for (RFC 4028), granted as asked
    /// (at least 90 s), the browser refreshing.
    pub session_expires: Option<u32>,
    /// When the call ends unless the browser refreshes it.
    pub expires_at: Option<std::time::Instant>,
    /// Our SDP answer on the WebRTC leg.
    pub answer: Option<String>,
    /// A 401/407 for the browser to answer.
    pub challenge: Option<(u16, String)>,
    /// A re-INVITE/UPDATE offer awaiting our answer.
    pub reoffer: Option<(String, Reply)>,
    /// Our INVITE to the browser: its Via and CSeq, until a final response.
    pub our_invite: Option<(String, u32)>,
    /// The browser answered our INVITE: the ACK goes with our answer.
    pub ack_due: Option<u32>,
    /// The browser hung up: nothing more to send it.
    pub gone: bool,
    /// A REFER of the browser's is being reported by NOTIFY.
    pub referring: bool,
    /// The browser's last offer put the call on hold.
    pub held: bool,
    /// We CANCELled our INVITE: the dialog waits for its final response
    /// to ACK it.
    pub cancelled: bool,
    /// Hold by the far end, as told to the browser.
    pub far_hold: FarHold,
}

impl Dialog {
    /// A request of ours in this dialog, to the browser's Contact.
    pub(super) fn request(
        &self,
        method: &str,
        via: &str,
        cseq: u32,
        extra: &[(&str, String)],
        body: Option<(&str, &str)>,
    ) -> String {
        wire::request(
            method,
            &self.target,
            via,
            &self.local,
            &self.remote,
            &self.call_id,
            cseq,
            extra,
            body,
        )
    }
}

impl SipWsFront {
    /// The browser places a call.
    pub(super) fn on_invite(&mut self, req: Incoming) {
        let Ok(call) = CallId::new(req.reply.call_id.clone()) else {
            self.out.push_back(FrontOutput::Rejected("bad_invite"));
            return self.reply(&req, 400, &[]);
        };
        if let Some(d) = self.dialogs.get(&call) {
            // A retransmission while we work on it, or a second INVITE
            // with the same Call-ID (not ours to take).
            if d.invite.as_ref().is_some_and(|r| r.cseq == req.reply.cseq) {
                return;
            }
            return self.reply(&req, 482, &[]);
        }
        let Some((content_type, offer)) = wire::body_of(&req.request) else {
            self.out.push_back(FrontOutput::Rejected("no_offer"));
            return self.reply(&req, 488, &[]);
        };
        if content_type != "application/sdp" {
            self.out.push_back(FrontOutput::Rejected("no_offer"));
            return self.reply(&req, 415, &[("Accept", "application/sdp".into())]);
        }
        let from_uri = wire::uri_of(&req.reply.from);
        let Some(user) = wire::user_of(&from_uri).filter(|u| valid_sip_user(u)) else {
            self.out.push_back(FrontOutput::Rejected("bad_invite"));
            return self.reply(&req, 403, &[]);
        };
        let caller = Caller {
            user,
            display: wire::display_of(&req.reply.from),
            credentials: credentials_of(&req),
        };
        let session_expires = req
            .request
            .header_value("Session-Expires")
            .and_then(|v| v.split(';').next()?.trim().parse::<u32>().ok())
            .map(|se| se.max(MIN_SE));
        let local_tag = self.tag();
        let target = req
            .request
            .header_value("Contact")
            .map(|c| wire::uri_of(&c))
            .unwrap_or_else(|| from_uri.clone());
        let dialog = Dialog {
            call_id: req.reply.call_id.clone(),
            local: format!("{};tag={local_tag}", req.reply.to),
            remote: req.reply.from.clone(),
            local_tag,
            target,
            cseq: 0,
            invite: Some(req.reply.clone()),
            session_expires,
            expires_at: None,
            answer: None,
            challenge: None,
            reoffer: None,
            our_invite: None,
            ack_due: None,
            gone: false,
            referring: false,
            held: false,
            cancelled: false,
            far_hold: FarHold::default(),
        };
        self.dialogs.insert(call.clone(), dialog);
        self.respond_invite(&call, 100, None);
        self.out.push_back(FrontOutput::Core(Request::Call {
            call,
            to: req.uri,
            offer,
            caller: Some(caller),
        }));
    }

    /// A response to the browser's INVITE (`sdp`: our answer).
    pub(super) fn respond_invite(&mut self, call: &CallId, status: u16, sdp: Option<&str>) {
        let Some(d) = self.dialogs.get_mut(call) else {
            return;
        };
        let Some(reply) = d.invite.clone() else {
            return;
        };
        let mut headers = vec![("Server", self.settings.agent.clone())];
        if (101..300).contains(&status) {
            headers.push((
                "Contact",
                format!("<sip:gangway@{};transport=ws>", self.settings.host),
            ));
            headers.push(("Allow", ALLOW.to_string()));
        }
        if (200..300).contains(&status) {
            d.invite = None;
            if let Some(se) = d.session_expires {
                headers.push(("Session-Expires", format!("{se};refresher=uac")));
                headers.push(("Require", "timer".into()));
            }
        } else if status >= 300 {
            d.invite = None;
            if let Some((code, challenge)) = d.challenge.take().filter(|(c, _)| *c == status) {
                let name = if code == 407 {
                    "Proxy-Authenticate"
                } else {
                    "WWW-Authenticate"
                };
                headers.push((name, challenge));
            }
        }
        let tag = (status > 100).then(|| d.local_tag.clone());
        let body = sdp.map(|s| ("application/sdp", s));
        let msg = wire::response(
            &reply,
            self.peer,
            status,
            reason_phrase(status),
            tag.as_deref(),
            &headers,
            body,
        );
        self.send(msg);
    }

    pub(super) fn on_notification(&mut self, call: CallId, n: Notification) {
        self.notified(&call, n);
        // Whatever closed (an answer sent, a re-offer answered) may let a
        // far-end hold through to the browser.
        self.offer_far_hold(&call);
    }

    fn notified(&mut self, call: &CallId, n: Notification) {
        let call = call.clone();
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        match n {
            Notification::Answer { sdp } => {
                let sdp = d.far_hold.versioned(&sdp);
                d.answer = Some(sdp.clone());
                if let Some((_, reply)) = d.reoffer.take() {
                    let msg = self.ok_with_sdp(&call, &reply, &sdp);
                    self.send(msg);
                    self.refreshed(&call);
                } else if let Some(cseq) = d.ack_due.take() {
                    self.send_ack(&call, cseq, Some(&sdp));
                }
            }
            Notification::Ringing => self.respond_invite(&call, 180, None),
            Notification::Progress => {
                let sdp = d.answer.clone();
                self.respond_invite(&call, 183, sdp.as_deref());
            }
            Notification::Answered => {
                if d.invite.is_some() {
                    let sdp = d.answer.clone();
                    self.respond_invite(&call, 200, sdp.as_deref());
                    self.refreshed(&call);
                }
            }
            Notification::Challenged { status, challenge } => {
                d.challenge = Some((status, challenge));
            }
            Notification::Ended { reason, code } => self.ended(call, reason, code),
            Notification::TransferProgress { status, done } => {
                if d.referring {
                    d.referring = !done;
                    // The far end's 202 to our REFER is the browser's
                    // 202 already; its subscription starts at 100 Trying.
                    let status = if status == 202 && !done { 100 } else { status };
                    self.notify_refer(&call, status, done);
                }
            }
            Notification::Held {
                by: HoldParty::Remote,
            } => self.far_hold(&call, true),
            Notification::Resumed {
                by: HoldParty::Remote,
            } => self.far_hold(&call, false),
            // The media path carries digits (RFC 4733); the browser's own
            // re-offers drive its hold.
            Notification::Held { .. }
            | Notification::Resumed { .. }
            | Notification::Transferred { .. }
            | Notification::Dtmf { .. }
            | Notification::Incoming { .. } => {}
        }
    }

    /// The core ended the call: answer, cancel or hang up what the browser
    /// still has open.
    fn ended(&mut self, call: CallId, reason: EndReason, code: Option<u16>) {
        let Some(d) = self.dialogs.get(&call) else {
            return;
        };
        if d.gone {
            self.dialogs.remove(&call);
            return;
        }
        if d.invite.is_some() {
            let status = code.filter(|c| *c >= 300).unwrap_or(match reason {
                EndReason::NotFound => 404,
                EndReason::Forbidden | EndReason::AuthFailed => 403,
                EndReason::Busy => 486,
                EndReason::Rejected => 603,
                EndReason::NoAnswer => 480,
                EndReason::InvalidSdp | EndReason::IncompatibleCodecs => 488,
                EndReason::MediaTimeout => 408,
                EndReason::Shutdown => 503,
                EndReason::Hangup | EndReason::Cancelled | EndReason::SocketClosed => 487,
                _ => 500,
            });
            self.respond_invite(&call, status, None);
        } else if let Some((via, cseq)) = d.our_invite.clone() {
            // Still ringing in the browser: CANCEL our INVITE.
            let d = &self.dialogs[&call];
            let msg = d.request(
                "CANCEL",
                &via,
                cseq,
                &[(
                    "Reason",
                    format!(
                        "SIP;cause={};text=\"{}\"",
                        code.unwrap_or(487),
                        reason.as_str()
                    ),
                )],
                None,
            );
            self.send(msg);
            if let Some(d) = self.dialogs.get_mut(&call) {
                d.cancelled = true;
            }
            return;
        } else {
            if let Some(cseq) = self.dialogs.get_mut(&call).and_then(|d| d.ack_due.take()) {
                self.send_ack(&call, cseq, None);
            }
            self.send_in_dialog(&call, "BYE", &[], None);
        }
        self.dialogs.remove(&call);
    }

    /// The core offers an incoming call to this flow.
    pub(super) fn offer_call(
        &mut self,
        call: CallId,
        from: String,
        display: Option<String>,
        to: String,
    ) {
        let to_user = wire::user_of(&to);
        let Some(binding) = self
            .bindings
            .iter()
            .find(|b| Some(&b.user) == to_user.as_ref())
            .or(self.bindings.first())
            .cloned()
        else {
            // Not registered here any more: let the other flows have it.
            return self
                .out
                .push_back(FrontOutput::Core(Request::Reject { call, code: 480 }));
        };
        let local_tag = self.tag();
        let from_value = match display {
            Some(name) => format!("\"{}\" <{from}>", name.replace(['"', '\\'], "")),
            None => format!("<{from}>"),
        };
        let via = self.our_via();
        let dialog = Dialog {
            call_id: call.as_str().to_string(),
            local: format!("{from_value};tag={local_tag}"),
            remote: format!("<{}>", binding.aor),
            local_tag,
            target: binding.contact.clone(),
            cseq: 1,
            invite: None,
            session_expires: None,
            expires_at: None,
            answer: None,
            challenge: None,
            reoffer: None,
            our_invite: Some((via.clone(), 1)),
            ack_due: None,
            gone: false,
            referring: false,
            held: false,
            cancelled: false,
            far_hold: FarHold::default(),
        };
        let msg = dialog.request(
            "INVITE",
            &via,
            1,
            &[
                ("Contact", self.our_contact()),
                ("Allow", ALLOW.to_string()),
                ("Supported", "replaces".into()),
                ("User-Agent", self.settings.agent.clone()),
            ],
            None,
        );
        self.dialogs.insert(call, dialog);
        self.send(msg);
    }

    /// The browser's response to a request of ours.
    pub(super) fn on_response(&mut self, resp: Response) {
        let Some(call_id) = resp.header_value("Call-ID") else {
            return;
        };
        let Ok(call) = CallId::new(call_id) else {
            return;
        };
        let is_invite = resp
            .header_value("CSeq")
            .is_some_and(|c| c.trim_end().ends_with("INVITE"));
        let status = resp.status_code.code();
        let cseq_number = resp
            .header_value("CSeq")
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(n) = cseq_number.filter(|_| is_invite) {
            if self.on_far_hold_response(&call, n, status, resp.header_value("Contact")) {
                return;
            }
        }
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        let Some((via, cseq)) = d.our_invite.clone().filter(|_| is_invite) else {
            return;
        };
        if status < 200 {
            return;
        }
        d.our_invite = None;
        if let Some(to) = resp.header_value("To") {
            d.remote = to;
        }
        if d.cancelled {
            // The call ended while it rang: ACK what ended our INVITE, and
            // hang up at once if the browser answered anyway.
            if status >= 300 {
                let msg = d.request("ACK", &via, cseq, &[], None);
                self.send(msg);
            } else {
                if let Some(contact) = resp.header_value("Contact") {
                    d.target = wire::uri_of(&contact);
                }
                self.send_ack(&call, cseq, None);
                self.send_in_dialog(&call, "BYE", &[], None);
            }
            self.dialogs.remove(&call);
            return;
        }
        if status >= 300 {
            // Non-2xx: the ACK is part of our INVITE transaction.
            let d = &self.dialogs[&call];
            let msg = d.request("ACK", &via, cseq, &[], None);
            self.send(msg);
            let code = match status {
                486 | 600 => 486,
                603 | 403 => 603,
                _ => 480,
            };
            self.dialogs.remove(&call);
            return self
                .out
                .push_back(FrontOutput::Core(Request::Reject { call, code }));
        }
        if let Some(contact) = resp.header_value("Contact") {
            d.target = wire::uri_of(&contact);
        }
        d.ack_due = Some(cseq);
        match wire::sdp_of(&resp) {
            Some(offer) => self
                .out
                .push_back(FrontOutput::Core(Request::Accept { call, offer })),
            None => {
                // No offer to answer: the call cannot go on.
                self.out
                    .push_back(FrontOutput::Rejected("answer_without_offer"));
                self.out
                    .push_back(FrontOutput::Core(Request::Hangup { call }));
            }
        }
    }

    pub(super) fn send_ack(&mut self, call: &CallId, cseq: u32, sdp: Option<&str>) {
        let via = self.our_via();
        let Some(d) = self.dialogs.get(call) else {
            return;
        };
        let body = sdp.map(|s| ("application/sdp", s));
        let msg = d.request("ACK", &via, cseq, &[], body);
        self.send(msg);
    }

    /// A request of ours inside the dialog (BYE, NOTIFY).
    pub(super) fn send_in_dialog(
        &mut self,
        call: &CallId,
        method: &str,
        extra: &[(&str, String)],
        body: Option<(&str, &str)>,
    ) {
        let via = self.our_via();
        let contact = self.our_contact();
        let agent = self.settings.agent.clone();
        let Some(d) = self.dialogs.get_mut(call) else {
            return;
        };
        d.cseq += 1;
        let mut headers = vec![("User-Agent", agent)];
        if method == "NOTIFY" {
            headers.push(("Contact", contact));
        }
        headers.extend(extra.iter().map(|(n, v)| (*n, v.clone())));
        let msg = d.request(method, &via, d.cseq, &headers, body);
        self.send(msg);
    }

    /// A 200 OK carrying our SDP, to an in-dialog offer.
    pub(super) fn ok_with_sdp(&self, call: &CallId, reply: &Reply, sdp: &str) -> String {
        let mut headers = vec![
            ("Server", self.settings.agent.clone()),
            ("Contact", self.our_contact()),
            ("Allow", ALLOW.to_string()),
        ];
        if let Some(se) = self.dialogs.get(call).and_then(|d| d.session_expires) {
            headers.push(("Session-Expires", format!("{se};refresher=uac")));
            headers.push(("Require", "timer".into()));
        }
        wire::response(
            reply,
            self.peer,
            200,
            "OK",
            None,
            &headers,
            Some(("application/sdp", sdp)),
        )
    }

    /// The core refused something about `call` with `status`.
    pub(super) fn refused(&mut self, call: CallId, status: u16) {
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        if let Some((_, reply)) = d.reoffer.take() {
            let msg = wire::response(
                &reply,
                self.peer,
                status,
                reason_phrase(status),
                None,
                &[],
                None,
            );
            return self.send(msg);
        }
        if d.invite.is_some() && d.answer.is_none() {
            self.respond_invite(&call, status, None);
            self.dialogs.remove(&call);
            return;
        }
        if d.referring {
            d.referring = false;
            self.notify_refer(&call, 603, true);
        }
    }
}

//! What the owner of a call holds: one [`DialogHandle`] for the commands
//! any dialog takes, outbound or inbound, and for an inbound call the
//! [`IncomingCall`] with its [`InboundSipCall`] for what only an offered
//! call can do (ring, answer, reject, route its events).
//!
//! Handles only queue [`Command`]s to the call's task, in the order they
//! are made; the task decides what each means in the dialog's phase
//! (`life/`).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use rsipstack::dialog::invite_dialog::InviteDialog;
use tokio::sync::mpsc::{self, Receiver, Sender};
use tracing::warn;

use crate::dialog::{Events, MidCallCommand};
use crate::{SipEvent, SipFailure};

/// Commands a call's queue holds; the last [`DECIDING_COMMANDS`] places
/// are kept for ring, answer, reject and hangup.
const COMMANDS: usize = 64;
const DECIDING_COMMANDS: usize = 4;

/// A request of the owner to the call's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// End the call, whatever its phase.
    Hangup,
    /// A mid-call request, carried out once the dialog is confirmed.
    Mid(MidCallCommand),
    /// Inbound, before our answer: 180 Ringing.
    Ring,
    /// Inbound, before our answer: 200 OK with this SDP.
    Answer(String),
    /// Inbound, before our answer: a final failure response.
    Reject(u16),
}

/// What a call's handles and its task share.
#[derive(Debug)]
struct Control {
    commands: Sender<Command>,
    /// The established dialog, once answered.
    dialog: OnceLock<DialogRef>,
    /// Why the call failed, set before `SipEvent::Failed` is sent.
    failure: OnceLock<SipFailure>,
    /// The INVITE's Call-ID.
    call_id: OnceLock<String>,
}

/// Mid-call commands for one SIP dialog, whichever side placed the call:
/// [`SipService::place_call`](crate::SipService::place_call) returns one,
/// and an inbound call's [`InboundSipCall::dialog_handle`] gives one.
///
/// Clones refer to the same call; dropping them does not end it. Every
/// command is queued to the call's task in order and is a no-op where it
/// does not apply (after the call ended; mid-call requests before the
/// dialog is confirmed).
#[derive(Clone, Debug)]
pub struct DialogHandle {
    control: Arc<Control>,
}

impl DialogHandle {
    /// A handle and the receiving end of its commands, for the call's task.
    pub(crate) fn new() -> (DialogHandle, Receiver<Command>) {
        let (commands, rx) = mpsc::channel(COMMANDS);
        let control = Control {
            commands,
            dialog: OnceLock::new(),
            failure: OnceLock::new(),
            call_id: OnceLock::new(),
        };
        let handle = DialogHandle {
            control: Arc::new(control),
        };
        (handle, rx)
    }

    /// Queues `command` without waiting. A mid-call command that finds the
    /// queue down to its reserve is dropped with a warning: the owner is
    /// asking faster than the dialog can carry out (DTMF while a re-INVITE
    /// waits 32 s, say). Ring, answer, reject and hangup come at most once
    /// each, so the reserve always has room for them.
    pub(crate) fn send(&self, command: Command) {
        let commands = &self.control.commands;
        if matches!(command, Command::Mid(_)) && commands.capacity() <= DECIDING_COMMANDS {
            warn!(?command, "call's command queue is full: command dropped");
            return;
        }
        // The task may have ended; then there is nothing to do.
        let _ = commands.try_send(command);
    }

    /// The task: the dialog is established.
    pub(crate) fn established(&self, dialog: &InviteDialog) {
        let _ = self.control.dialog.set(DialogRef::of(dialog));
    }

    /// The task: the INVITE's Call-ID is known (the first one sticks).
    pub(crate) fn set_call_id(&self, call_id: &str) {
        let _ = self.control.call_id.set(call_id.to_string());
    }

    /// The SIP Call-ID of the call's INVITE, once it was sent or received
    /// (`None` for a call refused before any INVITE left).
    pub fn call_id(&self) -> Option<String> {
        self.control.call_id.get().cloned()
    }

    /// The task: the call failed (before reporting `SipEvent::Failed`).
    pub(crate) fn failed(&self, failure: SipFailure) {
        let _ = self.control.failure.set(failure);
    }

    /// End the call. Outbound: CANCEL before a final response (the 487 is
    /// handled), BYE after a 2xx. Inbound: 480 before our answer, BYE
    /// after it. Idempotent; the call ends with [`SipEvent::Ended`], and no
    /// `Failed`, `RemoteHangup` or `Answered` is reported after it (events
    /// already queued may precede `Ended`).
    ///
    /// Before any response arrived, CANCEL is held back until the first
    /// provisional (RFC 3261 §9.1); if none ever comes, the INVITE times out
    /// (32 s) and the call ends then.
    pub fn hangup(&self) {
        self.send(Command::Hangup);
    }

    /// Send DTMF digits as SIP INFO (`application/dtmf-relay`, one INFO per
    /// digit, in order). Ignored before the dialog is confirmed and after
    /// hangup.
    pub fn send_dtmf_info(&self, digits: &str) {
        self.send(Command::Mid(MidCallCommand::Dtmf(digits.to_string())));
    }

    /// Hold (`true`: re-INVITE with `sendonly`) or resume (`sendrecv`). The
    /// outcome comes as [`SipEvent::OfferAccepted`] or
    /// [`SipEvent::OfferRefused`]. Ignored before the dialog is confirmed
    /// and after hangup.
    pub fn hold(&self, hold: bool) {
        self.send(Command::Mid(MidCallCommand::Hold(hold)));
    }

    /// Blind transfer: REFER the far end to `target` (a `sip:` URI); the
    /// outcome comes as [`SipEvent::TransferProgress`].
    pub fn transfer(&self, target: &str) {
        self.send(Command::Mid(MidCallCommand::Transfer(target.to_string())));
    }

    /// After [`SipEvent::Referred`]: how the call to the target is going
    /// (NOTIFY with `SIP/2.0 <status> <reason>`); `done` ends it.
    pub fn notify_transfer(&self, status: u16, reason: &str, done: bool) {
        self.send(Command::Mid(MidCallCommand::ReferProgress {
            status,
            reason: reason.to_string(),
            done,
        }));
    }

    /// The established dialog (once confirmed), to be named in an attended
    /// transfer.
    pub fn dialog(&self) -> Option<DialogRef> {
        self.control.dialog.get().cloned()
    }

    /// Why the call failed, once [`SipEvent::Failed`] was reported: the far
    /// end's response or a cause of our own (the event carries only its
    /// status and reason).
    pub fn failure(&self) -> Option<SipFailure> {
        self.control.failure.get().cloned()
    }
}

/// The handle [`SipService::place_call`](crate::SipService::place_call)
/// returned before outbound and inbound calls shared one.
pub type SipCall = DialogHandle;

/// An established dialog as another UA must name it: to send it an INVITE
/// with Replaces (RFC 3891), e.g. in the `Refer-To` of an attended transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogRef {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// The far end's remote target (its Contact URI).
    pub remote_target: String,
}

impl DialogRef {
    pub(crate) fn of(dialog: &InviteDialog) -> DialogRef {
        let snapshot = dialog.snapshot();
        DialogRef {
            call_id: snapshot.id.call_id.clone(),
            local_tag: snapshot.id.local_tag.clone(),
            remote_tag: snapshot.id.remote_tag.clone(),
            remote_target: snapshot.remote_uri.to_string(),
        }
    }

    /// A `Refer-To` URI that makes its recipient replace this dialog: the
    /// far end's target with `?Replaces=` naming the dialog from the far
    /// end's side (its tag is the to-tag).
    pub fn replacing_target(&self) -> String {
        let replaces = format!(
            "{};to-tag={};from-tag={}",
            self.call_id, self.remote_tag, self.local_tag
        );
        let target = self
            .remote_target
            .split_once('?')
            .map_or(self.remote_target.as_str(), |(uri, _)| uri);
        format!("{target}?Replaces={}", uri_escape(&replaces))
    }
}

/// Percent-encodes what may not stand in a URI header value (RFC 3261 `hvalue`).
fn uri_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:+$".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An INVITE for one of our users, waiting for its owner's decision.
///
/// Events of the call go nowhere until [`InboundSipCall::route_events`]
/// names their destination (they are held until then). The call ends with
/// [`SipEvent::Ended`] like an outbound one:
/// - before an answer, a CANCEL is `Failed { status: 487 }`;
/// - after [`InboundSipCall::answer`], the ACK is `Answered { sdp }` with the
///   far end's SDP (its offer, or for an offerless INVITE the answer in the
///   ACK); no ACK within 32 s is `Failed { status: 408 }`;
/// - a BYE after that is `RemoteHangup`.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// User part of the Request-URI: the Contact we registered for them.
    pub user: String,
    /// The From URI (caller), e.g. `sip:1001@pbx.example`.
    pub from_uri: String,
    /// The From display name, if any.
    pub from_display: Option<String>,
    /// The To URI as the caller wrote it.
    pub to_uri: String,
    /// The INVITE's SDP offer; `None` for an offerless INVITE (our 200 then
    /// carries the offer).
    pub sdp_offer: Option<String>,
    /// The SIP Call-ID, for logs.
    pub sip_call_id: String,
    /// Where the INVITE came from.
    pub source: SocketAddr,
    pub handle: InboundSipCall,
}

/// Controls an inbound call: what only an offered call can do (route its
/// events, ring, answer, reject). Its mid-call commands are its
/// [`DialogHandle`]'s: [`InboundSipCall::dialog_handle`] gives an owned
/// one, and the handle's methods are also reachable through `Deref`.
/// Clones refer to the same call.
#[derive(Clone)]
pub struct InboundSipCall {
    dialog: DialogHandle,
    events: Events,
}

impl std::fmt::Debug for InboundSipCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundSipCall")
    }
}

impl InboundSipCall {
    pub(crate) fn new(dialog: DialogHandle, events: Events) -> InboundSipCall {
        InboundSipCall { dialog, events }
    }

    /// Sends this call's events (and any held so far) to `tx` as `(key, event)`.
    pub fn route_events(&self, key: u64, tx: crate::SipEventTx) {
        self.events.retarget(key, tx);
    }

    /// Sends an event through the current route again: for an owner that
    /// received one after it handed the call over.
    pub fn redeliver(&self, event: SipEvent) {
        self.events.send(event);
    }

    /// 180 Ringing (once is enough; repeats are harmless). Ignored once
    /// the call was answered, rejected or hung up.
    pub fn ring(&self) {
        self.dialog.send(Command::Ring);
    }

    /// 200 OK with `sdp` (our answer, or our offer for an offerless INVITE).
    pub fn answer(&self, sdp: String) {
        self.dialog.send(Command::Answer(sdp));
    }

    /// A final failure response (4xx-6xx; other values are clamped into
    /// that range) to a call not yet answered.
    pub fn reject(&self, status: u16) {
        self.dialog.send(Command::Reject(status));
    }

    /// The call's mid-call handle (a cheap clone sharing the same call).
    pub fn dialog_handle(&self) -> DialogHandle {
        self.dialog.clone()
    }
}

impl Deref for InboundSipCall {
    type Target = DialogHandle;

    fn deref(&self) -> &DialogHandle {
        &self.dialog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attended_transfer_target_names_the_dialog_from_the_far_side() {
        let dialog = DialogRef {
            call_id: "a1b2@10.0.0.9".into(),
            local_tag: "ours".into(),
            remote_tag: "theirs".into(),
            remote_target: "sip:carol@10.0.0.7:5060;transport=udp".into(),
        };
        assert_eq!(
            dialog.replacing_target(),
            "sip:carol@10.0.0.7:5060;transport=udp?Replaces=a1b2%4010.0.0.9%3Bto-tag%3Dtheirs%3Bfrom-tag%3Dours"
        );
    }

    #[test]
    fn inbound_and_mid_call_commands_share_one_ordered_queue() {
        let (dialog, mut rx) = DialogHandle::new();
        let inbound = InboundSipCall::new(dialog, Events::unrouted(Default::default()));
        inbound.ring();
        inbound.answer("v=0".into());
        inbound.hold(true);
        inbound.dialog_handle().send_dtmf_info("12");
        inbound.hangup();
        let got: Vec<Command> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                Command::Ring,
                Command::Answer("v=0".into()),
                Command::Mid(MidCallCommand::Hold(true)),
                Command::Mid(MidCallCommand::Dtmf("12".into())),
                Command::Hangup,
            ]
        );
        assert_eq!(inbound.failure(), None);
        inbound.failed(SipFailure::NoAck);
        assert_eq!(inbound.dialog_handle().failure(), Some(SipFailure::NoAck));
    }
}

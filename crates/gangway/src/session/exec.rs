//! The core's outputs carried out: media commands to the shard holding the
//! leg, SIP commands to the dialog, notifications and refusals to the
//! client, claims to the ringing coordinator. The only state here is the
//! I/O handles each id stands for.

use std::collections::HashMap;
use std::sync::Arc;

use gangway_core::calls::{Claim, Input, MediaCommand, Output, SipCommand};
use gangway_core::sdp::G711;
use gangway_core::{LegId, MediaPlan, SipLegId};
use gangway_media::{Flow, Law, LegEvent, MediaRoute};
use gangway_rtc::PeerId;
use gangway_signal::core_map;
use gangway_signal::CallId;
use gangway_sip::{DialogRef, InboundSipCall, OutboundCall, SipCall, SipEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Session;
use crate::inbound::Ringing;

/// The SIP side of a call, whichever side placed it.
pub(super) enum Dialog {
    Outbound(SipCall),
    Inbound(InboundSipCall),
}

impl Dialog {
    fn hangup(&self) {
        match self {
            Dialog::Outbound(call) => call.hangup(),
            Dialog::Inbound(call) => call.hangup(),
        }
    }

    fn hold(&self, hold: bool) {
        match self {
            Dialog::Outbound(call) => call.hold(hold),
            Dialog::Inbound(call) => call.hold(hold),
        }
    }

    fn transfer(&self, target: &str) {
        match self {
            Dialog::Outbound(call) => call.transfer(target),
            Dialog::Inbound(call) => call.transfer(target),
        }
    }

    fn dialog(&self) -> Option<DialogRef> {
        match self {
            Dialog::Outbound(call) => call.dialog(),
            Dialog::Inbound(call) => call.dialog(),
        }
    }

    fn notify_transfer(&self, status: u16, reason: &str, done: bool) {
        match self {
            Dialog::Outbound(call) => call.notify_transfer(status, reason, done),
            Dialog::Inbound(call) => call.notify_transfer(status, reason, done),
        }
    }

    fn send_dtmf_info(&self, digits: &str) {
        match self {
            Dialog::Outbound(call) => call.send_dtmf_info(digits),
            Dialog::Inbound(call) => call.send_dtmf_info(digits),
        }
    }

    fn clone_handle(&self) -> Dialog {
        match self {
            Dialog::Outbound(call) => Dialog::Outbound(call.clone()),
            Dialog::Inbound(call) => Dialog::Inbound(call.clone()),
        }
    }
}

/// What the core's ids stand for on this session.
pub(super) struct Handles {
    /// The shard holding each WebRTC leg.
    shards: HashMap<LegId, usize>,
    /// Each live SIP dialog, until its last event.
    pub dialogs: HashMap<SipLegId, Dialog>,
    /// Incoming calls ringing here.
    pub ringing: HashMap<CallId, Arc<Ringing>>,
    /// A ringing call this session just claimed, until the core adopts it.
    adopting: Option<Arc<Ringing>>,
    /// An INVITE with Replaces, until the core answers or refuses it.
    pub replacement: Option<InboundSipCall>,
    legs_tx: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    sip_tx: mpsc::UnboundedSender<(u64, SipEvent)>,
}

impl Handles {
    pub fn new(
        legs_tx: mpsc::UnboundedSender<(PeerId, LegEvent)>,
        sip_tx: mpsc::UnboundedSender<(u64, SipEvent)>,
    ) -> Self {
        Handles {
            shards: HashMap::new(),
            dialogs: HashMap::new(),
            ringing: HashMap::new(),
            adopting: None,
            replacement: None,
            legs_tx,
            sip_tx,
        }
    }

    pub fn dialog_ref(&self, sip: SipLegId) -> Option<DialogRef> {
        self.dialogs.get(&sip).and_then(Dialog::dialog)
    }
}

impl Session {
    /// Drains the core's outputs. Carrying one out may feed the core again
    /// (a claim's result); its outputs join the same queue.
    pub(super) fn run_outputs(&mut self) {
        while let Some(output) = self.calls.poll_output() {
            match output {
                Output::Notify(call, n) => self.outbox.push(core_map::notification(call, n)),
                Output::Refuse(refusal) => self.reject(core_map::refusal(refusal)),
                Output::Media(command) => self.media(command),
                Output::Sip(command) => self.sip(command),
                Output::Claim(call, claim) => self.claim(call, claim),
                Output::Observe { call, log_id, what } => {
                    self.observe(call.as_ref(), log_id.as_deref(), what)
                }
            }
        }
    }

    fn media(&mut self, command: MediaCommand) {
        let shards = &self.shared.shards;
        let placed = &self.handles.shards;
        let shard_of = |leg: &LegId| placed.get(leg).map(|&i| &shards[i]);
        match command {
            MediaCommand::Create { leg, offer, plan } => {
                let i = self.shared.pick_shard();
                let route = match plan {
                    MediaPlan::Echo => MediaRoute::Echo,
                    MediaPlan::Bridge => MediaRoute::Bridge,
                };
                let events = self.handles.legs_tx.clone();
                self.shared.shards[i].add_peer(PeerId(leg.0), offer, route, events);
                self.handles.shards.insert(leg, i);
            }
            MediaCommand::Candidate { leg, candidate } => {
                if let Some(shard) = shard_of(&leg) {
                    shard.add_candidate(PeerId(leg.0), candidate);
                }
            }
            MediaCommand::ConnectRemote {
                leg,
                addr,
                codec,
                dtmf_pt,
                answered,
                flow,
            } => {
                if let Some(shard) = shard_of(&leg) {
                    let law = match codec {
                        G711::Pcmu => Law::Pcmu,
                        G711::Pcma => Law::Pcma,
                    };
                    let flow = Flow {
                        to_sip: flow.to_sip,
                        from_sip: flow.from_sip,
                    };
                    shard.connect_remote(PeerId(leg.0), addr, law, dtmf_pt, answered, flow);
                }
            }
            MediaCommand::SendDtmf { leg, digits } => {
                if let Some(shard) = shard_of(&leg) {
                    shard.send_dtmf(PeerId(leg.0), digits);
                }
            }
            MediaCommand::PlayDtmf { leg, digit } => {
                if let Some(shard) = shard_of(&leg) {
                    shard.play_dtmf(PeerId(leg.0), digit);
                }
            }
            MediaCommand::Renegotiate { leg, offer } => {
                if let Some(shard) = shard_of(&leg) {
                    shard.renegotiate(PeerId(leg.0), offer);
                }
            }
            MediaCommand::Release { leg } => {
                if let Some(i) = self.handles.shards.remove(&leg) {
                    self.shared.shards[i].remove_peer(PeerId(leg.0));
                }
            }
        }
    }

    fn sip(&mut self, command: SipCommand) {
        let dialogs = &self.handles.dialogs;
        match command {
            SipCommand::Place {
                sip,
                uri,
                offer,
                correlation_id,
            } => {
                let Some(leg) = self.shared.sip.as_ref() else {
                    // The router gives SIP routes only with the SIP leg on.
                    return warn!(%uri, "SIP call without a SIP leg");
                };
                let call = leg.service.place_call(
                    OutboundCall {
                        key: sip.0,
                        trunk: leg.trunk.clone(),
                        request_uri: uri,
                        from_user: leg.from_user.clone(),
                        from_display: None,
                        sdp_offer: offer,
                        correlation_id,
                    },
                    self.handles.sip_tx.clone(),
                );
                self.handles.dialogs.insert(sip, Dialog::Outbound(call));
            }
            SipCommand::Adopt { sip } => {
                let Some(ringing) = self.handles.adopting.take() else {
                    return;
                };
                ringing.sip.route_events(sip.0, self.handles.sip_tx.clone());
                ringing.accepted(self.number);
                let handle = Dialog::Inbound(ringing.sip.clone());
                self.handles.dialogs.insert(sip, handle);
            }
            SipCommand::Answer { sip, sdp } => {
                if let Some(Dialog::Inbound(call)) = dialogs.get(&sip) {
                    call.answer(sdp);
                }
            }
            SipCommand::Hangup { sip } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.hangup();
                }
            }
            SipCommand::HangupAfter { sip, delay } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    let dialog = dialog.clone_handle();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        dialog.hangup();
                    });
                }
            }
            SipCommand::Hold { sip, hold } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.hold(hold);
                }
            }
            SipCommand::Transfer { sip, target } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.transfer(&target);
                }
            }
            SipCommand::NotifyTransfer {
                sip,
                status,
                reason,
                done,
            } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.notify_transfer(status, &reason, done);
                }
            }
            SipCommand::DtmfInfo { sip, digits } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.send_dtmf_info(&digits);
                }
            }
            SipCommand::AnswerReplacement { new, sdp, .. } => {
                if let Some(handle) = self.handles.replacement.take() {
                    handle.route_events(new.0, self.handles.sip_tx.clone());
                    handle.answer(sdp);
                    self.handles.dialogs.insert(new, Dialog::Inbound(handle));
                }
            }
            SipCommand::RejectReplacement { status, .. } => {
                if let Some(handle) = self.handles.replacement.take() {
                    handle.reject(status);
                }
            }
        }
    }

    /// Settles a ringing call with the other sessions it rings on: the
    /// first to claim it decides.
    fn claim(&mut self, call: CallId, claim: Claim) {
        match claim {
            Claim::Accept => {
                let Some(ringing) = self.handles.ringing.get(&call).cloned() else {
                    return;
                };
                let won = ringing.claim();
                if won {
                    self.handles.ringing.remove(&call);
                    info!(call = %call, gangway_call = %ringing.log_id, from = %ringing.from, "incoming call accepted");
                    self.handles.adopting = Some(ringing);
                }
                self.calls
                    .handle(std::time::Instant::now(), Input::Claimed { call, won });
            }
            Claim::Reject(code) => {
                // Whoever claimed first decides; the `ended` reaches us either way.
                if let Some(ringing) = self.handles.ringing.get(&call) {
                    if ringing.claim() {
                        ringing.rejected(code);
                    }
                }
            }
            Claim::Decline => {
                if let Some(ringing) = self.handles.ringing.remove(&call) {
                    ringing.gone(self.number);
                }
            }
        }
    }
}

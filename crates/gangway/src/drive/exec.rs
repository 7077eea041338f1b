//! The core's outputs carried out: media commands to the shard holding the
//! leg, SIP commands to the dialog, notifications and refusals to the
//! client, claims to the ringing coordinator. The only state here is the
//! I/O handles each id stands for.

use std::collections::HashMap;
use std::sync::Arc;

use gangway_core::calls::{Claim, Input, MediaCommand, Output, SipCommand};
use gangway_core::sdp::G711;
use gangway_core::{LegId, MediaPlan, SipLegId};
use gangway_media::{Flow, Law, MediaRoute};
use gangway_rtc::PeerId;
use gangway_signal::CallId;
use gangway_sip::{CallAuth, DialogHandle, DialogRef, InboundSipCall, OutboundCall};
use tracing::{info, warn};

use super::{CallDriver, ToClient};
use crate::inbound::Ringing;

/// What the core's ids stand for on this session.
pub(crate) struct Handles {
    /// The shard holding each WebRTC leg.
    shards: HashMap<LegId, usize>,
    /// Each live SIP dialog, until its last event.
    pub dialogs: HashMap<SipLegId, DialogHandle>,
    /// Accepted incoming calls whose INVITE we have not answered yet.
    pub unanswered: HashMap<SipLegId, InboundSipCall>,
    /// Incoming calls ringing here.
    pub ringing: HashMap<CallId, Arc<Ringing>>,
    /// A ringing call this session just claimed, until the core adopts it.
    adopting: Option<Arc<Ringing>>,
    /// An INVITE with Replaces, until the core answers or refuses it.
    pub replacement: Option<InboundSipCall>,
    /// SIP Call-IDs of dialogs that ended before their call's record was
    /// made (bounded: cleared when it grows past a few hundred).
    pub ended_call_ids: HashMap<SipLegId, String>,
    legs_tx: gangway_media::LegEventTx,
    sip_tx: gangway_sip::SipEventTx,
}

impl Handles {
    pub fn new(legs_tx: gangway_media::LegEventTx, sip_tx: gangway_sip::SipEventTx) -> Self {
        Handles {
            shards: HashMap::new(),
            dialogs: HashMap::new(),
            unanswered: HashMap::new(),
            ringing: HashMap::new(),
            adopting: None,
            replacement: None,
            ended_call_ids: HashMap::new(),
            legs_tx,
            sip_tx,
        }
    }

    pub fn dialog_ref(&self, sip: SipLegId) -> Option<DialogRef> {
        self.dialogs.get(&sip).and_then(DialogHandle::dialog)
    }
}

impl CallDriver {
    /// Drains the core's outputs. Carrying one out may feed the core again
    /// (a claim's result); its outputs join the same queue.
    pub(crate) fn run_outputs(&mut self) {
        while let Some(output) = self.calls.poll_output() {
            match output {
                Output::Notify(call, n) => self.to_client.push(ToClient::Notify(call, n)),
                Output::Refuse(refusal) => self.to_client.push(ToClient::Refuse(refusal)),
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
                caller,
            } => {
                let Some(leg) = self.shared.sip.as_ref() else {
                    // The router gives SIP routes only with the SIP leg on.
                    return warn!(%uri, "SIP call without a SIP leg");
                };
                // The client's own identity, or the gateway's.
                let (from_user, from_display, auth) = match caller {
                    Some(c) => {
                        let auth = match (&self.account, c.credentials) {
                            (Some((user, password)), None) if *user == c.user => {
                                CallAuth::Account {
                                    username: user.clone(),
                                    password: password.clone(),
                                }
                            }
                            (_, credentials) => CallAuth::Caller(credentials),
                        };
                        (c.user, c.display, auth)
                    }
                    None => (leg.from_user.clone(), None, CallAuth::Trunk),
                };
                let call = leg.service.place_call(
                    OutboundCall {
                        key: sip.0,
                        trunk: leg.trunk.clone(),
                        request_uri: uri,
                        from_user,
                        from_display,
                        sdp_offer: offer,
                        correlation_id,
                        auth,
                    },
                    self.handles.sip_tx.clone(),
                );
                self.handles.dialogs.insert(sip, call);
            }
            SipCommand::Adopt { sip } => {
                let Some(ringing) = self.handles.adopting.take() else {
                    return;
                };
                ringing.sip.route_events(sip.0, self.handles.sip_tx.clone());
                ringing.accepted(self.number);
                let handle = ringing.sip.dialog_handle();
                self.handles.dialogs.insert(sip, handle);
                self.handles.unanswered.insert(sip, ringing.sip.clone());
            }
            SipCommand::Answer { sip, sdp } => {
                if let Some(offered) = self.handles.unanswered.remove(&sip) {
                    offered.answer(sdp);
                }
            }
            SipCommand::Hangup { sip } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    dialog.hangup();
                }
            }
            SipCommand::HangupAfter { sip, delay } => {
                if let Some(dialog) = dialogs.get(&sip) {
                    let dialog = dialog.clone();
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
                    self.handles.dialogs.insert(new, handle.dialog_handle());
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

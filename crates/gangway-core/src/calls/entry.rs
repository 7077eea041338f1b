//! One call in the table: its ladder plus what spans the two legs.

use std::time::Instant;

use super::CallSummary;
use crate::{Call, CallState, EndReason, HoldState, LegId, Notify, SipLegId};

#[derive(Debug)]
pub(super) struct Entry<K> {
    pub call: Call,
    pub leg: LegId,
    pub started: Instant,
    /// Gangway's own id: logs and the SIP correlation header.
    pub log_id: String,
    /// The SIP side's local RTP port, once the WebRTC leg is ready.
    pub rtp_port: Option<u16>,
    /// The current SIP dialog.
    pub sip: Option<SipLegId>,
    /// How an attended transfer names the current dialog.
    pub replacing_target: Option<String>,
    /// An incoming call's INVITE offer.
    pub sip_offer: Option<String>,
    /// Who holds the SIP leg, and so which ways its audio goes.
    pub hold: HoldState,
    /// A SIP leg that replaces the current one once answered.
    pub transfer: Option<TransferLeg>,
    /// The far end accepted our REFER and has not reported the outcome
    /// (for an attended transfer's other call too: its far end is to
    /// replace us, so its leaving completes the transfer).
    pub transfer_accepted: bool,
    /// Our attended transfer's other call, until the outcome is known.
    pub attended_with: Option<K>,
    /// Our REFER's next news is due by then, or the transfer failed.
    pub transfer_due: Option<Instant>,
    /// The client's own identity for the INVITE, when it gave one.
    pub caller: Option<super::Caller>,
    /// Remote candidates the client trickled.
    pub candidates: usize,
    /// What the call's record says about it when it ends.
    pub record: RecordFacts,
}

/// The call-level facts of a call's detail record, gathered as it goes.
#[derive(Debug, Default)]
pub(super) struct RecordFacts {
    pub inbound: bool,
    pub from: Option<String>,
    pub to: String,
    pub answered: Option<Instant>,
    pub code: Option<u16>,
    pub media_leg: bool,
    /// Every SIP leg that was the call's current one, first first.
    pub sip_legs: Vec<SipLegId>,
}

impl<K> Entry<K> {
    pub fn new(call: Call, leg: LegId, started: Instant, log_id: String) -> Self {
        Entry {
            call,
            leg,
            started,
            log_id,
            rtp_port: None,
            sip: None,
            replacing_target: None,
            sip_offer: None,
            hold: HoldState::default(),
            transfer: None,
            transfer_accepted: false,
            attended_with: None,
            transfer_due: None,
            caller: None,
            candidates: 0,
            record: RecordFacts::default(),
        }
    }

    /// `sip` becomes the call's current SIP leg.
    pub fn set_sip(&mut self, sip: SipLegId) {
        self.sip = Some(sip);
        self.record.sip_legs.push(sip);
    }

    /// The SIP leg of an answered call: what mid-call requests act on.
    pub fn answered_sip(&self) -> Option<SipLegId> {
        self.sip
            .filter(|_| self.call.state() == CallState::Answered)
    }

    /// The call-level half of the call's detail record, as it ends.
    pub fn summary(&self, now: Instant, reason: EndReason) -> CallSummary {
        let r = &self.record;
        CallSummary {
            leg: self.leg,
            inbound: r.inbound,
            from: r.from.clone(),
            to: r.to.clone(),
            started: self.started,
            answered: r.answered,
            ended: now,
            reason,
            code: r.code,
            media_leg: r.media_leg,
            sip_legs: r.sip_legs.clone(),
        }
    }

    /// The SDP session id of our SIP-side SDP (stable for the call).
    pub fn sdp_session_id(&self) -> u64 {
        self.leg.0
    }
}

impl RecordFacts {
    /// What a notification to the client tells the record.
    pub fn note(&mut self, now: Instant, n: &Notify) {
        match n {
            Notify::Answered if self.answered.is_none() => self.answered = Some(now),
            Notify::Ended { code, .. } => self.code = *code,
            _ => {}
        }
    }
}

/// A SIP leg that takes over a call once it is answered.
#[derive(Debug)]
pub(super) struct TransferLeg {
    pub sip: SipLegId,
    /// Who the browser will be talking to.
    pub target: String,
    pub kind: TransferKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransferKind {
    /// We called the target of the far end's REFER.
    Refer,
    /// An INVITE with Replaces took over the call.
    Replaces,
}

/// An `accept` waiting for the shell's claim.
#[derive(Debug)]
pub(super) struct PendingAccept {
    pub offer: String,
    pub leg: LegId,
    pub sip: SipLegId,
}

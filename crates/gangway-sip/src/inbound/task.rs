//! One inbound call's task: selects among the INVITE server transaction,
//! the stack's dialog states, the owner's commands, the session timer, the
//! service's stop signals and the dialog's deadline, feeds each to the
//! dialog's life ([`Uas`]) and carries out the effects that returns.

use std::collections::VecDeque;
use std::sync::Arc;

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::Transaction;
use tokio::sync::mpsc::Receiver;
use tracing::{debug, info, warn};

use crate::dialog::{
    answer_headers, body_text, sleep_until, timer_headers, DialogSdp, Events, Expired, MidCall,
    TimerConfig, ALLOW,
};
use crate::handle::{Command, DialogHandle};
use crate::life::uas::{Input, Uas};
use crate::life::{Effect, Termination, ENDING_DEADLINE};
use crate::session_timer::{self, Answer};
use crate::shared::{ActiveCall, Shared};

/// The UAS side of one dialog.
pub(super) struct Inbound {
    shared: Arc<Shared>,
    dialog: InviteDialog,
    events: Events,
    handle: DialogHandle,
    /// The INVITE carried the offer (else our 200 does, and the ACK the
    /// answer).
    has_offer: bool,
    /// The dialog's mid-call side, from our 200 on.
    mid: Option<MidCall>,
    life: Uas,
}

impl Inbound {
    pub(super) fn new(
        shared: Arc<Shared>,
        dialog: InviteDialog,
        events: Events,
        handle: DialogHandle,
        has_offer: bool,
    ) -> Inbound {
        Inbound {
            shared,
            dialog,
            events,
            handle,
            has_offer,
            mid: None,
            life: Uas::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut tx: Transaction,
        mut state_rx: DialogStateReceiver,
        mut commands: Receiver<Command>,
        _active: ActiveCall,
    ) {
        let mut server = self.dialog.clone();
        // The INVITE server transaction: sends 100, then our responses, and
        // ends with the ACK, a CANCEL or after a final failure.
        let mut transaction = Box::pin(async move {
            if let Err(e) = server.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction ended with an error");
            }
        });
        let mut transaction_done = false;
        while !self.life.is_done() {
            let deadline = self.life.poll_timeout();
            let input = tokio::select! {
                biased;
                _ = self.shared.kill.cancelled() => Input::Killed,
                _ = &mut transaction, if !transaction_done => {
                    transaction_done = true;
                    continue;
                }
                Some(state) = state_rx.recv() => match self.on_state(state).await {
                    Some(input) => input,
                    None => continue,
                },
                Some(command) = commands.recv() => command_input(command),
                expired = session_expired(&self.mid), if self.life.is_confirmed() => {
                    info!(?expired, "session timer ended the call, sending BYE");
                    Input::SessionExpired(expired)
                }
                _ = self.shared.hangup_all.cancelled(), if self.life.takes_hangup() => Input::Stop,
                _ = sleep_until(deadline), if deadline.is_some() => Input::Timeout,
            };
            self.feed(input);
        }
        if let Some(mid) = &self.mid {
            mid.stop_session_timer();
        }
        if !transaction_done {
            // Let the transaction finish its retransmissions on its own.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ENDING_DEADLINE, transaction).await;
            });
        }
        self.shared.unregister_replaceable(&self.dialog.id());
        self.shared.dialog_layer.remove_dialog(&self.dialog.id());
        info!("inbound call ended");
        self.events.send(crate::SipEvent::Ended);
    }

    /// The input a state of the stack's dialog makes; the far end's
    /// in-dialog requests are answered here once we answered.
    async fn on_state(&self, state: DialogState) -> Option<Input> {
        match state {
            DialogState::Confirmed(..) if self.mid.is_some() => {
                let sdp = if self.has_offer {
                    body_text(&self.dialog.initial_request().body)
                } else {
                    let ack = self.dialog.last_remote_ack();
                    ack.and_then(|ack| body_text(&ack.body))
                };
                Some(Input::Acked { sdp })
            }
            DialogState::Terminated(_, reason) => {
                debug!(?reason, "inbound dialog terminated");
                Some(Input::Terminated(termination(reason)))
            }
            DialogState::Updated(..)
            | DialogState::Info(..)
            | DialogState::Options(..)
            | DialogState::Notify(..)
            | DialogState::Refer(..)
            | DialogState::Message(..)
            | DialogState::Publish(..) => {
                match &self.mid {
                    Some(mid) => mid.on_request(state).await,
                    None => debug!("in-dialog request before our answer, ignored"),
                }
                None
            }
            _ => None,
        }
    }

    /// Advances the life and carries out what it says, and what that
    /// leads to (a 200 the stack could not send).
    fn feed(&mut self, input: Input) {
        let now = tokio::time::Instant::now().into_std();
        let mut effects = VecDeque::from(self.life.on(now, input));
        while let Some(effect) = effects.pop_front() {
            if let Some(input) = self.carry_out(effect) {
                effects.extend(self.life.on(now, input));
            }
        }
    }

    fn carry_out(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Report(event) => self.events.send(event),
            Effect::Fail(failure) => {
                info!(%failure, "inbound call failed");
                self.handle.failed(failure.clone());
                self.events.fail(&failure);
            }
            Effect::Ring => {
                if let Err(e) = self.dialog.ringing(None, None) {
                    debug!(error = %e, "cannot send 180");
                }
            }
            Effect::Accept { sdp } => return self.accept(sdp),
            Effect::Reject(status) => {
                info!(status = status.code(), "rejecting inbound call");
                let _ = self
                    .dialog
                    .reject(Some(StatusCode::from(status.code())), None);
            }
            Effect::Bye => {
                info!("hanging up inbound call (BYE)");
                bye(&self.dialog);
            }
            Effect::Establish { sdp, .. } => {
                info!("inbound call answered (ACK received)");
                if let Some(mid) = &self.mid {
                    mid.settle(&sdp);
                }
                let (id, events) = (self.dialog.id(), self.events.clone());
                self.shared.register_replaceable(id, events);
                self.handle.established(&self.dialog);
            }
            Effect::Mid(command) => {
                if let Some(mid) = &self.mid {
                    mid.command(command);
                }
            }
            Effect::Hangup | Effect::Abandon => debug!(?effect, "not an inbound effect"),
        }
        None
    }

    /// Sends our 200 OK with `sdp` and starts the dialog's mid-call side;
    /// `Some(AnswerFailed)` when the stack cannot send it.
    fn accept(&mut self, sdp: String) -> Option<Input> {
        let mut headers = vec![
            Header::ContentType("application/sdp".into()),
            Header::Allow(ALLOW.into()),
        ];
        // RFC 4028: the caller's Session-Expires (checked when the INVITE
        // came in), or ours when it supports timers.
        let far_end = timer_headers(self.dialog.initial_request().headers.iter());
        let ours = self.shared.session_expires;
        let timer = match session_timer::answer_request(&far_end, ours) {
            Answer::TooSmall { .. } => None,
            answer => Some(answer),
        };
        headers.extend(timer.as_ref().map(answer_headers).unwrap_or_default());
        if let Err(e) = self
            .dialog
            .accept(Some(headers), Some(sdp.clone().into_bytes()))
        {
            warn!(error = %e, "cannot send 200 OK");
            return Some(Input::AnswerFailed);
        }
        info!("answering inbound call (200 OK)");
        let mid = MidCall::new(
            self.dialog.clone(),
            self.events.clone(),
            DialogSdp::new(sdp),
        );
        mid.configure_session_timer(TimerConfig {
            ours,
            min_se: far_end.floor(),
            metrics: self.shared.metrics.clone(),
        });
        let session = match timer {
            Some(Answer::Accept { session, .. }) => session,
            _ => None,
        };
        mid.start_session_timer(session, &far_end);
        self.mid = Some(mid);
        None
    }
}

/// What an owner's command asks of the dialog's life.
fn command_input(command: Command) -> Input {
    match command {
        Command::Ring => Input::Ring,
        Command::Answer(sdp) => Input::Answer(sdp),
        Command::Reject(status) => Input::Reject(status),
        Command::Hangup => Input::Hangup,
        Command::Mid(command) => Input::Command(command),
    }
}

/// How the stack's end of the dialog reads from the callee's side.
fn termination(reason: TerminatedReason) -> Termination {
    match reason {
        TerminatedReason::UacBye => Termination::FarEndBye,
        TerminatedReason::UacCancel => Termination::FarEndCancel,
        TerminatedReason::Timeout => Termination::Timeout,
        other => Termination::Other(format!("{other:?}")),
    }
}

/// The session timer's end, once there is a dialog to time.
async fn session_expired(mid: &Option<MidCall>) -> Expired {
    match mid {
        Some(mid) => mid.session_expired().await,
        None => std::future::pending().await,
    }
}

/// BYE (also valid while waiting for the ACK), in the background.
fn bye(dialog: &InviteDialog) {
    let d = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = d.bye().await {
            debug!(error = %e, "BYE failed");
        }
    });
}

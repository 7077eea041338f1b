//! One outbound call's task: sends the INVITE (again once, after a 422),
//! then selects among the stack's dialog states, the INVITE transaction,
//! the owner's commands, the service's stop signals and the session
//! timer, and feeds each to the dialog's life ([`Uac`]); it carries out
//! the effects that returns. In-dialog requests of the far end go to the
//! dialog's [`MidCall`].

use std::sync::Arc;

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::{Response, StatusCodeKind};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::dialog::{
    body_text, sleep_until, timer_headers, DialogSdp, Events, MidCall, TimerConfig,
};
use crate::handle::{Command, DialogHandle};
use crate::life::uac::{Input, InviteEnd, Uac};
use crate::life::{Effect, Termination};
use crate::session_timer;
use crate::shared::{ActiveCall, Shared};
use crate::{OutboundCall, SipEvent, SipFailure, StatusCode};

mod invite;

use invite::{invite_option, response_failure, stack_failure};

/// What `rsipstack` gives for an INVITE sent: its dialog's id and final
/// response (`None` when none came).
type InviteResult = Result<rsipstack::Result<(DialogId, Option<Response>)>, tokio::task::JoinError>;

pub(crate) async fn run_call(
    shared: Arc<Shared>,
    call: OutboundCall,
    events: crate::SipEventTx,
    handle: DialogHandle,
    mut commands: Receiver<Command>,
    _active: ActiveCall,
) {
    let events = Events::to(call.key, events, shared.metrics.events_dropped.clone());
    // RFC 4028 §7.4: a 422 names the far end's Min-SE; the INVITE is sent
    // again once, asking for that interval.
    let mut timer = (shared.session_expires, 0);
    let mut may_retry = true;
    let mut attempt = Attempt {
        shared: &shared,
        call: &call,
        events: &events,
        handle: &handle,
        commands: &mut commands,
    };
    while let Some(min_se) = attempt.run(timer, may_retry).await {
        info!(
            min_se,
            "422 Session Interval Too Small: sending the INVITE again"
        );
        timer = (min_se, min_se);
        may_retry = false;
    }
    info!("call ended");
    events.send(SipEvent::Ended);
}

/// What every INVITE of one call works with.
struct Attempt<'a> {
    shared: &'a Arc<Shared>,
    call: &'a OutboundCall,
    events: &'a Events,
    handle: &'a DialogHandle,
    commands: &'a mut Receiver<Command>,
}

impl Attempt<'_> {
    /// One INVITE and, if it is answered, the call. Returns the far end's
    /// `Min-SE` when a 422 asks for a longer session (and `may_retry`):
    /// the call is then to be tried again; otherwise everything but
    /// `Ended` has been reported.
    async fn run(&mut self, (session_expires, min_se): (u32, u32), may_retry: bool) -> Option<u32> {
        let shared = self.shared;
        let option = match invite_option(shared, self.call, session_expires, min_se) {
            Ok(option) => option,
            Err(reason) => {
                warn!(%reason, "cannot place call");
                self.fail(SipFailure::InvalidCall(reason));
                return None;
            }
        };
        info!(
            uri = %option.callee,
            trunk = %format!("{}:{}", self.call.trunk.host, self.call.trunk.port),
            transport = ?self.call.trunk.transport,
            "placing call"
        );
        let (state_tx, state_rx) = shared.dialog_layer.new_dialog_state_channel();
        let (dialog, invite) = match shared.dialog_layer.do_invite_async(option, state_tx) {
            Ok(started) => started,
            Err(e) => {
                warn!(error = %e, "cannot send INVITE");
                self.fail(stack_failure(&e));
                return None;
            }
        };
        self.handle.set_call_id(&dialog.id().call_id);
        let mid = MidCall::new(
            dialog.clone(),
            self.events.clone(),
            DialogSdp::new(self.call.sdp_offer.clone()),
        );
        mid.configure_session_timer(TimerConfig {
            ours: shared.session_expires,
            min_se,
            metrics: shared.metrics.clone(),
        });
        let mut task = Outbound {
            shared,
            call: self.call,
            events: self.events,
            handle: self.handle,
            early_id: dialog.id(),
            dialog,
            mid,
            life: Uac::new(may_retry.then_some(session_expires)),
            confirmed_id: None,
        };
        let retry = task.run(invite, state_rx, &mut *self.commands).await;
        task.clean_up();
        retry
    }

    fn fail(&self, failure: SipFailure) {
        self.handle.failed(failure.clone());
        self.events.fail(&failure);
    }
}

/// One INVITE's dialog.
struct Outbound<'a> {
    shared: &'a Arc<Shared>,
    call: &'a OutboundCall,
    events: &'a Events,
    handle: &'a DialogHandle,
    dialog: InviteDialog,
    /// The dialog's id before a 2xx gave it the far end's tag.
    early_id: DialogId,
    mid: MidCall,
    life: Uac,
    /// The dialog's id as the 2xx confirmed it.
    confirmed_id: Option<DialogId>,
}

impl Outbound<'_> {
    /// Selects until the dialog's life is over; returns its `retry`.
    async fn run(
        &mut self,
        invite: impl std::future::Future<Output = InviteResult>,
        mut state_rx: DialogStateReceiver,
        commands: &mut Receiver<Command>,
    ) -> Option<u32> {
        tokio::pin!(invite);
        let mut invite_done = false;
        loop {
            if let Some(retry) = self.life.finished() {
                return retry;
            }
            let deadline = self.life.poll_timeout();
            let input = tokio::select! {
                biased;
                _ = self.shared.kill.cancelled() => Input::Killed,
                Some(state) = state_rx.recv() => match self.on_state(state).await {
                    Some(input) => input,
                    None => continue,
                },
                result = &mut invite, if !invite_done => {
                    invite_done = true;
                    Input::InviteEnded(self.invite_end(result))
                }
                Some(command) = commands.recv() => match command {
                    Command::Hangup => {
                        info!("hangup requested");
                        Input::Hangup
                    }
                    Command::Mid(command) => Input::Command(command),
                    Command::Ring | Command::Answer(_) | Command::Reject(_) => continue,
                },
                _ = self.shared.hangup_all.cancelled(), if self.life.takes_hangup() => {
                    info!("service stopping, hanging up");
                    Input::Hangup
                }
                expired = self.mid.session_expired(), if self.life.is_confirmed() => {
                    info!(?expired, "session timer ended the call, sending BYE");
                    Input::SessionExpired(expired)
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    warn!("hangup did not complete in time, dropping the dialog");
                    Input::Timeout
                }
            };
            let effects = self.life.on(Instant::now().into_std(), input);
            self.carry_out(effects);
        }
    }

    /// The input a state of the stack's dialog makes; the far end's
    /// in-dialog requests are answered here.
    async fn on_state(&mut self, state: DialogState) -> Option<Input> {
        match state {
            DialogState::Early(_, resp) => Some(Input::Provisional {
                status: resp.status_code.code(),
                sdp: body_text(&resp.body),
            }),
            DialogState::Confirmed(_, resp) => Some(Input::Confirmed {
                sdp: body_text(&resp.body),
                far_end: timer_headers(resp.headers.iter()),
            }),
            DialogState::Updated(..)
            | DialogState::Info(..)
            | DialogState::Options(..)
            | DialogState::Notify(..)
            | DialogState::Refer(..)
            | DialogState::Message(..)
            | DialogState::Publish(..) => {
                self.mid.on_request(state).await;
                None
            }
            DialogState::Terminated(_, reason) => {
                debug!(?reason, "dialog terminated");
                Some(Input::Terminated(termination(reason)))
            }
            DialogState::Calling(_) | DialogState::Trying(_) | DialogState::WaitAck(_, _) => None,
        }
    }

    /// How the INVITE transaction ended.
    fn invite_end(&mut self, result: InviteResult) -> InviteEnd {
        let failure = |failure| InviteEnd::Failure {
            failure,
            min_se: None,
        };
        match result {
            Ok(Ok((id, Some(resp)))) if resp.status_code.kind() == StatusCodeKind::Successful => {
                self.confirmed_id = Some(id);
                let status = StatusCode::new(resp.status_code.code());
                InviteEnd::Success(status.unwrap_or(StatusCode::OK))
            }
            Ok(Ok((_, Some(resp)))) => {
                let failure = response_failure(&resp, &self.call.auth);
                let min_se = (failure.status() == StatusCode::SESSION_INTERVAL_TOO_SMALL)
                    .then(|| timer_headers(resp.headers.iter()).min_se)
                    .flatten();
                InviteEnd::Failure { failure, min_se }
            }
            Ok(Ok((_, None))) => failure(SipFailure::NoFinalResponse),
            Ok(Err(e)) => failure(stack_failure(&e)),
            Err(e) => failure(SipFailure::Stack(format!("INVITE task failed: {e}"))),
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Report(event) => self.events.send(event),
                Effect::Fail(failure) => {
                    info!(%failure, "call failed");
                    self.handle.failed(failure.clone());
                    self.events.fail(&failure);
                }
                Effect::Establish { sdp, far_end } => {
                    info!("call answered");
                    self.mid.settle(&sdp);
                    if let Some(far_end) = far_end {
                        let session = session_timer::on_response(&far_end);
                        self.mid.start_session_timer(session, &far_end);
                    }
                    let (id, events) = (self.dialog.id(), self.events.clone());
                    self.shared.register_replaceable(id, events);
                    self.handle.established(&self.dialog);
                }
                Effect::Hangup => hang_up(&self.dialog),
                Effect::Abandon => {
                    if !self.dialog.state().is_terminated() {
                        // Forced stop, or the INVITE failed locally while
                        // the far end may still be ringing: still try to
                        // tell it.
                        let dialog = self.dialog.clone();
                        tokio::spawn(async move {
                            let _ = dialog.hangup().await;
                        });
                    }
                }
                Effect::Mid(command) => self.mid.command(command),
                Effect::Ring | Effect::Accept { .. } | Effect::Reject(_) | Effect::Bye => {
                    debug!(?effect, "not an outbound effect")
                }
            }
        }
    }

    /// The dialog is over: stop its timer and forget it.
    fn clean_up(&self) {
        self.mid.stop_session_timer();
        let layer = &self.shared.dialog_layer;
        self.shared.unregister_replaceable(&self.dialog.id());
        // rsipstack leaves confirmed dialogs registered until told otherwise.
        layer.remove_dialog(&self.early_id);
        layer.remove_dialog(&self.dialog.id());
        if let Some(id) = &self.confirmed_id {
            layer.remove_dialog(id);
        }
    }
}

/// How the stack's end of the dialog reads from the caller's side.
fn termination(reason: TerminatedReason) -> Termination {
    match reason {
        TerminatedReason::UasBye => Termination::FarEndBye,
        TerminatedReason::Timeout => Termination::Timeout,
        other => Termination::Other(format!("{other:?}")),
    }
}

/// CANCEL while unanswered (deferred by the stack until a provisional),
/// BYE once confirmed, nothing once terminated; in the background.
fn hang_up(dialog: &InviteDialog) {
    let d = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = d.hangup().await {
            debug!(error = %e, "hangup request failed");
        }
        // A 2xx that won the race against the CANCEL decision leaves the
        // dialog confirmed (cancel() had nothing to do): end it with BYE.
        if d.state().is_confirmed() {
            if let Err(e) = d.bye().await {
                debug!(error = %e, "BYE after hangup failed");
            }
        }
    });
}

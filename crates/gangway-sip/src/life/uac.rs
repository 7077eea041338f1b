//! The life of a dialog we place (UAC), sans IO.
//!
//! ```text
//! Inviting --1xx--> Early --2xx+SDP--> Confirmed --BYE either way--> Done
//!    |                |                   |
//!    |                +------hangup-------+--> Ending{deadline} --> Done
//!    +--final failure, timeout, error------------------------------> Done
//! ```
//!
//! The INVITE transaction runs beside the dialog: a 2xx ends it while the
//! dialog goes on, so the call is over once the transaction has ended and
//! the dialog was either never answered or has been terminated. Hanging
//! up sends CANCEL or BYE and waits for that, at most until the deadline.
//! A 2xx that races our CANCEL is ended with BYE (the stack's CANCEL had
//! nothing to do).

use std::time::Instant;

use super::{Effect, Termination, ENDING_DEADLINE};
use crate::dialog::{Expired, MidCallCommand};
use crate::session_timer::TimerHeaders;
use crate::{SipEvent, SipFailure, StatusCode};

/// Where an outbound dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The INVITE is out; no provisional response yet.
    Inviting,
    /// A provisional response came: the far end rings (or plays early
    /// media).
    Early,
    /// Answered 2xx with SDP (the stack sent the ACK): the call is up.
    Confirmed,
    /// We are ending the call (hangup, stop, session expiry or an answer
    /// without SDP): CANCEL or BYE is on its way. `answered`: a 2xx came
    /// (before or after the hangup).
    Ending { deadline: Instant, answered: bool },
    /// Over. `retry`: a 422 named this `Min-SE`, and the INVITE is to be
    /// sent again asking for it (nothing was reported).
    Done { retry: Option<u32> },
}

/// How the INVITE transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InviteEnd {
    /// A 2xx final response.
    Success(StatusCode),
    /// No 2xx: a failure response or a local cause; for a 422 response the
    /// far end's `Min-SE`.
    Failure {
        failure: SipFailure,
        min_se: Option<u32>,
    },
}

/// What happens to an outbound dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A provisional response (not 100), with its body.
    Provisional { status: u16, sdp: Option<String> },
    /// The stack confirmed the dialog (a 2xx, ACKed; repeated after
    /// in-dialog requests): its body and timer headers.
    Confirmed {
        sdp: Option<String>,
        far_end: TimerHeaders,
    },
    /// The INVITE transaction ended.
    InviteEnded(InviteEnd),
    /// The stack ended the dialog.
    Terminated(Termination),
    /// The owner hung up, or the service is stopping.
    Hangup,
    /// A mid-call request of the owner.
    Command(MidCallCommand),
    /// The session timer ended the session.
    SessionExpired(Expired),
    /// The service drops every call at once.
    Killed,
    /// [`Uac::poll_timeout`] has passed.
    Timeout,
}

/// An outbound dialog's life.
#[derive(Debug)]
pub(crate) struct Uac {
    phase: Phase,
    /// The INVITE transaction's end, once it came.
    invite: Option<InviteEnd>,
    /// The stack ended the dialog.
    terminated: Option<Termination>,
    /// Our `Session-Expires` while a 422 may still send the INVITE again.
    retry_above: Option<u32>,
}

impl Uac {
    /// A dialog whose INVITE was just sent. `retry_above`: our session
    /// interval when a 422 naming a longer one may send the INVITE again
    /// (`None`: this is already the retry).
    pub(crate) fn new(retry_above: Option<u32>) -> Uac {
        Uac {
            phase: Phase::Inviting,
            invite: None,
            terminated: None,
            retry_above,
        }
    }

    /// `Some` once over: `Some(Some(min_se))` when the INVITE is to be
    /// sent again asking for `min_se`.
    pub(crate) fn finished(&self) -> Option<Option<u32>> {
        match self.phase {
            Phase::Done { retry } => Some(retry),
            _ => None,
        }
    }

    /// Mid-call requests are carried out and the session timer is
    /// watched.
    pub(crate) fn is_confirmed(&self) -> bool {
        self.phase == Phase::Confirmed
    }

    /// A hangup (or the service's stop) would still do something.
    pub(crate) fn takes_hangup(&self) -> bool {
        matches!(
            self.phase,
            Phase::Inviting | Phase::Early | Phase::Confirmed
        )
    }

    /// When [`Input::Timeout`] is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Ending { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    pub(crate) fn on(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        if matches!(self.phase, Phase::Done { .. }) {
            return Vec::new();
        }
        match input {
            Input::Provisional { status, sdp } => self.on_provisional(status, sdp),
            Input::Confirmed { sdp, far_end } => self.on_confirmed(now, sdp, far_end),
            Input::InviteEnded(end) => {
                self.invite = Some(end);
                self.settle()
            }
            Input::Terminated(termination) => {
                self.terminated = Some(termination);
                self.settle()
            }
            Input::Hangup => self.hang_up(now),
            Input::Command(command) if self.is_confirmed() => vec![Effect::Mid(command)],
            Input::Command(_) => Vec::new(),
            Input::SessionExpired(expired) if self.is_confirmed() => {
                let status = expired.status();
                let mut effects = vec![Effect::Report(SipEvent::SessionExpired { status })];
                effects.extend(self.hang_up(now));
                effects
            }
            Input::SessionExpired(_) => Vec::new(),
            Input::Killed => self.finish(true),
            Input::Timeout => match self.poll_timeout() {
                Some(deadline) if now >= deadline => self.finish(true),
                _ => Vec::new(),
            },
        }
    }

    fn on_provisional(&mut self, status: u16, sdp: Option<String>) -> Vec<Effect> {
        match self.phase {
            Phase::Inviting | Phase::Early => {
                self.phase = Phase::Early;
                vec![Effect::Report(SipEvent::Provisional { status, sdp })]
            }
            _ => Vec::new(),
        }
    }

    fn on_confirmed(
        &mut self,
        now: Instant,
        sdp: Option<String>,
        far_end: TimerHeaders,
    ) -> Vec<Effect> {
        match (self.phase, sdp) {
            (Phase::Inviting | Phase::Early, Some(sdp)) => {
                self.phase = Phase::Confirmed;
                vec![
                    Effect::Establish {
                        sdp: sdp.clone(),
                        far_end: Some(far_end),
                    },
                    Effect::Report(SipEvent::Answered { sdp }),
                ]
            }
            (Phase::Inviting | Phase::Early, None) => {
                self.phase = Phase::Ending {
                    deadline: now + ENDING_DEADLINE,
                    answered: true,
                };
                vec![Effect::Fail(SipFailure::AnswerWithoutSdp), Effect::Hangup]
            }
            // Answered after our hangup: the hangup's BYE ends it.
            (Phase::Ending { deadline, .. }, _) => {
                self.phase = Phase::Ending {
                    deadline,
                    answered: true,
                };
                Vec::new()
            }
            // Confirmed again after an in-dialog request.
            _ => Vec::new(),
        }
    }

    fn hang_up(&mut self, now: Instant) -> Vec<Effect> {
        if !self.takes_hangup() {
            return Vec::new();
        }
        self.phase = Phase::Ending {
            deadline: now + ENDING_DEADLINE,
            answered: self.phase == Phase::Confirmed,
        };
        vec![Effect::Hangup]
    }

    fn answered(&self) -> bool {
        matches!(
            self.phase,
            Phase::Confirmed | Phase::Ending { answered: true, .. }
        )
    }

    /// Over once the INVITE transaction has ended and the dialog was never
    /// answered or has been terminated.
    fn settle(&mut self) -> Vec<Effect> {
        if self.invite.is_some() && (!self.answered() || self.terminated.is_some()) {
            self.finish(false)
        } else {
            Vec::new()
        }
    }

    /// Ends the life (`forced`: killed, or the hangup took too long) and
    /// reports how, unless we hung up.
    fn finish(&mut self, forced: bool) -> Vec<Effect> {
        let ending = matches!(self.phase, Phase::Ending { .. });
        let answered = self.answered();
        let retry = match &self.invite {
            Some(InviteEnd::Failure { failure, min_se })
                if !forced
                    && !ending
                    && failure.status() == StatusCode::SESSION_INTERVAL_TOO_SMALL =>
            {
                let above = self.retry_above;
                min_se.filter(|floor| above.is_some_and(|ours| *floor > ours))
            }
            _ => None,
        };
        self.phase = Phase::Done { retry };
        let mut effects = Vec::new();
        if ending {
            return effects;
        }
        effects.push(Effect::Abandon);
        if retry.is_some() {
            // Not over: the INVITE goes again.
        } else if answered {
            if self.terminated == Some(Termination::FarEndBye) {
                effects.push(Effect::Report(SipEvent::RemoteHangup));
            }
        } else {
            effects.push(Effect::Fail(self.failure(forced)));
        }
        effects
    }

    /// Why a call that was never answered failed.
    fn failure(&self, forced: bool) -> SipFailure {
        match &self.invite {
            Some(InviteEnd::Failure { failure, .. }) => failure.clone(),
            Some(InviteEnd::Success(status)) => SipFailure::Stack(format!("{status} not usable")),
            None if forced => SipFailure::Stopping,
            None => SipFailure::Stack("call ended unexpectedly".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::new(code).unwrap()
    }

    fn confirmed(sdp: Option<&str>) -> Input {
        Input::Confirmed {
            sdp: sdp.map(str::to_string),
            far_end: TimerHeaders::default(),
        }
    }

    fn ok() -> Input {
        Input::InviteEnded(InviteEnd::Success(status(200)))
    }

    fn failed(failure: SipFailure) -> Input {
        Input::InviteEnded(InviteEnd::Failure {
            failure,
            min_se: None,
        })
    }

    fn ringing() -> Input {
        Input::Provisional {
            status: 180,
            sdp: None,
        }
    }

    fn established(sdp: &str) -> Vec<Effect> {
        vec![
            Effect::Establish {
                sdp: sdp.into(),
                far_end: Some(TimerHeaders::default()),
            },
            Effect::Report(SipEvent::Answered { sdp: sdp.into() }),
        ]
    }

    #[test]
    fn provisional_then_200_then_remote_bye() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        let early = Input::Provisional {
            status: 183,
            sdp: Some("early".into()),
        };
        assert_eq!(
            uac.on(now, early),
            vec![Effect::Report(SipEvent::Provisional {
                status: 183,
                sdp: Some("early".into())
            })]
        );
        assert_eq!(uac.phase, Phase::Early);
        assert_eq!(
            uac.on(now, confirmed(Some("answer"))),
            established("answer")
        );
        assert_eq!(uac.phase, Phase::Confirmed);
        // The 2xx ends the INVITE transaction; the dialog goes on.
        assert_eq!(uac.on(now, ok()), vec![]);
        assert_eq!(uac.finished(), None);
        // Repeated Confirmed (after an in-dialog request) and late 1xx: nothing.
        assert_eq!(uac.on(now, confirmed(Some("answer"))), vec![]);
        assert_eq!(uac.on(now, ringing()), vec![]);
        let hold = MidCallCommand::Hold(true);
        assert_eq!(
            uac.on(now, Input::Command(hold.clone())),
            vec![Effect::Mid(hold)]
        );
        assert_eq!(
            uac.on(now, Input::Terminated(Termination::FarEndBye)),
            vec![Effect::Abandon, Effect::Report(SipEvent::RemoteHangup)]
        );
        assert_eq!(uac.finished(), Some(None));
        assert_eq!(uac.on(now, Input::Hangup), vec![], "nothing after the end");
    }

    #[test]
    fn mid_call_requests_wait_for_no_one_before_the_answer() {
        let mut uac = Uac::new(None);
        let dtmf = Input::Command(MidCallCommand::Dtmf("1".into()));
        assert_eq!(uac.on(t0(), dtmf.clone()), vec![]);
        uac.on(t0(), ringing());
        assert_eq!(uac.on(t0(), dtmf), vec![]);
        assert!(!uac.is_confirmed());
    }

    #[test]
    fn hangup_before_any_response_cancels_once_the_invite_ends() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        assert_eq!(uac.on(now, Input::Hangup), vec![Effect::Hangup]);
        assert_eq!(
            uac.phase,
            Phase::Ending {
                deadline: now + ENDING_DEADLINE,
                answered: false
            }
        );
        assert_eq!(uac.poll_timeout(), Some(now + ENDING_DEADLINE));
        assert_eq!(uac.on(now, Input::Hangup), vec![], "idempotent");
        assert!(!uac.takes_hangup());
        // The provisional that lets the stack send its CANCEL is not reported.
        assert_eq!(uac.on(now, ringing()), vec![]);
        // The 487: over, and nothing to report after our own hangup.
        let terminated = failed(SipFailure::response(status(487), None));
        assert_eq!(uac.on(now, terminated), vec![]);
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn hangup_after_180_sends_cancel_and_reports_nothing() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        uac.on(now, ringing());
        assert_eq!(uac.on(now, Input::Hangup), vec![Effect::Hangup]);
        assert_eq!(
            uac.on(
                now,
                Input::Terminated(Termination::Other("UacCancel".into()))
            ),
            vec![]
        );
        assert_eq!(uac.finished(), None, "the INVITE has not ended yet");
        assert_eq!(
            uac.on(now, failed(SipFailure::response(status(487), None))),
            vec![]
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn a_200_racing_the_cancel_is_ended_by_the_hangup_bye() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        uac.on(now, ringing());
        assert_eq!(uac.on(now, Input::Hangup), vec![Effect::Hangup]);
        // The 2xx won: no Answered, no second hangup (its BYE is the first's).
        assert_eq!(uac.on(now, confirmed(Some("answer"))), vec![]);
        assert_eq!(
            uac.phase,
            Phase::Ending {
                deadline: now + ENDING_DEADLINE,
                answered: true
            }
        );
        assert_eq!(
            uac.on(now, Input::Command(MidCallCommand::Hold(true))),
            vec![]
        );
        assert_eq!(uac.on(now, ok()), vec![]);
        assert_eq!(uac.finished(), None, "waits for the BYE to end the dialog");
        assert_eq!(
            uac.on(now, Input::Terminated(Termination::Other("UacBye".into()))),
            vec![]
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn a_hangup_that_never_completes_is_dropped_at_the_deadline() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        uac.on(now, ringing());
        uac.on(now, Input::Hangup);
        let early = now + ENDING_DEADLINE - Duration::from_millis(1);
        assert_eq!(uac.on(early, Input::Timeout), vec![]);
        assert_eq!(uac.finished(), None);
        assert_eq!(uac.on(now + ENDING_DEADLINE, Input::Timeout), vec![]);
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn local_hangup_of_an_answered_call_ends_with_bye_and_no_report() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        uac.on(now, confirmed(Some("answer")));
        uac.on(now, ok());
        assert_eq!(uac.on(now, Input::Hangup), vec![Effect::Hangup]);
        assert_eq!(
            uac.on(now, Input::Terminated(Termination::FarEndBye)),
            vec![],
            "even a crossing BYE from the far end is not reported"
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn a_failure_response_is_reported() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        uac.on(now, ringing());
        let busy = SipFailure::response(status(486), Some("Busy Here".into()));
        uac.on(now, Input::Terminated(Termination::Other("UasBusy".into())));
        assert_eq!(
            uac.on(now, failed(busy.clone())),
            vec![Effect::Abandon, Effect::Fail(busy)]
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn no_final_response_is_a_timeout() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        assert_eq!(
            uac.on(now, failed(SipFailure::NoFinalResponse)),
            vec![Effect::Abandon, Effect::Fail(SipFailure::NoFinalResponse)]
        );
    }

    #[test]
    fn an_answer_without_sdp_fails_and_hangs_up() {
        let now = t0();
        let mut uac = Uac::new(Some(1800));
        assert_eq!(
            uac.on(now, confirmed(None)),
            vec![Effect::Fail(SipFailure::AnswerWithoutSdp), Effect::Hangup]
        );
        assert!(!uac.is_confirmed());
        uac.on(now, ok());
        assert_eq!(
            uac.on(now, Input::Terminated(Termination::Other("UacBye".into()))),
            vec![],
            "the failure was the report"
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn a_2xx_the_dialog_never_confirmed_is_not_usable() {
        let mut uac = Uac::new(None);
        assert_eq!(
            uac.on(t0(), ok()),
            vec![
                Effect::Abandon,
                Effect::Fail(SipFailure::Stack("200 not usable".into()))
            ]
        );
    }

    #[test]
    fn session_expiry_reports_and_hangs_up() {
        let now = t0();
        let mut uac = Uac::new(None);
        assert_eq!(
            uac.on(now, Input::SessionExpired(Expired::NotRefreshed)),
            vec![],
            "no session before the answer"
        );
        uac.on(now, confirmed(Some("answer")));
        uac.on(now, ok());
        assert_eq!(
            uac.on(now, Input::SessionExpired(Expired::RefreshFailed(481))),
            vec![
                Effect::Report(SipEvent::SessionExpired { status: Some(481) }),
                Effect::Hangup
            ]
        );
        assert_eq!(
            uac.on(now, Input::Terminated(Termination::Other("UacBye".into()))),
            vec![]
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn killed_while_ringing_is_stopping_and_abandons_the_dialog() {
        let mut uac = Uac::new(Some(1800));
        uac.on(t0(), ringing());
        assert_eq!(
            uac.on(t0(), Input::Killed),
            vec![Effect::Abandon, Effect::Fail(SipFailure::Stopping)]
        );
        assert_eq!(uac.finished(), Some(None));
    }

    #[test]
    fn killed_when_answered_abandons_quietly() {
        let mut uac = Uac::new(Some(1800));
        uac.on(t0(), confirmed(Some("a")));
        uac.on(t0(), ok());
        assert_eq!(uac.on(t0(), Input::Killed), vec![Effect::Abandon]);
    }

    fn too_small(min_se: Option<u32>) -> Input {
        Input::InviteEnded(InviteEnd::Failure {
            failure: SipFailure::response(status(422), None),
            min_se,
        })
    }

    #[test]
    fn a_422_with_a_longer_min_se_asks_for_a_retry_once() {
        let mut uac = Uac::new(Some(90));
        assert_eq!(uac.on(t0(), too_small(Some(1800))), vec![Effect::Abandon]);
        assert_eq!(uac.finished(), Some(Some(1800)));

        // The retry itself may not retry again.
        let mut retry = Uac::new(None);
        assert_eq!(
            retry.on(t0(), too_small(Some(3600))),
            vec![
                Effect::Abandon,
                Effect::Fail(SipFailure::response(status(422), None))
            ]
        );
        assert_eq!(retry.finished(), Some(None));

        // A Min-SE no longer than ours is a plain failure.
        let mut uac = Uac::new(Some(1800));
        assert_eq!(
            uac.on(t0(), too_small(Some(1800))),
            vec![
                Effect::Abandon,
                Effect::Fail(SipFailure::response(status(422), None))
            ]
        );
    }
}

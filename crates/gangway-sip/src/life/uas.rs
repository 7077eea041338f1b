//! The life of a dialog we take (UAS), sans IO.
//!
//! ```text
//! Offered --answer--> Accepted{deadline} --ACK with SDP--> Confirmed --BYE--> Done
//!    |                    |                                   |
//!    +--reject, hangup----+--hangup, ACK without SDP----------+--> Ending{deadline} --> Done
//!    +--CANCEL, or no ACK by the deadline---------------------------------------------> Done
//! ```
//!
//! The SDP that settles the session is the INVITE's offer, or for an
//! offerless INVITE the answer in the ACK; the task hands over whichever
//! applies with [`Input::Acked`].

use std::time::Instant;

use super::{Effect, Termination, ENDING_DEADLINE};
use crate::dialog::{Expired, MidCallCommand};
use crate::{SipEvent, SipFailure, StatusCode};

/// Where an inbound dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The INVITE waits for its owner: ring, answer or reject.
    Offered,
    /// Our 200 OK is out; its ACK is due by `deadline`.
    Accepted { deadline: Instant },
    /// ACKed: the call is up.
    Confirmed,
    /// We are ending the call (reject, hangup, stop, session expiry, an
    /// ACK without SDP): our final response or BYE is out, and `deadline`
    /// bounds the wait for the dialog to end.
    Ending { deadline: Instant },
    /// Over.
    Done,
}

/// What happens to an inbound dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// The owner: 180 Ringing.
    Ring,
    /// The owner: answer with this SDP.
    Answer(String),
    /// The owner: a final failure response.
    Reject(u16),
    /// The owner hangs up.
    Hangup,
    /// The service is stopping.
    Stop,
    /// A mid-call request of the owner.
    Command(MidCallCommand),
    /// The stack could not send our 200 OK.
    AnswerFailed,
    /// The stack confirmed the dialog (the ACK came; repeated after
    /// in-dialog requests), with the SDP that settles the session.
    Acked { sdp: Option<String> },
    /// The stack ended the dialog.
    Terminated(Termination),
    /// The session timer ended the session.
    SessionExpired(Expired),
    /// The service drops every call at once.
    Killed,
    /// [`Uas::poll_timeout`] has passed.
    Timeout,
}

/// An inbound dialog's life.
#[derive(Debug)]
pub(crate) struct Uas {
    phase: Phase,
}

impl Uas {
    pub(crate) fn new() -> Uas {
        Uas {
            phase: Phase::Offered,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
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
            Phase::Offered | Phase::Accepted { .. } | Phase::Confirmed
        )
    }

    /// When [`Input::Timeout`] is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Accepted { deadline } | Phase::Ending { deadline } => Some(deadline),
            _ => None,
        }
    }

    pub(crate) fn on(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        match (self.phase, input) {
            (Phase::Done, _) => Vec::new(),
            (Phase::Offered, Input::Ring) => vec![Effect::Ring],
            (Phase::Offered, Input::Answer(sdp)) => {
                self.phase = Phase::Accepted {
                    deadline: now + ENDING_DEADLINE,
                };
                vec![Effect::Accept { sdp }]
            }
            (Phase::Offered, Input::Reject(status)) => {
                self.end(now, vec![Effect::Reject(final_status(status))])
            }
            (Phase::Offered, Input::Hangup) => self.end(
                now,
                vec![Effect::Reject(StatusCode::TEMPORARILY_UNAVAILABLE)],
            ),
            (Phase::Offered, Input::Stop) => {
                self.end(now, vec![Effect::Reject(StatusCode::SERVICE_UNAVAILABLE)])
            }
            (Phase::Accepted { .. } | Phase::Confirmed, Input::Hangup | Input::Stop) => {
                self.end(now, vec![Effect::Bye])
            }
            (Phase::Accepted { .. }, Input::AnswerFailed) => {
                self.phase = Phase::Done;
                vec![Effect::Fail(SipFailure::Stack("cannot answer".into()))]
            }
            (Phase::Accepted { .. }, Input::Acked { sdp: Some(sdp) }) => {
                self.phase = Phase::Confirmed;
                vec![
                    Effect::Establish {
                        sdp: sdp.clone(),
                        far_end: None,
                    },
                    Effect::Report(SipEvent::Answered { sdp }),
                ]
            }
            (Phase::Accepted { .. }, Input::Acked { sdp: None }) => self.end(
                now,
                vec![Effect::Fail(SipFailure::AckWithoutSdp), Effect::Bye],
            ),
            (Phase::Confirmed, Input::Command(command)) => vec![Effect::Mid(command)],
            (Phase::Confirmed, Input::SessionExpired(expired)) => {
                let status = expired.status();
                self.end(
                    now,
                    vec![
                        Effect::Report(SipEvent::SessionExpired { status }),
                        Effect::Bye,
                    ],
                )
            }
            (Phase::Ending { .. }, Input::Terminated(_)) => {
                self.phase = Phase::Done;
                Vec::new()
            }
            (phase, Input::Terminated(termination)) => {
                self.phase = Phase::Done;
                let answered = phase == Phase::Confirmed;
                vec![terminated(termination, answered)]
            }
            (_, Input::Killed) => {
                self.phase = Phase::Done;
                Vec::new()
            }
            (Phase::Accepted { deadline }, Input::Timeout) if now >= deadline => {
                self.phase = Phase::Done;
                vec![Effect::Fail(SipFailure::NoAck), Effect::Bye]
            }
            (Phase::Ending { deadline }, Input::Timeout) if now >= deadline => {
                self.phase = Phase::Done;
                Vec::new()
            }
            // Commands that do not apply in this phase, repeated ACK
            // confirmations, an early timeout.
            _ => Vec::new(),
        }
    }

    /// We end the call with `effects`; the dialog has until the deadline
    /// to end.
    fn end(&mut self, now: Instant, effects: Vec<Effect>) -> Vec<Effect> {
        self.phase = Phase::Ending {
            deadline: now + ENDING_DEADLINE,
        };
        effects
    }
}

/// A final failure status from what the owner asked for.
fn final_status(status: u16) -> StatusCode {
    StatusCode::new(status.clamp(400, 699)).unwrap_or(StatusCode::TEMPORARILY_UNAVAILABLE)
}

/// How the far end (or the stack) ending the dialog is reported.
fn terminated(termination: Termination, answered: bool) -> Effect {
    match termination {
        Termination::FarEndBye if answered => Effect::Report(SipEvent::RemoteHangup),
        Termination::FarEndBye | Termination::FarEndCancel => {
            Effect::Fail(SipFailure::CallerCancelled)
        }
        Termination::Timeout => Effect::Fail(SipFailure::NoAck),
        Termination::Other(reason) => {
            Effect::Fail(SipFailure::Stack(format!("dialog ended: {reason}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn acked(sdp: Option<&str>) -> Input {
        Input::Acked {
            sdp: sdp.map(str::to_string),
        }
    }

    fn answered(now: Instant) -> Uas {
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        uas.on(now, acked(Some("theirs")));
        assert!(uas.is_confirmed());
        uas
    }

    #[test]
    fn ring_answer_ack_then_remote_bye() {
        let now = Instant::now();
        let mut uas = Uas::new();
        assert_eq!(uas.on(now, Input::Ring), vec![Effect::Ring]);
        assert_eq!(
            uas.on(now, acked(Some("offer"))),
            vec![],
            "no ACK before our answer"
        );
        assert_eq!(
            uas.on(now, Input::Answer("ours".into())),
            vec![Effect::Accept { sdp: "ours".into() }]
        );
        assert_eq!(uas.poll_timeout(), Some(now + ENDING_DEADLINE));
        assert_eq!(
            uas.on(now, Input::Ring),
            vec![],
            "no ringing after the answer"
        );
        assert_eq!(
            uas.on(now, Input::Command(MidCallCommand::Hold(true))),
            vec![],
            "no mid-call request before the ACK"
        );
        assert_eq!(
            uas.on(now, acked(Some("offer"))),
            vec![
                Effect::Establish {
                    sdp: "offer".into(),
                    far_end: None
                },
                Effect::Report(SipEvent::Answered {
                    sdp: "offer".into()
                })
            ]
        );
        assert_eq!(uas.poll_timeout(), None);
        assert_eq!(uas.on(now, acked(Some("offer"))), vec![], "repeated");
        let dtmf = MidCallCommand::Dtmf("5".into());
        assert_eq!(
            uas.on(now, Input::Command(dtmf.clone())),
            vec![Effect::Mid(dtmf)]
        );
        assert_eq!(
            uas.on(now, Input::Terminated(Termination::FarEndBye)),
            vec![Effect::Report(SipEvent::RemoteHangup)]
        );
        assert!(uas.is_done());
    }

    #[test]
    fn the_caller_cancelling_before_the_answer_is_487() {
        let mut uas = Uas::new();
        uas.on(Instant::now(), Input::Ring);
        assert_eq!(
            uas.on(Instant::now(), Input::Terminated(Termination::FarEndCancel)),
            vec![Effect::Fail(SipFailure::CallerCancelled)]
        );
        assert!(uas.is_done());
        assert_eq!(uas.on(Instant::now(), Input::Answer("x".into())), vec![]);
    }

    #[test]
    fn a_bye_before_the_ack_is_a_cancel() {
        let now = Instant::now();
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        assert_eq!(
            uas.on(now, Input::Terminated(Termination::FarEndBye)),
            vec![Effect::Fail(SipFailure::CallerCancelled)]
        );
    }

    #[test]
    fn reject_and_hangup_before_the_answer_are_final_responses() {
        let now = Instant::now();
        let mut uas = Uas::new();
        assert_eq!(
            uas.on(now, Input::Reject(486)),
            vec![Effect::Reject(StatusCode::new(486).unwrap())]
        );
        assert_eq!(
            uas.phase,
            Phase::Ending {
                deadline: now + ENDING_DEADLINE
            }
        );
        assert_eq!(uas.on(now, Input::Hangup), vec![], "already ending");
        assert_eq!(
            uas.on(now, Input::Terminated(Termination::Other("UasBusy".into()))),
            vec![],
            "ours: nothing to report"
        );
        assert!(uas.is_done());

        let mut uas = Uas::new();
        assert_eq!(
            uas.on(now, Input::Hangup),
            vec![Effect::Reject(StatusCode::new(480).unwrap())]
        );
        let mut uas = Uas::new();
        assert_eq!(
            uas.on(now, Input::Stop),
            vec![Effect::Reject(StatusCode::new(503).unwrap())]
        );
        let mut uas = Uas::new();
        assert_eq!(
            uas.on(now, Input::Reject(200)),
            vec![Effect::Reject(StatusCode::new(400).unwrap())],
            "clamped to a failure"
        );
    }

    #[test]
    fn hangup_after_the_answer_is_bye_and_ends_quietly() {
        let now = Instant::now();
        let mut uas = answered(now);
        assert_eq!(uas.on(now, Input::Hangup), vec![Effect::Bye]);
        assert!(!uas.takes_hangup());
        assert_eq!(
            uas.on(now, Input::Terminated(Termination::Other("UasBye".into()))),
            vec![]
        );
        assert!(uas.is_done());

        // Before the ACK too.
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        assert_eq!(uas.on(now, Input::Stop), vec![Effect::Bye]);
        assert_eq!(uas.on(now, acked(Some("theirs"))), vec![], "too late");
    }

    #[test]
    fn no_ack_in_time_fails_with_408_and_byes() {
        let now = Instant::now();
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        let before = now + ENDING_DEADLINE - Duration::from_millis(1);
        assert_eq!(uas.on(before, Input::Timeout), vec![]);
        assert_eq!(
            uas.on(now + ENDING_DEADLINE, Input::Timeout),
            vec![Effect::Fail(SipFailure::NoAck), Effect::Bye]
        );
        assert!(uas.is_done());

        // The stack's own timer may say so first.
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        assert_eq!(
            uas.on(now, Input::Terminated(Termination::Timeout)),
            vec![Effect::Fail(SipFailure::NoAck)]
        );
    }

    #[test]
    fn an_ack_without_the_answer_to_our_offer_fails_and_byes() {
        let now = Instant::now();
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("our offer".into()));
        assert_eq!(
            uas.on(now, acked(None)),
            vec![Effect::Fail(SipFailure::AckWithoutSdp), Effect::Bye]
        );
        assert_eq!(
            uas.on(now + ENDING_DEADLINE, Input::Timeout),
            vec![],
            "a BYE that never completes is dropped quietly"
        );
        assert!(uas.is_done());
    }

    #[test]
    fn a_200_the_stack_cannot_send_fails_the_call() {
        let now = Instant::now();
        let mut uas = Uas::new();
        uas.on(now, Input::Answer("ours".into()));
        assert_eq!(
            uas.on(now, Input::AnswerFailed),
            vec![Effect::Fail(SipFailure::Stack("cannot answer".into()))]
        );
        assert!(uas.is_done());
    }

    #[test]
    fn session_expiry_reports_and_byes() {
        let now = Instant::now();
        let mut uas = Uas::new();
        assert_eq!(
            uas.on(now, Input::SessionExpired(Expired::NotRefreshed)),
            vec![]
        );
        let mut uas = answered(now);
        assert_eq!(
            uas.on(now, Input::SessionExpired(Expired::NotRefreshed)),
            vec![
                Effect::Report(SipEvent::SessionExpired { status: None }),
                Effect::Bye
            ]
        );
    }

    #[test]
    fn killed_ends_without_a_report() {
        let now = Instant::now();
        let mut uas = answered(now);
        assert_eq!(uas.on(now, Input::Killed), vec![]);
        assert!(uas.is_done());
        let mut uas = Uas::new();
        assert_eq!(uas.on(now, Input::Killed), vec![]);
    }

    #[test]
    fn an_odd_end_of_the_dialog_is_a_stack_failure() {
        let mut uas = Uas::new();
        assert_eq!(
            uas.on(
                Instant::now(),
                Input::Terminated(Termination::Other("ProxyError".into()))
            ),
            vec![Effect::Fail(SipFailure::Stack(
                "dialog ended: ProxyError".into()
            ))]
        );
    }
}

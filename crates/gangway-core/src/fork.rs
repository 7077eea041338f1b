//! An incoming call rung on every connection of the called user (forked
//! ringing), sans IO: who gets it, and what everyone else is told.
//!
//! A decision is taken once. Tables race for it with an atomic claim that
//! the shell owns (connections run on different tasks); [`Settled::claim`]
//! says whether the shell must still win that claim before carrying the
//! decision out (a table that accepted or rejected has already won it).
//!
//! Every end but an answer is a missed call: [`Settled::missed`] (or
//! [`Refused::missed`], for an INVITE refused before it rang) is its
//! summary, the whole of its call detail record.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

use crate::sdp::{self, G711};
use crate::{reason_for_status, EndReason};

/// Why an incoming INVITE is refused before it rings anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    /// For `gangway_inbound_calls_total{outcome}`.
    pub outcome: &'static str,
    pub why: &'static str,
}

impl Refused {
    /// The record of the refused INVITE, which arrived at `started`.
    pub fn missed(&self, started: Instant, now: Instant) -> Missed {
        Missed {
            started,
            ended: now,
            outcome: self.outcome,
            code: self.status,
            rang: false,
        }
    }
}

/// An incoming call that no connection took, as its call record has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// When the INVITE arrived.
    pub started: Instant,
    /// When it was refused, or the caller gave up.
    pub ended: Instant,
    /// As `gangway_inbound_calls_total{outcome}`; also the record's
    /// `end_reason`: `rejected`, `cancelled`, `no_answer`, `unavailable`,
    /// `not_found`, `incompatible`, `failed` or `shutting_down`.
    pub outcome: &'static str,
    /// The INVITE's final status: the gateway's answer (487 after the
    /// caller's CANCEL).
    pub code: u16,
    /// Whether any connection was rung.
    pub rang: bool,
}

/// Whether the called user has connections here to ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nobody is signed in as this user here (or sign-in is off).
    Unknown,
    /// Registered, but every connection has gone (within the grace period).
    NoConnections,
    Connections,
}

/// The checks before asking who to ring: the gateway takes calls, and the
/// INVITE's offer (if any) has a codec we take.
pub fn screen_invite(accepting: bool, offer: Option<&str>, codecs: &[G711]) -> Result<(), Refused> {
    let refuse = |status, outcome, why| {
        Err(Refused {
            status,
            outcome,
            why,
        })
    };
    if !accepting {
        return refuse(503, "shutting_down", "the gateway is shutting down");
    }
    if offer.is_some_and(|o| sdp::parse_answer(o, codecs).is_err()) {
        return refuse(488, "incompatible", "the offer has no usable G.711 stream");
    }
    Ok(())
}

/// The check once the user table answered: someone to ring.
pub fn screen_presence(presence: Presence) -> Result<(), Refused> {
    let refuse = |status, outcome, why| {
        Err(Refused {
            status,
            outcome,
            why,
        })
    };
    match presence {
        Presence::Unknown => refuse(404, "not_found", "no such user signed in here"),
        Presence::NoConnections => refuse(
            480,
            "unavailable",
            "user registered but no connection is open",
        ),
        Presence::Connections => Ok(()),
    }
}

/// What happened to a ringing call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkInput<T> {
    /// Table `T` took the call (it won the claim).
    Accepted(T),
    /// A table rejected it with `code` (it won the claim).
    Rejected(u16),
    /// Table `T` will not answer (closed, or full).
    Gone(T),
    /// The caller cancelled, or the INVITE failed, with `status`.
    CallerGaveUp { status: u16 },
    /// Nobody answered within the ring timeout.
    Timeout,
}

/// The end of the ringing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled<T> {
    /// The shell must win the claim first; if it loses, another decision
    /// is on its way and this one is void.
    pub claim: bool,
    /// Refuse the INVITE with this status.
    pub reject: Option<u16>,
    /// Tell every table but `except` that the call stopped ringing.
    pub except: Option<T>,
    pub reason: EndReason,
    pub code: Option<u16>,
    /// For `gangway_inbound_calls_total{outcome}`.
    pub outcome: &'static str,
    /// The call's record, unless a table took it (that table records it).
    pub missed: Option<Missed>,
}

/// The tables a call rings on, until it is settled.
#[derive(Debug)]
pub struct Fork<T> {
    waiting: HashSet<T>,
    timed_out: bool,
    /// When the INVITE arrived.
    started: Instant,
    rang: bool,
}

impl<T: Clone + Eq + Hash> Fork<T> {
    /// Rings `tables` for an INVITE that arrived at `started`.
    pub fn new(started: Instant, tables: impl IntoIterator<Item = T>) -> Self {
        let waiting: HashSet<T> = tables.into_iter().collect();
        Fork {
            rang: !waiting.is_empty(),
            waiting,
            timed_out: false,
            started,
        }
    }

    /// How many tables it rings on.
    pub fn ringing(&self) -> usize {
        self.waiting.len()
    }

    /// What `input`, at `now`, settles (if anything).
    pub fn on(&mut self, now: Instant, input: ForkInput<T>) -> Option<Settled<T>> {
        let (started, rang) = (self.started, self.rang);
        let settled = |claim, reject, except, reason, code: Option<u16>, outcome| Settled {
            claim,
            reject,
            except,
            reason,
            code,
            outcome,
            missed: (outcome != "answered").then(|| Missed {
                started,
                ended: now,
                outcome,
                code: code.unwrap_or(500),
                rang,
            }),
        };
        match input {
            ForkInput::Accepted(table) => Some(settled(
                false,
                None,
                Some(table),
                EndReason::AnsweredElsewhere,
                None,
                "answered",
            )),
            ForkInput::Rejected(code) => Some(settled(
                false,
                Some(code),
                None,
                EndReason::Rejected,
                Some(code),
                "rejected",
            )),
            ForkInput::Gone(table) => {
                self.waiting.remove(&table);
                self.waiting.is_empty().then(|| {
                    let reason = EndReason::NoAnswer;
                    settled(true, Some(480), None, reason, Some(480), "unavailable")
                })
            }
            ForkInput::CallerGaveUp { status } => {
                let outcome = if status == 487 { "cancelled" } else { "failed" };
                let reason = reason_for_status(status);
                Some(settled(true, None, None, reason, Some(status), outcome))
            }
            // A timeout whose claim was lost is not repeated.
            ForkInput::Timeout if self.timed_out => None,
            ForkInput::Timeout => {
                self.timed_out = true;
                let reason = EndReason::NoAnswer;
                Some(settled(
                    true,
                    Some(480),
                    None,
                    reason,
                    Some(480),
                    "no_answer",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The fake clock's start.
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    #[test]
    fn answered_on_one_table_withdraws_it_from_the_others() {
        let mut fork = Fork::new(t0(), [1, 2, 3]);
        let s = fork.on(t0(), ForkInput::Accepted(2)).unwrap();
        assert_eq!(
            s,
            Settled {
                claim: false,
                reject: None,
                except: Some(2),
                reason: EndReason::AnsweredElsewhere,
                code: None,
                outcome: "answered",
                missed: None,
            }
        );
    }

    #[test]
    fn a_reject_refuses_the_invite_and_ends_it_everywhere() {
        let mut fork = Fork::new(t0(), [1, 2]);
        let s = fork.on(t0(), ForkInput::Rejected(603)).unwrap();
        assert_eq!((s.reject, s.except, s.code), (Some(603), None, Some(603)));
        assert_eq!((s.reason, s.claim), (EndReason::Rejected, false));
    }

    #[test]
    fn the_last_table_gone_refuses_with_480() {
        let mut fork = Fork::new(t0(), [1, 2]);
        assert_eq!(fork.on(t0(), ForkInput::Gone(1)), None);
        assert_eq!(
            fork.on(t0(), ForkInput::Gone(1)),
            None,
            "the same table twice"
        );
        let s = fork.on(t0(), ForkInput::Gone(2)).unwrap();
        assert_eq!(
            (s.claim, s.reject, s.reason),
            (true, Some(480), EndReason::NoAnswer)
        );
        assert_eq!(s.outcome, "unavailable");
    }

    #[test]
    fn the_caller_cancelling_is_cancelled_everywhere_without_a_response() {
        let mut fork = Fork::new(t0(), [1]);
        let s = fork
            .on(t0(), ForkInput::CallerGaveUp { status: 487 })
            .unwrap();
        assert_eq!(
            (s.reject, s.reason, s.code),
            (None, EndReason::Cancelled, Some(487))
        );
        assert_eq!((s.claim, s.outcome), (true, "cancelled"));
        let s = Fork::new(t0(), [1])
            .on(t0(), ForkInput::CallerGaveUp { status: 500 })
            .unwrap();
        assert_eq!((s.reason, s.outcome), (EndReason::Failed, "failed"));
    }

    #[test]
    fn an_invite_is_screened_before_it_rings() {
        let codecs = [G711::Pcmu, G711::Pcma];
        let pcmu = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";
        let g722 = pcmu.replace("RTP/AVP 0", "RTP/AVP 9");
        assert_eq!(screen_invite(true, Some(pcmu), &codecs), Ok(()));
        assert_eq!(screen_invite(true, None, &codecs), Ok(()), "offerless");
        let status = |r: Result<(), Refused>| r.unwrap_err().status;
        assert_eq!(status(screen_invite(false, Some(pcmu), &codecs)), 503);
        assert_eq!(status(screen_invite(true, Some(&g722), &codecs)), 488);
        assert_eq!(screen_presence(Presence::Connections), Ok(()));
        assert_eq!(status(screen_presence(Presence::Unknown)), 404);
        let refused = screen_presence(Presence::NoConnections).unwrap_err();
        assert_eq!((refused.status, refused.outcome), (480, "unavailable"));
    }

    #[test]
    fn the_ring_timeout_refuses_once() {
        let mut fork = Fork::new(t0(), [1]);
        let s = fork.on(t0(), ForkInput::Timeout).unwrap();
        assert_eq!(
            (s.reject, s.reason, s.outcome),
            (Some(480), EndReason::NoAnswer, "no_answer")
        );
        assert_eq!(fork.on(t0(), ForkInput::Timeout), None);
    }

    #[test]
    fn every_end_but_an_answer_is_a_missed_call_with_its_times() {
        let rang = t0() + Duration::from_millis(40);
        let end = rang + Duration::from_secs(7);
        let missed = |input: ForkInput<u8>| {
            let mut fork = Fork::new(rang, [1, 2]);
            let _ = fork.on(end, ForkInput::Gone(2));
            fork.on(end, input).unwrap().missed
        };
        let m = |outcome, code| {
            Some(Missed {
                started: rang,
                ended: end,
                outcome,
                code,
                rang: true,
            })
        };
        assert_eq!(missed(ForkInput::Accepted(1)), None, "the table records it");
        assert_eq!(missed(ForkInput::Rejected(486)), m("rejected", 486));
        assert_eq!(missed(ForkInput::Gone(1)), m("unavailable", 480));
        assert_eq!(
            missed(ForkInput::CallerGaveUp { status: 487 }),
            m("cancelled", 487)
        );
        assert_eq!(
            missed(ForkInput::CallerGaveUp { status: 500 }),
            m("failed", 500)
        );
        assert_eq!(missed(ForkInput::Timeout), m("no_answer", 480));
    }

    #[test]
    fn a_fork_that_rang_nobody_says_so() {
        let mut fork = Fork::<u8>::new(t0(), []);
        let later = t0() + Duration::from_secs(60);
        let missed = fork.on(later, ForkInput::Timeout).unwrap().missed.unwrap();
        assert_eq!((missed.rang, missed.ended), (false, later));
    }

    #[test]
    fn an_invite_refused_before_ringing_is_a_missed_call() {
        let later = t0() + Duration::from_millis(3);
        let refused = screen_presence(Presence::Unknown).unwrap_err();
        let m = refused.missed(t0(), later);
        assert_eq!(
            m,
            Missed {
                started: t0(),
                ended: later,
                outcome: "not_found",
                code: 404,
                rang: false,
            }
        );
        let refused = screen_invite(false, None, &[G711::Pcmu]).unwrap_err();
        let m = refused.missed(t0(), later);
        assert_eq!((m.outcome, m.code), ("shutting_down", 503));
    }
}

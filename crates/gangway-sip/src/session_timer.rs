//! RFC 4028 session timers, sans IO: the headers (`Session-Expires`,
//! `Min-SE`, the `timer` option tag, `Allow`), who refreshes, and when a
//! refresh is due or the session has expired. Time is an input.
//!
//! `refresher=uac|uas` names a side of the transaction that carries it
//! (the latest refresh), not of the dialog: in a re-INVITE the far end
//! sends us, `uac` is the far end even when we placed the call. So every
//! negotiation here is phrased as "we sent the request" ([`on_response`])
//! or "we answer the request" ([`answer_request`]), and the outcome is kept
//! as [`Session::we_refresh`].

use std::time::{Duration, Instant};

/// The smallest session interval we accept and announce in `Min-SE` (the
/// RFC 4028 floor).
pub const MIN_SE: u32 = 90;

/// A `refresher` parameter: the UAC or the UAS of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A parsed `Session-Expires` value: `1800;refresher=uac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub secs: u32,
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// The header value, e.g. `90;refresher=uac`.
    pub fn value(&self) -> String {
        match self.refresher {
            Some(r) => format!("{};refresher={}", self.secs, r.as_str()),
            None => self.secs.to_string(),
        }
    }
}

/// `Session-Expires` (or compact `x`) value: delta-seconds, then
/// parameters; an unknown `refresher` value counts as absent. `None` when
/// the number is missing, zero or unreadable.
pub fn parse_session_expires(value: &str) -> Option<SessionExpires> {
    let mut parts = value.split(';');
    let secs = parse_delta(parts.next()?)?;
    let refresher = parts.find_map(|p| {
        let (key, value) = p.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        if value.eq_ignore_ascii_case("uac") {
            Some(Refresher::Uac)
        } else if value.eq_ignore_ascii_case("uas") {
            Some(Refresher::Uas)
        } else {
            None
        }
    });
    Some(SessionExpires { secs, refresher })
}

/// `Min-SE` value: delta-seconds, parameters ignored.
pub fn parse_min_se(value: &str) -> Option<u32> {
    parse_delta(value.split(';').next()?)
}

/// Positive delta-seconds; larger values saturate (a day is plenty).
fn parse_delta(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = text
        .parse::<u64>()
        .unwrap_or(u64::MAX)
        .min(u64::from(u32::MAX));
    u32::try_from(secs).ok().filter(|s| *s > 0)
}

/// What one SIP message says about session timers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerHeaders {
    pub session_expires: Option<SessionExpires>,
    pub min_se: Option<u32>,
    /// `timer` in `Supported` (or compact `k`).
    pub supports_timer: bool,
    /// `timer` in `Require`.
    pub requires_timer: bool,
    /// `UPDATE` in `Allow`; `None` without an `Allow` header.
    pub allows_update: Option<bool>,
}

impl TimerHeaders {
    /// From `(name, value)` pairs of a message's headers; names are
    /// matched without case, compact forms included.
    pub fn from_pairs<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> TimerHeaders {
        let mut out = TimerHeaders::default();
        for (name, value) in headers {
            let name = name.trim();
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("Session-Expires") || is("x") {
                if out.session_expires.is_none() {
                    out.session_expires = parse_session_expires(value);
                }
            } else if is("Min-SE") {
                out.min_se = out.min_se.max(parse_min_se(value));
            } else if is("Supported") || is("k") {
                out.supports_timer |= has_token(value, "timer");
            } else if is("Require") {
                out.requires_timer |= has_token(value, "timer");
            } else if is("Allow") {
                let update = has_token(value, "UPDATE");
                out.allows_update = Some(out.allows_update.unwrap_or(false) || update);
            }
        }
        out
    }

    /// The far end's `Min-SE` floor combined with ours.
    pub fn floor(&self) -> u32 {
        self.min_se.unwrap_or(0).max(MIN_SE)
    }
}

/// Whether a comma-separated header value lists `token` (no case).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A negotiated session timer: its interval and who refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub interval: u32,
    pub we_refresh: bool,
}

/// The far end's 2xx to a request we sent (the initial INVITE or a
/// refresh). Without `Session-Expires` there is no session timer
/// (RFC 4028 §7.2); `refresher=uas` makes the far end the refresher, `uac`
/// or no parameter leaves it to us.
pub fn on_response(response: &TimerHeaders) -> Option<Session> {
    let se = response.session_expires?;
    Some(Session {
        interval: se.secs,
        we_refresh: se.refresher != Some(Refresher::Uas),
    })
}

/// How we answer a request (an INVITE or a refresh) with timer headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Its `Session-Expires` is below our minimum: 422 (Session Interval
    /// Too Small) with `Min-SE`.
    TooSmall { min_se: u32 },
    /// A 2xx: with `session` it carries `Session-Expires` (and `Require:
    /// timer` when `require`); without, the session has no timer.
    Accept {
        session: Option<Session>,
        /// The `Session-Expires` value for the 2xx.
        header: Option<SessionExpires>,
        require: bool,
    },
}

/// Answering a request: its `Session-Expires` (reduced to `ours` when that
/// is smaller, never below either side's minimum), or ours when it only
/// says `Supported: timer`. The caller refreshes (`refresher=uac`) when it
/// supports timers and did not ask us to; otherwise we do. `ours` is 0 when
/// we do not ask for timers ourselves.
pub fn answer_request(request: &TimerHeaders, ours: u32) -> Answer {
    let interval = match request.session_expires {
        Some(se) if se.secs < MIN_SE => return Answer::TooSmall { min_se: MIN_SE },
        Some(se) if ours > 0 => se.secs.min(ours.max(request.floor())),
        Some(se) => se.secs,
        None if request.supports_timer && ours > 0 => ours.max(request.floor()),
        None => {
            return Answer::Accept {
                session: None,
                header: None,
                require: false,
            }
        }
    };
    let asked_us = request
        .session_expires
        .is_some_and(|se| se.refresher == Some(Refresher::Uas));
    let refresher = if request.supports_timer && !asked_us {
        Refresher::Uac
    } else {
        Refresher::Uas
    };
    Answer::Accept {
        session: Some(Session {
            interval,
            we_refresh: refresher == Refresher::Uas,
        }),
        header: Some(SessionExpires {
            secs: interval,
            refresher: Some(refresher),
        }),
        require: request.supports_timer,
    }
}

/// The timer headers of an initial INVITE besides `Supported: timer`:
/// with `ours > 0` a `Session-Expires` (the far end picks the refresher)
/// and `Min-SE` (ours, or the larger one a 422 named).
pub fn invite_headers(ours: u32, min_se: u32) -> (Option<SessionExpires>, Option<u32>) {
    if ours == 0 {
        return (None, None);
    }
    let min_se = min_se.max(MIN_SE);
    let se = SessionExpires {
        secs: ours.max(min_se),
        refresher: None,
    };
    (Some(se), Some(min_se))
}

/// Before the session expires, the side that does not refresh sends BYE
/// at `interval - min(32, interval / 3)` after the last refresh (RFC 4028
/// §10).
pub fn expiry_margin(interval: u32) -> Duration {
    Duration::from_secs(u64::from((interval / 3).min(32)))
}

/// What the timer asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a refresh (we are the refresher).
    Refresh,
    /// The session expired without a successful refresh: end the call.
    Expired,
}

/// One dialog's session timer, once negotiated.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    session: Session,
    /// The last successful refresh (or the session's start).
    last: Instant,
    /// A refresh of ours is out: nothing is due until its outcome.
    in_flight: bool,
    /// When a failed refresh is tried again.
    retry_at: Option<Instant>,
    /// The `Min-SE` we send (raised by a 422).
    min_se: u32,
}

impl SessionTimer {
    /// `min_se`: the `Min-SE` our refreshes carry (at least [`MIN_SE`]).
    pub fn new(now: Instant, session: Session, min_se: u32) -> SessionTimer {
        SessionTimer {
            session,
            last: now,
            in_flight: false,
            retry_at: None,
            min_se: min_se.max(MIN_SE),
        }
    }

    pub fn session(&self) -> Session {
        self.session
    }

    pub fn min_se(&self) -> u32 {
        self.min_se
    }

    /// A refresh succeeded (either way) with this outcome.
    pub fn refreshed(&mut self, now: Instant, session: Session) {
        self.session = session;
        self.last = now;
        self.in_flight = false;
        self.retry_at = None;
    }

    /// Half the interval after the last refresh (or the retry time).
    pub fn refresh_at(&self) -> Instant {
        self.retry_at
            .unwrap_or(self.last + Duration::from_secs(u64::from(self.session.interval)) / 2)
    }

    /// When the session counts as expired without a refresh.
    pub fn expires_at(&self) -> Instant {
        let interval = Duration::from_secs(u64::from(self.session.interval));
        self.last + interval - expiry_margin(self.session.interval)
    }

    /// The next instant [`SessionTimer::poll`] has something to say; `None`
    /// while our refresh is out.
    pub fn deadline(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        Some(if self.session.we_refresh {
            self.refresh_at().min(self.expires_at())
        } else {
            self.expires_at()
        })
    }

    pub fn poll(&self, now: Instant) -> Option<Due> {
        if self.in_flight {
            return None;
        }
        if now >= self.expires_at() {
            return Some(Due::Expired);
        }
        (self.session.we_refresh && now >= self.refresh_at()).then_some(Due::Refresh)
    }

    /// Our refresh request is being sent.
    pub fn sending(&mut self) {
        self.in_flight = true;
        self.retry_at = None;
    }

    /// Our refresh failed without ending the dialog (491, 5xx…): try again
    /// after `delay`, unless the session expires first.
    pub fn retry_after(&mut self, now: Instant, delay: Duration) {
        self.in_flight = false;
        self.retry_at = Some(now + delay);
    }

    /// A 422 to our refresh: its `Min-SE` becomes our floor and interval;
    /// retry at once.
    pub fn raise(&mut self, now: Instant, min_se: u32) {
        self.min_se = self.min_se.max(min_se);
        self.session.interval = self.session.interval.max(self.min_se);
        self.retry_after(now, Duration::ZERO);
    }

    /// The `Session-Expires` of a refresh we send: we stay the refresher
    /// unless the far end is (then a re-INVITE of ours, e.g. a hold, keeps
    /// it so with `refresher=uas`).
    pub fn request_header(&self) -> SessionExpires {
        SessionExpires {
            secs: self.session.interval,
            refresher: Some(if self.session.we_refresh {
                Refresher::Uac
            } else {
                Refresher::Uas
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> TimerHeaders {
        TimerHeaders::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn parses_session_expires_and_min_se() {
        assert_eq!(
            parse_session_expires("1800;refresher=uac"),
            Some(SessionExpires {
                secs: 1800,
                refresher: Some(Refresher::Uac)
            })
        );
        assert_eq!(
            parse_session_expires(" 90 ; Refresher = UAS "),
            Some(SessionExpires {
                secs: 90,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(
            parse_session_expires("4000;x-foo=1"),
            Some(SessionExpires {
                secs: 4000,
                refresher: None
            })
        );
        assert_eq!(
            parse_session_expires("600;refresher=proxy")
                .unwrap()
                .refresher,
            None
        );
        assert_eq!(parse_session_expires("99999999999").unwrap().secs, u32::MAX);
        for bad in ["", "abc", "-5", "0", "1.5;refresher=uac", ";refresher=uac"] {
            assert_eq!(parse_session_expires(bad), None, "{bad:?}");
        }
        assert_eq!(parse_min_se("90"), Some(90));
        assert_eq!(parse_min_se("120;foo"), Some(120));
        assert_eq!(parse_min_se("x"), None);
        assert_eq!(
            SessionExpires {
                secs: 90,
                refresher: Some(Refresher::Uac)
            }
            .value(),
            "90;refresher=uac"
        );
        assert_eq!(
            SessionExpires {
                secs: 1800,
                refresher: None
            }
            .value(),
            "1800"
        );
    }

    #[test]
    fn reads_the_timer_headers_of_a_message() {
        let h = headers(&[
            ("Via", "SIP/2.0/UDP x"),
            ("x", "300;refresher=uas"),
            ("k", "100rel"),
            ("Supported", "replaces, Timer"),
            ("Require", "timer"),
            ("Min-SE", "120"),
            ("Allow", "INVITE, ACK, BYE"),
            ("Allow", "update"),
        ]);
        assert_eq!(
            h,
            TimerHeaders {
                session_expires: Some(SessionExpires {
                    secs: 300,
                    refresher: Some(Refresher::Uas)
                }),
                min_se: Some(120),
                supports_timer: true,
                requires_timer: true,
                allows_update: Some(true),
            }
        );
        assert_eq!(h.floor(), 120);
        let plain = headers(&[("Supported", "100rel, timers"), ("Allow", "INVITE, BYE")]);
        assert!(!plain.supports_timer, "a token, not a substring");
        assert_eq!(plain.allows_update, Some(false));
        assert_eq!(plain.session_expires, None);
        assert_eq!(plain.floor(), MIN_SE);
        assert_eq!(headers(&[]).allows_update, None);
    }

    #[test]
    fn the_answer_to_our_request_says_who_refreshes() {
        let se = |v: &str| headers(&[("Session-Expires", v)]);
        assert_eq!(
            on_response(&se("90;refresher=uac")),
            Some(Session {
                interval: 90,
                we_refresh: true
            })
        );
        assert_eq!(
            on_response(&se("1800;refresher=uas")),
            Some(Session {
                interval: 1800,
                we_refresh: false
            })
        );
        assert_eq!(
            on_response(&se("600")),
            Some(Session {
                interval: 600,
                we_refresh: true
            }),
            "no refresher parameter: we refresh"
        );
        assert_eq!(on_response(&headers(&[])), None, "no timer");
    }

    #[test]
    fn answering_a_request_picks_interval_and_refresher() {
        let accept = |session: Session, refresher: Refresher, require: bool| Answer::Accept {
            session: Some(session),
            header: Some(SessionExpires {
                secs: session.interval,
                refresher: Some(refresher),
            }),
            require,
        };
        let they = |interval| Session {
            interval,
            we_refresh: false,
        };
        let we = |interval| Session {
            interval,
            we_refresh: true,
        };
        // The caller supports timers and asks to refresh, or leaves it to us.
        let r = headers(&[
            ("Supported", "timer"),
            ("Session-Expires", "90;refresher=uac"),
        ]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(they(90), Refresher::Uac, true)
        );
        let r = headers(&[("Supported", "timer"), ("Session-Expires", "900")]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(they(900), Refresher::Uac, true)
        );
        // It asks us to refresh.
        let r = headers(&[
            ("Supported", "timer"),
            ("Session-Expires", "900;refresher=uas"),
        ]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(we(900), Refresher::Uas, true)
        );
        // A proxy added Session-Expires for a caller without timer support:
        // we refresh, and there is no Require.
        let r = headers(&[("Session-Expires", "900;refresher=uac")]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(we(900), Refresher::Uas, false)
        );
        // A longer interval than ours is reduced, never below its Min-SE.
        let r = headers(&[("Supported", "timer"), ("Session-Expires", "7200")]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(they(1800), Refresher::Uac, true)
        );
        let r = headers(&[
            ("Supported", "timer"),
            ("Session-Expires", "7200"),
            ("Min-SE", "3600"),
        ]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(they(3600), Refresher::Uac, true)
        );
        // Timers off on our side: theirs is honoured as asked.
        let r = headers(&[("Supported", "timer"), ("Session-Expires", "7200")]);
        assert_eq!(
            answer_request(&r, 0),
            accept(they(7200), Refresher::Uac, true)
        );
        // Only Supported: timer: we ask for ours, they refresh.
        let r = headers(&[("Supported", "timer"), ("Min-SE", "2000")]);
        assert_eq!(
            answer_request(&r, 1800),
            accept(they(2000), Refresher::Uac, true)
        );
        assert_eq!(
            answer_request(&r, 0),
            Answer::Accept {
                session: None,
                header: None,
                require: false
            }
        );
        // Nothing about timers: none.
        assert_eq!(
            answer_request(&headers(&[]), 1800),
            Answer::Accept {
                session: None,
                header: None,
                require: false
            }
        );
        // Too brief.
        let r = headers(&[("Supported", "timer"), ("Session-Expires", "60")]);
        assert_eq!(
            answer_request(&r, 1800),
            Answer::TooSmall { min_se: MIN_SE }
        );
    }

    #[test]
    fn initial_invite_headers() {
        let se = |secs| {
            Some(SessionExpires {
                secs,
                refresher: None,
            })
        };
        assert_eq!(invite_headers(1800, 0), (se(1800), Some(90)));
        // After a 422 with Min-SE: 3600.
        assert_eq!(invite_headers(3600, 3600), (se(3600), Some(3600)));
        assert_eq!(invite_headers(0, 0), (None, None));
    }

    #[test]
    fn the_refresher_refreshes_at_half_the_interval() {
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        let mut t = SessionTimer::new(
            t0,
            Session {
                interval: 90,
                we_refresh: true,
            },
            0,
        );
        assert_eq!(t.deadline(), Some(t0 + s(45)));
        assert_eq!(t.poll(t0 + s(44)), None);
        assert_eq!(t.poll(t0 + s(45)), Some(Due::Refresh));
        assert_eq!(
            t.request_header().value(),
            "90;refresher=uac",
            "we stay the refresher"
        );
        t.sending();
        assert_eq!(t.deadline(), None, "waiting for the outcome");
        assert_eq!(t.poll(t0 + s(100)), None, "no expiry while it is out");
        // 2xx 40 s later (Timer B territory); the far end now refreshes.
        t.refreshed(
            t0 + s(85),
            Session {
                interval: 120,
                we_refresh: false,
            },
        );
        assert_eq!(t.deadline(), Some(t0 + s(85 + 120 - 32)));
        assert_eq!(t.poll(t0 + s(150)), None, "not ours to refresh");
        assert_eq!(t.poll(t0 + s(173)), Some(Due::Expired));
        assert_eq!(t.request_header().value(), "120;refresher=uas");
    }

    #[test]
    fn failed_refreshes_are_retried_until_the_session_expires() {
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        let mut t = SessionTimer::new(
            t0,
            Session {
                interval: 90,
                we_refresh: true,
            },
            0,
        );
        t.sending();
        t.retry_after(t0 + s(45), s(3));
        assert_eq!(t.deadline(), Some(t0 + s(48)));
        assert_eq!(t.poll(t0 + s(48)), Some(Due::Refresh));
        t.sending();
        t.retry_after(t0 + s(58), s(5));
        assert_eq!(t.deadline(), Some(t0 + s(60)), "expiry comes first");
        assert_eq!(t.poll(t0 + s(60)), Some(Due::Expired));
        // A 422 raises the interval and Min-SE and retries at once.
        let mut t = SessionTimer::new(
            t0,
            Session {
                interval: 90,
                we_refresh: true,
            },
            0,
        );
        t.sending();
        t.raise(t0 + s(45), 300);
        assert_eq!((t.session().interval, t.min_se()), (300, 300));
        assert_eq!(t.poll(t0 + s(45)), Some(Due::Refresh));
    }

    #[test]
    fn the_other_side_must_refresh_before_the_margin() {
        // N - min(32, N/3): 90 → 60, 1800 → 1768, 95 → 64.
        assert_eq!(expiry_margin(90), Duration::from_secs(30));
        assert_eq!(expiry_margin(1800), Duration::from_secs(32));
        assert_eq!(expiry_margin(95), Duration::from_secs(31));
        let t0 = Instant::now();
        let t = SessionTimer::new(
            t0,
            Session {
                interval: 90,
                we_refresh: false,
            },
            0,
        );
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(t.poll(t0 + Duration::from_secs(59)), None);
        assert_eq!(t.poll(t0 + Duration::from_secs(60)), Some(Due::Expired));
    }
}

//! SIP over WebSocket (RFC 7118): the front end for unmodified JsSIP and
//! SIP.js apps, sans IO.
//!
//! One [`SipWsFront`] per WebSocket (a "flow", RFC 5626). It reads the
//! browser's SIP messages and turns them into the call core's
//! [`Request`]s, and turns the core's notifications back into SIP for the
//! browser. It decides nothing about calls: it keeps the browser-side
//! dialogs (tags, CSeqs, the transactions to answer) and the flow's
//! registrations. The shell feeds it ([`SipWsFront::handle_frame`],
//! [`SipWsFront::handle_core`], [`SipWsFront::handle_register_answer`]) and
//! carries out what [`SipWsFront::poll_output`] gives.
//!
//! - `wire.rs`: parsing and writing messages;
//! - `register.rs`: REGISTER relayed to the registrar with the browser's
//!   own credentials; our Contact upstream carries a flow token;
//! - `dialogs.rs`: calls the browser places and calls offered to it;
//! - `in_dialog.rs`: BYE, CANCEL, re-INVITE/UPDATE, INFO, REFER;
//! - `far_hold.rs`: the far end's hold and resume, re-offered to the browser.

mod dialogs;
mod far_hold;
mod in_dialog;
mod register;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_core::calls::{Credentials, Notification, Problem, Refusal, Request};

use crate::CallId;
use dialogs::Dialog;
pub use register::{Binding, RegisterAnswer, RegisterRelay};
use wire::{Frame, Incoming, Malformed, ALLOW};

/// What every flow of a gateway shares.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// Host (and port) in our Via and Contact towards browsers.
    pub host: String,
    /// Our `Server`/`User-Agent` value.
    pub agent: String,
    /// Keys flow tokens and tags: one per process, so tokens are not
    /// guessable and a browser's token is the same on every flow.
    pub key: Arc<RandomState>,
}

impl FrontSettings {
    pub fn new(host: String, agent: String) -> Self {
        FrontSettings {
            host,
            agent,
            key: Arc::new(RandomState::new()),
        }
    }
}

/// What the shell carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontOutput {
    /// A SIP message for the browser (one text frame).
    Send(String),
    /// A request for the call core.
    Core(Request<CallId>),
    /// A REGISTER to relay to the registrar; its answer comes back with
    /// [`SipWsFront::handle_register_answer`].
    Register(RegisterRelay),
    /// The registrar accepted a binding: route its calls to this flow.
    Bind(Binding),
    /// The binding is gone (the browser unregistered).
    Unbind { token: String },
    /// A REGISTER carried a bearer token (JsSIP's `authorization_jwt`)
    /// instead of a digest: the shell checks it and registers `user` with
    /// the password it holds; the outcome comes back with
    /// [`SipWsFront::handle_register_answer`].
    SignIn {
        id: u64,
        user: String,
        token: String,
    },
    /// The token-signed-in `user` unregistered.
    SignOut { user: String },
    /// A message was refused (`why`: a metric label); any answer to it is
    /// a `Send` of its own.
    Rejected(&'static str),
    /// Close the socket: the browser sent what we cannot answer.
    Close { code: u16, reason: String },
}

/// Methods RFC 3261 and its extensions define: a request with one of them
/// that does not parse is malformed (400), any other method unknown (501).
const KNOWN_METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PRACK",
    "PUBLISH",
];

/// WebSocket close code for a message that is not SIP (RFC 6455 1002).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// One flow's browser-side SIP state.
#[derive(Debug)]
pub struct SipWsFront {
    settings: FrontSettings,
    peer: SocketAddr,
    dialogs: HashMap<CallId, Dialog>,
    registers: HashMap<u64, register::Pending>,
    /// What the registrar accepted on this flow.
    bindings: Vec<Binding>,
    serial: u64,
    /// The time of the input being handled.
    now: Instant,
    out: VecDeque<FrontOutput>,
}

impl SipWsFront {
    pub fn new(settings: FrontSettings, peer: SocketAddr) -> Self {
        SipWsFront {
            settings,
            peer,
            dialogs: HashMap::new(),
            registers: HashMap::new(),
            bindings: Vec::new(),
            serial: 0,
            now: Instant::now(),
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<FrontOutput> {
        self.out.pop_front()
    }

    /// This flow's bindings (for the shell to drop when the flow ends).
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The browser came back on another socket (RFC 5626: the newest
    /// flow): our answers now name that address in `received`/`rport`.
    pub fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = peer;
    }

    /// A binding made on another socket of the same browser (a reconnect
    /// that moved here): calls for it are offered through this flow.
    pub fn adopt(&mut self, binding: Binding) {
        self.bindings.retain(|b| b.token != binding.token);
        self.bindings.push(binding);
    }

    /// Whether a call of the core's is one of this flow's dialogs.
    pub fn has_call(&self, call: &CallId) -> bool {
        self.dialogs.contains_key(call)
    }

    /// When [`Self::handle_timeout`] is due: the first session timer
    /// (RFC 4028) of a call the browser stopped refreshing, or the retry of
    /// a far-end hold the browser answered with `491`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dialogs
            .values()
            .flat_map(|d| [d.expires_at, d.far_hold.retry_at()])
            .flatten()
            .min()
    }

    /// Ends the calls whose session timer ran out: the browser, as the
    /// refresher, sent no refresh in time (RFC 4028 §10).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.retry_far_holds(now);
        let expired: Vec<CallId> = self
            .dialogs
            .iter()
            .filter(|(_, d)| d.expires_at.is_some_and(|t| t <= now))
            .map(|(call, _)| call.clone())
            .collect();
        for call in expired {
            if let Some(d) = self.dialogs.get_mut(&call) {
                d.expires_at = None;
            }
            self.out.push_back(FrontOutput::Rejected("session_expired"));
            self.out
                .push_back(FrontOutput::Core(Request::Hangup { call }));
        }
    }

    /// The session timer starts again: the call was answered or refreshed.
    fn refreshed(&mut self, call: &CallId) {
        let now = self.now;
        if let Some(d) = self.dialogs.get_mut(call) {
            d.expires_at = d.session_expires.map(|se| now + session_deadline(se));
        }
    }

    /// One text (or binary, decoded) frame from the browser.
    pub fn handle_frame(&mut self, now: Instant, text: &str) {
        self.now = now;
        match wire::parse(text) {
            Ok(Frame::Ping) => self.send("\r\n".to_string()),
            Ok(Frame::Response(response)) => self.on_response(*response),
            Ok(Frame::Request(request)) => self.on_request(*request),
            Ok(Frame::Unreadable {
                method,
                version,
                reply,
            }) => {
                let (status, why) = if version != "SIP/2.0" {
                    (505, "version")
                } else if KNOWN_METHODS.contains(&method.as_str()) {
                    (400, "malformed")
                } else {
                    (501, "method")
                };
                self.out.push_back(FrontOutput::Rejected(why));
                let allow = [("Allow", ALLOW.to_string())];
                let extra: &[(&str, String)] = if status == 501 { &allow } else { &[] };
                self.reply_to(&reply, status, extra);
            }
            Err(Malformed::Unparseable(why)) => {
                self.out.push_back(FrontOutput::Rejected("unparseable"));
                self.out.push_back(FrontOutput::Close {
                    code: CLOSE_PROTOCOL_ERROR,
                    reason: truncate(&format!("not a SIP message: {why}"), 100),
                });
            }
            Err(Malformed::Unanswerable(header)) => {
                self.out.push_back(FrontOutput::Rejected("missing_header"));
                self.out.push_back(FrontOutput::Close {
                    code: CLOSE_PROTOCOL_ERROR,
                    reason: format!("SIP request without {header}"),
                });
            }
        }
    }

    fn on_request(&mut self, req: Incoming) {
        if req.version != "SIP/2.0" {
            self.out.push_back(FrontOutput::Rejected("version"));
            return self.reply(&req, 505, &[]);
        }
        match req.method.as_str() {
            "REGISTER" => self.on_register(req),
            "INVITE" if wire::param(&req.reply.to, "tag").is_none() => self.on_invite(req),
            "INVITE" | "UPDATE" => self.on_reoffer(req),
            "ACK" => {}
            "CANCEL" => self.on_cancel(req),
            "BYE" => self.on_bye(req),
            "INFO" => self.on_info(req),
            "REFER" => self.on_refer(req),
            "OPTIONS" => self.reply(
                &req,
                200,
                &[
                    ("Allow", ALLOW.to_string()),
                    ("Accept", "application/sdp".to_string()),
                ],
            ),
            "NOTIFY" | "MESSAGE" | "SUBSCRIBE" | "PUBLISH" | "PRACK" => {
                self.out.push_back(FrontOutput::Rejected("method"));
                self.reply(&req, 405, &[("Allow", ALLOW.to_string())]);
            }
            _ => {
                self.out.push_back(FrontOutput::Rejected("method"));
                self.reply(&req, 501, &[("Allow", ALLOW.to_string())]);
            }
        }
    }

    /// What the core says about one of this flow's calls.
    pub fn handle_core(&mut self, now: Instant, call: CallId, n: Notification) {
        self.now = now;
        match n {
            Notification::Incoming { from, display, to } => {
                self.offer_call(call, from, display, to)
            }
            n => self.on_notification(call, n),
        }
    }

    /// The core refused a request of ours.
    pub fn handle_refusal(&mut self, refusal: Refusal<CallId>) {
        let Some(call) = refusal.call else { return };
        let status = match refusal.problem {
            Problem::InvalidSdp => 488,
            Problem::TooManyCalls => 486,
            Problem::ShuttingDown | Problem::NoCapacity => 503,
            Problem::InvalidMessage => 400,
            Problem::UnknownCall | Problem::NotRinging => 481,
            Problem::HoldFailed | Problem::InvalidState => 491,
            _ => 500,
        };
        self.refused(call, status);
    }

    fn send(&mut self, message: String) {
        self.out.push_back(FrontOutput::Send(message));
    }

    /// Answers a request outside any dialog state.
    fn reply(&mut self, req: &Incoming, status: u16, extra: &[(&str, String)]) {
        self.reply_to(&req.reply, status, extra);
    }

    fn reply_to(&mut self, reply: &wire::Reply, status: u16, extra: &[(&str, String)]) {
        let tag = (status > 100).then(|| self.tag());
        let mut headers = vec![("Server", self.settings.agent.clone())];
        headers.extend(extra.iter().map(|(n, v)| (*n, v.clone())));
        let msg = wire::response(
            reply,
            self.peer,
            status,
            reason_phrase(status),
            tag.as_deref(),
            &headers,
            None,
        );
        self.send(msg);
    }

    /// A fresh tag or branch suffix.
    fn tag(&mut self) -> String {
        self.serial += 1;
        format!(
            "{:012x}",
            self.settings.key.hash_one((self.serial, self.peer)) >> 16
        )
    }

    fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.tag())
    }

    fn our_via(&mut self) -> String {
        let branch = self.branch();
        format!("SIP/2.0/WS {};branch={branch}", self.settings.host)
    }

    fn our_contact(&self) -> String {
        format!("<sip:gangway@{};transport=ws>", self.settings.host)
    }
}

/// How long after a refresh a session of `se` seconds ends without the
/// next one: RFC 4028 §10 leaves the refresher `min(32, se/3)` seconds of
/// slack before the end.
fn session_deadline(se: u32) -> Duration {
    Duration::from_secs(u64::from(se - (se / 3).min(32)))
}

/// What a request says about who sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    None,
    /// A digest answer, passed on upstream as is.
    Digest(Credentials),
    /// `Authorization: Bearer <jwt>` (or a bare JWT): JsSIP's
    /// `authorization_jwt`, sent on every request.
    Token(String),
}

fn auth_of(req: &Incoming) -> Auth {
    use rsipstack::sip::prelude::HeadersExt;
    if let Some(value) = req.request.header_value("Proxy-Authorization") {
        return Auth::Digest(Credentials { proxy: true, value });
    }
    let Some(value) = req.request.header_value("Authorization") else {
        return Auth::None;
    };
    let scheme = value.split_whitespace().next().unwrap_or("");
    if scheme.eq_ignore_ascii_case("digest") {
        return Auth::Digest(Credentials {
            proxy: false,
            value,
        });
    }
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        value[scheme.len()..].trim().to_string()
    } else {
        value.trim().to_string()
    };
    Auth::Token(token)
}

/// The digest credentials a request carries (a token is not passed on).
fn credentials_of(req: &Incoming) -> Option<Credentials> {
    match auth_of(req) {
        Auth::Digest(c) => Some(c),
        Auth::None | Auth::Token(_) => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The RFC 3261 reason phrases we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        603 => "Decline",
        s if s < 200 => "Provisional",
        s if s < 300 => "OK",
        s if s < 400 => "Redirection",
        s if s < 500 => "Request Failure",
        s if s < 600 => "Server Failure",
        _ => "Global Failure",
    }
}

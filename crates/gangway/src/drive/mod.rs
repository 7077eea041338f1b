//! The call core of one front-end connection and the I/O it commands,
//! shared by both front ends (the JSON API's sessions and SIP over
//! WebSocket). Nothing here decides anything about a call:
//! - `exec.rs`: the core's outputs carried out (shards, SIP dialogs,
//!   ringing claims); what the client must hear is queued in `to_client`;
//! - `events.rs`: the media and SIP legs' events in the core's words;
//! - `observe.rs`: the core's observations as logs and metrics.

mod events;
mod exec;
mod observe;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use gangway_core::calls::{IncomingOffer, Input, Notification, Problem, Refusal, Request};
use gangway_core::Calls;
use gangway_core::EndReason;
use gangway_media::LegEvent;
use gangway_rtc::PeerId;
use gangway_signal::CallId;
use gangway_sip::SipEvent;
use tokio::sync::mpsc;

use crate::inbound::Ringing;
use crate::Shared;
pub(crate) use exec::Handles;

/// What the core wants the front end to tell its client.
#[derive(Debug)]
pub(crate) enum ToClient {
    Notify(CallId, Notification),
    Refuse(Refusal<CallId>),
}

/// Where a connection's legs report: created with the driver, polled by
/// the connection's loop.
pub(crate) struct LegEvents {
    pub media: mpsc::Receiver<(PeerId, LegEvent)>,
    pub sip: mpsc::Receiver<(u64, SipEvent)>,
}

pub(crate) struct CallDriver {
    pub shared: Arc<Shared>,
    /// The connection's number (the table's id space, ringing claims).
    pub number: u64,
    /// Every call decision.
    pub calls: Calls<CallId>,
    /// The I/O side of the calls: shards, SIP dialogs, ringing calls.
    pub handles: Handles,
    /// Drained by the front end after each input.
    pub to_client: Vec<ToClient>,
    /// `json` or `sip_ws`: the `front_end` label of the calls' metrics.
    pub front_end: &'static str,
    /// A client signed in with a token as this SIP user, whose password
    /// the gateway holds: its own calls answer challenges with it.
    pub account: Option<(String, String)>,
    /// The client's address: its calls count against `calls.max_per_address`.
    pub peer_ip: IpAddr,
}

impl CallDriver {
    pub fn new(
        shared: Arc<Shared>,
        number: u64,
        settings: gangway_core::calls::Settings,
        front_end: &'static str,
        peer_ip: IpAddr,
    ) -> (CallDriver, LegEvents) {
        let (legs_tx, media) = mpsc::channel(crate::queues::LEG_EVENTS);
        let (sip_tx, sip) = mpsc::channel(crate::queues::SIP_EVENTS);
        let driver = CallDriver {
            calls: Calls::new(settings, number as u32),
            handles: Handles::new(legs_tx, sip_tx),
            shared,
            number,
            to_client: Vec::new(),
            front_end,
            account: None,
            peer_ip,
        };
        (driver, LegEvents { media, sip })
    }

    /// Hands one input to the core and carries out what it asks for.
    pub fn feed(&mut self, input: Input<CallId>) {
        if let Input::Request(Request::Call { call, .. }) = &input {
            if let Some((limit, message)) = self.over_address_limit() {
                self.shared.metrics.limit_refused(limit);
                self.to_client.push(ToClient::Refuse(Refusal {
                    call: Some(call.clone()),
                    problem: Problem::TooManyCalls,
                    message,
                }));
                return;
            }
        }
        self.calls.handle(Instant::now(), input);
        self.run_outputs();
    }

    /// The per-address limit a new call from this client would pass, if
    /// any. Counted across the address's sockets, which the core's table
    /// (one connection) cannot see.
    fn over_address_limit(&self) -> Option<(&'static str, String)> {
        let calls = &self.shared.config.calls;
        if !self
            .shared
            .new_call_rate
            .allow(self.peer_ip, Instant::now())
        {
            let max = calls.max_new_per_second_per_address;
            let message = format!("at most {max} new calls per second per address");
            return Some(("new_calls_per_address", message));
        }
        if !self.shared.calls_per_address.has_room(self.peer_ip) {
            let max = calls.max_per_address;
            let message = format!("at most {max} concurrent calls per address");
            return Some(("calls_per_address", message));
        }
        None
    }

    /// The core's timer fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.calls.handle_timeout(now);
        self.run_outputs();
    }

    /// An incoming call rings on this connection.
    pub fn ring(&mut self, ringing: Arc<Ringing>) {
        let call = ringing.id.clone();
        let offer = IncomingOffer {
            from: ringing.from.clone(),
            display: ringing.display.clone(),
            to: ringing.to.clone(),
            sip_offer: ringing.sdp_offer.clone(),
            log_id: ringing.log_id.clone(),
        };
        self.handles.ringing.insert(call.clone(), ringing);
        self.feed(Input::Incoming { call, offer });
    }

    /// It stopped ringing here.
    pub fn withdraw(&mut self, call: CallId, reason: EndReason, code: Option<u16>) {
        self.handles.ringing.remove(&call);
        self.feed(Input::Withdrawn { call, reason, code });
    }

    pub fn take_to_client(&mut self) -> Vec<ToClient> {
        std::mem::take(&mut self.to_client)
    }
}

//! SIP over WebSocket bindings: which flow (WebSocket) takes the calls
//! for a flow token, the user part of the Contact we registered upstream
//! for a browser. A browser that reconnects registers the same token on
//! its new connection: if the old flow is parked (its socket lost, calls
//! up), the new socket moves there and the binding stays with it;
//! otherwise the new flow takes the binding, and the old flow's closing
//! leaves it alone. A binding whose flow is gone stays known until its
//! registration expires, and its calls get 480 (RFC 5626 §5.3: the flow
//! failed) rather than 404.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gangway_sip::RelayedRegister;

use crate::sip_ws::Handover;
use crate::users::{InboxTx, Lookup};

/// Where a flow takes calls and sockets.
#[derive(Clone)]
pub(crate) struct FlowRef {
    pub number: u64,
    pub inbox: InboxTx,
    pub handover: Handover,
}

struct Entry {
    /// The flow; `None` once it is gone.
    flow: Option<FlowRef>,
    /// The REGISTER that made the binding, to remove it upstream.
    last_register: Option<RelayedRegister>,
    /// Its socket is lost and its calls wait for the browser.
    parked: bool,
    expires_at: Instant,
}

#[derive(Default)]
pub(crate) struct Flows {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Flows {
    /// Binds `token` to `flow`, or, when the token's flow is parked, keeps
    /// it there and returns where to move the new socket.
    pub fn bind(
        &self,
        token: String,
        flow: FlowRef,
        expires: u32,
        last_register: Option<RelayedRegister>,
    ) -> Option<Handover> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, e| e.expires_at > now);
        let expires_at = now + Duration::from_secs(u64::from(expires));
        if let Some(e) = entries.get_mut(&token) {
            if let Some(parked) = e
                .flow
                .as_ref()
                .filter(|f| e.parked && f.number != flow.number)
            {
                let handover = parked.handover.clone();
                e.expires_at = expires_at;
                e.last_register = last_register.or(e.last_register.take());
                return Some(handover);
            }
        }
        entries.insert(
            token,
            Entry {
                flow: Some(flow),
                last_register,
                parked: false,
                expires_at,
            },
        );
        None
    }

    /// `flow` lost its socket (`true`) or got one back.
    pub fn flow_parked(&self, flow: u64, parked: bool) {
        for entry in self.lock().values_mut() {
            if entry.flow.as_ref().is_some_and(|f| f.number == flow) {
                entry.parked = parked;
            }
        }
    }

    /// The browser unregistered `token` on `flow`.
    pub fn unbind(&self, token: &str, flow: u64) {
        let mut entries = self.lock();
        if entries
            .get(token)
            .is_some_and(|e| e.flow.as_ref().is_some_and(|f| f.number == flow))
        {
            entries.remove(token);
        }
    }

    /// `flow` closed: its bindings lose their flow (unless a newer flow
    /// took them over). Returns their tokens.
    pub fn flow_closed(&self, flow: u64) -> Vec<String> {
        let mut orphans = Vec::new();
        for (token, entry) in self.lock().iter_mut() {
            if entry.flow.as_ref().is_some_and(|f| f.number == flow) {
                entry.flow = None;
                entry.parked = false;
                orphans.push(token.clone());
            }
        }
        orphans
    }

    /// A binding still without a flow: forgotten here, with the REGISTER
    /// that made it (to remove it upstream).
    pub fn orphan(&self, token: &str) -> Option<RelayedRegister> {
        let mut entries = self.lock();
        if entries.get(token)?.flow.is_some() {
            return None;
        }
        entries.remove(token)?.last_register
    }

    /// Who a call for `user` rings, when it names a binding.
    pub fn lookup(&self, user: &str) -> Option<Lookup> {
        let entries = self.lock();
        let entry = entries.get(user)?;
        if entry.expires_at <= Instant::now() {
            return None;
        }
        Some(match &entry.flow {
            // A parked flow rings too: what it sends waits for the socket.
            Some(f) => Lookup::Sessions(vec![(f.number, f.inbox.clone())]),
            None => Lookup::NoSessions,
        })
    }

    pub fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.flow.is_some() && !e.parked)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! SIP over WebSocket bindings: which flow (WebSocket) takes the calls
//! for a flow token, the user part of the Contact we registered upstream
//! for a browser. A browser that reconnects registers the same token on
//! its new flow, which takes over; the old flow's closing then leaves the
//! binding alone. A binding whose flow is gone stays known until its
//! registration expires, and its calls get 480 (RFC 5626 §5.3: the flow
//! failed) rather than 404.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::users::{InboxTx, Lookup};

struct Entry {
    /// The flow's number and inbox; `None` once the flow is gone.
    flow: Option<(u64, InboxTx)>,
    expires_at: Instant,
}

#[derive(Default)]
pub(crate) struct Flows {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Flows {
    pub fn bind(&self, token: String, flow: u64, inbox: InboxTx, expires: u32) {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, e| e.expires_at > now);
        let expires_at = now + Duration::from_secs(u64::from(expires));
        entries.insert(
            token,
            Entry {
                flow: Some((flow, inbox)),
                expires_at,
            },
        );
    }

    /// The browser unregistered `token` on `flow`.
    pub fn unbind(&self, token: &str, flow: u64) {
        let mut entries = self.lock();
        if entries
            .get(token)
            .is_some_and(|e| e.flow.as_ref().is_some_and(|(f, _)| *f == flow))
        {
            entries.remove(token);
        }
    }

    /// `flow` closed: its bindings lose their flow (unless a newer flow
    /// took them over).
    pub fn flow_closed(&self, flow: u64) {
        for entry in self.lock().values_mut() {
            if entry.flow.as_ref().is_some_and(|(f, _)| *f == flow) {
                entry.flow = None;
            }
        }
    }

    /// Who a call for `user` rings, when it names a binding.
    pub fn lookup(&self, user: &str) -> Option<Lookup> {
        let entries = self.lock();
        let entry = entries.get(user)?;
        if entry.expires_at <= Instant::now() {
            return None;
        }
        Some(match &entry.flow {
            Some((flow, inbox)) => Lookup::Sessions(vec![(*flow, inbox.clone())]),
            None => Lookup::NoSessions,
        })
    }

    pub fn live(&self) -> usize {
        self.lock().values().filter(|e| e.flow.is_some()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

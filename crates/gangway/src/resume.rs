//! Resume tokens: the secret that lets a new WebSocket take over a session
//! whose socket was lost (`resume_session`).
//!
//! Each session holds one token at a time. A token is 256 bits from the
//! operating system's RNG, sent as 64 hex digits. Its first 16 digits find
//! the entry; the whole token is then compared in constant time, so response
//! timing does not reveal how much of a guess was right. A token works once:
//! claiming it removes it, and the session issues the next one when it
//! takes over the new socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use axum::extract::ws::WebSocket;
use gangway_signal::ServerMessage;
use tokio::sync::mpsc;

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Hex digits of a token.
const TOKEN_HEX: usize = TOKEN_BYTES * 2;
/// Leading hex digits that key the table (64 bits: collisions are
/// practically impossible, and a clash only makes `issue` draw again).
const LOOKUP_HEX: usize = 16;

/// A connection moving to the session whose token it presented.
pub(crate) struct Moved {
    pub(crate) socket: WebSocket,
    /// Replies the connection owed its client before `resume_session`.
    pub(crate) outbox: Vec<ServerMessage>,
    pub(crate) peer_ip: IpAddr,
}

/// Where a claimed session expects its new socket.
/// Boxed: a channel allocates its first block of 32 slots at creation,
/// and `Moved` holds a whole WebSocket (32 × ~400 B per session).
pub(crate) type Handover = mpsc::Sender<Box<Moved>>;

struct Entry {
    token: String,
    session: u64,
    handover: Handover,
}

/// Why a `resume_session` token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No session holds it: never issued, already used, or expired.
    Unknown,
    /// It is the asking session's own token.
    Own,
}

/// Every live session's current token.
#[derive(Default)]
pub(crate) struct Tokens {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Tokens {
    /// Issues a new token for `session`, whose task takes sockets on
    /// `handover`. `None` if the OS RNG fails (the session then cannot be
    /// resumed; nothing else is affected).
    pub(crate) fn issue(&self, session: u64, handover: Handover) -> Option<String> {
        let mut entries = self.lock();
        loop {
            let token = random_hex()?;
            let key = token[..LOOKUP_HEX].to_string();
            if entries.contains_key(&key) {
                continue;
            }
            entries.insert(
                key,
                Entry {
                    token: token.clone(),
                    session,
                    handover,
                },
            );
            return Some(token);
        }
    }

    /// Forgets a token (its session ended or moved on to another).
    pub(crate) fn revoke(&self, token: &str) {
        if let Some(key) = token.get(..LOOKUP_HEX) {
            let mut entries = self.lock();
            if entries.get(key).is_some_and(|e| e.token == token) {
                entries.remove(key);
            }
        }
    }

    /// Takes the session a token belongs to, for `claimant` (the session
    /// that received `resume_session`). The token is used up.
    pub(crate) fn claim(&self, token: &str, claimant: u64) -> Result<Handover, Refused> {
        if token.len() != TOKEN_HEX {
            return Err(Refused::Unknown);
        }
        let Some(key) = token.get(..LOOKUP_HEX) else {
            return Err(Refused::Unknown);
        };
        let mut entries = self.lock();
        let Some(entry) = entries.get(key) else {
            return Err(Refused::Unknown);
        };
        if !constant_time_eq(entry.token.as_bytes(), token.as_bytes()) {
            return Err(Refused::Unknown);
        }
        if entry.session == claimant {
            return Err(Refused::Own);
        }
        entries
            .remove(key)
            .map(|e| e.handover)
            .ok_or(Refused::Unknown)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Nothing panics while holding the lock; recover the map regardless.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    if let Err(e) = getrandom::fill(&mut bytes) {
        tracing::warn!("no resume token: the OS random generator failed: {e}");
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(TOKEN_HEX);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    Some(out)
}

/// Compares equal-length secrets without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> (Handover, mpsc::Receiver<Box<Moved>>) {
        mpsc::channel(crate::queues::HANDOVER)
    }

    #[test]
    fn tokens_are_long_random_hex() {
        let tokens = Tokens::default();
        let (tx, _rx) = handover();
        let a = tokens.issue(1, tx.clone()).unwrap();
        let b = tokens.issue(2, tx).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_token_is_claimed_once_and_only_whole() {
        let tokens = Tokens::default();
        let (tx, _rx) = handover();
        let token = tokens.issue(1, tx).unwrap();
        // Right prefix, wrong secret; wrong length; someone else's own token.
        let mut wrong = token.clone();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(63.., last);
        assert_eq!(tokens.claim(&wrong, 2).err(), Some(Refused::Unknown));
        assert_eq!(tokens.claim(&token[..63], 2).err(), Some(Refused::Unknown));
        assert_eq!(tokens.claim("", 2).err(), Some(Refused::Unknown));
        assert_eq!(
            tokens.claim("é".repeat(32).as_str(), 2).err(),
            Some(Refused::Unknown)
        );
        assert_eq!(tokens.claim(&token, 1).err(), Some(Refused::Own));
        assert!(tokens.claim(&token, 2).is_ok(), "the real token works");
        assert_eq!(
            tokens.claim(&token, 3).err(),
            Some(Refused::Unknown),
            "but only once"
        );
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let tokens = Tokens::default();
        let (tx, _rx) = handover();
        let token = tokens.issue(1, tx).unwrap();
        tokens.revoke(&token);
        assert_eq!(tokens.claim(&token, 2).err(), Some(Refused::Unknown));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

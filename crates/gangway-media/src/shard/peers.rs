//! A shard's calls, by slot. A slot indexes the table directly and names the
//! poll tokens of the call's two sockets, so a readable socket reaches its
//! call without a hash lookup; the `PeerId` map serves commands and the
//! endpoint's events. Slots are reused, so the table stays as large as the
//! most calls the shard ever held at once.

use std::collections::HashMap;

use gangway_rtc::PeerId;
use mio::net::UdpSocket;
use mio::Token;
use prometheus_client::metrics::counter::Counter;

use super::deliver::LegEventTx;

use crate::bridge::Bridge;
use crate::types::LegEvent;

/// Poll tokens of the shard's own sources; calls' sockets come after.
pub(super) const WEBRTC: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
const FIRST_SLOT_TOKEN: usize = 2;

/// A bridged call's SIP-leg sockets (non-blocking; the shard's poll reads
/// them).
pub(super) struct Sockets {
    pub(super) port: u16,
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: UdpSocket,
}

/// A bridged call: its media policy and its sockets.
pub(super) struct Bridged {
    pub(super) bridge: Bridge,
    pub(super) sockets: Sockets,
}

/// One call's WebRTC peer.
pub(super) struct Peer {
    pub(super) id: PeerId,
    pub(super) events: LegEventTx,
    /// `None` for the echo line. Boxed: a bridge is ~3.8 KiB inline, and
    /// the slot table keeps its high-water mark of slots.
    pub(super) bridged: Option<Box<Bridged>>,
}

impl Peer {
    /// Tells the call; a call that has gone no longer listens. Never
    /// waits: see [`super::deliver`] for a full queue.
    pub(super) fn tell(&self, event: LegEvent, dropped: &Counter) {
        super::deliver::tell(&self.events, self.id, event, dropped);
    }
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Peers {
    slots: Vec<Option<Peer>>,
    free: Vec<usize>,
    by_id: HashMap<PeerId, usize>,
}

impl Peers {
    /// Adds a peer; returns its slot.
    pub(super) fn insert(&mut self, peer: Peer) -> usize {
        let id = peer.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(peer);
                slot
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub(super) fn remove(&mut self, slot: usize) -> Option<Peer> {
        let peer = self.slots.get_mut(slot)?.take()?;
        self.by_id.remove(&peer.id);
        self.free.push(slot);
        Some(peer)
    }

    pub(super) fn slot(&self, id: PeerId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Peer> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Peer> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(super) fn by_id(&self, id: PeerId) -> Option<&Peer> {
        self.get(self.slot(id)?)
    }

    /// A bridged call's parts.
    pub(super) fn bridged_mut(&mut self, slot: usize) -> Option<&mut Bridged> {
        self.get_mut(slot)?.bridged.as_deref_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// One past the highest slot in use (or used before).
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Empties the table; returns the peers it held.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = Peer> + '_ {
        self.by_id.clear();
        self.free.clear();
        self.slots.drain(..).flatten()
    }

    /// The poll tokens of a slot's RTP and RTCP sockets.
    pub(super) fn tokens(slot: usize) -> (Token, Token) {
        let rtp = FIRST_SLOT_TOKEN + 2 * slot;
        (Token(rtp), Token(rtp + 1))
    }

    /// The slot a token belongs to, and whether it is its RTCP socket.
    pub(super) fn from_token(token: Token) -> Option<(usize, bool)> {
        let index = token.0.checked_sub(FIRST_SLOT_TOKEN)?;
        Some((index / 2, index % 2 == 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Peer {
        Peer {
            id: PeerId(id),
            events: tokio::sync::mpsc::channel(1).0,
            bridged: None,
        }
    }

    #[test]
    fn slots_are_reused_and_tokens_map_back_to_them() {
        let mut peers = Peers::default();
        assert_eq!(peers.insert(peer(7)), 0);
        assert_eq!(peers.insert(peer(8)), 1);
        assert!(peers.remove(0).is_some());
        assert!(peers.remove(0).is_none(), "removed once");
        assert_eq!(peers.insert(peer(9)), 0, "the free slot first");
        assert_eq!(peers.slot(PeerId(9)), Some(0));
        assert_eq!(peers.slot(PeerId(7)), None);
        assert_eq!(peers.len(), 2);
        let (rtp, rtcp) = Peers::tokens(1);
        assert_eq!(Peers::from_token(rtp), Some((1, false)));
        assert_eq!(Peers::from_token(rtcp), Some((1, true)));
        assert_eq!(Peers::from_token(WAKER), None);
        assert_eq!(peers.take_all().count(), 2);
        assert_eq!(peers.len(), 0);
    }
}

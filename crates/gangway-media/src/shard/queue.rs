//! The queue between a shard's handles and its thread: the commands, the
//! shard's end of the queue, and the load the handles read.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use gangway_rtc::PeerId;
use tokio::sync::oneshot;

use super::deliver::LegEventTx;

use crate::types::{Flow, Law, MediaRoute};

/// Commands a shard's queue holds at most.
pub(super) const QUEUE_CAPACITY: usize = 4096;

#[derive(Debug)]
pub(super) enum Command {
    AddPeer {
        id: PeerId,
        offer: String,
        route: MediaRoute,
        events: LegEventTx,
    },
    AddCandidate {
        id: PeerId,
        candidate: String,
    },
    ConnectRemote {
        id: PeerId,
        remote: SocketAddr,
        law: Law,
        dtmf_pt: Option<u8>,
        answered: bool,
        flow: Flow,
    },
    SendDtmf {
        id: PeerId,
        digits: String,
    },
    PlayDtmf {
        id: PeerId,
        digit: char,
    },
    Renegotiate {
        id: PeerId,
        offer: String,
    },
    RemovePeer {
        id: PeerId,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

impl Command {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Command::AddPeer { .. } => "add_peer",
            Command::AddCandidate { .. } => "add_candidate",
            Command::ConnectRemote { .. } => "connect_remote",
            Command::SendDtmf { .. } => "send_dtmf",
            Command::PlayDtmf { .. } => "play_dtmf",
            Command::Renegotiate { .. } => "renegotiate",
            Command::RemovePeer { .. } => "remove_peer",
            Command::Stop { .. } => "stop",
        }
    }
}

/// The shard's end of its handles' commands.
pub(super) struct Inbox {
    pub(super) queue: mpsc::Receiver<Command>,
    /// `RemovePeer` and `Stop` that found the queue full.
    pub(super) overflow: Arc<Mutex<Vec<Command>>>,
}

/// How busy a shard is, for placing new calls.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Calls the shard holds, as it last published.
    pub(super) held: AtomicUsize,
    /// Calls sent to the shard that it has not taken up yet. Counted by the
    /// handle, not the shard: a busy shard publishes late, and must not look
    /// emptier than it is while a burst of calls is placed.
    pub(super) queued: AtomicUsize,
}

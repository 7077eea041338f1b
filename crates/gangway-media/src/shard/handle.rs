//! [`ShardHandle`]: how the gateway starts a shard and talks to it. Commands
//! go through a bounded queue that the handle never blocks on (the policy is
//! in the `shard` module documentation).

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self as std_mpsc, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use gangway_rtc::{Endpoint, EndpointConfig, PeerId};
use mio::net::UdpSocket;
use mio::{Interest, Poll, Waker};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use super::deliver::LegEventTx;
use tracing::{debug, info, warn};

use super::metrics::ShardMetrics;
use super::peers::{WAKER, WEBRTC};
use super::ports::RtpPorts;
use super::queue::{Command, Inbox, Load, QUEUE_CAPACITY};
use super::report::MediaReportTx;
use super::run::Shard;
use crate::types::{Flow, Law, LegEvent, MediaPolicy, MediaRoute};

/// What a call is told when its shard cannot take it up.
const OVERLOADED: &str = "the media shard is overloaded; try again";

#[derive(Debug)]
pub enum ShardStartError {
    Bind(SocketAddr, io::Error),
    Endpoint(String),
    Thread(io::Error),
    Poll(io::Error),
}

impl std::fmt::Display for ShardStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardStartError::Bind(a, e) => write!(f, "cannot bind WebRTC UDP port {a}: {e}"),
            ShardStartError::Endpoint(e) => write!(f, "cannot set up WebRTC endpoint: {e}"),
            ShardStartError::Thread(e) => write!(f, "cannot start media thread: {e}"),
            ShardStartError::Poll(e) => write!(f, "cannot set up the media poll loop: {e}"),
        }
    }
}

impl std::error::Error for ShardStartError {}

/// The gateway's way into one shard. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    commands: std_mpsc::SyncSender<Command>,
    overflow: Arc<Mutex<Vec<Command>>>,
    /// Interrupts the shard's poll so it reads `commands`.
    waker: Arc<Waker>,
    local_addr: SocketAddr,
    load: Arc<Load>,
    dropped: Counter,
}

impl ShardHandle {
    /// Binds `bind` and starts the shard thread. With port 0 the OS picks the
    /// port; the advertised candidate then uses it too.
    pub fn start(
        bind: SocketAddr,
        advertise_ip: Option<std::net::IpAddr>,
        config: EndpointConfig,
        rtp_ports: Option<RtpPorts>,
        policy: MediaPolicy,
        metrics: ShardMetrics,
        reports: Option<MediaReportTx>,
    ) -> Result<Self, ShardStartError> {
        let socket = StdUdpSocket::bind(bind).map_err(|e| ShardStartError::Bind(bind, e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| ShardStartError::Bind(bind, e))?;
        match super::buffers::enlarge(&socket) {
            Ok((recv, send)) if recv < super::buffers::SOCKET_BUFFER_BYTES => warn!(
                recv,
                send,
                wanted = super::buffers::SOCKET_BUFFER_BYTES,
                "WebRTC socket buffers capped by the kernel: raise net.core.rmem_max and wmem_max"
            ),
            Ok((recv, send)) => debug!(recv, send, "WebRTC socket buffers"),
            Err(e) => warn!(error = %e, "cannot size the WebRTC socket buffers"),
        }
        let local_addr = socket
            .local_addr()
            .map_err(|e| ShardStartError::Bind(bind, e))?;
        let candidate_addr =
            SocketAddr::new(advertise_ip.unwrap_or(local_addr.ip()), local_addr.port());
        let endpoint = Endpoint::new(EndpointConfig {
            candidate_addr,
            ..config
        })
        .map_err(ShardStartError::Endpoint)?;
        let poll = Poll::new().map_err(ShardStartError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ShardStartError::Poll)?);
        let mut socket = UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, WEBRTC, Interest::READABLE)
            .map_err(ShardStartError::Poll)?;
        let (tx, rx) = std_mpsc::sync_channel(QUEUE_CAPACITY);
        let overflow = Arc::new(Mutex::new(Vec::new()));
        let load = Arc::new(Load::default());
        let dropped = metrics.commands_dropped.clone();
        let inbox = Inbox {
            queue: rx,
            overflow: overflow.clone(),
        };
        let mut shard = Shard::new(
            poll,
            socket,
            endpoint,
            rtp_ports,
            policy,
            metrics,
            load.clone(),
        );
        shard.reports = reports;
        thread::Builder::new()
            .name("gangway-media".into())
            .spawn(move || shard.run(inbox))
            .map_err(ShardStartError::Thread)?;
        info!(%local_addr, %candidate_addr, "WebRTC media shard listening");
        Ok(ShardHandle {
            commands: tx,
            overflow,
            waker,
            local_addr,
            load,
            dropped,
        })
    }

    /// Queues a command without blocking; a full queue refuses it.
    fn send(&self, command: Command) {
        match self.commands.try_send(command) {
            Ok(()) => self.wake(),
            Err(TrySendError::Full(command)) => self.refuse(command),
            // The shard has stopped: nothing is left to do.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn wake(&self) {
        // Only fails if the shard has stopped, when nothing is left to wake.
        let _ = self.waker.wake();
    }

    /// The full-queue policy: refuse the call, keep what frees resources,
    /// drop the rest.
    fn refuse(&self, command: Command) {
        match command {
            Command::AddPeer { id, events, .. } => {
                self.load.queued.fetch_sub(1, Ordering::Relaxed);
                self.dropped.inc();
                warn!(peer = id.0, "media shard queue full: call refused");
                let event = LegEvent::NoCapacity(OVERLOADED.into());
                // A settling event: the reserve of the owner's queue has room.
                let _ = events.try_send((id, event));
            }
            Command::RemovePeer { .. } | Command::Stop { .. } => {
                self.overflow
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(command);
                self.wake();
            }
            other => {
                self.dropped.inc();
                warn!(
                    command = other.name(),
                    "media shard queue full: command dropped"
                );
            }
        }
    }

    /// The address the shard's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets up a peer from a browser offer. The answer (or failure) and every
    /// later leg event arrive on `events`, tagged with `id`.
    pub fn add_peer(&self, id: PeerId, offer: String, route: MediaRoute, events: LegEventTx) {
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        self.send(Command::AddPeer {
            id,
            offer,
            route,
            events,
        });
    }

    pub fn add_candidate(&self, id: PeerId, candidate: String) {
        self.send(Command::AddCandidate { id, candidate });
    }

    /// Points a bridged call's RTP at the SIP leg's media (from a 183 or 200
    /// SDP, or a later offer or answer). `answered` starts the media
    /// inactivity watch, which pauses while `flow` is not both ways (hold).
    /// An unspecified address (RFC 2543 hold, `c=0.0.0.0`) keeps the
    /// previous one: nothing is sent there.
    pub fn connect_remote(
        &self,
        id: PeerId,
        remote: SocketAddr,
        law: Law,
        dtmf_pt: Option<u8>,
        answered: bool,
        flow: Flow,
    ) {
        self.send(Command::ConnectRemote {
            id,
            remote,
            law,
            dtmf_pt,
            answered,
            flow,
        });
    }

    /// Sends DTMF digits to the SIP leg as RFC 4733 events.
    pub fn send_dtmf(&self, id: PeerId, digits: String) {
        self.send(Command::SendDtmf { id, digits });
    }

    /// Plays a digit the far end sent in SIP INFO to the browser, as an
    /// RFC 4733 event on its stream (queued behind any still playing).
    pub fn play_dtmf(&self, id: PeerId, digit: char) {
        self.send(Command::PlayDtmf { id, digit });
    }

    /// Applies a new browser offer to an existing peer (an ICE restart);
    /// `Renegotiated` or `RenegotiationFailed` follows on its events.
    pub fn renegotiate(&self, id: PeerId, offer: String) {
        self.send(Command::Renegotiate { id, offer });
    }

    /// Calls this shard holds or has queued.
    pub fn load(&self) -> usize {
        self.load.held.load(Ordering::Relaxed) + self.load.queued.load(Ordering::Relaxed)
    }

    pub fn remove_peer(&self, id: PeerId) {
        self.send(Command::RemovePeer { id });
    }

    /// Stops the shard and waits until its thread has released the socket.
    pub async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Command::Stop { done });
        // Fails at once if the shard had already stopped (`done` dropped).
        let _ = wait.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose queue holds one command, with no shard reading it.
    fn handle() -> (ShardHandle, Inbox, Poll) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let (tx, rx) = std_mpsc::sync_channel(1);
        let overflow = Arc::new(Mutex::new(Vec::new()));
        let handle = ShardHandle {
            commands: tx,
            overflow: overflow.clone(),
            waker,
            local_addr: "127.0.0.1:1".parse().unwrap(),
            load: Arc::default(),
            dropped: Counter::default(),
        };
        let inbox = Inbox {
            queue: rx,
            overflow,
        };
        (handle, inbox, poll)
    }

    #[test]
    fn a_full_queue_refuses_calls_keeps_removals_and_drops_the_rest() {
        let (handle, inbox, _poll) = handle();
        handle.add_candidate(PeerId(1), "candidate".into());
        // Full from here on.
        let (events, mut told) = tokio::sync::mpsc::channel(crate::shard::deliver::RESERVED + 4);
        handle.add_peer(PeerId(2), "offer".into(), MediaRoute::Bridge, events);
        let (id, event) = told.try_recv().expect("refused at once");
        assert_eq!(id, PeerId(2));
        assert!(
            matches!(&event, LegEvent::NoCapacity(m) if m.contains("overloaded")),
            "{event:?}"
        );
        assert_eq!(handle.load(), 0, "a refused call is not counted as queued");
        handle.send_dtmf(PeerId(1), "1".into());
        handle.remove_peer(PeerId(1));
        assert_eq!(handle.dropped.get(), 2, "the call and the DTMF");
        // The shard finds the queued command, then the removal.
        assert!(matches!(
            inbox.queue.try_recv(),
            Ok(Command::AddCandidate { .. })
        ));
        assert!(inbox.queue.try_recv().is_err());
        let overflow = inbox.overflow.lock().unwrap();
        assert!(matches!(
            overflow[..],
            [Command::RemovePeer { id: PeerId(1) }]
        ));
    }
}

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use gangway_rtc::{
    AnswerOptions, AudioCodec, Endpoint, EndpointConfig, LegStats, PeerEvent, PeerId, SetupError,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use str0m::media::{Frequency, MediaTime};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::bridge::{Bridge, Discard, Inbound, Law, Packets, PortAllocator, RtpPorts};
use crate::g711::LawTables;
use crate::quality::{estimated_mos, Impairments};
use crate::transcode::{OpusSettings, Transcoder};

/// Where a call's browser media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaRoute {
    /// Straight back to the same browser.
    Echo,
    /// To and from plain RTP on a port of its own (the SIP leg), G.711 passed through.
    Bridge,
}

/// Which codec the browser leg of a bridged call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecPolicy {
    /// G.711 passed through when the browser offers it; Opus, transcoded, otherwise.
    #[default]
    PassthroughFirst,
    /// Opus towards the browser whenever it offers it (better on lossy
    /// networks, costs a transcode); G.711 passthrough otherwise.
    OpusToBrowser,
    /// Never transcode: browsers that offer no G.711 cannot reach SIP.
    PassthroughOnly,
}

/// How bridged calls' media is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaPolicy {
    pub codecs: CodecPolicy,
    pub opus: OpusSettings,
    /// End answered bridged calls when a leg sends nothing for this long.
    pub media_timeout: Option<Duration>,
}

/// Which ways audio may go on a bridged call's SIP leg, as the latest SDP
/// exchange (hold, resume) left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// We may send RTP to the far end (it receives, and we do not hold).
    pub to_sip: bool,
    /// The far end may send RTP to us.
    pub from_sip: bool,
}

impl Flow {
    pub const BOTH: Flow = Flow {
        to_sip: true,
        from_sip: true,
    };

    /// Both ways: the media inactivity watch runs only then.
    pub fn is_both(self) -> bool {
        self.to_sip && self.from_sip
    }
}

/// What a shard tells a call about its WebRTC leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// The offer was accepted; this is the SDP answer. For bridged calls,
    /// `rtp_port` is the local port the SIP leg's SDP must announce.
    Ready {
        answer: String,
        rtp_port: Option<u16>,
    },
    Failed(SetupError),
    CandidateRejected(String),
    Connected,
    Disconnected,
    /// An answered bridged call received no media on one leg for the configured time.
    MediaTimeout,
    /// The far end sent a DTMF digit.
    Dtmf(char),
    /// Digits could not be sent: not a bridged call, or the far end did not accept telephone-event.
    DtmfRefused,
    /// A new offer for the leg (an ICE restart) was accepted; this is the answer.
    Renegotiated {
        answer: String,
    },
    /// A new offer was refused; the leg carries on as before.
    RenegotiationFailed(SetupError),
}

/// Counters a shard updates as it works. Cloning shares the underlying atomics.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    pub peers: Gauge,
    pub packets_in: Counter,
    pub packets_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Datagrams no peer accepted (stray, late or hostile traffic).
    pub unmatched: Counter,
    /// Datagrams a socket refused to send (buffer full).
    pub send_drops: Counter,
    /// RTP ports held for SIP legs.
    pub rtp_ports: Gauge,
    pub rtp_packets_in: Counter,
    pub rtp_packets_out: Counter,
    pub rtp_bytes_in: Counter,
    pub rtp_bytes_out: Counter,
    /// RTP datagrams not passed on: not RTP, a payload type not bridged, or an unexpected source.
    pub rtp_dropped: Counter,
    /// Bridged calls refused because no RTP port was free.
    pub rtp_port_exhausted: Counter,
    pub rtcp_packets_in: Counter,
    pub rtcp_packets_out: Counter,
    /// Bridged calls ended because a leg went silent.
    pub media_timeouts: Counter,
    /// Per bridged call, at its end: packet loss from the SIP leg.
    pub sip_leg_loss_ratio: Histogram,
    /// Per bridged call, at its end: interarrival jitter from the SIP leg.
    pub sip_leg_jitter_seconds: Histogram,
    /// Per bridged call, at its end: WebRTC-leg loss, one observation per
    /// direction that RTCP reported.
    pub webrtc_leg_loss_ratio: Family<DirectionLabel, Histogram>,
    pub webrtc_leg_jitter_seconds: Histogram,
    pub webrtc_leg_rtt_seconds: Histogram,
    /// Frames the transcoder filled in, by the leg that lost them.
    pub concealed_frames: Family<LegLabel, Counter>,
    /// Per bridged call, at its end: estimated MOS (E-model) over both legs.
    pub call_mos: Histogram,
    /// Per bridged call, at its end: round-trip time to the SIP far end (its RTCP), when measured.
    pub sip_leg_rtt_seconds: Histogram,
    /// Transcoded calls' browser Opus packets by coded bandwidth (`bandwidth` = narrow | wide).
    pub browser_opus_packets: Family<[(&'static str, &'static str); 1], Counter>,
}

/// Which way media went on the WebRTC leg.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// Which leg of a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegLabel {
    pub leg: &'static str,
}

fn loss_histogram() -> Histogram {
    Histogram::new([0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            peers: Gauge::default(),
            packets_in: Counter::default(),
            packets_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            unmatched: Counter::default(),
            send_drops: Counter::default(),
            rtp_ports: Gauge::default(),
            rtp_packets_in: Counter::default(),
            rtp_packets_out: Counter::default(),
            rtp_bytes_in: Counter::default(),
            rtp_bytes_out: Counter::default(),
            rtp_dropped: Counter::default(),
            rtp_port_exhausted: Counter::default(),
            rtcp_packets_in: Counter::default(),
            rtcp_packets_out: Counter::default(),
            media_timeouts: Counter::default(),
            sip_leg_loss_ratio: loss_histogram(),
            webrtc_leg_loss_ratio: Family::new_with_constructor(loss_histogram),
            webrtc_leg_jitter_seconds: Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]),
            webrtc_leg_rtt_seconds: Histogram::new([0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8]),
            concealed_frames: Family::default(),
            sip_leg_jitter_seconds: Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]),
            call_mos: Histogram::new([1.0, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4]),
            sip_leg_rtt_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8,
            ]),
            browser_opus_packets: Family::default(),
        }
    }
}

#[derive(Debug)]
enum Command {
    AddPeer {
        id: PeerId,
        offer: String,
        route: MediaRoute,
        events: mpsc::UnboundedSender<(PeerId, LegEvent)>,
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
    commands: std_mpsc::Sender<Command>,
    /// Interrupts the shard's poll so it reads `commands`.
    waker: Arc<Waker>,
    local_addr: SocketAddr,
    load: Arc<Load>,
}

/// How busy a shard is, for placing new calls.
#[derive(Debug, Default)]
struct Load {
    /// Calls the shard holds, as it last published.
    held: AtomicUsize,
    /// Calls sent to the shard that it has not taken up yet. Counted by the
    /// handle, not the shard: a busy shard publishes late, and must not look
    /// emptier than it is while a burst of calls is placed.
    queued: AtomicUsize,
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
    ) -> Result<Self, ShardStartError> {
        let socket = StdUdpSocket::bind(bind).map_err(|e| ShardStartError::Bind(bind, e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| ShardStartError::Bind(bind, e))?;
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
        let (tx, rx) = std_mpsc::channel();
        let load = Arc::new(Load::default());
        let shard = Shard::new(
            poll,
            socket,
            endpoint,
            rtp_ports,
            policy,
            metrics,
            load.clone(),
        );
        thread::Builder::new()
            .name("gangway-media".into())
            .spawn(move || shard.run(rx))
            .map_err(ShardStartError::Thread)?;
        info!(%local_addr, %candidate_addr, "WebRTC media shard listening");
        Ok(ShardHandle {
            commands: tx,
            waker,
            local_addr,
            load,
        })
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // Only fails if the shard has stopped, when nothing is left to wake.
            let _ = self.waker.wake();
        }
    }

    /// The address the shard's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets up a peer from a browser offer. The answer (or failure) and every
    /// later leg event arrive on `events`, tagged with `id`.
    pub fn add_peer(
        &self,
        id: PeerId,
        offer: String,
        route: MediaRoute,
        events: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    ) {
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
        if self.commands.send(Command::Stop { done }).is_ok() {
            let _ = self.waker.wake();
            let _ = wait.await;
        }
    }
}

struct PeerEntry {
    events: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    /// `None` for the echo line.
    bridge: Option<Bridge>,
    /// The poll slot of the bridge's sockets (see [`SocketSlots`]).
    slot: Option<usize>,
}

/// Poll tokens of the shard's own sources; bridges' sockets come after.
const WEBRTC: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_SLOT_TOKEN: usize = 2;

/// Maps poll tokens to the bridged call whose RTP (even token) or RTCP
/// (odd token) socket became readable. Slots are reused, so the table
/// stays as large as the most calls the shard ever held at once.
#[derive(Default)]
struct SocketSlots {
    peers: Vec<Option<PeerId>>,
    free: Vec<usize>,
}

impl SocketSlots {
    fn take(&mut self, id: PeerId) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.peers[slot] = Some(id);
                slot
            }
            None => {
                self.peers.push(Some(id));
                self.peers.len() - 1
            }
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(entry) = self.peers.get_mut(slot) {
            if entry.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    fn tokens(slot: usize) -> (Token, Token) {
        let rtp = FIRST_SLOT_TOKEN + 2 * slot;
        (Token(rtp), Token(rtp + 1))
    }

    /// The call a token belongs to, and whether it is its RTCP socket.
    fn lookup(&self, token: Token) -> Option<(PeerId, bool)> {
        let index = token.0.checked_sub(FIRST_SLOT_TOKEN)?;
        let peer = (*self.peers.get(index / 2)?)?;
        Some((peer, index % 2 == 1))
    }
}

struct Shard {
    poll: Poll,
    socket: UdpSocket,
    endpoint: Endpoint,
    peers: HashMap<PeerId, PeerEntry>,
    slots: SocketSlots,
    /// When transcoded calls' reorder buffers want a look (earliest first);
    /// entries a buffer no longer wants are skipped.
    jitter_wakes: BinaryHeap<Reverse<(Instant, PeerId)>>,
    metrics: ShardMetrics,
    ports: Option<PortAllocator>,
    laws: LawTables,
    policy: MediaPolicy,
    load: Arc<Load>,
    /// Reused buffers: law conversion, outgoing RTP and RTCP packets.
    scratch: Vec<u8>,
    packets: Packets,
    packet: Vec<u8>,
}

/// Longest a shard sleeps with nothing scheduled; keeps the loop honest.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// How often bridged calls are checked for due RTCP reports.
const RTCP_TICK: Duration = Duration::from_millis(250);
/// RTCP CNAME of our SIP-side streams; nothing about the browser.
const RTCP_CNAME: &str = "gangway";

/// Larger than any datagram a WebRTC peer sends (MTU-sized).
const RECV_BUFFER: usize = 2048;

impl Shard {
    fn new(
        poll: Poll,
        socket: UdpSocket,
        endpoint: Endpoint,
        rtp_ports: Option<RtpPorts>,
        policy: MediaPolicy,
        metrics: ShardMetrics,
        load: Arc<Load>,
    ) -> Self {
        Shard {
            poll,
            socket,
            endpoint,
            peers: HashMap::new(),
            slots: SocketSlots::default(),
            jitter_wakes: BinaryHeap::with_capacity(64),
            metrics,
            ports: rtp_ports.map(PortAllocator::new),
            laws: LawTables::new(),
            policy,
            load,
            scratch: Vec::with_capacity(RECV_BUFFER),
            packets: Packets::default(),
            packet: Vec::with_capacity(RECV_BUFFER),
        }
    }

    /// The shard's loop: one epoll over the WebRTC socket, every bridged
    /// call's RTP and RTCP sockets and the command waker. Datagrams are read
    /// into one reused buffer and handled where they arrive: no task, channel
    /// or allocation per packet.
    fn run(mut self, commands: std_mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut events = Events::with_capacity(256);
        let mut next_rtcp = Instant::now() + RTCP_TICK;
        loop {
            self.flush();
            let now = Instant::now();
            let mut deadline = self
                .endpoint
                .poll_timeout()
                .unwrap_or(now + IDLE_WAKEUP)
                .min(next_rtcp);
            if let Some(Reverse((at, _))) = self.jitter_wakes.peek() {
                deadline = deadline.min(*at);
            }
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(deadline.saturating_duration_since(now)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("media shard poll failed: {e}");
                    self.remove_all();
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WEBRTC => self.read_webrtc(&mut buf),
                    WAKER => {
                        if let ControlFlow::Break(ack) = self.read_commands(&commands) {
                            self.remove_all();
                            if let Some(done) = ack {
                                let _ = done.send(());
                            }
                            return;
                        }
                    }
                    token => self.read_sip(token, &mut buf),
                }
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.wake_jitter_buffers(now);
            if now >= next_rtcp {
                self.send_due_rtcp();
                next_rtcp = now + RTCP_TICK;
            }
        }
    }

    /// Drains the WebRTC socket (the poll is edge-triggered).
    fn read_webrtc(&mut self, buf: &mut [u8]) {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, source)) => {
                    self.metrics.packets_in.inc();
                    self.metrics.bytes_in.inc_by(n as u64);
                    if self
                        .endpoint
                        .handle_receive(Instant::now(), source, &buf[..n])
                        .is_none()
                    {
                        self.metrics.unmatched.inc();
                    }
                    // Route what this datagram produced before the next one.
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP port-unreachable from a browser that went away surfaces here; not fatal.
                Err(e) => debug!("recv error: {e}"),
            }
        }
    }

    /// Drains one bridged call's RTP or RTCP socket.
    fn read_sip(&mut self, token: Token, buf: &mut [u8]) {
        let Some((id, rtcp)) = self.slots.lookup(token) else {
            return;
        };
        loop {
            let Some(bridge) = self.peers.get(&id).and_then(|p| p.bridge.as_ref()) else {
                return;
            };
            let socket = if rtcp {
                &bridge.rtcp_socket
            } else {
                &bridge.socket
            };
            match socket.recv_from(buf) {
                Ok((n, source)) => {
                    self.on_sip_datagram(id, source, &buf[..n], rtcp);
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from a far end that went away surface here; keep reading.
                Err(e) => debug!(peer = id.0, "rtp recv error: {e}"),
            }
        }
    }

    /// Handles every queued command. `Break` when the shard must stop, with
    /// the acknowledgement to send (none when the gateway is gone).
    fn read_commands(
        &mut self,
        commands: &std_mpsc::Receiver<Command>,
    ) -> ControlFlow<Option<oneshot::Sender<()>>> {
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    if let Some(done) = self.handle_command(command) {
                        return ControlFlow::Break(Some(done));
                    }
                }
                Err(std_mpsc::TryRecvError::Empty) => return ControlFlow::Continue(()),
                Err(std_mpsc::TryRecvError::Disconnected) => return ControlFlow::Break(None),
            }
        }
    }

    /// Returns the stop acknowledgement when the command asks the shard to stop.
    fn handle_command(&mut self, command: Command) -> Option<oneshot::Sender<()>> {
        match command {
            Command::AddPeer {
                id,
                offer,
                route,
                events,
            } => {
                let event = self.add_peer(id, &offer, route, &events);
                self.load.queued.fetch_sub(1, Ordering::Relaxed);
                let _ = events.send((id, event));
            }
            Command::AddCandidate { id, candidate } => {
                if let Err(e) = self.endpoint.add_remote_candidate(id, &candidate) {
                    if let Some(peer) = self.peers.get(&id) {
                        let _ = peer
                            .events
                            .send((id, LegEvent::CandidateRejected(e.to_string())));
                    }
                }
            }
            Command::Renegotiate { id, offer } => {
                let event = match self.endpoint.renegotiate(id, &offer) {
                    Ok(answer) => LegEvent::Renegotiated { answer },
                    Err(e) => LegEvent::RenegotiationFailed(e),
                };
                self.tell(id, event);
            }
            Command::SendDtmf { id, digits } => {
                let sent = self
                    .peers
                    .get_mut(&id)
                    .and_then(|p| p.bridge.as_mut())
                    .is_some_and(|b| b.send_dtmf(&digits));
                if !sent {
                    self.tell(id, LegEvent::DtmfRefused);
                }
            }
            Command::PlayDtmf { id, digit } => {
                if let Some(b) = self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) {
                    b.play_dtmf_to_browser(digit);
                }
            }
            Command::ConnectRemote {
                id,
                remote,
                law,
                dtmf_pt,
                answered,
                flow,
            } => {
                let held = match self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) {
                    Some(bridge) => {
                        bridge.connect(remote, law, dtmf_pt);
                        bridge.set_flow(flow, Instant::now());
                        if answered {
                            bridge.answered(Instant::now());
                        }
                        bridge.take_held()
                    }
                    None => Vec::new(),
                };
                for (source, data) in held {
                    self.pass_to_browser(id, source, &data);
                }
            }
            Command::RemovePeer { id } => {
                let webrtc = self.endpoint.stats(id).unwrap_or_default();
                self.endpoint.remove_peer(id);
                if let Some(mut peer) = self.peers.remove(&id) {
                    if let Some(bridge) = peer.bridge.as_mut() {
                        self.metrics.rtp_ports.dec();
                        self.report(id, bridge, &webrtc);
                        if let Some(slot) = peer.slot {
                            self.unwatch(slot, bridge);
                        }
                    }
                    self.metrics.peers.dec();
                }
                self.publish_load();
            }
            Command::Stop { done } => return Some(done),
        }
        None
    }

    fn add_peer(
        &mut self,
        id: PeerId,
        offer: &str,
        route: MediaRoute,
        events: &mpsc::UnboundedSender<(PeerId, LegEvent)>,
    ) -> LegEvent {
        const G711: &[AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma];
        const OPUS: &[AudioCodec] = &[AudioCodec::Opus];
        let (mut bridge, attempts): (_, &[&[AudioCodec]]) = match route {
            MediaRoute::Echo => (None, &[&[]]),
            MediaRoute::Bridge => {
                let Some(b) = self.open_bridge() else {
                    self.metrics.rtp_port_exhausted.inc();
                    warn!(peer = id.0, "no free RTP port in the configured range");
                    return LegEvent::Failed(SetupError::InvalidSdp(
                        "the gateway has no free RTP port for this call".into(),
                    ));
                };
                // Which codecs the browser leg may use, in order of preference.
                let attempts: &[&[AudioCodec]] = match self.policy.codecs {
                    CodecPolicy::PassthroughFirst => &[G711, OPUS],
                    CodecPolicy::OpusToBrowser => &[OPUS, G711],
                    CodecPolicy::PassthroughOnly => &[G711],
                };
                (Some(b), attempts)
            }
        };
        // A bridged call's other leg is 8 kHz: ask for narrowband Opus (the echo line keeps fullband).
        let options = AnswerOptions {
            narrowband_opus: route == MediaRoute::Bridge,
        };
        let mut result = Err(SetupError::IncompatibleCodecs);
        for allowed in attempts {
            result = self
                .endpoint
                .add_peer_with(id, offer, allowed, options, Instant::now());
            if !matches!(result, Err(SetupError::IncompatibleCodecs)) {
                break;
            }
        }
        let answer = match result {
            Ok(answer) => answer,
            // Dropping the unused bridge frees its ports.
            Err(e) => return LegEvent::Failed(e),
        };
        if let Some(b) = bridge.as_mut() {
            if self.endpoint.supports(id, AudioCodec::Opus) {
                match Transcoder::new(self.policy.opus) {
                    Ok(t) => b.set_transcoder(t),
                    Err(e) => {
                        self.endpoint.remove_peer(id);
                        warn!(peer = id.0, "cannot create the Opus transcoder: {e}");
                        return LegEvent::Failed(SetupError::IncompatibleCodecs);
                    }
                }
            }
        }
        let mut slot = None;
        if let Some(b) = bridge.as_mut() {
            match self.watch(id, b) {
                Ok(s) => slot = Some(s),
                Err(e) => {
                    self.endpoint.remove_peer(id);
                    warn!(peer = id.0, "cannot poll the call's RTP sockets: {e}");
                    return LegEvent::Failed(SetupError::InvalidSdp(
                        "the gateway cannot receive RTP for this call".into(),
                    ));
                }
            }
            self.metrics.rtp_ports.inc();
        }
        let rtp_port = bridge.as_ref().map(|b| b.port);
        self.peers.insert(
            id,
            PeerEntry {
                events: events.clone(),
                bridge,
                slot,
            },
        );
        self.metrics.peers.inc();
        self.publish_load();
        LegEvent::Ready { answer, rtp_port }
    }

    fn open_bridge(&mut self) -> Option<Bridge> {
        let (port, socket, rtcp) = self.ports.as_mut()?.bind()?;
        Some(Bridge::new(port, socket, rtcp))
    }

    /// Puts a bridge's sockets in the poll; datagrams already queued are
    /// reported at once.
    fn watch(&mut self, id: PeerId, bridge: &mut Bridge) -> io::Result<usize> {
        let slot = self.slots.take(id);
        let (rtp, rtcp) = SocketSlots::tokens(slot);
        let registry = self.poll.registry();
        let registered = registry
            .register(&mut bridge.socket, rtp, Interest::READABLE)
            .and_then(|()| registry.register(&mut bridge.rtcp_socket, rtcp, Interest::READABLE));
        if let Err(e) = registered {
            self.unwatch(slot, bridge);
            return Err(e);
        }
        Ok(slot)
    }

    fn unwatch(&mut self, slot: usize, bridge: &mut Bridge) {
        // Closing the sockets would drop them from the epoll too; this keeps
        // the slot table and the kernel in step even if a socket outlives us.
        let _ = self.poll.registry().deregister(&mut bridge.socket);
        let _ = self.poll.registry().deregister(&mut bridge.rtcp_socket);
        self.slots.release(slot);
    }

    /// Sends what the endpoint queued and routes its events, until both are
    /// empty (routing media queues more transmits).
    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.endpoint.poll_transmit() {
                progressed = true;
                match self.socket.send_to(&t.contents, t.destination) {
                    Ok(n) => {
                        self.metrics.packets_out.inc();
                        self.metrics.bytes_out.inc_by(n as u64);
                    }
                    Err(e) => {
                        self.metrics.send_drops.inc();
                        debug!(dest = %t.destination, "send failed: {e}");
                    }
                }
            }
            while let Some(event) = self.endpoint.poll_event() {
                progressed = true;
                self.route(event);
            }
            if !progressed {
                return;
            }
        }
    }

    fn route(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Connected(id) => self.tell(id, LegEvent::Connected),
            PeerEvent::Disconnected(id) => self.tell(id, LegEvent::Disconnected),
            PeerEvent::Media(id, frame) => {
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                if let (Some(code), Some(bridge)) = (frame.telephone_event, peer.bridge.as_mut()) {
                    if bridge.on_browser_dtmf(frame.time.numer(), code) {
                        debug!(peer = id.0, code, "browser DTMF sent on to the SIP leg");
                    }
                    return;
                }
                let Some(bridge) = peer.bridge.as_mut() else {
                    // The echo line. Audio only: DTMF events are not echoed as tones.
                    if frame.codec.is_some() {
                        self.endpoint.write_media(
                            id,
                            frame.mid,
                            frame.pt,
                            frame.time,
                            Instant::now(),
                            frame.data,
                        );
                    }
                    return;
                };
                let time = frame.time.rebase(Frequency::EIGHT_KHZ).numer();
                let Some(dest) = bridge.packetize_for_sip(
                    frame.codec,
                    time,
                    &frame.data,
                    &self.laws,
                    &mut self.scratch,
                    &mut self.packets,
                ) else {
                    return;
                };
                for packet in self.packets.iter() {
                    match bridge.socket.send_to(packet, dest) {
                        Ok(n) => {
                            self.metrics.rtp_packets_out.inc();
                            self.metrics.rtp_bytes_out.inc_by(n as u64);
                        }
                        Err(e) => {
                            self.metrics.send_drops.inc();
                            debug!(%dest, "rtp send failed: {e}");
                        }
                    }
                }
            }
        }
    }

    /// RTP or RTCP from the SIP leg; RTP goes on to the browser.
    fn on_sip_datagram(&mut self, id: PeerId, source: SocketAddr, data: &[u8], rtcp: bool) {
        if rtcp {
            self.metrics.rtcp_packets_in.inc();
            if let Some(bridge) = self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) {
                bridge.on_rtcp(data, Instant::now());
            }
            return;
        }
        self.metrics.rtp_packets_in.inc();
        self.metrics.rtp_bytes_in.inc_by(data.len() as u64);
        self.pass_to_browser(id, source, data);
    }

    fn pass_to_browser(&mut self, id: PeerId, source: SocketAddr, data: &[u8]) {
        let Some(bridge) = self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) else {
            return;
        };
        let (law, time, marker, payload) = match bridge.accept_from_sip(source, data) {
            Ok(Inbound::Audio {
                law,
                time,
                marker,
                payload,
            }) => (law, time, marker, payload),
            Ok(Inbound::Event(digit)) => {
                if let Some(d) = digit {
                    self.tell(id, LegEvent::Dtmf(d));
                }
                self.dtmf_to_browser(id);
                return;
            }
            Err(Discard::Held) => return,
            Err(why) => {
                self.metrics.rtp_dropped.inc();
                debug!(peer = id.0, %source, "rtp dropped: {why:?}");
                return;
            }
        };
        let now = Instant::now();
        if bridge.transcoder().is_some() {
            bridge.buffer_for_browser(time, payload, marker, now);
            self.opus_to_browser(id, now);
            return;
        }
        let under_event = bridge.sip_audio_under_event(time, payload.len() as u64);
        // End repeats and synthesized digits ride on the SIP leg's frames.
        self.dtmf_to_browser(id);
        if under_event {
            // The browser plays the digit instead (see dtmf_relay).
            return;
        }
        let time = MediaTime::new(time, Frequency::EIGHT_KHZ);
        if self.endpoint.supports(id, law.codec()) {
            self.endpoint
                .write_audio(id, law.codec(), time, now, payload);
            return;
        }
        // The browser's answer has only the other law: convert.
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let other = match law {
            Law::Pcmu => {
                self.laws.ulaw_to_alaw(&mut self.scratch);
                AudioCodec::Pcma
            }
            Law::Pcma => {
                self.laws.alaw_to_ulaw(&mut self.scratch);
                AudioCodec::Pcmu
            }
        };
        self.endpoint
            .write_audio(id, other, time, now, &self.scratch);
    }

    /// A transcoded call: encodes and writes what its reorder buffer has due,
    /// then asks to be woken at its next deadline.
    fn opus_to_browser(&mut self, id: PeerId, now: Instant) {
        let Some(bridge) = self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) else {
            return;
        };
        while let Some((time, opus)) = bridge.next_opus_for_browser(now) {
            match opus {
                Ok(opus) => {
                    // Opus runs on a 48 kHz RTP clock.
                    let time = MediaTime::new(time * 6, Frequency::FORTY_EIGHT_KHZ);
                    self.endpoint
                        .write_audio(id, AudioCodec::Opus, time, now, opus);
                }
                Err(e) => debug!(peer = id.0, "Opus encoding failed: {e}"),
            }
        }
        if let Some(at) = bridge.jitter_deadline() {
            if bridge.jitter_wake != Some(at) {
                bridge.jitter_wake = Some(at);
                self.jitter_wakes.push(Reverse((at, id)));
            }
        }
        // End repeats and synthesized digits ride on the SIP leg's frames.
        self.dtmf_to_browser(id);
    }

    /// Releases what reorder buffers have due at `now`.
    fn wake_jitter_buffers(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.jitter_wakes.peek().copied() {
            if at > now {
                return;
            }
            self.jitter_wakes.pop();
            let Some(bridge) = self.peers.get_mut(&id).and_then(|p| p.bridge.as_mut()) else {
                continue;
            };
            // A stale entry: the buffer moved on and asked for another time.
            if bridge.jitter_wake != Some(at) {
                continue;
            }
            bridge.jitter_wake = None;
            self.opus_to_browser(id, now);
        }
    }

    /// Writes the telephone events the bridge has for the browser.
    fn dtmf_to_browser(&mut self, id: PeerId) {
        let now = Instant::now();
        while let Some(event) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.bridge.as_mut())
            .and_then(|b| b.dtmf_to_browser())
        {
            // The wallclock of the event's start, which its timestamp names.
            let lasted = Duration::from_micros(u64::from(event.elapsed_8k) * 125);
            let start = now.checked_sub(lasted).unwrap_or(now);
            if !self.endpoint.write_telephone_event(
                id,
                event.clock_hz,
                event.time,
                event.marker,
                start,
                &event.payload,
            ) {
                debug!(peer = id.0, "telephone-event not written to the browser");
            }
        }
    }

    /// Logs a bridged call's media quality when it ends and feeds the histograms.
    fn report(&self, id: PeerId, bridge: &Bridge, webrtc: &LegStats) {
        let s = bridge.summary();
        // The worse of the two legs decides what the user heard.
        let mos = estimated_mos(Impairments {
            loss: s
                .loss_ratio
                .max(f64::from(webrtc.loss_from_browser.unwrap_or(0.0)))
                .max(f64::from(webrtc.loss_to_browser.unwrap_or(0.0))),
            // End to end: browser ↔ gateway plus gateway ↔ far end.
            rtt_ms: webrtc.rtt_ms.unwrap_or(0.0) + s.rtt_ms.unwrap_or(0.0),
            jitter_ms: s.jitter_ms.max(webrtc.jitter_ms.unwrap_or(0.0)),
        });
        let m = &self.metrics;
        if webrtc.packets_received > 0 {
            for (direction, loss) in [
                ("from_browser", webrtc.loss_from_browser),
                ("to_browser", webrtc.loss_to_browser),
            ] {
                if let Some(loss) = loss {
                    m.webrtc_leg_loss_ratio
                        .get_or_create(&DirectionLabel { direction })
                        .observe(f64::from(loss));
                }
            }
            if let Some(jitter) = webrtc.jitter_ms {
                m.webrtc_leg_jitter_seconds.observe(jitter / 1000.0);
            }
            if let Some(rtt) = webrtc.rtt_ms {
                m.webrtc_leg_rtt_seconds.observe(rtt / 1000.0);
            }
        }
        for (leg, frames) in [
            ("webrtc", s.concealed_frames),
            ("sip", s.concealed_from_sip),
        ] {
            if frames > 0 {
                m.concealed_frames
                    .get_or_create(&LegLabel { leg })
                    .inc_by(frames);
            }
        }
        if s.packets_received > 0 {
            self.metrics.sip_leg_loss_ratio.observe(s.loss_ratio);
            self.metrics
                .sip_leg_jitter_seconds
                .observe(s.jitter_ms / 1000.0);
            self.metrics.call_mos.observe(mos);
        }
        if let Some(rtt) = s.rtt_ms {
            self.metrics.sip_leg_rtt_seconds.observe(rtt / 1000.0);
        }
        for (bandwidth, n) in [
            ("narrow", s.browser_opus_narrowband),
            ("wide", s.browser_opus_wider),
        ] {
            if n > 0 {
                self.metrics
                    .browser_opus_packets
                    .get_or_create(&[("bandwidth", bandwidth)])
                    .inc_by(n);
            }
        }
        info!(
            peer = id.0,
            sip_packets_received = s.packets_received,
            sip_packets_lost = s.packets_lost,
            sip_loss_percent = format!("{:.2}", s.loss_ratio * 100.0),
            sip_jitter_ms = format!("{:.1}", s.jitter_ms),
            sip_packets_sent = s.packets_sent,
            sip_rtt_ms = s.rtt_ms.map(|r| format!("{r:.1}")),
            sip_far_end_loss_percent = s.far_end_fraction_lost.map(|l| format!("{:.2}", l * 100.0)),
            sip_far_end_packets_lost = s.far_end_cumulative_lost,
            transcoded = s.transcoded,
            browser_frames_concealed = s.concealed_frames,
            browser_opus_narrowband = s.browser_opus_narrowband,
            browser_opus_wider = s.browser_opus_wider,
            sip_frames_concealed = s.concealed_from_sip,
            sip_late_packets = s.sip_late_packets,
            jitter_buffer_ms = s.jitter_buffer_ms,
            webrtc_packets_received = webrtc.packets_received,
            webrtc_packets_sent = webrtc.packets_sent,
            webrtc_loss_from_browser = webrtc
                .loss_from_browser
                .map(|l| format!("{:.2}", l * 100.0)),
            webrtc_loss_to_browser = webrtc.loss_to_browser.map(|l| format!("{:.2}", l * 100.0)),
            webrtc_rtt_ms = webrtc.rtt_ms.map(|r| format!("{r:.1}")),
            estimated_mos = format!("{mos:.2}"),
            "call media summary"
        );
    }

    /// Sends the RTCP reports that are due on every bridged call, and reports
    /// calls whose media went silent.
    fn send_due_rtcp(&mut self) {
        let now = Instant::now();
        for (id, peer) in self.peers.iter_mut() {
            let Some(bridge) = peer.bridge.as_mut() else {
                continue;
            };
            if let Some(timeout) = self.policy.media_timeout {
                if bridge.media_timed_out(now, timeout) {
                    self.metrics.media_timeouts.inc();
                    let _ = peer.events.send((*id, LegEvent::MediaTimeout));
                }
            }
            let Some(dest) = bridge.rtcp_due(now, RTCP_CNAME, &mut self.packet) else {
                continue;
            };
            match bridge.rtcp_socket.send_to(&self.packet, dest) {
                Ok(_) => {
                    self.metrics.rtcp_packets_out.inc();
                }
                Err(e) => {
                    self.metrics.send_drops.inc();
                    debug!(%dest, "rtcp send failed: {e}");
                }
            }
        }
    }

    fn tell(&self, id: PeerId, event: LegEvent) {
        if let Some(peer) = self.peers.get(&id) {
            let _ = peer.events.send((id, event));
        }
    }

    fn remove_all(&mut self) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.endpoint.remove_peer(id);
        }
        // Gauges are shared by all shards: take back only this shard's share.
        let bridged = self.peers.values().filter(|p| p.bridge.is_some()).count();
        self.metrics.peers.dec_by(self.peers.len() as i64);
        self.metrics.rtp_ports.dec_by(bridged as i64);
        self.peers.clear();
        self.publish_load();
    }

    /// Lets the gateway place new calls on the least loaded shard.
    fn publish_load(&self) {
        self.load.held.store(self.peers.len(), Ordering::Relaxed);
    }
}

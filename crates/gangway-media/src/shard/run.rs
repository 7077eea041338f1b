//! The shard's thread: one mio poll loop that owns the WebRTC socket, the
//! `Endpoint` and every bridged call's sockets, and moves bytes between them
//! and the calls' `Bridge`s. Every media decision is the bridge's; the
//! loop reads, feeds, drains outputs and sends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_rtc::{Endpoint, PeerEvent, PeerId};
use mio::net::UdpSocket;
use mio::{Events, Poll, Token};
use tracing::{debug, warn};

use super::metrics::{ShardMetrics, Tally};
use super::peers::{Peers, WAKER, WEBRTC};
use super::ports::{PortAllocator, RtpPorts};
use super::queue::{Inbox, Load};
use super::report::MediaReportTx;
use crate::bridge::{BrowserFrame, Output, ToBrowser};
use crate::types::{LegEvent, MediaPolicy};

/// Longest a shard sleeps with nothing scheduled; keeps the loop honest.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// How often bridged calls are checked for due RTCP reports and silence,
/// and the per-packet counts published.
const TICK: Duration = Duration::from_millis(250);
/// Larger than any datagram a WebRTC peer sends (MTU-sized).
const RECV_BUFFER: usize = 2048;

pub(super) struct Shard {
    pub(super) poll: Poll,
    pub(super) socket: UdpSocket,
    pub(super) endpoint: Endpoint,
    pub(super) peers: Peers,
    /// When bridges asked to be woken (earliest first), by slot; entries a
    /// bridge no longer wants find nothing due.
    pub(super) wakes: BinaryHeap<Reverse<(Instant, usize)>>,
    pub(super) metrics: ShardMetrics,
    pub(super) tally: Tally,
    pub(super) ports: Option<PortAllocator>,
    pub(super) policy: MediaPolicy,
    pub(super) load: Arc<Load>,
    /// Where each call's media report goes when it ends.
    pub(super) reports: Option<MediaReportTx>,
}

impl Shard {
    pub(super) fn new(
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
            peers: Peers::default(),
            wakes: BinaryHeap::with_capacity(64),
            metrics,
            tally: Tally::default(),
            ports: rtp_ports.map(PortAllocator::new),
            policy,
            load,
            reports: None,
        }
    }

    /// The shard's loop: one epoll over the WebRTC socket, every bridged
    /// call's RTP and RTCP sockets and the command waker. Datagrams are read
    /// into one reused buffer and handled where they arrive: no task, channel
    /// or allocation per packet.
    pub(super) fn run(mut self, inbox: Inbox) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        loop {
            self.flush();
            let now = Instant::now();
            let mut deadline = self
                .endpoint
                .poll_timeout()
                .unwrap_or(now + IDLE_WAKEUP)
                .min(next_tick);
            if let Some(Reverse((at, _))) = self.wakes.peek() {
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
                        if let ControlFlow::Break(ack) = self.read_commands(&inbox) {
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
            self.wake_bridges(now);
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Drains the WebRTC socket (the poll is edge-triggered).
    fn read_webrtc(&mut self, buf: &mut [u8]) {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, source)) => {
                    self.tally.packets_in += 1;
                    self.tally.bytes_in += n as u64;
                    if self
                        .endpoint
                        .handle_receive(Instant::now(), source, &buf[..n])
                        .is_none()
                    {
                        self.tally.unmatched += 1;
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

    /// Drains one bridged call's RTP or RTCP socket into its bridge.
    fn read_sip(&mut self, token: Token, buf: &mut [u8]) {
        let Some((slot, rtcp)) = Peers::from_token(token) else {
            return;
        };
        loop {
            let Some(b) = self.peers.bridged_mut(slot) else {
                return;
            };
            let socket = if rtcp {
                &b.sockets.rtcp
            } else {
                &b.sockets.rtp
            };
            match socket.recv_from(buf) {
                Ok((n, source)) => {
                    let (now, data) = (Instant::now(), &buf[..n]);
                    if rtcp {
                        self.tally.rtcp_packets_in += 1;
                        b.bridge.handle_rtcp(now, data);
                    } else {
                        self.tally.rtp_packets_in += 1;
                        self.tally.rtp_bytes_in += n as u64;
                        b.bridge.handle_rtp(now, source, data);
                    }
                    self.drain(slot);
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from a far end that went away surface here; keep reading.
                Err(e) => {
                    let peer = self.peers.get(slot).map(|p| p.id.0);
                    debug!(?peer, "rtp recv error: {e}");
                }
            }
        }
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
                        self.tally.packets_out += 1;
                        self.tally.bytes_out += n as u64;
                    }
                    Err(e) => {
                        self.tally.send_drops += 1;
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
                let Some(slot) = self.peers.slot(id) else {
                    return;
                };
                let Some(b) = self.peers.bridged_mut(slot) else {
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
                let frame = BrowserFrame {
                    codec: frame.codec,
                    time: frame.time,
                    data: &frame.data,
                    telephone_event: frame.telephone_event,
                };
                b.bridge.handle_browser_frame(Instant::now(), frame);
                self.drain(slot);
            }
        }
    }

    /// Carries out what a bridge asked for.
    pub(super) fn drain(&mut self, slot: usize) {
        let Shard {
            peers,
            endpoint,
            wakes,
            metrics,
            tally,
            ..
        } = self;
        let Some(peer) = peers.get_mut(slot) else {
            return;
        };
        let (id, events) = (peer.id, &peer.events);
        let Some(b) = peer.bridged.as_mut() else {
            return;
        };
        while let Some(output) = b.bridge.poll_output() {
            match output {
                Output::ToBrowser(ToBrowser::Audio {
                    codec,
                    time,
                    wallclock,
                    data,
                }) => {
                    endpoint.write_audio(id, codec, time, wallclock, data);
                }
                Output::ToBrowser(ToBrowser::Event { event, wallclock }) => {
                    if !endpoint.write_telephone_event(
                        id,
                        event.clock_hz,
                        event.time,
                        event.marker,
                        wallclock,
                        &event.payload,
                    ) {
                        debug!(peer = id.0, "telephone-event not written to the browser");
                    }
                }
                Output::ToSip(dest, packet) => match b.sockets.rtp.send_to(packet, dest) {
                    Ok(n) => {
                        tally.rtp_packets_out += 1;
                        tally.rtp_bytes_out += n as u64;
                    }
                    Err(e) => sent_nothing(tally, dest, "rtp", e),
                },
                Output::RtcpToSip(dest, packet) => match b.sockets.rtcp.send_to(packet, dest) {
                    Ok(_) => tally.rtcp_packets_out += 1,
                    Err(e) => sent_nothing(tally, dest, "rtcp", e),
                },
                Output::Leg(event) => {
                    if event == LegEvent::MediaTimeout {
                        metrics.media_timeouts.inc();
                    }
                    super::deliver::tell(events, id, event, &metrics.events_dropped);
                }
                Output::Discarded(source, why) => {
                    tally.rtp_dropped += 1;
                    debug!(peer = id.0, %source, "rtp dropped: {why:?}");
                }
                Output::Wake(at) => wakes.push(Reverse((at, slot))),
            }
        }
    }

    /// Wakes the bridges whose time has come.
    fn wake_bridges(&mut self, now: Instant) {
        while let Some(Reverse((at, slot))) = self.wakes.peek().copied() {
            if at > now {
                return;
            }
            self.wakes.pop();
            if let Some(b) = self.peers.bridged_mut(slot) {
                b.bridge.handle_timeout(now);
                self.drain(slot);
            }
        }
    }

    /// Every bridge's RTCP reports and silence watch, then the counts.
    fn tick(&mut self, now: Instant) {
        for slot in 0..self.peers.slot_count() {
            if let Some(b) = self.peers.bridged_mut(slot) {
                b.bridge.handle_timeout(now);
                self.drain(slot);
            }
        }
        self.tally.publish(&self.metrics);
    }

    pub(super) fn tell(&self, id: PeerId, event: LegEvent) {
        if let Some(peer) = self.peers.by_id(id) {
            peer.tell(event, &self.metrics.events_dropped);
        }
    }
}

/// A datagram the socket refused (buffer full): counted and dropped.
fn sent_nothing(tally: &mut Tally, dest: SocketAddr, what: &str, e: io::Error) {
    tally.send_drops += 1;
    debug!(%dest, "{what} send failed: {e}");
}

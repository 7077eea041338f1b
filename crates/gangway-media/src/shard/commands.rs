//! The shard's commands: setting calls up (ports, the offer tried against
//! the codec policy, the bridge), pointing them at the SIP leg, DTMF,
//! renegotiation, and taking them down with their summary.

use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::time::{Instant, SystemTime};

use gangway_rtc::{AnswerOptions, AudioCodec, PeerId, SetupError};
use mio::net::UdpSocket;
use mio::{Interest, Poll};
use tokio::sync::oneshot;

use super::deliver::LegEventTx;
use tracing::warn;

use super::peers::{Bridged, Peer, Peers, Sockets};
use super::ports::PortAllocator;
use super::queue::{Command, Inbox};
use super::report::{report, send, MediaReport};
use super::run::Shard;
use crate::bridge::{Bridge, BrowserCodecs};
use crate::types::{LegEvent, MediaRoute};

impl Shard {
    /// Handles every queued command, then those that found the queue full.
    /// `Break` when the shard must stop, with the acknowledgement to send
    /// (none when the gateway is gone).
    pub(super) fn read_commands(
        &mut self,
        inbox: &Inbox,
    ) -> ControlFlow<Option<oneshot::Sender<()>>> {
        let mut disconnected = false;
        loop {
            match inbox.queue.try_recv() {
                Ok(command) => {
                    if let Some(done) = self.handle_command(command) {
                        return ControlFlow::Break(Some(done));
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let overflow = std::mem::take(
            &mut *inbox
                .overflow
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for command in overflow {
            if let Some(done) = self.handle_command(command) {
                return ControlFlow::Break(Some(done));
            }
        }
        if disconnected {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
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
                super::deliver::tell(&events, id, event, &self.metrics.events_dropped);
            }
            Command::AddCandidate { id, candidate } => {
                if let Err(e) = self.endpoint.add_remote_candidate(id, &candidate) {
                    self.tell(id, LegEvent::CandidateRejected(e.to_string()));
                }
            }
            Command::Renegotiate { id, offer } => {
                let event = match self.endpoint.renegotiate(id, &offer) {
                    Ok(answer) => {
                        let codecs = self.browser_codecs(id);
                        if let Some(b) = self.bridged_by_id(id) {
                            b.bridge.browser_renegotiated(codecs);
                        }
                        LegEvent::Renegotiated { answer }
                    }
                    Err(e) => LegEvent::RenegotiationFailed(e),
                };
                self.tell(id, event);
            }
            Command::SendDtmf { id, digits } => {
                let sent = self
                    .bridged_by_id(id)
                    .is_some_and(|b| b.bridge.send_dtmf(&digits));
                if !sent {
                    self.tell(id, LegEvent::DtmfRefused);
                }
            }
            Command::PlayDtmf { id, digit } => {
                if let Some(b) = self.bridged_by_id(id) {
                    b.bridge.play_dtmf(digit);
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
                if let Some(slot) = self.peers.slot(id) {
                    if let Some(b) = self.peers.bridged_mut(slot) {
                        let now = Instant::now();
                        b.bridge.connect(now, remote, law, dtmf_pt, answered, flow);
                        self.drain(slot);
                    }
                }
            }
            Command::RemovePeer { id } => self.remove_peer(id),
            Command::Stop { done } => return Some(done),
        }
        None
    }

    fn add_peer(
        &mut self,
        id: PeerId,
        offer: &str,
        route: MediaRoute,
        events: &LegEventTx,
    ) -> LegEvent {
        let sockets = match route {
            MediaRoute::Echo => None,
            MediaRoute::Bridge => {
                let Some((port, rtp, rtcp)) = self.ports.as_mut().and_then(PortAllocator::bind)
                else {
                    self.metrics.rtp_port_exhausted.inc();
                    warn!(peer = id.0, "no free RTP port in the configured range");
                    return LegEvent::NoCapacity(
                        "the gateway has no free RTP port for this call".into(),
                    );
                };
                Some(Sockets {
                    port,
                    rtp: UdpSocket::from_std(rtp),
                    rtcp: UdpSocket::from_std(rtcp),
                })
            }
        };
        // Which codecs the browser leg may use, in order of preference.
        let attempts: &[&[AudioCodec]] = match route {
            MediaRoute::Echo => &[&[]],
            MediaRoute::Bridge => self.policy.codecs.attempts(),
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
            // Dropping the unused sockets frees their ports.
            Err(e) => return LegEvent::Failed(e),
        };
        let bridged = match sockets {
            None => None,
            Some(sockets) => {
                let codecs = self.browser_codecs(id);
                let now = Instant::now();
                match Bridge::new(id, now, SystemTime::now(), &self.policy, codecs) {
                    Ok(bridge) => Some(Box::new(Bridged { bridge, sockets })),
                    Err(e) => {
                        self.endpoint.remove_peer(id);
                        warn!(peer = id.0, "cannot create the Opus transcoder: {e}");
                        return LegEvent::Failed(SetupError::IncompatibleCodecs);
                    }
                }
            }
        };
        let rtp_port = bridged.as_ref().map(|b| b.sockets.port);
        let slot = self.peers.insert(Peer {
            id,
            events: events.clone(),
            bridged,
        });
        if rtp_port.is_some() {
            if let Err(e) = self.watch(slot) {
                self.peers.remove(slot);
                self.endpoint.remove_peer(id);
                warn!(peer = id.0, "cannot poll the call's RTP sockets: {e}");
                return LegEvent::NoCapacity("the gateway cannot receive RTP for this call".into());
            }
            self.metrics.rtp_ports.inc();
        }
        self.metrics.peers.inc();
        self.publish_load();
        LegEvent::Ready { answer, rtp_port }
    }

    /// The codecs in a peer's answer.
    fn browser_codecs(&mut self, id: PeerId) -> BrowserCodecs {
        BrowserCodecs {
            pcmu: self.endpoint.supports(id, AudioCodec::Pcmu),
            pcma: self.endpoint.supports(id, AudioCodec::Pcma),
            opus: self.endpoint.supports(id, AudioCodec::Opus),
        }
    }

    fn bridged_by_id(&mut self, id: PeerId) -> Option<&mut Bridged> {
        let slot = self.peers.slot(id)?;
        self.peers.bridged_mut(slot)
    }

    /// Puts a bridged call's sockets in the poll under its slot's tokens;
    /// datagrams already queued are reported at once.
    fn watch(&mut self, slot: usize) -> io::Result<()> {
        let (rtp, rtcp) = Peers::tokens(slot);
        let Some(b) = self.peers.bridged_mut(slot) else {
            return Ok(());
        };
        let registry = self.poll.registry();
        let registered = registry
            .register(&mut b.sockets.rtp, rtp, Interest::READABLE)
            .and_then(|()| registry.register(&mut b.sockets.rtcp, rtcp, Interest::READABLE));
        if registered.is_err() {
            unwatch(&self.poll, &mut b.sockets);
        }
        registered
    }

    fn remove_peer(&mut self, id: PeerId) {
        let webrtc = self.endpoint.stats(id).unwrap_or_default();
        self.endpoint.remove_peer(id);
        if let Some(mut peer) = self.peers.slot(id).and_then(|s| self.peers.remove(s)) {
            let mut media = MediaReport {
                peer: id,
                webrtc,
                sip: None,
                mos: None,
            };
            if let Some(b) = peer.bridged.as_mut() {
                self.metrics.rtp_ports.dec();
                let summary = b.bridge.summary();
                media.mos = Some(report(&self.metrics, id, &summary, &webrtc));
                media.sip = Some(summary);
                unwatch(&self.poll, &mut b.sockets);
            }
            send(self.reports.as_ref(), media);
            self.metrics.peers.dec();
        }
        self.publish_load();
        // The call's totals are visible as soon as it has ended.
        self.tally.publish(&self.metrics);
    }

    pub(super) fn remove_all(&mut self) {
        let (mut peers, mut bridged) = (0, 0);
        for mut peer in self.peers.take_all() {
            self.endpoint.remove_peer(peer.id);
            peers += 1;
            if let Some(b) = peer.bridged.as_mut() {
                bridged += 1;
                unwatch(&self.poll, &mut b.sockets);
            }
        }
        // Gauges are shared by all shards: take back only this shard's share.
        self.metrics.peers.dec_by(peers);
        self.metrics.rtp_ports.dec_by(bridged);
        self.publish_load();
        self.tally.publish(&self.metrics);
    }

    /// Lets the gateway place new calls on the least loaded shard.
    pub(super) fn publish_load(&self) {
        self.load.held.store(self.peers.len(), Ordering::Relaxed);
    }
}

/// Takes a call's sockets out of the poll. Closing them would drop them from
/// the epoll too; this keeps the slot table and the kernel in step even if a
/// socket outlives its call.
pub(super) fn unwatch(poll: &Poll, sockets: &mut Sockets) {
    let _ = poll.registry().deregister(&mut sockets.rtp);
    let _ = poll.registry().deregister(&mut sockets.rtcp);
}

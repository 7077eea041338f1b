use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::crypto::dtls::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::format::{Codec, CodecExtra, FormatParams};
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt, Writer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig, RtcError};
use tracing::{debug, warn};

use crate::narrowband::narrowband_opus;

/// Audio codecs the WebRTC leg can negotiate. Telephone-event is always offered alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Opus,
    Pcmu,
    Pcma,
}

impl AudioCodec {
    fn from_str0m(c: Codec) -> Option<Self> {
        match c {
            Codec::Opus => Some(AudioCodec::Opus),
            Codec::PCMU => Some(AudioCodec::Pcmu),
            Codec::PCMA => Some(AudioCodec::Pcma),
            _ => None,
        }
    }
}

/// Identifies a peer within its endpoint. Chosen by the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// Settings shared by all peers of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The address put in the answer's host candidate (the public address when behind NAT).
    pub candidate_addr: SocketAddr,
    /// Audio codecs accepted from offers, in order of preference.
    pub codecs: Vec<AudioCodec>,
}

/// How one peer's answers are shaped beyond the codec choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Ask for narrowband Opus (`maxplaybackrate=8000;sprop-maxcapturerate=8000`
    /// on the Opus fmtp line, RFC 7587): for calls whose other leg is 8 kHz.
    pub narrowband_opus: bool,
}

/// Why an offer was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error("invalid SDP offer: {0}")]
    InvalidSdp(String),
    #[error("the offer has no audio codec in common with the gateway")]
    IncompatibleCodecs,
    #[error("peer {0:?} already exists")]
    DuplicatePeer(PeerId),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CandidateError {
    #[error("no such peer")]
    UnknownPeer,
    #[error("invalid candidate: {0}")]
    Invalid(String),
}

/// One received audio frame (one RTP packet's payload, SRTP already removed).
#[derive(Debug, Clone)]
pub struct MediaFrame {
    pub mid: Mid,
    pub pt: Pt,
    pub codec: Option<AudioCodec>,
    /// Media time in the codec's clock rate.
    pub time: MediaTime,
    pub network_time: Instant,
    pub data: Arc<[u8]>,
    /// For RFC 4733 telephone-event frames: the event code (DTMF 0–15).
    pub telephone_event: Option<u8>,
}

#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow.
    Connected(PeerId),
    /// Connectivity was lost (ICE consent expired) or the peer closed.
    Disconnected(PeerId),
    Media(PeerId, MediaFrame),
}

/// A datagram to send from the endpoint's socket.
#[derive(Debug)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Media quality of a WebRTC leg, from str0m's RTCP-based statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    pub packets_received: u64,
    pub packets_sent: u64,
    /// Share of the browser's packets lost towards us, from our receiver reports.
    pub loss_from_browser: Option<f32>,
    /// Share of our packets lost towards the browser, from its receiver reports.
    pub loss_to_browser: Option<f32>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
}

struct Peer {
    rtc: Rtc,
    /// Applied to this peer's answers, renegotiations included.
    options: AnswerOptions,
    stats: LegStats,
    /// Clock of the browser's audio, to turn jitter into time.
    clock_hz: u32,
    /// The audio m-line media flows on (the first one with a codec we speak).
    audio_mid: Mid,
    next_timeout: Option<Instant>,
    connected: bool,
    /// Consent expired or str0m failed; the peer only awaits removal.
    dead: bool,
    reported_dead: bool,
}

/// Every WebRTC peer behind one UDP port.
pub struct Endpoint {
    config: EndpointConfig,
    crypto: Arc<CryptoProvider>,
    /// One certificate for all peers: generating one per call costs a key
    /// generation on the hot path and buys nothing (each DTLS session still
    /// has its own keys).
    cert: DtlsCert,
    peers: HashMap<PeerId, Peer>,
    by_source: HashMap<SocketAddr, PeerId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PeerEvent>,
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Result<Self, String> {
        if config.codecs.is_empty() {
            return Err("at least one audio codec must be enabled".into());
        }
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or("the crypto provider could not generate a DTLS certificate")?;
        Ok(Endpoint {
            config,
            crypto,
            cert,
            peers: HashMap::new(),
            by_source: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn rtc_config(&self, allowed: &[AudioCodec]) -> RtcConfig {
        let mut cfg = Rtc::builder()
            .set_ice_lite(true)
            .set_stats_interval(Some(std::time::Duration::from_secs(2)))
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .clear_codecs();
        let enabled = self
            .config
            .codecs
            .iter()
            .filter(|c| allowed.is_empty() || allowed.contains(c));
        for codec in enabled {
            cfg = match codec {
                AudioCodec::Opus => cfg.enable_opus(true, false),
                AudioCodec::Pcmu => cfg.enable_pcmu(true, false),
                AudioCodec::Pcma => cfg.enable_pcma(true, false),
            };
        }
        // telephone-event at both clock rates browsers use (48 kHz with Opus, 8 kHz with G.711).
        let codecs = cfg.codec_config();
        for (pt, rate) in [
            (126, Frequency::FORTY_EIGHT_KHZ),
            (101, Frequency::EIGHT_KHZ),
        ] {
            codecs.add_config(
                Pt::new_with_value(pt),
                None,
                Codec::Tele,
                rate,
                None,
                FormatParams::default(),
            );
        }
        cfg
    }

    /// Accepts a browser's offer and returns the SDP answer.
    ///
    /// `allowed` narrows the configured codecs for this peer (empty: all of
    /// them), e.g. to G.711 when its media passes through to SIP untranscoded.
    pub fn add_peer(
        &mut self,
        id: PeerId,
        offer_text: &str,
        allowed: &[AudioCodec],
        now: Instant,
    ) -> Result<String, SetupError> {
        self.add_peer_with(id, offer_text, allowed, AnswerOptions::default(), now)
    }

    /// [`add_peer`](Self::add_peer), with `options` applied to this answer
    /// and to those of later renegotiations.
    pub fn add_peer_with(
        &mut self,
        id: PeerId,
        offer_text: &str,
        allowed: &[AudioCodec],
        options: AnswerOptions,
        now: Instant,
    ) -> Result<String, SetupError> {
        if self.peers.contains_key(&id) {
            return Err(SetupError::DuplicatePeer(id));
        }
        let offer = str0m::change::SdpOffer::from_sdp_string(offer_text)
            .map_err(|e| SetupError::InvalidSdp(e.to_string()))?;
        if !allowed.is_empty() && !self.config.codecs.iter().any(|c| allowed.contains(c)) {
            return Err(SetupError::IncompatibleCodecs);
        }
        let mut rtc = self.rtc_config(allowed).build(now);
        let candidate = Candidate::host(self.config.candidate_addr, "udp")
            .map_err(|e| SetupError::InvalidSdp(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SetupError::InvalidSdp(e.to_string()))?;

        let mut peer = Peer {
            rtc,
            options,
            stats: LegStats::default(),
            clock_hz: 48_000,
            audio_mid: Mid::new(),
            next_timeout: None,
            connected: false,
            dead: false,
            reported_dead: false,
        };
        drain(id, &mut peer, &mut self.transmits, &mut |_| {});
        let audio_mids = audio_mids(offer_text);
        if audio_mids.is_empty() {
            return Err(SetupError::InvalidSdp(
                "the offer has no audio m-line".into(),
            ));
        }
        let usable = audio_mids.into_iter().find(|mid| {
            peer.rtc
                .media(*mid)
                .is_some_and(|m| m.kind() == MediaKind::Audio)
                && peer.rtc.writer(*mid).is_some_and(|w| {
                    w.payload_params()
                        .any(|p| AudioCodec::from_str0m(p.spec().codec).is_some())
                })
        });
        let Some(mid) = usable else {
            return Err(SetupError::IncompatibleCodecs);
        };
        peer.audio_mid = mid;
        self.peers.insert(id, peer);
        Ok(shape(answer.to_sdp_string(), options))
    }

    /// Applies a new offer from the browser to an existing peer and returns
    /// the answer: an ICE restart when its ICE credentials changed (str0m
    /// then answers with new credentials of ours, keeps our candidate and
    /// waits for the browser's checks on the new path; DTLS and SRTP go on).
    /// The audio m-line media flows on must still be in the offer. A
    /// refused offer leaves the peer as it was.
    pub fn renegotiate(&mut self, id: PeerId, offer_text: &str) -> Result<String, SetupError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or_else(|| SetupError::InvalidSdp("no such peer".into()))?;
        let offer = str0m::change::SdpOffer::from_sdp_string(offer_text)
            .map_err(|e| SetupError::InvalidSdp(e.to_string()))?;
        if !audio_mids(offer_text).contains(&peer.audio_mid) {
            return Err(SetupError::InvalidSdp(format!(
                "the offer drops the audio m-line in use (mid {})",
                peer.audio_mid
            )));
        }
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SetupError::InvalidSdp(e.to_string()))?;
        let events = &mut self.events;
        drain(id, peer, &mut self.transmits, &mut |ev| {
            events.extend(translate(id, ev))
        });
        report_if_dead(id, peer, events);
        debug!(peer = id.0, "offer renegotiated");
        Ok(shape(answer.to_sdp_string(), peer.options))
    }

    /// Adds a trickled browser candidate. ICE-lite does not need them (the
    /// browser's checks reveal its address), but a valid one helps str0m
    /// pair early; mDNS (`.local`) candidates cannot be resolved here and are skipped.
    pub fn add_remote_candidate(
        &mut self,
        id: PeerId,
        candidate: &str,
    ) -> Result<(), CandidateError> {
        let peer = self.peers.get_mut(&id).ok_or(CandidateError::UnknownPeer)?;
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            return Ok(());
        }
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|host| host.ends_with(".local"))
        {
            debug!(peer = id.0, "skipping mDNS candidate");
            return Ok(());
        }
        let c =
            Candidate::from_sdp_string(line).map_err(|e| CandidateError::Invalid(e.to_string()))?;
        peer.rtc.add_remote_candidate(c);
        drain(id, peer, &mut self.transmits, &mut |ev| {
            self.events.extend(translate(id, ev))
        });
        Ok(())
    }

    /// Forgets a peer. Its DTLS session is closed without further packets.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(mut peer) = self.peers.remove(&id) else {
            return false;
        };
        peer.rtc.disconnect();
        self.by_source.retain(|_, p| *p != id);
        true
    }

    /// Feeds one received datagram. Returns the peer it belonged to, if any.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
    ) -> Option<PeerId> {
        let Ok(contents) = data.try_into() else {
            return None;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.config.candidate_addr,
                contents,
            },
        );
        let cached = self
            .by_source
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = match cached {
            Some(id) => id,
            None => {
                let id = self
                    .peers
                    .iter()
                    .find(|(_, p)| p.rtc.accepts(&input))
                    .map(|(id, _)| *id)?;
                self.by_source.insert(source, id);
                id
            }
        };
        let peer = self.peers.get_mut(&id)?;
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(peer = id.0, "input rejected: {e}");
        }
        let events = &mut self.events;
        drain(id, peer, &mut self.transmits, &mut |ev| {
            events.extend(translate(id, ev))
        });
        report_if_dead(id, peer, events);
        Some(id)
    }

    /// Advances every peer whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Runs on every shard wake-up: walk the peers in place, no collecting.
        let (transmits, events) = (&mut self.transmits, &mut self.events);
        for (&id, peer) in self.peers.iter_mut() {
            if peer.next_timeout.is_none_or(|t| t > now) {
                continue;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(peer = id.0, "timeout handling failed: {e}");
            }
            drain(id, peer, transmits, &mut |ev| {
                events.extend(translate(id, ev))
            });
            report_if_dead(id, peer, events);
        }
    }

    /// The earliest instant any peer needs [`Endpoint::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next_timeout).min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Sends one audio frame to a peer with the given payload type.
    pub fn write_media(
        &mut self,
        id: PeerId,
        mid: Mid,
        pt: Pt,
        time: MediaTime,
        wallclock: Instant,
        data: Arc<[u8]>,
    ) -> bool {
        self.write_with(id, Some(mid), |writer| {
            Some(writer.write(pt, wallclock, time, data))
        })
    }

    /// The latest media statistics of a peer's leg.
    pub fn stats(&self, id: PeerId) -> Option<LegStats> {
        self.peers.get(&id).map(|p| p.stats)
    }

    /// Whether the peer's answer includes `codec`.
    pub fn supports(&mut self, id: PeerId, codec: AudioCodec) -> bool {
        self.audio_pt(id, codec).is_some()
    }

    fn audio_pt(&mut self, id: PeerId, codec: AudioCodec) -> Option<(Mid, Pt)> {
        let peer = self.peers.get_mut(&id)?;
        let mid = peer.audio_mid;
        let writer = peer.rtc.writer(mid)?;
        let pt = writer
            .payload_params()
            .find(|p| AudioCodec::from_str0m(p.spec().codec) == Some(codec))
            .map(|p| p.pt());
        pt.map(|pt| (mid, pt))
    }

    /// Sends one RFC 4733 telephone-event packet as it is: `payload` (one
    /// report), the RTP timestamp `time` on the `clock_hz` clock (the
    /// event's start, on the same timeline as the audio written with that
    /// clock) and the marker bit. str0m's own `Writer::telephone_event`
    /// wants the whole event's duration up front, which a relayed event
    /// does not have; a plain write on the negotiated telephone-event
    /// payload type passes each report through unchanged, on the audio's
    /// SSRC and sequence numbers. False when the peer is not connected or
    /// did not negotiate telephone-event at that clock.
    pub fn write_telephone_event(
        &mut self,
        id: PeerId,
        clock_hz: u32,
        time: u64,
        marker: bool,
        wallclock: Instant,
        payload: &[u8],
    ) -> bool {
        let clock = match clock_hz {
            48_000 => Frequency::FORTY_EIGHT_KHZ,
            8_000 => Frequency::EIGHT_KHZ,
            _ => return false,
        };
        self.write_with(id, None, |writer| {
            let pt = writer
                .payload_params()
                .find(|p| p.spec().codec == Codec::Tele && p.spec().clock_rate == clock)
                .map(|p| p.pt())?;
            Some(writer.start_of_talkspurt(marker).write(
                pt,
                wallclock,
                MediaTime::new(time, clock),
                payload,
            ))
        })
    }

    /// Hands a connected peer's writer for `mid` (its audio media when
    /// `None`) to `write` and sends what that produced. False when there is
    /// no such peer or media, `write` declines (`None`), or str0m refuses.
    fn write_with(
        &mut self,
        id: PeerId,
        mid: Option<Mid>,
        write: impl FnOnce(Writer<'_>) -> Option<Result<(), RtcError>>,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        if !peer.connected {
            return false;
        }
        let Some(writer) = peer.rtc.writer(mid.unwrap_or(peer.audio_mid)) else {
            return false;
        };
        match write(writer) {
            None => return false,
            Some(Err(e)) => {
                warn!(peer = id.0, "write failed: {e}");
                return false;
            }
            Some(Ok(())) => {}
        }
        let events = &mut self.events;
        drain(id, peer, &mut self.transmits, &mut |ev| {
            events.extend(translate(id, ev))
        });
        true
    }

    /// Sends one audio frame in `codec` on the peer's audio media.
    pub fn write_audio(
        &mut self,
        id: PeerId,
        codec: AudioCodec,
        time: MediaTime,
        wallclock: Instant,
        data: &[u8],
    ) -> bool {
        match self.audio_pt(id, codec) {
            Some((mid, pt)) => self.write_media(id, mid, pt, time, wallclock, data.into()),
            None => false,
        }
    }
}

/// Applies a peer's [`AnswerOptions`] to an answer str0m wrote.
fn shape(answer: String, options: AnswerOptions) -> String {
    if options.narrowband_opus {
        narrowband_opus(&answer)
    } else {
        answer
    }
}

/// Reports a peer's loss of connectivity, once.
fn report_if_dead(id: PeerId, peer: &mut Peer, events: &mut VecDeque<PeerEvent>) {
    if (peer.dead || !peer.rtc.is_alive()) && !peer.reported_dead {
        peer.reported_dead = true;
        events.push_back(PeerEvent::Disconnected(id));
    }
}

/// The mids of the offer's audio m-lines. str0m announces media with an
/// event only after later polls, and the answer must be judged now.
fn audio_mids(offer: &str) -> Vec<Mid> {
    let mut mids = Vec::new();
    let mut in_audio = false;
    for line in offer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio ");
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if in_audio && !mid.is_empty() && mid.len() <= 16 {
                mids.push(Mid::from(mid));
            }
        }
    }
    mids
}

/// Drains one peer's output until str0m reports its next timeout, as str0m
/// requires after every mutation. Events go to `on_event` unfiltered; the
/// connection-state ones are also recorded on the peer.
fn drain(
    id: PeerId,
    peer: &mut Peer,
    transmits: &mut VecDeque<Transmit>,
    on_event: &mut dyn FnMut(Event),
) {
    loop {
        match peer.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                peer.next_timeout = Some(t);
                return;
            }
            Ok(Output::Transmit(t)) => transmits.push_back(Transmit {
                destination: t.destination,
                contents: t.contents.into(),
            }),
            Ok(Output::Event(ev)) => {
                match &ev {
                    Event::MediaData(d) => peer.clock_hz = d.time.frequency().get(),
                    Event::MediaIngressStats(s) => {
                        peer.stats.packets_received = s.packets;
                        peer.stats.loss_from_browser = s.loss.or(peer.stats.loss_from_browser);
                        peer.stats.jitter_ms =
                            Some(f64::from(s.jitter) * 1000.0 / f64::from(peer.clock_hz.max(1)));
                        if let Some(rtt) = s.rtt {
                            peer.stats.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    Event::MediaEgressStats(s) => {
                        peer.stats.packets_sent = s.packets;
                        peer.stats.loss_to_browser = s.loss.or(peer.stats.loss_to_browser);
                        if let Some(rtt) = s.rtt {
                            peer.stats.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    Event::Connected => peer.connected = true,
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        peer.dead = true;
                    }
                    _ => {}
                }
                on_event(ev);
            }
            Err(e) => {
                warn!(peer = id.0, "peer failed: {e}");
                peer.dead = true;
                peer.next_timeout = None;
                return;
            }
        }
    }
}

/// Maps the str0m events the gateway cares about; disconnection is reported
/// separately (once) by `report_if_dead`.
fn translate(id: PeerId, ev: Event) -> Option<PeerEvent> {
    match ev {
        Event::Connected => Some(PeerEvent::Connected(id)),
        Event::MediaData(d) => Some(PeerEvent::Media(
            id,
            MediaFrame {
                mid: d.mid,
                pt: d.pt,
                codec: AudioCodec::from_str0m(d.params.spec().codec),
                time: d.time,
                network_time: d.network_time,
                telephone_event: match d.codec_extra {
                    CodecExtra::Tele(t) => Some(t.event),
                    _ => None,
                },
                data: d.data,
            },
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audio part of an offer as Chromium makes it (trimmed of video and
    /// extensions that play no part here).
    const CHROME_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Hx8q\r\n\
a=ice-pwd:3Yy0kq9ZqBkWJ7W2QOZz2T9A\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 9B:4E:8A:6E:AF:BC:9F:4D:0A:34:6E:1D:9C:1F:43:3A:7A:2B:5C:7D:6E:8F:90:A1:B2:C3:D4:E5:F6:07:18:29\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:- 1b2c3d4e-0000-4000-8000-000000000001\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1001 cname:abcdefgh\r\n";

    fn endpoint(codecs: Vec<AudioCodec>) -> Endpoint {
        Endpoint::new(EndpointConfig {
            candidate_addr: "203.0.113.7:40000".parse().unwrap(),
            codecs,
        })
        .unwrap()
    }

    fn all() -> Vec<AudioCodec> {
        vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma]
    }

    /// The Chrome offer reduced to the given payload types (m-line and attributes).
    fn only_payloads(pts: &[&str]) -> String {
        let keeps = |l: &str| {
            let Some(rest) = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
                .iter()
                .find_map(|p| l.strip_prefix(p))
            else {
                return true;
            };
            pts.contains(&rest.split_whitespace().next().unwrap_or(""))
        };
        CHROME_OFFER
            .replace("111 63 9 0 8 13 110 126", &pts.join(" "))
            .lines()
            .filter(|l| keeps(l))
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    }

    /// The payload names in the answer's audio m-line, in order.
    fn answered_codecs(answer: &str) -> Vec<String> {
        answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn answers_a_chrome_offer_with_audio_codecs_telephone_event_and_our_candidate() {
        let mut ep = endpoint(all());
        let answer = ep
            .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
            .unwrap();
        let codecs = answered_codecs(&answer);
        for want in [
            "opus/48000/2",
            "PCMU/8000",
            "PCMA/8000",
            "telephone-event/48000",
            "telephone-event/8000",
        ] {
            assert!(
                codecs.iter().any(|c| c == want),
                "{want} missing from {codecs:?}"
            );
        }
        assert!(!codecs.iter().any(|c| c.starts_with("G722")), "{codecs:?}");
        assert!(answer.contains("a=ice-lite"), "ICE-lite is announced");
        assert!(answer.contains("a=rtcp-mux"));
        assert!(
            answer.contains("203.0.113.7 40000 typ host"),
            "the advertised address is the candidate:\n{answer}"
        );
        assert_eq!(ep.peer_count(), 1);
    }

    #[test]
    fn a_per_peer_restriction_narrows_the_answer_further() {
        let mut ep = endpoint(all());
        let g711 = [AudioCodec::Pcmu, AudioCodec::Pcma];
        let answer = ep
            .add_peer(PeerId(1), CHROME_OFFER, &g711, Instant::now())
            .unwrap();
        let codecs = answered_codecs(&answer);
        assert!(!codecs.iter().any(|c| c.starts_with("opus")), "{codecs:?}");
        assert!(ep.supports(PeerId(1), AudioCodec::Pcmu));
        assert!(ep.supports(PeerId(1), AudioCodec::Pcma));
        assert!(!ep.supports(PeerId(1), AudioCodec::Opus));
        let opus_only = only_payloads(&["111", "110"]);
        assert_eq!(
            ep.add_peer(PeerId(2), &opus_only, &[AudioCodec::Pcmu], Instant::now()),
            Err(SetupError::IncompatibleCodecs),
            "a browser offering only Opus cannot be passed through to G.711"
        );
    }

    #[test]
    fn restricting_codecs_narrows_the_answer() {
        let mut ep = endpoint(vec![AudioCodec::Pcmu]);
        let answer = ep
            .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
            .unwrap();
        let codecs = answered_codecs(&answer);
        assert!(codecs.iter().any(|c| c == "PCMU/8000"), "{codecs:?}");
        assert!(
            !codecs
                .iter()
                .any(|c| c.starts_with("opus") || c.starts_with("PCMA")),
            "{codecs:?}"
        );
    }

    #[test]
    fn bad_offers_are_refused_with_a_reason() {
        let mut ep = endpoint(all());
        let now = Instant::now();
        assert!(matches!(
            ep.add_peer(PeerId(1), "hello", &[], now),
            Err(SetupError::InvalidSdp(_))
        ));
        let g722_only = only_payloads(&["9"]);
        assert_eq!(
            ep.add_peer(PeerId(2), &g722_only, &[], now),
            Err(SetupError::IncompatibleCodecs)
        );
        let video_only = CHROME_OFFER.replace("m=audio", "m=video");
        assert!(ep.add_peer(PeerId(3), &video_only, &[], now).is_err());
        assert_eq!(ep.peer_count(), 0, "refused offers leave nothing behind");
    }

    #[test]
    fn peers_are_unique_and_removable() {
        let mut ep = endpoint(all());
        let now = Instant::now();
        ep.add_peer(PeerId(1), CHROME_OFFER, &[], now).unwrap();
        assert_eq!(
            ep.add_peer(PeerId(1), CHROME_OFFER, &[], now),
            Err(SetupError::DuplicatePeer(PeerId(1)))
        );
        assert!(ep.remove_peer(PeerId(1)));
        assert!(!ep.remove_peer(PeerId(1)));
        assert_eq!(ep.peer_count(), 0);
        assert_eq!(
            ep.add_remote_candidate(PeerId(1), "candidate:1 1 udp 1 127.0.0.1 9 typ host"),
            Err(CandidateError::UnknownPeer)
        );
    }

    fn ice_ufrag(sdp: &str) -> &str {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .expect("an ice-ufrag")
    }

    #[test]
    fn a_new_offer_with_new_ice_credentials_restarts_ice() {
        let mut ep = endpoint(all());
        let first = ep
            .add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
            .unwrap();
        let restart = CHROME_OFFER
            .replace("o=- 4611731400430051336 2", "o=- 4611731400430051336 3")
            .replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w")
            .replace(
                "a=ice-pwd:3Yy0kq9ZqBkWJ7W2QOZz2T9A",
                "a=ice-pwd:8Kk1pq0ZrCmXK8X3RPaA3U0B",
            );
        let second = ep.renegotiate(PeerId(1), &restart).unwrap();
        assert_ne!(
            ice_ufrag(&first),
            ice_ufrag(&second),
            "new local credentials answer an ICE restart:\n{second}"
        );
        assert!(second.contains("a=ice-lite"));
        assert!(
            second.contains("203.0.113.7 40000 typ host"),
            "our candidate stays:\n{second}"
        );
        assert_eq!(
            answered_codecs(&first),
            answered_codecs(&second),
            "same codecs as before"
        );
    }

    #[test]
    fn a_refused_renegotiation_leaves_the_peer_usable() {
        let mut ep = endpoint(all());
        ep.add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
            .unwrap();
        assert!(matches!(
            ep.renegotiate(PeerId(1), "hello"),
            Err(SetupError::InvalidSdp(_))
        ));
        let other_mid = CHROME_OFFER
            .replace("a=mid:0", "a=mid:1")
            .replace("a=group:BUNDLE 0", "a=group:BUNDLE 1");
        assert!(matches!(
            ep.renegotiate(PeerId(1), &other_mid),
            Err(SetupError::InvalidSdp(m)) if m.contains("mid")
        ));
        assert!(matches!(
            ep.renegotiate(PeerId(2), CHROME_OFFER),
            Err(SetupError::InvalidSdp(_))
        ));
        assert_eq!(ep.peer_count(), 1);
        let restart = CHROME_OFFER.replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w");
        ep.renegotiate(PeerId(1), &restart)
            .expect("a good offer still works after bad ones");
    }

    fn opus_fmtp(sdp: &str) -> Vec<&str> {
        let pt = sdp
            .lines()
            .find_map(|l| l.strip_suffix(" opus/48000/2")?.strip_prefix("a=rtpmap:"))
            .expect("an Opus rtpmap");
        let prefix = format!("a=fmtp:{pt} ");
        sdp.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    #[test]
    fn narrowband_opus_is_asked_for_only_when_wanted_and_kept_on_renegotiation() {
        let mut ep = endpoint(all());
        let now = Instant::now();
        let narrow = AnswerOptions {
            narrowband_opus: true,
        };
        let fullband = ep.add_peer(PeerId(1), CHROME_OFFER, &[], now).unwrap();
        assert!(
            !fullband.contains("maxplaybackrate"),
            "the echo line keeps fullband:\n{fullband}"
        );
        let answer = ep
            .add_peer_with(PeerId(2), CHROME_OFFER, &[AudioCodec::Opus], narrow, now)
            .unwrap();
        let params = opus_fmtp(&answer);
        assert_eq!(params.len(), 1, "one fmtp line:\n{answer}");
        let params: Vec<&str> = params[0].split(';').collect();
        for want in [
            "maxplaybackrate=8000",
            "sprop-maxcapturerate=8000",
            "useinbandfec=1",
        ] {
            assert_eq!(
                params.iter().filter(|p| **p == want).count(),
                1,
                "{want} once in {params:?}"
            );
        }
        assert!(answer.ends_with("\r\n") && !answer.replace("\r\n", "").contains('\n'));
        str0m::change::SdpAnswer::from_sdp_string(&answer).expect("still valid SDP");
        let restart = CHROME_OFFER.replace("a=ice-ufrag:Hx8q", "a=ice-ufrag:Zq7w");
        let again = ep.renegotiate(PeerId(2), &restart).unwrap();
        assert_eq!(
            opus_fmtp(&again),
            opus_fmtp(&answer),
            "renegotiation keeps it"
        );
        // A G.711 answer has nothing to narrow.
        let g711 = ep
            .add_peer_with(PeerId(3), CHROME_OFFER, &[AudioCodec::Pcmu], narrow, now)
            .unwrap();
        assert!(!g711.contains("maxplaybackrate") && !g711.contains("opus"));
    }

    #[test]
    fn stray_datagrams_belong_to_no_peer() {
        let mut ep = endpoint(all());
        ep.add_peer(PeerId(1), CHROME_OFFER, &[], Instant::now())
            .unwrap();
        let source = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(ep.handle_receive(Instant::now(), source, b"garbage"), None);
        assert_eq!(ep.handle_receive(Instant::now(), source, &[]), None);
        // An RTP-looking packet from an unknown source is not accepted either.
        let mut rtp = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 1];
        rtp.extend([0u8; 160]);
        assert_eq!(ep.handle_receive(Instant::now(), source, &rtp), None);
    }
}

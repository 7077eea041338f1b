//! Every browser peer behind one UDP port: adding and renegotiating
//! peers, feeding datagrams and timeouts, draining transmits and events.
//! Writing media is in `write.rs`, the per-peer state and drain in
//! `peer.rs`, the public types in `types.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::crypto::dtls::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::format::{Codec, CodecConfig, FormatParams};
use str0m::media::{Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Input, Rtc, RtcConfig};
use tracing::debug;

mod offer_check;
mod peer;
mod types;
mod write;

use peer::{audio_mids, drain, report_if_dead, shape, translate, Peer};
pub use types::{
    AnswerOptions, AudioCodec, CandidateError, EndpointConfig, LegStats, MediaFrame, PeerEvent,
    PeerId, SetupError, Transmit,
};

/// Every WebRTC peer behind one UDP port.
pub struct Endpoint {
    config: EndpointConfig,
    crypto: Arc<CryptoProvider>,
    /// One certificate for all peers: generating one per call costs a key
    /// generation on the hot path and buys nothing (each DTLS session still
    /// has its own keys).
    cert: DtlsCert,
    /// Boxed: a `Peer` holds str0m's `Rtc` inline (~10 KiB), and a map
    /// of them would keep that much per spare bucket and move it all on
    /// every growth, inside the media loop.
    peers: HashMap<PeerId, Box<Peer>>,
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
            .set_extension_map(audio_extensions())
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
        // No `a=rtcp-fb:… transport-cc` either, to match the extension map.
        let params = codecs
            .params()
            .iter()
            .map(|p| {
                let mut p = *p;
                p.set_fb_transport_cc(false);
                p
            })
            .collect();
        *codecs = CodecConfig::new_from_payload_params(params);
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
        offer_check::check_credentials(offer_text).map_err(SetupError::InvalidSdp)?;
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
        self.peers.insert(id, Box::new(peer));
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

    /// The latest media statistics of a peer's leg.
    pub fn stats(&self, id: PeerId) -> Option<LegStats> {
        self.peers.get(&id).map(|p| p.stats)
    }
}

/// The RTP header extensions an audio-only gateway answers: the MID that
/// BUNDLE demultiplexes on and the audio level. Not transport-cc or
/// abs-send-time: both feed bandwidth estimation, which the gateway does
/// not run, and str0m keeps a 1 000-packet transport-cc send record per
/// call (~90 KiB; docs/performance.md, "Memory per call").
fn audio_extensions() -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    exts.set(1, Extension::AudioLevel);
    exts.set(4, Extension::RtpMid);
    exts
}

#[cfg(test)]
mod tests;

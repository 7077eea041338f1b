//! What the endpoint's owner sees: codecs, peer ids, settings, events,
//! transmits, statistics and errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{MediaTime, Mid, Pt};

/// Audio codecs the WebRTC leg can negotiate. Telephone-event is always offered alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Opus,
    Pcmu,
    Pcma,
}

impl AudioCodec {
    pub(super) fn from_str0m(c: Codec) -> Option<Self> {
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
    /// Ask for narrowband Opus at 24 kb/s (`maxplaybackrate=8000;
    /// sprop-maxcapturerate=8000;maxaveragebitrate=24000` on the Opus fmtp
    /// line, RFC 7587): for calls whose other leg is 8 kHz.
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
    /// RTP payload bytes each way, as of str0m's last stats snapshot (every 2 s).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Share of the browser's packets lost towards us, from our receiver reports.
    pub loss_from_browser: Option<f32>,
    /// Share of our packets lost towards the browser, from its receiver reports.
    pub loss_to_browser: Option<f32>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
}

//! The WebRTC leg, sans IO.
//!
//! An [`Endpoint`] holds every browser peer that shares one UDP port. The
//! owner (a media shard) feeds it datagrams and timeouts and drains
//! transmits and [`PeerEvent`]s; nothing here touches a socket or a clock.
//!
//! Each peer is a str0m [`Rtc`](str0m::Rtc) in ICE-lite mode: Gangway has a
//! reachable address, so the browser does the connectivity checks and we only
//! answer them. Packets are routed to peers by source address once known, and
//! by str0m's own `accepts` check (STUN username) for a new source.

mod endpoint;
mod narrowband;

pub use endpoint::{
    AnswerOptions, AudioCodec, CandidateError, Endpoint, EndpointConfig, LegStats, MediaFrame,
    PeerEvent, PeerId, SetupError, Transmit,
};

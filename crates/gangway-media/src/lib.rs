//! Media shards.
//!
//! A shard is one OS thread running a single-threaded loop that owns a UDP
//! socket (the WebRTC port) and every peer on it. The rest of the gateway
//! talks to a shard only through [`ShardHandle`] commands; results and leg
//! events come back on the channel each call supplies. Packets never leave
//! the shard's thread.
//!
//! A call's media goes back to the browser ([`MediaRoute::Echo`]) or to its
//! SIP leg ([`MediaRoute::Bridge`]), passed through or transcoded. What a
//! bridged call does with its media is decided by its sans-IO `Bridge`
//! (`bridge/`); the shard (`shard/`) owns the sockets and moves the bytes.
//! `types.rs` holds the vocabulary both share.

mod bridge;
mod shard;
mod types;

pub use bridge::LegSummary;
pub use shard::{
    LegEventTx, MediaReport, MediaReportTx, RtpPorts, ShardHandle, ShardMetrics, ShardStartError,
    RESERVED_EVENTS,
};
pub use types::{CodecPolicy, Flow, Law, LegEvent, MediaPolicy, MediaRoute, OpusSettings};
pub mod dtmf;
pub mod dtmf_relay;
pub mod footprint;
pub mod g711;
pub mod jitter;
pub mod plc;
pub mod quality;
pub mod rtcp;
pub mod rtp;
pub mod transcode;

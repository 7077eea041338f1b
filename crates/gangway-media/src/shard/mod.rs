//! Media shards: each one OS thread running a mio poll loop ([`run`]) that
//! owns a WebRTC UDP port, the `Endpoint` with all its peers, and every
//! bridged call's RTP and RTCP sockets. The loop only moves bytes: each
//! bridged call's media policy is its sans-IO [`Bridge`](crate::bridge).
//!
//! - [`handle`]: [`ShardHandle`], the gateway's way in, and the full-queue
//!   policy.
//! - [`queue`]: the commands and the queue's two ends.
//! - [`run`]: the loop, the I/O, and carrying out what bridges ask for.
//! - [`commands`]: setting calls up and taking them down, and the other
//!   commands.
//! - [`peers`]: the calls by slot (slot = index = poll tokens).
//! - [`metrics`]: [`ShardMetrics`] and the shard's own per-packet [`Tally`].
//! - [`report`]: the end-of-call media summary.
//! - [`ports`]: the SIP legs' RTP port range.
//! - [`buffers`]: the WebRTC port's socket buffers, larger than the
//!   kernel's default.
//!
//! Nothing is shared on the media path: per-packet counts are plain
//! integers of the shard's, published to the Prometheus metrics every
//! 250 ms, when a call ends and when the shard stops.
//!
//! **The command queue is bounded** (4096 commands, a `sync_channel` and
//! the poll's `Waker`), and a [`ShardHandle`] never blocks the task that
//! calls it. When the queue is full, the shard is thousands of commands
//! behind, so:
//! - `add_peer` fails at once: the call's own event channel gets
//!   `LegEvent::Failed` ("the media shard is overloaded"); the call is
//!   refused rather than left waiting;
//! - `remove_peer` and `stop` are never lost, because they free ports and
//!   sockets: they go to an overflow list the shard reads after the queue
//!   (bounded in practice by the calls it holds, each removed once);
//! - every other command (`add_candidate`, `connect_remote`, DTMF,
//!   `renegotiate`) is dropped with a warning.
//!
//! Refused and dropped commands count in `ShardMetrics::commands_dropped`.
//!
//! Events go back on each owner's bounded queue without waiting; see
//! [`deliver`] for what is dropped when an owner stops reading.
//!
//! [`Tally`]: metrics::Tally

mod buffers;
mod commands;
mod deliver;
mod handle;
mod metrics;
mod peers;
mod ports;
mod queue;
mod report;
mod run;

pub use deliver::{LegEventTx, RESERVED as RESERVED_EVENTS};
pub use handle::{ShardHandle, ShardStartError};
pub use metrics::ShardMetrics;
pub use ports::RtpPorts;
pub use report::{MediaReport, MediaReportTx};

/// Inline sizes of a call's entries in a shard's tables
/// (`std::mem::size_of`), for the memory bench (`benches/src/call_memory.rs`).
pub(crate) fn inline_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("shard slot: Option<Peer>", size_of::<Option<peers::Peer>>()),
        ("  Bridged (Bridge + Sockets)", size_of::<peers::Bridged>()),
        (
            "  Sockets (2 mio UdpSocket + port)",
            size_of::<peers::Sockets>(),
        ),
        ("  LegEventTx", size_of::<LegEventTx>()),
    ]
}

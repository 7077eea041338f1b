//! The words the gateway and the media crate share about a call's media:
//! where it goes ([`MediaRoute`]), which codecs and settings apply
//! ([`MediaPolicy`]), the SIP leg's G.711 law and hold direction ([`Law`],
//! [`Flow`]), and what a shard reports back ([`LegEvent`]). Nothing here
//! depends on the shard or the bridge, so both (and the transcoder) can
//! use it without importing each other.

use std::sync::OnceLock;
use std::time::Duration;

use gangway_rtc::{AudioCodec, SetupError};

use crate::g711::LawTables;

/// Where a call's browser media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaRoute {
    /// Straight back to the same browser.
    Echo,
    /// To and from plain RTP on a port of its own (the SIP leg): G.711
    /// passed through, or transcoded when the browser speaks Opus.
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

impl CodecPolicy {
    /// The codec sets the browser leg may answer with, most preferred
    /// first: the shard tries the offer against each in turn.
    pub(crate) fn attempts(self) -> &'static [&'static [AudioCodec]] {
        const G711: &[AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma];
        const OPUS: &[AudioCodec] = &[AudioCodec::Opus];
        match self {
            CodecPolicy::PassthroughFirst => &[G711, OPUS],
            CodecPolicy::OpusToBrowser => &[OPUS, G711],
            CodecPolicy::PassthroughOnly => &[G711],
        }
    }
}

/// Encoder settings for the Opus sent to browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// 0–10; higher costs more CPU. Not better speech at 8 kHz and 24 kb/s:
    /// 1 scored best by P.862 (docs/performance.md, "Speech quality").
    pub complexity: u8,
    pub bitrate: u32,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            complexity: 1,
            bitrate: 24_000,
        }
    }
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

/// The G.711 law of the SIP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Pcmu,
    Pcma,
}

impl Law {
    /// The codec's SDP name.
    pub fn name(self) -> &'static str {
        match self {
            Law::Pcmu => "PCMU",
            Law::Pcma => "PCMA",
        }
    }

    pub fn codec(self) -> AudioCodec {
        match self {
            Law::Pcmu => AudioCodec::Pcmu,
            Law::Pcma => AudioCodec::Pcma,
        }
    }

    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Pcmu => 0,
            Law::Pcma => 8,
        }
    }

    /// The law a codec is, when it is G.711.
    pub(crate) fn of(codec: AudioCodec) -> Option<Law> {
        match codec {
            AudioCodec::Pcmu => Some(Law::Pcmu),
            AudioCodec::Pcma => Some(Law::Pcma),
            AudioCodec::Opus => None,
        }
    }

    pub(crate) fn other(self) -> Law {
        match self {
            Law::Pcmu => Law::Pcma,
            Law::Pcma => Law::Pcmu,
        }
    }

    /// Re-encodes G.711 `data` from this law to `to`, in place; nothing
    /// when they agree. The one place the two laws are converted, for
    /// passthrough calls whose legs chose different laws (either way).
    pub(crate) fn reencode(self, to: Law, data: &mut [u8]) {
        match (self, to) {
            (Law::Pcmu, Law::Pcma) => law_tables().ulaw_to_alaw(data),
            (Law::Pcma, Law::Pcmu) => law_tables().alaw_to_ulaw(data),
            _ => {}
        }
    }
}

/// Built once per process and only read after that, so shards share it
/// without sharing anything they write.
fn law_tables() -> &'static LawTables {
    static TABLES: OnceLock<LawTables> = OnceLock::new();
    TABLES.get_or_init(LawTables::new)
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
    /// The gateway had no capacity for the call: no free RTP port, its
    /// sockets could not be polled, or the shard's queue was full. Not a
    /// fault of the offer.
    NoCapacity(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reencoding_converts_between_the_laws_and_leaves_one_law_alone() {
        // Silence: µ-law 0xff is A-law 0xd5.
        let mut data = [0xffu8; 4];
        Law::Pcmu.reencode(Law::Pcmu, &mut data);
        assert_eq!(data, [0xff; 4]);
        Law::Pcmu.reencode(Law::Pcma, &mut data);
        assert_eq!(data, [0xd5; 4]);
        // A-law has no exact zero: its silence is µ-law's smallest step.
        Law::Pcma.reencode(Law::Pcmu, &mut data);
        assert_eq!(data, [0xfe; 4]);
    }
}

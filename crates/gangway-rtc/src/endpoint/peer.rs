//! One browser peer: its str0m `Rtc` and what the endpoint keeps about
//! it, and the drain that must follow every change to it.

use std::collections::VecDeque;
use std::time::Instant;

use str0m::format::CodecExtra;
use str0m::media::Mid;
use str0m::{Event, IceConnectionState, Output, Rtc};
use tracing::warn;

use super::{AnswerOptions, AudioCodec, LegStats, MediaFrame, PeerEvent, PeerId, Transmit};
use crate::narrowband::narrowband_opus;

pub(super) struct Peer {
    pub(super) rtc: Rtc,
    /// Applied to this peer's answers, renegotiations included.
    pub(super) options: AnswerOptions,
    pub(super) stats: LegStats,
    /// Clock of the browser's audio, to turn jitter into time.
    pub(super) clock_hz: u32,
    /// The audio m-line media flows on (the first one with a codec we speak).
    pub(super) audio_mid: Mid,
    pub(super) next_timeout: Option<Instant>,
    pub(super) connected: bool,
    /// Consent expired or str0m failed; the peer only awaits removal.
    pub(super) dead: bool,
    pub(super) reported_dead: bool,
}

/// Applies a peer's [`AnswerOptions`] to an answer str0m wrote.
pub(super) fn shape(answer: String, options: AnswerOptions) -> String {
    if options.narrowband_opus {
        narrowband_opus(&answer)
    } else {
        answer
    }
}

/// Reports a peer's loss of connectivity, once.
pub(super) fn report_if_dead(id: PeerId, peer: &mut Peer, events: &mut VecDeque<PeerEvent>) {
    if (peer.dead || !peer.rtc.is_alive()) && !peer.reported_dead {
        peer.reported_dead = true;
        events.push_back(PeerEvent::Disconnected(id));
    }
}

/// The mids of the offer's audio m-lines. str0m announces media with an
/// event only after later polls, and the answer must be judged now.
pub(super) fn audio_mids(offer: &str) -> Vec<Mid> {
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
pub(super) fn drain(
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
                        peer.stats.bytes_received = s.bytes;
                        peer.stats.loss_from_browser = s.loss.or(peer.stats.loss_from_browser);
                        peer.stats.jitter_ms =
                            Some(f64::from(s.jitter) * 1000.0 / f64::from(peer.clock_hz.max(1)));
                        if let Some(rtt) = s.rtt {
                            peer.stats.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    Event::MediaEgressStats(s) => {
                        peer.stats.packets_sent = s.packets;
                        peer.stats.bytes_sent = s.bytes;
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
pub(super) fn translate(id: PeerId, ev: Event) -> Option<PeerEvent> {
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

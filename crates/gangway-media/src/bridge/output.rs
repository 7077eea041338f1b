//! What a bridge asks its shell to do, queued in order and drained with
//! [`super::Bridge::poll_output`]. Bytes live in one reused buffer (quinn's
//! `poll_transmit(buf)` idea turned around: the bridge owns the buffer and
//! lends slices of it), so a packet costs no allocation.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use gangway_rtc::AudioCodec;
use str0m::media::MediaTime;

use crate::dtmf_relay::BrowserEvent;
use crate::types::LegEvent;

/// One thing for the shard to do, borrowed from the bridge until the next
/// call into it.
#[derive(Debug, PartialEq)]
pub(crate) enum Output<'a> {
    /// Write to the call's WebRTC peer (through the shard's `Endpoint`).
    ToBrowser(ToBrowser<'a>),
    /// Send an RTP datagram from the call's RTP socket.
    ToSip(SocketAddr, &'a [u8]),
    /// Send an RTCP datagram from the call's RTCP socket.
    RtcpToSip(SocketAddr, &'a [u8]),
    /// Tell the call (the session owning it).
    Leg(LegEvent),
    /// A datagram from the SIP leg was not passed on; the shard counts it.
    Discarded(SocketAddr, Discard),
    /// Call [`super::Bridge::handle_timeout`] at this instant (the reorder
    /// buffer's next deadline). Only the latest request counts; earlier
    /// ones that still fire find nothing due.
    Wake(Instant),
}

/// A write to the browser leg.
#[derive(Debug, PartialEq)]
pub(crate) enum ToBrowser<'a> {
    /// One audio frame in `codec` at media time `time`.
    Audio {
        codec: AudioCodec,
        time: MediaTime,
        wallclock: Instant,
        data: &'a [u8],
    },
    /// One RFC 4733 telephone-event packet; `wallclock` is the event's start.
    Event {
        event: BrowserEvent,
        wallclock: Instant,
    },
}

/// Why an RTP datagram from the SIP leg was not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// No SDP from the far end yet and the hold buffer is full.
    NoRemote,
    /// No SDP from the far end yet: held, replayed by the next `connect`
    /// (never reported as an output).
    Held,
    /// From a source other than the latched (or announced) one.
    WrongSource,
    NotRtp,
    /// A payload type not bridged (comfort noise, telephone-event the far
    /// end did not negotiate, …).
    OtherPayload,
}

/// An output waiting, with where its bytes end in [`Outputs::bytes`].
#[derive(Debug)]
enum Queued {
    Audio {
        codec: AudioCodec,
        time: MediaTime,
        wallclock: Instant,
        end: usize,
    },
    Event(BrowserEvent, Instant),
    Sip(SocketAddr, usize),
    Rtcp(SocketAddr, usize),
    Leg(LegEvent),
    Discarded(SocketAddr, Discard),
}

/// The bridge's output queue.
#[derive(Debug)]
pub(super) struct Outputs {
    queue: VecDeque<Queued>,
    /// The queued outputs' bytes, back to back; `read` is where the next
    /// one starts. Cleared whenever the queue has been drained.
    bytes: Vec<u8>,
    read: usize,
    wake: Option<Instant>,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            // A frame makes a few outputs of ≤ 200 bytes each; both grow
            // (once) for the rare longer burst, never per packet.
            queue: VecDeque::with_capacity(8),
            bytes: Vec::with_capacity(512),
            read: 0,
            wake: None,
        }
    }
}

impl Outputs {
    /// Appends `data` to the bytes (after dropping what was already
    /// handed out, when nothing waits) and returns its range.
    fn store(&mut self, data: &[u8]) -> (usize, usize) {
        if self.queue.is_empty() {
            self.bytes.clear();
            self.read = 0;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        (start, self.bytes.len())
    }

    /// Queues an audio frame for the browser and returns its bytes, for a
    /// conversion in place.
    pub(super) fn audio(
        &mut self,
        codec: AudioCodec,
        time: MediaTime,
        wallclock: Instant,
        data: &[u8],
    ) -> &mut [u8] {
        let (start, end) = self.store(data);
        self.queue.push_back(Queued::Audio {
            codec,
            time,
            wallclock,
            end,
        });
        &mut self.bytes[start..end]
    }

    pub(super) fn event(&mut self, event: BrowserEvent, wallclock: Instant) {
        self.queue.push_back(Queued::Event(event, wallclock));
    }

    pub(super) fn sip(&mut self, dest: SocketAddr, packet: &[u8]) {
        let (_, end) = self.store(packet);
        self.queue.push_back(Queued::Sip(dest, end));
    }

    pub(super) fn rtcp(&mut self, dest: SocketAddr, packet: &[u8]) {
        let (_, end) = self.store(packet);
        self.queue.push_back(Queued::Rtcp(dest, end));
    }

    pub(super) fn leg(&mut self, event: LegEvent) {
        self.queue.push_back(Queued::Leg(event));
    }

    pub(super) fn discarded(&mut self, source: SocketAddr, why: Discard) {
        self.queue.push_back(Queued::Discarded(source, why));
    }

    pub(super) fn wake(&mut self, at: Instant) {
        self.wake = Some(at);
    }

    /// The next output, in the order queued; the wake-up request last.
    pub(super) fn poll(&mut self) -> Option<Output<'_>> {
        let Some(item) = self.queue.pop_front() else {
            return self.wake.take().map(Output::Wake);
        };
        let start = self.read;
        let mut bytes = |end: usize| {
            self.read = end;
            start..end
        };
        Some(match item {
            Queued::Audio {
                codec,
                time,
                wallclock,
                end,
            } => {
                let range = bytes(end);
                Output::ToBrowser(ToBrowser::Audio {
                    codec,
                    time,
                    wallclock,
                    data: &self.bytes[range],
                })
            }
            Queued::Event(event, wallclock) => {
                Output::ToBrowser(ToBrowser::Event { event, wallclock })
            }
            Queued::Sip(dest, end) => {
                let range = bytes(end);
                Output::ToSip(dest, &self.bytes[range])
            }
            Queued::Rtcp(dest, end) => {
                let range = bytes(end);
                Output::RtcpToSip(dest, &self.bytes[range])
            }
            Queued::Leg(event) => Output::Leg(event),
            Queued::Discarded(source, why) => Output::Discarded(source, why),
        })
    }
}

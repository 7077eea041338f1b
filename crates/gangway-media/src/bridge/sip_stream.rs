//! The SIP leg's RTP, both ways: who may send to us (the SDP address,
//! symmetric-RTP latching, packets held until the SDP arrives), our stream
//! towards the far end (one SSRC, continuous sequence and timestamps, paused
//! over a hold), and the far end's timeline towards the browser.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::output::{Discard, Outputs};
use crate::dtmf::EventPacket;
use crate::rtcp::SenderInfo;
use crate::rtp::{self, random_u32, InTimeline, OutStream, RtpPacket};
use crate::types::{Flow, Law};

/// After the far end's media address changes, how long its old source may
/// not be latched onto (unless the new SDP names it exactly).
const PREVIOUS_SOURCE_QUARANTINE: Duration = Duration::from_secs(1);

/// At most 100 ms of 20 ms packets are held waiting for the far end's SDP.
pub(super) const MAX_HELD: usize = 5;

/// See the module documentation.
pub(super) struct SipStream {
    /// From the SIP SDP; `None` until the far end has sent one.
    remote: Option<SocketAddr>,
    /// Symmetric RTP: the source the far end actually sends from, once seen.
    latched: Option<SocketAddr>,
    /// The far end we sent to before the SDP moved us (a transfer, a new
    /// media address) and until when it may not be latched onto again: it
    /// may go on sending for a moment, from the same host as the new one.
    previous: Option<(SocketAddr, Instant)>,
    law: Law,
    /// RTP that arrived before the far end's SDP (a PBX often sends early
    /// media right behind its 183): replayed once the SDP says who may send.
    held: Vec<(SocketAddr, Vec<u8>)>,
    /// Hold: which ways audio may go.
    flow: Flow,
    /// Sending stopped for a hold; the next packet continues the stream.
    paused: bool,
    out: OutStream,
    /// What we sent, for RTCP's sender info and the pause over a hold.
    sent_packets: u32,
    sent_octets: u32,
    last_sent: Option<Instant>,
    from_sip: InTimeline,
    /// Where the far end's audio towards the browser has reached (8 kHz):
    /// an event on another SSRC starts there.
    to_browser_next: Option<u64>,
    /// One packet being written.
    scratch: Vec<u8>,
}

impl Default for SipStream {
    fn default() -> Self {
        SipStream {
            remote: None,
            latched: None,
            previous: None,
            law: Law::Pcmu,
            held: Vec::new(),
            flow: Flow::BOTH,
            paused: false,
            out: OutStream::new(random_u32(), random_u32() as u16, random_u32()),
            sent_packets: 0,
            sent_octets: 0,
            last_sent: None,
            from_sip: InTimeline::default(),
            to_browser_next: None,
            scratch: Vec::with_capacity(256),
        }
    }
}

impl SipStream {
    pub(super) fn law(&self) -> Law {
        self.law
    }

    pub(super) fn flow(&self) -> Flow {
        self.flow
    }

    /// The far end's announced media address.
    pub(super) fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Where our RTP goes: the latched source, else the SDP's address.
    pub(super) fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.remote)
    }

    pub(super) fn ssrc(&self) -> u32 {
        self.out.ssrc()
    }

    /// The far end's media address and law, from its latest SDP. An
    /// unspecified address (RFC 2543 hold, `c=0.0.0.0`) keeps the one we had.
    pub(super) fn connect(&mut self, now: Instant, remote: SocketAddr, law: Law) {
        if remote.ip().is_unspecified() {
            if self.remote.is_some() {
                self.law = law;
            }
            return;
        }
        if self.remote != Some(remote) {
            // A new media address (e.g. the 200's after the 183's): latch anew.
            self.previous = self
                .latched
                .or(self.remote)
                .map(|old| (old, now + PREVIOUS_SOURCE_QUARANTINE));
            self.latched = None;
        }
        self.remote = Some(remote);
        self.law = law;
    }

    /// Hold or resume. Our stream keeps its SSRC and sequence numbers over
    /// a hold and its timestamps follow the clock, so the far end resumes
    /// playing it.
    pub(super) fn set_flow(&mut self, flow: Flow) {
        if !flow.to_sip {
            self.paused = true;
        }
        self.flow = flow;
    }

    /// Takes the datagrams held while the far end's SDP was unknown.
    pub(super) fn take_held(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.held)
    }

    fn is_previous(&self, now: Instant, source: SocketAddr) -> bool {
        self.previous
            .is_some_and(|(old, until)| old == source && now < until)
    }

    /// Checks one datagram from the SIP leg: from the far end, RTP, and in
    /// the SIP leg's law or `event_pt` (telephone-event).
    pub(super) fn accept<'a>(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &'a [u8],
        event_pt: Option<u8>,
    ) -> Result<RtpPacket<'a>, Discard> {
        let Some(remote) = self.remote else {
            if self.held.len() < MAX_HELD {
                self.held.push((source, data.to_vec()));
                return Err(Discard::Held);
            }
            return Err(Discard::NoRemote);
        };
        match self.latched {
            Some(latched) if latched != source => return Err(Discard::WrongSource),
            Some(_) => {}
            // Symmetric RTP (RFC 4961): the far end may send from another port
            // than it announced (NAT); follow the first source, on the announced
            // host only, so strangers cannot take over the stream.
            None if source == remote => self.latched = Some(source),
            None if source.ip() == remote.ip() && !self.is_previous(now, source) => {
                self.latched = Some(source)
            }
            None => return Err(Discard::WrongSource),
        }
        let packet = rtp::parse(data).ok_or(Discard::NotRtp)?;
        if Some(packet.pt) != event_pt && packet.pt != self.law.payload_type() {
            return Err(Discard::OtherPayload);
        }
        Ok(packet)
    }

    /// Where a telephone event from the far end starts on the browser's
    /// timeline: by its timestamp among the audio, or (another SSRC) where
    /// the next audio goes.
    pub(super) fn place_event(&self, packet: &RtpPacket<'_>) -> u64 {
        self.from_sip
            .place(packet.ssrc, packet.ts)
            .or(self.to_browser_next)
            .unwrap_or(0)
    }

    /// The continuous 8 kHz time of an audio packet towards the browser.
    pub(super) fn place_audio(&mut self, packet: &RtpPacket<'_>) -> u64 {
        let samples = packet.payload.len() as u32;
        let time = self.from_sip.map(packet.ssrc, packet.ts, samples);
        // A late packet must not pull this back.
        let end = time + u64::from(samples);
        self.to_browser_next = Some(self.to_browser_next.map_or(end, |n| n.max(end)));
        time
    }

    /// Where audio for the far end goes now, or `None` when nothing may be
    /// sent (held by either side, or no SDP yet). After a hold, the stream
    /// continues as much later as the hold lasted.
    pub(super) fn start_sending(&mut self, now: Instant) -> Option<SocketAddr> {
        if !self.flow.to_sip {
            return None;
        }
        let dest = self.destination()?;
        if std::mem::take(&mut self.paused) {
            if let Some(last) = self.last_sent {
                let elapsed = now.saturating_duration_since(last).as_secs_f64() * 8000.0;
                self.out.pause(elapsed as u64);
            }
        }
        Some(dest)
    }

    /// Writes G.711 in the SIP leg's law as RTP packets of `chunk` samples
    /// starting at 8 kHz time `time`, queued for `dest`.
    pub(super) fn send_audio(
        &mut self,
        dest: SocketAddr,
        time: u64,
        g711: &[u8],
        chunk: usize,
        out: &mut Outputs,
    ) {
        for (i, part) in g711.chunks(chunk).enumerate() {
            self.out.write(
                self.law.payload_type(),
                time + (i * chunk) as u64,
                part.len() as u32,
                part,
                &mut self.scratch,
            );
            out.sip(dest, &self.scratch);
            self.sent_packets = self.sent_packets.wrapping_add(1);
            self.sent_octets = self.sent_octets.wrapping_add(part.len() as u32);
        }
    }

    /// Writes a telephone-event packet on our stream (its own start
    /// timestamp; the audio timeline does not move).
    pub(super) fn send_event(
        &mut self,
        dest: SocketAddr,
        pt: u8,
        event: &EventPacket,
        out: &mut Outputs,
    ) {
        self.out.write_event(
            pt,
            event.start_ts,
            event.marker,
            &event.payload,
            &mut self.scratch,
        );
        out.sip(dest, &self.scratch);
    }

    /// A browser frame went out (for the pause over the next hold and RTCP).
    pub(super) fn sent_at(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// The timestamp of our last packet.
    pub(super) fn last_timestamp(&self) -> u32 {
        self.out.last_timestamp()
    }

    /// RTCP's sender info for our stream at `now` (`ntp`: the wallclock
    /// then): the RTP timestamp that corresponds to it, packets and octets.
    pub(super) fn sender_info(&self, now: Instant, ntp: (u32, u32)) -> SenderInfo {
        let elapsed = self
            .last_sent
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        SenderInfo {
            ssrc: self.out.ssrc(),
            ntp,
            rtp_ts: self
                .out
                .last_timestamp()
                .wrapping_add((elapsed * 8000.0) as u32),
            packets: self.sent_packets,
            octets: self.sent_octets,
        }
    }

    pub(super) fn packets_sent(&self) -> u32 {
        self.sent_packets
    }

    /// Payload bytes sent (modulo 2^32, as RTCP counts them).
    pub(super) fn octets_sent(&self) -> u32 {
        self.sent_octets
    }
}

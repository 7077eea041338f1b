//! The SIP side of a bridged call: one RTP socket, G.711 passed through
//! (converted between µ-law and A-law only when the two legs chose
//! different laws), each direction's stream rewritten to stay continuous.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Instant, SystemTime};

use gangway_rtc::AudioCodec;
use mio::net::UdpSocket;
use tracing::debug;

use crate::dtmf::{DtmfReceiver, DtmfSender};
use crate::dtmf_relay::{BrowserEvent, DtmfRelay};
use crate::g711::LawTables;
use crate::jitter::{JitterBuffer, Out};
use crate::rtcp::{self, FarEndReports, ReceiveStats, SenderInfo};
use crate::rtp::{self, InTimeline, OutStream};
use crate::shard::Flow;
use crate::transcode::{OpusBandwidthCount, SipAudio, Transcoder, FRAME_SAMPLES};

/// The G.711 law of the SIP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Pcmu,
    Pcma,
}

impl Law {
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
}

/// The UDP ports the SIP leg's RTP may use, and the address they bind to.
#[derive(Debug, Clone)]
pub struct RtpPorts {
    pub ip: IpAddr,
    /// Inclusive range; even ports are used (RTCP would take the odd one).
    pub min: u16,
    pub max: u16,
}

/// Hands out ports from an [`RtpPorts`] range, skipping ones in use.
pub(crate) struct PortAllocator {
    range: RtpPorts,
    next: u16,
}

impl PortAllocator {
    pub(crate) fn new(range: RtpPorts) -> Self {
        // Start at a random even port so instances sharing a range rarely collide.
        let slots = u32::from(range.max.saturating_sub(range.min)) / 2 + 1;
        let first = even(range.min);
        let next = first.saturating_add((random_u32() % slots) as u16 * 2);
        PortAllocator { range, next }
    }

    /// Binds the next free even port and the odd one above it (RTCP).
    pub(crate) fn bind(&mut self) -> Option<(u16, StdUdpSocket, StdUdpSocket)> {
        let slots = u32::from(self.range.max.saturating_sub(self.range.min)) / 2 + 1;
        for _ in 0..slots {
            let port = self.next;
            self.next = match port.checked_add(2) {
                Some(p) if p <= self.range.max => p,
                _ => even(self.range.min),
            };
            if port > self.range.max {
                continue;
            }
            let bind = |p: u16| {
                let s = StdUdpSocket::bind(SocketAddr::new(self.range.ip, p)).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            if let (Some(rtp), Some(rtcp)) = (bind(port), port.checked_add(1).and_then(bind)) {
                return Some((port, rtp, rtcp));
            }
        }
        None
    }
}

fn even(p: u16) -> u16 {
    p.saturating_add(p % 2)
}

/// Why an RTP datagram from the SIP leg was not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// No SDP from the far end yet and the hold buffer is full.
    NoRemote,
    /// No SDP from the far end yet: held, replayed by the next `connect`.
    Held,
    /// From a source other than the latched (or announced) one.
    WrongSource,
    NotRtp,
    /// A payload type not bridged (telephone-event, comfort noise, …).
    OtherPayload,
}

/// After the far end's media address changes, how long its old source may
/// not be latched onto (unless the new SDP names it exactly).
const PREVIOUS_SOURCE_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(1);

/// A bridged call's SIP-side media state.
pub(crate) struct Bridge {
    /// Non-blocking; the shard's poll loop reads them (no task per socket).
    pub socket: UdpSocket,
    pub rtcp_socket: UdpSocket,
    pub port: u16,
    /// From the SIP SDP; `None` until the far end has sent one.
    remote: Option<SocketAddr>,
    /// Symmetric RTP: the source the far end actually sends from, once seen.
    latched: Option<SocketAddr>,
    /// The far end we sent to before the SDP moved us (a transfer, a new
    /// media address) and until when it may not be latched onto again: it
    /// may go on sending for a moment, from the same host as the new one.
    previous: Option<(SocketAddr, Instant)>,
    law: Law,
    to_sip: OutStream,
    from_sip: InTimeline,
    /// RTP that arrived before the far end's SDP (a PBX often sends early
    /// media right behind its 183): replayed once the SDP says who may send.
    held: Vec<(SocketAddr, Vec<u8>)>,
    /// RTCP: what we received (for report blocks) and sent (for the sender info).
    stats: ReceiveStats,
    sent_packets: u32,
    sent_octets: u32,
    last_sent: Option<Instant>,
    next_report: Option<Instant>,
    /// Origin of arrival times for the jitter estimate.
    epoch: Instant,
    /// Set when the browser leg speaks Opus and the SIP leg G.711.
    transcoder: Option<Transcoder>,
    /// Media inactivity is watched from the answer on (early media may be silent).
    answered_at: Option<Instant>,
    last_from_sip: Option<Instant>,
    last_from_browser: Option<Instant>,
    timed_out: bool,
    /// Hold: which ways audio may go on the SIP leg.
    flow: Flow,
    /// Sending stopped for a hold; the next packet continues the stream.
    paused: bool,
    /// RFC 4733 on the SIP leg: the far end's payload type, when it accepted telephone-event.
    dtmf_pt: Option<u8>,
    dtmf_out: DtmfSender,
    dtmf_in: DtmfReceiver,
    /// The far end's digits (RFC 4733 and SIP INFO) as events towards the browser.
    dtmf_to_browser: DtmfRelay,
    /// Where the SIP leg's audio towards the browser has reached (8 kHz):
    /// an event on another SSRC starts there.
    to_browser_next: Option<u64>,
    /// Transcoded calls: the SIP leg's audio, reordered before the Opus encoder.
    jitter: JitterBuffer,
    /// The jitter buffer deadline the shard has been asked to wake for.
    pub(crate) jitter_wake: Option<Instant>,
    /// The browser's own RFC 4733 events (RTCDTMFSender), one digit per event.
    browser_dtmf: DtmfReceiver,
    /// Where the next browser Opus frame should start (8 kHz), to spot losses.
    opus_next: Option<u64>,
    /// Browser frames filled in by FEC or concealment.
    concealed_frames: u64,
    /// The browser's Opus packets by audio bandwidth (TOC byte): did it honour
    /// our request for narrowband?
    opus_bandwidth: OpusBandwidthCount,
    /// The far end's RTCP reports about our stream: RTT and its loss.
    far_end: FarEndReports,
}

/// Media quality of a bridged call's SIP leg.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegSummary {
    pub packets_received: u32,
    /// From sequence numbers (RFC 3550 A.3); duplicates can make it smaller.
    pub packets_lost: u64,
    pub loss_ratio: f64,
    /// Interarrival jitter (RFC 3550 A.8) at the end of the call.
    pub jitter_ms: f64,
    pub packets_sent: u32,
    pub transcoded: bool,
    /// Browser frames lost and filled in (Opus FEC or concealment) before transcoding.
    pub concealed_frames: u64,
    /// SIP-leg frames lost and filled in (fading repeat) before encoding to Opus.
    pub concealed_from_sip: u64,
    /// The reorder buffer on transcoded calls: packets that came after their
    /// time was given up, and how long it waited for a hole at the end.
    pub sip_late_packets: u64,
    pub jitter_buffer_ms: u64,
    /// The browser's Opus packets coded narrowband (4 kHz audio) and wider.
    pub browser_opus_narrowband: u64,
    pub browser_opus_wider: u64,
    /// Round-trip time to the far end from its RTCP reports (RFC 3550
    /// §6.4.1), smoothed; `None` until a report about our stream came back.
    pub rtt_ms: Option<f64>,
    /// The far end's view of our stream, from its latest report block.
    pub far_end_fraction_lost: Option<f64>,
    pub far_end_cumulative_lost: Option<i32>,
}

/// What a datagram from the SIP leg carried.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
    /// Audio for the browser: the law, the continuous 8 kHz time, the payload.
    Audio {
        law: Law,
        time: u64,
        /// Starts a talkspurt: a gap before it is silence, not loss.
        marker: bool,
        payload: &'a [u8],
    },
    /// A telephone-event packet (RFC 4733): the digit when it starts one.
    /// What goes to the browser is queued in [`Bridge::dtmf_to_browser`].
    Event(Option<char>),
}

/// RTP packets built for one browser frame, in one reused buffer.
#[derive(Default)]
pub(crate) struct Packets {
    buf: Vec<u8>,
    ends: Vec<usize>,
    scratch: Vec<u8>,
}

impl Packets {
    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    fn push_scratch(&mut self) {
        self.buf.extend_from_slice(&self.scratch);
        self.ends.push(self.buf.len());
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| &self.buf[a..b])
    }
}

/// At most 100 ms of 20 ms packets are held waiting for the far end's SDP.
const MAX_HELD: usize = 5;

impl Bridge {
    /// Transcodes this call's media: the browser leg negotiated Opus.
    pub(crate) fn set_transcoder(&mut self, transcoder: Transcoder) {
        self.transcoder = Some(transcoder);
        self.dtmf_to_browser.set_opus(true);
    }

    /// Wraps a bound pair of non-blocking sockets (RTP, RTCP); the shard
    /// registers them with its poll loop.
    pub(crate) fn new(port: u16, socket: StdUdpSocket, rtcp_socket: StdUdpSocket) -> Bridge {
        Bridge {
            socket: UdpSocket::from_std(socket),
            rtcp_socket: UdpSocket::from_std(rtcp_socket),
            port,
            remote: None,
            latched: None,
            previous: None,
            law: Law::Pcmu,
            to_sip: OutStream::new(random_u32(), random_u32() as u16, random_u32()),
            from_sip: InTimeline::default(),
            held: Vec::new(),
            stats: ReceiveStats::default(),
            sent_packets: 0,
            sent_octets: 0,
            last_sent: None,
            next_report: None,
            epoch: Instant::now(),
            transcoder: None,
            answered_at: None,
            last_from_sip: None,
            last_from_browser: None,
            timed_out: false,
            flow: Flow::BOTH,
            paused: false,
            dtmf_pt: None,
            dtmf_out: DtmfSender::default(),
            dtmf_in: DtmfReceiver::default(),
            dtmf_to_browser: DtmfRelay::default(),
            opus_next: None,
            concealed_frames: 0,
            browser_dtmf: DtmfReceiver::default(),
            to_browser_next: None,
            jitter: JitterBuffer::default(),
            jitter_wake: None,
            opus_bandwidth: OpusBandwidthCount::default(),
            far_end: FarEndReports::default(),
        }
    }

    /// The far end's media address and law, from its latest SDP.
    /// Takes the datagrams held while the far end's SDP was unknown; the
    /// shard passes them through `accept_from_sip` again after `connect`.
    pub(crate) fn take_held(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.held)
    }

    /// The far end answered: from now on silence on either leg counts.
    pub(crate) fn answered(&mut self, now: Instant) {
        self.answered_at.get_or_insert(now);
    }

    /// True once, when either leg has sent nothing for `timeout` since the
    /// answer (or since its last packet).
    pub(crate) fn media_timed_out(&mut self, now: Instant, timeout: std::time::Duration) -> bool {
        let Some(answered) = self.answered_at else {
            return false;
        };
        if self.timed_out || !self.flow.is_both() {
            return false;
        }
        let silent = |last: Option<Instant>| {
            now.saturating_duration_since(last.unwrap_or(answered).max(answered)) >= timeout
        };
        self.timed_out = silent(self.last_from_sip) || silent(self.last_from_browser);
        self.timed_out
    }

    /// A telephone-event frame from the browser (its RTCDTMFSender): each new
    /// event is sent on as one of ours, with the SIP leg's clock and pacing.
    pub(crate) fn on_browser_dtmf(&mut self, event_start: u64, code: u8) -> bool {
        let payload = [code, 0, 0, 0];
        match self.browser_dtmf.on_packet(0, event_start as u32, &payload) {
            Some(digit) => self.send_dtmf(&digit.to_string()),
            None => false,
        }
    }

    /// Queues digits to send as RFC 4733 events; false when the far end did
    /// not accept telephone-event.
    pub(crate) fn send_dtmf(&mut self, digits: &str) -> bool {
        self.dtmf_pt.is_some() && self.dtmf_out.push(digits) > 0
    }

    /// Hold or resume. Silence during a hold does not count towards the
    /// media timeout, and the watch starts afresh when audio resumes. Our
    /// stream towards the SIP leg keeps its SSRC and sequence numbers and
    /// its timestamps follow the clock, so the far end resumes playing it.
    pub(crate) fn set_flow(&mut self, flow: Flow, now: Instant) {
        if flow.is_both() && !self.flow.is_both() {
            self.last_from_sip = Some(now);
            self.last_from_browser = Some(now);
        }
        if !flow.to_sip {
            // Resume starts the Opus decoder's timeline afresh, not as a
            // loss the length of the hold.
            self.opus_next = None;
            self.paused = true;
        }
        self.flow = flow;
    }

    pub(crate) fn connect(&mut self, remote: SocketAddr, law: Law, dtmf_pt: Option<u8>) {
        self.dtmf_pt = dtmf_pt;
        if remote.ip().is_unspecified() {
            // RFC 2543 hold: keep the address we had; the flow stops sending.
            if self.remote.is_none() {
                return;
            }
            self.law = law;
            return;
        }
        if self.remote != Some(remote) {
            // A new media address (e.g. the 200's after the 183's): latch anew.
            self.previous = self
                .latched
                .or(self.remote)
                .map(|old| (old, Instant::now() + PREVIOUS_SOURCE_QUARANTINE));
            self.latched = None;
        }
        self.remote = Some(remote);
        self.law = law;
        // First report soon after media starts, then every ~5 s.
        self.next_report
            .get_or_insert_with(|| Instant::now() + std::time::Duration::from_secs(1));
    }

    /// Writes our RTCP report into `out` when one is due; returns where it goes
    /// (the far end's RTP port + 1, RFC 3550 §11).
    pub(crate) fn rtcp_due(
        &mut self,
        now: Instant,
        cname: &str,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let remote = self.remote?;
        if self.next_report.is_none_or(|t| now < t) {
            return None;
        }
        self.next_report = Some(rtcp::next_report(now, random_u32()));
        // The RTP timestamp that corresponds to "now" on our stream.
        let elapsed = self
            .last_sent
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let rtp_ts = self
            .to_sip
            .last_timestamp()
            .wrapping_add((elapsed * 8000.0) as u32);
        let info = SenderInfo {
            ssrc: self.to_sip.ssrc(),
            ntp: rtcp::ntp_time(SystemTime::now()),
            rtp_ts,
            packets: self.sent_packets,
            octets: self.sent_octets,
        };
        let block = self.stats.report_block(now);
        rtcp::write_sender_report(out, &info, block.as_ref(), cname);
        Some(SocketAddr::new(remote.ip(), remote.port().wrapping_add(1)))
    }

    /// The SIP leg's media quality over the call, for the end-of-call summary.
    pub(crate) fn summary(&self) -> LegSummary {
        let received = self.stats.packets_received();
        let lost = self.stats.lost().max(0) as u64;
        let expected = u64::from(received) + lost;
        LegSummary {
            packets_received: received,
            packets_lost: lost,
            loss_ratio: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
            jitter_ms: f64::from(self.stats.jitter()) / 8.0,
            packets_sent: self.sent_packets,
            transcoded: self.transcoder.is_some(),
            concealed_frames: self.concealed_frames,
            concealed_from_sip: self.jitter.stats().concealed,
            sip_late_packets: self.jitter.stats().late,
            jitter_buffer_ms: self.jitter.depth().as_millis() as u64,
            browser_opus_narrowband: self.opus_bandwidth.narrowband,
            browser_opus_wider: self.opus_bandwidth.wider,
            rtt_ms: self.far_end.rtt_ms(),
            far_end_fraction_lost: self.far_end.fraction_lost(),
            far_end_cumulative_lost: self.far_end.cumulative_lost(),
        }
    }

    /// RTCP from the far end: its sender report feeds our LSR/DLSR, its
    /// report block about our stream the RTT and the far end's loss.
    pub(crate) fn on_rtcp(&mut self, data: &[u8], now: Instant) -> bool {
        let Some(seen) = rtcp::parse_reports(data, self.to_sip.ssrc()) else {
            return false;
        };
        if let Some((_, secs, frac)) = seen.sender {
            self.stats.on_sender_report(secs, frac, now);
        }
        if let Some(block) = seen.about_us {
            self.far_end
                .on_block(&block, rtcp::ntp_middle(SystemTime::now()));
        }
        true
    }

    /// Turns one browser frame into RTP packets for the SIP leg (more than
    /// one when an Opus packet carries more than 20 ms) and returns where
    /// they go; `None` when the frame cannot go to the SIP leg.
    pub(crate) fn packetize_for_sip(
        &mut self,
        codec: Option<AudioCodec>,
        time_8k: u64,
        payload: &[u8],
        laws: &LawTables,
        scratch: &mut Vec<u8>,
        packets: &mut Packets,
    ) -> Option<SocketAddr> {
        packets.clear();
        self.last_from_browser = Some(Instant::now());
        if !self.flow.to_sip {
            self.opus_next = None;
            return None;
        }
        let dest = self.latched.or(self.remote)?;
        if std::mem::take(&mut self.paused) {
            if let Some(last) = self.last_sent {
                let elapsed = last.elapsed().as_secs_f64() * 8000.0;
                self.to_sip.pause(elapsed as u64);
            }
        }
        let mut base_time = time_8k;
        let g711: &[u8] = match (codec?, self.law) {
            (AudioCodec::Pcmu, Law::Pcmu) | (AudioCodec::Pcma, Law::Pcma) => payload,
            (AudioCodec::Pcmu, Law::Pcma) => {
                scratch.clear();
                scratch.extend_from_slice(payload);
                laws.ulaw_to_alaw(scratch);
                scratch
            }
            (AudioCodec::Pcma, Law::Pcmu) => {
                scratch.clear();
                scratch.extend_from_slice(payload);
                laws.alaw_to_ulaw(scratch);
                scratch
            }
            (AudioCodec::Opus, law) => {
                self.opus_bandwidth.count(payload);
                // A gap in the browser's timeline is lost packets (str0m
                // delivers audio in order): conceal it before this packet.
                let lost = match self.opus_next {
                    Some(next) if time_8k > next => {
                        ((time_8k - next) / FRAME_SAMPLES as u64) as usize
                    }
                    _ => 0,
                };
                let transcoder = self.transcoder.as_mut()?;
                match transcoder.opus_to_g711_after_loss(payload, law, lost) {
                    Ok((concealed, pcm)) => {
                        let gap = (concealed * FRAME_SAMPLES) as u64;
                        self.concealed_frames += concealed as u64;
                        base_time = time_8k.saturating_sub(gap);
                        self.opus_next = Some(base_time + pcm.len() as u64);
                        pcm
                    }
                    Err(e) => {
                        debug!("undecodable Opus packet dropped: {e}");
                        return None;
                    }
                }
            }
        };
        // Passthrough keeps the browser's packetization; decoded Opus goes out in 20 ms packets.
        let chunk = if codec == Some(AudioCodec::Opus) {
            FRAME_SAMPLES
        } else {
            g711.len().max(1)
        };
        for (i, part) in g711.chunks(chunk).enumerate() {
            let time = base_time + (i * chunk) as u64;
            self.to_sip.write(
                self.law.payload_type(),
                time,
                part.len() as u32,
                part,
                &mut packets.scratch,
            );
            packets.push_scratch();
            self.sent_packets = self.sent_packets.wrapping_add(1);
            self.sent_octets = self.sent_octets.wrapping_add(part.len() as u32);
        }
        // Queued digits ride along, one event packet per audio frame.
        if let Some(pt) = self.dtmf_pt {
            if let Some(event) = self.dtmf_out.next(self.to_sip.last_timestamp()) {
                self.to_sip.write_event(
                    pt,
                    event.start_ts,
                    event.marker,
                    &event.payload,
                    &mut packets.scratch,
                );
                packets.push_scratch();
            }
        }
        self.last_sent = Some(Instant::now());
        Some(dest)
    }

    /// A transcoded call's audio from the SIP leg goes through the reorder
    /// buffer; [`Bridge::next_opus_for_browser`] takes it out.
    pub(crate) fn buffer_for_browser(
        &mut self,
        time: u64,
        payload: &[u8],
        marker: bool,
        now: Instant,
    ) {
        self.jitter.push(time, payload, marker, now);
    }

    /// When the reorder buffer next has something due without a new packet.
    pub(crate) fn jitter_deadline(&self) -> Option<Instant> {
        self.jitter.next_deadline()
    }

    /// For a transcoded call: the next 20 ms Opus frame for the browser, in
    /// order, with its 8 kHz time, gathered from what the reorder buffer
    /// releases (received G.711 of any packet time, or lost samples concealed
    /// by the last frame repeated, fading). Audio a DTMF event towards the
    /// browser covers is left out: the browser plays the event.
    pub(crate) fn next_opus_for_browser(
        &mut self,
        now: Instant,
    ) -> Option<(u64, Result<&[u8], opus::Error>)> {
        loop {
            // What the last call left (more than 20 ms gathered) goes first.
            if self.transcoder.as_ref()?.frame_ready() {
                return Some(self.transcoder.as_mut()?.encode_for_browser());
            }
            let (time, audio) = match self.jitter.poll(now)? {
                Out::Frame { time, payload } => (time, SipAudio::G711(payload, self.law)),
                Out::Lost { time, samples, nth } => (
                    time,
                    SipAudio::Lost {
                        samples: samples as usize,
                        nth,
                    },
                ),
            };
            if self
                .dtmf_to_browser
                .on_sip_audio(time, audio.samples() as u32)
            {
                continue;
            }
            let full = self.transcoder.as_mut()?.push_for_browser(time, audio);
            if full {
                return Some(self.transcoder.as_mut()?.encode_for_browser());
            }
        }
    }

    /// Telephone-event packets to write to the browser, in order.
    pub(crate) fn dtmf_to_browser(&mut self) -> Option<BrowserEvent> {
        self.dtmf_to_browser.pop()
    }

    /// An audio frame from the SIP leg at `time` (8 kHz): true when an
    /// event towards the browser covers it, so it must not be sent (the
    /// browser would play the audio instead of the event).
    pub(crate) fn sip_audio_under_event(&mut self, time: u64, samples: u64) -> bool {
        self.dtmf_to_browser.on_sip_audio(time, samples as u32)
    }

    /// A digit the far end sent in SIP INFO, to play to the browser as an
    /// RFC 4733 event on the next audio frames.
    pub(crate) fn play_dtmf_to_browser(&mut self, digit: char) -> bool {
        self.dtmf_to_browser.queue_digit(digit)
    }

    /// The Opus transcoder, when the browser leg speaks Opus.
    pub(crate) fn transcoder(&mut self) -> Option<&mut Transcoder> {
        self.transcoder.as_mut()
    }

    fn is_previous(&self, source: SocketAddr) -> bool {
        self.previous
            .is_some_and(|(old, until)| old == source && Instant::now() < until)
    }

    /// Checks one datagram from the SIP leg and says what it carried.
    pub(crate) fn accept_from_sip<'a>(
        &mut self,
        source: SocketAddr,
        data: &'a [u8],
    ) -> Result<Inbound<'a>, Discard> {
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
            None if source.ip() == remote.ip() && !self.is_previous(source) => {
                self.latched = Some(source)
            }
            None => return Err(Discard::WrongSource),
        }
        let packet = rtp::parse(data).ok_or(Discard::NotRtp)?;
        if Some(packet.pt) == self.dtmf_pt {
            self.last_from_sip = Some(Instant::now());
            let digit = self
                .dtmf_in
                .on_packet(packet.ssrc, packet.ts, packet.payload);
            // Where the event starts on the browser stream: by its timestamp
            // among the audio, or (another SSRC) where the next audio goes.
            let start = self
                .from_sip
                .place(packet.ssrc, packet.ts)
                .or(self.to_browser_next)
                .unwrap_or(0);
            self.dtmf_to_browser
                .on_sip_event(packet.ssrc, packet.ts, start, packet.payload);
            return Ok(Inbound::Event(digit));
        }
        if packet.pt != self.law.payload_type() {
            return Err(Discard::OtherPayload);
        }
        self.last_from_sip = Some(Instant::now());
        let arrival = (self.epoch.elapsed().as_secs_f64() * 8000.0) as u64;
        self.stats
            .on_packet(packet.ssrc, packet.seq, packet.ts, arrival);
        let time = self
            .from_sip
            .map(packet.ssrc, packet.ts, packet.payload.len() as u32);
        // A late packet must not pull this back.
        let end = time + packet.payload.len() as u64;
        self.to_browser_next = Some(self.to_browser_next.map_or(end, |n| n.max(end)));
        Ok(Inbound::Audio {
            law: self.law,
            time,
            marker: packet.marker,
            payload: packet.payload,
        })
    }
}

/// Unpredictable values for SSRCs, initial sequence numbers and timestamps
/// (RFC 3550 §5.1 wants them random). Not for cryptography.
pub(crate) fn random_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn bridge() -> Bridge {
        let open = || {
            let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            socket
        };
        Bridge::new(0, open(), open())
    }

    /// An RR from the far end with one block about `ssrc`.
    fn receiver_report(ssrc: u32, lost: u8, lsr: u32, dlsr: u32) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[lost, 0, 0, 2]);
        for w in [1000u32, 8, lsr, dlsr] {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p
    }

    #[test]
    fn the_far_ends_report_about_our_stream_gives_the_rtt_and_its_loss() {
        let mut b = bridge();
        assert_eq!(b.summary().rtt_ms, None);
        let ms = |n: u32| n * 65536 / 1000;
        // Our SR left 30 ms ago (LSR) and the far end held it 10 ms (DLSR): 20 ms.
        let lsr = rtcp::ntp_middle(SystemTime::now()).wrapping_sub(ms(30));
        let stranger = receiver_report(b.to_sip.ssrc() ^ 1, 0, lsr, ms(10));
        assert!(b.on_rtcp(&stranger, Instant::now()));
        assert_eq!(b.summary().rtt_ms, None, "a block about another stream");
        let ours = receiver_report(b.to_sip.ssrc(), 128, lsr, ms(10));
        assert!(b.on_rtcp(&ours, Instant::now()));
        let s = b.summary();
        let rtt = s.rtt_ms.expect("an RTT");
        assert!((19.0..25.0).contains(&rtt), "{rtt} ms");
        assert_eq!(s.far_end_fraction_lost, Some(0.5));
        assert_eq!(s.far_end_cumulative_lost, Some(2));
        assert!(!b.on_rtcp(&[0x12, 0x34], Instant::now()), "not RTCP");
    }

    #[test]
    fn latches_on_the_announced_host_only() {
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let data = rtp(0, 1, 160, 7, &[0xff; 160]);
        assert_eq!(b.accept_from_sip(pbx, &data).unwrap_err(), Discard::Held);
        b.connect(pbx, Law::Pcmu, None);
        assert_eq!(b.take_held().len(), 1, "kept for replay (tested below)");
        let stranger: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        assert_eq!(
            b.accept_from_sip(stranger, &data).unwrap_err(),
            Discard::WrongSource
        );
        // NAT moved the port: latch to it, then only it.
        let natted: SocketAddr = "10.0.0.5:5123".parse().unwrap();
        assert!(b.accept_from_sip(natted, &data).is_ok());
        assert_eq!(
            b.accept_from_sip(pbx, &data).unwrap_err(),
            Discard::WrongSource
        );
        // A new SDP address (the 200 after the 183, a transfer) latches
        // anew; the old source, still sending for a moment from the same
        // host, is not taken for the new far end.
        let answer: SocketAddr = "10.0.0.5:6000".parse().unwrap();
        b.connect(answer, Law::Pcmu, None);
        assert_eq!(
            b.accept_from_sip(natted, &data).unwrap_err(),
            Discard::WrongSource
        );
        assert!(b.accept_from_sip(answer, &data).is_ok());
    }

    #[test]
    fn a_lost_browser_packet_leaves_no_hole_in_the_sip_stream() {
        use crate::transcode::{OpusSettings, Transcoder};
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        b.connect(pbx, Law::Pcmu, None);
        b.set_transcoder(Transcoder::new(OpusSettings::default()).unwrap());
        let mut enc =
            opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        let (laws, mut scratch, mut out) = (LawTables::new(), Vec::new(), Packets::default());
        let mut timestamps = Vec::new();
        for frame in [0u64, 1, 3, 4] {
            let packet = enc.encode_vec(&[100i16; 160], 400).unwrap();
            b.packetize_for_sip(
                Some(AudioCodec::Opus),
                frame * 160,
                &packet,
                &laws,
                &mut scratch,
                &mut out,
            );
            timestamps.extend(out.iter().map(|p| rtp::parse(p).unwrap().ts));
        }
        let steps: Vec<u32> = timestamps
            .windows(2)
            .map(|w| w[1].wrapping_sub(w[0]))
            .collect();
        assert_eq!(
            steps,
            [160, 160, 160, 160],
            "frame 2 was filled in: {timestamps:?}"
        );
        assert_eq!(b.summary().concealed_frames, 1);
    }

    #[test]
    fn transcoded_sip_audio_is_reordered_and_its_losses_concealed() {
        use crate::transcode::{OpusSettings, Transcoder};
        let mut b = bridge();
        b.set_transcoder(Transcoder::new(OpusSettings::default()).unwrap());
        let now = Instant::now();
        let times = |b: &mut Bridge, at: Instant| {
            let mut out = Vec::new();
            while let Some((time, opus)) = b.next_opus_for_browser(at) {
                assert!(!opus.unwrap().is_empty());
                out.push(time);
            }
            out
        };
        b.buffer_for_browser(0, &[0xff; 160], true, now);
        assert_eq!(times(&mut b, now), [0]);
        // 320 before 160: held, then both in order.
        b.buffer_for_browser(320, &[0xff; 160], false, now);
        assert_eq!(times(&mut b, now), [] as [u64; 0]);
        assert!(b.jitter_deadline().is_some());
        b.buffer_for_browser(160, &[0xff; 160], false, now);
        assert_eq!(times(&mut b, now), [160, 320]);
        // 480 never comes: concealed once the deadline passes.
        b.buffer_for_browser(640, &[0xff; 160], false, now);
        let deadline = b.jitter_deadline().expect("a hole to wait for");
        assert_eq!(times(&mut b, deadline), [480, 640]);
        assert_eq!(b.summary().concealed_from_sip, 1);
    }

    #[test]
    fn silence_counts_only_after_the_answer_and_fires_once() {
        use std::time::Duration;
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        b.connect(pbx, Law::Pcmu, None);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        assert!(
            !b.media_timed_out(t0 + Duration::from_secs(300), timeout),
            "ringing may be silent"
        );
        b.answered(t0);
        assert!(!b.media_timed_out(t0 + Duration::from_secs(29), timeout));
        assert!(b.media_timed_out(t0 + Duration::from_secs(30), timeout));
        assert!(
            !b.media_timed_out(t0 + Duration::from_secs(31), timeout),
            "reported once"
        );
    }

    #[test]
    fn dtmf_goes_out_with_the_audio_and_comes_in_as_digits() {
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        assert!(
            !b.send_dtmf("1"),
            "no telephone-event before the far end's SDP"
        );
        b.connect(pbx, Law::Pcmu, Some(101));
        assert!(b.send_dtmf("1#"));
        let (laws, mut scratch, mut out) = (LawTables::new(), Vec::new(), Packets::default());
        let mut events = Vec::new();
        for i in 0..25u64 {
            b.packetize_for_sip(
                Some(AudioCodec::Pcmu),
                i * 160,
                &[0xff; 160],
                &laws,
                &mut scratch,
                &mut out,
            );
            for p in out.iter() {
                let p = rtp::parse(p).unwrap();
                if p.pt == 101 {
                    events.push((p.payload[0], p.ts, p.marker));
                }
            }
        }
        assert_eq!(events.len(), 16, "8 packets per digit: {events:?}");
        assert!(events[..8].iter().all(|e| e.0 == 1) && events[8..].iter().all(|e| e.0 == 11));
        assert!(
            events[0].2 && events[8].2,
            "marker on each event's first packet"
        );
        // From the far end: the first packet of an event becomes a digit, repeats do not.
        let ev = |ts: u32| {
            let mut p = rtp(101, 1, ts, 9, &[5, 0x0a, 0, 160]);
            p[1] = 101;
            p
        };
        assert_eq!(
            b.accept_from_sip(pbx, &ev(800)).unwrap(),
            Inbound::Event(Some('5'))
        );
        assert_eq!(
            b.accept_from_sip(pbx, &ev(800)).unwrap(),
            Inbound::Event(None)
        );
        // Towards the (G.711) browser: one marked start, the repeat not passed on.
        let start = b.dtmf_to_browser().expect("an event for the browser");
        assert!(start.marker && start.clock_hz == 8000 && start.payload[0] == 5);
        assert!(b.dtmf_to_browser().is_none());
    }

    #[test]
    fn holds_only_a_little_before_the_sdp() {
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let data = rtp(0, 1, 160, 7, &[0xff; 160]);
        for _ in 0..MAX_HELD {
            assert_eq!(b.accept_from_sip(pbx, &data).unwrap_err(), Discard::Held);
        }
        assert_eq!(
            b.accept_from_sip(pbx, &data).unwrap_err(),
            Discard::NoRemote
        );
        // Replayed after the SDP, a held packet from the announced host plays.
        let mut replayed = bridge();
        assert_eq!(
            replayed.accept_from_sip(pbx, &data).unwrap_err(),
            Discard::Held
        );
        replayed.connect(pbx, Law::Pcmu, None);
        let (source, packet) = replayed.take_held().remove(0);
        assert!(replayed.accept_from_sip(source, &packet).is_ok());
        // Held packets still face the source check once the SDP is known.
        let stranger: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        b.connect(stranger, Law::Pcmu, None);
        let held = b.take_held();
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(
            b.accept_from_sip(held[0].0, &held[0].1).unwrap_err(),
            Discard::WrongSource
        );
        assert!(b.take_held().is_empty());
    }

    #[test]
    fn filters_payloads_and_converts_laws_towards_sip() {
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        b.connect(pbx, Law::Pcma, None);
        assert_eq!(
            b.accept_from_sip(pbx, &rtp(101, 1, 0, 7, &[1, 0, 0, 160]))
                .unwrap_err(),
            Discard::OtherPayload
        );
        assert_eq!(
            b.accept_from_sip(pbx, &[1, 2, 3]).unwrap_err(),
            Discard::NotRtp
        );
        let alaw = rtp(8, 1, 0, 7, &[0xd5; 160]);
        let Ok(Inbound::Audio { law, payload, .. }) = b.accept_from_sip(pbx, &alaw) else {
            panic!("A-law audio expected");
        };
        assert_eq!((law, payload.len()), (Law::Pcma, 160));

        let laws = LawTables::new();
        let (mut scratch, mut out) = (Vec::new(), Packets::default());
        // Browser speaks µ-law silence (0xff); the PBX chose A-law: 0xd5 goes out.
        let dest = b.packetize_for_sip(
            Some(AudioCodec::Pcmu),
            0,
            &[0xff; 160],
            &laws,
            &mut scratch,
            &mut out,
        );
        assert_eq!(dest, Some(pbx));
        assert_eq!(out.iter().count(), 1);
        let sent = rtp::parse(out.iter().next().unwrap()).unwrap();
        assert_eq!(sent.pt, 8);
        assert!(
            sent.payload.iter().all(|&b| b == 0xd5),
            "{:x?}",
            &sent.payload[..4]
        );
        assert_eq!(
            b.packetize_for_sip(
                Some(AudioCodec::Opus),
                0,
                &[0; 40],
                &laws,
                &mut scratch,
                &mut out
            ),
            None,
            "Opus without a transcoder cannot go to the SIP leg"
        );
    }

    #[test]
    fn hold_stops_sending_pauses_the_timeout_and_resumes_the_same_stream() {
        use std::time::Duration;
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        b.connect(pbx, Law::Pcmu, None);
        let (laws, mut scratch, mut out) = (LawTables::new(), Vec::new(), Packets::default());
        let mut send = |b: &mut Bridge, time: u64| {
            let dest = b.packetize_for_sip(
                Some(AudioCodec::Pcmu),
                time,
                &[0xff; 160],
                &laws,
                &mut scratch,
                &mut out,
            );
            dest.map(|_| rtp::parse(out.iter().next().unwrap()).unwrap())
                .map(|p| (p.ssrc, p.seq, p.ts, p.marker))
        };
        let before = send(&mut b, 0).expect("sent before the hold");
        let t0 = Instant::now();
        b.answered(t0);
        b.set_flow(
            Flow {
                to_sip: false,
                from_sip: true,
            },
            t0,
        );
        assert_eq!(send(&mut b, 160), None, "nothing goes out while held");
        let timeout = Duration::from_secs(30);
        assert!(
            !b.media_timed_out(t0 + Duration::from_secs(70), timeout),
            "a long hold is no media timeout"
        );
        // c=0.0.0.0 (RFC 2543 hold) keeps the address we had.
        b.connect("0.0.0.0:4000".parse().unwrap(), Law::Pcmu, None);
        let t1 = Instant::now();
        b.set_flow(Flow::BOTH, t1);
        // The browser's own timeline may jump anywhere; ours follows the clock.
        std::thread::sleep(Duration::from_millis(100));
        let after = send(&mut b, 123_456_789).expect("sent after resume");
        assert_eq!(after.0, before.0, "same SSRC");
        assert_eq!(after.1, before.1.wrapping_add(1), "next sequence number");
        let advance = after.2.wrapping_sub(before.2);
        assert!(
            (800..8000).contains(&advance),
            "the timestamp follows the clock across the hold: {advance}"
        );
        assert!(after.3, "a new talkspurt");
        assert_eq!(b.latched.or(b.remote), Some(pbx));
        assert!(!b.media_timed_out(t1 + Duration::from_secs(29), timeout));
        assert!(
            b.media_timed_out(t1 + Duration::from_secs(31), timeout),
            "the watch restarts at resume"
        );
    }

    #[test]
    fn opus_from_the_browser_goes_out_as_20_ms_g711_packets() {
        use crate::transcode::{OpusSettings, Transcoder};
        let mut b = bridge();
        let pbx: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        b.connect(pbx, Law::Pcmu, None);
        b.set_transcoder(Transcoder::new(OpusSettings::default()).unwrap());
        // A 40 ms Opus packet (two 20 ms frames) made by a real encoder.
        let mut enc =
            opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let opus = enc.encode_vec(&[0i16; 320], 400).unwrap();
        let (laws, mut scratch, mut out) = (LawTables::new(), Vec::new(), Packets::default());
        let dest = b.packetize_for_sip(
            Some(AudioCodec::Opus),
            800,
            &opus,
            &laws,
            &mut scratch,
            &mut out,
        );
        assert_eq!(dest, Some(pbx));
        let sent: Vec<_> = out.iter().map(|p| rtp::parse(p).unwrap()).collect();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|p| p.pt == 0 && p.payload.len() == 160));
        assert_eq!(
            sent[1].ts.wrapping_sub(sent[0].ts),
            160,
            "consecutive 20 ms timestamps"
        );
        assert_eq!(sent[1].seq.wrapping_sub(sent[0].seq), 1);
        // Garbage that libopus rejects is dropped, not sent.
        assert_eq!(
            b.packetize_for_sip(
                Some(AudioCodec::Opus),
                1120,
                &[0x03],
                &laws,
                &mut scratch,
                &mut out
            ),
            None
        );
    }

    #[test]
    fn allocator_stays_in_range_and_skips_busy_ports() {
        let probe = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let range = RtpPorts {
            ip: "127.0.0.1".parse().unwrap(),
            min: base - base % 2,
            max: base - base % 2 + 5,
        };
        let mut alloc = PortAllocator::new(range.clone());
        let mut held = Vec::new();
        while let Some((port, socket, rtcp)) = alloc.bind() {
            assert_eq!(
                rtcp.local_addr().unwrap().port(),
                port + 1,
                "RTCP on the odd port"
            );
            assert!(
                port % 2 == 0 && port >= range.min && port <= range.max,
                "{port}"
            );
            held.push((socket, rtcp));
            if held.len() > 3 {
                break;
            }
        }
        assert!(held.len() <= 3, "only three even ports in the range");
        assert!(alloc.bind().is_none(), "exhausted while all are held");
        held.pop();
        assert!(alloc.bind().is_some(), "a released port is reused");
    }
}

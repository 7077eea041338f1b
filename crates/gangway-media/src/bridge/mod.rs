//! A bridged call's media policy, sans IO in the manner of str0m's `Rtc`:
//! the shard feeds it what arrived ([`Bridge::handle_rtp`],
//! [`Bridge::handle_rtcp`], [`Bridge::handle_browser_frame`], commands such
//! as [`Bridge::connect`]) and the time ([`Bridge::handle_timeout`]), then
//! drains [`Bridge::poll_output`] and moves the bytes. Every `now` comes from
//! the caller; the bridge owns no socket and reads no clock, so its tests run
//! on a made-up clock.
//!
//! What it decides: G.711 passed through (converted between µ-law and A-law
//! only when the two legs chose different laws) or Opus transcoded, with a
//! reorder buffer towards the browser; who may send on the SIP leg
//! (latching); each direction's stream rewritten to stay continuous; DTMF
//! both ways; RTCP; and when an answered call has gone silent.
//!
//! Its parts: [`SipStream`](sip_stream) (addresses, latching, held packets,
//! our RTP stream), [`Rtcp`](reports), [`Dtmf`](digits), an optional
//! [`TranscodePath`](transcode_path) and [`Liveness`](liveness); what it asks
//! for queues in [`Outputs`](output).

mod digits;
mod liveness;
mod output;
mod reports;
mod sip_stream;
mod transcode_path;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use gangway_rtc::{AudioCodec, PeerId};
use str0m::media::{Frequency, MediaTime};
use tracing::debug;

use self::digits::Dtmf;
use self::liveness::Liveness;
use self::output::Outputs;
pub(crate) use self::output::{Discard, Output, ToBrowser};
use self::reports::Rtcp;
use self::sip_stream::SipStream;
use self::transcode_path::TranscodePath;
use crate::jitter::MIN_DEPTH;
use crate::transcode::FRAME_SAMPLES;
use crate::types::{Flow, Law, LegEvent, MediaPolicy};

/// The codecs in the browser leg's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BrowserCodecs {
    pub pcmu: bool,
    pub pcma: bool,
    pub opus: bool,
}

impl BrowserCodecs {
    fn has(self, law: Law) -> bool {
        match law {
            Law::Pcmu => self.pcmu,
            Law::Pcma => self.pcma,
        }
    }
}

/// One frame the browser sent (SRTP already removed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrowserFrame<'a> {
    pub codec: Option<AudioCodec>,
    /// Media time in the codec's clock rate.
    pub time: MediaTime,
    pub data: &'a [u8],
    /// For RFC 4733 telephone-event frames: the event code.
    pub telephone_event: Option<u8>,
}

/// Media quality of a bridged call's SIP leg.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegSummary {
    pub packets_received: u32,
    /// From sequence numbers (RFC 3550 A.3); duplicates can make it smaller.
    pub packets_lost: u64,
    pub loss_ratio: f64,
    /// Interarrival jitter (RFC 3550 A.8) at the end of the call.
    pub jitter_ms: f64,
    pub packets_sent: u32,
    /// RTP payload bytes each way on the SIP leg.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The SIP leg's codec (`None`: the far end's media was never known)
    /// and the browser leg's (`PCMU`, `PCMA` or `opus`).
    pub sip_codec: Option<&'static str>,
    pub browser_codec: &'static str,
    pub transcoded: bool,
    /// Browser frames lost and filled in (Opus FEC or concealment) before transcoding.
    pub concealed_frames: u64,
    /// SIP-leg frames lost and filled in (pitch-period repetition) before encoding to Opus.
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

/// See the module documentation.
pub(crate) struct Bridge {
    /// For log lines only.
    peer: PeerId,
    stream: SipStream,
    rtcp: Rtcp,
    dtmf: Dtmf,
    /// Set when the browser leg speaks Opus and the SIP leg G.711.
    transcode: Option<TranscodePath>,
    liveness: Liveness,
    browser: BrowserCodecs,
    out: Outputs,
    /// A browser G.711 frame converted to the SIP leg's law.
    scratch: Vec<u8>,
}

impl Bridge {
    /// A bridge for a browser leg that answered with `browser`'s codecs:
    /// transcoded when that is Opus. `wallclock` is the time of day at
    /// `now` (RTCP's NTP timestamps follow `now` from there).
    pub(crate) fn new(
        peer: PeerId,
        now: Instant,
        wallclock: SystemTime,
        policy: &MediaPolicy,
        browser: BrowserCodecs,
    ) -> Result<Bridge, opus::Error> {
        let mut dtmf = Dtmf::default();
        let transcode = if browser.opus {
            dtmf.set_opus();
            Some(TranscodePath::new(policy.opus)?)
        } else {
            None
        };
        Ok(Bridge {
            peer,
            stream: SipStream::default(),
            rtcp: Rtcp::new(now, wallclock),
            dtmf,
            transcode,
            liveness: Liveness::new(policy.media_timeout),
            browser,
            out: Outputs::default(),
            // Grows once, on a call whose legs chose different laws.
            scratch: Vec::new(),
        })
    }

    /// The browser leg was renegotiated (an ICE restart): its answer's
    /// codecs decide the law passed through from now on.
    pub(crate) fn browser_renegotiated(&mut self, browser: BrowserCodecs) {
        self.browser = browser;
    }

    /// Points the call at the SIP leg's media from its latest SDP (a 183 or
    /// 200, or a later offer or answer) and replays what arrived before the
    /// first. `answered` starts the inactivity watch, which pauses while
    /// `flow` is not both ways (hold). An unspecified address (RFC 2543
    /// hold, `c=0.0.0.0`) keeps the previous one.
    pub(crate) fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        law: Law,
        dtmf_pt: Option<u8>,
        answered: bool,
        flow: Flow,
    ) {
        self.dtmf.set_pt(dtmf_pt);
        self.stream.connect(now, remote, law);
        if self.stream.remote().is_some() {
            self.rtcp.start(now);
        }
        self.set_flow(now, flow);
        if answered {
            self.liveness.answered(now);
        }
        for (source, data) in self.stream.take_held() {
            self.handle_rtp(now, source, &data);
        }
    }

    /// Hold or resume. Sending stops while `flow.to_sip` is false and the
    /// stream resumes where the clock has got to.
    fn set_flow(&mut self, now: Instant, flow: Flow) {
        self.liveness.flow_changed(self.stream.flow(), flow, now);
        if !flow.to_sip {
            if let Some(t) = self.transcode.as_mut() {
                t.restart_from_browser();
            }
        }
        self.stream.set_flow(flow);
    }

    /// Queues digits for the SIP leg as RFC 4733 events; false when the far
    /// end did not accept telephone-event.
    pub(crate) fn send_dtmf(&mut self, digits: &str) -> bool {
        self.dtmf.send(digits)
    }

    /// Plays a digit the far end sent in SIP INFO to the browser, as an
    /// RFC 4733 event on the next audio frames.
    pub(crate) fn play_dtmf(&mut self, digit: char) -> bool {
        self.dtmf.play(digit)
    }

    /// One datagram from the SIP leg's RTP socket.
    pub(crate) fn handle_rtp(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let packet = match self.stream.accept(now, source, data, self.dtmf.pt()) {
            Ok(packet) => packet,
            Err(Discard::Held) => return,
            Err(why) => return self.out.discarded(source, why),
        };
        self.liveness.heard_from_sip(now);
        if Some(packet.pt) == self.dtmf.pt() {
            let start = self.stream.place_event(&packet);
            if let Some(digit) = self.dtmf.on_sip_event(&packet, start) {
                self.out.leg(LegEvent::Dtmf(digit));
            }
            return self.events_to_browser(now);
        }
        self.rtcp.on_rtp(now, &packet);
        let time = self.stream.place_audio(&packet);
        if let Some(t) = self.transcode.as_mut() {
            t.buffer(time, packet.payload, packet.marker, now);
            return self.opus_to_browser(now);
        }
        // End repeats and synthesized digits ride on the far end's frames;
        // audio an event covers is left out (the browser plays the event).
        let under_event = self
            .dtmf
            .relay
            .on_sip_audio(time, packet.payload.len() as u32);
        self.events_to_browser(now);
        if under_event {
            return;
        }
        let law = self.stream.law();
        // The browser's answer may have only the other law: convert.
        let to = if self.browser.has(law) {
            law
        } else {
            law.other()
        };
        let time = MediaTime::new(time, Frequency::EIGHT_KHZ);
        let audio = self.out.audio(to.codec(), time, now, packet.payload);
        law.reencode(to, audio);
    }

    /// One datagram from the SIP leg's RTCP socket; false when not RTCP.
    pub(crate) fn handle_rtcp(&mut self, now: Instant, data: &[u8]) -> bool {
        self.rtcp.on_packet(now, data, self.stream.ssrc())
    }

    /// One frame from the browser: RTP for the SIP leg (more than one packet
    /// when an Opus packet carries more than 20 ms), or a telephone-event
    /// passed on as one of ours.
    pub(crate) fn handle_browser_frame(&mut self, now: Instant, frame: BrowserFrame<'_>) {
        if let Some(code) = frame.telephone_event {
            if self.dtmf.on_browser_event(frame.time.numer(), code) {
                debug!(
                    peer = self.peer.0,
                    code, "browser DTMF sent on to the SIP leg"
                );
            }
            return;
        }
        self.liveness.heard_from_browser(now);
        if !self.stream.flow().to_sip {
            if let Some(t) = self.transcode.as_mut() {
                t.restart_from_browser();
            }
            return;
        }
        let Some(dest) = self.stream.start_sending(now) else {
            return;
        };
        let Some(codec) = frame.codec else {
            return;
        };
        let law = self.stream.law();
        let time = frame.time.rebase(Frequency::EIGHT_KHZ).numer();
        let (start, g711, chunk): (u64, &[u8], usize) = match Law::of(codec) {
            Some(from) => {
                let g711 = if from == law {
                    frame.data
                } else {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(frame.data);
                    from.reencode(law, &mut self.scratch);
                    &self.scratch
                };
                // Passthrough keeps the browser's packetization.
                (time, g711, g711.len().max(1))
            }
            None => {
                // Opus without a transcoder cannot go to the SIP leg.
                let Some(t) = self.transcode.as_mut() else {
                    return;
                };
                let Some((start, g711)) = t.decode_browser(time, frame.data, law) else {
                    return;
                };
                // Decoded Opus goes out in 20 ms packets.
                (start, g711, FRAME_SAMPLES)
            }
        };
        self.stream
            .send_audio(dest, start, g711, chunk, &mut self.out);
        // Queued digits ride along, one event packet per audio frame.
        if let Some((pt, event)) = self.dtmf.next_for_sip(self.stream.last_timestamp()) {
            self.stream.send_event(dest, pt, &event, &mut self.out);
        }
        self.stream.sent_at(now);
    }

    /// Does what is due at `now`: the reorder buffer's wake-up (see
    /// [`Output::Wake`]), the inactivity watch and RTCP reports. Call it at
    /// every `Wake` instant and at least every few hundred milliseconds.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.transcode.as_mut().is_some_and(|t| t.wake_due(now)) {
            self.opus_to_browser(now);
        }
        if self.liveness.timed_out(now, self.stream.flow()) {
            self.out.leg(LegEvent::MediaTimeout);
        }
        self.rtcp.send_due(now, &self.stream, &mut self.out);
    }

    /// The next thing to do. Drain until `None` after every call above.
    pub(crate) fn poll_output(&mut self) -> Option<Output<'_>> {
        self.out.poll()
    }

    /// A transcoded call: encodes what the reorder buffer has due, and asks
    /// to be woken at its next deadline.
    fn opus_to_browser(&mut self, now: Instant) {
        let Some(t) = self.transcode.as_mut() else {
            return;
        };
        let law = self.stream.law();
        while let Some((time, opus)) = t.next_for_browser(now, law, &mut self.dtmf.relay) {
            match opus {
                Ok(opus) => {
                    // Opus runs on a 48 kHz RTP clock.
                    let time = MediaTime::new(time * 6, Frequency::FORTY_EIGHT_KHZ);
                    self.out.audio(AudioCodec::Opus, time, now, opus);
                }
                Err(e) => debug!(peer = self.peer.0, "Opus encoding failed: {e}"),
            }
        }
        if let Some(at) = t.new_wake() {
            self.out.wake(at);
        }
        // End repeats and synthesized digits ride on the far end's frames.
        self.events_to_browser(now);
    }

    /// Queues the telephone events the relay has for the browser.
    fn events_to_browser(&mut self, now: Instant) {
        while let Some(event) = self.dtmf.relay.pop() {
            // The wallclock of the event's start, which its timestamp names.
            let lasted = Duration::from_micros(u64::from(event.elapsed_8k) * 125);
            self.out
                .event(event, now.checked_sub(lasted).unwrap_or(now));
        }
    }

    /// The SIP leg's media quality over the call, for the end-of-call summary.
    pub(crate) fn summary(&self) -> LegSummary {
        let received = self.rtcp.received();
        let packets_received = received.packets_received();
        let lost = received.lost().max(0) as u64;
        let expected = u64::from(packets_received) + lost;
        let t = self.transcode.as_ref();
        let jitter = t.map(|t| t.jitter().stats()).unwrap_or_default();
        let opus = t.map(|t| t.opus_bandwidth).unwrap_or_default();
        let far_end = self.rtcp.far_end();
        let law = self.stream.law();
        LegSummary {
            packets_received,
            packets_lost: lost,
            loss_ratio: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
            jitter_ms: f64::from(received.jitter()) / 8.0,
            packets_sent: self.stream.packets_sent(),
            bytes_received: self.rtcp.octets_received(),
            bytes_sent: u64::from(self.stream.octets_sent()),
            sip_codec: self.stream.remote().map(|_| self.stream.law().name()),
            browser_codec: match (t.is_some(), self.browser.has(law)) {
                (true, _) => "opus",
                (false, true) => law.name(),
                (false, false) => law.other().name(),
            },
            transcoded: t.is_some(),
            concealed_frames: t.map_or(0, |t| t.concealed_frames),
            concealed_from_sip: jitter.concealed,
            sip_late_packets: jitter.late,
            // A passthrough call has no reorder buffer; it reports the
            // depth one would start at, as it always has.
            jitter_buffer_ms: t.map_or(MIN_DEPTH, |t| t.jitter().depth()).as_millis() as u64,
            browser_opus_narrowband: opus.narrowband,
            browser_opus_wider: opus.wider,
            rtt_ms: far_end.rtt_ms(),
            far_end_fraction_lost: far_end.fraction_lost(),
            far_end_cumulative_lost: far_end.cumulative_lost(),
        }
    }
}

/// Inline sizes of a bridge's parts (`std::mem::size_of`), for the
/// memory bench (`benches/src/call_memory.rs`).
pub(crate) fn inline_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("Bridge", size_of::<Bridge>()),
        ("  SipStream", size_of::<SipStream>()),
        ("  Rtcp", size_of::<Rtcp>()),
        ("  Dtmf", size_of::<Dtmf>()),
        ("  Outputs", size_of::<Outputs>()),
        (
            "  Option<TranscodePath>",
            size_of::<Option<TranscodePath>>(),
        ),
        (
            "TranscodePath (boxed parts excluded)",
            size_of::<TranscodePath>(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rtcp;
    use crate::rtp;

    const PBX: &str = "10.0.0.5:4000";

    fn pbx() -> SocketAddr {
        PBX.parse().unwrap()
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    const G711: BrowserCodecs = BrowserCodecs {
        pcmu: true,
        pcma: true,
        opus: false,
    };
    const PCMU_ONLY: BrowserCodecs = BrowserCodecs {
        pcmu: true,
        pcma: false,
        opus: false,
    };
    const OPUS: BrowserCodecs = BrowserCodecs {
        pcmu: false,
        pcma: false,
        opus: true,
    };

    /// A bridge on a made-up clock that starts at `t0`.
    fn bridge_with(browser: BrowserCodecs, media_timeout: Option<Duration>) -> (Bridge, Instant) {
        let t0 = Instant::now();
        let policy = MediaPolicy {
            media_timeout,
            ..MediaPolicy::default()
        };
        let b = Bridge::new(PeerId(1), t0, SystemTime::now(), &policy, browser).unwrap();
        (b, t0)
    }

    fn bridge() -> (Bridge, Instant) {
        bridge_with(G711, None)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An output with its bytes copied, for comparing.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Audio(AudioCodec, u64, Vec<u8>),
        Event {
            marker: bool,
            clock_hz: u32,
            code: u8,
        },
        Sip(SocketAddr, Vec<u8>),
        Rtcp(SocketAddr, Vec<u8>),
        Leg(LegEvent),
        Discarded(Discard),
        Wake(Instant),
    }

    fn drain(b: &mut Bridge) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(output) = b.poll_output() {
            seen.push(match output {
                Output::ToBrowser(ToBrowser::Audio {
                    codec, time, data, ..
                }) => Seen::Audio(codec, time.numer(), data.to_vec()),
                Output::ToBrowser(ToBrowser::Event { event, .. }) => Seen::Event {
                    marker: event.marker,
                    clock_hz: event.clock_hz,
                    code: event.payload[0],
                },
                Output::ToSip(dest, data) => Seen::Sip(dest, data.to_vec()),
                Output::RtcpToSip(dest, data) => Seen::Rtcp(dest, data.to_vec()),
                Output::Leg(event) => Seen::Leg(event),
                Output::Discarded(_, why) => Seen::Discarded(why),
                Output::Wake(at) => Seen::Wake(at),
            });
        }
        seen
    }

    /// The RTP packets sent to the SIP leg, parsed: (pt, seq, ts, ssrc, marker, payload).
    fn sent(seen: &[Seen]) -> Vec<(u8, u16, u32, u32, bool, Vec<u8>)> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Sip(_, data) => {
                    let p = rtp::parse(data).unwrap();
                    Some((p.pt, p.seq, p.ts, p.ssrc, p.marker, p.payload.to_vec()))
                }
                _ => None,
            })
            .collect()
    }

    fn frame(codec: AudioCodec, time: MediaTime, data: &[u8]) -> BrowserFrame<'_> {
        BrowserFrame {
            codec: Some(codec),
            time,
            data,
            telephone_event: None,
        }
    }

    fn at_8k(samples: u64) -> MediaTime {
        MediaTime::new(samples, Frequency::EIGHT_KHZ)
    }

    #[test]
    fn passthrough_keeps_the_law_both_ways() {
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        b.handle_rtp(t0, pbx(), &rtp(0, 1, 1000, 7, &[0x12; 160]));
        assert_eq!(
            drain(&mut b),
            [Seen::Audio(AudioCodec::Pcmu, 0, vec![0x12; 160])]
        );
        b.handle_rtp(t0 + ms(20), pbx(), &rtp(0, 2, 1160, 7, &[0x34; 160]));
        assert_eq!(
            drain(&mut b),
            [Seen::Audio(AudioCodec::Pcmu, 160, vec![0x34; 160])],
            "the far end's timeline, continuous from 0"
        );
        b.handle_browser_frame(t0, frame(AudioCodec::Pcmu, at_8k(0), &[0x56; 160]));
        let out = drain(&mut b);
        assert!(matches!(out[..], [Seen::Sip(dest, _)] if dest == pbx()));
        let packets = sent(&out);
        assert_eq!((packets[0].0, &packets[0].5[..]), (0, &[0x56u8; 160][..]));
        assert!(packets[0].4, "the first packet starts a talkspurt");
    }

    #[test]
    fn the_law_is_swapped_when_the_legs_chose_different_laws() {
        // The browser answered µ-law only; the PBX chose A-law.
        let (mut b, t0) = bridge_with(PCMU_ONLY, None);
        b.connect(t0, pbx(), Law::Pcma, None, true, Flow::BOTH);
        b.handle_rtp(t0, pbx(), &rtp(8, 1, 0, 7, &[0xd5; 160]));
        let out = drain(&mut b);
        let [Seen::Audio(AudioCodec::Pcmu, 0, data)] = &out[..] else {
            panic!("µ-law towards the browser: {out:?}");
        };
        let mut back = data.clone();
        Law::Pcmu.reencode(Law::Pcma, &mut back);
        assert_eq!(back, [0xd5; 160], "converted, not passed as is");
        // µ-law silence from the browser goes out as A-law silence.
        b.handle_browser_frame(t0, frame(AudioCodec::Pcmu, at_8k(0), &[0xff; 160]));
        let packets = sent(&drain(&mut b));
        assert_eq!((packets[0].0, &packets[0].5[..]), (8, &[0xd5u8; 160][..]));
        // A browser that has both laws gets the PBX's as it is.
        let (mut both, t0) = bridge();
        both.connect(t0, pbx(), Law::Pcma, None, true, Flow::BOTH);
        both.handle_rtp(t0, pbx(), &rtp(8, 1, 0, 7, &[0xd5; 160]));
        assert_eq!(
            drain(&mut both),
            [Seen::Audio(AudioCodec::Pcma, 0, vec![0xd5; 160])]
        );
    }

    #[test]
    fn early_media_before_the_sdp_is_held_then_played() {
        let (mut b, t0) = bridge();
        for i in 0..3u16 {
            let ts = 160 * u32::from(i);
            b.handle_rtp(t0, pbx(), &rtp(0, i, ts, 7, &[i as u8; 160]));
        }
        assert_eq!(drain(&mut b), [], "held: nothing played, nothing dropped");
        b.connect(t0 + ms(50), pbx(), Law::Pcmu, None, false, Flow::BOTH);
        assert_eq!(
            drain(&mut b),
            [
                Seen::Audio(AudioCodec::Pcmu, 0, vec![0; 160]),
                Seen::Audio(AudioCodec::Pcmu, 160, vec![1; 160]),
                Seen::Audio(AudioCodec::Pcmu, 320, vec![2; 160]),
            ]
        );
    }

    #[test]
    fn holds_only_a_little_before_the_sdp() {
        let (mut b, t0) = bridge();
        let data = rtp(0, 1, 160, 7, &[0xff; 160]);
        for _ in 0..sip_stream::MAX_HELD + 1 {
            b.handle_rtp(t0, pbx(), &data);
        }
        assert_eq!(drain(&mut b), [Seen::Discarded(Discard::NoRemote)]);
        // Held packets still face the source check once the SDP is known.
        b.connect(
            t0,
            "10.9.9.9:4000".parse().unwrap(),
            Law::Pcmu,
            None,
            false,
            Flow::BOTH,
        );
        let out = drain(&mut b);
        assert_eq!(out.len(), sip_stream::MAX_HELD);
        assert!(out
            .iter()
            .all(|s| *s == Seen::Discarded(Discard::WrongSource)));
        b.connect(t0, pbx(), Law::Pcmu, None, false, Flow::BOTH);
        assert_eq!(drain(&mut b), [], "replayed once only");
    }

    #[test]
    fn latches_on_the_announced_host_only() {
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcmu, None, false, Flow::BOTH);
        let data = rtp(0, 1, 160, 7, &[0xff; 160]);
        let from = |b: &mut Bridge, source: &str, at: Instant| {
            b.handle_rtp(at, source.parse().unwrap(), &data);
            match &drain(b)[..] {
                [Seen::Audio(..)] => Ok(()),
                [Seen::Discarded(why)] => Err(*why),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(from(&mut b, "10.9.9.9:4000", t0), Err(Discard::WrongSource));
        // NAT moved the port: latch to it, then only it.
        assert_eq!(from(&mut b, "10.0.0.5:5123", t0), Ok(()));
        assert_eq!(from(&mut b, PBX, t0), Err(Discard::WrongSource));
        // Our RTP follows the latched source.
        b.handle_browser_frame(t0, frame(AudioCodec::Pcmu, at_8k(0), &[0xff; 160]));
        assert!(matches!(
            drain(&mut b)[..],
            [Seen::Sip(dest, _)] if dest == "10.0.0.5:5123".parse().unwrap()
        ));
        // A new SDP address (the 200 after the 183, a transfer) latches
        // anew; the old source, still sending for a moment from the same
        // host, is not taken for the new far end.
        let t1 = t0 + ms(100);
        b.connect(
            t1,
            "10.0.0.5:6000".parse().unwrap(),
            Law::Pcmu,
            None,
            false,
            Flow::BOTH,
        );
        assert_eq!(from(&mut b, "10.0.0.5:5123", t1), Err(Discard::WrongSource));
        // A second later the quarantine is over: a NAT port on that host may latch.
        assert_eq!(from(&mut b, "10.0.0.5:5123", t1 + ms(1000)), Ok(()));
        assert_eq!(
            from(&mut b, "10.0.0.5:6000", t1 + ms(1000)),
            Err(Discard::WrongSource)
        );
    }

    #[test]
    fn filters_what_is_not_the_legs_audio() {
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcma, None, false, Flow::BOTH);
        b.handle_rtp(t0, pbx(), &rtp(101, 1, 0, 7, &[1, 0, 0, 160]));
        b.handle_rtp(t0, pbx(), &rtp(0, 2, 0, 7, &[0xff; 160]));
        b.handle_rtp(t0, pbx(), &[1, 2, 3]);
        assert_eq!(
            drain(&mut b),
            [
                Seen::Discarded(Discard::OtherPayload),
                Seen::Discarded(Discard::OtherPayload),
                Seen::Discarded(Discard::NotRtp),
            ],
            "telephone-event not negotiated, the other law, not RTP"
        );
        b.handle_browser_frame(t0, frame(AudioCodec::Opus, MediaTime::ZERO, &[0; 40]));
        assert_eq!(
            drain(&mut b),
            [],
            "Opus without a transcoder cannot go to the SIP leg"
        );
    }

    #[test]
    fn dtmf_from_the_far_end_becomes_a_digit_and_an_event_for_the_browser() {
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcmu, Some(101), true, Flow::BOTH);
        b.handle_rtp(t0, pbx(), &rtp(0, 1, 640, 9, &[0xff; 160]));
        drain(&mut b);
        let event = |seq: u16, duration: u16| {
            let [d0, d1] = duration.to_be_bytes();
            rtp(101, seq, 800, 9, &[5, 0x0a, d0, d1])
        };
        b.handle_rtp(t0 + ms(20), pbx(), &event(2, 160));
        assert_eq!(
            drain(&mut b),
            [
                Seen::Leg(LegEvent::Dtmf('5')),
                Seen::Event {
                    marker: true,
                    clock_hz: 8000,
                    code: 5
                },
            ]
        );
        // A repeat is no new digit; the audio it covers is left out.
        b.handle_rtp(t0 + ms(40), pbx(), &event(3, 320));
        let out = drain(&mut b);
        assert!(!out.iter().any(|s| matches!(s, Seen::Leg(_))), "{out:?}");
        b.handle_rtp(t0 + ms(40), pbx(), &rtp(0, 4, 800, 9, &[0xff; 160]));
        let out = drain(&mut b);
        assert!(!out.iter().any(|s| matches!(s, Seen::Audio(..))), "{out:?}");
    }

    #[test]
    fn dtmf_goes_out_with_the_audio() {
        let (mut b, t0) = bridge();
        assert!(
            !b.send_dtmf("1"),
            "no telephone-event before the far end's SDP"
        );
        b.connect(t0, pbx(), Law::Pcmu, Some(101), false, Flow::BOTH);
        assert!(b.send_dtmf("1#"));
        let mut events = Vec::new();
        for i in 0..25u64 {
            let at = t0 + ms(20 * i);
            b.handle_browser_frame(at, frame(AudioCodec::Pcmu, at_8k(i * 160), &[0xff; 160]));
            for p in sent(&drain(&mut b)) {
                if p.0 == 101 {
                    events.push((p.5[0], p.4));
                }
            }
        }
        assert_eq!(events.len(), 16, "8 packets per digit: {events:?}");
        assert!(events[..8].iter().all(|e| e.0 == 1) && events[8..].iter().all(|e| e.0 == 11));
        assert!(
            events[0].1 && events[8].1,
            "marker on each event's first packet"
        );
        // The browser's own event goes the same way.
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcmu, Some(101), false, Flow::BOTH);
        let key = BrowserFrame {
            codec: None,
            time: at_8k(4000),
            data: &[7, 0, 0, 160],
            telephone_event: Some(7),
        };
        b.handle_browser_frame(t0, key);
        b.handle_browser_frame(t0, key);
        b.handle_browser_frame(t0, frame(AudioCodec::Pcmu, at_8k(0), &[0xff; 160]));
        let packets = sent(&drain(&mut b));
        assert_eq!(packets.len(), 2, "the audio and one event packet");
        assert_eq!((packets[1].0, packets[1].5[0]), (101, 7));
    }

    #[test]
    fn sip_info_digits_are_played_to_the_browser_over_the_far_ends_audio() {
        let (mut b, t0) = bridge();
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        assert!(b.play_dtmf('3'));
        b.handle_rtp(t0, pbx(), &rtp(0, 1, 0, 9, &[0xff; 160]));
        let out = drain(&mut b);
        assert!(
            matches!(
                out[..],
                [Seen::Event {
                    marker: true,
                    code: 3,
                    ..
                }]
            ),
            "the event instead of the audio: {out:?}"
        );
    }

    #[test]
    fn silence_times_the_call_out_once_after_the_answer() {
        let timeout = Duration::from_secs(30);
        let (mut b, t0) = bridge_with(G711, Some(timeout));
        b.connect(t0, pbx(), Law::Pcmu, None, false, Flow::BOTH);
        b.handle_timeout(t0 + Duration::from_secs(300));
        assert!(
            !drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)),
            "ringing may be silent"
        );
        let t1 = t0 + Duration::from_secs(300);
        b.connect(t1, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        // The far end keeps talking; the browser says nothing.
        for s in [10, 20, 29] {
            b.handle_rtp(
                t1 + Duration::from_secs(s),
                pbx(),
                &rtp(0, s as u16, 0, 7, &[0xff; 160]),
            );
        }
        b.handle_timeout(t1 + Duration::from_secs(29));
        assert!(!drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)));
        b.handle_timeout(t1 + Duration::from_secs(30));
        assert!(drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)));
        b.handle_timeout(t1 + Duration::from_secs(31));
        assert!(
            !drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)),
            "reported once"
        );
    }

    #[test]
    fn hold_stops_sending_pauses_the_timeout_and_resumes_the_same_stream() {
        let timeout = Duration::from_secs(30);
        let (mut b, t0) = bridge_with(G711, Some(timeout));
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        let send = |b: &mut Bridge, at: Instant, time: u64| {
            b.handle_browser_frame(at, frame(AudioCodec::Pcmu, at_8k(time), &[0xff; 160]));
            sent(&drain(b)).pop()
        };
        let before = send(&mut b, t0, 0).expect("sent before the hold");
        let held = Flow {
            to_sip: false,
            from_sip: true,
        };
        b.connect(t0, pbx(), Law::Pcmu, None, true, held);
        assert_eq!(
            send(&mut b, t0 + ms(20), 160),
            None,
            "nothing goes out while held"
        );
        b.handle_timeout(t0 + Duration::from_secs(70));
        assert!(
            !drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)),
            "a long hold is no media timeout"
        );
        // c=0.0.0.0 (RFC 2543 hold) keeps the address we had.
        let t1 = t0 + Duration::from_secs(100);
        b.connect(
            t1,
            "0.0.0.0:4000".parse().unwrap(),
            Law::Pcmu,
            None,
            true,
            Flow::BOTH,
        );
        // The browser's own timeline may jump anywhere; ours follows the clock.
        let after = send(&mut b, t1 + ms(100), 123_456_789).expect("sent after resume");
        assert_eq!(after.3, before.3, "same SSRC");
        assert_eq!(after.1, before.1.wrapping_add(1), "next sequence number");
        assert_eq!(
            after.2.wrapping_sub(before.2),
            100 * 8000 + 800,
            "the timestamp follows the clock across the hold"
        );
        assert!(after.4, "a new talkspurt");
        b.handle_timeout(t1 + Duration::from_secs(29));
        assert!(!drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)));
        b.handle_timeout(t1 + Duration::from_secs(31));
        assert!(
            drain(&mut b).contains(&Seen::Leg(LegEvent::MediaTimeout)),
            "the watch restarts at resume"
        );
    }

    #[test]
    fn rtcp_reports_go_to_the_next_port_and_the_far_ends_give_the_rtt() {
        let wall = SystemTime::now();
        let t0 = Instant::now();
        let policy = MediaPolicy::default();
        let mut b = Bridge::new(PeerId(1), t0, wall, &policy, G711).unwrap();
        b.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut b), [], "no report before the far end is known");
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        b.handle_timeout(t0 + ms(999));
        assert_eq!(drain(&mut b), []);
        b.handle_timeout(t0 + ms(1000));
        let out = drain(&mut b);
        let [Seen::Rtcp(dest, report)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(*dest, "10.0.0.5:4001".parse().unwrap());
        assert_eq!(report[1], 200, "a sender report");
        b.handle_timeout(t0 + ms(1250));
        assert_eq!(drain(&mut b), [], "the next one ~5 s later");

        // The far end's report about our stream: our SR left 30 ms before it
        // arrived (LSR) and the far end held it 10 ms (DLSR): 20 ms RTT.
        let ssrc = b.stream.ssrc();
        let ntp_ms = |n: u32| n * 65536 / 1000;
        let arrival = t0 + Duration::from_secs(2);
        let lsr = rtcp::ntp_middle(wall + Duration::from_secs(2)).wrapping_sub(ntp_ms(30));
        let rr = |ssrc: u32| {
            let mut p = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[128, 0, 0, 2]);
            for w in [1000u32, 8, lsr, ntp_ms(10)] {
                p.extend_from_slice(&w.to_be_bytes());
            }
            p
        };
        assert!(b.handle_rtcp(arrival, &rr(ssrc ^ 1)));
        assert_eq!(b.summary().rtt_ms, None, "a block about another stream");
        assert!(b.handle_rtcp(arrival, &rr(ssrc)));
        let s = b.summary();
        let rtt = s.rtt_ms.expect("an RTT");
        assert!((19.0..21.0).contains(&rtt), "{rtt} ms");
        assert_eq!(s.far_end_fraction_lost, Some(0.5));
        assert_eq!(s.far_end_cumulative_lost, Some(2));
        assert!(!b.handle_rtcp(arrival, &[0x12, 0x34]), "not RTCP");
    }

    fn opus_encoder() -> opus::Encoder {
        let mut enc =
            opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc
    }

    fn at_48k(samples_8k: u64) -> MediaTime {
        MediaTime::new(samples_8k * 6, Frequency::FORTY_EIGHT_KHZ)
    }

    #[test]
    fn opus_from_the_browser_goes_out_as_20_ms_g711_packets() {
        let (mut b, t0) = bridge_with(OPUS, None);
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        // A 40 ms Opus packet (two 20 ms frames) made by a real encoder.
        let opus = opus_encoder().encode_vec(&[0i16; 320], 400).unwrap();
        b.handle_browser_frame(t0, frame(AudioCodec::Opus, at_48k(800), &opus));
        let packets = sent(&drain(&mut b));
        assert_eq!(packets.len(), 2);
        assert!(packets.iter().all(|p| p.0 == 0 && p.5.len() == 160));
        assert_eq!(
            packets[1].2.wrapping_sub(packets[0].2),
            160,
            "consecutive 20 ms"
        );
        assert_eq!(packets[1].1.wrapping_sub(packets[0].1), 1);
        // Garbage that libopus rejects is dropped, not sent.
        b.handle_browser_frame(t0, frame(AudioCodec::Opus, at_48k(1120), &[0x03]));
        assert_eq!(drain(&mut b), []);
    }

    #[test]
    fn a_lost_browser_packet_leaves_no_hole_in_the_sip_stream() {
        let (mut b, t0) = bridge_with(OPUS, None);
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        let mut enc = opus_encoder();
        let mut timestamps = Vec::new();
        for n in [0u64, 1, 3, 4] {
            let packet = enc.encode_vec(&[100i16; 160], 400).unwrap();
            let at = t0 + ms(20 * n);
            b.handle_browser_frame(at, frame(AudioCodec::Opus, at_48k(n * 160), &packet));
            timestamps.extend(sent(&drain(&mut b)).iter().map(|p| p.2));
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
        let (mut b, t0) = bridge_with(OPUS, None);
        b.connect(t0, pbx(), Law::Pcmu, None, true, Flow::BOTH);
        let push = |b: &mut Bridge, seq: u16, time: u32, at: Instant| {
            b.handle_rtp(at, pbx(), &rtp(0, seq, time, 7, &[0xff; 160]));
            drain(b)
        };
        let opus_times = |out: &[Seen]| -> Vec<u64> {
            out.iter()
                .filter_map(|s| match s {
                    Seen::Audio(AudioCodec::Opus, time, data) if !data.is_empty() => Some(time / 6),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(opus_times(&push(&mut b, 1, 0, t0)), [0]);
        // 320 before 160: held and a wake-up asked for, then both in order.
        let out = push(&mut b, 3, 320, t0);
        assert_eq!(opus_times(&out), [] as [u64; 0]);
        assert!(matches!(out[..], [Seen::Wake(_)]), "{out:?}");
        assert_eq!(opus_times(&push(&mut b, 2, 160, t0)), [160, 320]);
        // 480 never comes: concealed once the deadline passes.
        let out = push(&mut b, 5, 640, t0 + ms(40));
        let [Seen::Wake(deadline)] = out[..] else {
            panic!("a hole to wait for: {out:?}");
        };
        b.handle_timeout(deadline - ms(1));
        assert_eq!(
            opus_times(&drain(&mut b)),
            [] as [u64; 0],
            "not before its time"
        );
        b.handle_timeout(deadline);
        assert_eq!(opus_times(&drain(&mut b)), [480, 640]);
        assert_eq!(b.summary().concealed_from_sip, 1);
        assert!(b.summary().transcoded);
    }
}

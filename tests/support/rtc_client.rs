//! A real WebRTC peer for tests and load: str0m as a full-ICE, controlling
//! client on its own UDP socket, offering one audio m-line. It sends numbered
//! frames and checks that what comes back is byte-for-byte what it sent.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCodec {
    Opus,
    Pcmu,
    Pcma,
}

pub struct RtcClient {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    codec: ClientCodec,
    connected: bool,
    disconnected: bool,
    created: Instant,
    next_timeout: Instant,
    received: Vec<Vec<u8>>,
    /// When each entry of `received` arrived.
    arrivals: Vec<Instant>,
    /// Each entry's RTP time, in its codec's clock as str0m extends it.
    media_times: Vec<u64>,
    /// ICE is connected (again, after a restart).
    ice_connected: bool,
    /// 8 kHz samples of tone sent so far, so that each `send_pcmu_tone`
    /// continues the timeline (and the sine) where the last one stopped.
    tone_samples: u64,
    /// After an ICE restart onto a new socket: its host candidate, added
    /// once the answer is applied.
    new_candidate: Option<Candidate>,
}

/// Result of an echo exchange.
#[derive(Debug, Clone, Copy)]
pub struct EchoReport {
    pub sent: usize,
    /// Frames received that equal a frame we sent.
    pub echoed: usize,
    /// Frames received that we never sent (must be zero).
    pub foreign: usize,
}

impl RtcClient {
    /// Binds a socket and creates the offer SDP.
    pub async fn new(codec: ClientCodec) -> (RtcClient, String) {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind client socket");
        let local = socket.local_addr().unwrap();
        let builder = Rtc::builder().clear_codecs();
        let mut builder = match codec {
            ClientCodec::Opus => builder.enable_opus(true, false),
            ClientCodec::Pcmu => builder.enable_pcmu(true, false),
            ClientCodec::Pcma => builder.enable_pcma(true, false),
        };
        // telephone-event at the audio clock, as browsers offer it.
        let (tele_pt, tele_rate) = match codec {
            ClientCodec::Opus => (110, str0m::media::Frequency::FORTY_EIGHT_KHZ),
            _ => (101, str0m::media::Frequency::EIGHT_KHZ),
        };
        builder.codec_config().add_config(
            Pt::new_with_value(tele_pt),
            None,
            Codec::Tele,
            tele_rate,
            None,
            str0m::format::FormatParams::default(),
        );
        let mut rtc = builder.build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        let client = RtcClient {
            rtc,
            socket,
            local,
            mid,
            pending: Some(pending),
            codec,
            connected: false,
            disconnected: false,
            created: Instant::now(),
            next_timeout: Instant::now(),
            received: Vec::new(),
            arrivals: Vec::new(),
            media_times: Vec::new(),
            ice_connected: false,
            tone_samples: 0,
            new_candidate: None,
        };
        (client, offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, sdp: &str) {
        let answer = SdpAnswer::from_sdp_string(sdp).expect("answer parses");
        let pending = self.pending.take().expect("one answer per offer");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        if let Some(candidate) = self.new_candidate.take() {
            self.rtc.add_local_candidate(candidate);
        }
        self.drain();
    }

    /// Makes an ICE-restart offer (new ICE credentials), as a browser's
    /// `createOffer({iceRestart: true})` does. With `new_socket` the client
    /// also moves to a fresh UDP socket (a network change): the old one is
    /// closed and, once the answer is applied, only the new address has a
    /// candidate. Apply the gateway's answer with `accept_answer`.
    pub async fn ice_restart_offer(&mut self, new_socket: bool) -> String {
        let mut change = self.rtc.sdp_api();
        change.ice_restart(!new_socket);
        let (offer, pending) = change.apply().expect("an ICE restart makes an offer");
        self.pending = Some(pending);
        if new_socket {
            let socket = UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the new client socket");
            self.local = socket.local_addr().unwrap();
            self.socket = socket;
            self.new_candidate = Some(Candidate::host(self.local, "udp").unwrap());
        }
        self.ice_connected = false;
        offer.to_sdp_string()
    }

    /// The client's current UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The `candidate:` line of the client's current host candidate, as a
    /// browser trickles it.
    pub fn host_candidate(&self) -> String {
        Candidate::host(self.local, "udp").unwrap().to_sdp_string()
    }

    /// Drives the connection until ICE is connected (again). False on timeout.
    pub async fn wait_ice_connected(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.ice_connected && !self.disconnected && Instant::now() < deadline {
            self.step(deadline).await;
        }
        self.ice_connected
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Drives ICE and DTLS until connected. Returns false on timeout or failure.
    pub async fn connect(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.connected && !self.disconnected && Instant::now() < deadline {
            self.step(deadline).await;
        }
        self.connected
    }

    /// Sends `frames` numbered 20 ms frames (tagged with `tag`) and keeps
    /// receiving for `linger` afterwards, then reports what came back.
    pub async fn echo_exchange(&mut self, tag: u32, frames: usize, linger: Duration) -> EchoReport {
        let pt = self.pt();
        let (clock, step) = match self.codec {
            ClientCodec::Opus => (48_000, 960),
            _ => (8_000, 160),
        };
        let mut sent = HashSet::new();
        let start = Instant::now();
        for i in 0..frames {
            let due = start + Duration::from_millis(20 * i as u64);
            while Instant::now() < due {
                self.step(due).await;
            }
            let payload = frame_payload(self.codec, tag, i as u32);
            sent.insert(payload.clone());
            let time = MediaTime::new(
                i as u64 * step,
                str0m::media::Frequency::new(clock).unwrap(),
            );
            if let Some(writer) = self.rtc.writer(self.mid) {
                writer
                    .write(pt, Instant::now(), time, payload)
                    .expect("write");
            }
            self.drain();
        }
        let end = Instant::now() + linger;
        while Instant::now() < end {
            self.step(end).await;
        }
        let echoed = self.received.iter().filter(|r| sent.contains(*r)).count();
        let foreign = self.received.len() - echoed;
        self.received.clear();
        self.arrivals.clear();
        self.media_times.clear();
        EchoReport {
            sent: frames,
            echoed,
            foreign,
        }
    }

    fn pt(&mut self) -> Pt {
        let want = match self.codec {
            ClientCodec::Opus => Codec::Opus,
            ClientCodec::Pcmu => Codec::PCMU,
            ClientCodec::Pcma => Codec::PCMA,
        };
        let writer = self.rtc.writer(self.mid).expect("audio media");
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == want)
            .map(|p| p.pt());
        pt.expect("negotiated payload type")
    }

    /// One turn of the loop: a datagram or the next timeout, whichever first.
    async fn step(&mut self, not_after: Instant) {
        let wake = self.next_timeout.min(not_after).max(Instant::now());
        let mut buf = [0u8; 2000];
        tokio::select! {
            r = self.socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    if let Ok(contents) = buf[..n].try_into() {
                        let input = Input::Receive(Instant::now(), Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: self.local,
                            contents,
                        });
                        let _ = self.rtc.handle_input(input);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.disconnected = true
                    }
                    Event::IceConnectionStateChange(state) => {
                        self.ice_connected = matches!(
                            state,
                            IceConnectionState::Connected | IceConnectionState::Completed
                        );
                    }
                    Event::MediaData(d) => {
                        self.received.push(d.data.to_vec());
                        self.arrivals.push(Instant::now());
                        self.media_times.push(d.time.numer());
                    }
                    _ => {}
                },
                Err(_) => {
                    self.disconnected = true;
                    return;
                }
            }
        }
    }
}

/// A frame that is unique per (tag, index). Opus frames start with a valid
/// TOC byte (SILK NB 20 ms, mono, one frame) so a decoder would accept them.
fn frame_payload(codec: ClientCodec, tag: u32, index: u32) -> Vec<u8> {
    let len = match codec {
        ClientCodec::Opus => 40,
        _ => 160,
    };
    let mut p = vec![0x55u8; len];
    if codec == ClientCodec::Opus {
        p[0] = 0x08;
    }
    p[1..5].copy_from_slice(&tag.to_be_bytes());
    p[5..9].copy_from_slice(&index.to_be_bytes());
    p
}

/// What [`RtcClient::send_pcmu_tone`] sent and received.
#[derive(Debug, Clone)]
pub struct ToneExchange {
    /// 20 ms PCMU frames sent.
    pub sent_frames: usize,
    /// Media frames received meanwhile.
    pub received_frames: usize,
    /// The received payloads decoded as µ-law, in arrival order: 8 kHz
    /// samples in [-1, 1).
    pub received: Vec<f32>,
    /// When each received frame arrived.
    pub arrivals: Vec<Instant>,
}

impl ToneExchange {
    /// Frames that arrived within `[from, to)`.
    pub fn frames_between(&self, from: Instant, to: Instant) -> usize {
        self.arrivals
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count()
    }
}

impl RtcClient {
    /// Sends a sine of `freq_hz` (half full scale) as PCMU, 20 ms a frame,
    /// for `seconds`, keeps receiving for `linger` afterwards, and returns
    /// what arrived meanwhile decoded as µ-law. The call must have
    /// negotiated PCMU (a [`ClientCodec::Pcmu`] client). Successive calls
    /// continue one RTP timeline.
    pub async fn send_pcmu_tone(
        &mut self,
        freq_hz: f64,
        seconds: f64,
        linger: Duration,
    ) -> ToneExchange {
        assert_eq!(self.codec, ClientCodec::Pcmu, "send_pcmu_tone needs PCMU");
        const SAMPLES: usize = 160;
        let pt = self.pt();
        let frames = (seconds * 50.0).round() as usize;
        self.received.clear();
        self.arrivals.clear();
        self.media_times.clear();
        let start = Instant::now();
        for i in 0..frames {
            let due = start + Duration::from_millis(20 * i as u64);
            while Instant::now() < due {
                self.step(due).await;
            }
            let first = self.tone_samples;
            let payload: Vec<u8> = (0..SAMPLES as u64)
                .map(|j| {
                    let t = (first + j) as f64 / 8000.0;
                    let v = 0.5 * (2.0 * std::f64::consts::PI * freq_hz * t).sin();
                    crate::sip_peers::linear_to_ulaw((v * f64::from(i16::MAX)).round() as i16)
                })
                .collect();
            self.tone_samples += SAMPLES as u64;
            let time = MediaTime::new(first, str0m::media::Frequency::new(8_000).unwrap());
            if let Some(writer) = self.rtc.writer(self.mid) {
                writer
                    .write(pt, Instant::now(), time, payload)
                    .expect("write");
            }
            self.drain();
        }
        let end = Instant::now() + linger;
        while Instant::now() < end {
            self.step(end).await;
        }
        let received_frames = self.received.len();
        let received = self
            .received
            .drain(..)
            .flatten()
            .map(|u| f32::from(ulaw_to_linear(u)) / 32768.0)
            .collect();
        ToneExchange {
            sent_frames: frames,
            received_frames,
            received,
            arrivals: {
                self.media_times.clear();
                std::mem::take(&mut self.arrivals)
            },
        }
    }
}

/// G.711 µ-law decoding, shared with the gateway.
pub use gangway_media::g711::ulaw_to_linear;

impl RtcClient {
    /// Load generation: writes the given (pre-encoded) frames round-robin,
    /// one per 20 ms, `count` in all, and counts the media frames that arrive
    /// meanwhile and for `linger` after. Payloads are not compared: after
    /// transcoding they cannot be.
    pub async fn stream_frames(
        &mut self,
        frames: &[Vec<u8>],
        count: usize,
        linger: Duration,
    ) -> (usize, usize) {
        self.pace_frames(frames, count, linger).await;
        let received = self.received.len();
        self.received.clear();
        self.arrivals.clear();
        self.media_times.clear();
        (count, received)
    }

    /// Like [`RtcClient::stream_frames`] with each frame sent once, in
    /// order, keeping what arrives: each media frame's RTP time (in its
    /// codec's clock) and payload, in arrival order. For quality
    /// measurements, where the received audio is decoded and scored.
    pub async fn stream_frames_keeping(
        &mut self,
        frames: &[Vec<u8>],
        linger: Duration,
    ) -> Vec<(u64, Vec<u8>)> {
        self.pace_frames(frames, frames.len(), linger).await;
        self.arrivals.clear();
        let times = std::mem::take(&mut self.media_times);
        times
            .into_iter()
            .zip(std::mem::take(&mut self.received))
            .collect()
    }

    async fn pace_frames(&mut self, frames: &[Vec<u8>], count: usize, linger: Duration) {
        let pt = self.pt();
        let (clock, step) = match self.codec {
            ClientCodec::Opus => (48_000, 960),
            _ => (8_000, 160),
        };
        let frequency = str0m::media::Frequency::new(clock).unwrap();
        self.received.clear();
        self.arrivals.clear();
        self.media_times.clear();
        let start = Instant::now();
        for i in 0..count {
            let due = start + Duration::from_millis(20 * i as u64);
            while Instant::now() < due {
                self.step(due).await;
            }
            let time = MediaTime::new(i as u64 * step, frequency);
            if let Some(writer) = self.rtc.writer(self.mid) {
                let _ = writer.write(pt, Instant::now(), time, frames[i % frames.len()].clone());
            }
            self.drain();
        }
        let end = Instant::now() + linger;
        while Instant::now() < end {
            self.step(end).await;
        }
    }
}

impl RtcClient {
    /// Sends one DTMF digit as a browser's RTCDTMFSender does: an RFC 4733
    /// event (100 ms, with its end packets) written through str0m, at the
    /// current point of the audio timeline. Keep the loop running after
    /// (e.g. `send_pcmu_tone`) so its packets go out.
    pub fn send_rfc4733(&mut self, code: u8) {
        let pt = self.pt();
        let (clock, per_ms) = match self.codec {
            ClientCodec::Opus => (48_000, 48),
            _ => (8_000, 8),
        };
        let elapsed = self.created.elapsed().as_millis() as u64;
        let time = MediaTime::new(
            elapsed * per_ms,
            str0m::media::Frequency::new(clock).unwrap(),
        );
        let event = str0m::media::TelephoneEvent {
            event: code,
            end: true,
            volume: 10,
            duration: Duration::from_millis(100),
        };
        if let Some(writer) = self.rtc.writer(self.mid) {
            writer
                .telephone_event(event)
                .write(pt, Instant::now(), time, Vec::<u8>::new())
                .expect("telephone event");
        }
        self.drain();
    }
}

#[cfg(test)]
mod tone_tests {
    use super::ulaw_to_linear;
    use crate::sip_peers::linear_to_ulaw;

    #[test]
    fn ulaw_round_trips_within_quantisation() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        for s in [-30000i16, -1000, -100, 0, 100, 1000, 30000] {
            let back = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let tolerance = (i32::from(s).abs() / 16).max(8);
            assert!((back - i32::from(s)).abs() <= tolerance, "{s} -> {back}");
        }
    }
}

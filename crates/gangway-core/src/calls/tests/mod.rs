//! Scripted calls through a table: no sockets, no tasks, a fake clock.
//! Each test plays what the browser, the media shard and the PBX would
//! report and checks exactly what the table asks for.

mod inbound;
mod midcall;
mod outbound;
mod summary;
mod transfer;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sdp::{self, G711};
use crate::{AudioFlow, CallTimers, EndReason, MediaPlan, Router, SipRouting};

pub(super) type Out = Output<String>;

pub(super) const GATEWAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
pub(super) const RTP_PORT: u16 = 40_000;
pub(super) const GRACE: Duration = Duration::from_secs(30);

pub(super) fn settings() -> Settings {
    Settings {
        router: Router::new(
            Some("echo".into()),
            Some(SipRouting {
                domain: "pbx.test".into(),
                allow: vec![],
            }),
        ),
        timers: CallTimers {
            media_setup: Duration::from_secs(10),
            answer: Duration::from_secs(60),
            max_duration: None,
        },
        max_calls: 4,
        max_candidates: 3,
        dtmf: DtmfRoute::Rfc4733,
        sip_media_ip: Some(GATEWAY_IP),
        sip_codecs: vec![G711::Pcmu, G711::Pcma],
        sip_dtmf_pt: 101,
        resume_grace: Some(GRACE),
        log_prefix: "t".into(),
    }
}

/// The PBX's SDP: one audio stream at `ip:port`, codec `pt`, `direction`.
pub(super) fn pbx_sdp(ip: &str, port: u16, pt: u8, direction: &str) -> String {
    let name = if pt == 8 { "PCMA" } else { "PCMU" };
    format!(
        "v=0\r\no=pbx 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
}

pub(super) fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub(super) fn id(s: &str) -> String {
    s.to_string()
}

/// A table and a clock.
pub(super) struct Harness {
    pub calls: Calls<String>,
    pub now: Instant,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(settings())
    }

    pub fn with(settings: Settings) -> Self {
        Harness {
            calls: Calls::new(settings, 7),
            now: Instant::now(),
        }
    }

    pub fn input(&mut self, input: Input<String>) -> Vec<Out> {
        self.calls.handle(self.now, input);
        self.drain()
    }

    pub fn request(&mut self, request: Request<String>) -> Vec<Out> {
        self.input(Input::Request(request))
    }

    pub fn media(&mut self, leg: LegId, event: MediaEvent) -> Vec<Out> {
        self.input(Input::Media(leg, event))
    }

    pub fn sip(&mut self, sip: SipLegId, event: SipInput) -> Vec<Out> {
        self.input(Input::Sip(sip, event))
    }

    /// Moves the clock and fires what is due.
    pub fn advance(&mut self, by: Duration) -> Vec<Out> {
        self.now += by;
        if self.calls.poll_timeout().is_some_and(|t| t <= self.now) {
            self.calls.handle_timeout(self.now);
        }
        self.drain()
    }

    /// Everything but observations (they are logs and metrics).
    pub fn drain(&mut self) -> Vec<Out> {
        self.drain_all()
            .into_iter()
            .filter(|o| !matches!(o, Output::Observe { .. }))
            .collect()
    }

    pub fn drain_all(&mut self) -> Vec<Out> {
        std::iter::from_fn(|| self.calls.poll_output()).collect()
    }

    /// `call` places a SIP call to `to`; returns the WebRTC leg.
    pub fn start_sip_call(&mut self, call: &str, to: &str) -> LegId {
        let out = self.request(Request::Call {
            call: id(call),
            to: to.into(),
            offer: "browser-offer".into(),
            caller: None,
        });
        let [Output::Media(MediaCommand::Create { leg, offer, plan })] = out.as_slice() else {
            panic!("expected the leg to be created: {out:?}");
        };
        assert_eq!(
            (offer.as_str(), *plan),
            ("browser-offer", MediaPlan::Bridge)
        );
        *leg
    }

    /// The leg is ready: the browser gets its answer and the INVITE goes out.
    pub fn leg_ready(&mut self, call: &str, leg: LegId, uri: &str) -> SipLegId {
        let out = self.media(
            leg,
            MediaEvent::Ready {
                answer: "webrtc-answer".into(),
                rtp_port: Some(RTP_PORT),
            },
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0],
            notify(
                call,
                Notification::Answer {
                    sdp: "webrtc-answer".into()
                }
            )
        );
        let Output::Sip(SipCommand::Place {
            sip,
            uri: to,
            offer,
            correlation_id,
            ..
        }) = &out[1]
        else {
            panic!("expected an INVITE: {out:?}");
        };
        assert_eq!(to, uri);
        assert_eq!(correlation_id, &format!("t-{}", leg.0));
        assert_eq!(
            offer,
            &sdp::offer(GATEWAY_IP, RTP_PORT, &[G711::Pcmu, G711::Pcma], 101, leg.0)
        );
        assert!(offer.contains("a=sendrecv"), "{offer}");
        *sip
    }

    /// An answered outbound SIP call; returns its legs.
    pub fn answered_call(&mut self, call: &str, far: &str) -> (LegId, SipLegId) {
        let leg = self.start_sip_call(call, "1000");
        let sip = self.leg_ready(call, leg, "sip:1000@pbx.test");
        assert_eq!(self.media(leg, MediaEvent::Connected), vec![]);
        let out = self.sip(
            sip,
            SipInput::Answered {
                sdp: pbx_sdp(far, 20_000, 0, "sendrecv"),
                replacing_target: Some(format!("sip:{call}@{far}?Replaces=x")),
            },
        );
        assert_eq!(
            out,
            vec![
                connect(leg, far, 20_000, G711::Pcmu, true, AudioFlow::BOTH),
                notify(call, Notification::Answered),
            ]
        );
        (leg, sip)
    }
}

pub(super) fn notify(call: &str, n: Notification) -> Out {
    Output::Notify(id(call), n)
}

pub(super) fn refuse(call: Option<&str>, problem: Problem, message: &str) -> Out {
    Output::Refuse(Refusal {
        call: call.map(id),
        problem,
        message: message.into(),
    })
}

pub(super) fn ended(call: &str, reason: EndReason, code: Option<u16>) -> Out {
    notify(call, Notification::Ended { reason, code })
}

pub(super) fn connect(
    leg: LegId,
    ip: &str,
    port: u16,
    codec: G711,
    answered: bool,
    flow: AudioFlow,
) -> Out {
    Output::Media(MediaCommand::ConnectRemote {
        leg,
        addr: addr(ip, port),
        codec,
        dtmf_pt: Some(101),
        answered,
        flow,
    })
}

pub(super) fn sip(command: SipCommand) -> Out {
    Output::Sip(command)
}

pub(super) fn media(command: MediaCommand) -> Out {
    Output::Media(command)
}

pub(super) fn release(leg: LegId) -> Out {
    media(MediaCommand::Release { leg })
}

pub(super) fn hangup(sip_leg: SipLegId) -> Out {
    sip(SipCommand::Hangup { sip: sip_leg })
}

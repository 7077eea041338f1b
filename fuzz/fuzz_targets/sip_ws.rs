//! SIP over WebSocket, the handling above rsipstack's parser: one flow's
//! `SipWsFront` fed what a browser (JsSIP, SIP.js) sends, interleaved with
//! what the call core and the registrar answer, so requests and responses
//! reach established dialogs (re-INVITE, UPDATE, INFO, REFER, BYE, CANCEL,
//! the browser's answers to calls offered to it, REGISTER relays).
//!
//! Input: parts split at NUL bytes. A part is a frame from the browser,
//! unless it starts with `!`, then its next byte is an event of the core
//! or the registrar for the latest call or REGISTER (see `event`); what
//! follows that byte is its argument.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gangway_core::calls::{Notification, Problem, Refusal, Request};
use gangway_core::{EndReason, HoldParty};
use gangway_signal::sip_ws::{FrontOutput, FrontSettings, RegisterAnswer, SipWsFront};
use gangway_signal::CallId;
use libfuzzer_sys::fuzz_target;

const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
    m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.0.2.1\r\na=sendrecv\r\n";

#[derive(Default)]
struct Latest {
    call: Option<CallId>,
    register: Option<u64>,
    incoming: u32,
}

fn number(arg: &str, default: u16) -> u16 {
    arg.trim().parse().unwrap_or(default)
}

/// One event from the core or the registrar.
fn event(front: &mut SipWsFront, latest: &mut Latest, now: &mut Instant, op: u8, arg: &str) {
    let sdp = if arg.is_empty() { ANSWER } else { arg };
    let notification = match op {
        b'a' => Notification::Answer { sdp: sdp.into() },
        b'r' => Notification::Ringing,
        b'p' => Notification::Progress,
        b'o' => Notification::Answered,
        b'e' => Notification::Ended {
            reason: EndReason::RemoteHangup,
            code: arg.trim().parse().ok(),
        },
        b'b' => Notification::Ended {
            reason: EndReason::Busy,
            code: Some(486),
        },
        b'h' => Notification::Held {
            by: HoldParty::Remote,
        },
        b'H' => Notification::Held {
            by: HoldParty::Local,
        },
        b'u' => Notification::Resumed {
            by: HoldParty::Remote,
        },
        b'U' => Notification::Resumed {
            by: HoldParty::Local,
        },
        b'd' => Notification::Dtmf {
            digit: arg.chars().next().unwrap_or('5'),
        },
        b't' => Notification::TransferProgress {
            status: number(arg, 200),
            done: true,
        },
        b'T' => Notification::TransferProgress {
            status: number(arg, 100),
            done: false,
        },
        b'x' => Notification::Transferred { to: arg.into() },
        b'c' => Notification::Challenged {
            status: 407,
            challenge: arg.into(),
        },
        b'i' => {
            // A call offered to the browser.
            latest.incoming += 1;
            let call = CallId::new(format!("in{}", latest.incoming)).unwrap();
            latest.call = Some(call.clone());
            Notification::Incoming {
                from: "sip:carol@pbx.test".into(),
                display: (!arg.is_empty()).then(|| arg.into()),
                to: "sip:alice@pbx.test".into(),
            }
        }
        b'g' => {
            if let Some(id) = latest.register {
                let status = number(arg, 200);
                front.handle_register_answer(
                    id,
                    RegisterAnswer {
                        status,
                        reason: "Whatever".into(),
                        challenge: (status == 401 || status == 407)
                            .then(|| "Digest realm=\"pbx.test\", nonce=\"n1\"".into()),
                        min_expires: (status == 423).then_some(3600),
                        expires: Some(u32::from(number(arg, 600))),
                    },
                );
            }
            return;
        }
        b'f' => {
            let problems = [
                Problem::InvalidSdp,
                Problem::TooManyCalls,
                Problem::ShuttingDown,
                Problem::InvalidMessage,
                Problem::UnknownCall,
                Problem::HoldFailed,
                Problem::DtmfUnavailable,
            ];
            let problem = problems[usize::from(number(arg, 0)) % problems.len()];
            front.handle_refusal(Refusal {
                call: latest.call.clone(),
                problem,
                message: arg.into(),
            });
            return;
        }
        b'w' => {
            *now += Duration::from_secs(u64::from(number(arg, 100)));
            front.handle_timeout(*now);
            return;
        }
        _ => return,
    };
    if let Some(call) = latest.call.clone() {
        front.handle_core(*now, call, notification);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let settings = FrontSettings::new("gw.test:8080".into(), "Gangway".into());
    let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    let mut front = SipWsFront::new(settings, peer);
    let mut latest = Latest::default();
    let mut now = Instant::now();
    for part in text.split('\0').take(64) {
        match part.as_bytes() {
            [b'!', op, ..] => {
                let arg = part.get(2..).unwrap_or_default();
                event(&mut front, &mut latest, &mut now, *op, arg);
            }
            _ => front.handle_frame(now, part),
        }
        while let Some(out) = front.poll_output() {
            match out {
                FrontOutput::Core(Request::Call { call, .. }) => latest.call = Some(call),
                FrontOutput::Register(relay) => latest.register = Some(relay.id),
                FrontOutput::SignIn { id, .. } => latest.register = Some(id),
                _ => {}
            }
        }
    }
});

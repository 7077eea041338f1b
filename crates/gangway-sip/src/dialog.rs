//! What outbound and inbound calls share once a dialog exists: reporting
//! events to the call's owner, and answering the far end's in-dialog
//! requests (re-INVITE/UPDATE, INFO DTMF, OPTIONS, NOTIFY, REFER, MESSAGE).

use std::sync::{Arc, Mutex};

use rsipstack::dialog::dialog::{DialogState, TransactionHandle};
use rsipstack::sip::{Header, Method, Request, StatusCode};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info};

use crate::sdp::{self, Direction};
use crate::SipEvent;

/// Methods we answer (for `Allow`). PRACK: the stack answers the far end's
/// PRACKs within a dialog, and sends ours for reliable provisionals.
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK";

/// Where a call's events go. An inbound call changes owner once (from the
/// ringing coordinator to the session that accepts it), so the target can
/// be replaced; events sent while there is no target wait for one.
#[derive(Clone)]
pub(crate) struct Events {
    route: Arc<Mutex<Route>>,
}

struct Route {
    target: Option<(u64, UnboundedSender<(u64, SipEvent)>)>,
    pending: Vec<SipEvent>,
}

impl Events {
    pub(crate) fn to(key: u64, tx: UnboundedSender<(u64, SipEvent)>) -> Events {
        Events {
            route: Arc::new(Mutex::new(Route {
                target: Some((key, tx)),
                pending: Vec::new(),
            })),
        }
    }

    /// Events are held until [`Events::retarget`] names an owner.
    pub(crate) fn unrouted() -> Events {
        Events {
            route: Arc::new(Mutex::new(Route {
                target: None,
                pending: Vec::new(),
            })),
        }
    }

    /// Sends every later event (and any held one) to `tx` as `(key, event)`.
    pub(crate) fn retarget(&self, key: u64, tx: UnboundedSender<(u64, SipEvent)>) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        for event in route.pending.drain(..) {
            let _ = tx.send((key, event));
        }
        route.target = Some((key, tx));
    }

    pub(crate) fn send(&self, event: SipEvent) {
        debug!(?event, "sip event");
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        match &route.target {
            // The owner may have gone away; the call still runs to its end.
            Some((key, tx)) => {
                let _ = tx.send((*key, event));
            }
            None => route.pending.push(event),
        }
    }

    pub(crate) fn fail(&self, status: u16, reason: impl Into<String>) {
        self.send(SipEvent::Failed {
            status,
            reason: reason.into(),
        });
    }
}

/// Our side of the SDP within the dialog, for answering re-offers.
pub(crate) struct LocalSdp {
    pub(crate) body: String,
    pub(crate) version: u64,
    pub(crate) direction: Direction,
}

impl LocalSdp {
    pub(crate) fn new(body: String) -> LocalSdp {
        LocalSdp {
            version: sdp_version(&body).unwrap_or(1),
            body,
            direction: Direction::SendRecv,
        }
    }
}

/// Gap between two DTMF INFOs, like the pause between RFC 4733 digits.
const INFO_DIGIT_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends `digits` as SIP INFO (`application/dtmf-relay`, `Signal=` and a
/// 160 ms `Duration=`), one INFO per digit, each after the previous one's
/// response. `queue` keeps the requests of one call in order.
pub(crate) fn send_dtmf_info(
    dialog: &rsipstack::dialog::invite_dialog::InviteDialog,
    queue: &Arc<tokio::sync::Mutex<()>>,
    digits: String,
) {
    let (dialog, queue) = (dialog.clone(), queue.clone());
    tokio::spawn(async move {
        let _turn = queue.lock().await;
        for digit in digits.chars() {
            let body = format!("Signal={digit}\r\nDuration=160\r\n");
            let headers = vec![Header::ContentType("application/dtmf-relay".into())];
            match dialog.info(Some(headers), Some(body.into_bytes())).await {
                Ok(Some(resp)) => {
                    debug!(%digit, status = resp.status_code.code(), "DTMF INFO answered")
                }
                Ok(None) => debug!(%digit, "DTMF INFO not sent: dialog not confirmed"),
                Err(e) => info!(%digit, error = %e, "DTMF INFO failed"),
            }
            tokio::time::sleep(INFO_DIGIT_GAP).await;
        }
    });
}

/// Answers one request the far end sent inside an established dialog.
/// Other dialog states are ignored.
pub(crate) async fn in_dialog_request(state: DialogState, events: &Events, local: &mut LocalSdp) {
    match state {
        DialogState::Updated(_, req, handle) => answer_reoffer(&req, handle, local).await,
        DialogState::Info(_, req, handle) => {
            let content_type = req.headers.iter().find_map(|h| match h {
                Header::ContentType(v) => Some(v.to_string()),
                _ => None,
            });
            match info_dtmf_digit(content_type.as_deref(), &req.body) {
                Some(digit) => {
                    info!(%digit, "DTMF received in INFO");
                    events.send(SipEvent::Dtmf { digit });
                }
                None => debug!(body_len = req.body.len(), "INFO without DTMF, ignored"),
            }
            let _ = handle.reply(StatusCode::OK).await;
        }
        DialogState::Options(_, _, handle) => {
            let _ = handle
                .respond(
                    StatusCode::OK,
                    Some(vec![Header::Allow(ALLOW.into())]),
                    None,
                )
                .await;
        }
        DialogState::Notify(_, _, handle) => {
            let _ = handle.reply(StatusCode::OK).await;
        }
        DialogState::Refer(_, _, handle) => {
            info!("REFER received, declined (transfer not supported)");
            let _ = handle.reply(StatusCode::Decline).await;
        }
        DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
            let _ = handle.reply(StatusCode::MethodNotAllowed).await;
        }
        _ => {}
    }
}

/// Answer a re-INVITE or UPDATE from the far end. The media address and
/// codec we offered stay as they are; only the direction follows the offer
/// (hold/resume), so the far end's hold is honoured.
async fn answer_reoffer(req: &Request, handle: TransactionHandle, local: &mut LocalSdp) {
    let sdp_headers = || Some(vec![Header::ContentType("application/sdp".into())]);
    if req.body.is_empty() {
        if req.method == Method::Update {
            // Session refresh without an offer.
            let _ = handle.reply(StatusCode::OK).await;
        } else {
            // Offerless re-INVITE: our current SDP is the offer; the answer
            // comes in the ACK.
            let _ = handle
                .respond(
                    StatusCode::OK,
                    sdp_headers(),
                    Some(local.body.clone().into_bytes()),
                )
                .await;
        }
        return;
    }
    let offer = String::from_utf8_lossy(&req.body);
    let Some(offered) = sdp::offer_direction(&offer) else {
        info!(method = %req.method, "re-offer without usable audio, rejected");
        let _ = handle.reply(StatusCode::NotAcceptableHere).await;
        return;
    };
    let wanted = offered.reverse();
    if wanted != local.direction {
        match sdp::with_direction(&local.body, wanted, local.version.saturating_add(1)) {
            Some(body) => {
                local.body = body;
                local.version = local.version.saturating_add(1);
                local.direction = wanted;
            }
            None => {
                let _ = handle.reply(StatusCode::ServerInternalError).await;
                return;
            }
        }
    }
    info!(method = %req.method, direction = wanted.as_str(), "answering re-offer");
    let _ = handle
        .respond(
            StatusCode::OK,
            sdp_headers(),
            Some(local.body.clone().into_bytes()),
        )
        .await;
}

/// The digit of a DTMF INFO body: `application/dtmf-relay` (`Signal=5`, the
/// de-facto format of Cisco and most PBXs) or `application/dtmf` (just `5`).
fn info_dtmf_digit(content_type: Option<&str>, body: &[u8]) -> Option<char> {
    let content_type = content_type?.to_ascii_lowercase();
    let body = std::str::from_utf8(body).ok()?;
    let value = if content_type.contains("application/dtmf-relay") {
        body.lines().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| value.trim())
        })?
    } else if content_type.contains("application/dtmf") {
        body.trim()
    } else {
        return None;
    };
    let mut chars = value.chars();
    let digit = chars.next()?.to_ascii_uppercase();
    let valid = digit.is_ascii_digit() || matches!(digit, '*' | '#' | 'A'..='D');
    (valid && chars.next().is_none()).then_some(digit)
}

pub(crate) fn body_text(body: &[u8]) -> Option<String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(String::from_utf8_lossy(body).into_owned())
}

pub(crate) fn sdp_version(sdp: &str) -> Option<u64> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("o="))
        .and_then(|o| o.split_ascii_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_info_bodies() {
        let relay = Some("application/dtmf-relay");
        assert_eq!(
            info_dtmf_digit(relay, b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(info_dtmf_digit(relay, b"signal= #\r\n"), Some('#'));
        assert_eq!(
            info_dtmf_digit(Some("Application/DTMF-Relay"), b"Signal=d"),
            Some('D')
        );
        assert_eq!(
            info_dtmf_digit(Some("application/dtmf"), b"7\r\n"),
            Some('7')
        );
        assert_eq!(info_dtmf_digit(relay, b"Duration=160"), None);
        assert_eq!(
            info_dtmf_digit(relay, b"Signal=12"),
            None,
            "one digit per INFO"
        );
        assert_eq!(info_dtmf_digit(relay, b"Signal=x"), None);
        assert_eq!(
            info_dtmf_digit(Some("application/media_control+xml"), b"<x/>"),
            None
        );
        assert_eq!(info_dtmf_digit(None, b"Signal=5"), None);
        assert_eq!(info_dtmf_digit(relay, &[0xff, 0xfe]), None, "not UTF-8");
    }

    #[test]
    fn reads_sdp_version() {
        let sdp = sdp::offer("192.0.2.1".parse().unwrap(), 4000, &[], 101, 77);
        assert_eq!(sdp_version(&sdp), Some(1));
        assert_eq!(sdp_version("v=0\r\no=- 1 42 IN IP4 1.2.3.4\r\n"), Some(42));
        assert_eq!(sdp_version("garbage"), None);
    }
}

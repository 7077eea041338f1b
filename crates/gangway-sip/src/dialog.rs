//! What outbound and inbound calls share once a dialog exists: reporting
//! events to the call's owner, and answering the far end's in-dialog
//! requests (re-INVITE/UPDATE, INFO DTMF, OPTIONS, NOTIFY, REFER, MESSAGE).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rsipstack::dialog::dialog::{DialogState, TransactionHandle};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, Request, StatusCode, StatusCodeKind};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::sdp::{self, Direction, OwnSdp, G711};
use crate::{SipEvent, SipFailure};

mod refresh;

pub(crate) use refresh::{answer_headers, timer_headers, Expired, TimerConfig};

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

    /// Reports `failure` as [`SipEvent::Failed`].
    pub(crate) fn fail(&self, failure: &SipFailure) {
        self.send(failure.event());
    }
}

/// Our side of the SDP within the dialog: the address, port and session id
/// stay; codecs narrow to the negotiated one; the direction follows holds.
pub(crate) struct LocalSdp {
    body: String,
    own: Option<OwnSdp>,
    direction: Direction,
    /// The browser holds the call: our SDP never asks to receive.
    held: bool,
}

impl LocalSdp {
    pub(crate) fn new(body: String) -> LocalSdp {
        LocalSdp {
            own: sdp::parse_own(&body),
            body,
            direction: Direction::SendRecv,
            held: false,
        }
    }

    /// The far end's answer (or, for an incoming call, its offer) fixed
    /// the codec: later offers carry only that one.
    fn settle(&mut self, remote: &str) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        if let Ok(media) = sdp::parse_answer(remote, &own.codecs) {
            own.codecs = vec![media.codec];
            own.dtmf_pt = media.dtmf_pt.or(own.dtmf_pt);
        }
    }

    /// Our SDP with these codecs and direction; the `o=` version moves on
    /// only when something changed (RFC 3264 §8).
    fn render(
        &self,
        codecs: &[G711],
        dtmf_pt: Option<u8>,
        direction: Direction,
    ) -> Option<(String, u64)> {
        let own = self.own.as_ref()?;
        let build = |version| {
            sdp::offer_with_direction(
                own.ip,
                own.port,
                codecs,
                dtmf_pt.unwrap_or(0),
                own.session_id,
                version,
                direction,
            )
        };
        let same = build(own.version);
        if same == self.body {
            return Some((same, own.version));
        }
        let version = own.version.saturating_add(1);
        Some((build(version), version))
    }

    fn commit(
        &mut self,
        body: String,
        version: u64,
        codecs: Vec<G711>,
        dtmf_pt: Option<u8>,
        direction: Direction,
    ) {
        if let Some(own) = self.own.as_mut() {
            own.version = version;
            own.codecs = codecs;
            own.dtmf_pt = dtmf_pt;
        }
        self.body = body;
        self.direction = direction;
    }

    /// What the browser's hold allows us.
    fn wish(&self) -> Direction {
        if self.held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        }
    }
}

/// Gap between two DTMF INFOs, like the pause between RFC 4733 digits.
const INFO_DIGIT_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// Requests the call's owner makes inside an established dialog.
#[derive(Debug)]
pub(crate) enum MidCallCommand {
    /// DTMF digits as SIP INFO.
    Dtmf(String),
    /// Hold (true) or resume (false) with a re-INVITE.
    Hold(bool),
    /// Blind transfer: REFER the far end to this SIP URI.
    Transfer(String),
    /// How the call the far end REFERred us to is going (a NOTIFY with a
    /// `message/sipfrag` status line); `done` ends the subscription.
    ReferProgress {
        status: u16,
        reason: String,
        done: bool,
    },
}

/// An established dialog's mid-call side, shared by outbound and inbound
/// calls: answers the far end's in-dialog requests (re-INVITE/UPDATE,
/// INFO DTMF, OPTIONS, NOTIFY, REFER, MESSAGE) and sends ours, one at a
/// time, in order.
#[derive(Clone)]
pub(crate) struct MidCall {
    dialog: InviteDialog,
    events: Events,
    local: Arc<Mutex<LocalSdp>>,
    /// Keeps our own requests of one call in order (CSeq, and digits).
    queue: Arc<tokio::sync::Mutex<()>>,
    /// An offer of ours is out (RFC 3261 §14.2: a re-offer meanwhile gets 491).
    offering: Arc<AtomicBool>,
    /// The RFC 4028 session timer (see `dialog/refresh.rs`).
    timer: Arc<refresh::TimerCell>,
}

impl MidCall {
    pub(crate) fn new(dialog: InviteDialog, events: Events, local: LocalSdp) -> MidCall {
        MidCall {
            dialog,
            events,
            local: Arc::new(Mutex::new(local)),
            queue: Arc::new(tokio::sync::Mutex::new(())),
            offering: Arc::new(AtomicBool::new(false)),
            timer: Arc::default(),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LocalSdp> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The far end's SDP that completed the initial offer/answer.
    pub(crate) fn settle(&self, remote: &str) {
        self.local().settle(remote);
    }

    pub(crate) fn command(&self, command: MidCallCommand) {
        match command {
            MidCallCommand::Dtmf(digits) => self.send_dtmf_info(digits),
            MidCallCommand::Hold(hold) => self.reoffer(hold),
            MidCallCommand::Transfer(target) => self.refer(target),
            MidCallCommand::ReferProgress {
                status,
                reason,
                done,
            } => self.notify_refer(status, reason, done),
        }
    }

    /// REFER the far end to `target` (RFC 3515). The response and the far
    /// end's NOTIFYs come back as `TransferProgress`.
    fn refer(&self, target: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let _turn = this.queue.lock().await;
            info!(%target, "sending REFER");
            let refer_to = rsipstack::sip::ReferTo::new(format!("<{target}>"));
            let status = match this.dialog.refer(refer_to, None, None).await {
                Ok(Some(resp)) => resp.status_code.code(),
                Ok(None) => 481,
                Err(e) => {
                    info!(error = %e, "REFER failed");
                    408
                }
            };
            info!(status, "REFER answered");
            let done = !(200..300).contains(&status);
            this.events
                .send(SipEvent::TransferProgress { status, done });
        });
    }

    /// The implicit subscription of a REFER we accepted: one NOTIFY per
    /// state of the new call, the last one terminating it.
    fn notify_refer(&self, status: u16, reason: String, done: bool) {
        let this = self.clone();
        tokio::spawn(async move {
            let _turn = this.queue.lock().await;
            let state = if done {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            };
            let headers = vec![
                Header::Event("refer".into()),
                Header::SubscriptionState(state.into()),
                Header::ContentType("message/sipfrag;version=2.0".into()),
            ];
            let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
            let body = format!("SIP/2.0 {status} {reason}\r\n");
            match this
                .dialog
                .notify(Some(headers), Some(body.into_bytes()))
                .await
            {
                Ok(_) => debug!(status, done, "transfer progress notified"),
                Err(e) => info!(status, error = %e, "NOTIFY for the transfer failed"),
            }
        });
    }

    /// Sends `digits` as SIP INFO (`application/dtmf-relay`, `Signal=` and a
    /// 160 ms `Duration=`), one INFO per digit, each after the previous one's
    /// response.
    fn send_dtmf_info(&self, digits: String) {
        let (dialog, queue) = (self.dialog.clone(), self.queue.clone());
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

    /// Hold or resume: a re-INVITE offering sendonly or sendrecv. The
    /// outcome is reported as `OfferAccepted` or `OfferRefused`.
    fn reoffer(&self, hold: bool) {
        if self.offering.swap(true, Ordering::SeqCst) {
            self.events
                .send(SipEvent::OfferRefused { status: 491, hold });
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _turn = this.queue.lock().await;
            let status = this.send_reoffer(hold).await.err();
            this.offering.store(false, Ordering::SeqCst);
            if let Some(status) = status {
                this.events.send(SipEvent::OfferRefused { status, hold });
            }
        });
    }

    async fn send_reoffer(&self, hold: bool) -> Result<(), u16> {
        let direction = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let (body, version, codecs, dtmf_pt) = {
            let local = self.local();
            let own = local.own.as_ref().ok_or(500u16)?;
            let (codecs, dtmf_pt) = (own.codecs.clone(), own.dtmf_pt);
            let (body, version) = local.render(&codecs, dtmf_pt, direction).ok_or(500u16)?;
            (body, version, codecs, dtmf_pt)
        };
        info!(hold, "sending re-INVITE");
        let mut headers = vec![Header::ContentType("application/sdp".into())];
        headers.extend(self.refresh_request_headers());
        let resp = match self
            .dialog
            .reinvite(Some(headers), Some(body.clone().into_bytes()))
            .await
        {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(481),
            Err(e) => {
                info!(error = %e, "re-INVITE failed");
                return Err(408);
            }
        };
        let status = resp.status_code.code();
        if resp.status_code.kind() != StatusCodeKind::Successful {
            info!(status, "re-INVITE refused");
            return Err(status);
        }
        self.refreshed_by_response(&resp);
        let Some(answer) = body_text(&resp.body) else {
            warn!("2xx to our re-INVITE without SDP");
            return Err(488);
        };
        let media = match sdp::parse_answer(&answer, &codecs) {
            Ok(media) => media,
            Err(e) => {
                warn!(error = %e, "answer to our re-INVITE unusable");
                return Err(488);
            }
        };
        {
            let mut local = self.local();
            local.held = hold;
            local.commit(body, version, vec![media.codec], dtmf_pt, direction);
        }
        info!(
            hold,
            direction = media.direction.as_str(),
            "re-INVITE answered"
        );
        self.events
            .send(SipEvent::OfferAccepted { sdp: answer, hold });
        Ok(())
    }

    /// Answers one request the far end sent inside the dialog. Other
    /// dialog states are ignored.
    pub(crate) async fn on_request(&self, state: DialogState) {
        match state {
            DialogState::Updated(_, req, handle) => self.answer_reoffer(&req, handle).await,
            DialogState::Info(_, req, handle) => {
                let content_type = req.headers.iter().find_map(|h| match h {
                    Header::ContentType(v) => Some(v.to_string()),
                    _ => None,
                });
                match info_dtmf_digit(content_type.as_deref(), &req.body) {
                    Some(digit) => {
                        info!(%digit, "DTMF received in INFO");
                        self.events.send(SipEvent::Dtmf { digit });
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
            DialogState::Notify(_, req, handle) => {
                let _ = handle.reply(StatusCode::OK).await;
                let is_refer = req
                    .header_value("Event")
                    .is_some_and(|e| e.to_ascii_lowercase().starts_with("refer"));
                if let (true, Some(status)) = (is_refer, sipfrag_status(&req.body)) {
                    let terminated = req
                        .header_value("Subscription-State")
                        .is_some_and(|s| s.to_ascii_lowercase().starts_with("terminated"));
                    info!(status, terminated, "transfer progress");
                    // A NOTIFY can overtake the response to our REFER; the
                    // REFER holds the request queue until it has reported
                    // that response, so the owner sees 202 first.
                    let _turn = self.queue.lock().await;
                    self.events.send(SipEvent::TransferProgress {
                        status,
                        done: terminated || status >= 200,
                    });
                }
            }
            DialogState::Refer(_, req, handle) => {
                match req.header_value("Refer-To").as_deref().map(refer_target) {
                    Some(Ok(target)) => {
                        info!(%target, "REFER accepted: calling the target");
                        let _ = handle.reply(StatusCode::Accepted).await;
                        self.notify_refer(100, "Trying".into(), false);
                        self.events.send(SipEvent::Referred { target });
                    }
                    Some(Err(ReferError::Replaces)) => {
                        info!("REFER with Replaces (attended transfer) declined");
                        let _ = handle.reply(StatusCode::NotImplemented).await;
                    }
                    _ => {
                        info!("REFER without a usable Refer-To");
                        let _ = handle.reply(StatusCode::BadRequest).await;
                    }
                }
            }
            DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
                let _ = handle.reply(StatusCode::MethodNotAllowed).await;
            }
            _ => {}
        }
    }

    /// A re-INVITE or UPDATE from the far end. With an offer: answered per
    /// RFC 3264 (the codec it now prefers, its hold as recvonly/inactive,
    /// our own hold kept) and reported as `RemoteOffer`, so the media
    /// follows a new address, codec or direction. Without one: a session
    /// refresh (UPDATE), or an offerless re-INVITE that gets our SDP.
    async fn answer_reoffer(&self, req: &Request, handle: TransactionHandle) {
        // Each of them refreshes the session timer when answered 2xx.
        let refresh = match self.refresh_answer(req) {
            Ok(refresh) => refresh,
            Err(min_se) => {
                info!(method = %req.method, "session interval too small: 422");
                let headers = vec![Header::MinSE(min_se.to_string().into())];
                let _ = handle
                    .respond(StatusCode::SessionIntervalTooSmall, Some(headers), None)
                    .await;
                return;
            }
        };
        let timer_headers = refresh.as_ref().map(answer_headers).unwrap_or_default();
        let sdp_headers = || {
            let mut headers = vec![Header::ContentType("application/sdp".into())];
            headers.extend(timer_headers.iter().cloned());
            Some(headers)
        };
        let Some(offer) = body_text(&req.body) else {
            if req.method == Method::Update {
                let headers = Some(timer_headers.clone());
                let _ = handle.respond(StatusCode::OK, headers, None).await;
            } else {
                let body = self.local().body.clone();
                let _ = handle
                    .respond(StatusCode::OK, sdp_headers(), Some(body.into_bytes()))
                    .await;
            }
            self.refreshed_by_request(refresh);
            return;
        };
        if self.offering.load(Ordering::SeqCst) || self.timer.refreshing.load(Ordering::SeqCst) {
            info!(method = %req.method, "re-offer while ours is pending: 491");
            let _ = handle.reply(StatusCode::RequestPending).await;
            return;
        }
        let media = match sdp::parse_answer(&offer, &[G711::Pcmu, G711::Pcma]) {
            Ok(media) => media,
            Err(e) => {
                info!(method = %req.method, error = %e, "re-offer unusable: 488");
                let _ = handle.reply(StatusCode::NotAcceptableHere).await;
                return;
            }
        };
        let answer = {
            let mut local = self.local();
            let direction = media.direction.reverse().and(local.wish());
            match local.render(&[media.codec], media.dtmf_pt, direction) {
                Some((body, version)) => {
                    local.commit(
                        body.clone(),
                        version,
                        vec![media.codec],
                        media.dtmf_pt,
                        direction,
                    );
                    Some((body, direction))
                }
                None => None,
            }
        };
        let Some((body, direction)) = answer else {
            let _ = handle.reply(StatusCode::ServerInternalError).await;
            return;
        };
        info!(
            method = %req.method,
            offered = media.direction.as_str(),
            answered = direction.as_str(),
            codec = media.codec.encoding_name(),
            "answering re-offer"
        );
        let _ = handle
            .respond(StatusCode::OK, sdp_headers(), Some(body.into_bytes()))
            .await;
        self.refreshed_by_request(refresh);
        self.events.send(SipEvent::RemoteOffer { sdp: offer });
    }
}

/// The status code of a `message/sipfrag` body (`SIP/2.0 180 Ringing`).
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let code: u16 = rest.split_ascii_whitespace().next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

#[derive(Debug, PartialEq, Eq)]
enum ReferError {
    /// `?Replaces=`: an attended transfer.
    Replaces,
    Unusable,
}

/// The SIP URI of a `Refer-To` value (`<sip:carol@pbx>`, with or without
/// a display name). Other schemes and URIs with headers are refused.
fn refer_target(value: &str) -> Result<String, ReferError> {
    let value = value.trim();
    let uri = match (value.find('<'), value.rfind('>')) {
        (Some(start), Some(end)) if start < end => &value[start + 1..end],
        _ => value.split(';').next().unwrap_or(""),
    }
    .trim();
    if let Some((_, headers)) = uri.split_once('?') {
        return Err(if headers.to_ascii_lowercase().contains("replaces=") {
            ReferError::Replaces
        } else {
            ReferError::Unusable
        });
    }
    let scheme_ok = uri.len() > 4 && uri[..4].eq_ignore_ascii_case("sip:");
    let clean = uri
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"'));
    if scheme_ok && clean && uri.len() <= 256 {
        Ok(format!("sip:{}", &uri[4..]))
    } else {
        Err(ReferError::Unusable)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refer_targets_and_sipfrags() {
        assert_eq!(
            refer_target("<sip:carol@pbx.test>"),
            Ok("sip:carol@pbx.test".into())
        );
        assert_eq!(
            refer_target("\"Carol\" <SIP:carol@10.0.0.1:5060;transport=udp>;x=1"),
            Ok("sip:carol@10.0.0.1:5060;transport=udp".into())
        );
        assert_eq!(refer_target("sip:1000@pbx"), Ok("sip:1000@pbx".into()));
        assert_eq!(
            refer_target("<sip:bob@pbx?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>"),
            Err(ReferError::Replaces)
        );
        assert_eq!(refer_target("<tel:+15551234>"), Err(ReferError::Unusable));
        assert_eq!(refer_target("<sip:a b@pbx>"), Err(ReferError::Unusable));
        assert_eq!(refer_target(""), Err(ReferError::Unusable));

        assert_eq!(sipfrag_status(b"SIP/2.0 180 Ringing\r\n"), Some(180));
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 999 Nope"), None);
        assert_eq!(sipfrag_status(b"garbage"), None);
    }

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
}

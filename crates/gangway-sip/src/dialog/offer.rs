//! Re-offers both ways: our hold/resume re-INVITE, and answering the far
//! end's re-INVITE or UPDATE per RFC 3264.

use std::sync::atomic::Ordering;

use rsipstack::dialog::dialog::TransactionHandle;
use rsipstack::sip::{Header, Method, Request, StatusCode, StatusCodeKind};
use tracing::{info, warn};

use super::{answer_headers, body_text, MidCall};
use crate::sdp::{self, G711};
use crate::SipEvent;

impl MidCall {
    /// Hold or resume: a re-INVITE offering sendonly or sendrecv. The
    /// outcome is reported as `OfferAccepted` or `OfferRefused`.
    pub(super) fn reoffer(&self, hold: bool) {
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
        let reoffer = self.local().reoffer(hold).ok_or(500u16)?;
        info!(hold, "sending re-INVITE");
        let mut headers = vec![Header::ContentType("application/sdp".into())];
        headers.extend(self.refresh_request_headers());
        let resp = match self
            .dialog
            .reinvite(Some(headers), Some(reoffer.body.clone().into_bytes()))
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
        let media = match sdp::parse_answer(&answer, reoffer.codecs()) {
            Ok(media) => media,
            Err(e) => {
                warn!(error = %e, "answer to our re-INVITE unusable");
                return Err(488);
            }
        };
        self.local().reoffer_accepted(reoffer, &media);
        info!(
            hold,
            direction = media.direction.as_str(),
            "re-INVITE answered"
        );
        self.events
            .send(SipEvent::OfferAccepted { sdp: answer, hold });
        Ok(())
    }

    /// A re-INVITE or UPDATE from the far end. With an offer: answered per
    /// RFC 3264 (the codec it now prefers, its hold as recvonly/inactive,
    /// our own hold kept) and reported as `RemoteOffer`, so the media
    /// follows a new address, codec or direction. Without one: a session
    /// refresh (UPDATE), or an offerless re-INVITE that gets our SDP.
    pub(super) async fn answer_reoffer(&self, req: &Request, handle: TransactionHandle) {
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
                let body = self.local().body().to_string();
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
        let answer = self.local().answer(&media);
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

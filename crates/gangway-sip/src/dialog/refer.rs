//! Transfers (RFC 3515): our REFER and the far end's NOTIFYs about it,
//! and the far end's REFER with the NOTIFYs we owe it.

use rsipstack::dialog::dialog::TransactionHandle;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Request, StatusCode};
use tracing::{debug, info};

use super::MidCall;
use crate::SipEvent;

impl MidCall {
    /// REFER the far end to `target` (RFC 3515). The response and the far
    /// end's NOTIFYs come back as `TransferProgress`.
    pub(super) fn refer(&self, target: String) {
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
    pub(super) fn notify_refer(&self, status: u16, reason: String, done: bool) {
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

    /// A NOTIFY from the far end: progress of a REFER of ours, reported
    /// as `TransferProgress`.
    pub(super) async fn on_notify(&self, req: &Request, handle: TransactionHandle) {
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

    /// The far end's REFER: a blind transfer is accepted (202, NOTIFY
    /// 100) and reported as `Referred`; an attended one is declined.
    pub(super) async fn on_refer(&self, req: &Request, handle: TransactionHandle) {
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
}

/// The status code of a `message/sipfrag` body (`SIP/2.0 180 Ringing`).
pub fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let code: u16 = rest.split_ascii_whitespace().next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReferError {
    /// `?Replaces=`: an attended transfer.
    Replaces,
    Unusable,
}

/// The SIP URI of a `Refer-To` value (`<sip:carol@pbx>`, with or without
/// a display name). Other schemes and URIs with headers are refused.
pub fn refer_target(value: &str) -> Result<String, ReferError> {
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
}

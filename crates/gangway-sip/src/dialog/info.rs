//! DTMF in SIP INFO, both ways.

use rsipstack::dialog::dialog::TransactionHandle;
use rsipstack::sip::{Header, Request, StatusCode};
use tracing::{debug, info};

use super::MidCall;
use crate::SipEvent;

/// Gap between two DTMF INFOs, like the pause between RFC 4733 digits.
const INFO_DIGIT_GAP: std::time::Duration = std::time::Duration::from_millis(100);

impl MidCall {
    /// Sends `digits` as SIP INFO (`application/dtmf-relay`, `Signal=` and a
    /// 160 ms `Duration=`), one INFO per digit, each after the previous one's
    /// response.
    pub(super) fn send_dtmf_info(&self, digits: String) {
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

    /// An INFO from the far end: a DTMF digit is reported as `Dtmf`;
    /// either way it is answered 200.
    pub(super) async fn on_info(&self, req: &Request, handle: TransactionHandle) {
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
}

/// The digit of a DTMF INFO body: `application/dtmf-relay` (`Signal=5`, the
/// de-facto format of Cisco and most PBXs) or `application/dtmf` (just `5`).
pub fn info_dtmf_digit(content_type: Option<&str>, body: &[u8]) -> Option<char> {
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
}

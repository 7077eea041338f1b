//! OPTIONS keepalive: an out-of-dialog OPTIONS to the trunk every interval
//! tells whether it is reachable. While it is down, calls to it fail at
//! once with 503 instead of waiting 32 s for an INVITE to time out.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, Response, SipMessage, StatusCode, StatusCodeKind, Uri};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::{make_tag, Transaction};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::dialog::ALLOW;
use crate::shared::Shared;
use crate::trunk::{is_host_char, is_user_char, trunk_destination, TrunkHealth};
use crate::{SipError, SipService, Trunk};

/// What [`SipService::start_keepalive`] probes, and how often.
#[derive(Clone, Debug)]
pub struct TrunkKeepalive {
    /// The trunk probed; calls placed to a trunk with the same host, port
    /// and transport fail fast while it is down.
    pub trunk: Trunk,
    /// From user of the OPTIONS (`sip:<from_user>@<trunk domain>`).
    pub from_user: String,
    /// Time between the starts of two probes; also how long a probe waits
    /// for its response (at most 32 s: Timer F ends it before).
    pub interval: Duration,
    /// Consecutive failed probes after which the trunk is down (at least 1).
    pub failures: u32,
}

impl SipService {
    /// Starts probing `keepalive.trunk` with OPTIONS: the first probe at
    /// once, then one every `interval`. The trunk starts up; after
    /// `failures` probes in a row got no response (none within the interval,
    /// or a transport error) it is down, and any final response from it
    /// (200, but also 404, 405, 407, …: the trunk is alive) brings it up
    /// again. Each change is logged and shown in the `sip_trunk_up` gauge;
    /// while down, [`SipService::place_call`] to that trunk reports
    /// `Failed { status: 503 }` without sending an INVITE.
    ///
    /// Runs until the service stops. Only the first call has an effect.
    pub fn start_keepalive(&self, keepalive: TrunkKeepalive) -> Result<(), SipError> {
        let from_user = keepalive.from_user.trim();
        if from_user.is_empty() || !from_user.chars().all(is_user_char) {
            return Err(SipError::Config(format!(
                "invalid keepalive From user {:?}",
                keepalive.from_user
            )));
        }
        let domain = keepalive.trunk.domain.trim();
        if domain.is_empty() || !domain.chars().all(is_host_char) {
            return Err(SipError::Config(format!(
                "invalid trunk domain {:?}",
                keepalive.trunk.domain
            )));
        }
        trunk_destination(&keepalive.trunk).map_err(SipError::Config)?;
        if keepalive.interval.is_zero() || keepalive.failures == 0 {
            return Err(SipError::Config(
                "keepalive interval and failures must be positive".into(),
            ));
        }
        let health = Arc::new(TrunkHealth::new(&keepalive.trunk));
        if self.shared.trunk_health.set(health.clone()).is_err() {
            return Ok(());
        }
        self.shared.metrics.trunk_up.set(1);
        let span = tracing::info_span!(
            "sip_keepalive",
            trunk = %format!("{}:{}", keepalive.trunk.host, keepalive.trunk.port)
        );
        info!(
            parent: &span,
            interval_secs = keepalive.interval.as_secs_f64(),
            failures = keepalive.failures,
            "OPTIONS keepalive to the trunk started"
        );
        tokio::spawn(run_keepalive(self.shared.clone(), keepalive, health).instrument(span));
        Ok(())
    }

    /// False while the OPTIONS keepalive has the trunk down; true when it
    /// is up or not watched.
    pub fn trunk_up(&self) -> bool {
        self.shared.trunk_health.get().is_none_or(|h| h.is_up())
    }
}

async fn run_keepalive(shared: Arc<Shared>, keepalive: TrunkKeepalive, health: Arc<TrunkHealth>) {
    let interval = keepalive.interval;
    let mut failed_in_row: u32 = 0;
    let mut seq: u32 = 0;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shared.hangup_all.cancelled() => break,
            _ = shared.kill.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        // Probes start every `interval`; after a stall, start again from now.
        next = (next + interval).max(Instant::now());
        seq = seq.wrapping_add(1);
        let probe = tokio::time::timeout(interval, probe(&shared, &keepalive, seq));
        let result = tokio::select! {
            biased;
            _ = shared.hangup_all.cancelled() => break,
            _ = shared.kill.cancelled() => break,
            // Dropping a probe that timed out drops its transaction.
            result = probe => result.unwrap_or_else(|_| {
                Err(format!("no response within {} ms", interval.as_millis()))
            }),
        };
        match result {
            Ok(status) => {
                shared.metrics.trunk_probe("answered");
                failed_in_row = 0;
                debug!(status, "trunk answered OPTIONS");
                if !health.set_up(true) {
                    shared.metrics.trunk_up.set(1);
                    info!(status, "SIP trunk is up again: it answered OPTIONS");
                }
            }
            Err(reason) => {
                shared.metrics.trunk_probe("failed");
                failed_in_row = failed_in_row.saturating_add(1);
                debug!(%reason, failed_in_row, "OPTIONS probe failed");
                if failed_in_row >= keepalive.failures && health.set_up(false) {
                    shared.metrics.trunk_up.set(0);
                    warn!(
                        %reason,
                        failed_probes = failed_in_row,
                        "SIP trunk is down: no response to OPTIONS; new calls fail with 503 \
                         until it answers again"
                    );
                }
            }
        }
    }
    debug!("OPTIONS keepalive stopped");
}

/// One OPTIONS to the trunk. `Ok(status)` for a final response from the
/// trunk, `Err(reason)` for a transport error or no response.
async fn probe(shared: &Shared, keepalive: &TrunkKeepalive, seq: u32) -> Result<u16, String> {
    let endpoint = shared.endpoint_inner();
    let trunk = &keepalive.trunk;
    let (destination, transport) = trunk_destination(trunk)?;
    let tcp = transport == rsipstack::sip::Transport::Tcp;
    let target = format!(
        "sip:{}{}",
        destination.addr,
        if tcp { ";transport=tcp" } else { "" }
    );
    let uri = Uri::try_from(target.as_str()).map_err(|e| format!("bad trunk URI {target}: {e}"))?;
    let from_uri = Uri::try_from(
        format!("sip:{}@{}", keepalive.from_user.trim(), trunk.domain.trim()).as_str(),
    )
    .map_err(|e| format!("bad From URI: {e}"))?;
    let from = rsipstack::sip::typed::From {
        display_name: None,
        uri: from_uri,
        params: vec![],
    }
    .with_tag(make_tag());
    let to = rsipstack::sip::typed::To {
        display_name: None,
        uri: uri.clone(),
        params: vec![],
    };
    // Via names the connection the request really leaves on (UDP or TCP).
    let (connection, _) = endpoint
        .transport_layer
        .lookup(&destination, None)
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let via = endpoint
        .get_via(Some(connection.get_addr().clone()), None)
        .map_err(|e| format!("cannot build Via: {e}"))?;
    let mut request = endpoint.make_request(Method::Options, uri, via, from, to, seq, None);
    let contact_params = if tcp {
        vec![rsipstack::sip::uri::Param::Transport(transport)]
    } else {
        vec![]
    };
    let contact = rsipstack::sip::typed::Contact {
        display_name: None,
        uri: shared.contact(keepalive.from_user.trim(), contact_params),
        params: vec![],
    };
    request.headers.push(contact.into());
    request.headers.push(Header::Allow(ALLOW.into()));
    request
        .headers
        .push(Header::Accept("application/sdp".into()));

    let key = TransactionKey::from_request(&request, TransactionRole::Client)
        .map_err(|e| format!("cannot key the transaction: {e}"))?;
    let mut tx = Transaction::new_client(key, request, endpoint, None);
    tx.destination = Some(destination);
    tx.send()
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    while let Some(message) = tx.receive().await {
        let SipMessage::Response(resp) = message else {
            continue;
        };
        if resp.status_code.kind() == StatusCodeKind::Provisional {
            continue;
        }
        if made_up_locally(&resp) {
            return Err(format!(
                "no response ({} from the stack)",
                resp.status_code.code()
            ));
        }
        return Ok(resp.status_code.code());
    }
    Err("transaction ended without a response".into())
}

/// The stack reports Timer F (408) and a failed send on a connection (503)
/// as responses it builds from our request, so their To has no tag; a
/// trunk's final response always carries one (RFC 3261 §8.2.6.2).
fn made_up_locally(resp: &Response) -> bool {
    let local_code = matches!(
        resp.status_code,
        StatusCode::RequestTimeout | StatusCode::ServiceUnavailable
    );
    let has_to_tag = resp
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten())
        .is_some();
    local_code && !has_to_tag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, to: &str) -> Response {
        let text = format!(
            "SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
             From: <sip:gw@pbx.test>;tag=a\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        match SipMessage::try_from(text.as_str()).unwrap() {
            SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn local_timeouts_are_not_answers() {
        assert!(made_up_locally(&response(408, "<sip:pbx.test>")));
        assert!(made_up_locally(&response(503, "<sip:pbx.test>")));
        assert!(!made_up_locally(&response(408, "<sip:pbx.test>;tag=x")));
        assert!(!made_up_locally(&response(503, "<sip:pbx.test>;tag=x")));
        // Any other final response means the trunk is alive, tag or not.
        assert!(!made_up_locally(&response(404, "<sip:pbx.test>")));
        assert!(!made_up_locally(&response(200, "<sip:pbx.test>;tag=x")));
    }
}

//! Requests that are not responses to our own transactions: in-dialog
//! requests go to their dialog; an INVITE that starts a dialog is screened
//! (source, user, session interval, Replaces) and handed to the inbound
//! handler; anything else is answered here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rsipstack::platform::CancellationToken;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode, StatusCodeKind, Version};
use rsipstack::transaction::{Transaction, TransactionReceiver};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use crate::dialog::{timer_headers, ALLOW};
use crate::inbound::{request_source, source_allowed, start_inbound};
use crate::session_timer::{self, Answer};
use crate::shared::Shared;
use crate::SipEvent;

/// Requests that are not responses to our own transactions.
pub(crate) async fn incoming_loop(
    shared: Arc<Shared>,
    mut incoming: TransactionReceiver,
    cancel: CancellationToken,
) {
    loop {
        let tx = tokio::select! {
            _ = cancel.cancelled() => break,
            tx = incoming.recv() => match tx {
                Some(tx) => tx,
                None => break,
            },
        };
        tokio::spawn(handle_incoming(shared.clone(), tx));
    }
    debug!("incoming request loop ended");
}

async fn handle_incoming(shared: Arc<Shared>, mut tx: Transaction) {
    let method = tx.original.method;
    // Banned sources never get here: see `screen`.
    if tx.original.version != Version::V2 {
        // Answered once, in our version (RFC 3261 §8.2.2.1 allows no other).
        debug!(version = %tx.original.version, "request in another SIP version: 505");
        if method != Method::Ack {
            let mut resp = tx.endpoint_inner.make_response(
                &tx.original,
                StatusCode::VersionNotSupported,
                None,
            );
            resp.version = Version::V2;
            if let Err(e) = tx.respond(resp).await {
                debug!(error = %e, "failed to answer a request in another version");
            }
        }
        return;
    }
    if let Some(mut dialog) = shared.dialog_layer.match_dialog(&tx) {
        // A request that names a dialog comes from where INVITEs may
        // (`sip.inbound_allow`): a guessed Call-ID and tags from elsewhere
        // cannot hang up, hold or transfer a call.
        let allowed = shared.inbound.get().is_none_or(|inbound| {
            request_source(&tx).is_some_and(|s| source_allowed(&inbound.allowed_sources, s.ip()))
        });
        if !allowed {
            warn!(%method, src = ?request_source(&tx), "in-dialog request from an address not in sip.inbound_allow, refused (403)");
            shared.metrics.inbound_rejected("forbidden_source");
            if method != Method::Ack {
                return refuse_once(tx, StatusCode::Forbidden).await;
            }
            return;
        }
        if let Err(e) = dialog.handle(&mut tx).await {
            debug!(%method, error = %e, "in-dialog request failed");
        }
        // rsipstack leaves some requests unanswered (e.g. INFO/UPDATE while
        // the dialog is still early): never leave the far end hanging.
        let answered = tx
            .last_response
            .as_ref()
            .is_some_and(|r| r.status_code.kind() != StatusCodeKind::Provisional);
        if !answered && method != Method::Ack {
            let status = match method {
                Method::Update if !tx.original.body.is_empty() => StatusCode::NotAcceptableHere,
                Method::Info | Method::Update | Method::Options | Method::Notify => StatusCode::OK,
                _ => StatusCode::CallTransactionDoesNotExist,
            };
            debug!(%method, status = status.code(), "answering request the dialog left open");
            if let Err(e) = tx.reply(status).await {
                debug!(%method, error = %e, "failed to answer in-dialog request");
            }
        }
        return;
    }

    let has_to_tag = tx
        .original
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten())
        .is_some();
    if method == Method::Invite && !has_to_tag {
        return new_invite(&shared, tx).await;
    }
    let (status, allow) = match method {
        Method::Options => (StatusCode::OK, true),
        // Endpoint answers CANCEL itself; ACK never reaches here.
        Method::Ack => return,
        Method::Invite
        | Method::Bye
        | Method::Cancel
        | Method::Info
        | Method::Update
        | Method::PRack
        | Method::Notify
        | Method::Refer
        | Method::Message
            if has_to_tag =>
        {
            (StatusCode::CallTransactionDoesNotExist, false)
        }
        Method::Bye | Method::Cancel | Method::Info | Method::Update | Method::PRack => {
            (StatusCode::CallTransactionDoesNotExist, false)
        }
        _ => (StatusCode::MethodNotAllowed, true),
    };
    debug!(%method, status = status.code(), src = ?request_source(&tx), "out-of-dialog request");
    let mut headers = Vec::new();
    if allow {
        headers.push(Header::Allow(ALLOW.into()));
    }
    if method == Method::Options {
        headers.push(Header::Accept("application/sdp".into()));
    }
    if let Err(e) = tx.reply_with(status, headers, None).await {
        debug!(%method, error = %e, "failed to answer request");
    }
}

/// An INVITE that starts a dialog: screened, then handed to the inbound
/// handler, or refused.
async fn new_invite(shared: &Arc<Shared>, tx: Transaction) {
    let Some(inbound) = shared.inbound.get() else {
        // Inbound calls are not enabled.
        return refuse_invite(tx, StatusCode::TemporarilyUnavailable).await;
    };
    let source = request_source(&tx);
    let Some(source) = source.filter(|s| source_allowed(&inbound.allowed_sources, s.ip())) else {
        warn!(src = ?source, "INVITE from an address not in sip.inbound_allow, refused (403)");
        shared.metrics.inbound_rejected("forbidden_source");
        return refuse_once(tx, StatusCode::Forbidden).await;
    };
    if shared.stopping.load(Ordering::SeqCst) {
        return refuse_invite(tx, StatusCode::ServiceUnavailable).await;
    }
    // A B2BUA forwards the call: one that may take no more hops ends here
    // (RFC 3261 §16.3 step 3), which also stops a loop through us.
    let hops_left = tx
        .original
        .max_forwards_header()
        .ok()
        .and_then(|m| m.value().trim().parse::<u32>().ok());
    if hops_left == Some(0) {
        info!(src = %source, "INVITE with Max-Forwards: 0 refused (483)");
        return refuse_invite(tx, StatusCode::TooManyHops).await;
    }
    let user = tx
        .original
        .uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .filter(|u| !u.is_empty());
    if let Some(replaces) = tx.original.header_value("Replaces") {
        return replacing_invite(shared, tx, user.unwrap_or_default(), source, &replaces).await;
    }
    let Some(user) = user else {
        shared.metrics.inbound_rejected("no_user");
        return refuse_invite(tx, StatusCode::NotFound).await;
    };
    // RFC 4028 §9: a session interval below our minimum gets 422.
    let timer = timer_headers(tx.original.headers.iter());
    if let Answer::TooSmall { min_se } = session_timer::answer_request(&timer, 0) {
        info!(src = %source, "INVITE's Session-Expires below our Min-SE, refused (422)");
        let headers = vec![Header::MinSE(min_se.to_string().into())];
        return refuse_invite_with(tx, StatusCode::SessionIntervalTooSmall, headers).await;
    }
    match start_inbound(shared, tx, user, source) {
        Ok(call) => {
            match inbound.handler.try_send(call) {
                Ok(()) => {}
                // The gateway is behind on inbound calls: shed this one.
                Err(TrySendError::Full(call)) => {
                    shared.metrics.inbound_rejected("overloaded");
                    warn!(src = %source, "inbound call queue full: INVITE refused (503)");
                    call.handle.reject(503);
                }
                Err(TrySendError::Closed(call)) => call.handle.reject(480),
            }
        }
        Err(refused) => {
            let (tx, status) = *refused;
            refuse_invite(tx, status).await
        }
    }
}

/// An INVITE with Replaces (RFC 3891): it takes over one of our established
/// dialogs, whose owner gets it as [`SipEvent::ReplacedBy`] instead of a
/// ringing call. No such dialog: 481.
async fn replacing_invite(
    shared: &Arc<Shared>,
    tx: Transaction,
    user: String,
    source: SocketAddr,
    replaces: &str,
) {
    let Some(target) = parse_replaces(replaces) else {
        info!(%replaces, "unreadable Replaces header (400)");
        return refuse_invite(tx, StatusCode::BadRequest).await;
    };
    let Some(events) = shared.replaceable(&target) else {
        info!(call_id = %target.call_id, "INVITE with Replaces for no dialog of ours (481)");
        shared.metrics.inbound_rejected("replaces_no_dialog");
        return refuse_invite(tx, StatusCode::CallTransactionDoesNotExist).await;
    };
    match start_inbound(shared, tx, user, source) {
        Ok(call) => {
            info!(call_id = %target.call_id, "INVITE with Replaces: handing it to the call it replaces");
            events.send(SipEvent::ReplacedBy(crate::Replacement(Box::new(call))));
        }
        Err(refused) => {
            let (tx, status) = *refused;
            refuse_invite(tx, status).await
        }
    }
}

/// `call-id;to-tag=…;from-tag=…` as the dialog id on our side: the to-tag
/// is our tag, the from-tag the far end's.
pub fn parse_replaces(value: &str) -> Option<rsipstack::dialog::DialogId> {
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("to-tag") => to_tag = Some(v.trim()),
            Some((k, v)) if k.trim().eq_ignore_ascii_case("from-tag") => from_tag = Some(v.trim()),
            _ => {}
        }
    }
    Some(rsipstack::dialog::DialogId {
        call_id,
        local_tag: to_tag.filter(|t| !t.is_empty())?.to_string(),
        remote_tag: from_tag.filter(|t| !t.is_empty())?.to_string(),
    })
}

/// Answers an INVITE we will not take, and keeps its server transaction
/// until the ACK (or Timer H): it retransmits the response over UDP.
/// One response and no transaction left: nothing retransmits it. For
/// sources we do not talk to, whose address may be spoofed: each INVITE
/// draws one 403, not eleven (a reflection attack on whoever the source
/// claims to be). A retransmitted INVITE gets one more; the ACK finds no
/// transaction and costs nothing.
async fn refuse_once(mut tx: Transaction, status: StatusCode) {
    if let Err(e) = tx.reply(status).await {
        debug!(error = %e, "failed to answer INVITE");
    }
}

async fn refuse_invite(tx: Transaction, status: StatusCode) {
    refuse_invite_with(tx, status, Vec::new()).await
}

async fn refuse_invite_with(mut tx: Transaction, status: StatusCode, headers: Vec<Header>) {
    debug!(status = status.code(), src = ?request_source(&tx), "INVITE refused");
    if let Err(e) = tx.reply_with(status, headers, None).await {
        debug!(error = %e, "failed to answer INVITE");
        return;
    }
    let drain = async { while tx.receive().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(40), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_names_our_tag_as_the_to_tag() {
        let id = parse_replaces("abc@10.0.0.1;to-tag=ours;from-tag=theirs;early-only").unwrap();
        assert_eq!(id.call_id, "abc@10.0.0.1");
        assert_eq!(id.local_tag, "ours");
        assert_eq!(id.remote_tag, "theirs");
        let id = parse_replaces(" x ; From-Tag=b ; TO-TAG=a").unwrap();
        assert_eq!((id.local_tag.as_str(), id.remote_tag.as_str()), ("a", "b"));
        assert!(parse_replaces("abc;to-tag=a").is_none(), "both tags needed");
        assert!(parse_replaces(";to-tag=a;from-tag=b").is_none());
        assert!(parse_replaces("abc;to-tag=;from-tag=b").is_none());
    }
}

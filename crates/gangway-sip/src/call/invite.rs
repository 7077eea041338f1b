//! The INVITE we send, built from nothing but what the caller gave us, and
//! how the stack's answer to it reads as a [`SipFailure`].

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Response, Scheme, StatusCodeKind, Uri};

use crate::dialog::ALLOW;
use crate::session_timer;
use crate::shared::Shared;
use crate::trunk::{is_host_char, is_user_char, trunk_destination};
use crate::{CallAuth, OutboundCall, SipFailure, StatusCode, Transport};

/// Build the INVITE from the call: nothing but what the caller gave us.
pub(super) fn invite_option(
    shared: &Shared,
    call: &OutboundCall,
    session_expires: u32,
    min_se: u32,
) -> Result<InviteOption, String> {
    let from_user = call.from_user.trim();
    if from_user.is_empty() || !from_user.chars().all(is_user_char) {
        return Err(format!("invalid From user {:?}", call.from_user));
    }
    let domain = call.trunk.domain.trim();
    if domain.is_empty() || !domain.chars().all(is_host_char) {
        return Err(format!("invalid trunk domain {:?}", call.trunk.domain));
    }
    let (destination, transport) = trunk_destination(&call.trunk)?;
    let trunk_hop = destination.addr.clone();

    let callee = Uri::try_from(call.request_uri.trim())
        .map_err(|e| format!("invalid request URI {:?}: {e}", call.request_uri))?;
    if !matches!(callee.scheme, Some(Scheme::Sip)) {
        return Err(format!(
            "unsupported request URI scheme in {:?} (want sip:)",
            call.request_uri
        ));
    }
    let caller = Uri::try_from(format!("sip:{from_user}@{domain}").as_str())
        .map_err(|e| format!("invalid From URI: {e}"))?;

    // The trunk is our outbound proxy: a preloaded loose route (RFC 3261
    // §8.1.2) makes every request of the dialog's setup, CANCEL included,
    // go to it. Without it rsipstack sends the CANCEL to the Request-URI's
    // host, which for `sip:1000@pbx.example` is a DNS name the trunk may
    // serve but this host cannot resolve.
    let mut route_params = vec![rsipstack::sip::uri::Param::Lr];
    if call.trunk.transport == Transport::Tcp {
        route_params.push(rsipstack::sip::uri::Param::Transport(transport));
    }
    let trunk_route = rsipstack::sip::typed::Route {
        display_name: None,
        uri: Uri {
            scheme: Some(Scheme::Sip),
            auth: None,
            host_with_port: trunk_hop,
            params: route_params,
            headers: vec![],
        },
        params: vec![],
    };

    // For TCP rsipstack rewrites host and port to the TCP listener's
    // (public) address and adds transport=tcp.
    let contact = shared.contact(from_user, vec![]);

    let (username, password) = match &call.auth {
        CallAuth::Trunk => (call.trunk.username.as_ref(), call.trunk.password.as_ref()),
        CallAuth::Account { username, password } => (Some(username), Some(password)),
        CallAuth::Caller(_) => (None, None),
    };
    let credential = match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => Some(Credential {
            username: username.clone(),
            password: password.clone(),
            realm: None,
            auth_username: None,
        }),
        _ => None,
    };

    let display = call
        .from_display
        .as_deref()
        .map(|d| {
            d.chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                .take(64)
                .collect::<String>()
        })
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());

    let correlation: String = call
        .correlation_id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    let mut headers = vec![
        Header::Allow(ALLOW.into()),
        Header::Supported("timer".into()),
    ];
    let (session_expires, min_se) = session_timer::invite_headers(session_expires, min_se);
    if let (Some(se), Some(min_se)) = (session_expires, min_se) {
        headers.push(Header::SessionExpires(se.value().into()));
        headers.push(Header::MinSE(min_se.to_string().into()));
    }
    if !correlation.is_empty() {
        headers.push(Header::Other("X-Gangway-Call-ID".to_string(), correlation));
    }
    if let CallAuth::Caller(Some(credentials)) = &call.auth {
        // Passed on as computed: the caller alone knows the password.
        let name = if credentials.proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        headers.push(Header::Other(name.to_string(), credentials.value.clone()));
    }

    Ok(InviteOption {
        caller_display_name: display,
        caller,
        callee,
        destination: Some(destination),
        content_type: Some("application/sdp".to_string()),
        offer: Some(call.sdp_offer.clone().into_bytes()),
        contact,
        credential,
        headers: Some(headers),
        route_set: vec![trunk_route],
        support_prack: shared.prack,
        ..Default::default()
    })
}

/// The far end's final response as a failure; a challenge to a call
/// placed with the caller's identity is the caller's to answer.
pub(super) fn response_failure(resp: &Response, auth: &CallAuth) -> SipFailure {
    let Some(status) = StatusCode::new(resp.status_code.code()) else {
        return SipFailure::Stack(format!("invalid status {}", resp.status_code.code()));
    };
    let reason = resp
        .wire_reason
        .clone()
        .unwrap_or_else(|| resp.status_code.text().to_string());
    let challenge_header = match status.code() {
        401 => Some("WWW-Authenticate"),
        407 => Some("Proxy-Authenticate"),
        _ => None,
    };
    let challenge = challenge_header
        .filter(|_| matches!(auth, CallAuth::Caller(_)))
        .and_then(|name| resp.header_value(name));
    match challenge {
        Some(challenge) => SipFailure::Challenged {
            status,
            reason,
            challenge,
        },
        None => SipFailure::Response { status, reason },
    }
}

/// A failure the stack reported instead of a response.
pub(super) fn stack_failure(e: &rsipstack::Error) -> SipFailure {
    match e {
        rsipstack::Error::TransportLayerError(..)
        | rsipstack::Error::DnsResolutionError(_)
        | rsipstack::Error::IoError(_) => SipFailure::Transport(e.to_string()),
        rsipstack::Error::DialogError(_, _, status)
            if status.kind() != StatusCodeKind::Provisional
                && status.kind() != StatusCodeKind::Successful =>
        {
            match StatusCode::new(status.code()) {
                // A final response the dialog could not go on from (a
                // challenge without credentials left): the far end's.
                Some(status) => SipFailure::Response {
                    status,
                    reason: e.to_string(),
                },
                None => SipFailure::Stack(e.to_string()),
            }
        }
        _ => SipFailure::Stack(e.to_string()),
    }
}

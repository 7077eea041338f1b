//! Inbound calls: an INVITE from the PBX that starts a dialog. The router
//! screens it (source address, user) and this module turns it into an
//! [`IncomingCall`] for the owner; `task.rs` runs the UAS side of the
//! dialog: 180, 200 with our SDP, ACK (with the answer of an offerless
//! INVITE), CANCEL, BYE.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Host, StatusCode};
use rsipstack::transaction::Transaction;
use tracing::{warn, Instrument};

use crate::dialog::{body_text, Events};
use crate::handle::{DialogHandle, InboundSipCall, IncomingCall};
use crate::shared::{ActiveCall, Shared};

mod task;

use task::Inbound;

/// Whether `ip` may send us dialog-creating requests.
pub(crate) fn source_allowed(allowed: &[ipnet::IpNet], ip: IpAddr) -> bool {
    allowed.iter().any(|net| net.contains(&ip))
}

/// The source IP of a request, as the transport saw it.
pub(crate) fn request_source(tx: &Transaction) -> Option<SocketAddr> {
    let addr = tx.connection.as_ref()?.get_remote_addr()?;
    let ip = match &addr.addr.host {
        Host::IpAddr(ip) => *ip,
        Host::Domain(_) => return None,
    };
    let port = addr
        .addr
        .port
        .as_ref()
        .map(|p| p.value().to_owned())
        .unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// Accepts a screened INVITE: creates the dialog and starts its task.
/// Returns the call for the owner, or the status to reject it with.
pub(crate) fn start_inbound(
    shared: &Arc<Shared>,
    tx: Transaction,
    user: String,
    source: SocketAddr,
) -> Result<IncomingCall, Box<(Transaction, StatusCode)>> {
    let contact = shared.contact(&user, vec![]);
    let (state_tx, state_rx) = shared.dialog_layer.new_dialog_state_channel();
    let dialog =
        match shared
            .dialog_layer
            .get_or_create_server_invite(&tx, state_tx, None, Some(contact))
        {
            Ok(dialog) => dialog,
            Err(e) => {
                warn!(error = %e, "cannot create dialog for inbound INVITE");
                return Err(Box::new((tx, StatusCode::ServerInternalError)));
            }
        };
    let request = &tx.original;
    let (from_uri, from_display) = match request.from_header().and_then(|f| f.typed()) {
        Ok(from) => (from.uri.to_string(), from.display_name.clone()),
        Err(_) => (String::new(), None),
    };
    let to_uri = request
        .to_header()
        .and_then(|t| t.typed())
        .map(|t| t.uri.to_string())
        .unwrap_or_default();
    let sip_call_id = request
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let sdp_offer = body_text(&request.body);

    let (dialog_handle, commands) = DialogHandle::new();
    dialog_handle.set_call_id(&sip_call_id);
    let events = Events::unrouted(shared.metrics.events_dropped.clone());
    let handle = InboundSipCall::new(dialog_handle.clone(), events.clone());
    shared.call_started();
    let task = Inbound::new(
        shared.clone(),
        dialog,
        events,
        dialog_handle,
        sdp_offer.is_some(),
    );
    let active = ActiveCall(shared.clone());
    let span = tracing::info_span!("sip_inbound", sip_call_id = %sip_call_id, %user);
    tokio::spawn(task.run(tx, state_rx, commands, active).instrument(span));
    Ok(IncomingCall {
        user,
        from_uri,
        from_display: from_display
            .map(|d| d.trim_matches('"').to_string())
            .filter(|d| !d.is_empty()),
        to_uri,
        sdp_offer,
        sip_call_id,
        source,
        handle,
    })
}

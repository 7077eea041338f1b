//! One outbound call: INVITE (with digest retry), provisional and final
//! responses, in-dialog requests from the far end, CANCEL/BYE on hangup.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::{Header, Response, Scheme, StatusCodeKind, Uri};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::dialog::{
    body_text, timer_headers, Events, LocalSdp, MidCall, MidCallCommand, TimerConfig, ALLOW,
};
use crate::session_timer;
use crate::shared::{ActiveCall, Shared};
use crate::trunk::{is_host_char, is_user_char, trunk_destination};
use crate::{CallControl, OutboundCall, SipEvent, SipFailure, StatusCode, Transport};

/// After we hang up, give CANCEL/BYE this long (64*T1 plus slack) before
/// reporting `Ended` regardless.
const HANGUP_DEADLINE: Duration = Duration::from_secs(40);

/// How the INVITE transaction ended.
enum Outcome {
    Final(Box<Response>),
    NoFinal,
    Error(SipFailure),
}

#[derive(Default)]
struct Progress {
    answered: bool,
    /// We sent `Failed` ourselves (2xx without SDP) and are ending the call.
    failed_sent: bool,
    local_hangup: bool,
    hangup_deadline: Option<Instant>,
    terminated: Option<TerminatedReason>,
    invite_done: bool,
    outcome: Option<Outcome>,
    confirmed_id: Option<DialogId>,
}

pub(crate) async fn run_call(
    shared: Arc<Shared>,
    call: OutboundCall,
    events: UnboundedSender<(u64, SipEvent)>,
    control: Arc<CallControl>,
    mut mid_commands: UnboundedReceiver<MidCallCommand>,
    _active: ActiveCall,
) {
    let events = Events::to(call.key, events);
    // RFC 4028 §7.4: a 422 names the far end's Min-SE; the INVITE is sent
    // again once, asking for that interval.
    let mut timer = (shared.session_expires, 0);
    let mut may_retry = true;
    while let Some(min_se) = attempt(
        &shared,
        &call,
        &events,
        &control,
        &mut mid_commands,
        timer,
        may_retry,
    )
    .await
    {
        info!(
            min_se,
            "422 Session Interval Too Small: sending the INVITE again"
        );
        timer = (min_se, min_se);
        may_retry = false;
    }
    info!("call ended");
    events.send(SipEvent::Ended);
}

/// One INVITE and, if it is answered, the call. Returns the far end's
/// `Min-SE` when a 422 asks for a longer session (and `may_retry`): the
/// call is then to be tried again; otherwise everything but `Ended` has
/// been reported.
async fn attempt(
    shared: &Arc<Shared>,
    call: &OutboundCall,
    events: &Events,
    control: &CallControl,
    mid_commands: &mut UnboundedReceiver<MidCallCommand>,
    (session_expires, min_se): (u32, u32),
    may_retry: bool,
) -> Option<u32> {
    let option = match invite_option(shared, call, session_expires, min_se) {
        Ok(option) => option,
        Err(reason) => {
            warn!(%reason, "cannot place call");
            events.fail(&SipFailure::InvalidCall(reason));
            return None;
        }
    };
    info!(
        uri = %option.callee,
        trunk = %format!("{}:{}", call.trunk.host, call.trunk.port),
        transport = ?call.trunk.transport,
        "placing call"
    );

    let (state_tx, mut state_rx) = shared.dialog_layer.new_dialog_state_channel();
    let (dialog, invite) = match shared.dialog_layer.do_invite_async(option, state_tx) {
        Ok(started) => started,
        Err(e) => {
            warn!(error = %e, "cannot send INVITE");
            events.fail(&stack_failure(&e));
            return None;
        }
    };
    let early_id = dialog.id();
    tokio::pin!(invite);

    let mid = MidCall::new(
        dialog.clone(),
        events.clone(),
        LocalSdp::new(call.sdp_offer.clone()),
    );
    mid.configure_session_timer(TimerConfig {
        ours: shared.session_expires,
        min_se,
        metrics: shared.metrics.clone(),
    });
    let mut p = Progress::default();

    let forced = loop {
        if p.invite_done {
            let established = p.answered && p.terminated.is_none();
            if !established {
                break false;
            }
        }
        let deadline = p.hangup_deadline;
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => break true,
            Some(state) = state_rx.recv() => {
                let was_answered = p.answered;
                on_state(state, &dialog, events, &mut p, &mid).await;
                if p.answered && !was_answered && !p.local_hangup && !p.failed_sent {
                    shared.register_replaceable(dialog.id(), events.clone());
                    let _ = control.dialog.set(crate::DialogRef::of(&dialog));
                }
            }
            result = &mut invite, if !p.invite_done => {
                p.invite_done = true;
                p.outcome = Some(match result {
                    Ok(Ok((id, Some(resp)))) => {
                        if resp.status_code.kind() == StatusCodeKind::Successful {
                            p.confirmed_id = Some(id);
                        }
                        Outcome::Final(Box::new(resp))
                    }
                    Ok(Ok((_, None))) => Outcome::NoFinal,
                    Ok(Err(e)) => Outcome::Error(stack_failure(&e)),
                    Err(e) => Outcome::Error(SipFailure::Stack(format!("INVITE task failed: {e}"))),
                });
            }
            Some(command) = mid_commands.recv() => {
                if p.answered && !p.local_hangup {
                    mid.command(command);
                }
            }
            _ = control.hangup.notified(), if !p.local_hangup => {
                info!("hangup requested");
                start_hangup(&dialog, &mut p);
            }
            _ = shared.hangup_all.cancelled(), if !p.local_hangup => {
                info!("service stopping, hanging up");
                start_hangup(&dialog, &mut p);
            }
            expired = mid.session_expired(), if p.answered && !p.local_hangup => {
                info!(?expired, "session timer ended the call, sending BYE");
                events.send(SipEvent::SessionExpired { status: expired.status() });
                start_hangup(&dialog, &mut p);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                warn!("hangup did not complete in time, dropping the dialog");
                break true;
            }
        }
    };

    mid.stop_session_timer();
    if !p.local_hangup && !dialog.state().is_terminated() {
        // Forced stop, or the INVITE failed locally while the far end may
        // still be ringing: still try to tell it.
        let d = dialog.clone();
        tokio::spawn(async move {
            let _ = d.hangup().await;
        });
    }

    let retry = match &p.outcome {
        Some(Outcome::Final(resp))
            if may_retry
                && !forced
                && !p.local_hangup
                && resp.status_code.code() == StatusCode::SESSION_INTERVAL_TOO_SMALL.code() =>
        {
            timer_headers(resp.headers.iter())
                .min_se
                .filter(|floor| *floor > session_expires)
        }
        _ => None,
    };

    // Report how the call ended.
    if retry.is_some() {
        // Not ended: tried again.
    } else if p.answered && !p.failed_sent {
        if matches!(p.terminated, Some(TerminatedReason::UasBye)) && !p.local_hangup {
            events.send(SipEvent::RemoteHangup);
        } else if !p.local_hangup {
            if let Some(reason) = &p.terminated {
                info!(?reason, "call ended");
            }
        }
    } else if !p.local_hangup && !p.failed_sent {
        let failure = failure(&p, forced);
        info!(%failure, "call failed");
        events.fail(&failure);
    }

    shared.unregister_replaceable(&dialog.id());
    // rsipstack leaves confirmed dialogs registered until told otherwise.
    shared.dialog_layer.remove_dialog(&early_id);
    shared.dialog_layer.remove_dialog(&dialog.id());
    if let Some(id) = &p.confirmed_id {
        shared.dialog_layer.remove_dialog(id);
    }
    retry
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn start_hangup(dialog: &InviteDialog, p: &mut Progress) {
    p.local_hangup = true;
    p.hangup_deadline = Some(Instant::now() + HANGUP_DEADLINE);
    let d = dialog.clone();
    tokio::spawn(async move {
        // CANCEL while unanswered (deferred until a provisional), BYE once
        // confirmed, nothing once terminated.
        if let Err(e) = d.hangup().await {
            debug!(error = %e, "hangup request failed");
        }
        // A 2xx that won the race against the CANCEL decision leaves the
        // dialog confirmed (cancel() had nothing to do): end it with BYE.
        if d.state().is_confirmed() {
            if let Err(e) = d.bye().await {
                debug!(error = %e, "BYE after hangup failed");
            }
        }
    });
}

async fn on_state(
    state: DialogState,
    dialog: &InviteDialog,
    events: &Events,
    p: &mut Progress,
    mid: &MidCall,
) {
    match state {
        DialogState::Early(_, resp) => {
            if !p.local_hangup && !p.answered {
                events.send(SipEvent::Provisional {
                    status: resp.status_code.code(),
                    sdp: body_text(&resp.body),
                });
            }
        }
        DialogState::Confirmed(_, resp) => {
            // Confirmed is repeated after in-dialog requests; only the first
            // one is the answer.
            if p.answered {
                return;
            }
            p.answered = true;
            if p.local_hangup {
                // Our hangup task BYEs this (see start_hangup).
                debug!("answered after hangup was requested");
            } else if let Some(sdp) = body_text(&resp.body) {
                info!(status = resp.status_code.code(), "call answered");
                mid.settle(&sdp);
                let far_end = timer_headers(resp.headers.iter());
                mid.start_session_timer(session_timer::on_response(&far_end), &far_end);
                events.send(SipEvent::Answered { sdp });
            } else {
                warn!("2xx without SDP answer, ending the call");
                events.fail(&SipFailure::AnswerWithoutSdp);
                p.failed_sent = true;
                start_hangup(dialog, p);
            }
        }
        DialogState::Updated(..)
        | DialogState::Info(..)
        | DialogState::Options(..)
        | DialogState::Notify(..)
        | DialogState::Refer(..)
        | DialogState::Message(..)
        | DialogState::Publish(..) => mid.on_request(state).await,
        DialogState::Terminated(_, reason) => {
            debug!(?reason, "dialog terminated");
            p.terminated = Some(reason);
        }
        DialogState::Calling(_) | DialogState::Trying(_) | DialogState::WaitAck(_, _) => {}
    }
}

/// Why a call that ended without being answered failed.
fn failure(p: &Progress, forced: bool) -> SipFailure {
    match &p.outcome {
        Some(Outcome::Final(resp)) if resp.status_code.kind() != StatusCodeKind::Successful => {
            response_failure(resp)
        }
        Some(Outcome::Final(resp)) => {
            SipFailure::Stack(format!("{} not usable", resp.status_code.code()))
        }
        Some(Outcome::NoFinal) => SipFailure::NoFinalResponse,
        Some(Outcome::Error(failure)) => failure.clone(),
        None if forced => SipFailure::Stopping,
        None => SipFailure::Stack("call ended unexpectedly".to_string()),
    }
}

/// The far end's final response as a failure.
fn response_failure(resp: &Response) -> SipFailure {
    match StatusCode::new(resp.status_code.code()) {
        Some(status) => SipFailure::Response {
            status,
            reason: resp
                .wire_reason
                .clone()
                .unwrap_or_else(|| resp.status_code.text().to_string()),
        },
        None => SipFailure::Stack(format!("invalid status {}", resp.status_code.code())),
    }
}

/// A failure the stack reported instead of a response.
fn stack_failure(e: &rsipstack::Error) -> SipFailure {
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

/// Build the INVITE from the call: nothing but what the caller gave us.
fn invite_option(
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

    let credential = match (&call.trunk.username, &call.trunk.password) {
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

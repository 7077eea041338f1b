//! Inbound calls: an INVITE from the PBX that starts a dialog. The service
//! screens it (source address, user), hands it to the owner as an
//! [`IncomingCall`], and runs the UAS side of the dialog here: 180, 200 with
//! our SDP, ACK (with the answer of an offerless INVITE), CANCEL, BYE.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Header, Host, StatusCode};
use rsipstack::transaction::Transaction;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn, Instrument};

use crate::dialog::{
    answer_headers, body_text, timer_headers, Events, LocalSdp, MidCall, MidCallCommand,
    TimerConfig, ALLOW,
};
use crate::session_timer::{self, Answer};
use crate::shared::{ActiveCall, Shared};
use crate::{SipEvent, SipFailure};

/// An INVITE for one of our users, waiting for its owner's decision.
///
/// Events of the call go nowhere until [`InboundSipCall::route_events`]
/// names their destination (they are held until then). The call ends with
/// [`SipEvent::Ended`] like an outbound one:
/// - before an answer, a CANCEL is `Failed { status: 487 }`;
/// - after [`InboundSipCall::answer`], the ACK is `Answered { sdp }` with the
///   far end's SDP (its offer, or for an offerless INVITE the answer in the
///   ACK); no ACK within 32 s is `Failed { status: 408 }`;
/// - a BYE after that is `RemoteHangup`.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// User part of the Request-URI: the Contact we registered for them.
    pub user: String,
    /// The From URI (caller), e.g. `sip:1001@pbx.example`.
    pub from_uri: String,
    /// The From display name, if any.
    pub from_display: Option<String>,
    /// The To URI as the caller wrote it.
    pub to_uri: String,
    /// The INVITE's SDP offer; `None` for an offerless INVITE (our 200 then
    /// carries the offer).
    pub sdp_offer: Option<String>,
    /// The SIP Call-ID, for logs.
    pub sip_call_id: String,
    /// Where the INVITE came from.
    pub source: SocketAddr,
    pub handle: InboundSipCall,
}

/// Controls an inbound call. Clones refer to the same call.
#[derive(Clone)]
pub struct InboundSipCall {
    commands: UnboundedSender<Command>,
    events: Events,
    /// The established dialog, once answered.
    dialog: Arc<std::sync::OnceLock<crate::DialogRef>>,
}

impl std::fmt::Debug for InboundSipCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundSipCall")
    }
}

#[derive(Debug)]
enum Command {
    Ring,
    Answer(String),
    Reject(u16),
    Hangup,
    MidCall(MidCallCommand),
}

impl InboundSipCall {
    /// Sends this call's events (and any held so far) to `tx` as `(key, event)`.
    pub fn route_events(&self, key: u64, tx: UnboundedSender<(u64, SipEvent)>) {
        self.events.retarget(key, tx);
    }

    /// Sends an event through the current route again: for an owner that
    /// received one after it handed the call over.
    pub fn redeliver(&self, event: SipEvent) {
        self.events.send(event);
    }

    /// 180 Ringing (once is enough; repeats are harmless).
    pub fn ring(&self) {
        let _ = self.commands.send(Command::Ring);
    }

    /// 200 OK with `sdp` (our answer, or our offer for an offerless INVITE).
    pub fn answer(&self, sdp: String) {
        let _ = self.commands.send(Command::Answer(sdp));
    }

    /// A final failure response (4xx-6xx) to a call not yet answered.
    pub fn reject(&self, status: u16) {
        let _ = self.commands.send(Command::Reject(status));
    }

    /// Send DTMF digits as SIP INFO once the call is confirmed (see
    /// [`crate::SipCall::send_dtmf_info`]).
    pub fn send_dtmf_info(&self, digits: &str) {
        let command = MidCallCommand::Dtmf(digits.to_string());
        let _ = self.commands.send(Command::MidCall(command));
    }

    /// Hold or resume once answered (see [`crate::SipCall::hold`]).
    pub fn hold(&self, hold: bool) {
        let _ = self
            .commands
            .send(Command::MidCall(MidCallCommand::Hold(hold)));
    }

    /// The established dialog (see [`crate::SipCall::dialog`]).
    pub fn dialog(&self) -> Option<crate::DialogRef> {
        self.dialog.get().cloned()
    }

    /// Blind transfer (see [`crate::SipCall::transfer`]).
    pub fn transfer(&self, target: &str) {
        let command = MidCallCommand::Transfer(target.to_string());
        let _ = self.commands.send(Command::MidCall(command));
    }

    /// Progress of a call the far end REFERred us to (see
    /// [`crate::SipCall::notify_transfer`]).
    pub fn notify_transfer(&self, status: u16, reason: &str, done: bool) {
        let command = MidCallCommand::ReferProgress {
            status,
            reason: reason.to_string(),
            done,
        };
        let _ = self.commands.send(Command::MidCall(command));
    }

    /// End the call: 480 before the answer, BYE after it.
    pub fn hangup(&self) {
        let _ = self.commands.send(Command::Hangup);
    }
}

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

    let (commands, commands_rx) = mpsc::unbounded_channel();
    let events = Events::unrouted();
    let dialog_ref = Arc::new(std::sync::OnceLock::new());
    let handle = InboundSipCall {
        commands,
        events: events.clone(),
        dialog: dialog_ref.clone(),
    };
    shared.call_started();
    let active = ActiveCall(shared.clone());
    let span = tracing::info_span!("sip_inbound", sip_call_id = %sip_call_id, %user);
    tokio::spawn(
        run_inbound(
            shared.clone(),
            dialog,
            tx,
            state_rx,
            commands_rx,
            events,
            sdp_offer.is_some(),
            dialog_ref,
            active,
        )
        .instrument(span),
    );
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

/// Time from our 200 to the ACK, and from a BYE to giving up on it.
const ACK_AND_BYE_DEADLINE: Duration = Duration::from_secs(40);

#[allow(clippy::too_many_arguments)]
async fn run_inbound(
    shared: Arc<Shared>,
    dialog: InviteDialog,
    mut tx: Transaction,
    mut state_rx: DialogStateReceiver,
    mut commands: UnboundedReceiver<Command>,
    events: Events,
    has_offer: bool,
    dialog_ref: Arc<std::sync::OnceLock<crate::DialogRef>>,
    _active: ActiveCall,
) {
    let mut server = dialog.clone();
    // The INVITE server transaction: sends 100, then our responses, and
    // ends with the ACK, a CANCEL or after a final failure.
    let mut transaction = Box::pin(async move {
        if let Err(e) = server.handle(&mut tx).await {
            debug!(error = %e, "INVITE transaction ended with an error");
        }
    });
    let mut transaction_done = false;

    // Our 200 OK's SDP, once we answered.
    let mut mid: Option<MidCall> = None;
    let mut answered = false;
    // We ended the call (reject, or BYE after the answer).
    let mut ended_locally = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut failed_sent = false;

    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => break,
            _ = &mut transaction, if !transaction_done => transaction_done = true,
            Some(state) = state_rx.recv() => match state {
                DialogState::Confirmed(..) if !answered && mid.is_some() => {
                    answered = true;
                    deadline = None;
                    let sdp = if has_offer {
                        body_text(&dialog.initial_request().body)
                    } else {
                        dialog.last_remote_ack().and_then(|ack| body_text(&ack.body))
                    };
                    match sdp {
                        Some(sdp) if !ended_locally => {
                            info!("inbound call answered (ACK received)");
                            if let Some(mid) = &mid {
                                mid.settle(&sdp);
                            }
                            shared.register_replaceable(dialog.id(), events.clone());
                            let _ = dialog_ref.set(crate::DialogRef::of(&dialog));
                            events.send(SipEvent::Answered { sdp });
                        }
                        Some(_) => {}
                        None => {
                            warn!("ACK without the SDP answer to our offer, ending the call");
                            events.fail(&SipFailure::AckWithoutSdp);
                            failed_sent = true;
                            hang_up(&dialog, true);
                            ended_locally = true;
                            deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
                        }
                    }
                }
                DialogState::Terminated(_, reason) => {
                    debug!(?reason, "inbound dialog terminated");
                    if !ended_locally && !failed_sent {
                        match reason {
                            TerminatedReason::UacBye if answered => events.send(SipEvent::RemoteHangup),
                            TerminatedReason::UacCancel | TerminatedReason::UacBye => {
                                info!("caller cancelled");
                                events.fail(&SipFailure::CallerCancelled);
                            }
                            TerminatedReason::Timeout => events.fail(&SipFailure::NoAck),
                            other => events.fail(&SipFailure::Stack(format!("dialog ended: {other:?}"))),
                        }
                    }
                    break;
                }
                state @ (DialogState::Updated(..)
                | DialogState::Info(..)
                | DialogState::Options(..)
                | DialogState::Notify(..)
                | DialogState::Refer(..)
                | DialogState::Message(..)
                | DialogState::Publish(..)) => match &mid {
                    Some(mid) => mid.on_request(state).await,
                    None => debug!("in-dialog request before our answer, ignored"),
                },
                _ => {}
            },
            Some(command) = commands.recv() => match command {
                Command::Ring => {
                    if let Err(e) = dialog.ringing(None, None) {
                        debug!(error = %e, "cannot send 180");
                    }
                }
                Command::Answer(sdp) if mid.is_none() && !ended_locally => {
                    let mut headers = vec![
                        Header::ContentType("application/sdp".into()),
                        Header::Allow(ALLOW.into()),
                    ];
                    // RFC 4028: the caller's Session-Expires (checked when
                    // the INVITE came in), or ours when it supports timers.
                    let far_end = timer_headers(dialog.initial_request().headers.iter());
                    let timer = match session_timer::answer_request(&far_end, shared.session_expires) {
                        Answer::TooSmall { .. } => None,
                        answer => Some(answer),
                    };
                    headers.extend(timer.as_ref().map(answer_headers).unwrap_or_default());
                    match dialog.accept(Some(headers), Some(sdp.clone().into_bytes())) {
                        Ok(()) => {
                            info!("answering inbound call (200 OK)");
                            let call = MidCall::new(dialog.clone(), events.clone(), LocalSdp::new(sdp));
                            call.configure_session_timer(TimerConfig {
                                ours: shared.session_expires,
                                min_se: far_end.floor(),
                                metrics: shared.metrics.clone(),
                            });
                            let session = match timer {
                                Some(Answer::Accept { session, .. }) => session,
                                _ => None,
                            };
                            call.start_session_timer(session, &far_end);
                            mid = Some(call);
                            deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot send 200 OK");
                            events.fail(&SipFailure::Stack("cannot answer".into()));
                            break;
                        }
                    }
                }
                Command::Reject(status) if mid.is_none() && !ended_locally => {
                    let code = StatusCode::from(status.clamp(400, 699));
                    info!(status = code.code(), "rejecting inbound call");
                    let _ = dialog.reject(Some(code), None);
                    ended_locally = true;
                    deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
                }
                Command::MidCall(command) if answered && !ended_locally => {
                    if let Some(mid) = &mid {
                        mid.command(command);
                    }
                }
                Command::Hangup if !ended_locally => {
                    ended_locally = true;
                    deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
                    if mid.is_some() {
                        info!("hanging up inbound call");
                        hang_up(&dialog, answered);
                    } else {
                        info!("hanging up inbound call before answering it (480)");
                        let _ = dialog.reject(Some(StatusCode::TemporarilyUnavailable), None);
                    }
                }
                _ => debug!("command ignored in this state"),
            },
            expired = session_expired(&mid), if answered && !ended_locally => {
                info!(?expired, "session timer ended the call, sending BYE");
                events.send(SipEvent::SessionExpired { status: expired.status() });
                hang_up(&dialog, true);
                ended_locally = true;
                deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
            }
            _ = shared.hangup_all.cancelled(), if !ended_locally => {
                ended_locally = true;
                deadline = Some(tokio::time::Instant::now() + ACK_AND_BYE_DEADLINE);
                if mid.is_some() {
                    hang_up(&dialog, answered);
                } else {
                    let _ = dialog.reject(Some(StatusCode::ServiceUnavailable), None);
                }
            }
            _ = sleep => {
                if answered || ended_locally {
                    warn!("inbound call did not finish in time, dropping the dialog");
                } else {
                    warn!("no ACK for our 200 OK");
                    events.fail(&SipFailure::NoAck);
                    hang_up(&dialog, true);
                }
                break;
            }
        }
    }
    if let Some(mid) = &mid {
        mid.stop_session_timer();
    }
    if !transaction_done {
        // Let the transaction finish its retransmissions on its own.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ACK_AND_BYE_DEADLINE, transaction).await;
        });
    }
    shared.unregister_replaceable(&dialog.id());
    shared.dialog_layer.remove_dialog(&dialog.id());
    info!("inbound call ended");
    events.send(SipEvent::Ended);
}

/// The session timer's end, once there is a dialog to time.
async fn session_expired(mid: &Option<MidCall>) -> crate::dialog::Expired {
    match mid {
        Some(mid) => mid.session_expired().await,
        None => std::future::pending().await,
    }
}

/// BYE (also valid while waiting for the ACK), in the background.
fn hang_up(dialog: &InviteDialog, answered: bool) {
    let d = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = d.bye().await {
            debug!(answered, error = %e, "BYE failed");
        }
    });
}

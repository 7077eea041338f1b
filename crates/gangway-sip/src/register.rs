//! REGISTER on behalf of a user: digest auth, refresh before expiry,
//! back-off after failures, un-REGISTER at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::{backoff_interval, refresh_interval, Registration};
use rsipstack::platform::CancellationToken;
use rsipstack::sip::{StatusCodeKind, Uri};
use tokio::sync::mpsc::Sender;
use tracing::{debug, info, warn, Instrument};

use crate::shared::{ActiveCall, Shared};
use crate::{SipService, Transport, Trunk};

/// How long an un-REGISTER may take before we give up on it.
const UNREGISTER_DEADLINE: Duration = Duration::from_secs(5);

/// One user to keep registered.
#[derive(Clone, Debug)]
pub struct RegistrationRequest {
    /// The caller's id for this registration, echoed in every event.
    pub key: u64,
    /// Where REGISTER goes; `domain` names the address-of-record's domain
    /// and `username`/`password` are the user's digest credentials.
    pub registrar: Trunk,
    /// The SIP user: address-of-record `sip:<user>@<domain>` and the user
    /// part of our Contact (which inbound INVITEs then carry).
    pub user: String,
    /// Requested expiry in seconds; refreshed at 75 % of what is granted.
    pub expires: u32,
}

/// Progress of a registration. `Unregistered` is always the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegEvent {
    /// 2xx: the binding holds for `expires` seconds (as granted).
    Registered { expires: u32 },
    /// A REGISTER failed. `retrying` is false for the first attempt (the
    /// registration then ends); a failed refresh is retried with back-off.
    /// `status` is the registrar's final response, or a local code: 408
    /// (no response), 503 (transport or resolution failure).
    Failed {
        status: u16,
        reason: String,
        retrying: bool,
    },
    /// The registration ended (after an un-REGISTER if it was bound).
    Unregistered,
}

/// Where a registration's events go: the owner's bounded queue.
pub type RegEventTx = Sender<(u64, RegEvent)>;

/// Handle to a registration. Clones refer to the same one; dropping it
/// does not end the registration.
#[derive(Clone, Debug)]
pub struct RegistrationHandle {
    stop: CancellationToken,
}

impl RegistrationHandle {
    /// Un-REGISTER (expires 0) and end; idempotent.
    pub fn unregister(&self) {
        self.stop.cancel();
    }
}

impl SipService {
    /// Registers `request.user` and keeps the binding fresh until
    /// [`RegistrationHandle::unregister`] or the service stops.
    pub fn register(&self, request: RegistrationRequest, events: RegEventTx) -> RegistrationHandle {
        let stop = CancellationToken::new();
        let handle = RegistrationHandle { stop: stop.clone() };
        self.shared.call_started();
        let active = ActiveCall(self.shared.clone());
        let span = tracing::info_span!("sip_register", user = %request.user);
        tokio::spawn(
            run_registration(self.shared.clone(), request, events, stop, active).instrument(span),
        );
        handle
    }
}

async fn run_registration(
    shared: Arc<Shared>,
    request: RegistrationRequest,
    events: RegEventTx,
    stop: CancellationToken,
    _active: ActiveCall,
) {
    // The owner's queue is bounded; this task waits for room, and only
    // this registration waits with it.
    let send = |event: RegEvent| {
        debug!(?event, "registration event");
        let (events, key) = (events.clone(), request.key);
        async move {
            let _ = events.send((key, event)).await;
        }
    };
    let registrar = &request.registrar;
    let (server, contact) = match uris(&shared, &request) {
        Ok(uris) => uris,
        Err(reason) => {
            warn!(%reason, "cannot register");
            send(RegEvent::Failed {
                status: 500,
                reason,
                retrying: false,
            })
            .await;
            send(RegEvent::Unregistered).await;
            return;
        }
    };
    let credential = registrar.password.as_ref().map(|password| Credential {
        username: request.user.clone(),
        password: password.clone(),
        realm: None,
        auth_username: registrar.username.clone().filter(|u| *u != request.user),
    });
    let mut reg = Registration::new(shared.endpoint_inner(), credential);
    reg.contact = Some(rsipstack::sip::typed::Contact {
        display_name: None,
        uri: contact,
        params: vec![],
    });

    let mut bound = false;
    let mut failures: u32 = 0;
    loop {
        let attempt = async {
            let proxy = resolve(registrar)
                .await
                .ok_or((503, format!("cannot resolve registrar {}", registrar.host)))?;
            reg.outbound_proxy = Some(proxy);
            match reg.register(server.clone(), Some(request.expires)).await {
                Ok(resp) if resp.status_code.kind() == StatusCodeKind::Successful => Ok(()),
                Ok(resp) => Err((
                    resp.status_code.code(),
                    resp.wire_reason
                        .clone()
                        .unwrap_or_else(|| resp.status_code.text().to_string()),
                )),
                Err(rsipstack::Error::TransactionError(e, _)) if e.contains("imeout") => {
                    Err((408, "registrar did not answer".to_string()))
                }
                Err(e) => Err((503, e.to_string())),
            }
        };
        let result = tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return send(RegEvent::Unregistered).await,
            _ = stop.cancelled() => break,
            _ = shared.hangup_all.cancelled() => break,
            result = attempt => result,
        };
        let wait = match result {
            Ok(()) => {
                let granted = reg
                    .granted_expires
                    .filter(|g| *g > 0)
                    .unwrap_or(request.expires);
                info!(expires = granted, "registered");
                bound = true;
                failures = 0;
                send(RegEvent::Registered { expires: granted }).await;
                refresh_interval(granted)
            }
            Err((status, reason)) => {
                warn!(status, %reason, "REGISTER failed");
                send(RegEvent::Failed {
                    status,
                    reason,
                    retrying: bound,
                })
                .await;
                if !bound {
                    send(RegEvent::Unregistered).await;
                    return;
                }
                failures += 1;
                backoff_interval(failures - 1)
            }
        };
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return send(RegEvent::Unregistered).await,
            _ = stop.cancelled() => break,
            _ = shared.hangup_all.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if bound {
        let unregister = reg.register(server, Some(0));
        match tokio::time::timeout(UNREGISTER_DEADLINE, unregister).await {
            Ok(Ok(resp)) => info!(status = resp.status_code.code(), "unregistered"),
            Ok(Err(e)) => warn!(error = %e, "un-REGISTER failed"),
            Err(_) => warn!("un-REGISTER timed out"),
        }
    }
    send(RegEvent::Unregistered).await;
}

/// The registrar's Request-URI (`sip:<domain>`) and our Contact for the user.
fn uris(shared: &Shared, request: &RegistrationRequest) -> Result<(Uri, Uri), String> {
    let user = request.user.trim();
    if user.is_empty() || !user.chars().all(crate::trunk::is_user_char) {
        return Err(format!("invalid SIP user {:?}", request.user));
    }
    let mut server = Uri::try_from(format!("sip:{}", request.registrar.domain.trim()).as_str())
        .map_err(|e| format!("invalid registrar domain: {e}"))?;
    let mut contact_params = vec![];
    if request.registrar.transport == Transport::Tcp {
        let tcp = rsipstack::sip::uri::Param::Transport(rsipstack::sip::Transport::Tcp);
        server.params.push(tcp.clone());
        contact_params.push(tcp);
    }
    let contact = shared.contact(user, contact_params);
    Ok((server, contact))
}

/// The registrar's address (first A/AAAA answer).
async fn resolve(registrar: &Trunk) -> Option<SocketAddr> {
    let host = registrar.host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::lookup_host((host, registrar.port))
        .await
        .ok()?
        .next()
}

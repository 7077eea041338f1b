//! REGISTER relayed for a browser that registers itself (SIP over
//! WebSocket): its Request-URI, From, To, Call-ID, CSeq and credentials
//! go to the registrar unchanged, so the registrar's challenge is the
//! browser's to answer; the Contact is ours (`sip:<token>@<our address>`),
//! so the PBX's calls for the user reach this gateway.

use rsipstack::sip::headers::{self, Header};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, Request, SipMessage, StatusCodeKind, Uri, Version};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::Transaction;
use tracing::debug;

use crate::dialog::ALLOW;
use crate::trunk::{is_user_char, trunk_destination};
use crate::{Credentials, SipService, Trunk};

/// A browser's REGISTER, to relay to `trunk` (the registrar).
#[derive(Clone, Debug)]
pub struct RelayedRegister {
    pub trunk: Trunk,
    pub request_uri: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub credentials: Option<Credentials>,
    /// Our Contact's user part.
    pub contact_user: String,
    pub expires: u32,
}

/// The registrar's final answer (or ours, when it gave none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayedAnswer {
    pub status: u16,
    pub reason: String,
    /// `WWW-Authenticate` (401) or `Proxy-Authenticate` (407).
    pub challenge: Option<String>,
    pub min_expires: Option<u32>,
    /// What our Contact was granted (2xx).
    pub expires: Option<u32>,
}

impl RelayedAnswer {
    fn local(status: u16, reason: impl Into<String>) -> Self {
        RelayedAnswer {
            status,
            reason: reason.into(),
            ..Default::default()
        }
    }
}

impl SipService {
    /// Relays one REGISTER and waits for its final response (Timer F
    /// bounds the wait: a silent registrar gives 408).
    pub async fn relay_register(&self, register: RelayedRegister) -> RelayedAnswer {
        match self.try_relay(&register).await {
            Ok(answer) => answer,
            Err(answer) => answer,
        }
    }

    async fn try_relay(&self, r: &RelayedRegister) -> Result<RelayedAnswer, RelayedAnswer> {
        let bad = |why: String| RelayedAnswer::local(400, why);
        if r.contact_user.is_empty() || !r.contact_user.chars().all(is_user_char) {
            return Err(bad("invalid contact user".into()));
        }
        let uri = Uri::try_from(r.request_uri.as_str())
            .map_err(|e| bad(format!("bad Request-URI: {e}")))?;
        let endpoint = self.shared.endpoint_inner();
        let (destination, _) =
            trunk_destination(&r.trunk).map_err(|e| RelayedAnswer::local(500, e))?;
        let (connection, _) = endpoint
            .transport_layer
            .lookup(&destination, None)
            .await
            .map_err(|e| RelayedAnswer::local(503, format!("transport error: {e}")))?;
        let via = endpoint
            .get_via(Some(connection.get_addr().clone()), None)
            .map_err(|e| RelayedAnswer::local(500, format!("cannot build Via: {e}")))?;
        let contact = self.shared.contact(&r.contact_user, vec![]);
        let mut list: Vec<Header> = vec![
            Header::Via(via.into()),
            Header::MaxForwards(headers::MaxForwards::new("70")),
            Header::From(headers::From::new(r.from.clone())),
            Header::To(headers::To::new(r.to.clone())),
            Header::CallId(headers::CallId::new(r.call_id.clone())),
            Header::CSeq(headers::CSeq::new(format!("{} REGISTER", r.cseq))),
            Header::Contact(headers::Contact::new(format!("<{contact}>"))),
            Header::Expires(headers::Expires::new(r.expires.to_string())),
            Header::Allow(ALLOW.into()),
            Header::UserAgent(headers::UserAgent::new(endpoint.user_agent.clone())),
        ];
        if let Some(c) = &r.credentials {
            let name = if c.proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            list.push(Header::Other(name.into(), c.value.clone()));
        }
        list.push(Header::ContentLength(headers::ContentLength::new("0")));
        let request = Request {
            method: Method::Register,
            uri,
            version: Version::V2,
            headers: list.into(),
            body: vec![],
        };
        let key = TransactionKey::from_request(&request, TransactionRole::Client)
            .map_err(|e| RelayedAnswer::local(500, format!("cannot key the transaction: {e}")))?;
        let mut tx = Transaction::new_client(key, request, endpoint, None);
        tx.destination = Some(destination);
        tx.send()
            .await
            .map_err(|e| RelayedAnswer::local(503, format!("transport error: {e}")))?;
        while let Some(message) = tx.receive().await {
            let SipMessage::Response(resp) = message else {
                continue;
            };
            if resp.status_code.kind() == StatusCodeKind::Provisional {
                continue;
            }
            let status = resp.status_code.code();
            debug!(status, "registrar answered the relayed REGISTER");
            let challenge = match status {
                401 => resp.header_value("WWW-Authenticate"),
                407 => resp.header_value("Proxy-Authenticate"),
                _ => None,
            };
            let number = |v: Option<String>| v.and_then(|v| v.trim().parse::<u32>().ok());
            let ours = format!("sip:{}@", r.contact_user);
            let granted = resp
                .headers
                .iter()
                .filter(|h| h.name().eq_ignore_ascii_case("Contact"))
                .map(|h| h.value().to_string())
                .find(|c| c.contains(&ours))
                .and_then(|c| {
                    c.split(';').find_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("expires")
                            .then(|| v.trim().parse().ok())?
                    })
                })
                .or_else(|| number(resp.header_value("Expires")));
            return Ok(RelayedAnswer {
                status,
                reason: resp
                    .wire_reason
                    .clone()
                    .unwrap_or_else(|| resp.status_code.text().to_string()),
                challenge,
                min_expires: number(resp.header_value("Min-Expires")),
                expires: granted,
            });
        }
        Err(RelayedAnswer::local(408, "no response from the registrar"))
    }
}

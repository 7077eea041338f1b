//! REGISTER, relayed. The browser's REGISTER goes to the registrar with
//! its own Request-URI, From, To, Call-ID, CSeq and credentials (so the
//! registrar's 401 is answered by the browser, and the gateway never
//! knows a password), but with our Contact: `sip:<flow token>@<our SIP
//! address>`. The token is a keyed hash of the address-of-record and the
//! browser's `+sip.instance` (or its Contact when it sends none), so a
//! reconnect of the same browser refreshes the same binding upstream and
//! the newest flow takes its calls (RFC 5626 in spirit). The browser gets
//! its own Contact back with the `expires` the registrar granted, as JsSIP
//! and SIP.js require.

use std::hash::BuildHasher;

use gangway_core::calls::Credentials;
use gangway_core::valid_sip_user;

use super::wire::{self, Incoming, Reply};
use super::{credentials_of, Auth, FrontOutput, SipWsFront};

/// Expiry when the browser names none (JsSIP's and SIP.js's default).
const DEFAULT_EXPIRES: u32 = 600;

/// A REGISTER for the shell to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRelay {
    pub id: u64,
    pub request_uri: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub credentials: Option<Credentials>,
    /// Our Contact's user part upstream.
    pub token: String,
    pub expires: u32,
}

/// The registrar's answer, as the shell read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterAnswer {
    pub status: u16,
    pub reason: String,
    /// A 401's `WWW-Authenticate` or a 407's `Proxy-Authenticate`.
    pub challenge: Option<String>,
    /// A 423's `Min-Expires`.
    pub min_expires: Option<u32>,
    /// What the registrar granted our Contact (2xx).
    pub expires: Option<u32>,
}

/// A binding the registrar accepted: calls to `token` ring this flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub token: String,
    /// The address-of-record (the To URI) and its user.
    pub aor: String,
    pub user: String,
    /// The browser's own Contact URI: the Request-URI of calls to it.
    pub contact: String,
    pub expires: u32,
}

#[derive(Debug)]
pub(super) struct Pending {
    reply: Reply,
    binding: Binding,
    /// Signed in with a token: the shell registered the user itself, and
    /// routes its calls by user, not by a binding of ours.
    by_token: bool,
    /// The browser's Contact as it sent it, less `expires`.
    contact_params: String,
}

impl SipWsFront {
    pub(super) fn on_register(&mut self, req: Incoming) {
        use rsipstack::sip::prelude::HeadersExt;
        let aor = wire::uri_of(&req.reply.to);
        let Some(user) = wire::user_of(&aor).filter(|u| valid_sip_user(u)) else {
            self.out.push_back(FrontOutput::Rejected("bad_register"));
            return self.reply(&req, 400, &[]);
        };
        let header_expires = req
            .request
            .header_value("Expires")
            .and_then(|e| e.trim().parse::<u32>().ok());
        let contacts = req
            .request
            .header_value("Contact")
            .map(|c| wire::split_commas(&c))
            .unwrap_or_default();
        let Some(contact) = contacts.first().cloned() else {
            // A query for the bindings: answer with what this flow holds.
            return self.reply(&req, 200, &[]);
        };
        if contact.trim() == "*" {
            return self.unregister_all(req, &aor);
        }
        let uri = wire::uri_of(&contact);
        let expires = wire::param(&contact, "expires")
            .and_then(|e| e.parse().ok())
            .or(header_expires)
            .unwrap_or(DEFAULT_EXPIRES);
        let instance = wire::param(&contact, "+sip.instance");
        let token = self.token_for(&aor, instance.as_deref().unwrap_or(&uri));
        self.serial += 1;
        let id = self.serial;
        let by_token = match auth_of_register(&req) {
            Some(_) if expires == 0 => {
                self.bindings.retain(|b| b.token != token);
                self.out.push_back(FrontOutput::SignOut { user });
                return self.reply(&req, 200, &[]);
            }
            Some(jwt) => {
                self.out.push_back(FrontOutput::SignIn {
                    id,
                    user: user.clone(),
                    token: jwt,
                });
                true
            }
            None => false,
        };
        let relay = RegisterRelay {
            id,
            request_uri: req.uri.clone(),
            from: req.reply.from.clone(),
            to: req.reply.to.clone(),
            call_id: req.reply.call_id.clone(),
            cseq: req.cseq_number,
            credentials: credentials_of(&req),
            token: token.clone(),
            expires,
        };
        let pending = Pending {
            reply: req.reply,
            binding: Binding {
                token,
                aor,
                user,
                contact: uri,
                expires,
            },
            by_token,
            contact_params: contact_params(&contact),
        };
        self.registers.insert(id, pending);
        if !by_token {
            self.out.push_back(FrontOutput::Register(relay));
        }
    }

    /// `Contact: *`: every binding of this AOR on this flow goes; nothing
    /// is relayed (the registrar holds only our tokens).
    fn unregister_all(&mut self, req: Incoming, aor: &str) {
        let gone: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| b.aor == aor)
            .map(|b| b.token.clone())
            .collect();
        self.bindings.retain(|b| b.aor != aor);
        for token in gone {
            self.out.push_back(FrontOutput::Unbind { token });
        }
        self.reply(&req, 200, &[]);
    }

    /// The registrar answered the relayed REGISTER `id`.
    pub fn handle_register_answer(&mut self, id: u64, answer: RegisterAnswer) {
        let Some(pending) = self.registers.remove(&id) else {
            return;
        };
        let Pending {
            reply,
            binding,
            by_token,
            contact_params,
        } = pending;
        let mut headers = vec![("Server", self.settings.agent.clone())];
        let status = answer.status;
        if (200..300).contains(&status) {
            let granted = if binding.expires == 0 {
                0
            } else {
                answer.expires.unwrap_or(binding.expires)
            };
            self.bindings.retain(|b| b.token != binding.token);
            if granted == 0 && !by_token {
                self.out.push_back(FrontOutput::Unbind {
                    token: binding.token.clone(),
                });
            } else {
                headers.push((
                    "Contact",
                    format!("<{}>{contact_params};expires={granted}", binding.contact),
                ));
                let binding = Binding {
                    expires: granted,
                    ..binding
                };
                self.bindings.push(binding.clone());
                if !by_token {
                    self.out.push_back(FrontOutput::Bind(binding));
                }
            }
        } else {
            if let Some(challenge) = answer.challenge {
                let name = if status == 407 {
                    "Proxy-Authenticate"
                } else {
                    "WWW-Authenticate"
                };
                headers.push((name, challenge));
            }
            if let Some(min) = answer.min_expires {
                headers.push(("Min-Expires", min.to_string()));
            }
        }
        let tag = self.tag();
        let reason = if answer.reason.is_empty() {
            super::reason_phrase(status).to_string()
        } else {
            answer.reason
        };
        let msg = wire::response(
            &reply,
            self.peer,
            status,
            &reason,
            Some(&tag),
            &headers,
            None,
        );
        self.send(msg);
    }

    fn token_for(&self, aor: &str, instance: &str) -> String {
        format!("gw{:016x}", self.settings.key.hash_one((aor, instance)))
    }
}

/// The bearer token of a REGISTER, if it carries one.
fn auth_of_register(req: &Incoming) -> Option<String> {
    match super::auth_of(req) {
        Auth::Token(token) => Some(token),
        Auth::None | Auth::Digest(_) => None,
    }
}

/// A Contact's parameters after the URI, less `expires` (which we set).
fn contact_params(contact: &str) -> String {
    wire::after_uri(contact)
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            !p.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("expires")
        })
        .map(|p| format!(";{p}"))
        .collect()
}

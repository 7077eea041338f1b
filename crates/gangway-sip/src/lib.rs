//! The SIP leg of a Gangway call.
//!
//! Empty on purpose until the SIP milestone: the crate exists so the
//! workspace already has the shape described in `docs/architecture.md`, and
//! nothing else may grow SIP knowledge in the meantime. It will own SIP
//! transport and dialogs on rsipstack, registrations on behalf of browser
//! users, digest authentication, and the SIP-side SDP (sdp-types), and it
//! must never know about browsers.

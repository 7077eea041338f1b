//! Hold and resume by the far end, told to the browser. The PBX's
//! re-INVITE is answered on the SIP side by the core; the browser learns of
//! it from a re-INVITE of ours (RFC 3264 §8.4) offering our current session
//! with `a=sendonly` (held) or `a=sendrecv` (resumed), so JsSIP and SIP.js
//! report `hold`/`unhold` by the remote party and the browser stops sending
//! while held. The WebRTC leg itself does not change: the offer is the
//! session already agreed, with only its direction and `o=` version new,
//! and the browser's answer is ACKed, not fed to the media engine.
//!
//! One re-INVITE at a time per call. A change that comes while one is out
//! (or while the browser's own offer or INVITE is open) waits for it; a
//! `491` is retried after [`GLARE_RETRY`] (RFC 3261 §14.1); any other
//! refusal leaves the browser as it was until the next change.

use std::time::{Duration, Instant};

use super::wire::ALLOW;
use super::{FrontOutput, SipWsFront};
use crate::CallId;

/// How long after a `491` we offer again (RFC 3261 §14.1: 2.1–4 s for the
/// Call-ID's owner, up to 2 s otherwise; one value inside both is enough
/// for a browser, which does not retry its own re-offers by itself).
pub(super) const GLARE_RETRY: Duration = Duration::from_millis(2_100);

/// A call's far-end hold as the browser knows it.
#[derive(Debug, Default)]
pub(super) struct FarHold {
    /// The far end holds the call now.
    wanted: bool,
    /// What the browser was last told (and answered).
    told: bool,
    /// Our re-INVITE awaiting its final response: its Via, CSeq and the
    /// state it offers.
    pending: Option<(String, u32, bool)>,
    /// When to offer again after a `491`.
    retry_at: Option<Instant>,
    /// The highest `o=` version the browser has seen from us.
    version: Option<u64>,
}

impl FarHold {
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Our re-INVITE is out: the browser's own offers get `491` meanwhile.
    pub fn offering(&self) -> bool {
        self.pending.is_some()
    }

    /// An SDP of ours for the browser: its `o=` version made higher than
    /// any the browser saw from us (a re-offer of ours may have passed the
    /// media engine's count).
    pub fn versioned(&mut self, sdp: &str) -> String {
        let Some((line, version)) = origin_version(sdp) else {
            return sdp.to_string();
        };
        let next = match self.version {
            Some(seen) if version <= seen => seen + 1,
            _ => version,
        };
        self.version = Some(next);
        if next == version {
            return sdp.to_string();
        }
        let mut fields: Vec<&str> = line.split(' ').collect();
        let text = next.to_string();
        fields[2] = &text;
        sdp.replacen(line, &fields.join(" "), 1)
    }
}

impl SipWsFront {
    /// The far end held (`true`) or resumed the call.
    pub(super) fn far_hold(&mut self, call: &CallId, held: bool) {
        if let Some(d) = self.dialogs.get_mut(call) {
            d.far_hold.wanted = held;
        }
        self.offer_far_hold(call);
    }

    /// Sends the browser the far end's state if it differs from what the
    /// browser knows and nothing else is open in the dialog.
    pub(super) fn offer_far_hold(&mut self, call: &CallId) {
        let via = self.our_via();
        let contact = self.our_contact();
        let agent = self.settings.agent.clone();
        let Some(d) = self.dialogs.get_mut(call) else {
            return;
        };
        let busy = d.far_hold.pending.is_some()
            || d.far_hold.retry_at.is_some()
            || d.invite.is_some()
            || d.our_invite.is_some()
            || d.ack_due.is_some()
            || d.reoffer.is_some()
            || d.gone
            || d.cancelled;
        if busy || d.far_hold.wanted == d.far_hold.told {
            return;
        }
        let Some(answer) = d.answer.clone() else {
            return;
        };
        let held = d.far_hold.wanted;
        let offer = d.far_hold.versioned(&with_direction(
            &answer,
            if held { "sendonly" } else { "sendrecv" },
        ));
        d.cseq += 1;
        let cseq = d.cseq;
        d.far_hold.pending = Some((via.clone(), cseq, held));
        let msg = d.request(
            "INVITE",
            &via,
            cseq,
            &[
                ("Contact", contact),
                ("Allow", ALLOW.to_string()),
                ("User-Agent", agent),
            ],
            Some(("application/sdp", &offer)),
        );
        self.send(msg);
    }

    /// The browser's final answer to our hold or resume re-INVITE (true
    /// when `cseq` was one).
    pub(super) fn on_far_hold_response(
        &mut self,
        call: &CallId,
        cseq: u32,
        status: u16,
        contact: Option<String>,
    ) -> bool {
        let now = self.now;
        let Some(d) = self.dialogs.get_mut(call) else {
            return false;
        };
        let Some((via, _, held)) = d.far_hold.pending.clone().filter(|p| p.1 == cseq) else {
            return false;
        };
        if status < 200 {
            return true;
        }
        d.far_hold.pending = None;
        if (200..300).contains(&status) {
            d.far_hold.told = held;
            if let Some(contact) = contact {
                d.target = super::wire::uri_of(&contact);
            }
            self.send_ack(call, cseq, None);
        } else {
            // A non-2xx is ACKed within our INVITE transaction.
            let msg = d.request("ACK", &via, cseq, &[], None);
            if status == 491 {
                d.far_hold.retry_at = Some(now + GLARE_RETRY);
            } else {
                // Refused: the browser stays as it was until the next change.
                d.far_hold.wanted = d.far_hold.told;
                self.out
                    .push_back(FrontOutput::Rejected("far_hold_refused"));
            }
            self.send(msg);
        }
        self.offer_far_hold(call);
        true
    }

    /// Offers again what a `491` put off.
    pub(super) fn retry_far_holds(&mut self, now: Instant) {
        let due: Vec<CallId> = self
            .dialogs
            .iter_mut()
            .filter(|(_, d)| d.far_hold.retry_at.is_some_and(|t| t <= now))
            .map(|(call, d)| {
                d.far_hold.retry_at = None;
                call.clone()
            })
            .collect();
        for call in due {
            self.offer_far_hold(&call);
        }
    }
}

/// The `o=` line and its session version.
fn origin_version(sdp: &str) -> Option<(&str, u64)> {
    let line = sdp.lines().find(|l| l.starts_with("o="))?.trim_end();
    let version = line.split(' ').nth(2)?.parse().ok()?;
    Some((line, version))
}

/// `sdp` with every media section's direction set to `direction` (and a
/// session-level one removed).
pub(super) fn with_direction(sdp: &str, direction: &str) -> String {
    let is_direction =
        |l: &str| matches!(l, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive");
    let mut out = String::with_capacity(sdp.len() + 16);
    let mut in_media = false;
    let mut section_has_direction = false;
    let close_section = |out: &mut String, in_media: bool, has: bool| {
        if in_media && !has {
            out.push_str("a=");
            out.push_str(direction);
            out.push_str("\r\n");
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            close_section(&mut out, in_media, section_has_direction);
            in_media = true;
            section_has_direction = false;
        } else if is_direction(line) {
            if !in_media {
                continue;
            }
            section_has_direction = true;
            out.push_str("a=");
            out.push_str(direction);
            out.push_str("\r\n");
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close_section(&mut out, in_media, section_has_direction);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=str0m-1 5000 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=ice-lite\r\na=sendrecv\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=setup:active\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn the_direction_is_set_in_every_media_section_only() {
        let held = with_direction(ANSWER, "sendonly");
        assert_eq!(held.matches("a=sendonly").count(), 1, "{held}");
        assert!(!held.contains("a=sendrecv"), "{held}");
        assert!(
            held.contains("a=setup:active"),
            "the DTLS role is kept: {held}"
        );
        let m = held.find("m=audio").unwrap();
        assert!(held.find("a=sendonly").unwrap() > m, "{held}");

        let bare =
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let resumed = with_direction(bare, "sendrecv");
        assert!(
            resumed.ends_with("a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"),
            "{resumed}"
        );
    }

    #[test]
    fn versions_only_go_up() {
        let mut h = FarHold::default();
        assert_eq!(
            h.versioned(ANSWER),
            ANSWER,
            "the first SDP keeps its version"
        );
        let again = h.versioned(ANSWER);
        assert!(again.contains("o=str0m-1 5000 3 IN IP4"), "{again}");
        let later = ANSWER.replace(" 5000 2 ", " 5000 3 ");
        let bumped = h.versioned(&later);
        assert!(
            bumped.contains(" 5000 4 "),
            "an answer at a version the browser saw: {bumped}"
        );
        let ahead = ANSWER.replace(" 5000 2 ", " 5000 9 ");
        assert_eq!(h.versioned(&ahead), ahead);
    }
}

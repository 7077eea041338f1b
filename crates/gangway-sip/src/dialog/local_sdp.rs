//! Our side of the SDP within a dialog.

use crate::sdp::{self, Direction, OwnSdp, G711};

/// Our side of the SDP within the dialog: the address, port and session id
/// stay; codecs narrow to the negotiated one; the direction follows holds.
pub(crate) struct LocalSdp {
    pub(super) body: String,
    pub(super) own: Option<OwnSdp>,
    direction: Direction,
    /// The browser holds the call: our SDP never asks to receive.
    pub(super) held: bool,
}

impl LocalSdp {
    pub(crate) fn new(body: String) -> LocalSdp {
        LocalSdp {
            own: sdp::parse_own(&body),
            body,
            direction: Direction::SendRecv,
            held: false,
        }
    }

    /// The far end's answer (or, for an incoming call, its offer) fixed
    /// the codec: later offers carry only that one.
    pub(super) fn settle(&mut self, remote: &str) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        if let Ok(media) = sdp::parse_answer(remote, &own.codecs) {
            own.codecs = vec![media.codec];
            own.dtmf_pt = media.dtmf_pt.or(own.dtmf_pt);
        }
    }

    /// Our SDP with these codecs and direction; the `o=` version moves on
    /// only when something changed (RFC 3264 §8).
    pub(super) fn render(
        &self,
        codecs: &[G711],
        dtmf_pt: Option<u8>,
        direction: Direction,
    ) -> Option<(String, u64)> {
        let own = self.own.as_ref()?;
        let build = |version| {
            sdp::offer_with_direction(
                own.ip,
                own.port,
                codecs,
                dtmf_pt.unwrap_or(0),
                own.session_id,
                version,
                direction,
            )
        };
        let same = build(own.version);
        if same == self.body {
            return Some((same, own.version));
        }
        let version = own.version.saturating_add(1);
        Some((build(version), version))
    }

    pub(super) fn commit(
        &mut self,
        body: String,
        version: u64,
        codecs: Vec<G711>,
        dtmf_pt: Option<u8>,
        direction: Direction,
    ) {
        if let Some(own) = self.own.as_mut() {
            own.version = version;
            own.codecs = codecs;
            own.dtmf_pt = dtmf_pt;
        }
        self.body = body;
        self.direction = direction;
    }

    /// What the browser's hold allows us.
    pub(super) fn wish(&self) -> Direction {
        if self.held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        }
    }
}

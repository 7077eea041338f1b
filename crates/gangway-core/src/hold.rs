//! Hold and resume of a call's SIP leg, sans IO: who holds the call, what
//! the browser is told, and which ways audio may go. Each side's hold is
//! its own: the far end resuming does not take the browser's hold off.

use serde::{Deserialize, Serialize};

/// Who put a call on hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldParty {
    /// The browser (`hold`/`resume`), once the PBX accepted it.
    Local,
    /// The far end (its re-INVITE or UPDATE).
    Remote,
}

/// What the browser should be told after a hold event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    Held(HoldParty),
    Resumed(HoldParty),
}

/// Why a `hold`/`resume` request cannot go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefusal {
    AlreadyHeld,
    NotHeld,
    /// Our previous hold or resume is still waiting for the PBX.
    Pending,
}

/// The directions in the far end's latest SDP, from its point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDirection {
    pub sends: bool,
    pub receives: bool,
}

/// Which ways audio may go on the SIP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFlow {
    pub to_sip: bool,
    pub from_sip: bool,
}

impl AudioFlow {
    /// Both ways: no hold.
    pub const BOTH: AudioFlow = AudioFlow {
        to_sip: true,
        from_sip: true,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldState {
    local: bool,
    remote: bool,
    pending: Option<bool>,
    far_end: RemoteDirection,
}

impl Default for HoldState {
    fn default() -> Self {
        HoldState {
            local: false,
            remote: false,
            pending: None,
            far_end: RemoteDirection {
                sends: true,
                receives: true,
            },
        }
    }
}

impl HoldState {
    /// The browser asks to hold (`true`) or resume; on `Ok` the shell
    /// sends the re-INVITE and reports its outcome with [`Self::accepted`]
    /// or [`Self::refused`].
    pub fn request(&mut self, hold: bool) -> Result<(), HoldRefusal> {
        if self.pending.is_some() {
            return Err(HoldRefusal::Pending);
        }
        match (hold, self.local) {
            (true, true) => Err(HoldRefusal::AlreadyHeld),
            (false, false) => Err(HoldRefusal::NotHeld),
            _ => {
                self.pending = Some(hold);
                Ok(())
            }
        }
    }

    /// The PBX answered our hold/resume offer with `answer`.
    pub fn accepted(&mut self, hold: bool, answer: RemoteDirection) -> Option<HoldChange> {
        self.pending = None;
        self.far_end = answer;
        let changed = self.local != hold;
        self.local = hold;
        changed.then_some(if hold {
            HoldChange::Held(HoldParty::Local)
        } else {
            HoldChange::Resumed(HoldParty::Local)
        })
    }

    /// The PBX refused (or never answered) our offer: nothing changed.
    pub fn refused(&mut self) {
        self.pending = None;
    }

    /// The far end's own offer (re-INVITE or UPDATE). Offering anything
    /// short of sendrecv (sendonly, inactive, `c=0.0.0.0`) is its hold.
    pub fn remote_offer(&mut self, offer: RemoteDirection) -> Option<HoldChange> {
        self.far_end = offer;
        let held = !(offer.sends && offer.receives);
        let changed = self.remote != held;
        self.remote = held;
        changed.then_some(if held {
            HoldChange::Held(HoldParty::Remote)
        } else {
            HoldChange::Resumed(HoldParty::Remote)
        })
    }

    pub fn is_held(&self) -> bool {
        self.local || self.remote
    }

    pub fn held_locally(&self) -> bool {
        self.local
    }

    /// While we hold, the PBX hears nothing; what the far end sends (music
    /// on hold) still reaches the browser.
    pub fn flow(&self) -> AudioFlow {
        AudioFlow {
            to_sip: !self.local && self.far_end.receives,
            from_sip: self.far_end.sends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDRECV: RemoteDirection = RemoteDirection {
        sends: true,
        receives: true,
    };
    const SENDONLY: RemoteDirection = RemoteDirection {
        sends: true,
        receives: false,
    };
    const RECVONLY: RemoteDirection = RemoteDirection {
        sends: false,
        receives: true,
    };
    const INACTIVE: RemoteDirection = RemoteDirection {
        sends: false,
        receives: false,
    };

    #[test]
    fn browser_hold_and_resume() {
        let mut h = HoldState::default();
        assert_eq!(h.request(false), Err(HoldRefusal::NotHeld));
        assert_eq!(h.request(true), Ok(()));
        assert_eq!(h.request(false), Err(HoldRefusal::Pending));
        assert_eq!(
            h.accepted(true, RECVONLY),
            Some(HoldChange::Held(HoldParty::Local))
        );
        assert!(h.is_held() && h.held_locally());
        assert_eq!(
            h.flow(),
            AudioFlow {
                to_sip: false,
                from_sip: false
            }
        );
        assert_eq!(h.request(true), Err(HoldRefusal::AlreadyHeld));
        assert_eq!(h.request(false), Ok(()));
        assert_eq!(
            h.accepted(false, SENDRECV),
            Some(HoldChange::Resumed(HoldParty::Local))
        );
        assert!(!h.is_held());
        assert_eq!(
            h.flow(),
            AudioFlow {
                to_sip: true,
                from_sip: true
            }
        );
    }

    #[test]
    fn a_refused_hold_changes_nothing() {
        let mut h = HoldState::default();
        h.request(true).unwrap();
        h.refused();
        assert!(!h.is_held());
        assert_eq!(h.request(true), Ok(()), "may try again");
    }

    #[test]
    fn far_end_hold_passes_its_music_and_stops_ours() {
        let mut h = HoldState::default();
        assert_eq!(
            h.remote_offer(SENDONLY),
            Some(HoldChange::Held(HoldParty::Remote))
        );
        assert_eq!(
            h.flow(),
            AudioFlow {
                to_sip: false,
                from_sip: true
            },
            "music on hold reaches the browser"
        );
        assert_eq!(h.remote_offer(INACTIVE), None, "still held");
        assert_eq!(
            h.flow(),
            AudioFlow {
                to_sip: false,
                from_sip: false
            }
        );
        assert_eq!(
            h.remote_offer(SENDRECV),
            Some(HoldChange::Resumed(HoldParty::Remote))
        );
        assert_eq!(h.remote_offer(SENDRECV), None, "a refresh is no event");
    }

    #[test]
    fn each_side_resumes_only_its_own_hold() {
        let mut h = HoldState::default();
        h.request(true).unwrap();
        h.accepted(true, RECVONLY);
        // The PBX re-offers sendrecv (e.g. a session refresh): we still hold.
        assert_eq!(h.remote_offer(SENDRECV), None);
        assert!(h.held_locally());
        assert!(!h.flow().to_sip, "the PBX still hears nothing");
    }
}

//! Our side of the SDP within one SIP dialog, and the RFC 3264 rules for
//! changing it: the address, port and session id stay; codecs narrow to the
//! negotiated one; the direction follows holds; the `o=` version moves on
//! only when the body changes (§8).

use super::{offer_with_direction, parse_answer, parse_own, Direction, MediaAnswer, OwnSdp, G711};

#[derive(Debug, Clone)]
pub struct DialogSdp {
    body: String,
    own: Option<OwnSdp>,
    /// The browser holds the call: our SDP never asks to receive.
    held: bool,
}

/// A hold or resume re-offer, until the far end answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reoffer {
    pub body: String,
    version: u64,
    codecs: Vec<G711>,
    dtmf_pt: Option<u8>,
    hold: bool,
}

impl Reoffer {
    /// The codecs it offers, to read the far end's answer with.
    pub fn codecs(&self) -> &[G711] {
        &self.codecs
    }
}

impl DialogSdp {
    /// `body`: the SDP we sent in the INVITE or our 200 OK.
    pub fn new(body: String) -> DialogSdp {
        DialogSdp {
            own: parse_own(&body),
            body,
            held: false,
        }
    }

    /// The SDP we last sent.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The far end's answer (or, for an incoming call, its offer) fixed
    /// the codec: later offers carry only that one.
    pub fn settle(&mut self, remote: &str) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        if let Ok(media) = parse_answer(remote, &own.codecs) {
            own.codecs = vec![media.codec];
            own.dtmf_pt = media.dtmf_pt.or(own.dtmf_pt);
        }
    }

    /// Our answer to the far end's re-offer (RFC 3264 §6.1): its codec, its
    /// direction reversed, and never more than our own hold allows. `None`
    /// when our own SDP could not be read back.
    pub fn answer(&mut self, offer: &MediaAnswer) -> Option<(String, Direction)> {
        let direction = offer.direction.reverse().and(self.wish());
        let (body, version) = self.render(&[offer.codec], offer.dtmf_pt, direction)?;
        self.commit(body.clone(), version, vec![offer.codec], offer.dtmf_pt);
        Some((body, direction))
    }

    /// Our re-offer to hold (`sendonly`) or resume (`sendrecv`) with the
    /// negotiated codec. Nothing changes until [`Self::reoffer_accepted`].
    pub fn reoffer(&self, hold: bool) -> Option<Reoffer> {
        let own = self.own.as_ref()?;
        let (codecs, dtmf_pt) = (own.codecs.clone(), own.dtmf_pt);
        let direction = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let (body, version) = self.render(&codecs, dtmf_pt, direction)?;
        Some(Reoffer {
            body,
            version,
            codecs,
            dtmf_pt,
            hold,
        })
    }

    /// The far end accepted `reoffer` with `answer`.
    pub fn reoffer_accepted(&mut self, reoffer: Reoffer, answer: &MediaAnswer) {
        self.held = reoffer.hold;
        let codecs = vec![answer.codec];
        self.commit(reoffer.body, reoffer.version, codecs, reoffer.dtmf_pt);
    }

    fn render(
        &self,
        codecs: &[G711],
        dtmf_pt: Option<u8>,
        direction: Direction,
    ) -> Option<(String, u64)> {
        let own = self.own.as_ref()?;
        let build = |version| {
            offer_with_direction(
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

    fn commit(&mut self, body: String, version: u64, codecs: Vec<G711>, dtmf_pt: Option<u8>) {
        if let Some(own) = self.own.as_mut() {
            own.version = version;
            own.codecs = codecs;
            own.dtmf_pt = dtmf_pt;
        }
        self.body = body;
    }

    /// What the browser's hold allows us.
    fn wish(&self) -> Direction {
        if self.held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::offer;
    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    fn ours() -> DialogSdp {
        DialogSdp::new(offer(IP, 40_000, &[G711::Pcmu, G711::Pcma], 101, 77))
    }

    fn far(pt: u8, direction: &str) -> MediaAnswer {
        let name = if pt == 8 { "PCMA" } else { "PCMU" };
        let sdp = format!(
            "v=0\r\no=pbx 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
             m=audio 20000 RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
        );
        parse_answer(&sdp, &[G711::Pcmu, G711::Pcma]).unwrap()
    }

    fn version(body: &str) -> &str {
        let o = body.lines().find(|l| l.starts_with("o=")).unwrap();
        o.split(' ').nth(2).unwrap()
    }

    #[test]
    fn a_far_end_hold_is_answered_with_the_reverse_direction() {
        for (offered, answered) in [
            ("sendonly", Direction::RecvOnly),
            ("inactive", Direction::Inactive),
            ("recvonly", Direction::SendOnly),
            ("sendrecv", Direction::SendRecv),
        ] {
            let mut sdp = ours();
            let (body, direction) = sdp.answer(&far(0, offered)).unwrap();
            assert_eq!(direction, answered, "{offered}");
            assert!(body.contains(&format!("a={}", answered.as_str())), "{body}");
        }
    }

    #[test]
    fn while_we_hold_no_answer_asks_to_receive() {
        let mut sdp = ours();
        let reoffer = sdp.reoffer(true).unwrap();
        assert!(reoffer.body.contains("a=sendonly"), "{}", reoffer.body);
        sdp.reoffer_accepted(reoffer, &far(0, "recvonly"));
        let (body, direction) = sdp.answer(&far(0, "sendrecv")).unwrap();
        assert_eq!(direction, Direction::SendOnly);
        assert!(body.contains("a=sendonly"), "{body}");
        let (_, direction) = sdp.answer(&far(0, "sendonly")).unwrap();
        assert_eq!(direction, Direction::Inactive);
    }

    #[test]
    fn the_answer_narrows_to_the_far_ends_codec_and_keeps_our_address() {
        let mut sdp = ours();
        let (body, _) = sdp.answer(&far(8, "sendrecv")).unwrap();
        assert!(body.contains("m=audio 40000 RTP/AVP 8 101"), "{body}");
        assert!(body.contains("c=IN IP4 192.0.2.10"), "{body}");
        // A resume re-offer then offers only that codec.
        let reoffer = sdp.reoffer(false).unwrap();
        assert!(reoffer.body.contains("RTP/AVP 8 101"), "{}", reoffer.body);
    }

    #[test]
    fn the_version_moves_on_only_when_the_body_changes() {
        let mut sdp = ours();
        assert_eq!(version(sdp.body()), "1");
        let (first, _) = sdp.answer(&far(0, "sendonly")).unwrap();
        assert_eq!(version(&first), "2");
        let (again, _) = sdp.answer(&far(0, "sendonly")).unwrap();
        assert_eq!((version(&again), again == first), ("2", true));
        let (resumed, _) = sdp.answer(&far(0, "sendrecv")).unwrap();
        assert_eq!(version(&resumed), "3");
    }

    #[test]
    fn a_refused_reoffer_changes_nothing() {
        let sdp = ours();
        let before = sdp.body().to_string();
        let reoffer = sdp.reoffer(true).unwrap();
        assert_ne!(reoffer.body, before);
        assert_eq!(sdp.body(), before);
    }
}

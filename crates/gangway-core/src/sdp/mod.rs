//! SIP-side SDP: plain RTP/AVP audio with G.711 and RFC 4733 telephone-events.
//!
//! Offers are built and answers parsed with `sdp-types`; nothing here knows
//! where the media comes from on the other leg.

use std::net::{IpAddr, SocketAddr};

mod dialog;

pub use dialog::{DialogSdp, Reoffer};

use sdp_types::{Attribute, Connection, Fmtp, FmtpParam, Media, Origin, RtpMap, Session};

/// The two G.711 codecs, with their static RTP payload types (RFC 3551).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum G711 {
    /// μ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl G711 {
    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// The encoding name used in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// The codec for a static payload type, if it is G.711.
    pub fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Pcmu),
            8 => Some(G711::Pcma),
            _ => None,
        }
    }
}

/// Media direction (RFC 3264), from the peer's point of view as written in its SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The SDP attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether this side sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// What both allow: the answer to an offer when we also have wishes
    /// of our own (a held call never asks to receive).
    pub fn and(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }

    /// The direction an answerer uses towards an offer with this direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.as_str()))
    }
}

/// What the far end's SDP answer says about the audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaAnswer {
    /// Where to send RTP (media-level `c=` if present, else session-level).
    pub addr: SocketAddr,
    /// The first payload type in the answer's m-line that we offered.
    pub codec: G711,
    /// The telephone-event/8000 payload type, if the answer kept one.
    pub dtmf_pt: Option<u8>,
    /// The answerer's direction. A `c=` of `0.0.0.0`/`::` (RFC 2543 hold)
    /// is reported as [`Direction::Inactive`].
    pub direction: Direction,
}

/// Why an SDP answer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Parse(String),
    #[error("SDP has no audio m-line")]
    NoAudio,
    #[error("audio stream rejected (port 0)")]
    Rejected,
    #[error("unsupported audio transport {0:?} (want RTP/AVP)")]
    UnsupportedTransport(String),
    #[error("no common codec in the answer")]
    NoCommonCodec,
    #[error("bad or missing connection address: {0}")]
    BadAddress(String),
}

/// Build an SDP offer: one `m=audio` line, RTP/AVP, the given G.711 codecs
/// in order of preference, `telephone-event/8000` on `dtmf_pt` with
/// `fmtp 0-16`, `a=ptime:20` and `a=sendrecv`.
///
/// Duplicated codecs are offered once; an empty list offers PCMU then PCMA.
/// `dtmf_pt` must be a dynamic payload type (96..=127); any other value
/// leaves telephone-event out rather than producing a clashing offer.
pub fn offer(ip: IpAddr, rtp_port: u16, codecs: &[G711], dtmf_pt: u8, session_id: u64) -> String {
    offer_with_direction(
        ip,
        rtp_port,
        codecs,
        dtmf_pt,
        session_id,
        1,
        Direction::SendRecv,
    )
}

/// Like [`offer`], with an explicit `o=` version and media direction (for
/// re-offers and answers within an established session).
pub fn offer_with_direction(
    ip: IpAddr,
    rtp_port: u16,
    codecs: &[G711],
    dtmf_pt: u8,
    session_id: u64,
    version: u64,
    direction: Direction,
) -> String {
    let mut list: Vec<G711> = Vec::with_capacity(2);
    for c in codecs {
        if !list.contains(c) {
            list.push(*c);
        }
    }
    if list.is_empty() {
        list = vec![G711::Pcmu, G711::Pcma];
    }
    let dtmf = (96..=127).contains(&dtmf_pt).then_some(dtmf_pt);

    let mut fmt: Vec<String> = list.iter().map(|c| c.payload_type().to_string()).collect();
    if let Some(pt) = dtmf {
        fmt.push(pt.to_string());
    }

    let mut media = Media::new(
        sdp_types::MediaType::Audio,
        rtp_port,
        sdp_types::TransportProto::RtpAvp,
        fmt.join(" "),
    );
    for c in &list {
        media.add_attribute(RtpMap::new(c.payload_type(), c.encoding_name(), 8000));
    }
    if let Some(pt) = dtmf {
        media.add_attribute(RtpMap::new(pt, "telephone-event", 8000));
        let mut fmtp = Fmtp::new(pt);
        fmtp.add_format_specific_param(FmtpParam::new("0-16"));
        media.add_attribute(fmtp);
    }
    media.add_attribute(Attribute::with_value("ptime", "20"));
    media.add_attribute(Attribute::new(direction.as_str()));

    let mut session = Session::new(Origin::with_ip_addr(session_id, version, ip), "-");
    session.set_connection(Connection::from_ip_addr(ip));
    session.add_media(media);

    let mut out = Vec::with_capacity(256);
    // Writing to a Vec cannot fail.
    let _ = session.write(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Our answer to the far end's offer, parsed with [`parse_answer`] (an
/// offer reads the same way): only the codec chosen from it, its own
/// telephone-event payload type (left out when it offered none), and the
/// direction that answers its direction (RFC 3264 §6.1).
pub fn answer(ip: IpAddr, rtp_port: u16, offer: &MediaAnswer, session_id: u64) -> String {
    offer_with_direction(
        ip,
        rtp_port,
        &[offer.codec],
        offer.dtmf_pt.unwrap_or(0),
        session_id,
        1,
        offer.direction.reverse(),
    )
}

/// Parse the far end's SDP answer to one of our offers.
///
/// Uses the first `m=audio` line; its port must not be 0 and its transport
/// must be RTP/AVP (or RTP/AVPF). The codec is the first payload type of the
/// m-line that is one of `offered` (static PTs 0 and 8). The connection
/// address is the media-level `c=` if present, else the session-level one.
pub fn parse_answer(sdp: &str, offered: &[G711]) -> Result<MediaAnswer, SdpError> {
    let session = Session::parse(sdp.as_bytes()).map_err(|e| SdpError::Parse(e.to_string()))?;

    let media = session
        .medias
        .iter()
        .find(|m| m.media.eq_ignore_ascii_case("audio"))
        .ok_or(SdpError::NoAudio)?;
    if media.port == 0 {
        return Err(SdpError::Rejected);
    }
    let proto = media.proto.trim();
    if !(proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")) {
        return Err(SdpError::UnsupportedTransport(proto.to_string()));
    }

    let payload_types: Vec<u8> = media
        .fmt
        .split_ascii_whitespace()
        .filter_map(|t| t.parse::<u8>().ok())
        .filter(|pt| *pt <= 127)
        .collect();

    let codec = payload_types
        .iter()
        .filter_map(|pt| G711::from_payload_type(*pt))
        .find(|c| offered.contains(c))
        .ok_or(SdpError::NoCommonCodec)?;

    let dtmf_pt = media
        .attributes_typed::<RtpMap>()
        .filter_map(Result::ok)
        .find(|m| {
            m.encoding_name.eq_ignore_ascii_case("telephone-event")
                && m.clock_rate == 8000
                && payload_types.contains(&m.payload_type)
        })
        .map(|m| m.payload_type);

    let connection = media
        .connections
        .first()
        .or(session.connection.as_ref())
        .ok_or_else(|| SdpError::BadAddress("no c= line".to_string()))?;
    let ip = connection
        .try_address()
        .map_err(|e| SdpError::BadAddress(e.to_string()))?
        .ip;
    if ip.is_multicast() {
        return Err(SdpError::BadAddress(format!("multicast address {ip}")));
    }

    let direction_of = |attrs: &[Attribute]| {
        attrs
            .iter()
            .find_map(|a| Direction::from_attribute(&a.attribute))
    };
    let mut direction = direction_of(&media.attributes)
        .or_else(|| direction_of(&session.attributes))
        .unwrap_or(Direction::SendRecv);
    if ip.is_unspecified() {
        direction = Direction::Inactive;
    }

    Ok(MediaAnswer {
        addr: SocketAddr::new(ip, media.port),
        codec,
        dtmf_pt,
        direction,
    })
}

/// What one of our own SDP bodies (built by [`offer`] or [`answer`]) says,
/// so later offers and answers in the dialog can keep its address, port
/// and session id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnSdp {
    pub ip: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub version: u64,
    /// The G.711 codecs of the m-line, in order.
    pub codecs: Vec<G711>,
    pub dtmf_pt: Option<u8>,
}

pub fn parse_own(sdp: &str) -> Option<OwnSdp> {
    let session = Session::parse(sdp.as_bytes()).ok()?;
    let media = parse_answer(sdp, &[G711::Pcmu, G711::Pcma]).ok()?;
    let audio = session
        .medias
        .iter()
        .find(|m| m.media.eq_ignore_ascii_case("audio"))?;
    let codecs = audio
        .fmt
        .split_ascii_whitespace()
        .filter_map(|t| t.parse::<u8>().ok())
        .filter_map(G711::from_payload_type)
        .collect();
    Some(OwnSdp {
        ip: media.addr.ip(),
        port: media.addr.port(),
        session_id: session.origin.sess_id.parse().ok()?,
        version: session.origin.sess_version,
        codecs,
        dtmf_pt: media.dtmf_pt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn offer_has_expected_lines() {
        let sdp = offer(IP, 40000, &[G711::Pcmu, G711::Pcma], 101, 4242);
        let lines: Vec<&str> = sdp.split("\r\n").collect();
        assert_eq!(lines[0], "v=0");
        assert!(lines.contains(&"o=- 4242 1 IN IP4 192.0.2.10"), "{sdp}");
        assert!(lines.contains(&"c=IN IP4 192.0.2.10"), "{sdp}");
        assert!(lines.contains(&"t=0 0"), "{sdp}");
        assert!(lines.contains(&"m=audio 40000 RTP/AVP 0 8 101"), "{sdp}");
        assert!(lines.contains(&"a=rtpmap:0 PCMU/8000"), "{sdp}");
        assert!(lines.contains(&"a=rtpmap:8 PCMA/8000"), "{sdp}");
        assert!(
            lines.contains(&"a=rtpmap:101 telephone-event/8000"),
            "{sdp}"
        );
        assert!(lines.contains(&"a=fmtp:101 0-16"), "{sdp}");
        assert!(lines.contains(&"a=ptime:20"), "{sdp}");
        assert!(lines.contains(&"a=sendrecv"), "{sdp}");
        assert!(sdp.ends_with("\r\n"));
    }

    #[test]
    fn offer_order_dedup_and_defaults() {
        let sdp = offer(IP, 5000, &[G711::Pcma, G711::Pcma, G711::Pcmu], 96, 1);
        assert!(sdp.contains("m=audio 5000 RTP/AVP 8 0 96\r\n"), "{sdp}");
        let sdp = offer(IP, 5000, &[], 101, 1);
        assert!(sdp.contains("m=audio 5000 RTP/AVP 0 8 101\r\n"), "{sdp}");
        // A static PT for DTMF would clash: telephone-event is left out.
        let sdp = offer(IP, 5000, &[G711::Pcmu], 8, 1);
        assert!(sdp.contains("m=audio 5000 RTP/AVP 0\r\n"), "{sdp}");
        assert!(!sdp.contains("telephone-event"), "{sdp}");
    }

    #[test]
    fn offer_ipv6() {
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let sdp = offer(ip, 6000, &[G711::Pcmu], 101, 7);
        assert!(sdp.contains("c=IN IP6 ::1\r\n"), "{sdp}");
        let a = parse_answer(&sdp, &[G711::Pcmu]).unwrap();
        assert_eq!(a.addr, SocketAddr::new(ip, 6000));
    }

    #[test]
    fn round_trip() {
        let sdp = offer(IP, 40000, &[G711::Pcmu, G711::Pcma], 101, 99);
        let a = parse_answer(&sdp, &[G711::Pcmu, G711::Pcma]).unwrap();
        assert_eq!(
            a,
            MediaAnswer {
                addr: SocketAddr::new(IP, 40000),
                codec: G711::Pcmu,
                dtmf_pt: Some(101),
                direction: Direction::SendRecv,
            }
        );
    }

    #[test]
    fn pcma_chosen_when_first() {
        let answer = "v=0\r\no=pbx 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";
        let a = parse_answer(answer, &[G711::Pcmu, G711::Pcma]).unwrap();
        assert_eq!(a.codec, G711::Pcma);
        assert_eq!(a.addr, "10.0.0.5:30000".parse().unwrap());
        assert_eq!(a.dtmf_pt, Some(101));
    }

    #[test]
    fn skips_payloads_we_did_not_offer() {
        // 18 (G.729) first, then PCMU; we only offered PCMA and PCMU.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 18 0\r\n";
        let a = parse_answer(answer, &[G711::Pcma, G711::Pcmu]).unwrap();
        assert_eq!(a.codec, G711::Pcmu);
        assert_eq!(a.dtmf_pt, None);
        // PCMA only in the answer but we offered only PCMU.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 8\r\n";
        assert!(matches!(
            parse_answer(answer, &[G711::Pcmu]),
            Err(SdpError::NoCommonCodec)
        ));
    }

    #[test]
    fn media_level_connection_wins() {
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 0\r\nc=IN IP4 10.9.9.9\r\na=sendonly\r\n";
        let a = parse_answer(answer, &[G711::Pcmu]).unwrap();
        assert_eq!(a.addr, "10.9.9.9:30000".parse().unwrap());
        assert_eq!(a.direction, Direction::SendOnly);

        // Only a media-level c=.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\n\
                      m=audio 30002 RTP/AVP 0\r\nc=IN IP4 10.9.9.8\r\n";
        let a = parse_answer(answer, &[G711::Pcmu]).unwrap();
        assert_eq!(a.addr, "10.9.9.8:30002".parse().unwrap());
    }

    #[test]
    fn session_level_direction_and_hold_address() {
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      a=recvonly\r\nm=audio 30000 RTP/AVP 0\r\n";
        let a = parse_answer(answer, &[G711::Pcmu]).unwrap();
        assert_eq!(a.direction, Direction::RecvOnly);

        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 0\r\n";
        let a = parse_answer(answer, &[G711::Pcmu]).unwrap();
        assert_eq!(a.direction, Direction::Inactive);
    }

    #[test]
    fn telephone_event_detection() {
        // Dynamic PT other than ours, upper-case name, listed in the m-line.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 0 96\r\na=rtpmap:96 TELEPHONE-EVENT/8000\r\n";
        assert_eq!(
            parse_answer(answer, &[G711::Pcmu]).unwrap().dtmf_pt,
            Some(96)
        );
        // rtpmap present but PT not in the m-line: ignored.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 0\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(parse_answer(answer, &[G711::Pcmu]).unwrap().dtmf_pt, None);
        // Wideband telephone-event is not ours.
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 0 97\r\na=rtpmap:97 telephone-event/16000\r\n";
        assert_eq!(parse_answer(answer, &[G711::Pcmu]).unwrap().dtmf_pt, None);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_answer("this is not sdp", &[G711::Pcmu]),
            Err(SdpError::Parse(_))
        ));
        assert!(matches!(
            parse_answer("", &[G711::Pcmu]),
            Err(SdpError::Parse(_))
        ));
        let video = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                     m=video 30000 RTP/AVP 96\r\n";
        assert!(matches!(
            parse_answer(video, &[G711::Pcmu]),
            Err(SdpError::NoAudio)
        ));
        let rejected = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                        m=audio 0 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(rejected, &[G711::Pcmu]),
            Err(SdpError::Rejected)
        ));
        let srtp = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                    m=audio 30000 RTP/SAVP 0\r\n";
        assert!(matches!(
            parse_answer(srtp, &[G711::Pcmu]),
            Err(SdpError::UnsupportedTransport(_))
        ));
        let no_c = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(no_c, &[G711::Pcmu]),
            Err(SdpError::BadAddress(_))
        ));
        let fqdn = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 pbx.example\r\nt=0 0\r\n\
                    m=audio 30000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(fqdn, &[G711::Pcmu]),
            Err(SdpError::BadAddress(_))
        ));
        let mcast = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 224.2.1.1/127\r\nt=0 0\r\n\
                     m=audio 30000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(mcast, &[G711::Pcmu]),
            Err(SdpError::BadAddress(_))
        ));
        let ok = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                  m=audio 30000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_answer(ok, &[]),
            Err(SdpError::NoCommonCodec)
        ));
    }

    #[test]
    fn lf_only_line_endings_parse() {
        let answer = "v=0\no=- 1 1 IN IP4 10.0.0.5\ns=-\nc=IN IP4 10.0.0.5\nt=0 0\nm=audio 30000 RTP/AVP 8\n";
        let a = parse_answer(answer, &[G711::Pcma]).unwrap();
        assert_eq!(a.codec, G711::Pcma);
    }

    #[test]
    fn reads_back_our_own_sdp() {
        let sdp = offer(IP, 40000, &[G711::Pcma, G711::Pcmu], 101, 5);
        let own = parse_own(&sdp).unwrap();
        assert_eq!(
            own,
            OwnSdp {
                ip: IP,
                port: 40000,
                session_id: 5,
                version: 1,
                codecs: vec![G711::Pcma, G711::Pcmu],
                dtmf_pt: Some(101),
            }
        );
        assert_eq!(parse_own("garbage"), None);
    }

    #[test]
    fn directions_combine_as_rfc_3264_answers() {
        use Direction::*;
        assert_eq!(SendOnly.reverse().and(SendRecv), RecvOnly);
        assert_eq!(Inactive.reverse().and(SendRecv), Inactive);
        // We hold (we only send) and the far end offers sendrecv: sendonly.
        assert_eq!(SendRecv.reverse().and(SendOnly), SendOnly);
        // Both hold: nothing flows.
        assert_eq!(SendOnly.reverse().and(SendOnly), Inactive);
        assert!(SendRecv.sends() && SendRecv.receives());
        assert!(!RecvOnly.sends() && RecvOnly.receives());
    }
}

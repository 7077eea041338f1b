//! The far ends of the quality bench, in process: a SIP phone that answers
//! the gateway's INVITE with PCMU, and the RTP player-recorder both it and
//! the plain-RTP legs through rtpengine use. SIP is the least one call over
//! UDP on loopback needs: a 200 with the answer to each INVITE (again to
//! its retransmissions and to a re-INVITE), nothing to ACK, a 200 to
//! anything else (BYE, OPTIONS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A phone on its own SIP and RTP sockets, serving SIP in the background.
pub struct SpeechPhone {
    sip_port: u16,
    pub rtp: Arc<UdpSocket>,
    /// The gateway's RTP address, once an INVITE said it.
    peer_rtp: watch::Receiver<Option<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Drop for SpeechPhone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpeechPhone {
    pub async fn start() -> SpeechPhone {
        let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let sip_port = sip.local_addr().unwrap().port();
        let rtp_port = rtp.local_addr().unwrap().port();
        let (tx, peer_rtp) = watch::channel(None);
        let task = tokio::spawn(serve(sip, sip_port, rtp_port, tx));
        SpeechPhone {
            sip_port,
            rtp,
            peer_rtp,
            task,
        }
    }

    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// Before placing a call: forget the last call's RTP address.
    pub fn expect_call(&mut self) {
        self.peer_rtp.borrow_and_update();
    }

    /// Where the gateway takes this call's RTP, once its INVITE came (since
    /// [`SpeechPhone::expect_call`]).
    pub async fn peer_rtp(&mut self, timeout: Duration) -> Option<SocketAddr> {
        tokio::time::timeout(timeout, self.peer_rtp.changed())
            .await
            .ok()?
            .ok()?;
        *self.peer_rtp.borrow_and_update()
    }
}

async fn serve(
    sip: UdpSocket,
    sip_port: u16,
    rtp_port: u16,
    peer_rtp: watch::Sender<Option<SocketAddr>>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sip.recv_from(&mut buf).await else {
            return;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let Some(method) = request_method(text) else {
            continue; // a response: nothing to do
        };
        let body = match method {
            "ACK" => continue,
            "INVITE" => {
                if let Some(addr) = offer_rtp(text) {
                    peer_rtp.send_replace(Some(addr));
                }
                Some(answer_sdp(rtp_port))
            }
            _ => None,
        };
        let response = ok_response(text, sip_port, body.as_deref());
        let _ = sip.send_to(response.as_bytes(), from).await;
    }
}

fn request_method(message: &str) -> Option<&str> {
    let first = message.lines().next()?;
    if first.starts_with("SIP/2.0") {
        return None;
    }
    first.split(' ').next()
}

/// The values of header `name` (or its compact form), in order.
fn headers<'a>(message: &'a str, name: &str, compact: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name) || n.trim() == compact)
        .map(|(_, v)| v.trim())
        .collect()
}

fn ok_response(request: &str, sip_port: u16, sdp: Option<&str>) -> String {
    let mut r = String::from("SIP/2.0 200 OK\r\n");
    for via in headers(request, "Via", "v") {
        r += &format!("Via: {via}\r\n");
    }
    let one = |name, compact| {
        headers(request, name, compact)
            .first()
            .copied()
            .unwrap_or("")
    };
    r += &format!("From: {}\r\n", one("From", "f"));
    let to = one("To", "t");
    if to.contains(";tag=") {
        r += &format!("To: {to}\r\n");
    } else {
        r += &format!("To: {to};tag=speech-phone\r\n");
    }
    r += &format!("Call-ID: {}\r\n", one("Call-ID", "i"));
    r += &format!("CSeq: {}\r\n", one("CSeq", ""));
    r += &format!("Contact: <sip:phone@127.0.0.1:{sip_port}>\r\n");
    match sdp {
        Some(sdp) => {
            r += "Content-Type: application/sdp\r\n";
            r += &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len());
        }
        None => r += "Content-Length: 0\r\n\r\n",
    }
    r
}

/// The connection address and audio port of an INVITE's SDP.
fn offer_rtp(message: &str) -> Option<SocketAddr> {
    let body = message.split_once("\r\n\r\n")?.1;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse::<std::net::Ipv4Addr>()
        .ok()?;
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((ip, port).into())
}

fn answer_sdp(rtp_port: u16) -> String {
    format!(
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// How a leg packetizes its frames.
#[derive(Clone, Copy)]
pub struct Stream {
    pub pt: u8,
    /// RTP clock ticks per 20 ms frame.
    pub step: u32,
    pub ssrc: u32,
}

/// A received RTP packet: sequence number, timestamp, payload.
pub type Kept = (u16, u32, Vec<u8>);

/// Sends `frames` from `socket` to `to`, one per 20 ms, dropping `loss`
/// (0–1) of them at random (seeded, so reruns drop the same ones; the
/// sequence numbers still count them, as loss on the wire would); keeps the
/// RTP packets of payload type `keep_pt` that arrive meanwhile and for
/// `linger` after.
pub async fn play_and_keep(
    socket: &UdpSocket,
    to: SocketAddr,
    frames: &[Vec<u8>],
    out: Stream,
    keep_pt: u8,
    loss: f64,
    linger: Duration,
) -> Vec<Kept> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut random = out.ssrc as u64 | 1;
    let mut kept = Vec::new();
    let mut packet = Vec::with_capacity(512);
    let mut buf = vec![0u8; 1500];
    let mut sent = 0usize;
    let mut done = None;
    loop {
        let until = done.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tick.tick(), if sent < frames.len() => {
                // xorshift64: a fixed sequence per stream
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
                let drop = unit < loss;
                if !drop {
                    packet.clear();
                    packet.extend_from_slice(&[0x80, out.pt]);
                    packet.extend_from_slice(&(sent as u16).to_be_bytes());
                    packet.extend_from_slice(&(sent as u32 * out.step).to_be_bytes());
                    packet.extend_from_slice(&out.ssrc.to_be_bytes());
                    packet.extend_from_slice(&frames[sent]);
                    let _ = socket.send_to(&packet, to).await;
                }
                sent += 1;
                if sent == frames.len() {
                    done = Some(tokio::time::Instant::now() + linger);
                }
            }
            Ok((n, _)) = socket.recv_from(&mut buf) => {
                let p = &buf[..n];
                if p.len() > 12 && p[0] >> 6 == 2 && p[1] & 0x7f == keep_pt {
                    let seq = u16::from_be_bytes([p[2], p[3]]);
                    let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                    let header = 12 + 4 * usize::from(p[0] & 0x0f);
                    if p.len() > header {
                        kept.push((seq, ts, p[header..].to_vec()));
                    }
                }
            }
            _ = tokio::time::sleep_until(until), if done.is_some() => return kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:1000@127.0.0.1:5070 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport\r\n\
        v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n\
        From: <sip:gangway@pbx.test>;tag=abc\r\n\
        To: <sip:1000@pbx.test>\r\n\
        Call-ID: c1@gw\r\nCSeq: 1 INVITE\r\n\
        Content-Type: application/sdp\r\nContent-Length: 99\r\n\r\n\
        v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 40002 RTP/AVP 0 8 101\r\n";

    #[test]
    fn answers_an_invite_with_its_headers_and_pcmu() {
        assert_eq!(request_method(INVITE), Some("INVITE"));
        assert_eq!(offer_rtp(INVITE), Some("127.0.0.1:40002".parse().unwrap()));
        let sdp = answer_sdp(30000);
        let r = ok_response(INVITE, 5070, Some(&sdp));
        assert!(r.starts_with("SIP/2.0 200 OK\r\n"));
        let vias = headers(&r, "Via", "v");
        assert_eq!(vias.len(), 2);
        assert!(vias[0].contains("branch=z9hG4bK1"));
        assert!(r.contains("To: <sip:1000@pbx.test>;tag=speech-phone\r\n"));
        assert!(r.contains("CSeq: 1 INVITE\r\n"));
        assert!(r.contains(&format!("Content-Length: {}\r\n\r\nv=0", sdp.len())));
        assert!(r.contains("m=audio 30000 RTP/AVP 0\r\n"));
        assert_eq!(request_method("SIP/2.0 200 OK\r\n"), None);
    }
}

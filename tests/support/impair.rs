//! A loopback impairment proxy for the SIP leg: it stands in as the SIP
//! trunk, relays SIP between the gateway and the real far end (responses come
//! back to it through `rport`), and rewrites both sides' SDP so each sends its
//! RTP to the proxy, which drops a share of it at random in each direction.
//! No root or `tc` needed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub struct LossyProxy {
    sip_port: u16,
    tasks: Vec<JoinHandle<()>>,
    /// RTP packets forwarded and dropped, both directions together.
    pub forwarded: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    /// RTP packets towards the gateway sent after the one behind them.
    pub reordered: Arc<AtomicU64>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl LossyProxy {
    /// Proxies SIP to `far_end` and drops `loss` (0–1) of the RTP each way.
    pub async fn start(far_end: SocketAddr, loss: f64, seed: u64) -> LossyProxy {
        Self::start_reordering(far_end, loss, 0.0, 0, seed).await
    }

    /// Like [`LossyProxy::start`], and also holds back `reorder` (0–1) of
    /// the far end's RTP packets on the way to the gateway until `late_by`
    /// packets after them have gone (each arrives that many packet times late).
    pub async fn start_reordering(
        far_end: SocketAddr,
        loss: f64,
        reorder: f64,
        late_by: usize,
        seed: u64,
    ) -> LossyProxy {
        let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let sip_port = sip.local_addr().unwrap().port();
        let rtp_port = rtp.local_addr().unwrap().port();
        // The media addresses each side announced in its SDP.
        let rtp_ends = Arc::new(std::sync::Mutex::new((
            None::<SocketAddr>,
            None::<SocketAddr>,
        )));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let reordered = Arc::new(AtomicU64::new(0));

        let ends = rtp_ends.clone();
        let sip_task = tokio::spawn(async move {
            let mut gateway_sip = None;
            let mut buf = vec![0u8; 65535];
            while let Ok((n, source)) = sip.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                // Both sides see the proxy's RTP port in the other's SDP.
                let (text, announced) = rewrite_audio_port(&text, rtp_port);
                // In-dialog requests (re-INVITE, BYE) follow the Contacts:
                // point them at the proxy too, so they get the same rewrite.
                let text = rewrite_contacts(&text, sip_port);
                let announced = announced.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
                let dest = if source == far_end {
                    if announced.is_some() {
                        ends.lock().unwrap().1 = announced;
                    }
                    gateway_sip
                } else {
                    gateway_sip = Some(source);
                    if announced.is_some() {
                        ends.lock().unwrap().0 = announced;
                    }
                    Some(far_end)
                };
                if let Some(dest) = dest {
                    let _ = sip.send_to(text.as_bytes(), dest).await;
                }
            }
        });

        let (f, d, r) = (forwarded.clone(), dropped.clone(), reordered.clone());
        let rtp_task = tokio::spawn(async move {
            // One random stream per direction: which packets each way loses
            // does not depend on how the two directions interleave.
            let mut to_gateway_rng = Lcg(seed);
            let mut to_far_rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
            let mut buf = vec![0u8; 2048];
            // A packet towards the gateway waiting to go out after the next one.
            let mut held: Option<(Vec<u8>, SocketAddr, usize)> = None;
            while let Ok((n, source)) = rtp.recv_from(&mut buf).await {
                let (gateway, far) = *rtp_ends.lock().unwrap();
                let dest = if Some(source) == gateway {
                    far
                } else if Some(source) == far {
                    gateway
                } else {
                    None
                };
                let Some(dest) = dest else { continue };
                let towards_gateway = Some(dest) == gateway;
                let rng = if towards_gateway {
                    &mut to_gateway_rng
                } else {
                    &mut to_far_rng
                };
                if rng.unit() < loss {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                f.fetch_add(1, Ordering::Relaxed);
                if towards_gateway && held.is_none() && rng.unit() < reorder {
                    r.fetch_add(1, Ordering::Relaxed);
                    held = Some((buf[..n].to_vec(), dest, late_by));
                    continue;
                }
                let _ = rtp.send_to(&buf[..n], dest).await;
                if towards_gateway {
                    if let Some((late, to, after)) = held.take() {
                        if after <= 1 {
                            let _ = rtp.send_to(&late, to).await;
                        } else {
                            held = Some((late, to, after - 1));
                        }
                    }
                }
            }
        });

        LossyProxy {
            sip_port,
            tasks: vec![sip_task, rtp_task],
            forwarded,
            dropped,
            reordered,
        }
    }

    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }
}

/// Points every Contact header's URI at 127.0.0.1:`port` (the proxy).
fn rewrite_contacts(message: &str, port: u16) -> String {
    let Some((head, body)) = message.split_once("\r\n\r\n") else {
        return message.to_string();
    };
    let head: Vec<String> = head
        .split("\r\n")
        .map(|h| {
            let lower = h.to_ascii_lowercase();
            if !(lower.starts_with("contact:") || lower.starts_with("m:")) {
                return h.to_string();
            }
            let Some(start) = lower.find("sip:").map(|i| i + 4) else {
                return h.to_string();
            };
            let rest = &h[start..];
            let end = rest.find([';', '>', ' ']).unwrap_or(rest.len());
            let user = rest[..end].rfind('@').map_or(0, |at| at + 1);
            format!(
                "{}{}127.0.0.1:{port}{}",
                &h[..start],
                &rest[..user],
                &rest[end..]
            )
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

/// Replaces the port of an SDP body's `m=audio` line (fixing Content-Length)
/// and returns the port it announced.
fn rewrite_audio_port(message: &str, new_port: u16) -> (String, Option<u16>) {
    let Some((head, body)) = message.split_once("\r\n\r\n") else {
        return (message.to_string(), None);
    };
    let mut announced = None;
    let body: Vec<String> = body
        .split("\r\n")
        .map(|line| match line.strip_prefix("m=audio ") {
            Some(rest) => {
                let (port, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                announced = port.parse().ok();
                format!("m=audio {new_port} {tail}")
            }
            None => line.to_string(),
        })
        .collect();
    if announced.is_none() {
        return (message.to_string(), None);
    }
    let body = body.join("\r\n");
    let head: Vec<String> = head
        .split("\r\n")
        .map(|h| {
            if h.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", body.len())
            } else {
                h.to_string()
            }
        })
        .collect();
    (format!("{}\r\n\r\n{body}", head.join("\r\n")), announced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_audio_port_and_length() {
        let body =
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n";
        let msg = format!(
            "INVITE sip:bob@x SIP/2.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (out, port) = rewrite_audio_port(&msg, 41234);
        assert_eq!(port, Some(30000));
        let (head, new_body) = out.split_once("\r\n\r\n").unwrap();
        assert!(new_body.contains("m=audio 41234 RTP/AVP 0 101"));
        assert!(head.contains(&format!("Content-Length: {}", new_body.len())));
        let (same, none) = rewrite_audio_port("ACK sip:bob@x SIP/2.0\r\n\r\n", 1);
        assert_eq!(
            (same.as_str(), none),
            ("ACK sip:bob@x SIP/2.0\r\n\r\n", None)
        );
    }

    #[test]
    fn contacts_point_at_the_proxy() {
        let msg = "SIP/2.0 200 OK\r\nContact: <sip:bob@127.0.0.1:5062;transport=udp>\r\nm: <sip:127.0.0.1:7>\r\n\r\nv=0";
        assert_eq!(
            rewrite_contacts(msg, 9),
            "SIP/2.0 200 OK\r\nContact: <sip:bob@127.0.0.1:9;transport=udp>\r\nm: <sip:127.0.0.1:9>\r\n\r\nv=0"
        );
    }

    #[test]
    fn the_generator_drops_about_the_asked_share() {
        let mut rng = Lcg(7);
        let dropped = (0..10_000).filter(|_| rng.unit() < 0.05).count();
        assert!((400..600).contains(&dropped), "{dropped}");
    }
}

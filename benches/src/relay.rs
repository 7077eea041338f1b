//! An impairing relay for the SIP leg of many concurrent calls, on loopback
//! and without root (the kernel here has no `netem`).
//!
//! It stands in as the SIP trunk: SIP from the gateway goes on to the far end
//! (sipp), and back to wherever the gateway sent from. Contacts are pointed at
//! the relay, so in-dialog requests (BYE) pass through it too. For each call
//! (by Call-ID) that carries SDP it opens one UDP socket and rewrites both
//! sides' `m=audio` port to it; RTP then flows gateway <-> relay <-> sipp, and
//! the relay drops `loss` of it and sends `reorder` of it one packet late, in
//! each direction. SIP itself is dropped at `sip_loss` (0 by default).
//! A call's socket closes a few seconds after its BYE is answered, or after
//! 60 s without a packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Shares of packets to drop or delay, each 0–1.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub reorder: f64,
    pub sip_loss: f64,
}

#[derive(Default, Debug)]
pub struct RelayStats {
    pub rtp_forwarded: AtomicU64,
    pub rtp_dropped: AtomicU64,
    pub rtp_reordered: AtomicU64,
    pub sip_forwarded: AtomicU64,
    pub sip_dropped: AtomicU64,
    /// Per-call media sockets open now, and opened in all.
    pub calls_open: AtomicI64,
    pub calls_total: AtomicU64,
}

pub struct Relay {
    sip_port: u16,
    task: JoinHandle<()>,
    pub stats: Arc<RelayStats>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small deterministic generator, so that a run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

type Ends = Arc<Mutex<(Option<SocketAddr>, Option<SocketAddr>)>>;

struct CallMedia {
    port: u16,
    ends: Ends,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(far_end: SocketAddr, imp: Impairment, seed: u64) -> Relay {
        let sip = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let sip_port = sip.local_addr().unwrap().port();
        let stats = Arc::new(RelayStats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut rng = Lcg(seed);
            let mut calls: HashMap<String, CallMedia> = HashMap::new();
            let mut gateway = None;
            let mut buf = vec![0u8; 65535];
            while let Ok((n, source)) = sip.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let from_far = source == far_end;
                let dest = if from_far {
                    gateway
                } else {
                    gateway = Some(source);
                    Some(far_end)
                };
                let call_id = header(&text, &["call-id:", "i:"]).unwrap_or_default();
                let mut text = rewrite_contacts(&text, sip_port);
                if let Some(announced) = audio_port(&text) {
                    calls.retain(|_, c| !c.task.is_finished());
                    if !calls.contains_key(&call_id) {
                        let seed = (rng.unit() * u64::MAX as f64) as u64;
                        calls.insert(call_id.clone(), open_call(imp, seed, &st).await);
                    }
                    let media = &calls[&call_id];
                    let addr = SocketAddr::from(([127, 0, 0, 1], announced));
                    let mut ends = media.ends.lock().unwrap();
                    if from_far {
                        ends.1 = Some(addr);
                    } else {
                        ends.0 = Some(addr);
                    }
                    drop(ends);
                    text = set_audio_port(&text, media.port);
                }
                if is_final_bye_response(&text) || is_failed_invite_response(&text) {
                    if let Some(media) = calls.remove(&call_id) {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            media.task.abort();
                        });
                    }
                }
                if rng.unit() < imp.sip_loss {
                    st.sip_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(dest) = dest {
                    st.sip_forwarded.fetch_add(1, Ordering::Relaxed);
                    let _ = sip.send_to(text.as_bytes(), dest).await;
                }
            }
        });
        Relay {
            sip_port,
            task,
            stats,
        }
    }

    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }
}

/// Decrements the open-call count when a call's media task ends or is aborted.
struct OpenGuard(Arc<RelayStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.calls_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn open_call(imp: Impairment, seed: u64, stats: &Arc<RelayStats>) -> CallMedia {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a relay port");
    let port = socket.local_addr().unwrap().port();
    let ends: Ends = Arc::new(Mutex::new((None, None)));
    stats.calls_open.fetch_add(1, Ordering::Relaxed);
    stats.calls_total.fetch_add(1, Ordering::Relaxed);
    let guard = OpenGuard(stats.clone());
    let e = ends.clone();
    let task = tokio::spawn(async move {
        let guard = guard;
        let st = &guard.0;
        let mut rng = Lcg(seed);
        let mut buf = vec![0u8; 2048];
        // Per direction (0: towards the far end, 1: towards the gateway), a
        // packet held back to go out after the next one.
        let mut held: [Option<(Vec<u8>, SocketAddr)>; 2] = [None, None];
        loop {
            let Ok(Ok((n, source))) =
                tokio::time::timeout(Duration::from_secs(60), socket.recv_from(&mut buf)).await
            else {
                return;
            };
            let (gateway, far) = *e.lock().unwrap();
            let (dest, dir) = if Some(source) == gateway {
                (far, 0)
            } else if Some(source) == far {
                (gateway, 1)
            } else {
                continue;
            };
            let Some(dest) = dest else { continue };
            if rng.unit() < imp.loss {
                st.rtp_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if held[dir].is_none() && rng.unit() < imp.reorder {
                st.rtp_reordered.fetch_add(1, Ordering::Relaxed);
                held[dir] = Some((buf[..n].to_vec(), dest));
                continue;
            }
            let _ = socket.send_to(&buf[..n], dest).await;
            st.rtp_forwarded.fetch_add(1, Ordering::Relaxed);
            if let Some((late, to)) = held[dir].take() {
                let _ = socket.send_to(&late, to).await;
                st.rtp_forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    CallMedia { port, ends, task }
}

/// The value of the first header with one of these (lower-case) names.
fn header(message: &str, names: &[&str]) -> Option<String> {
    let head = message.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|h| {
        let lower = h.to_ascii_lowercase();
        let name = names.iter().find(|n| lower.starts_with(*n))?;
        Some(h[name.len()..].trim().to_string())
    })
}

fn is_final_bye_response(message: &str) -> bool {
    message.starts_with("SIP/2.0 2")
        && header(message, &["cseq:"]).is_some_and(|c| c.ends_with("BYE"))
}

fn is_failed_invite_response(message: &str) -> bool {
    let code: u16 = message.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
    message.starts_with("SIP/2.0 ")
        && code >= 300
        && header(message, &["cseq:"]).is_some_and(|c| c.ends_with("INVITE"))
}

/// Points every Contact header's URI at 127.0.0.1:`port` (the relay).
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
            let (before, user_part, after) = (&h[..start], &rest[..user], &rest[end..]);
            format!("{before}{user_part}127.0.0.1:{port}{after}")
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

/// The port of the SDP body's `m=audio` line, if the message has one.
fn audio_port(message: &str) -> Option<u16> {
    let (_, body) = message.split_once("\r\n\r\n")?;
    body.split("\r\n")
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
}

/// Replaces the `m=audio` port and fixes Content-Length.
fn set_audio_port(message: &str, port: u16) -> String {
    let Some((head, body)) = message.split_once("\r\n\r\n") else {
        return message.to_string();
    };
    let body: Vec<String> = body
        .split("\r\n")
        .map(|line| match line.strip_prefix("m=audio ") {
            Some(rest) => {
                let tail = rest.split_once(' ').map_or("", |(_, t)| t);
                format!("m=audio {port} {tail}")
            }
            None => line.to_string(),
        })
        .collect();
    let body = body.join("\r\n");
    let head: Vec<String> = head
        .split("\r\n")
        .map(|h| {
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("content-length:") || lower.starts_with("l:") {
                format!("Content-Length: {}", body.len())
            } else {
                h.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_sdp_and_contacts() {
        let body = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 0\r\n";
        let msg = format!(
            "SIP/2.0 200 OK\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\nContact: <sip:u@127.0.0.1:5070;transport=udp>\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(audio_port(&msg), Some(30000));
        let out = set_audio_port(&rewrite_contacts(&msg, 9), 41234);
        let (head, new_body) = out.split_once("\r\n\r\n").unwrap();
        assert!(new_body.contains("m=audio 41234 RTP/AVP 0"));
        assert!(head.contains(&format!("Content-Length: {}", new_body.len())));
        assert!(head.contains("Contact: <sip:u@127.0.0.1:9;transport=udp>"));
        assert_eq!(header(&msg, &["call-id:", "i:"]).as_deref(), Some("abc"));
        assert!(!is_final_bye_response(&msg));
        assert!(is_final_bye_response(
            "SIP/2.0 200 OK\r\nCSeq: 2 BYE\r\n\r\n"
        ));
        assert!(is_failed_invite_response(
            "SIP/2.0 503 Unavailable\r\nCSeq: 1 INVITE\r\n\r\n"
        ));
    }
}

//! A SIP flood for the hardening tests: from one source address, a mix of
//! garbage and valid-looking requests (INVITEs to users nobody has,
//! OPTIONS, REGISTER, BYE/ACK/CANCEL outside any dialog, requests missing
//! mandatory headers, another SIP version) at a fixed rate, while a second
//! task counts the responses by status.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// What one flood sent and got back.
#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    pub sent: u64,
    /// Responses by status code.
    pub answers: BTreeMap<u16, u64>,
}

impl FloodReport {
    pub fn answered(&self) -> u64 {
        self.answers.values().sum()
    }

    pub fn count(&self, status: u16) -> u64 {
        self.answers.get(&status).copied().unwrap_or(0)
    }
}

/// Kinds of request in the flood; request `n` is of kind `n % KINDS`.
pub const KINDS: u64 = 10;

/// Request `n` of the flood, from `local` to `target`: one of [`KINDS`]
/// kinds in turn.
pub fn request(n: u64, local: SocketAddr, target: SocketAddr) -> Vec<u8> {
    let call_id = format!("flood-{n}-{}", local.port());
    let head = |method: &str, uri: &str, cseq_method: &str, extra: &str| {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-fl{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:scan@{local}>;tag=f{n}\r\nTo: <{uri}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 {cseq_method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    let user_uri = format!("sip:u{}@{target}", n % 1000);
    match n % KINDS {
        0 => {
            // Bytes that are not SIP at all.
            let len = 16 + (n * 7919 % 300) as usize;
            (0..len)
                .map(|i| ((n as usize * 31 + i * 17) % 251) as u8)
                .collect()
        }
        1 => head(
            "INVITE",
            &user_uri,
            "INVITE",
            "Contact: <sip:scan@127.0.0.1>\r\n",
        )
        .into_bytes(),
        2 => head("OPTIONS", &format!("sip:{target}"), "OPTIONS", "").into_bytes(),
        3 => head(
            "REGISTER",
            &format!("sip:{target}"),
            "REGISTER",
            "Contact: <sip:scan@127.0.0.1>\r\nExpires: 60\r\n",
        )
        .into_bytes(),
        4 => head("BYE", &user_uri, "BYE", "").into_bytes(),
        5 => head("ACK", &user_uri, "ACK", "").into_bytes(),
        6 => head("CANCEL", &user_uri, "CANCEL", "").into_bytes(),
        // No Call-ID, no CSeq.
        7 => format!(
            "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-nc{n}\r\n\
             From: <sip:scan@{local}>;tag=n{n}\r\nTo: <sip:{target}>\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
        8 => head("OPTIONS", &format!("sip:{target}"), "OPTIONS", "")
            .replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1)
            .into_bytes(),
        // An INVITE that may not be forwarded any further.
        _ => head("INVITE", &user_uri, "INVITE", "")
            .replacen("Max-Forwards: 70", "Max-Forwards: 0", 1)
            .into_bytes(),
    }
}

/// Sends `per_second` requests a second from `source` to `target` for
/// `duration`, and counts the responses that arrive until a second after.
pub async fn flood(
    source: IpAddr,
    target: SocketAddr,
    per_second: u32,
    duration: Duration,
) -> FloodReport {
    let socket = Arc::new(
        UdpSocket::bind((source, 0))
            .await
            .expect("bind the flood socket"),
    );
    let local = socket.local_addr().unwrap();
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let reader = {
        let (socket, answers) = (socket.clone(), answers.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                let status = text
                    .strip_prefix("SIP/2.0 ")
                    .and_then(|rest| rest.get(..3))
                    .and_then(|code| code.parse::<u16>().ok())
                    .unwrap_or(0);
                *answers.lock().unwrap().entry(status).or_insert(0) += 1;
            }
        })
    };
    // Batches every 10 ms keep the rate even without a timer per packet.
    let per_tick = (per_second / 100).max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let end = Instant::now() + duration;
    let mut sent = 0;
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let _ = socket.send_to(&request(sent, local, target), target).await;
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    reader.abort();
    let answers = answers.lock().unwrap().clone();
    FloodReport { sent, answers }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Tasks alive on the current tokio runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

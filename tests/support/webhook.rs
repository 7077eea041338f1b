//! A webhook receiver for the call records: plain HTTP/1.1 on a free
//! loopback port. Each record's first attempt is answered 500, its second
//! has its connection dropped unanswered, the third on get 200; every
//! request's signature is checked against the shared secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the receiver saw.
#[derive(Default, Debug)]
pub struct Received {
    /// Attempts per record id.
    pub attempts: HashMap<String, u32>,
    /// Records accepted (200), in order.
    pub accepted: Vec<Value>,
    /// Requests whose signature did not verify, or whose header id did
    /// not match the body's.
    pub bad: Vec<String>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let state = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, key.clone(), state.clone()));
            }
        });
        Receiver { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/cdr", self.addr)
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.received.lock().unwrap().accepted.clone()
    }
}

async fn serve(mut stream: TcpStream, key: hmac::Key, state: Arc<Mutex<Received>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start) = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
        }
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < body_start + len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[body_start..body_start + len];
    let signature = header("x-gangway-signature").unwrap_or_default();
    let id = header("x-gangway-record-id").unwrap_or_default();
    let record: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let attempt = {
        let mut s = state.lock().unwrap();
        let ok = signature
            .strip_prefix("sha256=")
            .and_then(decode_hex)
            .is_some_and(|tag| hmac::verify(&key, body, &tag).is_ok());
        if !ok || record["id"] != id.as_str() || !head.starts_with("POST /cdr HTTP/1.1") {
            s.bad
                .push(format!("{head}\n{}", String::from_utf8_lossy(body)));
        }
        let n = s.attempts.entry(id).or_default();
        *n += 1;
        let attempt = *n;
        if attempt >= 3 {
            s.accepted.push(record);
        }
        attempt
    };
    let response: &[u8] = match attempt {
        1 => {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        // Dropped: no answer at all.
        2 => return,
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    };
    let _ = stream.write_all(response).await;
    let _ = stream.shutdown().await;
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

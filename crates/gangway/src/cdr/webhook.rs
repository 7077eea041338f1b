//! The webhook sink: each record POSTed as JSON, signed, retried with
//! exponential back-off. One task, one record at a time, behind a bounded
//! queue: a slow or dead receiver costs queued records (counted and
//! logged when they are dropped), never a call's time. At a shutdown
//! whose flush ran out of time, what it still holds is given up at once
//! (counted as dropped, one warning with the count).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::http::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use super::metrics::CdrMetrics;
use crate::config::{CdrSection, WebhookUrl};

/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Gangway-Signature";
/// The record's id, for receivers that deduplicate without parsing.
pub const ID_HEADER: &str = "X-Gangway-Record-Id";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The wait before attempt `attempt` (2 is the first retry): the initial
/// back-off doubled per further attempt, capped.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(2).min(20);
    initial.saturating_mul(1 << doublings).min(max)
}

/// What the webhook task is given.
pub enum Job {
    /// A record: its id and its JSON.
    Record { id: String, body: String },
    /// Answered once every record queued before is delivered or given up.
    Flush(oneshot::Sender<()>),
}

pub struct Webhook {
    url: WebhookUrl,
    secret: Vec<u8>,
    timeout: Duration,
    attempts: u32,
    initial: Duration,
    max: Duration,
    metrics: Arc<CdrMetrics>,
}

/// Starts the task; records are queued on what it returns.
pub fn start(
    c: &CdrSection,
    url: WebhookUrl,
    metrics: Arc<CdrMetrics>,
    abandon: watch::Receiver<bool>,
) -> (mpsc::Sender<Job>, Arc<Notify>) {
    let (tx, rx) = mpsc::channel(c.webhook_queue);
    let hook = Webhook {
        url,
        secret: c.webhook_secret.as_bytes().to_vec(),
        timeout: Duration::from_millis(c.webhook_timeout_ms),
        attempts: c.webhook_max_attempts,
        initial: Duration::from_millis(c.webhook_backoff_initial_ms),
        max: Duration::from_millis(c.webhook_backoff_max_ms),
        metrics,
    };
    let gave_up = Arc::new(Notify::new());
    tokio::spawn(hook.run(rx, abandon, gave_up.clone()));
    (tx, gave_up)
}

/// Queues a record without waiting; a full queue drops it.
pub fn queue(tx: &mpsc::Sender<Job>, job: Job, metrics: &CdrMetrics) {
    if let Err(e) = tx.try_send(job) {
        metrics.dropped("webhook");
        let id = match &e {
            mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => match j {
                Job::Record { id, .. } => id.as_str(),
                Job::Flush(_) => "",
            },
        };
        warn!(record = %id, "call records webhook queue full: record dropped");
    }
}

impl Webhook {
    /// Delivers records in order until told to abandon: then what is held
    /// is given up and `gave_up` notified, so the process can exit knowing
    /// the loss was counted and logged.
    async fn run(
        self,
        mut rx: mpsc::Receiver<Job>,
        mut abandon: watch::Receiver<bool>,
        gave_up: Arc<Notify>,
    ) {
        loop {
            let job = tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                _ = abandon.wait_for(|a| *a) => break self.give_up(0, &mut rx, &gave_up),
            };
            let (id, body) = match job {
                Job::Record { id, body } => (id, body),
                Job::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            if *abandon.borrow() {
                break self.give_up(1, &mut rx, &gave_up);
            }
            tokio::select! {
                () = self.deliver(&id, &body) => {}
                _ = abandon.wait_for(|a| *a) => break self.give_up(1, &mut rx, &gave_up),
            }
        }
    }

    /// Shutdown: `held` records (the one in hand) and every queued one are
    /// dropped, counted and logged once.
    fn give_up(&self, held: u64, rx: &mut mpsc::Receiver<Job>, gave_up: &Notify) {
        let mut lost = held;
        while let Ok(job) = rx.try_recv() {
            match job {
                Job::Record { .. } => lost += 1,
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
        rx.close();
        if lost > 0 {
            self.metrics.dropped_many("webhook", lost);
            warn!(
                records = lost,
                "shutting down: call records not delivered to the webhook are dropped"
            );
        }
        gave_up.notify_one();
    }

    async fn deliver(&self, id: &str, body: &str) {
        let signature = signature(&self.secret, body.as_bytes());
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                self.metrics.retried();
                tokio::time::sleep(backoff(attempt, self.initial, self.max)).await;
            }
            let sent = tokio::time::timeout(self.timeout, self.post(id, body, &signature)).await;
            let problem = match sent {
                Ok(Ok(status)) if status.is_success() => {
                    self.metrics.written("webhook");
                    return;
                }
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => "timed out".to_string(),
            };
            self.metrics.attempt_failed();
            info!(record = %id, attempt, "call record webhook attempt failed: {problem}");
        }
        self.metrics.failed("webhook");
        warn!(record = %id, attempts = self.attempts, "call record not delivered to the webhook: given up");
    }

    async fn post(&self, id: &str, body: &str, signature: &str) -> Result<StatusCode, String> {
        let u = &self.url;
        let stream = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let name = if u.host.contains(':') {
            format!("[{}]", u.host)
        } else {
            u.host.clone()
        };
        let host = if u.port == 80 {
            name
        } else {
            format!("{name}:{}", u.port)
        };
        let request = Request::post(u.path.as_str())
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "gangway-cdr")
            .header(SIGNATURE_HEADER, signature)
            .header(ID_HEADER, id)
            .body(body.to_string())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        Ok(response.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_test_case_2() {
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A receiver that takes the connection and never answers: the first
    /// record hangs in its attempt, the others queue. Abandoned, all three
    /// are counted as dropped, a flush marker is still answered, and a
    /// record queued afterwards is dropped too.
    #[tokio::test]
    async fn abandoned_records_are_counted_as_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                let _ = accepted_tx.send(()).await;
            }
        });
        let c = CdrSection {
            webhook_timeout_ms: 60_000,
            ..CdrSection::default()
        };
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/cdr")).unwrap();
        let metrics = Arc::new(CdrMetrics::default());
        let (abandon, abandoned) = watch::channel(false);
        let (tx, gave_up) = start(&c, url, metrics.clone(), abandoned);
        let record = |id: &str| Job::Record {
            id: id.into(),
            body: "{}".into(),
        };
        for id in ["a", "b", "c"] {
            queue(&tx, record(id), &metrics);
        }
        accepted.recv().await.expect("the first attempt connects");
        assert_eq!(metrics.dropped_count("webhook"), 0);
        abandon.send_replace(true);
        gave_up.notified().await;
        assert_eq!(metrics.dropped_count("webhook"), 3);
        // Past the abandon the queue is closed: a record is dropped at once.
        queue(&tx, record("d"), &metrics);
        assert_eq!(metrics.dropped_count("webhook"), 4);
        let (done, _flushed) = oneshot::channel();
        assert!(tx.send(Job::Flush(done)).await.is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u64> = (2..=6)
            .map(|a| backoff(a, i, m).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![500, 1000, 2000, 3000, 3000]);
        assert_eq!(backoff(u32::MAX, i, m), m);
    }
}

//! Call detail records: one JSON record per ended call, whichever front
//! end placed or took it, to a JSON-lines file and/or a signed webhook
//! (`[cdr]`; both off by default).
//!
//! - `record.rs`: the record and the [`Assembler`](record::Assembler) that
//!   joins a call's facts (from its table, via the `CallDriver`) with its
//!   media report (from its shard), sans IO;
//! - `missed.rs`: the record of an incoming call no connection took;
//! - `file.rs`, `webhook.rs`: the sinks, thin and behind bounded queues;
//! - `metrics.rs`: `gangway_cdr_*`.
//!
//! The collector is one task: it owns the assembler and hands finished
//! records to the sinks. Nothing here waits on a call or slows one down:
//! every hand-over is a `try_send`, and what a full queue refuses is
//! counted and logged. Only a graceful shutdown waits, for
//! [`Cdr::flush`], up to `cdr.flush_timeout_secs`.

pub mod file;
pub mod metrics;
pub mod missed;
pub mod record;
pub mod webhook;

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_media::{MediaReport, MediaReportTx};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use crate::config::{CdrSection, WebhookUrl};
use metrics::CdrMetrics;
use missed::MissedFacts;
use record::{Assembler, CallFacts};

/// Calls and media reports waiting for the collector.
const QUEUE: usize = 4096;

/// What the collector is handed.
enum Ended {
    Call(Box<CallFacts>),
    Missed(Box<MissedFacts>),
    /// Send every record still held to the sinks, then answer once the
    /// sinks have dealt with everything queued before.
    Flush(oneshot::Sender<()>),
}

/// The gateway's way in: ended calls go here.
pub struct Cdr {
    calls: Option<mpsc::Sender<Ended>>,
    metrics: Arc<CdrMetrics>,
    flush_timeout: Duration,
    /// Tells the webhook to give up what it still holds (counted, logged).
    abandon: watch::Sender<bool>,
    /// The webhook's answer that it has.
    gave_up: Option<Arc<Notify>>,
}

impl Cdr {
    /// Whether records are kept at all.
    pub fn enabled(&self) -> bool {
        self.calls.is_some()
    }

    /// An ended call's facts, without waiting.
    pub fn call(&self, facts: CallFacts) {
        self.hand_over(Ended::Call(Box::new(facts)));
    }

    /// A missed incoming call's facts, without waiting.
    pub fn missed(&self, facts: MissedFacts) {
        self.hand_over(Ended::Missed(Box::new(facts)));
    }

    fn hand_over(&self, ended: Ended) {
        if let Some(tx) = &self.calls {
            if tx.try_send(ended).is_err() {
                self.metrics.dropped("records");
                warn!("call records queue full: a call's record is lost");
            }
        }
    }

    /// At a graceful shutdown: every record held reaches the file and is
    /// attempted at the webhook, for up to `cdr.flush_timeout_secs`; what
    /// the webhook still holds then is given up ([`Cdr::abandon`]).
    pub async fn flush(&self) {
        let Some(tx) = &self.calls else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        let flushing = async {
            tx.send(Ended::Flush(done)).await.ok()?;
            flushed.await.ok()
        };
        match tokio::time::timeout(self.flush_timeout, flushing).await {
            Ok(Some(())) => info!("call records flushed"),
            _ => {
                let secs = self.flush_timeout.as_secs();
                warn!(secs, "call records not flushed in time");
                self.abandon().await;
            }
        }
    }

    /// The webhook gives up the records it still holds (they are counted in
    /// `gangway_cdr_dropped_total{sink="webhook"}`, with one warning).
    /// Waits (up to a second) until it has: the process may exit then.
    pub async fn abandon(&self) {
        self.abandon.send_replace(true);
        if let Some(gave_up) = &self.gave_up {
            let _ = tokio::time::timeout(Duration::from_secs(1), gave_up.notified()).await;
        }
    }
}

/// Starts the collector and the configured sinks; also returns where the
/// shards send media reports (`None` when records are off).
pub fn start(
    c: &CdrSection,
    metrics: Arc<CdrMetrics>,
) -> std::io::Result<(Cdr, Option<MediaReportTx>)> {
    let file = if c.file.is_empty() {
        None
    } else {
        let sink = file::JsonLines::open(c.file.as_ref(), c.rotate, c.max_file_bytes)?;
        Some(file::start(sink, metrics.clone())?)
    };
    let (abandon, abandoned) = watch::channel(false);
    let (hook, gave_up) = match WebhookUrl::parse(&c.webhook_url) {
        Ok(url) if !c.webhook_url.is_empty() => {
            let (hook, gave_up) = webhook::start(c, url, metrics.clone(), abandoned);
            (Some(hook), Some(gave_up))
        }
        _ => (None, None),
    };
    let flush_timeout = Duration::from_secs(c.flush_timeout_secs);
    if file.is_none() && hook.is_none() {
        let cdr = Cdr {
            calls: None,
            metrics,
            flush_timeout,
            abandon,
            gave_up,
        };
        return Ok((cdr, None));
    }
    info!(file = %c.file, webhook = %c.webhook_url, "call detail records on");
    let (calls_tx, calls_rx) = mpsc::channel(QUEUE);
    let (media_tx, media_rx) = mpsc::channel(QUEUE);
    let sinks = Sinks {
        file,
        hook,
        metrics: metrics.clone(),
    };
    tokio::spawn(collect(calls_rx, media_rx, sinks));
    let cdr = Cdr {
        calls: Some(calls_tx),
        metrics,
        flush_timeout,
        abandon,
        gave_up,
    };
    Ok((cdr, Some(media_tx)))
}

struct Sinks {
    file: Option<SyncSender<file::Line>>,
    hook: Option<mpsc::Sender<webhook::Job>>,
    metrics: Arc<CdrMetrics>,
}

async fn collect(
    mut calls: mpsc::Receiver<Ended>,
    mut media: mpsc::Receiver<MediaReport>,
    sinks: Sinks,
) {
    let mut assembler = Assembler::default();
    let mut overflowed = 0;
    let mut flushing = None;
    loop {
        let deadline = assembler.poll_timeout();
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
        tokio::select! {
            ended = calls.recv() => match ended {
                Some(Ended::Call(facts)) => assembler.on_call(Instant::now(), *facts),
                Some(Ended::Missed(facts)) => assembler.on_missed(&facts),
                Some(Ended::Flush(done)) => flushing = Some(done),
                None => break,
            },
            Some(report) = media.recv() => assembler.on_media(Instant::now(), report),
            () = sleep, if deadline.is_some() => assembler.handle_timeout(Instant::now()),
        }
        while let Some(record) = assembler.poll_output() {
            sinks.send(&record);
        }
        if assembler.overflowed > overflowed {
            overflowed = assembler.overflowed;
            sinks.metrics.dropped("records");
            warn!("too many call records waiting for their media: one went without");
        }
        // A flush waits for the media of the calls that have ended (at
        // most `MEDIA_WAIT`), then for the sinks.
        if assembler.waiting() == 0 {
            if let Some(done) = flushing.take() {
                sinks.flush(done);
            }
        }
    }
    // The gateway is gone: what still waits goes without its media.
    assembler.handle_timeout(Instant::now() + record::MEDIA_WAIT);
    while let Some(record) = assembler.poll_output() {
        sinks.send(&record);
    }
}

impl Sinks {
    fn send(&self, record: &record::Record) {
        let body = match serde_json::to_string(record) {
            Ok(body) => body,
            Err(e) => return warn!("cannot encode a call record: {e}"),
        };
        if let Some(hook) = &self.hook {
            let job = webhook::Job::Record {
                id: record.id.clone(),
                body: body.clone(),
            };
            webhook::queue(hook, job, &self.metrics);
        }
        if let Some(tx) = &self.file {
            file::queue(tx, file::Line::Record(body), &self.metrics);
        }
    }

    /// Answers `done` once each sink has dealt with what it was given
    /// before (written; delivered or given up).
    fn flush(&self, done: oneshot::Sender<()>) {
        let file = self.file.as_ref().and_then(|tx| {
            let (marked, written) = oneshot::channel();
            tx.try_send(file::Line::Flush(marked))
                .ok()
                .map(|()| written)
        });
        let hook = self.hook.clone();
        tokio::spawn(async move {
            if let Some(written) = file {
                let _ = written.await;
            }
            if let Some(hook) = hook {
                let (marked, delivered) = oneshot::channel();
                if hook.send(webhook::Job::Flush(marked)).await.is_ok() {
                    let _ = delivered.await;
                }
            }
            let _ = done.send(());
        });
    }
}

/// A fresh record id: 128 random bits in hex.
pub fn record_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: unique enough from the clock and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes[..8].copy_from_slice(&t.to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

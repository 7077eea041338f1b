//! The call records' counters (`gangway_cdr_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

#[derive(Default)]
pub struct CdrMetrics {
    /// Records written (`sink="file"`) or accepted by the webhook (`webhook`).
    records: Family<Labels, Counter>,
    /// Records a sink gave up on (write error; webhook attempts exhausted).
    failures: Family<Labels, Counter>,
    /// Records dropped because a sink's queue was full (or, webhook, at
    /// a shutdown that could not wait for them).
    dropped: Family<Labels, Counter>,
    webhook_attempt_failures: Counter,
    webhook_retries: Counter,
}

impl CdrMetrics {
    pub fn register(registry: &mut Registry) -> CdrMetrics {
        let m = CdrMetrics::default();
        registry.register(
            "cdr_records",
            "Call detail records delivered, by sink (file, webhook)",
            m.records.clone(),
        );
        registry.register(
            "cdr_failures",
            "Call detail records a sink gave up on, by sink",
            m.failures.clone(),
        );
        registry.register(
            "cdr_dropped",
            "Call detail records dropped on a full queue or at shutdown, by sink (or records: not built)",
            m.dropped.clone(),
        );
        registry.register(
            "cdr_webhook_attempt_failures",
            "Webhook attempts that failed (non-2xx, connect error, timeout)",
            m.webhook_attempt_failures.clone(),
        );
        registry.register(
            "cdr_webhook_retries",
            "Webhook attempts after the first",
            m.webhook_retries.clone(),
        );
        // Every family has its samples from the start, so dashboards and
        // `increase()` see the first record (docs/operations.md, Metrics).
        for sink in ["file", "webhook"] {
            let _ = m.records.get_or_create(&[("sink", sink)]);
            let _ = m.failures.get_or_create(&[("sink", sink)]);
            let _ = m.dropped.get_or_create(&[("sink", sink)]);
        }
        let _ = m.dropped.get_or_create(&[("sink", "records")]);
        m
    }

    pub fn written(&self, sink: &'static str) {
        self.records.get_or_create(&[("sink", sink)]).inc();
    }

    pub fn failed(&self, sink: &'static str) {
        self.failures.get_or_create(&[("sink", sink)]).inc();
    }

    pub fn dropped(&self, sink: &'static str) {
        self.dropped.get_or_create(&[("sink", sink)]).inc();
    }

    pub fn dropped_many(&self, sink: &'static str, n: u64) {
        self.dropped.get_or_create(&[("sink", sink)]).inc_by(n);
    }

    #[cfg(test)]
    pub fn dropped_count(&self, sink: &'static str) -> u64 {
        self.dropped.get_or_create(&[("sink", sink)]).get()
    }

    pub fn attempt_failed(&self) {
        self.webhook_attempt_failures.inc();
    }

    pub fn retried(&self) {
        self.webhook_retries.inc();
    }
}

//! Prometheus metrics of one server (its own registry: two servers in one
//! process do not mix their counts).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Op {
    pub(crate) op: &'static str,
}

/// Every metric the server exports.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) refused: Family<Reason, Counter>,
    pub(crate) closed: Family<Reason, Counter>,
    pub(crate) pushed: Counter,
    pub(crate) queue_drops: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) requests: Family<Op, Counter>,
    pub(crate) request_errors: Family<Reason, Counter>,
    pub(crate) request_seconds: Histogram,
    pub(crate) store_pending_keys: Gauge,
    pub(crate) store_mark_updates: Gauge,
    pub(crate) store_durable_batches: Gauge,
    pub(crate) store_fsyncs: Gauge,
    pub(crate) store_rocksdb_bytes: Gauge,
    pub(crate) store_flush_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) store_flush_rounds: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("readmark");
        let m = Metrics {
            connections: Gauge::default(),
            refused: Family::default(),
            closed: Family::default(),
            pushed: Counter::default(),
            queue_drops: Counter::default(),
            resyncs: Counter::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            // 1 µs to ~1 s.
            request_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 11)),
            store_pending_keys: Gauge::default(),
            store_mark_updates: Gauge::default(),
            store_durable_batches: Gauge::default(),
            store_fsyncs: Gauge::default(),
            store_rocksdb_bytes: Gauge::default(),
            store_flush_seconds: Gauge::default(),
            store_flush_rounds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "WebSocket connections the server closed, by reason",
            m.closed.clone(),
        );
        registry.register(
            "events_pushed",
            "Frames queued for clients by the event fan-out",
            m.pushed.clone(),
        );
        registry.register(
            "queue_drops",
            "Pushes dropped because a connection's send queue was full",
            m.queue_drops.clone(),
        );
        registry.register(
            "resyncs",
            "resync frames sent (after drops or a lagging subscription)",
            m.resyncs.clone(),
        );
        registry.register("requests", "Client requests, by op", m.requests.clone());
        registry.register(
            "request_errors",
            "Client requests answered with an error, by code",
            m.request_errors.clone(),
        );
        registry.register(
            "request_seconds",
            "Time to carry out a client request",
            m.request_seconds.clone(),
        );
        registry.register(
            "store_pending_keys",
            "Keys with updates not yet written to RocksDB",
            m.store_pending_keys.clone(),
        );
        registry.register(
            "store_mark_updates",
            "Mark updates accepted since the store opened",
            m.store_mark_updates.clone(),
        );
        registry.register(
            "store_durable_batches",
            "RocksDB write batches issued by flushes since the store opened",
            m.store_durable_batches.clone(),
        );
        registry.register(
            "store_fsyncs",
            "fsyncs since the store opened",
            m.store_fsyncs.clone(),
        );
        registry.register(
            "store_rocksdb_bytes",
            "Memory RocksDB holds (memtables, table readers, block cache)",
            m.store_rocksdb_bytes.clone(),
        );
        registry.register(
            "store_flush_seconds_total",
            "Time the store's flush rounds took since it opened (divide by rounds for the mean latency)",
            m.store_flush_seconds.clone(),
        );
        registry.register(
            "store_flush_rounds",
            "Flush rounds since the store opened",
            m.store_flush_rounds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The store's figures now, then the text exposition format.
    pub(crate) fn render(&self, store: Option<&readmark::Store>) -> String {
        if let Some(store) = store {
            self.store_figures(store);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn store_figures(&self, store: &readmark::Store) {
        let s = store.stats();
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.store_pending_keys.set(g(s.pending_keys));
        self.store_mark_updates.set(g(s.mark_updates));
        self.store_durable_batches.set(g(s.durable_batches));
        self.store_fsyncs.set(g(s.fsyncs));
        self.store_flush_rounds.set(g(s.flush_rounds));
        self.store_flush_seconds.set(s.flush_time.as_secs_f64());
        if let Ok(m) = store.memory_usage() {
            self.store_rocksdb_bytes.set(g(m.rocksdb_bytes()));
        }
    }
}

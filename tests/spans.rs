//! L2 calls and loads are `tracing` spans with OpenTelemetry's field names,
//! so a service that bridges `tracing` to OpenTelemetry gets client spans
//! for its cache with no glue. A real server; the subscriber below records
//! each span's name and fields.

use resilient_cache_testkit as common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheOptions, CacheService};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Spans = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// Records every new span: its name and its fields as text.
struct Recorder(Spans);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn l2_calls_and_loads_are_spans_with_opentelemetry_fields() {
    let redis = RedisServer::start();
    let spans: Spans = Arc::default();
    let _guard = tracing::subscriber::set_default(Recorder(spans.clone()));
    // One thread: every task runs under the subscriber set above.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let service = CacheService::new(redis.config()).await.unwrap();
        let c = service
            .create_cache::<String>(CacheOptions::new("spans").l2_ttl(Duration::from_secs(60)))
            .unwrap();
        c.set("k", "v".into()).await;
        c.get_or_load("loaded", async || Ok::<_, std::io::Error>("l".to_string()))
            .await
            .unwrap();
    });
    let spans = spans.lock().unwrap();
    let client: Vec<&BTreeMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "redis")
        .map(|(_, f)| f)
        .collect();
    assert!(!client.is_empty(), "no L2 span among {spans:?}");
    for f in &client {
        assert_eq!(f["db.system"], "redis");
        assert_eq!(f["otel.kind"], "client");
        assert_eq!(f["db.namespace"], "0");
        assert!(f["server.address"].contains("127.0.0.1"), "{f:?}");
    }
    let operations: Vec<&str> = client.iter().map(|f| f["db.operation.name"].as_str()).collect();
    assert!(
        operations.contains(&"SET"),
        "the write is a SET span: {operations:?}"
    );
    assert!(
        operations.contains(&"EVALSHA"),
        "the load's fenced store: {operations:?}"
    );
    let load = spans
        .iter()
        .find(|(name, _)| name == "resilient_cache.load")
        .map(|(_, f)| f)
        .expect("a load span");
    assert_eq!(load["cache.namespace"], "spans");
    assert_eq!(load["cache.keys"], "1");
}

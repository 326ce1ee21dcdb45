//! L2 calls and loads are `tracing` spans with OpenTelemetry's field names,
//! so a service that bridges `tracing` to OpenTelemetry gets client spans
//! for its cache with no glue. Checked through OpenTelemetry's own SDK
//! (`tracing-opentelemetry` into an in-memory exporter), against a real server.

use resilient_cache_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::RedisServer;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use resilient_cache::{CacheOptions, CacheService};
use tracing_subscriber::layer::SubscriberExt;

fn attributes(span: &SpanData) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_string(), kv.value.to_string()))
        .collect()
}

#[test]
fn l2_calls_and_loads_are_opentelemetry_client_spans() {
    let redis = RedisServer::start();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("spans-test")));
    let _guard = tracing::subscriber::set_default(subscriber);
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
        // Without the lease fence a write is one command.
        let plain = service
            .create_cache::<String>(
                CacheOptions::new("spans-plain")
                    .l2_ttl(Duration::from_secs(60))
                    .lease_fence(false),
            )
            .unwrap();
        plain.set("k", "v".into()).await;
        // The caller's own span (a request, say): the load is its child.
        let request = tracing::info_span!("request");
        tracing::Instrument::instrument(
            c.get_or_load("loaded", async || Ok::<_, std::io::Error>("l".to_string())),
            request,
        )
        .await
        .unwrap();
    });
    drop(rt);
    let spans = exporter.get_finished_spans().unwrap();
    let client: Vec<&SpanData> = spans.iter().filter(|s| s.span_kind == SpanKind::Client).collect();
    assert!(!client.is_empty(), "no client span among {spans:?}");
    for span in &client {
        let a = attributes(span);
        assert_eq!(a["db.system"], "redis", "{a:?}");
        assert_eq!(a["db.namespace"], "0", "{a:?}");
        assert_eq!(
            a["db.operation.name"], span.name,
            "the span is named by its operation"
        );
        assert!(a["server.address"].contains("127.0.0.1"), "{a:?}");
    }
    let names: Vec<&str> = client.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names[0], "PIPELINE",
        "a fenced write is one request, its lease's end and its SET: {names:?}"
    );
    assert!(
        names.contains(&"SET"),
        "a write without the fence is a SET span: {names:?}"
    );
    let load = spans
        .iter()
        .find(|s| s.name == "resilient_cache.load")
        .expect("a load span");
    let a = attributes(load);
    assert_eq!(
        (a["cache.namespace"].as_str(), a["cache.keys"].as_str()),
        ("spans", "1")
    );
    // The load's lease and its fenced store are both scripts: the store ends last.
    let store = client
        .iter()
        .rfind(|s| s.name == "EVALSHA")
        .expect("the load's fenced store is a span");
    assert_eq!(
        store.parent_span_id,
        load.span_context.span_id(),
        "the store is a child of its load: one trace"
    );
    assert_eq!(store.span_context.trace_id(), load.span_context.trace_id());
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the caller's span");
    assert_eq!(
        load.parent_span_id,
        request.span_context.span_id(),
        "the load is a child of the caller's span"
    );
}

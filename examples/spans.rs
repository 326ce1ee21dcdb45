//! The cache's traces, exported by OpenTelemetry to stdout:
//! `cargo run -p resilient-cache --example spans`
//!
//! Every L2 call is a `redis` client span and every load a
//! `resilient_cache.load` span, with OpenTelemetry's field names
//! (`db.system`, `db.operation.name`, `db.namespace`, `server.address`,
//! `otel.kind`, `otel.name`). Here `tracing-opentelemetry` bridges them into
//! OpenTelemetry's SDK, whose stdout exporter prints each span as it ends:
//! its name (the Redis command), kind (`Client`), trace and parent ids (a
//! load's store is a child of the load) and attributes. Swap the exporter
//! for OTLP and the same spans reach a collector. Uses Redis at
//! `CACHE_REDIS_URL` (default `redis://127.0.0.1:6379`); without one, the
//! spans show the refused calls.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> resilient_cache::Result<()> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("spans-example")));
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");

    let service = CacheService::new(CacheFactoryConfig::from_env()?).await?;
    let users = service.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))?;
    users.set("42", "Ada".into()).await;
    users
        .get_or_load("43", async || Ok::<_, std::io::Error>("Grace".to_string()))
        .await
        .ok();
    users.delete("42").await;
    let _ = provider.shutdown();
    Ok(())
}

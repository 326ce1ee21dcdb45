//! The cache's spans on stdout: `cargo run -p resilient-cache --example spans`
//!
//! Every L2 call is a `redis` client span and every load a
//! `resilient_cache.load` span, with OpenTelemetry's field names
//! (`db.system`, `db.operation.name`, `db.namespace`, `server.address`,
//! `otel.kind`), so a `tracing`-to-OpenTelemetry bridge exports them as
//! they are. Here `tracing-subscriber` prints each span when it closes,
//! with its fields and duration. Uses Redis at `CACHE_REDIS_URL` (default
//! `redis://127.0.0.1:6379`); without one, the spans show the refused calls.

use std::time::Duration;

use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main(flavor = "current_thread")]
async fn main() -> resilient_cache::Result<()> {
    tracing_subscriber::fmt()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stdout)
        .init();
    let service = CacheService::new(CacheFactoryConfig::from_env()?).await?;
    let users = service.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))?;
    users.set("42", "Ada".into()).await;
    users
        .get_or_load("43", async || Ok::<_, std::io::Error>("Grace".to_string()))
        .await
        .ok();
    users.delete("42").await;
    Ok(())
}

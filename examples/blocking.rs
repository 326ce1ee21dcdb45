//! The same cache from a program without async: `cargo run --example blocking`.

use std::time::Duration;

use resilient_cache::{blocking, CacheFactoryConfig, CacheOptions};

fn main() -> Result<(), resilient_cache::Error> {
    let service = blocking::CacheService::new(CacheFactoryConfig::from_env()?)?;
    let greetings =
        service.create_cache::<String>(CacheOptions::new("blocking-demo").l2_ttl(Duration::from_secs(60)))?;
    greetings.set("en", "hello".to_string());
    println!("en = {:?}", greetings.get("en").as_deref());
    println!("breaker: {}", greetings.breaker_state().as_str());
    greetings.clear();
    Ok(())
}

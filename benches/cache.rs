//! Micro-benchmarks: `cargo bench --bench cache`.
//!
//! Each of ours runs beside the raw operation it is built on, same value type:
//! - `l1_hit`: our `get` (L1 hit; async and `blocking`) vs quick_cache's get
//!   (the crate `ttl` builds on) vs moka's get (the other candidate), all
//!   holding `Arc<User>`; and our `get` while an event stream is subscribed
//!   (each hit then builds and sends a `Hit` event), to show what the
//!   unsubscribed flag check saves.
//! - `l2_hit`: our `get` with L1 off vs a raw `GET` + MessagePack decode on a
//!   `ConnectionManager` (against a `redis-server` the bench starts itself).
//! - `set`: our `set` (L1 + L2) vs encode + `SET PX`.
//! - `serializer`: encode/decode of a ~100 B and a ~100 KB struct, each format.

use resilient_cache_testkit as common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use common::loadgen::{raw_set, user, User};
use common::RedisServer;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use resilient_cache::{Cache, CacheOptions, CacheService, Serializer};
use serde::{Deserialize, Serialize};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn keys() -> Vec<String> {
    (0..1024).map(|i| format!("user:{i}")).collect()
}

fn l1_hit(c: &mut Criterion) {
    let rt = rt();
    let ks = keys();
    let server = RedisServer::start();
    let service = rt.block_on(CacheService::new(server.config())).unwrap();
    let ours: Cache<User> = rt.block_on(async {
        let c = service
            .create_cache(
                CacheOptions::new("bench-l1")
                    .l2_ttl(Duration::from_secs(600))
                    .l1_maxsize(2048),
            )
            .unwrap();
        for (i, k) in ks.iter().enumerate() {
            c.set(k, user(i as u64)).await;
        }
        c
    });
    let blocking_service = resilient_cache::blocking::CacheService::new(server.config()).unwrap();
    let blocking = blocking_service
        .create_cache::<User>(
            CacheOptions::new("bench-l1-blocking")
                .l2_ttl(Duration::from_secs(600))
                .l1_maxsize(2048),
        )
        .unwrap();
    for (i, k) in ks.iter().enumerate() {
        blocking.set(k, user(i as u64));
    }
    let quick = quick_cache::sync::Cache::<String, Arc<User>>::new(2048);
    let moka = moka::sync::Cache::<String, Arc<User>>::new(2048);
    for (i, k) in ks.iter().enumerate() {
        quick.insert(k.clone(), Arc::new(user(i as u64)));
        moka.insert(k.clone(), Arc::new(user(i as u64)));
    }
    let mut g = c.benchmark_group("l1_hit");
    let mut i = 0usize;
    g.bench_function("resilient_cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let k = &ks[i];
            let ours = &ours;
            async move { black_box(ours.get(k).await) }
        })
    });
    {
        let _events = ours.subscribe();
        g.bench_function("resilient_cache_subscribed", |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) & 1023;
                let k = &ks[i];
                let ours = &ours;
                async move { black_box(ours.get(k).await) }
            })
        });
    }
    g.bench_function("resilient_cache_blocking", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(blocking.get(&ks[i]))
        })
    });
    g.bench_function("quick_cache_raw", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(quick.get(ks[i].as_str()))
        })
    });
    g.bench_function("moka_raw", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(moka.get(ks[i].as_str()))
        })
    });
    g.finish();
}

fn l2(c: &mut Criterion) {
    let rt = rt();
    let ks = keys();
    let server = RedisServer::start();
    let service = rt.block_on(CacheService::new(server.config())).unwrap();
    let (ours, l1_and_l2, conn) = rt.block_on(async {
        let l2only: Cache<User> = service
            .create_cache(
                CacheOptions::new("bench-l2")
                    .l2_ttl(Duration::from_secs(600))
                    .l1_enabled(false),
            )
            .unwrap();
        for (i, k) in ks.iter().enumerate() {
            l2only.set(k, user(i as u64)).await;
        }
        let both: Cache<User> = service
            .create_cache(CacheOptions::new("bench-set").l2_ttl(Duration::from_secs(600)))
            .unwrap();
        let conn = redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
            .await
            .unwrap();
        (l2only, both, conn)
    });
    let raw_keys: Vec<String> = ks.iter().map(|k| format!("bench-l2:{k}")).collect();
    let ser = Serializer::msgpack();
    let mut i = 0usize;

    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("resilient_cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let (k, ours) = (&ks[i], &ours);
            async move { black_box(ours.get(k).await.unwrap()) }
        })
    });
    g.bench_function("redis_get_decode_raw", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let (k, ser, mut conn) = (&raw_keys[i], &ser, conn.clone());
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(k).query_async(&mut conn).await.unwrap();
                black_box(ser.decode::<User>(&bytes.unwrap()).unwrap())
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("set");
    g.bench_function("resilient_cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let (k, c) = (&ks[i], &l1_and_l2);
            async move { c.set(k, user(i as u64)).await }
        })
    });
    g.bench_function("redis_encode_set_raw", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let (k, ser, mut conn) = (&raw_keys[i], &ser, conn.clone());
            async move { raw_set(&mut conn, k, ser.encode(&user(i as u64)).unwrap()).await }
        })
    });
    g.finish();
}

/// A ~100 KB value.
#[derive(Clone, Serialize, Deserialize)]
struct Page {
    id: u64,
    title: String,
    rows: Vec<User>,
}

fn serializers(c: &mut Criterion) {
    let small = user(42);
    let large = Page {
        id: 1,
        title: "a large page".into(),
        rows: (0..1000).map(user).collect(),
    };
    let mut g = c.benchmark_group("serializer");
    for name in ["json", "msgpack", "postcard"] {
        let s = resilient_cache::get_serializer(name).unwrap();
        let small_bytes = s.encode(&small).unwrap();
        let large_bytes = s.encode(&large).unwrap();
        g.bench_with_input(BenchmarkId::new("encode_small", name), &small, |b, v| {
            b.iter(|| black_box(s.encode(v).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("decode_small", name), &small_bytes, |b, v| {
            b.iter(|| black_box(s.decode::<User>(v).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("encode_large", name), &large, |b, v| {
            b.iter(|| black_box(s.encode(v).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("decode_large", name), &large_bytes, |b, v| {
            b.iter(|| black_box(s.decode::<Page>(v).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = l1_hit, l2, serializers
}
criterion_main!(benches);

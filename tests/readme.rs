//! The README's promises that are data, checked against the code: the stats
//! layout it documents is the one `get_stats` serializes, field for field.

use resilient_cache_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheOptions, CacheService};

/// The README's "**Stats**" list: section → documented field names (the
/// first bullet, without a section, lists top-level fields under "").
fn documented_stats() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("**Stats** (`get_stats()`")
        .expect("the README documents the stats");
    let mut out = BTreeMap::new();
    for line in readme[start..].lines().skip_while(|l| !l.starts_with("- ")) {
        let Some(item) = line.strip_prefix("- ") else {
            break;
        };
        let (section, fields) = match item
            .split_once("`: ")
            .or_else(|| item.split_once("` (when on): "))
        {
            Some((head, rest)) => (head.trim_start_matches('`').to_string(), rest),
            None => (String::new(), item),
        };
        out.insert(section, backticked(&without_parentheses(fields)));
    }
    out
}

fn without_parentheses(text: &str) -> String {
    let mut depth = 0;
    text.chars()
        .filter(|c| {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    return false;
                }
                _ => {}
            }
            depth == 0
        })
        .collect()
}

fn backticked(text: &str) -> BTreeSet<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_stats_layout_is_the_real_one() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let cache = service
        .create_cache::<String>(CacheOptions::new("readme").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    cache.set("k", "v".to_string()).await;
    let stats = serde_json::to_value(cache.get_stats().await).unwrap();
    let documented = documented_stats();

    let sections: BTreeSet<String> = documented.keys().filter(|s| !s.is_empty()).cloned().collect();
    let mut top = documented[""].clone();
    top.extend(sections.iter().cloned());
    assert_eq!(top, keys(&stats), "top-level fields");
    for section in &sections {
        let real = &stats[section.as_str()];
        assert!(real.is_object(), "{section} is present in this cache's stats");
        assert_eq!(&documented[section], &keys(real), "fields of {section}");
    }
}

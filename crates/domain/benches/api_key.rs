//! API-key verification cost: extract + parse (checksum) + SHA-256 + lookup + verify +
//! identity, with 1, 1,000 and 1,000,000 stored keys (DESIGN.md budget: flat, ≤ 5 µs). With
//! 1 key every iteration presents the same key; with more, iterations cycle through 1,000 keys
//! spread over the store, so 1,000 vs 1,000,000 is the like-for-like comparison.
//!
//! `cargo bench -p portcullis-domain --bench api_key`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use portcullis_core::api_key::{self, Prefix};
use portcullis_core::{RequestParts, Timestamp};
use portcullis_domain::authn::api_key::{ApiKeyAuthenticator, ApiKeyConfig, KeyCache};
use portcullis_domain::authn::{Authenticator, RouteAuth};
use portcullis_domain::usage::UsageTracker;
use portcullis_store::conformance::sample_key;
use portcullis_store::memory::MemoryStore;
use portcullis_store::{ApiKeyRecord, ApiKeys};

/// Stores `n` keys; returns the raw text of up to 1,000 of them (spread over the range).
async fn populate(store: &MemoryStore, n: usize) -> Vec<String> {
    let prefix = Prefix::new("pk_live").unwrap();
    let mut raws = Vec::new();
    let step = (n / 1000).max(1);
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let mut random = [0u8; 32];
        random[..8].copy_from_slice(&(i as u64).to_le_bytes());
        random[8] = 0x5a;
        let g = api_key::generate(&prefix, &random);
        if i % step == 0 && raws.len() < 1000 {
            raws.push(g.key.expose().to_owned());
        }
        batch.push(ApiKeyRecord {
            id: format!("key_{i:08}"),
            hash: g.hash,
            display_prefix: g.display_prefix,
            rate_limits: vec![],
            quota: None,
            ..sample_key(0)
        });
        if batch.len() == 10_000 {
            store.insert_many(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.insert_many(&batch).await.unwrap();
    raws
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("api_key_verify");
    for n in [1usize, 1_000, 1_000_000] {
        let store = Arc::new(MemoryStore::new());
        let raws = rt.block_on(populate(&store, n));
        let cache = Arc::new(KeyCache::new(100_000));
        let usage = Arc::new(UsageTracker::new(store.clone()));
        let auth = ApiKeyAuthenticator::new(ApiKeyConfig::default(), store.clone(), cache, usage);
        let route = RouteAuth::default();
        let method = http::Method::GET;
        let now = Timestamp::from_secs(1_800_000_000);
        let headers: Vec<http::HeaderMap> = raws
            .iter()
            .map(|k| {
                let mut h = http::HeaderMap::new();
                h.insert("x-api-key", k.parse().unwrap());
                h
            })
            .collect();
        // Warm the cache the way traffic would.
        for h in &headers {
            let req = RequestParts {
                method: &method,
                path: "/echo",
                query: None,
                scheme: "http",
                authority: None,
                headers: h,
                client_ip: [127, 0, 0, 1].into(),
                conn: None,
                body: None,
            };
            assert!(rt
                .block_on(auth.authenticate(&req, &route, now))
                .unwrap()
                .is_some());
        }
        let mut i = 0;
        group.bench_function(format!("{n}_stored_keys"), |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % headers.len();
                    i
                },
                |i| {
                    let req = RequestParts {
                        method: &method,
                        path: "/echo",
                        query: None,
                        scheme: "http",
                        authority: None,
                        headers: &headers[i],
                        client_ip: [127, 0, 0, 1].into(),
                        conn: None,
                        body: None,
                    };
                    rt.block_on(auth.authenticate(&req, &route, now)).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let mut core = c.benchmark_group("api_key_core");
    let g = api_key::generate(&Prefix::new("pk_live").unwrap(), &[7; 32]);
    let raw = g.key.expose().to_owned();
    core.bench_function("parse_checksum_sha256", |b| {
        b.iter(|| api_key::parse(std::hint::black_box(&raw), false).unwrap())
    });
    core.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

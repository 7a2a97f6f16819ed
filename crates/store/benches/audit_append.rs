//! SQLite audit appends: one batch of 1,000 realistic decision events per iteration (block
//! encoding, one INSERT, a durable commit with its `fsync`), into a database file in the
//! system temp directory. Time per iteration / 1,000 = the store's cost per audited decision.
//! Three cases: every event by one key, every event by a different key (the per-block
//! credential list then holds 1,000 entries), and the first again into an in-memory database
//! (no file, no `fsync`: the CPU work alone).
//!
//! `cargo bench -p portcullis-store --bench audit_append`
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_core::audit::{chain_hash, write_json, GENESIS};
use portcullis_store::audit_block::{OwnedFields, Record};
use portcullis_store::sqlite::SqliteStore;
use portcullis_store::{AuditLog, Sealed};

const EVENTS: usize = 1000;

fn batch(first_seq: i64, prev: &mut [u8; 32], distinct_keys: bool) -> Vec<Record> {
    let mut body = String::new();
    (0..EVENTS as i64)
        .map(|i| {
            let seq = first_seq + i;
            let key = if distinct_keys {
                format!("key_{seq:022}")
            } else {
                "key_GAAUBHzdS6mnYYEMi6iqJ4".to_owned()
            };
            let fields = OwnedFields {
                time_ms: 1_764_000_000_000 + seq / 30,
                kind: "auth.decision".into(),
                outcome: "allow".into(),
                request_id: Some(format!("bd2f041c01dd-{seq:x}")),
                route: Some("orders".into()),
                scheme: Some("api_key".into()),
                reason: Some("ok".into()),
                credential_id: Some(key),
                client_ip: Some([127, 0, 0, 1].into()),
                actor: None,
                detail: None,
            };
            body.clear();
            write_json(&fields.fields(), &mut body);
            let hash = chain_hash(prev, seq, body.as_bytes());
            let e = Record {
                seq,
                fields,
                prev_hash: *prev,
                hash,
            };
            *prev = hash;
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = rt
        .block_on(SqliteStore::open(&dir.join("audit.db")))
        .unwrap();
    // The same appends into an in-memory database: no file, no fsync, so what is left is the
    // CPU work per decision (block encoding, the INSERT, SQLite's page writes).
    let in_memory = rt.block_on(SqliteStore::open_in_memory()).unwrap();
    let mut group = c.benchmark_group("sqlite_audit");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let mut next = 1i64;
    let mut prev = GENESIS;
    for (name, distinct, store) in [
        ("append_1000_decisions", false, &store),
        ("append_1000_decisions_1000_keys", true, &store),
        ("append_1000_decisions_in_memory_db", false, &in_memory),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let events = batch(next, &mut prev, distinct);
                    next += EVENTS as i64;
                    events
                },
                |events| {
                    let sealed: Vec<Sealed<'_>> = events.iter().map(Record::sealed).collect();
                    rt.block_on(store.append(&sealed)).unwrap()
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);

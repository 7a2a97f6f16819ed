//! Audit pipeline cost per authentication decision, without I/O: emit → queue → writer
//! (canonical JSON, SHA-256 chain, stored event) → a store that keeps nothing. The load
//! benchmark (`scripts/bench-load.sh`) adds the SQLite writes and the JSON-lines sink.
//!
//! `cargo bench -p portcullis-domain --bench audit`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_core::identity::SchemeSet;
use portcullis_core::{Scheme, Timestamp};
use portcullis_domain::audit::{self, AuditEvent};
use portcullis_store::{AuditLog, AuditQuery, Pruned, Sealed, StoreError, StoredEvent};

/// Accepts and forgets: isolates the pipeline from any store's cost.
struct NullLog;

#[async_trait::async_trait]
impl AuditLog for NullLog {
    async fn append(&self, events: &[Sealed<'_>]) -> Result<(), StoreError> {
        std::hint::black_box(events);
        Ok(())
    }
    async fn head(&self) -> Result<Option<(i64, [u8; 32])>, StoreError> {
        Ok(None)
    }
    async fn query(&self, _: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn scan(&self, _: i64, _: u32) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn prune(&self, _: Timestamp) -> Result<Option<Pruned>, StoreError> {
        Ok(None)
    }
    async fn anchor(&self) -> Result<Option<(i64, [u8; 32])>, StoreError> {
        Ok(None)
    }
}

/// Decisions per iteration: one flush (one batch) per iteration, like a busy LINGER window.
const EVENTS: u64 = 1000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (auditor, task) = rt.block_on(async {
        let (auditor, writer) = audit::channel(Arc::new(NullLog), None, 65_536)
            .await
            .unwrap();
        (auditor, tokio::spawn(writer.run()))
    });
    let route: Arc<str> = "orders".into();
    let credential: Arc<str> = "key_GAAUBHzdS6mnYYEMi6iqJ4".into();
    let request_id: Arc<str> = "bd2f041c01dd-1226f9".into();
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(EVENTS));
    let mut at = 1_764_000_000_000i64;
    group.bench_function("decision_through_writer", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..EVENTS {
                    at += 1;
                    let e = AuditEvent::new(Timestamp::from_millis(at), "auth.decision", "allow")
                        .request_id(&request_id)
                        .route(route.clone())
                        .client_ip([127, 0, 0, 1].into())
                        .reason("ok")
                        .scheme(SchemeSet::one(Scheme::ApiKey))
                        .credential(credential.clone());
                    auditor.emit(e).await;
                }
                auditor.flush().await;
            })
        })
    });
    group.finish();
    drop(auditor);
    rt.block_on(task).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);

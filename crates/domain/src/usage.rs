//! Key usage off the request path: last use, last address, quotas and first-seen addresses.
//!
//! The request path only updates in-memory maps; [`UsageTracker::flush`] (run every second or
//! so by a background task, and at shutdown) writes them to the store in one batch and emits an
//! `api_key.new_ip` audit event for every address a key was never used from before.

use foldhash::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use portcullis_core::{AuthError, Timestamp};
use portcullis_store::{ApiKeys, KeyUsage, QuotaState};

use crate::audit::{AuditEvent, Auditor};
use crate::authn::Quota;

/// Addresses remembered per key in memory; beyond this the store decides what is new.
const KNOWN_IPS_PER_KEY: usize = 64;

/// Maps keyed by key id, probed on every request: foldhash (seeded per process) instead of
/// SipHash, a third of the cost for short keys.
#[derive(Default)]
struct State {
    dirty: HashMap<Arc<str>, (Timestamp, IpAddr)>,
    known_ips: HashMap<Arc<str>, HashSet<IpAddr>>,
    new_ips: Vec<(Arc<str>, IpAddr, Timestamp)>,
    quotas: HashMap<Arc<str>, QuotaState>,
}

/// Collects usage in memory and writes it in batches.
pub struct UsageTracker {
    state: Mutex<State>,
    store: Arc<dyn ApiKeys>,
}

impl UsageTracker {
    /// A tracker writing to `store`.
    pub fn new(store: Arc<dyn ApiKeys>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a successful use of `key_id` from `ip` (no store write).
    pub fn record(&self, key_id: &Arc<str>, ip: IpAddr, now: Timestamp) {
        let mut s = self.lock();
        match s.dirty.get_mut(key_id) {
            Some(slot) => *slot = (now, ip),
            None => {
                s.dirty.insert(key_id.clone(), (now, ip));
            }
        }
        // The common case, a known address, without touching the key's reference count.
        if s.known_ips.get(key_id).is_some_and(|k| k.contains(&ip)) {
            return;
        }
        let known = s.known_ips.entry(key_id.clone()).or_default();
        if !known.contains(&ip) {
            if known.len() >= KNOWN_IPS_PER_KEY {
                known.clear();
            }
            known.insert(ip);
            s.new_ips.push((key_id.clone(), ip, now));
        }
    }

    /// Counts one request against `quota`; `QuotaExceeded` when the window's quota is spent.
    pub async fn consume_quota(
        &self,
        key_id: &Arc<str>,
        quota: &Quota,
        now: Timestamp,
    ) -> Result<(), AuthError> {
        let window = quota.window(now);
        if !self.lock().quotas.contains_key(key_id) {
            let persisted = self.store.quota_state(key_id).await.map_err(|e| {
                tracing::error!(error = %e, "quota state lookup failed");
                AuthError::Unavailable
            })?;
            self.lock()
                .quotas
                .entry(key_id.clone())
                .or_insert(persisted);
        }
        let mut s = self.lock();
        let st = s.quotas.entry(key_id.clone()).or_default();
        if st.window != window {
            *st = QuotaState { window, used: 0 };
        }
        if st.used >= quota.limit {
            let wait = quota.next_refill(now).millis_since(now).max(0);
            return Err(AuthError::QuotaExceeded {
                retry_after_secs: u64::try_from((wait + 999) / 1000)
                    .unwrap_or(u64::MAX)
                    .max(1),
            });
        }
        st.used += 1;
        if !s.dirty.contains_key(key_id) {
            // Make sure the count is persisted even if `record` was not called.
            s.dirty
                .insert(key_id.clone(), (now, IpAddr::from([0, 0, 0, 0])));
        }
        Ok(())
    }

    /// Forgets cached quota state for a key (after an admin change).
    pub fn forget(&self, key_id: &str) {
        let mut s = self.lock();
        s.quotas.remove(key_id);
        s.known_ips.remove(key_id);
    }

    /// Writes pending usage to the store and audits new addresses. Returns rows written.
    pub async fn flush(&self, auditor: &Auditor) -> usize {
        let (batch, new_ips) = {
            let mut s = self.lock();
            let dirty = std::mem::take(&mut s.dirty);
            let batch: Vec<KeyUsage> = dirty
                .into_iter()
                .map(|(id, (at, ip))| {
                    let q = s.quotas.get(&id).copied().unwrap_or_default();
                    KeyUsage {
                        key_id: id.to_string(),
                        last_used_at: at,
                        last_used_ip: ip.to_string(),
                        quota_window: q.window,
                        quota_used: q.used,
                    }
                })
                .collect();
            (batch, std::mem::take(&mut s.new_ips))
        };
        let n = batch.len();
        if !batch.is_empty() {
            if let Err(e) = self.store.record_usage(&batch).await {
                tracing::warn!(error = %e, rows = n, "writing key usage failed; will retry");
                let mut s = self.lock();
                for u in batch {
                    if let (Ok(ip), false) = (
                        u.last_used_ip.parse(),
                        s.dirty.contains_key(u.key_id.as_str()),
                    ) {
                        s.dirty
                            .insert(u.key_id.as_str().into(), (u.last_used_at, ip));
                    }
                }
                return 0;
            }
        }
        for (key_id, ip, at) in new_ips {
            match self.store.remember_ip(&key_id, &ip.to_string(), at).await {
                Ok(true) => {
                    auditor
                        .emit(
                            AuditEvent::new(at, "api_key.new_ip", "notice")
                                .credential(key_id)
                                .client_ip(ip),
                        )
                        .await
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "remembering key address failed"),
            }
        }
        n
    }
}

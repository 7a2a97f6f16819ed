//! The per-request decision: authenticate (policy) → authorise (scopes) → rate limit → quota,
//! with one audit event per decision. The HTTP adapter calls [`Gate::admit`] and renders the
//! outcome; it makes no decision of its own.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use portcullis_core::ratelimit::{Decision, Limit};
use portcullis_core::text::{CompactText, IpText};
use portcullis_core::{AuthError, RequestParts, ScopeSet, Timestamp, WireError};

use crate::audit::{AuditEvent, Auditor};
use crate::authn::{Authenticated, RouteAuth};
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::usage::UsageTracker;

/// A route's compiled access rules.
#[derive(Debug, Clone)]
pub struct RouteGate {
    /// Route name (metrics, audit).
    pub name: Arc<str>,
    /// Authentication policy.
    pub policy: Policy,
    /// Options the authenticators read.
    pub auth: RouteAuth,
    /// Scopes every caller must hold.
    pub scopes: ScopeSet,
    /// Default per-identity limit (per client address on public routes).
    pub rate_limit: Option<Limit>,
    /// Limit on failed authentications per client address.
    pub failure_limit: Option<Limit>,
    /// `WWW-Authenticate` challenges, computed once.
    pub challenges: Arc<[String]>,
    /// Until when some address may be over [`RouteGate::failure_limit`] (shared by clones).
    failures: Arc<FailureWatch>,
}

/// Until when an address may be refused by a route's failed-authentication limit, as far as
/// this process has counted: the latest time at which an address that ran out of failures
/// could still be refused. Before that the per-address cell is looked at on every request;
/// after it no address can be over the limit, so the look (a cell key, a hash, a lock and the
/// arithmetic on every authenticated request) is skipped. Only sound when this process
/// counts every failure ([`RateLimiter::is_private`]); with shared cells the gate always looks.
#[derive(Debug, Default)]
struct FailureWatch {
    /// Milliseconds since the epoch; 0: no address has run out since start.
    until_ms: AtomicI64,
}

impl FailureWatch {
    fn may_refuse(&self, now: Timestamp) -> bool {
        now.as_millis() < self.until_ms.load(Ordering::Relaxed)
    }

    /// Notes the decision of a counted failure: an address with no failure left is refused
    /// until its cell has drained, which is at most `reset_secs` away.
    fn counted(&self, d: &Decision, now: Timestamp) {
        if d.allowed && d.remaining > 0 {
            return;
        }
        let secs = i64::try_from(d.reset_secs.max(1)).unwrap_or(i64::MAX);
        let until = now.plus_millis(secs.saturating_mul(1000));
        self.until_ms
            .fetch_max(until.as_millis(), Ordering::Relaxed);
    }
}

impl RouteGate {
    /// Compiles the challenge list from the policy.
    pub fn new(
        name: Arc<str>,
        policy: Policy,
        auth: RouteAuth,
        scopes: ScopeSet,
        rate_limit: Option<Limit>,
        failure_limit: Option<Limit>,
    ) -> Self {
        let challenges = policy.challenges(&auth).into();
        Self {
            name,
            policy,
            auth,
            scopes,
            rate_limit,
            failure_limit,
            challenges,
            failures: Arc::default(),
        }
    }

    /// Takes over from `previous`, the route of the same name before a configuration reload
    /// (whose rate-limit cells this one goes on using): what its failure watch knows stays
    /// known. With the same failure limit the watch is shared; with another, the new one
    /// starts raised for as long as a cell filled under the old limit could still refuse,
    /// so that no address over the limit is let through unlooked.
    pub fn succeed(&mut self, previous: &RouteGate, now: Timestamp) {
        if self.failure_limit == previous.failure_limit {
            self.failures = previous.failures.clone();
            return;
        }
        let Some(old) = previous.failure_limit else {
            // No failure was counted on this route: no address can be over a limit yet.
            return;
        };
        let drain_ms = old
            .period_ms
            .saturating_mul(u64::from(old.burst.max(old.limit)))
            / u64::from(old.limit.max(1));
        let until = now
            .plus_millis(
                i64::try_from(drain_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_add(1_000),
            )
            .as_millis()
            .max(previous.failures.until_ms.load(Ordering::Relaxed));
        self.failures.until_ms.store(until, Ordering::Relaxed);
    }
}

/// A request that may proceed.
#[derive(Debug)]
pub struct Admitted {
    /// The proven identity (`None` on public routes).
    pub authn: Option<Authenticated>,
    /// The binding rate-limit decision, for `RateLimit-*` headers.
    pub rate: Option<Decision>,
}

/// A request that must be refused.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: AuthError,
    /// The rate-limit decision, when that was the reason.
    pub rate: Option<Decision>,
}

/// Which authentication decisions become audit events (`audit.decisions` in the
/// configuration: `"all"`, `"denials"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditedDecisions {
    /// Every decision, allowed or denied (the default).
    #[default]
    All,
    /// Denials only: allowed requests are counted in the metrics, not stored one by one.
    Denials,
}

/// Runs the decision for every route.
pub struct Gate {
    limiter: RateLimiter,
    usage: Arc<UsageTracker>,
    auditor: Auditor,
    audited: AuditedDecisions,
    /// When an `auth.failure_burst` was last emitted, per failure cell (route and address).
    bursts: quick_cache::sync::Cache<String, Timestamp>,
}

/// At most one `auth.failure_burst` per route and client address in this long (per
/// instance): an attack gives one event, not one per refill of its failure budget.
pub const BURST_QUIET: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Gate {
    /// A gate over a limiter, the usage tracker (quotas) and the audit trail, auditing every
    /// decision.
    pub fn new(limiter: RateLimiter, usage: Arc<UsageTracker>, auditor: Auditor) -> Self {
        Self {
            limiter,
            usage,
            auditor,
            audited: AuditedDecisions::All,
            bursts: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// Sets which decisions are audited.
    pub fn audited(mut self, audited: AuditedDecisions) -> Self {
        self.audited = audited;
        self
    }

    /// Decides one request and audits the decision (denials only, when the gate was so
    /// configured: [`Gate::audited`]).
    pub async fn admit(
        &self,
        route: &RouteGate,
        req: &RequestParts<'_>,
        request_id: &str,
        now: Timestamp,
    ) -> Result<Admitted, Refused> {
        if route.policy.is_public() {
            // No authentication decision to audit; only the optional per-address limit.
            let rate = match &route.rate_limit {
                Some(l) => {
                    let ip = IpText::new(req.client_ip);
                    let key = cell_key("r", &route.name, &["ip", ip.as_str()]);
                    self.limit_one(key.as_str(), l, now).await?
                }
                None => None,
            };
            return Ok(Admitted { authn: None, rate });
        }
        let result = self.decide(route, req, now).await;
        if result.is_ok() && self.audited == AuditedDecisions::Denials {
            return result.map_err(|(r, _)| r);
        }
        // Filled in place, field by field: the event is a few hundred bytes, and each call of
        // its builder would move it.
        let mut event = AuditEvent::new(
            now,
            "auth.decision",
            if result.is_ok() { "allow" } else { "deny" },
        );
        event.request_id = Some(CompactText::new(request_id));
        event.route = Some(route.name.clone());
        event.client_ip = Some(req.client_ip);
        match &result {
            Ok(a) => {
                event.reason = Some("ok");
                if let Some(i) = a.authn.as_ref().map(|a| &a.identity) {
                    event.set_scheme(i.schemes);
                    event.credential_id = Some(i.credential_id.clone());
                }
            }
            Err((r, cred)) => {
                event.reason = Some(WireError::from(&r.error).code);
                event.credential_id = cred.clone();
            }
        }
        if self.auditor.emit_bounded(event).await.is_err() {
            // Not audited, not allowed: fail closed rather than wait for ever.
            return Err(Refused {
                error: AuthError::Unavailable,
                rate: None,
            });
        }
        result.map_err(|(r, _)| r)
    }

    /// Whether a connection admitted earlier with `authn` (a WebSocket) may go on at `now`:
    /// every scheme that proved the identity vouches for its credential again, and the
    /// credential still holds the route's scopes. When not, the end is audited
    /// (`auth.session_ended`, with the request id of the admission) and the caller closes the
    /// connection. A check that cannot be made (the store is down) counts as a no.
    pub async fn still_admitted(
        &self,
        route: &RouteGate,
        authn: &Authenticated,
        request_id: &str,
        client_ip: std::net::IpAddr,
        now: Timestamp,
    ) -> bool {
        let identity = &authn.identity;
        let mut reason = "ok";
        for scheme in identity.schemes.iter() {
            let fresh = match route.policy.authenticator(scheme) {
                Some(a) => a.reverify(identity, now).await,
                None => Ok(None),
            };
            reason = match fresh {
                Ok(Some(f)) if f.scopes.contains_all(&route.scopes) => continue,
                Ok(Some(_)) => WireError::from(&AuthError::InsufficientScope).code,
                Ok(None) => "credential_no_longer_valid",
                Err(e) => WireError::from(&e).code,
            };
            break;
        }
        if reason == "ok" {
            return true;
        }
        let mut event = AuditEvent::new(now, "auth.session_ended", "deny");
        event.request_id = Some(CompactText::new(request_id));
        event.route = Some(route.name.clone());
        event.client_ip = Some(client_ip);
        event.reason = Some(reason);
        event.set_scheme(identity.schemes);
        event.credential_id = Some(identity.credential_id.clone());
        self.auditor.emit(event).await;
        false
    }

    async fn decide(
        &self,
        route: &RouteGate,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Result<Admitted, (Refused, Option<Arc<str>>)> {
        let fail_key = || {
            let ip = IpText::new(req.client_ip);
            cell_key("f", &route.name, &[ip.as_str()])
        };
        if let Some(l) = &route.failure_limit {
            if !self.limiter.is_private() || route.failures.may_refuse(now) {
                if let Some(d) = self.limiter.is_blocked(fail_key().as_str(), l, now).await {
                    return Err((
                        Refused {
                            error: AuthError::RateLimited {
                                retry_after_secs: d.retry_after_secs,
                            },
                            rate: Some(d),
                        },
                        None,
                    ));
                }
            }
        }
        let authn = match route.policy.evaluate(req, &route.auth, now).await {
            Ok(a) => a,
            Err(error) => {
                if let Some(l) = &route.failure_limit {
                    let key = fail_key();
                    if let Some(d) = self.limiter.check(key.as_str(), l, now).await {
                        route.failures.counted(&d, now);
                        if !d.allowed || d.remaining == 0 {
                            self.burst(route, req.client_ip, l, &d, key, now).await;
                        }
                    }
                }
                return Err((Refused { error, rate: None }, None));
            }
        };
        let Some(authn) = authn else {
            return Ok(Admitted {
                authn: None,
                rate: None,
            });
        };
        let cred = Some(authn.identity.credential_id.clone());
        if !authn.identity.scopes.contains_all(&route.scopes) {
            return Err((
                Refused {
                    error: AuthError::InsufficientScope,
                    rate: None,
                },
                cred,
            ));
        }
        let mut rate = None;
        match authn.limits.as_ref().filter(|l| !l.rate_limits.is_empty()) {
            Some(limits) => {
                for (key, l) in &limits.rate_limits {
                    rate = pick(
                        rate,
                        self.limit_one(key, l, now)
                            .await
                            .map_err(|r| (r, cred.clone()))?,
                    );
                }
            }
            None => {
                if let Some(l) = &route.rate_limit {
                    let key = cell_key("r", &route.name, &[&authn.identity.credential_id]);
                    rate = self
                        .limit_one(key.as_str(), l, now)
                        .await
                        .map_err(|r| (r, cred.clone()))?;
                }
            }
        }
        if let Some(q) = authn.limits.as_ref().and_then(|l| l.quota) {
            self.usage
                .consume_quota(&authn.identity.credential_id, &q, now)
                .await
                .map_err(|error| (Refused { error, rate: None }, cred.clone()))?;
        }
        Ok(Admitted {
            authn: Some(authn),
            rate,
        })
    }

    /// The failed-authentication limit starts refusing `ip` on `route`: audited as
    /// `auth.failure_burst` (a webhook event), at most once per [`BURST_QUIET`].
    async fn burst(
        &self,
        route: &RouteGate,
        ip: std::net::IpAddr,
        l: &Limit,
        d: &Decision,
        key: CellKey,
        now: Timestamp,
    ) {
        let quiet = i64::try_from(BURST_QUIET.as_millis()).unwrap_or(i64::MAX);
        if self
            .bursts
            .get(key.as_str())
            .is_some_and(|t| now.as_millis() < t.as_millis().saturating_add(quiet))
        {
            return;
        }
        self.bursts.insert(key.as_str().to_owned(), now);
        let e = AuditEvent::new(now, "auth.failure_burst", "notice")
            .route(route.name.clone())
            .client_ip(ip)
            .reason("failed_auth_limit")
            .detail(serde_json::json!({
                "limit": l.limit,
                "period_ms": l.period_ms,
                "retry_after_seconds": d.retry_after_secs.max(d.reset_secs),
            }));
        // Not emitted is not fatal: the decision's own event fails the request closed.
        let _ = self.auditor.emit_bounded(e).await;
    }

    async fn limit_one(
        &self,
        key: &str,
        l: &Limit,
        now: Timestamp,
    ) -> Result<Option<Decision>, Refused> {
        match self.limiter.check(key, l, now).await {
            Some(d) if !d.allowed => Err(Refused {
                error: AuthError::RateLimited {
                    retry_after_secs: d.retry_after_secs,
                },
                rate: Some(d),
            }),
            other => Ok(other),
        }
    }
}

/// A rate-limit cell key, `kind:route:part:…`: one or two per request, so built on the stack
/// when it fits (it nearly always does) and without the formatting machinery.
type CellKey = CompactText<128>;

fn cell_key(kind: &str, route: &str, parts: &[&str]) -> CellKey {
    // `kind:route` and `:part` for each part, as one slice of pieces: on the stack for the
    // at most two parts the gate passes, on the heap beyond.
    let mut stack = [""; 7];
    let mut heap = Vec::new();
    let pieces: &mut [&str] = match 3 + 2 * parts.len() {
        n if n <= stack.len() => &mut stack[..n],
        n => {
            heap.resize(n, "");
            &mut heap
        }
    };
    pieces[..3].copy_from_slice(&[kind, ":", route]);
    for (pair, p) in pieces[3..].chunks_exact_mut(2).zip(parts) {
        pair.copy_from_slice(&[":", p]);
    }
    CompactText::from_parts(pieces)
}

/// Of two allowed decisions, the one with fewer requests left (what the caller should see).
fn pick(a: Option<Decision>, b: Option<Decision>) -> Option<Decision> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_keys_join_kind_route_and_parts_with_colons() {
        let key = |kind, route, parts: &[&str]| cell_key(kind, route, parts).as_str().to_owned();
        assert_eq!(
            key("r", "orders", &["ip", "10.0.0.1"]),
            "r:orders:ip:10.0.0.1"
        );
        assert_eq!(key("f", "orders", &["::1"]), "f:orders:::1");
        assert_eq!(key("r", "orders", &["key_1"]), "r:orders:key_1");
        assert_eq!(key("r", "", &[]), "r:");
        assert_eq!(key("r", "o", &["a", "b", "c", "d"]), "r:o:a:b:c:d");
        let long = "é".repeat(100);
        assert_eq!(key("r", &long, &["x"]), format!("r:{long}:x"));
    }

    #[test]
    fn the_failure_watch_rises_only_when_an_address_runs_out() {
        let w = FailureWatch::default();
        let at = |ms| Timestamp::from_millis(ms);
        assert!(!w.may_refuse(at(1_000)));
        let l = Limit {
            algorithm: portcullis_core::ratelimit::Algorithm::Gcra,
            limit: 2,
            period_ms: 60_000,
            burst: 2,
        };
        let d1 = l.check(None, 1_000);
        w.counted(&d1, at(1_000));
        assert!(!w.may_refuse(at(1_000)), "one failure left");
        let d2 = l.check(Some(d1.cell), 1_000);
        assert_eq!(d2.remaining, 0);
        w.counted(&d2, at(1_000));
        assert!(w.may_refuse(at(1_000)));
        assert!(w.may_refuse(at(60_999)));
        assert!(!w.may_refuse(at(61_000)), "the cell has drained by then");
        // A later note that ends sooner does not shorten the watch.
        let short = Limit {
            period_ms: 2_000,
            ..l
        };
        let e = short.check(Some(short.check(None, 2_000).cell), 2_000);
        w.counted(&e, at(2_000));
        assert!(w.may_refuse(at(60_999)));
    }

    #[test]
    fn a_reloaded_route_keeps_what_its_failure_watch_knew() {
        let at = Timestamp::from_millis;
        let l = Limit {
            algorithm: portcullis_core::ratelimit::Algorithm::Gcra,
            limit: 2,
            period_ms: 60_000,
            burst: 2,
        };
        let gate = |limit| {
            RouteGate::new(
                "r".into(),
                Policy::compile(&crate::policy::PolicyExpr::Public, &Default::default()).unwrap(),
                RouteAuth::default(),
                ScopeSet::default(),
                None,
                limit,
            )
        };
        let old = gate(Some(l));
        // Same limit: one watch, shared; a failure counted later by either is seen by both.
        let mut same = gate(Some(l));
        same.succeed(&old, at(1_000));
        let d = l.check(Some(l.check(None, 1_000).cell), 1_000);
        old.failures.counted(&d, at(1_000));
        assert!(same.failures.may_refuse(at(30_000)));
        // Another limit: raised for the old limit's drain time, from the reload on.
        let fresh = gate(Some(l));
        let mut other = gate(Some(Limit { limit: 1, ..l }));
        other.succeed(&fresh, at(100_000));
        assert!(other.failures.may_refuse(at(160_999)));
        assert!(!other.failures.may_refuse(at(161_001)));
        // No failure limit before: nothing was counted, nothing to watch.
        let mut added = gate(Some(l));
        added.succeed(&gate(None), at(1_000));
        assert!(!added.failures.may_refuse(at(1_000)));
    }

    proptest::proptest! {
        /// Soundness of skipping the look: whenever the cell would refuse, the watch says
        /// that some address may be refused.
        #[test]
        fn the_watch_covers_every_refusal(
            limit in 1u32..20,
            period_ms in 1u64..200_000,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0i64..20_000, 1..40),
            probe in 0i64..400_000,
        ) {
            let l = Limit { algorithm: portcullis_core::ratelimit::Algorithm::Gcra, limit, period_ms, burst };
            let w = FailureWatch::default();
            let (mut t, mut cell) = (1_000_000i64, None);
            for g in gaps {
                t += g;
                // As the gate does: a failure is counted only when the look allowed it.
                if !l.check(cell, t).allowed {
                    continue;
                }
                let d = l.check(cell, t);
                cell = Some(d.cell);
                w.counted(&d, Timestamp::from_millis(t));
            }
            let when = t + probe;
            if !l.check(cell, when).allowed {
                proptest::prop_assert!(w.may_refuse(Timestamp::from_millis(when)));
            }
        }
    }
}

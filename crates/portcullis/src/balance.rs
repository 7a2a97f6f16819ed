//! Upstream groups: several targets behind one name (`[upstreams.NAME]`), one picked per
//! request — in turn by weight, or the one with the fewest requests in flight — and taken
//! out of rotation while they fail.
//!
//! # Health
//!
//! Every target starts in rotation. Two things take one out:
//! - **passive**: `passive.failures` requests in a row that got no connection, no answer in
//!   time or no valid response head from it;
//! - **active** (with `[upstreams.NAME.health]`): `unhealthy_after` checks in a row that failed
//!   (a `GET` of `path` on a fresh connection; any status from 200 to 399 passes).
//!
//! With an active check, a target that is out comes back after `healthy_after` passed checks.
//! Without one, it comes back after `passive.cooldown`, when a single request tries it: an
//! answer puts it back in rotation, another failure keeps it out for one more cooldown.
//!
//! When every target is out, requests go to all of them as if they were in (Envoy's "panic"
//! mode): a wrong health-check path, or a brief outage of every target, must not turn into
//! an outage of the gateway by itself; the upstream's own answer, or 502, tells the caller.
//!
//! A route with a single URL is a group of one target that is never taken out.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use portcullis_domain::{Clock, SystemClock};

use crate::config::{Balance, HealthCheckConfig, PassiveHealthConfig, UpstreamGroupConfig};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, UpstreamPool};

/// A group of upstream targets.
pub struct UpstreamGroup {
    /// `[upstreams.NAME]`'s name; `None` for a route's single URL.
    name: Option<Arc<str>>,
    /// The targets' base path (the same for all), prefixed to forwarded paths.
    base_path: String,
    members: Vec<Member>,
    /// Member indices in smooth weighted round-robin order (the sum of the weights long).
    schedule: Vec<u8>,
    /// Where the next pick starts in `schedule` (or among `members`).
    next: AtomicUsize,
    balance: Balance,
    retries: u32,
    passive: PassiveHealthConfig,
    active: Option<HealthCheckConfig>,
    /// How many members are out of rotation (0: the pick looks at no health state).
    out: AtomicUsize,
    /// Times are kept as milliseconds since this.
    epoch: Instant,
    retried: Option<prometheus::IntCounter>,
    /// Dates the health checks.
    clock: Arc<dyn Clock>,
    /// Replaced by a reload: its checks stop (requests under way may still hold it).
    retired: AtomicBool,
}

/// One target and what is known of its health.
pub struct Member {
    /// Its connections.
    pub pool: Arc<UpstreamPool>,
    /// Its share, relative to the others'.
    pub weight: u32,
    up: AtomicBool,
    /// Out of rotation until this (ms since the group's epoch); [`UNTIL_CHECKED`]: until the
    /// active check passes.
    out_until: AtomicU64,
    /// Failed requests in a row.
    failures: AtomicU32,
    /// Requests picked for it and not finished.
    in_flight: AtomicUsize,
    checks_passed: AtomicU32,
    checks_failed: AtomicU32,
    last_check: Mutex<Option<LastCheck>>,
    gauge: Option<prometheus::IntGauge>,
    transitions: Option<[prometheus::IntCounter; 2]>,
}

const UNTIL_CHECKED: u64 = u64::MAX;

/// The last active check of a target, for the admin API.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// When it ended.
    pub at: portcullis_core::Timestamp,
    /// Whether it passed.
    pub passed: bool,
    /// `status 200`, `connect failed`, `timed out` …
    pub detail: String,
}

impl UpstreamGroup {
    /// A route's single upstream: one target, never out of rotation, not listed.
    pub fn single(pool: Arc<UpstreamPool>, base_path: &str) -> Arc<Self> {
        Arc::new(Self {
            name: None,
            base_path: base_path.to_owned(),
            members: vec![Member::new(pool, 1, None)],
            schedule: vec![0],
            next: AtomicUsize::new(0),
            balance: Balance::RoundRobin,
            retries: 0,
            passive: PassiveHealthConfig {
                failures: 0,
                ..PassiveHealthConfig::default()
            },
            active: None,
            out: AtomicUsize::new(0),
            epoch: Instant::now(),
            retried: None,
            clock: Arc::new(SystemClock),
            retired: AtomicBool::new(false),
        })
    }

    /// The group `[upstreams.name]`, its pools from `proxy`, its checks dated by `clock`.
    /// `previous` is the group of that
    /// name it replaces (a reload): a target it also had keeps its health state. Starts the
    /// active checks, which end when the group is dropped.
    pub fn configured(
        name: &str,
        cfg: &UpstreamGroupConfig,
        proxy: &Proxy,
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
        previous: Option<&UpstreamGroup>,
    ) -> Result<Arc<Self>, String> {
        let mut members = Vec::with_capacity(cfg.targets.len());
        let mut base = String::new();
        for t in &cfg.targets {
            let crate::config::Upstream::Url {
                scheme,
                authority,
                base_path,
            } = &t.url
            else {
                return Err(format!("upstream `{name}`: targets are http(s):// URLs"));
            };
            let pool = proxy
                .pool(scheme, authority)
                .map_err(|e| format!("upstream `{name}`: {e}"))?;
            base.clone_from(base_path);
            let origin = pool.origin().to_owned();
            let m = Member::new(pool, t.weight, Some((metrics, name, origin.as_str())));
            if let Some(old) = previous.and_then(|p| p.member_at(&origin)) {
                m.take_state(old);
            }
            m.show();
            members.push(m);
        }
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let out = members
            .iter()
            .filter(|m| !m.up.load(Ordering::Relaxed))
            .count();
        let group = Arc::new(Self {
            name: Some(name.into()),
            base_path: base,
            schedule: smooth_schedule(&weights),
            members,
            next: AtomicUsize::new(0),
            balance: cfg.balance,
            retries: cfg.retries,
            passive: cfg.passive.clone(),
            active: cfg.health.clone(),
            out: AtomicUsize::new(out),
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            retried: Some(metrics.upstream_retries.with_label_values(&[name])),
            clock,
            retired: AtomicBool::new(false),
        });
        if let Some(h) = &group.active {
            tokio::spawn(check_forever(Arc::downgrade(&group), h.clone()));
        }
        Ok(group)
    }

    /// Stops its health checks: a reload replaced it (what still holds it — a request under
    /// way, an open WebSocket tunnel — needs no more picks).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Its name (`None` for a route's single URL).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The path prefixed to forwarded paths (`""` for none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Its targets.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `[upstreams.NAME.health]` checks run.
    pub fn has_active_checks(&self) -> bool {
        self.active.is_some()
    }

    /// How targets are picked.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Whether member `i` is in rotation.
    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].up.load(Ordering::Relaxed)
    }

    fn member_at(&self, origin: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.pool.origin() == origin)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Picks a target for a request whose head will hold the target's `Host` value from
    /// offset `host_at` on (see [`Picked::retry`]).
    pub fn pick(&self, host_at: usize) -> Picked<'_> {
        // A group of one (every route with a single URL): nothing to choose, nothing counted.
        let member = if self.members.len() == 1 {
            0
        } else {
            self.choose(0).unwrap_or(0)
        };
        let p = Picked {
            group: self,
            member,
            tried: 1u64 << member,
            attempts: 0,
            host_at: host_at..host_at + self.members[member].pool.host().len(),
        };
        p.enter();
        p
    }

    /// A member not in `tried` (a bit per member): one in rotation if any, else any.
    fn choose(&self, tried: u64) -> Option<usize> {
        let untried = |i: usize| tried & (1u64 << i) == 0;
        if self.out.load(Ordering::Relaxed) > 0 {
            if let Some(i) = self.trial(untried) {
                return Some(i);
            }
        }
        let up = |i: usize| untried(i) && self.members[i].up.load(Ordering::Relaxed);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.scan(start, up).or_else(|| self.scan(start, untried))
    }

    /// A member whose cooldown is over, claimed for one trial request (the others wait for
    /// its outcome, or one more cooldown).
    fn trial(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut now = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.up.load(Ordering::Relaxed) || !eligible(i) {
                continue;
            }
            let until = m.out_until.load(Ordering::Relaxed);
            if until == UNTIL_CHECKED {
                continue;
            }
            let now = *now.get_or_insert_with(|| self.now_ms());
            let again = now.saturating_add(millis(self.passive.cooldown));
            if now >= until
                && m.out_until
                    .compare_exchange(until, again, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(i);
            }
        }
        None
    }

    fn scan(&self, start: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self.balance {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                (0..n)
                    .map(|k| usize::from(self.schedule[(start + k) % n]))
                    .find(|&i| eligible(i))
            }
            Balance::LeastRequests => {
                let n = self.members.len();
                let mut best: Option<(usize, usize)> = None;
                for i in (0..n).map(|k| (start + k) % n).filter(|&i| eligible(i)) {
                    let load = self.members[i].in_flight.load(Ordering::Relaxed);
                    // load / weight < best_load / best_weight, without division; the first
                    // of equals (from a moving start) wins, so ties take turns.
                    let better = best.is_none_or(|(b, bl)| {
                        load as u64 * u64::from(self.members[b].weight)
                            < bl as u64 * u64::from(self.members[i].weight)
                    });
                    if better {
                        best = Some((i, load));
                    }
                }
                best.map(|(i, _)| i)
            }
        }
    }

    /// A request to member `i` failed in a way that speaks of the target (see the module).
    fn failed(&self, i: usize) {
        if self.passive.failures == 0 {
            return;
        }
        let m = &self.members[i];
        let n = m.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let up = m.up.load(Ordering::Relaxed);
        if up && n >= self.passive.failures {
            self.set_in_rotation(i, false, "requests failed");
        } else if !up && self.active.is_none() {
            // A failed trial: out for one more cooldown.
            let again = self.now_ms().saturating_add(millis(self.passive.cooldown));
            m.out_until.store(again, Ordering::Relaxed);
        }
    }

    /// A request to member `i` got a response head.
    fn answered(&self, i: usize) {
        let m = &self.members[i];
        if m.failures.load(Ordering::Relaxed) != 0 {
            m.failures.store(0, Ordering::Relaxed);
        }
        if self.active.is_none() && !m.up.load(Ordering::Relaxed) {
            self.set_in_rotation(i, true, "a request was answered");
        }
    }

    /// Takes member `i` out of rotation (`up == false`) or puts it back: the counters, the
    /// gauge, the transition counter and one log line, each only on a change.
    fn set_in_rotation(&self, i: usize, up: bool, why: &str) {
        let m = &self.members[i];
        if up {
            m.failures.store(0, Ordering::Relaxed);
        } else {
            let until = match self.active {
                Some(_) => UNTIL_CHECKED,
                None => self.now_ms().saturating_add(millis(self.passive.cooldown)),
            };
            m.out_until.store(until, Ordering::Relaxed);
        }
        if m.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        if up {
            self.out.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.out.fetch_add(1, Ordering::Relaxed);
        }
        m.show();
        if let Some(t) = &m.transitions {
            t[usize::from(up)].inc();
        }
        let (upstream, target) = (self.name.as_deref().unwrap_or("-"), m.pool.origin());
        if up {
            tracing::info!(upstream, target = %target, reason = why, "upstream target back in rotation");
        } else {
            tracing::warn!(upstream, target = %target, reason = why, "upstream target taken out of rotation");
        }
    }

    /// Records one active check of member `i`.
    fn checked(&self, i: usize, h: &HealthCheckConfig, passed: bool, detail: String) {
        let m = &self.members[i];
        *lock(&m.last_check) = Some(LastCheck {
            at: self.clock.now(),
            passed,
            detail,
        });
        if passed {
            m.checks_failed.store(0, Ordering::Relaxed);
            let n = m
                .checks_passed
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if n >= h.healthy_after && !m.up.load(Ordering::Relaxed) {
                self.set_in_rotation(i, true, "health checks passed");
            }
        } else {
            m.checks_passed.store(0, Ordering::Relaxed);
            let n = m
                .checks_failed
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if n >= h.unhealthy_after && m.up.load(Ordering::Relaxed) {
                self.set_in_rotation(i, false, "health checks failed");
            }
        }
    }
}

impl Member {
    fn new(pool: Arc<UpstreamPool>, weight: u32, metrics: Option<(&Metrics, &str, &str)>) -> Self {
        Self {
            pool,
            weight,
            up: AtomicBool::new(true),
            out_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            checks_passed: AtomicU32::new(0),
            checks_failed: AtomicU32::new(0),
            last_check: Mutex::new(None),
            gauge: metrics.map(|(m, g, t)| m.upstream_up.with_label_values(&[g, t])),
            transitions: metrics.map(|(m, g, t)| {
                ["out", "in"].map(|to| m.upstream_transitions.with_label_values(&[g, t, to]))
            }),
        }
    }

    /// Carries the health state of the same target in the group this one replaces.
    fn take_state(&self, old: &Member) {
        let load = |a: &AtomicU32| a.load(Ordering::Relaxed);
        self.up
            .store(old.up.load(Ordering::Relaxed), Ordering::Relaxed);
        self.out_until
            .store(old.out_until.load(Ordering::Relaxed), Ordering::Relaxed);
        self.failures.store(load(&old.failures), Ordering::Relaxed);
        self.checks_passed
            .store(load(&old.checks_passed), Ordering::Relaxed);
        self.checks_failed
            .store(load(&old.checks_failed), Ordering::Relaxed);
        *lock(&self.last_check) = lock(&old.last_check).clone();
    }

    fn show(&self) {
        if let Some(g) = &self.gauge {
            g.set(i64::from(self.up.load(Ordering::Relaxed)));
        }
    }

    /// Requests in flight to it (counted in groups of more than one target).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failed requests in a row.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last active check.
    pub fn last_check(&self) -> Option<LastCheck> {
        lock(&self.last_check).clone()
    }
}

/// The target chosen for one request; counted in flight until dropped.
pub struct Picked<'g> {
    group: &'g UpstreamGroup,
    member: usize,
    /// A bit per member tried.
    tried: u64,
    attempts: u32,
    /// Where the target's `Host` value is in the request head.
    host_at: Range<usize>,
}

impl<'g> Picked<'g> {
    /// The chosen target's connections.
    pub fn pool(&self) -> &'g Arc<UpstreamPool> {
        &self.group.members[self.member].pool
    }

    /// The request could not be sent (no connection): another target, if the group has one
    /// not tried yet and retries are left, with its `Host` value written into `head`.
    pub fn retry(&mut self, head: &mut Vec<u8>) -> bool {
        self.group.failed(self.member);
        if self.attempts >= self.group.retries {
            return false;
        }
        let Some(next) = self.group.choose(self.tried) else {
            return false;
        };
        self.leave();
        self.attempts += 1;
        self.member = next;
        self.tried |= 1u64 << next;
        self.enter();
        let host = self.pool().host().as_bytes();
        head.splice(self.host_at.clone(), host.iter().copied());
        self.host_at = self.host_at.start..self.host_at.start + host.len();
        if let Some(c) = &self.group.retried {
            c.inc();
        }
        true
    }

    /// The target failed this request after it was sent (no answer in time, a broken or
    /// malformed response head).
    pub fn failed(&self) {
        self.group.failed(self.member);
    }

    /// The target answered (a response head arrived).
    pub fn answered(&self) {
        if self.group.members.len() > 1 {
            self.group.answered(self.member);
        }
    }

    fn enter(&self) {
        if self.group.members.len() > 1 {
            self.group.members[self.member]
                .in_flight
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(&self) {
        if self.group.members.len() > 1 {
            self.group.members[self.member]
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Checks every target of the group every `h.interval` until the group is dropped or
/// retired.
async fn check_forever(group: Weak<UpstreamGroup>, h: HealthCheckConfig) {
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(g) = group
            .upgrade()
            .filter(|g| !g.retired.load(Ordering::Relaxed))
        else {
            return;
        };
        let mut checks = tokio::task::JoinSet::new();
        for (i, m) in g.members.iter().enumerate() {
            let (pool, path, timeout) = (m.pool.clone(), h.path.clone(), h.timeout);
            checks.spawn(async move {
                let outcome = match tokio::time::timeout(timeout, pool.probe(&path)).await {
                    Ok(Ok(status)) => ((200..400).contains(&status), format!("status {status}")),
                    Ok(Err(e)) => (false, e),
                    Err(_) => (false, "timed out".to_owned()),
                };
                (i, outcome)
            });
        }
        // The group is not held while the checks run (a reload may drop it meanwhile).
        drop(g);
        while let Some(done) = checks.join_next().await {
            let (Ok((i, (passed, detail))), Some(g)) = (done, group.upgrade()) else {
                continue;
            };
            g.checked(i, &h, passed, detail);
        }
    }
}

/// Smooth weighted round robin (nginx's): each target appears `weight` times, spread out
/// (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
fn smooth_schedule(weights: &[u32]) -> Vec<u8> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        // At most 64 targets (the configuration's bound): an index fits in a byte.
        out.push(u8::try_from(best).unwrap_or(u8::MAX));
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A plain value behind it: consistent across a panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_upstream, ProxyConfig, TargetConfig};

    fn group(
        weights: &[u32],
        balance: Balance,
        passive: PassiveHealthConfig,
    ) -> Arc<UpstreamGroup> {
        let proxy = Proxy::new(&ProxyConfig::default()).unwrap();
        let cfg = UpstreamGroupConfig {
            targets: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| TargetConfig {
                    url: parse_upstream(&format!("http://127.0.0.1:{}/v1", 10_000 + i)).unwrap(),
                    weight,
                })
                .collect(),
            balance,
            retries: 2,
            health: None,
            passive,
        };
        UpstreamGroup::configured(
            "g",
            &cfg,
            &proxy,
            &Metrics::new(),
            Arc::new(SystemClock),
            None,
        )
        .unwrap()
    }

    fn port(p: &Picked<'_>) -> u16 {
        p.pool()
            .origin()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
            - 10_000
    }

    #[test]
    fn round_robin_follows_the_weights_and_skips_targets_out_of_rotation() {
        let g = group(&[2, 1], Balance::RoundRobin, PassiveHealthConfig::default());
        assert_eq!(g.base_path(), "/v1");
        let seq: Vec<u16> = (0..6).map(|_| port(&g.pick(0))).collect();
        assert_eq!(seq, [0, 1, 0, 0, 1, 0]);
        // Three failed requests take target 0 out: every pick is target 1 now.
        for _ in 0..3 {
            g.failed(0);
        }
        assert!(!g.is_up(0));
        assert!((0..5).all(|_| port(&g.pick(0)) == 1));
        // Both out: requests go to both again (rather than nowhere).
        for _ in 0..3 {
            g.failed(1);
        }
        let seen: std::collections::HashSet<u16> = (0..6).map(|_| port(&g.pick(0))).collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn least_requests_prefers_the_idle_target_for_its_weight() {
        let g = group(
            &[1, 1, 2],
            Balance::LeastRequests,
            PassiveHealthConfig::default(),
        );
        let held: Vec<Picked<'_>> = (0..4).map(|_| g.pick(0)).collect();
        // Four in flight over weights 1, 1, 2: one, one and two.
        let mut counts = [0; 3];
        for p in &held {
            counts[usize::from(port(p))] += 1;
        }
        assert_eq!(counts, [1, 1, 2]);
        assert_eq!(g.members()[2].in_flight(), 2);
        drop(held);
        assert!(g.members().iter().all(|m| m.in_flight() == 0));
    }

    #[test]
    fn a_retry_takes_another_target_and_rewrites_the_host() {
        let g = group(
            &[1, 1, 1],
            Balance::RoundRobin,
            PassiveHealthConfig::default(),
        );
        let mut head = b"GET /v1/x HTTP/1.1\r\nhost: ".to_vec();
        let mut p = g.pick(head.len());
        head.extend_from_slice(p.pool().host().as_bytes());
        head.extend_from_slice(b"\r\naccept: */*\r\n\r\n");
        let first = port(&p);
        assert!(p.retry(&mut head));
        let second = port(&p);
        assert_ne!(first, second);
        let want = format!(
            "GET /v1/x HTTP/1.1\r\nhost: 127.0.0.1:{}\r\naccept: */*\r\n\r\n",
            10_000 + second
        );
        assert_eq!(String::from_utf8(head.clone()).unwrap(), want);
        assert!(p.retry(&mut head));
        assert_ne!(port(&p), first);
        assert_ne!(port(&p), second);
        // Every target tried (and retries spent): no more.
        assert!(!p.retry(&mut head));
        assert_eq!(g.members()[usize::from(port(&p))].in_flight(), 1);
    }

    #[test]
    fn without_active_checks_a_target_is_tried_again_after_the_cooldown() {
        let passive = PassiveHealthConfig {
            failures: 1,
            cooldown: Duration::from_millis(20),
        };
        let g = group(&[1, 1], Balance::RoundRobin, passive);
        g.failed(0);
        assert!(!g.is_up(0));
        assert!((0..4).all(|_| port(&g.pick(0)) == 1));
        std::thread::sleep(Duration::from_millis(40));
        // One request tries it; the others keep going to target 1 meanwhile.
        assert_eq!(port(&g.pick(0)), 0);
        assert!((0..4).all(|_| port(&g.pick(0)) == 1));
        // The trial was answered: back in rotation.
        g.answered(0);
        assert!(g.is_up(0));
        let seen: std::collections::HashSet<u16> = (0..4).map(|_| port(&g.pick(0))).collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn a_group_of_one_is_never_taken_out() {
        let proxy = Proxy::new(&ProxyConfig::default()).unwrap();
        let http = http::uri::Scheme::HTTP;
        let pool = proxy.pool(&http, &"127.0.0.1:9".parse().unwrap()).unwrap();
        let g = UpstreamGroup::single(pool, "");
        for _ in 0..10 {
            g.failed(0);
        }
        assert!(g.is_up(0));
        let mut head = Vec::new();
        assert!(!g.pick(0).retry(&mut head));
    }

    #[test]
    fn the_schedule_spreads_the_weights() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_schedule(&[2, 1]), vec![0, 1, 0]);
        let s = smooth_schedule(&[3, 7, 100]);
        assert_eq!(s.len(), 110);
        for (i, w) in [3usize, 7, 100].into_iter().enumerate() {
            assert_eq!(s.iter().filter(|&&m| usize::from(m) == i).count(), w);
        }
    }
}

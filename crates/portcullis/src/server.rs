//! `portcullis serve`: wires config, store, domain and HTTP together, then serves.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Request, Response, StatusCode};
use portcullis_core::crypto::seal::SealKey;
use portcullis_core::crypto::{hex, sha256, unhex};
use portcullis_core::oauth2::{Form, OAuthError};
use portcullis_core::text::CompactText;
use portcullis_core::{Scheme, Timestamp};
use portcullis_domain::admin::KeyAdmin;
use portcullis_domain::audit;
use portcullis_domain::authn::api_key::{ApiKeyAuthenticator, ApiKeyConfig, KeyCache};
use portcullis_domain::authn::hmac::HmacAuthenticator;
use portcullis_domain::authn::http_sig::HttpSigAuthenticator;
use portcullis_domain::authn::issuers::{ExternalIssuer, Fetch};
use portcullis_domain::authn::jwt::{JwtAuthenticator, JwtConfig};
use portcullis_domain::authn::sigv4::SigV4Authenticator;
use portcullis_domain::authn::{Authenticator, HmacRoute, HttpSigRoute, RouteAuth, SigV4Route};
use portcullis_domain::dpop::{proof_header, DpopChecker, DpopRefusal, PROOF_ALGORITHMS};
use portcullis_domain::gate::{Gate, RouteGate};
use portcullis_domain::hmac::{HmacAdmin, HmacKeys};
use portcullis_domain::oauth::{
    CachedClients, ClientAdmin, IssuerConfig, Revocations, TokenIssuer,
};
use portcullis_domain::ratelimit::RateLimiter;
use portcullis_domain::signing::{tick_audited, KeyRing, SigningAdmin};
use portcullis_domain::upstream_identity::IdentityTokens;
use portcullis_domain::usage::UsageTracker;
use portcullis_domain::webhooks::{Deliverer, WebhookAdmin, WebhookTap};
use portcullis_domain::{Clock, Policy, SystemClock};
use portcullis_store::memory::MemoryRateCells;
use portcullis_store::sqlite::SqliteStore;
use portcullis_store::{ApiKeys, AuditLog, Nonces, OAuthClients};
use tower::ServiceExt;

use crate::admin_api::{self, AdminState};
use crate::balance::UpstreamGroup;
use crate::config::{Config, LimitsConfig, RouteConfig, SinkKind, Upstream, UpstreamGroupConfig};
use crate::fetch::HttpFetch;
use crate::gateway::{ClientIp, Gateway, Route, Routes, Target};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::sink::{Reopen, ReopeningFile};
use crate::webhook_send::HttpSender;

/// Flags of `serve` that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

/// A startup failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// What the listener's connections share.
pub struct App {
    pub(crate) gateway: Gateway,
    admin: axum::Router,
    metrics: Arc<Metrics>,
    keys: Arc<dyn ApiKeys>,
    auditor: audit::Auditor,
    ids: RequestIds,
    clock: Arc<dyn Clock>,
    limits: LimitsConfig,
    stopping: AtomicBool,
    ring: Arc<KeyRing>,
    issuer: Arc<TokenIssuer>,
    /// Counts failed client authentications at the OAuth endpoints, per client address.
    limiter: RateLimiter,
    oauth_failure_limit: Option<portcullis_core::ratelimit::Limit>,
}

impl App {
    /// A new request id.
    pub(crate) fn next_request_id(&self) -> RequestId {
        self.ids.next()
    }

    /// The size limits and timeouts of `[limits]`.
    pub(crate) fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// The most bytes a head may take: the header limit plus room for the request or
    /// status line (a longer head is refused before its fields are counted).
    pub(crate) fn max_head_bytes(&self) -> usize {
        self.limits.max_header_bytes + 8 * 1024
    }

    /// Whether the server is shutting down (connections close after their current request).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub(crate) fn push_http_date(&self, out: &mut Vec<u8>) {
        push_http_date(out, self.clock.now().as_secs());
    }
}

/// Appends `secs` since the Unix epoch as an IMF-fixdate (RFC 9110 §5.6.7).
fn push_http_date(out: &mut Vec<u8>, secs: i64) {
    if let Some(s) = Timestamp::from_secs(secs).to_http_date() {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Request ids: a random per-process prefix and a counter (unique, cheap, not guessable
/// across restarts), e.g. `3f9a0c51e2d4-1a2b`.
struct RequestIds {
    /// 12 hex digits.
    prefix: String,
    next: AtomicU64,
}

/// One request id, on the stack: 12 hex digits, `-`, up to 16 hex digits.
pub(crate) type RequestId = CompactText<29>;

impl RequestIds {
    fn new() -> Self {
        Self {
            prefix: hex(&portcullis_domain::random_bytes::<6>()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut digits = [0u8; 16];
        let len = usize::try_from((64 - (n | 1).leading_zeros()).div_ceil(4)).unwrap_or(16);
        for (i, d) in digits[..len].iter_mut().rev().enumerate() {
            *d = HEX[usize::try_from((n >> (4 * i)) & 0xf).unwrap_or(0)];
        }
        // Only hex digits were written.
        let digits = std::str::from_utf8(&digits[..len]).unwrap_or("0");
        CompactText::from_parts(&[self.prefix.as_str(), "-", digits])
    }
}

impl Overrides {
    /// Puts the flags given (which clap has already merged with env) over `cfg`.
    fn apply(&self, cfg: &mut Config) {
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir.clone_from(d);
        }
    }
}

/// Loads the configuration, applying flags (which clap has already merged with env); with
/// the SHA-256 (hex) of the file's text, when there is a file.
pub fn load_config(o: &Overrides) -> Result<(Config, Option<String>), StartError> {
    let (mut cfg, digest) = match &o.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| StartError(format!("{}: cannot read: {e}", p.display())))?;
            let cfg = Config::from_file_text(p, &text).map_err(|e| StartError(e.0))?;
            (cfg, Some(hex(&sha256(text.as_bytes()))))
        }
        None => (Config::default(), None),
    };
    o.apply(&mut cfg);
    Ok((cfg, digest))
}

/// Runs the server until SIGINT/SIGTERM; SIGHUP reloads the routes from the file that
/// `overrides` names (the one `cfg` was loaded from, whose text had the SHA-256 `digest`).
pub async fn serve(
    cfg: Config,
    overrides: Overrides,
    digest: Option<String>,
) -> Result<(), StartError> {
    let data_dir = cfg.data_dir.clone();
    create_private_dir(&data_dir)?;
    // Held until `serve` returns (the kernel releases it if the process dies).
    let _lock = lock_data_dir(&data_dir)?;
    let token_hash = admin_token(&data_dir)?;
    // Bound early: the issuer URL of the tokens defaults to the address actually bound.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let issuer_url = cfg
        .oauth
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let store = Arc::new(
        SqliteStore::open(&data_dir.join("portcullis.db"))
            .await
            .map_err(|e| {
                StartError(format!(
                    "cannot open the store in {}: {e}",
                    data_dir.display()
                ))
            })?,
    );
    let keys: Arc<dyn ApiKeys> = store.clone();
    let audit_log: Arc<dyn AuditLog> = store.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());

    let mut reopen = None;
    let sink: Option<Box<dyn Write + Send>> = match cfg.audit.sink {
        SinkKind::None => None,
        SinkKind::Stdout => Some(Box::new(std::io::stdout())),
        SinkKind::File => {
            let path = if cfg.audit.path.is_absolute() {
                cfg.audit.path.clone()
            } else {
                data_dir.join(&cfg.audit.path)
            };
            let (file, r) = ReopeningFile::open(path.clone())
                .map_err(|e| StartError(format!("cannot open {}: {e}", path.display())))?;
            reopen = Some(r);
            Some(Box::new(file))
        }
    };
    reopen_on_sigusr1(reopen)?;
    let (auditor, writer) = audit::channel(audit_log.clone(), sink, cfg.audit.queue)
        .await
        .map_err(|e| StartError(format!("cannot read the audit trail: {e}")))?;
    // Audit events of the webhook kinds become deliveries before their emitters are told
    // they are stored (the outbox); the deliverer below sends them.
    let webhook_wake = Arc::new(tokio::sync::Notify::new());
    let webhook_tap = Arc::new(WebhookTap::new(store.clone(), webhook_wake.clone()));
    let writer_task = tokio::spawn(
        writer
            .linger(cfg.audit.flush_interval)
            .tap(webhook_tap)
            .run(),
    );
    let revocations = Arc::new(
        Revocations::load(store.clone(), clock.now())
            .await
            .map_err(|e| StartError(format!("cannot read the revoked tokens: {e}")))?,
    );
    let master = master_key(&data_dir)?;
    let ring = Arc::new(
        KeyRing::open(
            store.clone(),
            SealKey::new(&master),
            cfg.signing_keys.ring(),
            clock.now(),
        )
        .await
        .map_err(|e| StartError(format!("cannot load the signing keys: {e}")))?,
    );

    let cache = Arc::new(KeyCache::new(cfg.api_keys.cache_capacity));
    let usage = Arc::new(UsageTracker::new(keys.clone()));
    let ttl_ms = i64::try_from(cfg.api_keys.cache_ttl.as_millis()).unwrap_or(i64::MAX);
    let api_key_cfg = ApiKeyConfig {
        header: cfg.api_keys.header.clone(),
        accept_bearer: cfg.api_keys.accept_bearer,
        allow_foreign: cfg.api_keys.accept_foreign_keys,
        cache_capacity: cfg.api_keys.cache_capacity,
        positive_ttl_ms: ttl_ms,
        negative_ttl_ms: ttl_ms.min(5_000),
    };
    let mut available: HashMap<Scheme, Arc<dyn Authenticator>> = HashMap::new();
    available.insert(
        Scheme::ApiKey,
        Arc::new(ApiKeyAuthenticator::new(
            api_key_cfg,
            keys.clone(),
            cache.clone(),
            usage.clone(),
        )),
    );

    // Shared secrets of signed requests, sealed under the master key (bound to their key id).
    let hmac_seal = Arc::new(SealKey::new(&master));
    let hmac_keys = Arc::new(HmacKeys::new(
        store.clone(),
        hmac_seal.clone(),
        clock.clone(),
    ));
    available.insert(
        Scheme::Hmac,
        Arc::new(HmacAuthenticator::new(hmac_keys.clone(), store.clone())),
    );
    available.insert(
        Scheme::SigV4,
        Arc::new(SigV4Authenticator::new(hmac_keys.clone(), store.clone())),
    );
    available.insert(
        Scheme::HttpSignature,
        Arc::new(HttpSigAuthenticator::new(hmac_keys.clone(), store.clone())),
    );

    let mut dpop = DpopChecker::new(
        store.clone(),
        i64::try_from(cfg.oauth.dpop_proof_max_age.as_secs()).unwrap_or(60),
    );
    if cfg.oauth.dpop_nonce {
        // Derived from the master key: every instance sharing it takes the others' nonces.
        let key =
            portcullis_core::crypto::sign::hmac_sha256(&master[..], b"portcullis dpop-nonce v1");
        dpop = dpop.with_server_nonces(key, DPOP_NONCE_PERIOD_SECS);
    }
    let dpop = Arc::new(dpop);
    let fetch: Arc<dyn Fetch> = Arc::new(HttpFetch::new(&cfg.proxy).map_err(StartError)?);
    let external: Vec<Arc<ExternalIssuer>> = cfg
        .issuers
        .iter()
        .map(|t| Ok(Arc::new(ExternalIssuer::new(t.settings()?, fetch.clone()))))
        .collect::<Result<_, String>>()
        .map_err(StartError)?;
    // Their keys before the first request, as far as each answers within its fetch deadline;
    // one that does not is fetched again in the background (and on its first token).
    let mut first = tokio::task::JoinSet::new();
    for i in external.iter().filter(|i| !i.introspects()) {
        let (i, metrics, now) = (i.clone(), metrics.clone(), clock.now());
        first.spawn(async move { refresh_issuer(&i, &metrics, now).await });
    }
    first.join_all().await;
    available.insert(
        Scheme::Jwt,
        Arc::new(
            JwtAuthenticator::new(
                JwtConfig {
                    issuer: issuer_url.clone(),
                    // Tokens for another resource (RFC 8707) do not open the gateway's routes.
                    audiences: vec![issuer_url.clone()],
                    leeway_secs: 30,
                    cache_capacity: 100_000,
                },
                ring.clone(),
                revocations.clone(),
                dpop.clone(),
            )
            .with_issuers(external.clone()),
        ),
    );

    let proxy = Arc::new(Proxy::new(&cfg.proxy).map_err(StartError)?);
    let groups =
        build_upstreams(&cfg.upstreams, &proxy, &metrics, &clock, &[]).map_err(StartError)?;
    let routes = build_routes(
        &cfg.routes,
        &groups,
        &cfg.api_keys.header,
        &available,
        &proxy,
        &metrics,
        None,
        clock.now(),
    )
    .map_err(StartError)?;
    let limiter = RateLimiter::new(Arc::new(MemoryRateCells::new()));
    let gate =
        Gate::new(limiter.clone(), usage.clone(), auditor.clone()).audited(cfg.audit.decisions);
    let gateway = Gateway::new(
        routes,
        gate,
        clock.clone(),
        metrics.clone(),
        cfg.api_keys.header.clone(),
        ClientIp {
            trusted: cfg.client_ip.trusted_proxies.clone(),
            header: cfg.client_ip.header.clone(),
        },
    )
    .with_dpop(dpop.clone())
    .with_identity_tokens(Arc::new(IdentityTokens::new(
        ring.clone(),
        issuer_url.clone(),
        100_000,
    )));
    let upstreams: Upstreams = Arc::new(arc_swap::ArcSwap::from_pointee(groups));
    let routes_in_force = Arc::new(arc_swap::ArcSwap::from_pointee(admin_api::routes_view(
        &cfg.routes,
        overrides.config.as_deref(),
        digest.as_deref(),
        clock.now(),
    )));
    // One cache for the endpoints and the admin use cases, so a change drops it at once.
    let clients: Arc<dyn OAuthClients> = Arc::new(CachedClients::new(
        store.clone(),
        clock.clone(),
        10_000,
        CLIENT_CACHE_TTL,
    ));
    let issuer = Arc::new(TokenIssuer::new(
        clients.clone(),
        store.clone(),
        ring.clone(),
        IssuerConfig {
            issuer: issuer_url.clone(),
            access_token_lifetime: cfg.oauth.access_token_lifetime,
        },
        revocations.clone(),
        dpop,
    ));
    // Webhook secrets, sealed under the master key (bound to their endpoint id).
    let webhook_seal = Arc::new(SealKey::new(&master));
    let admin_state = Arc::new(AdminState {
        keys: KeyAdmin::new(
            keys.clone(),
            cache,
            usage.clone(),
            auditor.clone(),
            clock.clone(),
            cfg.api_keys.prefix.clone(),
            cfg.api_keys.accept_foreign_keys,
        ),
        audit: audit_log.clone(),
        token_hash,
        clock: clock.clone(),
        routes: routes_in_force.clone(),
        upstreams: upstreams.clone(),
        signing: SigningAdmin::new(ring.clone(), auditor.clone(), clock.clone()),
        clients: ClientAdmin::new(clients.clone(), auditor.clone(), clock.clone()),
        hmac: HmacAdmin::new(
            store.clone(),
            hmac_keys,
            hmac_seal,
            auditor.clone(),
            clock.clone(),
        ),
        webhooks: WebhookAdmin::new(
            store.clone(),
            webhook_seal.clone(),
            auditor.clone(),
            clock.clone(),
            cfg.webhooks.settings(),
            webhook_wake.clone(),
        ),
    });
    let app = Arc::new(App {
        gateway,
        admin: admin_api::router(admin_state),
        metrics: metrics.clone(),
        keys,
        auditor: auditor.clone(),
        ids: RequestIds::new(),
        clock: clock.clone(),
        limits: cfg.limits.clone(),
        stopping: AtomicBool::new(false),
        ring: ring.clone(),
        issuer: issuer.clone(),
        limiter,
        oauth_failure_limit: cfg.oauth.failed_auth_limit,
    });

    let reloader = reload_on_sighup(Reloader {
        view: routes_in_force,
        upstreams,
        overrides,
        running: cfg.clone(),
        available,
        proxy: proxy.clone(),
        app: app.clone(),
        auditor: auditor.clone(),
        clock: clock.clone(),
    })?;
    let reaper = proxy.spawn_reaper();
    let flusher = {
        let (usage, auditor) = (usage.clone(), auditor.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                usage.flush(&auditor).await;
            }
        })
    };

    // Scheduled rotations, removal of keys whose tokens have all expired, and the keys
    // another process (the CLI's admin call goes through this one) may have added.
    let rotator = {
        let (ring, auditor, clock) = (ring.clone(), auditor.clone(), clock.clone());
        let revocations = revocations.clone();
        let nonces = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SIGNING_TICK);
            loop {
                tick.tick().await;
                if let Err(e) = tick_audited(&ring, &auditor, clock.now()).await {
                    tracing::warn!(error = %e, "signing-key rotation step failed");
                }
                if let Err(e) = revocations.purge(clock.now()).await {
                    tracing::warn!(error = %e, "purging expired token revocations failed");
                }
                if let Err(e) = nonces.delete_expired_nonces(clock.now()).await {
                    tracing::warn!(error = %e, "purging expired single-use values failed");
                }
            }
        })
    };

    let issuer_refreshers: Vec<_> = external
        .iter()
        .zip(&cfg.issuers)
        .filter(|(issuer, _)| !issuer.introspects())
        .map(|(issuer, t)| {
            let (issuer, metrics, clock) = (issuer.clone(), metrics.clone(), clock.clone());
            let every = t.refresh_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    refresh_issuer(&issuer, &metrics, clock.now()).await;
                }
            })
        })
        .collect();

    let webhook_stop = Arc::new(tokio::sync::Notify::new());
    let deliverer = {
        let sender = HttpSender::new(&cfg.proxy, cfg.proxy.connect_timeout).map_err(StartError)?;
        let d = Arc::new(Deliverer::new(
            store.clone(),
            webhook_seal,
            Arc::new(sender),
            auditor.clone(),
            clock.clone(),
            cfg.webhooks.settings(),
            webhook_wake,
        ));
        tokio::spawn(d.run(webhook_stop.clone()))
    };

    let retention_stop = Arc::new(RetentionStop::default());
    let retention = cfg.audit.retention.map(|keep| {
        let (log, auditor, clock) = (audit_log.clone(), auditor.clone(), clock.clone());
        tokio::spawn(audit_retention(
            log,
            auditor,
            clock,
            keep,
            retention_stop.clone(),
        ))
    });

    println!("portcullis listening on http://{local}");
    tracing::info!(%local, routes = cfg.routes.len(), data_dir = %data_dir.display(), "started");

    accept_loop(listener, app).await;

    // It holds the app and an auditor: the audit writer ends only once it is gone.
    if let Some(r) = reloader {
        r.abort();
        let _ = r.await;
    }
    flusher.abort();
    for r in issuer_refreshers {
        r.abort();
    }
    rotator.abort();
    let _ = rotator.await;
    reaper.abort();
    if let Some(mut r) = retention {
        // A removal under way stops after its step and records what it removed.
        retention_stop.flag.store(true, Ordering::Relaxed);
        retention_stop.wake.notify_one();
        if tokio::time::timeout(Duration::from_secs(5), &mut r)
            .await
            .is_err()
        {
            r.abort();
            tracing::warn!("audit retention did not stop in time");
        }
    }
    // Attempts in flight are dropped: their lease runs out and the next start makes them.
    webhook_stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), deliverer).await;
    usage.flush(&auditor).await;
    auditor.flush().await;
    drop(auditor);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells the retention task to stop: between two steps of a removal (`flag`), or at once
/// while it waits for its next turn (`wake`).
#[derive(Default)]
struct RetentionStop {
    flag: AtomicBool,
    wake: tokio::sync::Notify,
}

/// Removes audit events older than `keep`, at start and hourly after that (see
/// `audit::prune`: in short steps, beside the traffic), until told to stop. A failure is
/// logged and tried again at the next turn.
async fn audit_retention(
    log: Arc<dyn AuditLog>,
    auditor: audit::Auditor,
    clock: Arc<dyn Clock>,
    keep: Duration,
    stop: Arc<RetentionStop>,
) {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wake.notified() => return,
        }
        let now = clock.now();
        let before = now.plus_millis(-keep_ms);
        match audit::prune(log.as_ref(), &auditor, before, now, &stop.flag).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "audit retention removed old events"),
            Err(e) => {
                tracing::error!(error = %e, "audit retention failed; trying again in an hour")
            }
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, app: Arc<App>) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(AtomicU64::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (app, stop, open, all_closed) =
                    (app.clone(), stop.clone(), open.clone(), all_closed.clone());
                open.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    crate::h1::serve::serve(stream, peer, app, stop).await;
                    if open.fetch_sub(1, Ordering::AcqRel) == 1 {
                        all_closed.notify_waiters();
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Idle connections close now; busy ones after their current request.
    app.stopping.store(true, Ordering::Relaxed);
    let closed = all_closed.notified();
    let mut closed = std::pin::pin!(closed);
    closed.as_mut().enable();
    stop.notify_waiters();
    if open.load(Ordering::Acquire) > 0
        && tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .is_err()
    {
        tracing::warn!("connections still open after 10s; closing");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down");
}

/// Whether `path` is served by Portcullis itself (admin API, health, metrics) on any host.
pub(crate) fn is_local(path: &str) -> bool {
    path == "/admin/v1"
        || path.starts_with("/admin/v1/")
        || matches!(
            path,
            "/healthz"
                | "/readyz"
                | "/metrics"
                | JWKS_PATH
                | TOKEN_PATH
                | INTROSPECT_PATH
                | REVOKE_PATH
                | METADATA_PATH
        )
}

/// The token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// Token introspection (RFC 7662).
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";

/// Token revocation (RFC 7009).
pub const REVOKE_PATH: &str = "/oauth2/revoke";

/// The authorization server's metadata (RFC 8414 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// How confidential clients may authenticate at the token, introspection and revocation
/// endpoints.
const AUTH_METHODS_SUPPORTED: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

/// What `private_key_jwt` assertions may be signed with.
const ASSERTION_ALGS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];

/// `GET /.well-known/oauth-authorization-server`: exactly what this server supports, no more.
fn metadata(app: &App, req: &Request<Body>) -> Response<Body> {
    if let Some(refused) = get_only(req) {
        return refused;
    }
    let iss = &app.issuer.config().issuer;
    let doc = serde_json::json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}{TOKEN_PATH}"),
        "jwks_uri": format!("{iss}{JWKS_PATH}"),
        "introspection_endpoint": format!("{iss}{INTROSPECT_PATH}"),
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS_SUPPORTED,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint": format!("{iss}{REVOKE_PATH}"),
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS_SUPPORTED,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS_SUPPORTED,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        // RFC 9449 §5.1: a DPoP proof at the token endpoint binds the token to its key.
        "dpop_signing_alg_values_supported": PROOF_ALGORITHMS.map(|a| a.name()),
        // RFC 8414 requires the member; no authorization endpoint is served yet.
        "response_types_supported": [],
    });
    let mut r = Response::new(Body::from(doc.to_string()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// What an OAuth endpoint's POST carries: the `Authorization` header, whether it was Basic,
/// and the form body.
struct OAuthPost {
    authorization: Option<String>,
    used_basic: bool,
    /// The `DPoP` proof, if one was sent (`Err`: several, or unreadable).
    dpop: Result<Option<String>, DpopRefusal>,
    form: Result<Form, OAuthError>,
}

/// Reads a `POST` with an `application/x-www-form-urlencoded` body (bounded); `Err` is the
/// answer for any other method.
async fn oauth_post(req: Request<Body>, what: &str) -> Result<OAuthPost, Response<Body>> {
    if req.method() != http::Method::POST {
        let mut r = oauth_error(&OAuthError::InvalidRequest("This endpoint takes POST."));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        tracing::debug!(endpoint = what, "oauth endpoint called without POST");
        return Err(r);
    }
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let dpop = proof_header(req.headers()).map(|p| p.map(str::to_owned));
    let used_basic = authorization.as_deref().is_some_and(|a| {
        a.trim_start()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
    });
    let form = if form_type {
        match axum::body::to_bytes(req.into_body(), portcullis_core::oauth2::MAX_FORM_BYTES).await {
            Ok(body) => Form::parse(&body),
            Err(_) => Err(OAuthError::InvalidRequest("The request body is too large.")),
        }
    } else {
        Err(OAuthError::InvalidRequest(
            "The body must be application/x-www-form-urlencoded.",
        ))
    };
    Ok(OAuthPost {
        authorization,
        used_basic,
        dpop,
        form,
    })
}

/// An OAuth error, with the Basic challenge when Basic client authentication failed.
fn oauth_refusal(e: &OAuthError, used_basic: bool) -> Response<Body> {
    let mut r = oauth_error(e);
    if *e == OAuthError::InvalidClient && used_basic {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\", charset=\"UTF-8\""),
        );
    }
    r
}

/// A JSON answer of an OAuth endpoint: never cached.
fn oauth_json(body: &serde_json::Value) -> Response<Body> {
    oauth_json_bytes(serde_json::to_vec(body).unwrap_or_default())
}

/// A JSON answer of an OAuth endpoint: never cached (RFC 6749 §5.1).
fn oauth_json_bytes(body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The cell counting failed client authentications from `client` at the OAuth endpoints.
fn oauth_failure_cell(client: std::net::IpAddr) -> String {
    format!(
        "o:client-auth:{}",
        portcullis_core::text::IpText::new(client).as_str()
    )
}

/// `Err(RateLimited)` while `client` has failed client authentication too often.
async fn oauth_throttle(app: &App, client: std::net::IpAddr) -> Result<(), OAuthError> {
    let Some(limit) = &app.oauth_failure_limit else {
        return Ok(());
    };
    let now = app.clock.now();
    match app
        .limiter
        .is_blocked(&oauth_failure_cell(client), limit, now)
        .await
    {
        Some(d) => Err(OAuthError::RateLimited {
            retry_after_secs: d.retry_after_secs,
        }),
        None => Ok(()),
    }
}

/// Counts `e` against `client` if it is a failed client authentication.
async fn oauth_count_failure(app: &App, client: std::net::IpAddr, e: &OAuthError) {
    if let (OAuthError::InvalidClient, Some(limit)) = (e, &app.oauth_failure_limit) {
        let _ = app
            .limiter
            .check(&oauth_failure_cell(client), limit, app.clock.now())
            .await;
    }
}

/// `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009), for
/// authenticated clients; each call is audited (`oauth.introspect`, `oauth.revoke`).
async fn introspect_or_revoke(
    app: &App,
    req: Request<Body>,
    client: std::net::IpAddr,
    revoke: bool,
) -> Response<Body> {
    let post = match oauth_post(req, if revoke { "revoke" } else { "introspect" }).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = app.clock.now();
    let auth = post.authorization.as_deref();
    let form = match oauth_throttle(app, client).await {
        Ok(()) => post.form.as_ref().map_err(|e| *e),
        Err(e) => Err(e),
    };
    let (kind, result) = if revoke {
        let r = match form {
            Ok(f) => app
                .issuer
                .revoke(auth, f, now)
                .await
                .map(|(c, jti)| (c, serde_json::json!({ "revoked": jti }), None)),
            Err(e) => Err(e),
        };
        ("oauth.revoke", r)
    } else {
        let r = match form {
            Ok(f) => app.issuer.introspect(auth, f, now).await.map(|(c, i)| {
                (
                    c,
                    serde_json::json!({ "active": i.active(), "jti": i.jti() }),
                    Some(oauth_json_bytes(i.to_json())),
                )
            }),
            Err(e) => Err(e),
        };
        ("oauth.introspect", r)
    };
    if let Err(e) = &result {
        oauth_count_failure(app, client, e).await;
    }
    let mut event = audit::AuditEvent::new(now, kind, if result.is_ok() { "ok" } else { "deny" })
        .client_ip(client);
    event = match &result {
        Ok((caller, detail, _)) => event
            .reason("ok")
            .credential(caller.as_str().into())
            .detail(detail.clone()),
        Err(e) => event.reason(e.code()),
    };
    if app.auditor.emit_bounded(event).await.is_err() {
        return oauth_error(&OAuthError::TemporarilyUnavailable);
    }
    match result {
        // RFC 7009 §2.2: 200 with an empty body, whether or not there was anything to revoke.
        Ok((_, _, None)) => {
            let mut r = Response::new(Body::empty());
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Ok((_, _, Some(r))) => r,
        Err(e) => oauth_refusal(&e, post.used_basic),
    }
}

/// `POST /oauth2/token` (RFC 6749 §3.2, §4.4, §5): a form body; the answer is never cached.
/// Each answer is an audited authentication decision (`oauth.token`).
async fn token(app: &App, req: Request<Body>, client: std::net::IpAddr) -> Response<Body> {
    let post = match oauth_post(req, "token").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = app.clock.now();
    let result = match (oauth_throttle(app, client).await, &post.form) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(form)) => {
            let dpop = post.dpop.as_ref().map(Option::as_deref).map_err(|e| *e);
            app.issuer
                .token(post.authorization.as_deref(), dpop, form, now)
                .await
        }
        (Ok(()), Err(e)) => Err(*e),
    };
    if let Err(e) = &result {
        oauth_count_failure(app, client, e).await;
    }
    let mut event = audit::AuditEvent::new(
        now,
        "oauth.token",
        if result.is_ok() { "allow" } else { "deny" },
    )
    .client_ip(client);
    event = match &result {
        Ok(t) => event
            .reason("ok")
            .credential(t.client_id.as_str().into())
            .detail(serde_json::json!({ "jti": t.jti, "scope": t.scope, "dpop_jkt": t.dpop_jkt })),
        Err(e) => event.reason(e.code()),
    };
    if app.auditor.emit_bounded(event).await.is_err() {
        return oauth_error(&OAuthError::TemporarilyUnavailable);
    }
    let mut r = match result {
        Ok(t) => oauth_json(&serde_json::json!({
            "access_token": t.access_token,
            "token_type": t.token_type(),
            "expires_in": t.expires_in,
            "scope": t.scope,
        })),
        Err(e) => oauth_refusal(&e, post.used_basic),
    };
    // RFC 9449 §8: where nonces are required, every answer names the current one.
    if let Some(v) = app
        .issuer
        .dpop_nonce(now)
        .and_then(|n| HeaderValue::from_str(&n).ok())
    {
        r.headers_mut().insert(crate::gateway::H_DPOP_NONCE, v);
    }
    r
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(e: &OAuthError) -> Response<Body> {
    let mut r = oauth_json(&serde_json::json!({
        "error": e.code(),
        "error_description": e.description(),
    }));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    if let OAuthError::RateLimited { retry_after_secs } = e {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    r
}

/// Where the JWKS of the signing keys is served.
pub const JWKS_PATH: &str = "/oauth2/jwks";

/// 405 for a method other than GET or HEAD on a read-only document.
fn get_only(req: &Request<Body>) -> Option<Response<Body>> {
    if matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"error":"method_not_allowed","error_description":"This document is read with GET."}"#,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(r)
}

/// How often the signing keys are checked for a scheduled rotation and for removal.
const SIGNING_TICK: Duration = Duration::from_secs(60);

/// `GET /oauth2/jwks`: every published key. Verifiers may cache it for half the lead time
/// (at most an hour), so that each has fetched a new key before the key signs; the `ETag`
/// lets them revalidate for nothing.
fn jwks(app: &App, req: &Request<Body>) -> Response<Body> {
    if let Some(refused) = get_only(req) {
        return refused;
    }
    let body = app.ring.jwks(app.clock.now()).to_string();
    let etag = format!("\"{}\"", hex(&sha256(body.as_bytes())[..16]));
    let max_age = (app.ring.config().lead_time / 2)
        .min(Duration::from_secs(3600))
        .as_secs();
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

/// Serves a request for which [`is_local`] holds.
pub(crate) async fn local(app: &App, mut req: Request<Body>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path();
    if path == "/admin/v1" || path.starts_with("/admin/v1/") {
        let client = app.gateway.client_ip(peer.ip(), req.headers());
        req.extensions_mut()
            .insert(crate::admin_api::Peer(SocketAddr::new(client, peer.port())));
        match app.admin.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    } else if path == JWKS_PATH {
        jwks(app, &req)
    } else if path == METADATA_PATH {
        metadata(app, &req)
    } else if path == INTROSPECT_PATH || path == REVOKE_PATH {
        let client = app.gateway.client_ip(peer.ip(), req.headers());
        let revoke = path == REVOKE_PATH;
        introspect_or_revoke(app, req, client, revoke).await
    } else if path == TOKEN_PATH {
        let client = app.gateway.client_ip(peer.ip(), req.headers());
        token(app, req, client).await
    } else if path == "/healthz" {
        json_response(StatusCode::OK, r#"{"status":"ok"}"#)
    } else if path == "/readyz" {
        match app.keys.count().await {
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","failing":"store"}"#,
                )
            }
            // Authenticated requests would be refused (or wait) while decisions cannot be
            // stored: take this instance out of rotation.
            Ok(_) if !app.auditor.is_storing() => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"unavailable","failing":"audit"}"#,
            ),
            Ok(_) => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
        }
    } else {
        let mut r = Response::new(Body::from(app.metrics.render()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }
}

fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| {
        StartError(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })
}

/// Takes `<data dir>/portcullis.lock` exclusively, and writes this process's id into it for
/// the message another server gets. Two servers on one embedded store would each continue the
/// audit chain from the same head (the second one's appends are refused for ever after) and
/// would not see each other's revocations in their key caches: the second one must not start.
/// (Several instances on shared state are what the PostgreSQL and Redis stores are for.)
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek};
    let path = dir.join("portcullis.lock");
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let fail = |e: std::io::Error| StartError(format!("cannot lock {}: {e}", path.display()));
    let mut f = o.open(&path).map_err(fail)?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0).map_err(fail)?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(fail)?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f
                .rewind()
                .and_then(|()| f.take(32).read_to_string(&mut holder));
            let pid = holder.trim();
            let by = if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                format!(" (pid {pid})")
            } else {
                String::new()
            };
            Err(StartError(format!(
                "data directory {} is in use by another Portcullis server{by}; stop it, or give \
                 this one its own --data-dir",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

/// The `[upstreams]` groups in force, shared by the admin API and the reloader.
pub type Upstreams = Arc<arc_swap::ArcSwap<Vec<Arc<UpstreamGroup>>>>;

/// Builds the `[upstreams]` groups (and starts their health checks). `previous` are the
/// groups they replace (a reload): a target a group of the same name had keeps its health.
fn build_upstreams(
    configured: &std::collections::BTreeMap<String, UpstreamGroupConfig>,
    proxy: &Proxy,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    previous: &[Arc<UpstreamGroup>],
) -> Result<Vec<Arc<UpstreamGroup>>, String> {
    configured
        .iter()
        .map(|(name, cfg)| {
            let old = previous.iter().find(|g| g.name() == Some(name.as_str()));
            UpstreamGroup::configured(
                name,
                cfg,
                proxy,
                metrics,
                clock.clone(),
                old.map(AsRef::as_ref),
            )
        })
        .collect()
}

/// Removes the health gauges of the targets in `old` that none of `new` has (after a reload).
fn forget_targets(old: &[Arc<UpstreamGroup>], new: &[Arc<UpstreamGroup>], metrics: &Metrics) {
    for g in old {
        let Some(name) = g.name() else { continue };
        let kept = new.iter().find(|n| n.name() == Some(name));
        for m in g.members() {
            let origin = m.pool.origin();
            if !kept.is_some_and(|k| k.members().iter().any(|n| n.pool.origin() == origin)) {
                let _ = metrics.upstream_up.remove_label_values(&[name, origin]);
            }
        }
    }
}

/// Compiles the configured routes. `previous` are the routes they replace (a reload): a
/// route of the same name takes over what its predecessor's gate knew. `groups` are the
/// `[upstreams]` a route may name.
#[allow(clippy::too_many_arguments)]
fn build_routes(
    configured: &[RouteConfig],
    groups: &[Arc<UpstreamGroup>],
    api_key_header: &http::HeaderName,
    available: &HashMap<Scheme, Arc<dyn Authenticator>>,
    proxy: &Proxy,
    metrics: &Metrics,
    previous: Option<&Routes>,
    now: Timestamp,
) -> Result<Routes, String> {
    let mut routes = Vec::with_capacity(configured.len());
    for r in configured {
        let target = match &r.upstream {
            Upstream::Url {
                scheme,
                authority,
                base_path,
            } => Target::Upstream {
                group: UpstreamGroup::single(
                    proxy
                        .pool(scheme, authority)
                        .map_err(|e| format!("route `{}`: {e}", r.name))?,
                    base_path,
                ),
            },
            Upstream::Named(name) => Target::Upstream {
                group: groups
                    .iter()
                    .find(|g| g.name() == Some(name.as_str()))
                    .cloned()
                    .ok_or_else(|| format!("route `{}`: no upstream named `{name}`", r.name))?,
            },
            Upstream::Echo => Target::Echo,
        };
        let policy = Policy::compile(&r.policy, available)
            .map_err(|e| format!("route `{}`: {e}", r.name))?;
        let mut gate = RouteGate::new(
            r.name.as_str().into(),
            policy,
            RouteAuth {
                api_key_query_param: r.api_key_query_param.clone(),
                jwt_issuers: r.jwt_issuers.as_deref().map(Into::into),
                hmac: HmacRoute {
                    layout: r.hmac_layout.0,
                    allow_unsigned_body: r.hmac_unsigned_body,
                    window_secs: i64::try_from(r.signature_window.as_secs()).unwrap_or(i64::MAX),
                    replay: r.signature_replay.0,
                },
                sigv4: SigV4Route {
                    region: r.sigv4_region.as_str().into(),
                    service: r.sigv4_service.as_str().into(),
                    allow_unsigned_payload: r.sigv4_unsigned_payload,
                },
                http_sig: HttpSigRoute {
                    components: r.httpsig_components.clone().into(),
                    tag: r.httpsig_tag.as_deref().map(Into::into),
                },
            },
            r.scopes.clone(),
            r.rate_limit,
            r.failed_auth_limit,
        );
        if let Some(old) = previous
            .into_iter()
            .flatten()
            .find(|old| *old.gate.name == *r.name)
        {
            gate.succeed(&old.gate, now);
        }
        let mut route = Route::new(
            gate,
            r.host.clone(),
            r.path_prefix.clone(),
            r.methods.clone(),
            target,
            r.strip_prefix,
            r.forward_credentials,
            r.websocket,
            r.cors
                .as_ref()
                .map(|c| c.compile(&r.methods, api_key_header))
                .transpose()
                .map_err(|e| format!("route `{}`: cors: {e}", r.name))?,
            r.timeout,
            metrics,
        );
        if route.gate.policy.schemes().iter().any(Scheme::signs_body) {
            route.signed_body_limit = Some(r.max_signed_body_bytes);
        }
        route.identity_audience = r
            .identity_token
            .then(|| r.identity_audience.as_deref().unwrap_or(&r.name).into());
        routes.push(route);
    }
    Ok(routes)
}

/// The settings outside `routes` that differ between `running` and `loaded`: a reload does
/// not apply them (they hold listeners, stores, caches and pools that live as long as the
/// process); a restart does.
fn restart_only_changes(running: &Config, loaded: &Config) -> Vec<&'static str> {
    // Spelled out whole, so that a new section does not compile until it is placed here or
    // among what a reload applies.
    let Config {
        listen,
        data_dir,
        api_keys,
        audit,
        signing_keys,
        oauth,
        limits,
        proxy,
        client_ip,
        issuers,
        upstreams: _,
        routes: _,
        webhooks,
    } = loaded;
    [
        ("listen", running.listen != *listen),
        ("data_dir", running.data_dir != *data_dir),
        ("api_keys", running.api_keys != *api_keys),
        ("audit", running.audit != *audit),
        ("signing_keys", running.signing_keys != *signing_keys),
        ("oauth", running.oauth != *oauth),
        ("limits", running.limits != *limits),
        ("proxy", running.proxy != *proxy),
        ("client_ip", running.client_ip != *client_ip),
        ("issuers", running.issuers != *issuers),
        ("webhooks", running.webhooks != *webhooks),
    ]
    .into_iter()
    .filter_map(|(section, changed)| changed.then_some(section))
    .collect()
}

/// What a configuration reload needs.
struct Reloader {
    /// What `GET /admin/v1/routes` shows.
    view: Arc<arc_swap::ArcSwap<serde_json::Value>>,
    /// The `[upstreams]` in force (`GET /admin/v1/upstreams`).
    upstreams: Upstreams,
    /// The flags: `config` names the file; `listen` and `data_dir` still override it.
    overrides: Overrides,
    /// The configuration in force: the file as loaded at start, with the routes and
    /// upstreams of the last reload.
    running: Config,
    available: HashMap<Scheme, Arc<dyn Authenticator>>,
    proxy: Arc<Proxy>,
    app: Arc<App>,
    auditor: audit::Auditor,
    clock: Arc<dyn Clock>,
}

/// A reload that took effect.
struct Reloaded {
    routes: usize,
    not_applied: Vec<&'static str>,
    sha256: String,
}

impl Reloader {
    /// Reads the file again and puts its routes in force, or changes nothing and says why.
    /// Audited (durably, before the new routes serve) as `config.reloaded`.
    async fn reload(&mut self) -> Result<Reloaded, String> {
        let Some(path) = self.overrides.config.clone() else {
            return Err("no configuration file was given (--config or PORTCULLIS_CONFIG): nothing to reload".into());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut cfg = Config::from_file_text(&path, &text).map_err(|e| e.0)?;
        self.overrides.apply(&mut cfg);
        if !self.auditor.is_storing() {
            return Err(
                "the audit trail is not storing events, so a change could not be recorded".into(),
            );
        }
        // Issuers are built at start: a route may only name one that is running.
        for r in &cfg.routes {
            for n in r.jwt_issuers.iter().flatten() {
                let running = n == portcullis_domain::authn::jwt::OWN_ISSUER
                    || self.running.issuers.iter().any(|t| &t.name == n);
                if !running {
                    return Err(format!(
                        "route `{}` names the issuer `{n}`, which is not running: [[issuers]] changes apply after a restart",
                        r.name
                    ));
                }
            }
        }
        let now = self.clock.now();
        let current = self.app.gateway.routes();
        let old_groups = self.upstreams.load_full();
        let groups = build_upstreams(
            &cfg.upstreams,
            &self.proxy,
            &self.app.metrics,
            &self.clock,
            &old_groups,
        )?;
        // The key header in force, not the file's (a change to it needs a restart).
        let routes = build_routes(
            &cfg.routes,
            &groups,
            &self.running.api_keys.header,
            &self.available,
            &self.proxy,
            &self.app.metrics,
            Some(&current),
            now,
        )?;
        let not_applied = restart_only_changes(&self.running, &cfg);
        let sha256 = hex(&sha256(text.as_bytes()));
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        self.auditor
            .emit_durable(
                audit::AuditEvent::new(now, "config.reloaded", "ok")
                    .actor("system:sighup")
                    .detail(serde_json::json!({
                        "file": path.display().to_string(),
                        "sha256": sha256,
                        "routes": names,
                        "upstreams": cfg.upstreams.keys().collect::<Vec<_>>(),
                        "not_applied": not_applied,
                    })),
            )
            .await;
        self.app.gateway.replace_routes(routes);
        forget_targets(&old_groups, &groups, &self.app.metrics);
        for g in old_groups.iter() {
            g.retire();
        }
        self.upstreams.store(Arc::new(groups));
        self.view.store(Arc::new(admin_api::routes_view(
            &cfg.routes,
            Some(&path),
            Some(&sha256),
            now,
        )));
        let count = names.len();
        self.running.routes = cfg.routes;
        self.running.upstreams = cfg.upstreams;
        Ok(Reloaded {
            routes: count,
            not_applied,
            sha256,
        })
    }
}

/// Reloads on every SIGHUP, one at a time, until the task is aborted.
#[cfg(unix)]
fn reload_on_sighup(
    mut reloader: Reloader,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| StartError(format!("cannot listen for SIGHUP: {e}")))?;
    Ok(Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let outcome = match reloader.reload().await {
                Ok(r) => {
                    tracing::info!(routes = r.routes, sha256 = %r.sha256, "SIGHUP: configuration reloaded");
                    if !r.not_applied.is_empty() {
                        tracing::warn!(
                            sections = %r.not_applied.join(", "),
                            "SIGHUP: these settings changed in the file but apply only after a restart"
                        );
                    }
                    "ok"
                }
                Err(e) => {
                    tracing::error!(
                        "SIGHUP: configuration not reloaded, the routes in force stay: {e}"
                    );
                    "error"
                }
            };
            reloader
                .app
                .metrics
                .config_reloads
                .with_label_values(&[outcome])
                .inc();
        }
    })))
}

#[cfg(not(unix))]
fn reload_on_sighup(_: Reloader) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    Ok(None)
}

/// `SIGUSR1` reopens the audit file (after `logrotate` renamed it), as it does nginx's logs.
/// Handled with any sink: a rotation script must not stop a server that writes no file.
#[cfg(unix)]
fn reopen_on_sigusr1(reopen: Option<Reopen>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1())
        .map_err(|e| StartError(format!("cannot listen for SIGUSR1: {e}")))?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match &reopen {
                Some(r) => {
                    tracing::info!("SIGUSR1: the audit file is reopened before the next batch");
                    r.request();
                }
                None => {
                    tracing::info!("SIGUSR1: no audit file to reopen (audit.sink is not \"file\")")
                }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reopen_on_sigusr1(_: Option<Reopen>) -> Result<(), StartError> {
    Ok(())
}

/// The master key that seals secrets at rest (signing keys' private halves): from
/// `PORTCULLIS_MASTER_KEY` (64 hex digits), else `<data-dir>/master.key`, generated (mode
/// 0600) on first start. Losing it loses what it sealed; it is never logged.
/// Fetches an external issuer's keys, counting and logging the outcome (the keys held stay
/// on failure).
async fn refresh_issuer(issuer: &ExternalIssuer, metrics: &Metrics, now: Timestamp) {
    let name = issuer.settings().name.as_str();
    match issuer.refresh(now).await {
        Ok(n) => {
            metrics
                .issuer_fetches
                .with_label_values(&[name, "ok"])
                .inc();
            metrics
                .issuer_keys
                .with_label_values(&[name])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            tracing::debug!(issuer = name, keys = n, "issuer keys fetched");
        }
        Err(e) => {
            metrics
                .issuer_fetches
                .with_label_values(&[name, "error"])
                .inc();
            tracing::warn!(issuer = name, error = %e, held = issuer.has_keys(), "fetching the issuer's keys failed; the keys held stay in use");
        }
    }
}

/// How long a registered client is read from memory at the OAuth endpoints before the store
/// is asked again (changes made through this instance apply at once).
const CLIENT_CACHE_TTL: Duration = Duration::from_secs(5);

/// How often the DPoP server nonce changes (each is good for one to two periods).
const DPOP_NONCE_PERIOD_SECS: i64 = 300;

/// The master key's 32 bytes: `PORTCULLIS_MASTER_KEY`, else `<data dir>/master.key`, made
/// on first start.
fn master_key(dir: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>, StartError> {
    if let Ok(t) = std::env::var("PORTCULLIS_MASTER_KEY") {
        let key = zeroize::Zeroizing::new(unhex::<32>(t.trim()).ok_or_else(|| {
            StartError("PORTCULLIS_MASTER_KEY must be 64 hex digits (32 bytes)".into())
        })?);
        return Ok(key);
    }
    let path = dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = zeroize::Zeroizing::new(t);
            let key = zeroize::Zeroizing::new(unhex::<32>(t.trim()).ok_or_else(|| {
                StartError(format!(
                    "{} must hold 64 hex digits (32 bytes)",
                    path.display()
                ))
            })?);
            return Ok(key);
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StartError(format!("cannot read {}: {e}", path.display())))
        }
        Err(_) => {}
    }
    let key = zeroize::Zeroizing::new(portcullis_domain::random_bytes::<32>());
    let text = zeroize::Zeroizing::new(format!("{}\n", hex(&key[..])));
    write_private_file(&path, text.as_bytes())?;
    println!(
        "master key written to {} (keep a copy: what it seals cannot be read without it)",
        path.display()
    );
    Ok(key)
}

/// Creates `path` (it must not exist) with mode 0600 and `content`, synced to disk.
fn write_private_file(path: &Path, content: &[u8]) -> Result<(), StartError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .map_err(|e| StartError(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(|e| StartError(format!("cannot write {}: {e}", path.display())))
}

/// The admin token's hash: from `PORTCULLIS_ADMIN_TOKEN`, else `<data-dir>/admin.token`,
/// generated (mode 0600) on first start. The token itself is never logged.
fn admin_token(dir: &Path) -> Result<[u8; 32], StartError> {
    if let Ok(t) = std::env::var("PORTCULLIS_ADMIN_TOKEN") {
        let t = t.trim();
        if t.len() < 32 {
            return Err(StartError(
                "PORTCULLIS_ADMIN_TOKEN must be at least 32 characters".into(),
            ));
        }
        return Ok(sha256(t.as_bytes()));
    }
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(sha256(t.trim().as_bytes())),
        Ok(_) => {
            return Err(StartError(format!(
                "{} is empty; delete it to generate a new token",
                path.display()
            )))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StartError(format!("cannot read {}: {e}", path.display())))
        }
        Err(_) => {}
    }
    let token = format!(
        "pca_{}",
        bs58::encode(portcullis_domain::random_bytes::<32>()).into_string()
    );
    write_private_file(&path, format!("{token}\n").as_bytes())?;
    println!("admin token written to {}", path.display());
    Ok(sha256(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_dash_counter_in_hex() {
        let ids = RequestIds::new();
        let prefix = ids.prefix.clone();
        assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{prefix}");
        for n in [
            0u64,
            1,
            9,
            10,
            15,
            16,
            0x1a2b,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            ids.next.store(n, Ordering::Relaxed);
            assert_eq!(ids.next().as_str(), format!("{prefix}-{n:x}"));
        }
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        let mut out = Vec::new();
        // RFC 9110's own example.
        push_http_date(&mut out, 784_111_777);
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:37 GMT");
    }
}

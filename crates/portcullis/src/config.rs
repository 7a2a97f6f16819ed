//! Configuration: one TOML file, environment and flags on top, validated into typed values at
//! load. Every error names the file, the line and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_core::api_key::Prefix;
use portcullis_core::client_ip::TrustedProxies;
use portcullis_core::ratelimit::{Algorithm, Limit};
use portcullis_core::{Scheme, ScopeSet};
use portcullis_domain::PolicyExpr;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Schemes built into this version. A policy naming any other is a configuration error.
pub const AVAILABLE_SCHEMES: &[Scheme] = &[
    Scheme::ApiKey,
    Scheme::Hmac,
    Scheme::HttpSignature,
    Scheme::Jwt,
    Scheme::SigV4,
];

/// The configuration file's schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory of the embedded store, the admin token and the audit file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// API-key settings.
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Audit trail settings.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The keys Portcullis signs tokens with.
    #[serde(default)]
    pub signing_keys: SigningKeysConfig,
    /// The OAuth 2.0 authorization server.
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Upstream connection settings.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Which proxies in front of the gateway are believed about the client's address.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// External token issuers the `jwt` scheme may trust (routes name them in
    /// `jwt_issuers`).
    #[serde(default)]
    pub issuers: Vec<TrustedIssuerConfig>,
    /// Named groups of upstream targets, balanced and health-checked; a route names one in
    /// its `upstream`.
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, UpstreamGroupConfig>,
    /// Routes, matched in order; the first match wins.
    #[serde(default = "default_routes")]
    pub routes: Vec<RouteConfig>,
    /// Delivery of Portcullis's own events to registered webhook endpoints.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
}

/// `[webhooks]`: how endpoints are checked and deliveries made (endpoints themselves are
/// registered through the admin API).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Accept `http://` endpoint URLs on any host (default: https, or http to loopback).
    pub allow_http: bool,
    /// Attempts before a delivery is given up (1 to 9).
    pub max_attempts: u32,
    /// Delay before the first retry; later ones keep the schedule's ratios.
    #[serde(deserialize_with = "de_duration")]
    pub first_retry: Duration,
    /// How long one attempt may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// How long finished deliveries stay in the delivery log.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let d = portcullis_domain::webhooks::WebhookSettings::default();
        Self {
            allow_http: d.allow_http,
            max_attempts: d.max_attempts,
            first_retry: d.first_retry,
            timeout: d.timeout,
            concurrency: d.concurrency,
            retention: d.retention,
        }
    }
}

impl WebhooksConfig {
    /// The domain's settings.
    pub fn settings(&self) -> portcullis_domain::webhooks::WebhookSettings {
        portcullis_domain::webhooks::WebhookSettings {
            allow_http: self.allow_http,
            max_attempts: self.max_attempts,
            first_retry: self.first_retry,
            timeout: self.timeout,
            concurrency: self.concurrency,
            retention: self.retention,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("webhooks.{k}"), m.to_owned()));
        let most = portcullis_domain::webhooks::DEFAULT_SCHEDULE.len() as u32 + 1;
        if !(1..=most).contains(&self.max_attempts) {
            return err("max_attempts", "must be 1 to 9");
        }
        if self.first_retry < Duration::from_millis(10)
            || self.first_retry > Duration::from_secs(3600)
        {
            return err("first_retry", "must be 10ms to 1h");
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(300) {
            return err("timeout", "must be 100ms to 5m");
        }
        if !(1..=1024).contains(&self.concurrency) {
            return err("concurrency", "must be 1 to 1024");
        }
        if self.retention < Duration::from_secs(3600) {
            return err("retention", "must be at least 1h");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    #[serde(deserialize_with = "de_prefix")]
    pub prefix: Prefix,
    #[serde(deserialize_with = "de_header_name")]
    pub header: http::HeaderName,
    pub accept_bearer: bool,
    pub accept_foreign_keys: bool,
    pub cache_capacity: usize,
    #[serde(deserialize_with = "de_duration")]
    pub cache_ttl: Duration,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            prefix: Prefix::new("pk_live").unwrap_or_else(|_| unreachable!("valid literal")),
            header: http::HeaderName::from_static("x-api-key"),
            accept_bearer: true,
            accept_foreign_keys: false,
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// Peers (addresses or networks) whose forwarding fields are believed: a load balancer,
    /// a CDN. Empty (the default): the connecting address is the client.
    #[serde(deserialize_with = "de_trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    /// The field such a proxy appends the client's address to.
    #[serde(deserialize_with = "de_header_name")]
    pub header: http::HeaderName,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::default(),
            header: http::HeaderName::from_static("x-forwarded-for"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Stdout,
    File,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub sink: SinkKind,
    /// File for `sink = "file"`; relative paths are inside `data_dir`.
    pub path: PathBuf,
    /// Events queued before emitters wait.
    pub queue: usize,
    /// Longest a gateway decision waits for company before its batch is stored and written
    /// to the sink (admin changes never wait: they are stored before the API answers).
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// Which authentication decisions are audited (admin changes always are).
    pub decisions: portcullis_domain::gate::AuditedDecisions,
    /// How long stored events are kept (`None`: for ever). Older ones are removed hourly,
    /// in whole stored blocks, and the removal is itself an audit event.
    #[serde(deserialize_with = "de_retention")]
    pub retention: Option<Duration>,
}

/// `[signing_keys]`: how token-signing keys are made and rotated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningKeysConfig {
    /// The algorithm of new keys: `ES256` (default), `EdDSA`, `RS256` or `PS256`.
    #[serde(deserialize_with = "de_signing_algorithm")]
    pub algorithm: portcullis_core::jose::Algorithm,
    /// How long a new key is in the JWKS before it signs.
    #[serde(deserialize_with = "de_duration")]
    pub lead_time: Duration,
    /// Rotate by itself this long after the signing key took over (`None`: on demand only).
    #[serde(deserialize_with = "de_optional_duration")]
    pub rotate_every: Option<Duration>,
    /// The longest lifetime of a token Portcullis signs; a retired key stays published
    /// this long.
    #[serde(deserialize_with = "de_duration")]
    pub max_token_lifetime: Duration,
}

impl Default for SigningKeysConfig {
    fn default() -> Self {
        let d = portcullis_domain::signing::RingConfig::default();
        Self {
            algorithm: d.algorithm,
            lead_time: d.lead_time,
            rotate_every: d.rotate_every,
            max_token_lifetime: d.max_token_lifetime,
        }
    }
}

impl SigningKeysConfig {
    /// The key ring's settings.
    pub fn ring(&self) -> portcullis_domain::signing::RingConfig {
        portcullis_domain::signing::RingConfig {
            algorithm: self.algorithm,
            lead_time: self.lead_time,
            rotate_every: self.rotate_every,
            max_token_lifetime: self.max_token_lifetime,
        }
    }
}

/// One `[[issuers]]` entry: an external OpenID Connect provider or OAuth 2.0 authorization
/// server whose JWT access tokens routes may accept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// What routes call it in `jwt_issuers`.
    pub name: String,
    /// The exact `iss` of its tokens; also where its metadata is found when `jwks_uri` is
    /// not given.
    pub issuer: String,
    /// Its JWKS URL (skips metadata discovery).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The algorithms its tokens may be signed with.
    #[serde(
        default = "default_issuer_algorithms",
        deserialize_with = "de_signing_algorithms"
    )]
    pub algorithms: Vec<portcullis_core::jose::Algorithm>,
    /// `aud` values accepted (at least one).
    pub audiences: Vec<String>,
    /// The header `typ` its tokens must have (e.g. `at+jwt`); unset: not checked.
    #[serde(default)]
    pub typ: Option<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    #[serde(default = "default_issuer_leeway", deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// How often its keys are refetched in the background.
    #[serde(default = "default_issuer_refresh", deserialize_with = "de_duration")]
    pub refresh_interval: Duration,
    /// The shortest time between two refetches caused by tokens with an unknown `kid`.
    #[serde(default = "default_issuer_refetch", deserialize_with = "de_duration")]
    pub min_refetch_interval: Duration,
    /// RFC 7662: check its tokens (opaque ones too) at this endpoint instead of by keys.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// Portcullis's client id at the introspection endpoint.
    #[serde(default)]
    pub introspection_client_id: Option<String>,
    /// A file holding that client's secret (relative paths: from the configuration file).
    #[serde(default)]
    pub introspection_client_secret_file: Option<PathBuf>,
    /// The longest an introspection answer is used (never past the token's `exp`).
    #[serde(
        default = "default_introspection_ttl",
        deserialize_with = "de_duration"
    )]
    pub introspection_cache_ttl: Duration,
}

fn default_introspection_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_issuer_algorithms() -> Vec<portcullis_core::jose::Algorithm> {
    vec![portcullis_core::jose::Algorithm::Rs256]
}

fn default_issuer_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_issuer_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_issuer_refetch() -> Duration {
    Duration::from_secs(60)
}

impl TrustedIssuerConfig {
    /// The domain's settings for it, reading the introspection secret's file.
    pub fn settings(&self) -> Result<portcullis_domain::authn::issuers::IssuerSettings, String> {
        let introspection = match (
            &self.introspection_endpoint,
            &self.introspection_client_id,
            &self.introspection_client_secret_file,
        ) {
            (Some(endpoint), Some(client_id), Some(file)) => {
                let secret = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "issuer `{}`: introspection_client_secret_file {}: {e}",
                        self.name,
                        file.display()
                    )
                })?;
                Some(portcullis_domain::authn::issuers::IntrospectionSettings {
                    endpoint: endpoint.clone(),
                    client_id: client_id.clone(),
                    client_secret: portcullis_core::secret::Secret::new(secret.trim().to_owned()),
                    cache_ttl: self.introspection_cache_ttl,
                })
            }
            _ => None,
        };
        Ok(portcullis_domain::authn::issuers::IssuerSettings {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            jwks_uri: self.jwks_uri.clone(),
            algorithms: self.algorithms.clone(),
            audiences: self.audiences.clone(),
            typ: self.typ.clone(),
            leeway_secs: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
            min_refetch: self.min_refetch_interval,
            introspection,
        })
    }
}

/// `[oauth]`: the authorization server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// The `iss` of the tokens and the base of the metadata's URLs; default
    /// `http://<the address bound>`. Behind a TLS terminator, set the public URL.
    pub issuer: Option<String>,
    /// Lifetime of access tokens unless a client sets its own.
    #[serde(deserialize_with = "de_duration")]
    pub access_token_lifetime: Duration,
    /// Failed client authentications allowed per client address at the token,
    /// introspection and revocation endpoints before they answer 429 (`false`: no limit).
    #[serde(deserialize_with = "de_opt_limit")]
    pub failed_auth_limit: Option<Limit>,
    /// How old a DPoP proof may be (its `iat`), at the token endpoint and on `jwt` routes;
    /// its `jti` is remembered that long.
    #[serde(deserialize_with = "de_duration")]
    pub dpop_proof_max_age: Duration,
    /// Require the server's nonce in every DPoP proof (RFC 9449 §8, §9), at the token
    /// endpoint and on `jwt` routes.
    pub dpop_nonce: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            access_token_lifetime: Duration::from_secs(15 * 60),
            failed_auth_limit: default_failed_auth_limit(),
            dpop_proof_max_age: Duration::from_secs(60),
            dpop_nonce: false,
        }
    }
}

/// Longest [`SigningKeysConfig::lead_time`]: a week.
pub const MAX_SIGNING_LEAD: Duration = Duration::from_secs(7 * 86_400);

/// Longest `timeout` a route may set.
pub const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(3600);

/// [`AuditConfig::retention`] unless set.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Shortest [`AuditConfig::retention`] accepted: a unit mistaken (`"30m"` for a month) must not
/// empty the trail.
pub const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(3600);

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::File,
            path: PathBuf::from("audit.jsonl"),
            queue: 65_536,
            flush_interval: portcullis_domain::audit::DEFAULT_LINGER,
            decisions: portcullis_domain::gate::AuditedDecisions::All,
            retention: Some(DEFAULT_AUDIT_RETENTION),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// How long a caller may take to send a request head, idle keep-alive time included.
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// How long a caller may leave a response unread before the connection is dropped.
    #[serde(deserialize_with = "de_duration")]
    pub send_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// How long a WebSocket connection may pass no byte either way before both sides are
    /// closed.
    #[serde(deserialize_with = "de_duration")]
    pub websocket_idle_timeout: Duration,
    /// How often an open WebSocket's credential is checked again (revoked, expired, scopes
    /// taken away: the tunnel closes).
    #[serde(deserialize_with = "de_duration")]
    pub websocket_recheck_interval: Duration,
    /// PEM file of CA certificates trusted for `https://` upstreams (relative paths are
    /// relative to the configuration file).
    pub ca_file: Option<PathBuf>,
    /// Whether the public web PKI roots are trusted for `https://` upstreams too.
    pub public_roots: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            websocket_idle_timeout: Duration::from_secs(300),
            websocket_recheck_interval: Duration::from_secs(30),
            ca_file: None,
            public_roots: true,
        }
    }
}

/// Where a route sends admitted requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in echo service.
    Echo,
    /// An HTTP(S) origin plus an optional base path.
    Url {
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        base_path: String,
    },
    /// A group in `[upstreams]`, by name.
    Named(String),
}

impl std::fmt::Display for Upstream {
    /// As written in the file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Echo => f.write_str("builtin:echo"),
            Self::Url {
                scheme,
                authority,
                base_path,
            } => write!(f, "{scheme}://{authority}{base_path}"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

/// One `[upstreams.NAME]` table: several targets behind one name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroupConfig {
    /// `http(s)://host[:port][/base]` URLs, or `{ url = "…", weight = 3 }` tables; every
    /// target has the same base path.
    pub targets: Vec<TargetConfig>,
    /// How a target is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// How many other targets a request tries when it cannot connect to the one chosen
    /// (nothing was sent, so any method may be tried again).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Active health checks (none unless set).
    #[serde(default)]
    pub health: Option<HealthCheckConfig>,
    /// Passive health: failures seen on real requests take a target out of rotation.
    #[serde(default)]
    pub passive: PassiveHealthConfig,
}

fn default_retries() -> u32 {
    2
}

/// One target of an upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Where it is.
    pub url: Upstream,
    /// Its share of the requests, relative to the others' (1-100).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            url: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        fn target<E: de::Error>(url: &str, weight: u32) -> Result<TargetConfig, E> {
            match parse_upstream(url).map_err(E::custom)? {
                u @ Upstream::Url { .. } => Ok(TargetConfig { url: u, weight }),
                _ => Err(E::custom(format!(
                    "target `{url}` must be an http:// or https:// URL"
                ))),
            }
        }
        impl<'de> de::Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL or a table { url = \"…\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetConfig, E> {
                target(v, 1)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<TargetConfig, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                target(&full.url, full.weight)
            }
        }
        d.deserialize_any(V)
    }
}

/// How an upstream group picks a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, by weight (smooth weighted round robin).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight for its weight.
    LeastRequests,
}

impl Balance {
    /// The name the configuration file and the admin API use.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequests => "least_requests",
        }
    }
}

/// `[upstreams.NAME.health]`: a `GET` of `path` on every target, every `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path asked of each target (as is: the targets' base path is not added).
    pub path: String,
    /// Time between two checks of a target.
    #[serde(default = "default_health_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Longest a check may take (connect, send, status line).
    #[serde(default = "default_health_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a target back.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
    /// Consecutive failed checks that take a target out.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_after() -> u32 {
    2
}
fn default_unhealthy_after() -> u32 {
    3
}

/// `[upstreams.NAME.passive]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failed requests (no connection, no answer in time, no valid response head)
    /// that take a target out of rotation; 0 never does.
    pub failures: u32,
    /// How long it stays out when there is no active check (then one request tries it);
    /// with an active check, it is back once the check passes `healthy_after` times.
    #[serde(deserialize_with = "de_duration")]
    pub cooldown: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default, deserialize_with = "de_methods")]
    pub methods: Vec<http::Method>,
    #[serde(deserialize_with = "de_upstream")]
    pub upstream: Upstream,
    #[serde(deserialize_with = "de_policy")]
    pub policy: PolicyExpr,
    #[serde(default, deserialize_with = "de_scopes")]
    pub scopes: ScopeSet,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub api_key_query_param: Option<String>,
    /// The token issuers the `jwt` scheme trusts here, by name (`portcullis`: our own);
    /// unset: our own only.
    #[serde(default)]
    pub jwt_issuers: Option<Vec<String>>,
    /// Hand the upstream `X-Portcullis-Identity`, a short-lived JWT signed by Portcullis
    /// stating the verified identity.
    #[serde(default)]
    pub identity_token: bool,
    /// The string-to-sign layout the `hmac` scheme takes here: `native` (default) or a
    /// named legacy one (README, "HMAC request signing").
    #[serde(default, deserialize_with = "de_hmac_layout")]
    pub hmac_layout: HmacLayout,
    /// With `hmac_layout = "kong"` or `"apisix"`: accept a request whose body is not signed
    /// (`digest` not among the signed headers).
    #[serde(default)]
    pub hmac_unsigned_body: bool,
    /// How far a signed request's time may be from the gateway's, either way.
    #[serde(default = "default_signature_window", deserialize_with = "de_duration")]
    pub signature_window: Duration,
    /// The largest body a signed request may have here (it is read whole before the
    /// signature is checked): 413 beyond.
    #[serde(default = "default_max_signed_body")]
    pub max_signed_body_bytes: u64,
    /// What keeps a signature without a nonce (SigV4, RFC 9421 without `nonce`) from being
    /// replayed: `once` (default: the same signed request twice is a replay) or `window`
    /// (only the time window, as AWS does).
    #[serde(default, deserialize_with = "de_signature_replay")]
    pub signature_replay: SignatureReplay,
    /// The region a SigV4 credential scope must name here.
    #[serde(default = "default_sigv4_region")]
    pub sigv4_region: String,
    /// The service a SigV4 credential scope must name here.
    #[serde(default = "default_sigv4_service")]
    pub sigv4_service: String,
    /// Whether SigV4 requests may leave the body unsigned (`UNSIGNED-PAYLOAD`).
    #[serde(default)]
    pub sigv4_unsigned_payload: bool,
    /// RFC 9421 components a signature must cover here besides `@method`, the target and
    /// `content-digest` (with a body): names such as `date` or `@authority`, or full
    /// identifiers such as `"@query-param";name="id"`.
    #[serde(default)]
    pub httpsig_components: Vec<String>,
    /// The RFC 9421 `tag` a signature must carry here.
    #[serde(default)]
    pub httpsig_tag: Option<String>,
    /// The `aud` of that JWT (default: the route's name).
    #[serde(default)]
    pub identity_audience: Option<String>,
    #[serde(default)]
    pub forward_credentials: bool,
    /// Whether WebSocket handshakes (RFC 6455) pass to the upstream as upgrades.
    #[serde(default)]
    pub websocket: bool,
    /// Which browser origins may call the route (CORS), answered by the gateway.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// How long the upstream may take on this route (`proxy.timeout` otherwise).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_limit")]
    pub rate_limit: Option<Limit>,
    #[serde(
        default = "default_failed_auth_limit",
        deserialize_with = "de_opt_limit"
    )]
    pub failed_auth_limit: Option<Limit>,
}

/// A route's `cors` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://app.example.com`, `https://*.example.com`, or `*`.
    pub origins: Vec<String>,
    /// Methods browsers may use (default: the route's `methods`, else GET, HEAD, POST, PUT,
    /// PATCH, DELETE).
    #[serde(default, deserialize_with = "de_opt_methods")]
    pub methods: Option<Vec<http::Method>>,
    /// Request fields browsers may send (default: the API-key header, `Authorization`,
    /// `Content-Type`).
    #[serde(default, deserialize_with = "de_opt_header_names")]
    pub headers: Option<Vec<http::HeaderName>>,
    /// Response fields scripts may read (default: `RateLimit-*`, `Retry-After`,
    /// `WWW-Authenticate`, `X-Request-Id`).
    #[serde(default, deserialize_with = "de_opt_header_names")]
    pub expose_headers: Option<Vec<http::HeaderName>>,
    /// Whether browsers send cookies and may read answers to credentialed requests.
    #[serde(default)]
    pub credentials: bool,
    /// How long browsers may cache a preflight's answer.
    #[serde(default = "default_cors_max_age", deserialize_with = "de_duration")]
    pub max_age: Duration,
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

impl CorsConfig {
    /// The checked settings, with the defaults that depend on the route and the key header.
    pub fn compile(
        &self,
        route_methods: &[http::Method],
        api_key_header: &http::HeaderName,
    ) -> Result<portcullis_core::cors::Cors, portcullis_core::cors::CorsConfigError> {
        use http::Method;
        let methods = match (&self.methods, route_methods.is_empty()) {
            (Some(m), _) => m.clone(),
            (None, false) => route_methods.to_vec(),
            (None, true) => vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ],
        };
        let headers = self.headers.clone().unwrap_or_else(|| {
            vec![
                api_key_header.clone(),
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
            ]
        });
        let expose = self.expose_headers.clone().unwrap_or_else(|| {
            [
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "retry-after",
                "www-authenticate",
                "x-request-id",
            ]
            .into_iter()
            .map(http::HeaderName::from_static)
            .collect()
        });
        portcullis_core::cors::Cors::new(
            &self.origins,
            &methods,
            &headers,
            &expose,
            self.credentials,
            self.max_age.as_secs(),
        )
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("portcullis-data")
}
fn default_path_prefix() -> String {
    "/".into()
}
fn default_signature_window() -> Duration {
    Duration::from_secs(300)
}
fn default_max_signed_body() -> u64 {
    1024 * 1024
}

fn default_sigv4_region() -> String {
    "us-east-1".into()
}
fn default_sigv4_service() -> String {
    "execute-api".into()
}

/// A route's `signature_replay`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureReplay(pub portcullis_domain::authn::Replay);

fn de_signature_replay<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SignatureReplay, D::Error> {
    use portcullis_domain::authn::Replay;
    match String::deserialize(d)?.as_str() {
        "once" => Ok(SignatureReplay(Replay::Once)),
        "window" => Ok(SignatureReplay(Replay::Window)),
        other => Err(serde::de::Error::custom(format!(
            "unknown signature_replay `{other}`; one of: once, window"
        ))),
    }
}

/// A route's `hmac_layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HmacLayout(pub portcullis_domain::authn::HmacFormat);

impl Default for HmacLayout {
    fn default() -> Self {
        Self(portcullis_domain::authn::HmacFormat::Native(
            portcullis_core::hmac::native::Layout::Native,
        ))
    }
}

fn de_hmac_layout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HmacLayout, D::Error> {
    use portcullis_domain::authn::HmacFormat;
    let name = String::deserialize(d)?;
    HmacFormat::from_name(&name).map(HmacLayout).ok_or_else(|| {
        let names: Vec<&str> = HmacFormat::all().iter().map(|l| l.name()).collect();
        serde::de::Error::custom(format!(
            "unknown hmac_layout `{name}`; one of: {}",
            names.join(", ")
        ))
    })
}
fn default_failed_auth_limit() -> Option<Limit> {
    Some(Limit {
        algorithm: Algorithm::Gcra,
        limit: 60,
        period_ms: 60_000,
        burst: 60,
    })
}

/// The routes used when the file defines none: the built-in echo behind an API key.
pub fn default_routes() -> Vec<RouteConfig> {
    let echo = |name: &str, prefix: &str, scheme: Scheme| RouteConfig {
        name: name.into(),
        host: None,
        path_prefix: prefix.into(),
        methods: vec![],
        upstream: Upstream::Echo,
        policy: PolicyExpr::Scheme(scheme),
        scopes: ScopeSet::parse(["read:echo"]).unwrap_or_default(),
        strip_prefix: false,
        api_key_query_param: None,
        jwt_issuers: None,
        identity_token: false,
        identity_audience: None,
        hmac_layout: HmacLayout::default(),
        hmac_unsigned_body: false,
        signature_window: default_signature_window(),
        max_signed_body_bytes: default_max_signed_body(),
        signature_replay: SignatureReplay::default(),
        sigv4_region: default_sigv4_region(),
        sigv4_service: default_sigv4_service(),
        sigv4_unsigned_payload: false,
        httpsig_components: Vec::new(),
        httpsig_tag: None,
        forward_credentials: false,
        websocket: false,
        cors: None,
        timeout: None,
        rate_limit: None,
        failed_auth_limit: default_failed_auth_limit(),
    };
    vec![
        echo("echo", "/echo", Scheme::ApiKey),
        echo("jwt_echo", "/jwt/echo", Scheme::Jwt),
        echo("hmac_echo", "/hmac/echo", Scheme::Hmac),
        echo("sigv4_echo", "/sigv4/echo", Scheme::SigV4),
        echo("httpsig_echo", "/httpsig/echo", Scheme::HttpSignature),
    ]
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            data_dir: default_data_dir(),
            api_keys: ApiKeysConfig::default(),
            audit: AuditConfig::default(),
            signing_keys: SigningKeysConfig::default(),
            oauth: OAuthConfig::default(),
            limits: LimitsConfig::default(),
            proxy: ProxyConfig::default(),
            client_ip: ClientIpConfig::default(),
            issuers: Vec::new(),
            upstreams: Default::default(),
            routes: default_routes(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

/// A configuration error, already phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Validates `text`, read from `path` (which names it in errors and anchors the
    /// relative paths in it).
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg = Self::parse(text, &path.display().to_string())?;
        if let (Some(ca), Some(dir)) = (&cfg.proxy.ca_file, path.parent()) {
            cfg.proxy.ca_file = Some(dir.join(ca));
        }
        if let Some(dir) = path.parent() {
            for t in &mut cfg.issuers {
                if let Some(f) = &t.introspection_client_secret_file {
                    t.introspection_client_secret_file = Some(dir.join(f));
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError(render(file, text, e.span(), None, e.message())))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError(render(
                file,
                text,
                inner.span(),
                Some(&path),
                inner.message(),
            ))
        })?;
        cfg.validate().map_err(|(key, msg)| {
            ConfigError(render(file, text, find_key(text, &key), Some(&key), &msg))
        })?;
        Ok(cfg)
    }

    /// `[[issuers]]`, and the routes' `jwt_issuers` naming them.
    fn validate_issuers(&self) -> Result<(), (String, String)> {
        use portcullis_domain::authn::issuers::fetchable;
        use portcullis_domain::authn::jwt::OWN_ISSUER;
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.issuers.iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            if !is_plain_name(&t.name) || t.name == OWN_ISSUER {
                return Err((
                    key("name"),
                    format!("issuer names are 1-64 characters of [A-Za-z0-9_-], not `{OWN_ISSUER}` (Portcullis's own)"),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err((key("name"), format!("duplicate issuer name `{}`", t.name)));
            }
            let url_ok =
                |u: &str| fetchable(u) && !u.contains('?') && http::Uri::try_from(u).is_ok();
            if let Some(e) = &t.introspection_endpoint {
                if !url_ok(e) {
                    return Err((
                        key("introspection_endpoint"),
                        "must be an https:// URL (http:// only to a loopback address)".into(),
                    ));
                }
                if t.jwks_uri.is_some() {
                    return Err((
                        key("jwks_uri"),
                        "an issuer is checked by introspection or by keys, not both".into(),
                    ));
                }
                if t.introspection_client_id
                    .as_deref()
                    .is_none_or(str::is_empty)
                    || t.introspection_client_secret_file.is_none()
                {
                    return Err((key("introspection_endpoint"), "needs introspection_client_id and introspection_client_secret_file (RFC 7662 callers authenticate)".into()));
                }
                let ttl = t.introspection_cache_ttl;
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
                    return Err((key("introspection_cache_ttl"), "must be 1s-1h".into()));
                }
            } else if t.introspection_client_id.is_some()
                || t.introspection_client_secret_file.is_some()
            {
                return Err((key("introspection_endpoint"), "introspection_client_id and introspection_client_secret_file need introspection_endpoint".into()));
            }
            match &t.jwks_uri {
                Some(u) if !url_ok(u) => {
                    return Err((
                        key("jwks_uri"),
                        "must be an https:// URL (http:// only to a loopback address)".into(),
                    ));
                }
                None if t.introspection_endpoint.is_none() && !url_ok(&t.issuer) => {
                    return Err((key("issuer"), "must be an https:// URL (http:// only to a loopback address) for its metadata to be fetched; or give jwks_uri".into()));
                }
                _ => {}
            }
            if t.issuer.is_empty() || t.issuer.len() > 2048 {
                return Err((key("issuer"), "must be the exact iss of its tokens".into()));
            }
            if t.audiences.is_empty() || t.audiences.iter().any(|a| a.is_empty()) {
                return Err((
                    key("audiences"),
                    "name at least one audience: a token for another API must not pass".into(),
                ));
            }
            if t.leeway > Duration::from_secs(300) {
                return Err((key("leeway"), "must be at most 5m".into()));
            }
            if t.refresh_interval < Duration::from_secs(30)
                || t.refresh_interval > Duration::from_secs(24 * 3600)
            {
                return Err((key("refresh_interval"), "must be 30s-24h".into()));
            }
            if t.min_refetch_interval < Duration::from_secs(1)
                || t.min_refetch_interval > t.refresh_interval
            {
                return Err((
                    key("min_refetch_interval"),
                    "must be at least 1s and at most refresh_interval".into(),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            for n in r.jwt_issuers.iter().flatten() {
                if n != OWN_ISSUER && !names.contains(n.as_str()) {
                    return Err((
                        format!("routes[{i}].jwt_issuers"),
                        format!("no issuer named `{n}`: define it in [[issuers]], or use `{OWN_ISSUER}` for Portcullis's own"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        self.webhooks.validate()?;
        if !self.proxy.public_roots && self.proxy.ca_file.is_none() {
            return Err((
                "proxy.public_roots".into(),
                "with public_roots = false, proxy.ca_file must name the CAs to trust".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if !is_plain_name(&r.name) {
                return Err((
                    key("name"),
                    "route names are 1-64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            if !names.insert(&r.name) {
                return Err((key("name"), format!("duplicate route name `{}`", r.name)));
            }
            if !r.path_prefix.starts_with('/') {
                return Err((key("path_prefix"), "must start with '/'".into()));
            }
            if r.host.as_ref().is_some_and(|h| {
                h.is_empty() || h.contains('/') || h.contains(':') && !h.starts_with('[')
            }) {
                return Err((key("host"), "must be a host name without scheme or port (e.g. `api.example.com` or `*.example.com`)".into()));
            }
            if let Some(c) = &r.cors {
                c.compile(&r.methods, &self.api_keys.header)
                    .map_err(|e| (key("cors"), e.to_string()))?;
            }
            if r.timeout
                .is_some_and(|t| t.is_zero() || t > MAX_ROUTE_TIMEOUT)
            {
                return Err((key("timeout"), "must be more than 0 and at most 1h".into()));
            }
            if let Upstream::Named(n) = &r.upstream {
                if !self.upstreams.contains_key(n) {
                    return Err((
                        key("upstream"),
                        format!("no upstream named `{n}`: define [upstreams.{n}], or give an http(s):// URL or builtin:echo"),
                    ));
                }
            }
            if r.identity_token && r.policy == PolicyExpr::Public {
                return Err((
                    key("identity_token"),
                    "a public route has no identity to state".into(),
                ));
            }
            if r.identity_audience.is_some() && !r.identity_token {
                return Err((
                    key("identity_audience"),
                    "only with identity_token = true".into(),
                ));
            }
            if r.identity_audience
                .as_ref()
                .is_some_and(|a| a.is_empty() || a.len() > 256)
            {
                return Err((key("identity_audience"), "must be 1-256 characters".into()));
            }
            let scope_part = |v: &str| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !scope_part(&r.sigv4_region) {
                return Err((
                    key("sigv4_region"),
                    "1-64 characters of [a-z0-9-] (e.g. us-east-1)".into(),
                ));
            }
            if !scope_part(&r.sigv4_service) {
                return Err((
                    key("sigv4_service"),
                    "1-64 characters of [a-z0-9-] (e.g. execute-api)".into(),
                ));
            }
            if r.httpsig_components.len() > 32 {
                return Err((key("httpsig_components"), "at most 32 components".into()));
            }
            if let Some(c) = r
                .httpsig_components
                .iter()
                .find(|c| !portcullis_core::hmac::http_sig::valid_required_component(c))
            {
                return Err((
                    key("httpsig_components"),
                    format!("`{c}` is not an RFC 9421 component (e.g. `date`, `@authority`, `\"@query-param\";name=\"id\"`)"),
                ));
            }
            if r.httpsig_tag
                .as_deref()
                .is_some_and(|t| !portcullis_core::hmac::http_sig::valid_tag(t))
            {
                return Err((
                    key("httpsig_tag"),
                    "1-256 printable ASCII characters".into(),
                ));
            }
            if r.websocket && r.upstream == Upstream::Echo {
                return Err((
                    key("websocket"),
                    "WebSocket connections need an http(s):// upstream".into(),
                ));
            }
            if r.api_key_query_param.as_ref().is_some_and(|q| {
                q.is_empty()
                    || !q
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }) {
                return Err((
                    key("api_key_query_param"),
                    "must be a plain parameter name".into(),
                ));
            }
        }
        for (name, g) in &self.upstreams {
            validate_group(name, g)?;
        }
        self.validate_issuers()?;
        if self.limits.max_header_bytes < 1024 || self.limits.max_header_bytes > 1024 * 1024 {
            return Err((
                "limits.max_header_bytes".into(),
                "must be between 1024 and 1048576".into(),
            ));
        }
        for (name, d) in [
            ("limits.header_timeout", self.limits.header_timeout),
            ("limits.send_timeout", self.limits.send_timeout),
            (
                "proxy.websocket_idle_timeout",
                self.proxy.websocket_idle_timeout,
            ),
            (
                "proxy.websocket_recheck_interval",
                self.proxy.websocket_recheck_interval,
            ),
        ] {
            if d.is_zero() {
                return Err((name.into(), "must be more than 0".into()));
            }
        }
        if self.audit.queue == 0 {
            return Err(("audit.queue".into(), "must be at least 1".into()));
        }
        let sk = &self.signing_keys;
        if sk.lead_time > MAX_SIGNING_LEAD {
            return Err(("signing_keys.lead_time".into(), "must be at most 7d".into()));
        }
        if sk.max_token_lifetime < Duration::from_secs(60) {
            return Err((
                "signing_keys.max_token_lifetime".into(),
                "must be at least 1m".into(),
            ));
        }
        if sk
            .rotate_every
            .is_some_and(|r| r < sk.lead_time.max(Duration::from_secs(3600)))
        {
            return Err((
                "signing_keys.rotate_every".into(),
                "must be at least 1h and at least lead_time".into(),
            ));
        }
        if let Some(i) = &self.oauth.issuer {
            let ok = (i.starts_with("https://") || i.starts_with("http://"))
                && !i.contains(['?', '#'])
                && !i.ends_with('/')
                && http::Uri::try_from(i.as_str()).is_ok();
            if !ok {
                return Err((
                    "oauth.issuer".into(),
                    "must be an http(s) URL without query, fragment or trailing slash".into(),
                ));
            }
        }
        let lifetime = self.oauth.access_token_lifetime;
        if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(24 * 3600) {
            return Err((
                "oauth.access_token_lifetime".into(),
                "must be 1s-24h".into(),
            ));
        }
        let max_age = self.oauth.dpop_proof_max_age;
        if max_age < Duration::from_secs(1) || max_age > Duration::from_secs(600) {
            return Err(("oauth.dpop_proof_max_age".into(), "must be 1s-10m".into()));
        }
        if lifetime > self.signing_keys.max_token_lifetime {
            return Err((
                "oauth.access_token_lifetime".into(),
                "must not exceed signing_keys.max_token_lifetime".into(),
            ));
        }
        if self
            .audit
            .retention
            .is_some_and(|r| r < MIN_AUDIT_RETENTION)
        {
            return Err((
                "audit.retention".into(),
                "must be at least 1h (or \"forever\")".into(),
            ));
        }
        let max = portcullis_domain::audit::MAX_LINGER;
        if self.audit.flush_interval.is_zero() || self.audit.flush_interval > max {
            return Err((
                "audit.flush_interval".into(),
                format!("must be more than 0 and at most {}s", max.as_secs()),
            ));
        }
        Ok(())
    }
}

/// Most targets in one upstream group.
pub const MAX_TARGETS: usize = 64;

fn validate_group(name: &str, g: &UpstreamGroupConfig) -> Result<(), (String, String)> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    if !is_plain_name(name) {
        return Err((
            format!("upstreams.{name}"),
            "upstream names are 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if g.targets.is_empty() || g.targets.len() > MAX_TARGETS {
        return Err((
            key("targets"),
            format!("an upstream has 1 to {MAX_TARGETS} targets"),
        ));
    }
    let mut paths = g.targets.iter().map(|t| match &t.url {
        Upstream::Url { base_path, .. } => base_path.as_str(),
        _ => "",
    });
    let first = paths.next().unwrap_or_default();
    if let Some(other) = paths.find(|p| *p != first) {
        return Err((
            key("targets"),
            format!("every target has the same base path (`{first}` and `{other}`)"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &g.targets {
        if !(1..=100).contains(&t.weight) {
            return Err((key("weight"), "a target's weight is 1 to 100".into()));
        }
        if let Upstream::Url {
            scheme, authority, ..
        } = &t.url
        {
            if !seen.insert(format!("{scheme}://{authority}")) {
                return Err((
                    key("targets"),
                    format!(
                        "target {scheme}://{authority} is listed twice (give it a weight instead)"
                    ),
                ));
            }
        }
    }
    if g.retries > MAX_TARGETS as u32 {
        return Err((key("retries"), format!("at most {MAX_TARGETS}")));
    }
    if let Some(h) = &g.health {
        if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err((
                key("health.path"),
                "must start with '/' and hold no spaces or control characters".into(),
            ));
        }
        let hour = Duration::from_secs(3600);
        if h.interval.is_zero() || h.interval > hour {
            return Err((
                key("health.interval"),
                "must be more than 0 and at most 1h".into(),
            ));
        }
        if h.timeout.is_zero() || h.timeout > h.interval {
            return Err((
                key("health.timeout"),
                "must be more than 0 and at most the interval".into(),
            ));
        }
        for (k, v) in [
            ("health.healthy_after", h.healthy_after),
            ("health.unhealthy_after", h.unhealthy_after),
        ] {
            if !(1..=100).contains(&v) {
                return Err((key(k), "must be 1 to 100".into()));
            }
        }
    }
    if g.passive.failures > 100 {
        return Err((key("passive.failures"), "must be 0 to 100".into()));
    }
    if g.passive.cooldown.is_zero() || g.passive.cooldown > Duration::from_secs(3600) {
        return Err((
            key("passive.cooldown"),
            "must be more than 0 and at most 1h".into(),
        ));
    }
    Ok(())
}

/// Finds the byte offset of a dotted key's last segment in the text (best effort): within
/// the route of a `routes[i]` key, within the group's tables of an `upstreams.NAME` key (or
/// at the group's header when the key is not on a line of its own).
fn find_key(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let last = key.rsplit('.').next()?.split('[').next()?;
    let mut offset = 0;
    let mut route_idx: i64 = -1;
    let want_route: Option<i64> = key
        .strip_prefix("routes[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok());
    let group = key
        .strip_prefix("upstreams.")
        .and_then(|r| r.split('.').next());
    let (mut in_group, mut group_header, mut inline) = (false, None, None);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let start = offset + (line.len() - t.len());
        if t.starts_with("[[routes]]") {
            route_idx += 1;
        }
        if let Some(g) = group {
            if t.starts_with('[') {
                in_group = t.starts_with("[upstreams.") && {
                    let rest = &t["[upstreams.".len()..];
                    rest.split([']', '.']).next() == Some(g)
                };
                if in_group && group_header.is_none() {
                    group_header = Some(start..start + t.trim_end().len());
                }
            }
        }
        let in_scope = match group {
            Some(_) => in_group,
            None => want_route.is_none_or(|w| w == route_idx),
        };
        if in_scope && t.starts_with(last) && t[last.len()..].trim_start().starts_with('=') {
            return Some(start..start + last.len());
        }
        if in_scope && inline.is_none() {
            if let Some(i) = inline_key(t, last) {
                inline = Some(start + i..start + i + last.len());
            }
        }
        offset += line.len();
    }
    inline.or(group_header)
}

/// Where `key =` stands in `line` as a whole key of an inline table (`{ key = … }`): after
/// `{`, `,` or the start, so that `reweight = 1` is not taken for `weight`.
fn inline_key(line: &str, key: &str) -> Option<usize> {
    line.match_indices(key).map(|(i, _)| i).find(|&i| {
        let before = line[..i].trim_end();
        let after = line[i + key.len()..].trim_start();
        after.starts_with('=') && (before.is_empty() || before.ends_with(['{', ',']))
    })
}

fn render(
    file: &str,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    key: Option<&str>,
    msg: &str,
) -> String {
    let pos = span.map(|s| {
        let before = &text[..s.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    });
    let key = key
        .filter(|k| !k.is_empty() && *k != ".")
        .map(|k| format!(" key `{k}`:"))
        .unwrap_or_default();
    match pos {
        Some((l, c)) => format!("{file}:{l}:{c}:{key} {msg}"),
        None => format!("{file}:{key} {msg}"),
    }
}

/// Parses durations like `500ms`, `30s`, `5m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}`: use e.g. 500ms, 30s, 5m, 2h, 7d"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => {
            return Err(format!(
                "invalid duration `{s}`: use e.g. 500ms, 30s, 5m, 2h, 7d"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// A duration, or `"forever"` (`None`).
fn de_retention<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "forever" {
        return Ok(None);
    }
    parse_duration(&s)
        .map(Some)
        .map_err(|e| de::Error::custom(format!("{e}, or \"forever\"")))
}

fn de_optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parse_duration(&String::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_signing_algorithm<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<portcullis_core::jose::Algorithm, D::Error> {
    let s = String::deserialize(d)?;
    portcullis_core::jose::Algorithm::from_name(&s)
        .filter(|a| a.is_asymmetric())
        .ok_or_else(|| {
            de::Error::custom(format!(
                "unknown signing algorithm `{s}`: use ES256, EdDSA, RS256 or PS256"
            ))
        })
}

fn de_signing_algorithms<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<portcullis_core::jose::Algorithm>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.is_empty() {
        return Err(de::Error::custom("name at least one algorithm"));
    }
    names
        .iter()
        .map(|s| {
            portcullis_core::jose::Algorithm::from_name(s)
                .filter(|a| a.is_asymmetric())
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "`{s}` is not accepted: use ES256, EdDSA, RS256 or PS256 (never none, never an HMAC algorithm with public keys)"
                    ))
                })
        })
        .collect()
}

fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
    Prefix::new(&String::deserialize(d)?).map_err(de::Error::custom)
}

fn de_header_name<'de, D: Deserializer<'de>>(d: D) -> Result<http::HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    http::HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| de::Error::custom(format!("`{s}` is not a valid header name")))
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_opt_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<http::Method>>, D::Error> {
    de_methods(d).map(Some)
}

fn de_opt_header_names<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<http::HeaderName>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            http::HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| de::Error::custom(format!("`{s}` is not a valid header name")))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn de_trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<TrustedProxies, D::Error> {
    TrustedProxies::parse(&Vec::<String>::deserialize(d)?).map_err(de::Error::custom)
}

fn de_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::Method>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|m| {
            let up = m.to_ascii_uppercase();
            match up.as_str() {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                    http::Method::from_bytes(up.as_bytes())
                        .map_err(|_| de::Error::custom("bad method"))
                }
                _ => Err(de::Error::custom(format!(
                    "unknown method `{m}` (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)"
                ))),
            }
        })
        .collect()
}

fn de_scopes<'de, D: Deserializer<'de>>(d: D) -> Result<ScopeSet, D::Error> {
    ScopeSet::parse(Vec::<String>::deserialize(d)?).map_err(de::Error::custom)
}

/// Parses an upstream: `builtin:echo`, an `http(s)://host[:port][/base]` URL, or the name of
/// an `[upstreams]` group.
pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if s == "builtin:echo" {
        return Ok(Upstream::Echo);
    }
    if is_plain_name(s) {
        return Ok(Upstream::Named(s.to_owned()));
    }
    let uri: http::Uri = s.parse().map_err(|_| format!("`{s}` is not a URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .filter(|sc| *sc == http::uri::Scheme::HTTP || *sc == http::uri::Scheme::HTTPS)
        .ok_or_else(|| format!("upstream `{s}` must be http://, https:// or builtin:echo"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("upstream `{s}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("upstream URLs must not carry credentials".into());
    }
    if uri.query().is_some() {
        return Err("upstream URLs must not carry a query".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream::Url {
        scheme,
        authority,
        base_path,
    })
}

/// 1-64 characters of `[A-Za-z0-9_-]` (route and upstream names).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn de_upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Upstream, D::Error> {
    parse_upstream(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// The policy grammar: `"public"`, a scheme name, `{ any = [...] }` or `{ all = [...] }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPolicy {
    Name(String),
    Table(RawPolicyTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyTable {
    #[serde(default)]
    any: Option<Vec<RawPolicy>>,
    #[serde(default)]
    all: Option<Vec<RawPolicy>>,
}

fn lower(p: RawPolicy, depth: usize) -> Result<PolicyExpr, String> {
    if depth > portcullis_domain::policy::MAX_DEPTH {
        return Err("policy nested too deeply".into());
    }
    match p {
        RawPolicy::Name(n) if n == "public" => Ok(PolicyExpr::Public),
        RawPolicy::Name(n) => {
            let s = Scheme::from_name(&n).ok_or_else(|| {
                format!(
                    "unknown scheme `{n}` (known: public, {})",
                    Scheme::ALL
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if !AVAILABLE_SCHEMES.contains(&s) {
                return Err(format!(
                    "scheme `{n}` is not available in this version of portcullis (available: {})",
                    AVAILABLE_SCHEMES
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(PolicyExpr::Scheme(s))
        }
        RawPolicy::Table(t) => {
            let (ctor, items): (fn(Vec<PolicyExpr>) -> PolicyExpr, _) = match (t.any, t.all) {
                (Some(v), None) => (PolicyExpr::Any, v),
                (None, Some(v)) => (PolicyExpr::All, v),
                _ => return Err("a policy table has exactly one of `any` or `all`".into()),
            };
            if items.is_empty() {
                return Err("`any`/`all` needs at least one branch".into());
            }
            let inner = items
                .into_iter()
                .map(|i| lower(i, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            if inner.contains(&PolicyExpr::Public) {
                return Err("`public` must be the whole policy, not a branch".into());
            }
            Ok(ctor(inner))
        }
    }
}

fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<PolicyExpr, D::Error> {
    let raw = RawPolicy::deserialize(d).map_err(|_| {
        de::Error::custom(
            "policy must be \"public\", a scheme name, { any = [...] } or { all = [...] }",
        )
    })?;
    lower(raw, 0).map_err(de::Error::custom)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    limit: u32,
    period: String,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    algorithm: Option<String>,
}

fn de_opt_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Limit>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Off(bool),
        On(RawLimit),
    }
    match Either::deserialize(d).map_err(|_| de::Error::custom("expected false or { limit = N, period = \"1m\", burst = N, algorithm = \"gcra\" | \"token_bucket\" }"))? {
        Either::Off(false) => Ok(None),
        Either::Off(true) => Err(de::Error::custom("`true` is not a limit; give { limit = N, period = \"1m\" }")),
        Either::On(r) => {
            let period = parse_duration(&r.period).map_err(de::Error::custom)?;
            let algorithm = match r.algorithm.as_deref() {
                None => Algorithm::Gcra,
                Some(o) => Algorithm::from_name(o).ok_or_else(|| {
                    de::Error::custom(format!("unknown algorithm `{o}` (gcra, token_bucket)"))
                })?,
            };
            if r.limit == 0 || period.is_zero() || r.burst == Some(0) {
                return Err(de::Error::custom("limit, period and burst must be positive"));
            }
            let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
            Ok(Some(Limit { algorithm, limit: r.limit, period_ms, burst: r.burst.unwrap_or(r.limit) }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "p.toml").unwrap_err().0
    }

    #[test]
    fn signing_keys_are_configured_and_checked() {
        let c = Config::parse(
            "[signing_keys]\nalgorithm = \"EdDSA\"\nlead_time = \"2h\"\nrotate_every = \"30d\"\n",
            "p.toml",
        )
        .unwrap();
        let ring = c.signing_keys.ring();
        assert_eq!(ring.algorithm, portcullis_core::jose::Algorithm::EdDsa);
        assert_eq!(ring.lead_time, Duration::from_secs(7200));
        assert_eq!(ring.rotate_every, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(Config::default().signing_keys.rotate_every, None);
        for (text, key, what) in [
            (
                "algorithm = \"HS256\"",
                "signing_keys.algorithm",
                "unknown signing algorithm",
            ),
            (
                "algorithm = \"none\"",
                "signing_keys.algorithm",
                "unknown signing algorithm",
            ),
            ("lead_time = \"8d\"", "signing_keys.lead_time", "at most 7d"),
            (
                "rotate_every = \"30m\"",
                "signing_keys.rotate_every",
                "at least 1h",
            ),
            (
                "max_token_lifetime = \"10s\"",
                "signing_keys.max_token_lifetime",
                "at least 1m",
            ),
            ("lead = \"1h\"", "signing_keys.lead", "unknown field"),
        ] {
            let e = err(&format!("[signing_keys]\n{text}\n"));
            assert!(
                e.contains(key) && e.contains(what) && e.contains("p.toml:2"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn inline_keys_are_found_whole() {
        let line = r#"targets = [{ url = "http://a", reweight = 1, weight = 0 }]"#;
        assert_eq!(
            inline_key(line, "weight"),
            line.find(" weight").map(|i| i + 1)
        );
        assert_eq!(inline_key(line, "url"), line.find("url"));
        assert_eq!(inline_key("{reweight=1}", "weight"), None);
        assert_eq!(inline_key("weight= 2", "weight"), Some(0));
    }

    #[test]
    fn balance_names_are_the_ones_the_file_takes() {
        for b in [Balance::RoundRobin, Balance::LeastRequests] {
            let parsed: Balance =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(b.name()))
                .unwrap();
            assert_eq!(parsed, b);
        }
    }

    #[test]
    fn upstream_groups_are_named_by_routes_and_checked() {
        let ok = r#"
[upstreams.orders]
targets = ["http://127.0.0.1:3001/api", { url = "https://orders-2.internal/api", weight = 3 }]
balance = "least_requests"
retries = 1
health = { path = "/healthz", interval = "2s", timeout = "500ms" }

[upstreams.orders.passive]
failures = 5

[[routes]]
name = "orders"
upstream = "orders"
policy = "public"
"#;
        let c = Config::parse(ok, "p.toml").unwrap();
        let g = &c.upstreams["orders"];
        assert_eq!(g.targets.len(), 2);
        assert_eq!(g.targets[1].weight, 3);
        assert_eq!(
            g.targets[1].url.to_string(),
            "https://orders-2.internal/api"
        );
        assert_eq!(g.balance, Balance::LeastRequests);
        let h = g.health.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_millis(500))
        );
        assert_eq!((h.healthy_after, h.unhealthy_after), (2, 3));
        assert_eq!(
            (g.passive.failures, g.passive.cooldown),
            (5, Duration::from_secs(10))
        );
        assert_eq!(c.routes[0].upstream, Upstream::Named("orders".into()));

        let route = "\n[[routes]]\nname = \"r\"\nupstream = \"orders\"\npolicy = \"public\"\n";
        let e = err("[[routes]]\nname = \"r\"\nupstream = \"ordres\"\npolicy = \"public\"\n");
        assert!(
            e.starts_with("p.toml:3:") && e.contains("no upstream named `ordres`"),
            "{e}"
        );
        for (group, line, what) in [
            ("targets = []\n", 2, "1 to 64 targets"),
            ("targets = [\"http://a:1/x\", \"http://b:1/y\"]\n", 2, "same base path"),
            ("targets = [\"http://a:1\", \"http://a:1\"]\n", 2, "listed twice"),
            ("targets = [\"builtin:echo\"]\n", 2, "http:// or https://"),
            ("targets = [{ url = \"http://a:1\", weight = 0 }]\n", 2, "weight is 1 to 100"),
            ("targets = [{ url = \"http://a:1\", wieght = 2 }]\n", 2, "unknown field"),
            ("targets = [\"http://a:1\"]\nbalance = \"random\"\n", 3, "balance"),
            ("targets = [\"http://a:1\"]\n[upstreams.orders.health]\npath = \"healthz\"\n", 4, "start with '/'"),
            ("targets = [\"http://a:1\"]\n[upstreams.orders.health]\npath = \"/h\"\ninterval = \"1s\"\ntimeout = \"2s\"\n", 6, "at most the interval"),
            ("targets = [\"http://a:1\"]\n[upstreams.orders.passive]\ncooldown = \"0s\"\n", 4, "more than 0"),
        ] {
            let e = err(&format!("[upstreams.orders]\n{group}{route}"));
            assert!(
                e.starts_with(&format!("p.toml:{line}:")) && e.contains(what),
                "{group}: {e}"
            );
        }
    }

    #[test]
    fn empty_file_gives_the_quickstart_defaults() {
        let c = Config::parse("", "p.toml").unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.routes.len(), 5);
        assert_eq!(c.routes[0].upstream, Upstream::Echo);
        assert_eq!(
            (c.routes[1].path_prefix.as_str(), &c.routes[1].policy),
            ("/jwt/echo", &PolicyExpr::Scheme(Scheme::Jwt))
        );
        assert_eq!(
            (c.routes[2].path_prefix.as_str(), &c.routes[2].policy),
            ("/hmac/echo", &PolicyExpr::Scheme(Scheme::Hmac))
        );
        assert_eq!(c.routes[2].signature_window, Duration::from_secs(300));
        assert_eq!(
            (
                c.routes[3].path_prefix.as_str(),
                &c.routes[3].policy,
                c.routes[3].sigv4_region.as_str(),
                c.routes[3].sigv4_service.as_str()
            ),
            (
                "/sigv4/echo",
                &PolicyExpr::Scheme(Scheme::SigV4),
                "us-east-1",
                "execute-api"
            )
        );
        assert_eq!(
            (c.routes[4].path_prefix.as_str(), &c.routes[4].policy),
            ("/httpsig/echo", &PolicyExpr::Scheme(Scheme::HttpSignature))
        );
    }

    #[test]
    fn full_route_parses() {
        let c = Config::parse(
            r#"
listen = "127.0.0.1:9000"
[api_keys]
prefix = "pk_test"
[[routes]]
name = "orders"
host = "api.example.com"
path_prefix = "/orders"
methods = ["get", "POST"]
upstream = "http://127.0.0.1:3000/v1/"
policy = { any = ["api_key", { all = ["api_key"] }] }
scopes = ["orders:read"]
rate_limit = { limit = 100, period = "1m", burst = 10 }
failed_auth_limit = false
"#,
            "p.toml",
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.methods, [http::Method::GET, http::Method::POST]);
        assert!(matches!(&r.upstream, Upstream::Url { base_path, .. } if base_path == "/v1"));
        assert_eq!(r.rate_limit.unwrap().burst, 10);
        assert!(r.failed_auth_limit.is_none());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
        assert!(e.contains("bogus"), "{e}");

        let e = err("[proxy]\ntimeout = \"soon\"\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
        assert!(e.contains("proxy.timeout"), "{e}");
        let e = err("[limits]\nheader_timeout = \"0s\"\n");
        assert!(e.contains("limits.header_timeout"), "{e}");
        let e = err("[limits]\nsend_timeout = \"0s\"\n");
        assert!(e.contains("limits.send_timeout"), "{e}");
        for bad in ["0s", "11s"] {
            let e = err(&format!("[audit]\nflush_interval = \"{bad}\"\n"));
            assert!(
                e.starts_with("p.toml:2:") && e.contains("audit.flush_interval"),
                "{e}"
            );
        }
        let c = Config::parse("[audit]\nflush_interval = \"20ms\"\n", "p.toml").unwrap();
        assert_eq!(c.audit.flush_interval, Duration::from_millis(20));
        assert_eq!(c.audit.retention, Some(DEFAULT_AUDIT_RETENTION));
        assert_eq!(
            c.audit.decisions,
            portcullis_domain::gate::AuditedDecisions::All
        );
        let c = Config::parse("[audit]\ndecisions = \"denials\"\n", "p.toml").unwrap();
        assert_eq!(
            c.audit.decisions,
            portcullis_domain::gate::AuditedDecisions::Denials
        );
        let e = err("[audit]\ndecisions = \"allowed\"\n");
        assert!(e.starts_with("p.toml:2:") && e.contains("decisions"), "{e}");
        for (text, want) in [
            ("\"forever\"", None),
            ("\"7d\"", Some(Duration::from_secs(7 * 86_400))),
        ] {
            let c = Config::parse(&format!("[audit]\nretention = {text}\n"), "p.toml").unwrap();
            assert_eq!(c.audit.retention, want, "{text}");
        }
        for bad in ["\"59m\"", "\"0\"", "\"always\"", "30"] {
            let e = err(&format!("[audit]\nretention = {bad}\n"));
            assert!(
                e.starts_with("p.toml:2:") && e.contains("audit.retention"),
                "{bad}: {e}"
            );
        }
        let c = Config::parse("[limits]\nsend_timeout = \"5s\"\n", "p.toml").unwrap();
        assert_eq!(c.limits.send_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));

        let e = err("[proxy]\npublic_roots = false\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
        assert!(
            e.contains("proxy.public_roots") && e.contains("ca_file"),
            "{e}"
        );

        let e = err("listen = \n");
        assert!(e.starts_with("p.toml:1:"), "{e}");

        let e = err("[[routes]]\nname = \"a\"\nupstream = \"builtin:echo\"\npolicy = { all = [\"mtls\", { any = [\"jwt\", \"api_key\"] }] }\n");
        assert!(e.starts_with("p.toml:4:"), "{e}");
        assert!(
            e.contains("routes[0].policy") && e.contains("not available"),
            "{e}"
        );

        let e = err("[[routes]]\nname = \"a\"\nupstream = \"builtin:echo\"\npolicy = \"api_key\"\n[[routes]]\nname = \"a\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\n");
        assert!(e.starts_with("p.toml:6:") && e.contains("duplicate"), "{e}");

        let e = err("[[routes]]\nname = \"a\"\nupstream = \"ftp://x\"\npolicy = \"public\"\n");
        assert!(
            e.starts_with("p.toml:3:") && e.contains("routes[0].upstream"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = Config::parse(&text, "p.toml");
        }

        #[test]
        fn toml_shaped_text_never_panics(key in "[a-z_]{1,12}", value in "[\\[\\]{}\"a-z0-9=,. _-]{0,40}", table in "(\\[\\[routes\\]\\]|\\[proxy\\]|\\[api_keys\\]|)") {
            let _ = Config::parse(&format!("{table}\n{key} = {value}\n"), "p.toml");
        }

        #[test]
        fn durations_never_panic(s in "\\PC{0,30}") {
            let _ = parse_duration(&s);
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2 weeks").is_err());
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(
            parse_duration("5").is_err(),
            "a unit is required except for 0"
        );
        assert!(parse_duration("").is_err());
    }
}

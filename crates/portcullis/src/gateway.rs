//! The gateway's request path: bound sizes → match a route → `Gate::admit` → set identity
//! headers → proxy (or the built-in echo). Every decision is the domain's; this file only
//! translates HTTP.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, Uri};
use portcullis_core::client_ip::TrustedProxies;
use portcullis_core::cors::Cors;
use portcullis_core::error::{GatewayError, TokenError};
use portcullis_core::identity::SchemeSet;
use portcullis_core::text::IpText;
use portcullis_core::{AuthError, ConnMemo, RequestParts, Scheme, SignatureError, WireError};
use portcullis_domain::authn::Authenticated;
use portcullis_domain::dpop::DpopChecker;
use portcullis_domain::gate::{Gate, RouteGate};
use portcullis_domain::upstream_identity::IdentityTokens;
use portcullis_domain::Clock;

use crate::balance::{Picked, UpstreamGroup};
use crate::h1::head::{is_field_value, is_hop_by_hop, push_field};
use crate::metrics::Metrics;
use crate::wire::error_response;

/// Identity headers we set for the upstream; any caller-sent `x-portcullis-*` is removed.
pub mod identity_headers {
    /// Scheme(s) that proved the identity.
    pub const SCHEME: &str = "x-portcullis-scheme";
    /// Client (key owner, OAuth client …).
    pub const CLIENT: &str = "x-portcullis-client";
    /// End user.
    pub const SUBJECT: &str = "x-portcullis-subject";
    /// Space-separated scopes.
    pub const SCOPES: &str = "x-portcullis-scopes";
    /// Credential id (never the credential).
    pub const CREDENTIAL: &str = "x-portcullis-credential";
    /// The signed statement of the identity (a JWT; on routes with `identity_token`).
    pub const IDENTITY: &str = "x-portcullis-identity";
}

/// The request id, to the upstream and back to the caller.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const H_SCHEME: HeaderName = HeaderName::from_static(identity_headers::SCHEME);
const H_CLIENT: HeaderName = HeaderName::from_static(identity_headers::CLIENT);
const H_SUBJECT: HeaderName = HeaderName::from_static(identity_headers::SUBJECT);
const H_SCOPES: HeaderName = HeaderName::from_static(identity_headers::SCOPES);
const H_CREDENTIAL: HeaderName = HeaderName::from_static(identity_headers::CREDENTIAL);
const H_IDENTITY: HeaderName = HeaderName::from_static(identity_headers::IDENTITY);
const H_XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const H_XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const H_XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// RFC 9449 §8.1, §9.
pub const H_DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");
/// The gateway's time (Unix seconds), on a `signature_expired` refusal.
pub const H_SERVER_TIME: HeaderName = HeaderName::from_static("x-server-time");

/// Where a route sends admitted requests, resolved at load.
pub enum Target {
    /// The built-in echo service.
    Echo,
    /// HTTP(S) upstream targets (one for a route's single URL).
    Upstream {
        /// The targets and their base path (a group of `[upstreams]` is shared by the routes
        /// that name it).
        group: Arc<UpstreamGroup>,
    },
}

/// One compiled route.
pub struct Route {
    /// Access rules.
    pub gate: RouteGate,
    /// Host to match (`None`: any); `*.example.com` matches subdomains.
    pub host: Option<String>,
    /// Path prefix (segment-aligned).
    pub path_prefix: String,
    /// Methods to match (empty: any).
    pub methods: Vec<http::Method>,
    /// Where to send admitted requests.
    pub target: Target,
    /// Remove the prefix before proxying.
    pub strip_prefix: bool,
    /// Pass the consumed credential on to the upstream.
    pub forward_credentials: bool,
    /// Query parameter that carried an API key (removed before proxying).
    pub api_key_query_param: Option<String>,
    /// Pass WebSocket handshakes on as upgrades (the upstream's 101 makes the connection a
    /// tunnel); otherwise `Upgrade` is dropped like any hop-by-hop field.
    pub websocket: bool,
    /// Which browser origins may call the route; the gateway answers preflights and owns
    /// the `Access-Control-*` fields of every response.
    pub cors: Option<Cors>,
    /// How long the upstream may take on this route (the pool's `proxy.timeout` otherwise).
    pub timeout: Option<std::time::Duration>,
    /// `Some(aud)`: hand the upstream `X-Portcullis-Identity`, a signed statement of the
    /// identity for this audience.
    pub identity_audience: Option<Arc<str>>,
    /// `Some(limit)`: the route's schemes sign the body, so it is read whole (at most
    /// `limit` bytes, 413 beyond) before authentication and then sent on from memory.
    pub signed_body_limit: Option<u64>,
    latency: prometheus::Histogram,
    allowed: prometheus::IntCounter,
}

impl Route {
    /// A route with its metric handles resolved once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gate: RouteGate,
        host: Option<String>,
        path_prefix: String,
        methods: Vec<http::Method>,
        target: Target,
        strip_prefix: bool,
        forward_credentials: bool,
        websocket: bool,
        cors: Option<Cors>,
        timeout: Option<std::time::Duration>,
        metrics: &Metrics,
    ) -> Self {
        let name = gate.name.to_string();
        let scheme = if gate.policy.is_public() {
            "none".to_string()
        } else {
            gate.policy.schemes().to_string()
        };
        let api_key_query_param = gate.auth.api_key_query_param.clone();
        Self {
            identity_audience: None,
            signed_body_limit: None,
            latency: metrics.latency.with_label_values(&[name.as_str()]),
            allowed: metrics
                .requests
                .with_label_values(&[name.as_str(), scheme.as_str(), "allow"]),
            gate,
            host: host.map(|h| h.to_ascii_lowercase()),
            path_prefix: path_prefix.trim_end_matches('/').to_owned(),
            methods,
            target,
            strip_prefix,
            forward_credentials,
            api_key_query_param,
            websocket,
            cors,
            timeout,
        }
    }

    fn matches(&self, host: Option<&str>, path: &str, method: &http::Method) -> bool {
        (self.methods.is_empty() || self.methods.contains(method)) && self.matches_place(host, path)
    }

    /// Whether host and path match, whatever the method.
    fn matches_place(&self, host: Option<&str>, path: &str) -> bool {
        let path_ok = self.path_prefix.is_empty()
            || path
                .strip_prefix(self.path_prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(h)) => match want.strip_prefix("*.") {
                Some(suffix) => {
                    h.len() > suffix.len() + 1
                        && h.ends_with(suffix)
                        && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
                }
                None => want.eq_ignore_ascii_case(h),
            },
        };
        path_ok && host_ok
    }
}

/// The routes in match order, compiled from one configuration.
pub type Routes = Vec<Route>;

/// The gateway.
pub struct Gateway {
    /// The routes in force; a configuration reload replaces them whole (see
    /// [`Gateway::routes`]).
    routes: ArcSwap<Routes>,
    /// Counts replacements of `routes` (bumped after each): a connection's copy is renewed
    /// only when it moved (see [`Gateway::current_routes`]).
    generation: AtomicU64,
    /// The decision.
    pub gate: Gate,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The API-key header (removed before proxying when consumed).
    pub api_key_header: HeaderName,
    /// How the client's address is found behind trusted proxies.
    client_ip: ClientIp,
    /// DPoP proofs' checker, for the nonce a refusal hands out (when nonces are required).
    dpop: Option<Arc<DpopChecker>>,
    /// Signs `X-Portcullis-Identity` for routes that ask for it.
    identity: Option<Arc<IdentityTokens>>,
}

/// A connection's copy of the routes in force and the replacement it belongs to.
pub struct HeldRoutes {
    generation: u64,
    routes: Arc<Routes>,
}

/// How the client's address is found: the proxies believed, and the field they append to.
pub struct ClientIp {
    /// Peers whose forwarding fields are believed.
    pub trusted: TrustedProxies,
    /// The field with the forwarded addresses (`X-Forwarded-For`).
    pub header: HeaderName,
}

/// What to do with a request, decided by [`Gateway::plan`].
pub enum Plan<'g> {
    /// Answer with this (a refusal or an error); nothing goes upstream.
    Respond(Response<Body>),
    /// Admitted for the built-in echo: `parts` now hold what the echo is to see.
    Echo(Admitted<'g>),
    /// Admitted for an upstream: the request head to send it (request line and fields,
    /// without the framing fields and the final empty line) is in the buffer given to `plan`,
    /// for the target picked.
    Forward(Admitted<'g>, Picked<'g>),
}

/// An admitted request, for the adapter that serves it to report back.
pub struct Admitted<'g> {
    /// The route that admitted it.
    pub route: &'g Route,
    /// The rate-limit decision to show in `RateLimit-*` headers.
    pub rate: Option<portcullis_core::ratelimit::Decision>,
    /// A WebSocket handshake, passed on as one: the upstream may switch protocols.
    pub websocket: bool,
    /// For a WebSocket handshake, who was admitted (its credential is checked again while
    /// the tunnel lasts; `None` on a public route).
    pub session: Option<portcullis_domain::authn::Authenticated>,
    /// The client's address, as the gate saw it.
    pub client_ip: IpAddr,
    /// The route's CORS fields for this request's origin (empty without `cors`).
    pub cors: Vec<(HeaderName, HeaderValue)>,
    started: Instant,
}

impl Gateway {
    /// A gateway over `routes`.
    pub fn new(
        routes: Routes,
        gate: Gate,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        api_key_header: HeaderName,
        client_ip: ClientIp,
    ) -> Self {
        Self {
            routes: ArcSwap::from_pointee(routes),
            generation: AtomicU64::new(0),
            gate,
            clock,
            metrics,
            api_key_header,
            client_ip,
            dpop: None,
            identity: None,
        }
    }

    /// The gateway, signing `X-Portcullis-Identity` with `tokens` where routes ask for it.
    pub fn with_identity_tokens(mut self, tokens: Arc<IdentityTokens>) -> Self {
        self.identity = Some(tokens);
        self
    }

    /// The gateway, handing out `checker`'s nonces with `use_dpop_nonce` refusals.
    pub fn with_dpop(mut self, checker: Arc<DpopChecker>) -> Self {
        self.dpop = Some(checker);
        self
    }

    /// The address a request with `headers` from `peer` comes from: `peer`, unless it is a
    /// trusted proxy (see `portcullis_core::client_ip`). Rate limits per address, the audit
    /// trail and the admin API's actors use it.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        self.client_of(peer, self.trusts(peer), headers)
    }

    /// Whether `peer` is a trusted proxy (no look when none is configured).
    fn trusts(&self, peer: IpAddr) -> bool {
        !self.client_ip.trusted.is_empty() && self.client_ip.trusted.trusts(peer)
    }

    /// [`Gateway::client_ip`] once whether `peer` is trusted is known.
    fn client_of(&self, peer: IpAddr, trusted_peer: bool, headers: &http::HeaderMap) -> IpAddr {
        if !trusted_peer {
            return peer;
        }
        self.client_ip.trusted.client_ip(
            peer,
            headers
                .get_all(&self.client_ip.header)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    /// The routes in force.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// A connection's copy of the routes in force, for [`Gateway::current_routes`].
    pub fn hold_routes(&self) -> HeldRoutes {
        let generation = self.generation.load(Ordering::Acquire);
        HeldRoutes {
            generation,
            routes: self.routes.load_full(),
        }
    }

    /// The routes in force, for one request, through its connection's copy `held`, which is
    /// renewed when a reload has replaced them since (otherwise one atomic load and a
    /// reference count). A request keeps them from its match to its end, so a reload
    /// meanwhile applies from the next request on, the same connection's included.
    pub fn current_routes(&self, held: &mut HeldRoutes) -> Arc<Routes> {
        let generation = self.generation.load(Ordering::Acquire);
        if held.generation != generation {
            *held = self.hold_routes();
        }
        held.routes.clone()
    }

    /// Puts `routes` in force for every request that starts from now on; returns the
    /// routes they replace.
    pub fn replace_routes(&self, routes: Routes) -> Arc<Routes> {
        let old = self.routes.swap(Arc::new(routes));
        // After the swap: whoever sees the new count finds the new routes.
        self.generation.fetch_add(1, Ordering::Release);
        old
    }

    /// The body limit of the route `parts` goes to, if that route's schemes sign the body
    /// (the adapter then reads it whole before [`Gateway::plan`]). Costs nothing when no
    /// route signs bodies.
    pub fn signed_body_limit(&self, routes: &Routes, parts: &http::request::Parts) -> Option<u64> {
        if routes.iter().all(|r| r.signed_body_limit.is_none()) {
            return None;
        }
        let host = request_host(parts);
        routes
            .iter()
            .find(|r| r.matches(host.as_deref(), parts.uri.path(), &parts.method))
            .and_then(|r| r.signed_body_limit)
    }

    /// Decides what to do with a request from `peer`: matches one of `routes` (from
    /// [`Gateway::routes`]), runs the gate, and prepares what goes upstream. For
    /// [`Plan::Forward`], the upstream request head is written into `upstream_head` (which
    /// is cleared first). `conn` is what the caller's connection remembers between its
    /// requests; `body` the whole body where [`Gateway::signed_body_limit`] asked for it.
    #[allow(clippy::too_many_arguments)]
    pub async fn plan<'g>(
        &'g self,
        routes: &'g Routes,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
        conn: &ConnMemo,
        request_id: &str,
        upstream_head: &mut Vec<u8>,
        body: Option<&[u8]>,
    ) -> Plan<'g> {
        let started = Instant::now();
        let path = parts.uri.path();
        if has_dot_segment(path) {
            return Plan::Respond(self.refuse_gateway(GatewayError::BadRequest, "-"));
        }
        let host = request_host(parts);
        if let Some(resp) = self.preflight(routes, parts, host.as_deref()) {
            return Plan::Respond(resp);
        }
        let Some(route) = routes
            .iter()
            .find(|r| r.matches(host.as_deref(), path, &parts.method))
        else {
            return Plan::Respond(self.refuse_gateway(GatewayError::NoRoute, "-"));
        };
        let cors_fields = route
            .cors
            .as_ref()
            .map(|c| c.response_fields(parts.headers.get(header::ORIGIN)))
            .unwrap_or_default();
        let now = self.clock.now();
        let trusted_peer = self.trusts(peer.ip());
        let forwarded = |name: &HeaderName| {
            trusted_peer
                .then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
        };
        let req = RequestParts {
            method: &parts.method,
            path,
            query: parts.uri.query(),
            scheme: match forwarded(&H_XF_PROTO) {
                Some("https") => "https",
                _ => "http",
            },
            authority: forwarded(&H_XF_HOST).or_else(|| {
                parts.uri.authority().map(|a| a.as_str()).or_else(|| {
                    parts
                        .headers
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok())
                })
            }),
            headers: &parts.headers,
            client_ip: self.client_of(peer.ip(), trusted_peer, &parts.headers),
            conn: Some(conn),
            body,
        };
        let decided = match self.gate.admit(&route.gate, &req, request_id, now).await {
            Ok(a) => a,
            Err(refused) => {
                let wire = WireError::from(&refused.error);
                let scheme = route.gate.policy.schemes().to_string();
                self.metrics
                    .requests
                    .with_label_values(&[&*route.gate.name, scheme.as_str(), wire.code])
                    .inc();
                if matches!(
                    refused.error,
                    AuthError::RateLimited { .. } | AuthError::QuotaExceeded { .. }
                ) {
                    self.metrics
                        .rate_limited
                        .with_label_values(&[&*route.gate.name])
                        .inc();
                }
                let schemes = route.gate.policy.schemes();
                let bearer = schemes.iter().any(|s| s == Scheme::Jwt);
                let mut wire = wire;
                if bearer
                    && schemes == SchemeSet::one(Scheme::Jwt)
                    && refused.error == AuthError::MissingCredentials
                {
                    wire.code = "missing_token";
                    wire.description =
                        "This route requires an access token: Authorization: Bearer <token>.";
                }
                let used_dpop = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.as_bytes().get(..5))
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"dpop "));
                let challenges =
                    bearer_challenges(&route.gate.challenges, &refused.error, wire, used_dpop);
                let mut resp = error_response(wire, &challenges, refused.rate.as_ref());
                if bearer && refused.error == AuthError::InsufficientScope {
                    // RFC 6750 §3.1: the scopes the route needs, in the challenge of the 403.
                    let c = format!(
                        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
                        route.gate.scopes.as_space_separated()
                    );
                    if let Ok(v) = HeaderValue::from_str(&c) {
                        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                }
                if refused.error == AuthError::Token(TokenError::DpopNonce) {
                    // RFC 9449 §9: the nonce to retry with.
                    if let Some(v) = self
                        .dpop
                        .as_ref()
                        .and_then(|d| d.fresh_nonce(now))
                        .and_then(|n| HeaderValue::from_str(&n).ok())
                    {
                        resp.headers_mut().insert(H_DPOP_NONCE, v);
                    }
                }
                if refused.error == AuthError::Signature(SignatureError::Expired) {
                    // So that a client can see how far its clock is from ours.
                    resp.headers_mut()
                        .insert(H_SERVER_TIME, HeaderValue::from(now.as_secs()));
                }
                if let AuthError::QuotaExceeded { retry_after_secs } = refused.error {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                }
                append_fields(resp.headers_mut(), cors_fields);
                route.latency.observe(started.elapsed().as_secs_f64());
                return Plan::Respond(resp);
            }
        };
        let consumed = decided
            .authn
            .as_ref()
            .map(|a| a.consumed)
            .unwrap_or_default();
        let passed = Passed {
            drop_api_key: consumed.api_key_header && !route.forward_credentials,
            drop_authorization: consumed.authorization && !route.forward_credentials,
            api_key_header: &self.api_key_header,
            named_in_connection: named_in_connection(&parts.headers),
        };
        let identity_token = match (&route.identity_audience, &decided.authn, &self.identity) {
            (Some(aud), Some(a), Some(tokens)) => {
                match tokens.token(&route.gate.name, aud, &a.identity, now) {
                    Some(t) => Some(t),
                    // Never sent on unproven: the upstream may rely on it.
                    None => {
                        tracing::warn!(route = %route.gate.name, "no signing key for X-Portcullis-Identity");
                        let wire = WireError::from(&AuthError::Unavailable);
                        return Plan::Respond(error_response(wire, &[], None));
                    }
                }
            }
            _ => None,
        };
        let ours = Ours {
            identity_token: identity_token.as_deref(),
            authn: decided.authn.as_ref(),
            headers: &parts.headers,
            peer,
            trusted_peer,
            host: host.as_deref(),
            request_id,
        };
        let path = parts.uri.path();
        let path = if route.strip_prefix {
            path.strip_prefix(route.path_prefix.as_str())
                .filter(|p| !p.is_empty())
                .unwrap_or("/")
        } else {
            path
        };
        let query = match (
            consumed.query_param && !route.forward_credentials,
            route.api_key_query_param.as_deref(),
            parts.uri.query(),
        ) {
            (true, Some(param), Some(q)) => remove_param(q, param).map(std::borrow::Cow::Owned),
            (_, _, q) => q.map(std::borrow::Cow::Borrowed),
        };
        let rate = decided.rate;
        let mut admitted = Admitted {
            route,
            rate,
            websocket: false,
            session: None,
            client_ip: req.client_ip,
            cors: cors_fields,
            started,
        };
        match &route.target {
            Target::Echo => {
                let Some(uri) = build_path_and_query("", path, query.as_deref()) else {
                    return Plan::Respond(self.refuse_gateway(GatewayError::BadRequest, "-"));
                };
                // The echo shows what an upstream would get, host and framing included.
                let mut h = http::HeaderMap::with_capacity(parts.headers.len() + 10);
                for (name, value) in &parts.headers {
                    if passed.passes(name, false) {
                        h.append(name.clone(), value.clone());
                    }
                }
                ours.write(|name, value| {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        h.append(name, v);
                    }
                });
                parts.headers = h;
                parts.uri = uri;
                Plan::Echo(admitted)
            }
            Target::Upstream { group } => {
                // The request line: the path and query come from a parsed URI and the base
                // path from a validated config, so they are valid request-target bytes.
                let out = upstream_head;
                out.clear();
                out.extend_from_slice(parts.method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(group.base_path().as_bytes());
                out.extend_from_slice(path.as_bytes());
                if let Some(q) = &query {
                    out.push(b'?');
                    out.extend_from_slice(q.as_bytes());
                }
                out.extend_from_slice(b" HTTP/1.1\r\n");
                // The upstream sees its own host; the original is in X-Forwarded-Host. Where
                // the value is, for a retry on another target to put that one's there.
                let picked = group.pick(out.len() + b"host: ".len());
                push_field(out, b"host", picked.pool().host().as_bytes());
                for (name, value) in &parts.headers {
                    if passed.passes(name, true) {
                        push_field(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                ours.write(|name, value| {
                    // Our values come from the store and the config; one that could not be
                    // a field value is left out, as a header map would refuse it.
                    if is_field_value(value.as_bytes()) {
                        push_field(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                });
                if route.websocket && is_websocket_handshake(parts, &passed.named_in_connection) {
                    // The hop-by-hop pair, ours to send on this hop; the `Sec-WebSocket-*`
                    // fields are end-to-end and passed above.
                    push_field(out, b"connection", b"upgrade");
                    push_field(out, b"upgrade", b"websocket");
                    admitted.websocket = true;
                    // Checked again while the tunnel lasts.
                    admitted.session = decided.authn.clone();
                }
                Plan::Forward(admitted, picked)
            }
        }
    }

    /// Whether the connection `a` admitted may go on now (a WebSocket tunnel asks this
    /// periodically): its credential is checked again (see `Gate::still_admitted`).
    pub async fn still_admitted(&self, a: &Admitted<'_>, request_id: &str) -> bool {
        let Some(session) = &a.session else {
            return true; // a public route: nobody to check
        };
        self.gate
            .still_admitted(
                &a.route.gate,
                session,
                request_id,
                a.client_ip,
                self.clock.now(),
            )
            .await
    }

    /// Records a request that was served (proxied or echoed).
    pub fn served(&self, a: &Admitted<'_>) {
        a.route.allowed.inc();
        a.route.latency.observe(a.started.elapsed().as_secs_f64());
    }

    /// Records a request that was admitted but failed on the way (upstream down or slow,
    /// body too large …) and renders the refusal.
    pub fn failed(&self, a: &Admitted<'_>, e: &GatewayError) -> Response<Body> {
        let wire = WireError::from(e);
        self.metrics
            .requests
            .with_label_values(&[&*a.route.gate.name, "-", wire.code])
            .inc();
        let mut resp = error_response(wire, &[], None);
        append_fields(resp.headers_mut(), a.cors.clone());
        resp
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) for the route the actual request would take, when that
    /// route has `cors`: 204 with its rules, or 403 `cors_not_allowed`. Nothing is
    /// authenticated (a browser sends no credentials with a preflight) and nothing reaches the
    /// upstream. `None`: not a preflight for such a route; the request goes on as any other.
    fn preflight(
        &self,
        routes: &Routes,
        parts: &http::request::Parts,
        host: Option<&str>,
    ) -> Option<Response<Body>> {
        if parts.method != http::Method::OPTIONS {
            return None;
        }
        let origin = parts.headers.get(header::ORIGIN)?;
        let method = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let wanted = http::Method::from_bytes(method.as_bytes()).ok()?;
        let path = parts.uri.path();
        // The route the actual request would take; failing that (a method no route serves
        // there), the first route with CORS rules for the place, whose rules then refuse it.
        let route = routes
            .iter()
            .find(|r| r.matches(host, path, &wanted))
            .or_else(|| {
                routes
                    .iter()
                    .find(|r| r.cors.is_some() && r.matches_place(host, path))
            })?;
        let cors = route.cors.as_ref()?;
        let asked = parts
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .cloned();
        let resp = match cors.preflight(origin, method.as_bytes(), asked) {
            Ok(fields) => {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = http::StatusCode::NO_CONTENT;
                append_fields(resp.headers_mut(), fields);
                resp
            }
            Err(_) => error_response(WireError::from(&GatewayError::CorsNotAllowed), &[], None),
        };
        let outcome = if resp.status().is_success() {
            "preflight"
        } else {
            "cors_not_allowed"
        };
        self.metrics
            .requests
            .with_label_values(&[&*route.gate.name, "-", outcome])
            .inc();
        Some(resp)
    }

    /// Renders a refusal of a request that never reached a route (malformed, too large).
    pub fn refuse_gateway(&self, e: GatewayError, route: &str) -> Response<Body> {
        let w = WireError::from(&e);
        self.metrics
            .requests
            .with_label_values(&[route, "-", w.code])
            .inc();
        error_response(w, &[], None)
    }
}

/// Adds `fields` to `h` (a `Vary` beside any already there).
pub fn append_fields(h: &mut http::HeaderMap, fields: Vec<(HeaderName, HeaderValue)>) {
    for (n, v) in fields {
        h.append(n, v);
    }
}

/// Which of the caller's header fields go on to the upstream.
struct Passed<'a> {
    drop_api_key: bool,
    drop_authorization: bool,
    api_key_header: &'a HeaderName,
    /// Field names listed in `Connection` (hop-by-hop for this message); usually empty.
    named_in_connection: Vec<HeaderName>,
}

impl Passed<'_> {
    /// `upstream`: the fields that the upstream request's writer sets itself (host, framing,
    /// `Expect`, which was answered here) go too.
    fn passes(&self, name: &HeaderName, upstream: bool) -> bool {
        let n = name.as_str();
        if upstream
            && matches!(
                n,
                "host" | "content-length" | "transfer-encoding" | "expect"
            )
        {
            return false;
        }
        !(is_hop_by_hop(n.as_bytes())
            || n.starts_with("x-portcullis-")
            || matches!(
                n,
                "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-request-id"
            )
            || (self.drop_api_key && name == self.api_key_header)
            // A DPoP proof goes with the token it proves.
            || (self.drop_authorization && (name == header::AUTHORIZATION || n == "dpop"))
            || self.named_in_connection.contains(name))
    }
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 `GET` without a body that asks
/// to upgrade to `websocket`. `named`: what its `Connection` fields name
/// ([`named_in_connection`]).
fn is_websocket_handshake(parts: &http::request::Parts, named: &[HeaderName]) -> bool {
    parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v == "0")
        && parts.headers.get_all(header::UPGRADE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
        && named.contains(&header::UPGRADE)
}

/// The names a `Connection` field lists, other than `close` and `keep-alive`.
fn named_in_connection(h: &http::HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token) {
                named.push(n);
            }
        }
    }
    named
}

/// The fields Portcullis sets for the upstream: the identity, forwarding and request id.
struct Ours<'a> {
    authn: Option<&'a Authenticated>,
    /// `X-Portcullis-Identity`, when the route asks for it.
    identity_token: Option<&'a str>,
    /// The caller's fields (for a previous `X-Forwarded-For`).
    headers: &'a http::HeaderMap,
    peer: SocketAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` and `-Host` are passed on.
    trusted_peer: bool,
    host: Option<&'a str>,
    request_id: &'a str,
}

impl Ours<'_> {
    fn write(&self, mut f: impl FnMut(HeaderName, &str)) {
        if let Some(a) = self.authn {
            let id = &a.identity;
            match id.schemes.single() {
                Some(one) => f(H_SCHEME, one.name()),
                None => f(H_SCHEME, &id.schemes.to_string()),
            }
            if let Some(c) = &id.client_id {
                f(H_CLIENT, c);
            }
            if let Some(s) = &id.subject {
                f(H_SUBJECT, s);
            }
            f(H_SCOPES, id.scopes.as_space_separated());
            f(H_CREDENTIAL, &id.credential_id);
        }
        if let Some(t) = self.identity_token {
            f(H_IDENTITY, t);
        }
        let ip = IpText::new(self.peer.ip());
        let mut prev = self
            .headers
            .get_all(&H_XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        if prev.peek().is_none() {
            f(H_XFF, ip.as_str());
        } else {
            let mut xff = String::with_capacity(64);
            for p in prev {
                xff.push_str(p);
                xff.push_str(", ");
            }
            xff.push_str(ip.as_str());
            f(H_XFF, &xff);
        }
        let forwarded = |name: &HeaderName| {
            if !self.trusted_peer {
                return None;
            }
            self.headers.get(name).and_then(|v| v.to_str().ok())
        };
        let proto = forwarded(&H_XF_PROTO).filter(|p| matches!(*p, "http" | "https"));
        f(H_XF_PROTO, proto.unwrap_or("http"));
        if let Some(host) = forwarded(&H_XF_HOST).or(self.host) {
            f(H_XF_HOST, host);
        }
        f(REQUEST_ID, self.request_id);
    }
}

fn build_path_and_query(base: &str, path: &str, query: Option<&str>) -> Option<Uri> {
    let mut s = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(base);
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s.parse().ok()
}

fn remove_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether a path has `.` or `..` segments, raw or percent-encoded. Such paths are refused:
/// upstreams normalise them differently, which is how route-based access rules get bypassed.
fn has_dot_segment(path: &str) -> bool {
    // Fast path (nearly every request): nothing that could spell a dot segment.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    lower.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".");
        decoded == "." || decoded == ".."
    }) || lower.contains("%2f..")
        || path.contains('\\')
}
fn request_host(req: &http::request::Parts) -> Option<std::borrow::Cow<'_, str>> {
    // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
    let raw = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|v| v.to_str().ok()))?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.split(':').next().unwrap_or(raw),
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    })
}

/// The route's challenges, the one of the authorization scheme the caller used (`Bearer`,
/// or `DPoP` for a DPoP proof's failure and any token sent as `DPoP`) carrying RFC 6750 §3's
/// (RFC 9449 §7.1's) `error` and `error_description` when a token was refused.
fn bearer_challenges<'c>(
    base: &'c [String],
    error: &AuthError,
    wire: WireError,
    used_dpop: bool,
) -> std::borrow::Cow<'c, [String]> {
    let AuthError::Token(t) = error else {
        return std::borrow::Cow::Borrowed(base);
    };
    let code = match t {
        TokenError::DpopProof => "invalid_dpop_proof",
        TokenError::DpopNonce => "use_dpop_nonce",
        _ => "invalid_token",
    };
    let dpop = used_dpop || matches!(t, TokenError::DpopProof | TokenError::DpopNonce);
    let target = if dpop { "DPoP " } else { "Bearer " };
    std::borrow::Cow::Owned(
        base.iter()
            .map(|c| {
                if c.starts_with(target) {
                    format!(
                        "{c}, error=\"{code}\", error_description=\"{}\"",
                        wire.description
                    )
                } else {
                    c.clone()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_handshakes_are_http11_gets_without_a_body_asking_for_websocket() {
        let handshake =
            |p: &http::request::Parts| is_websocket_handshake(p, &named_in_connection(&p.headers));
        let parts = |method: &str, version: http::Version, fields: &[(&str, &str)]| {
            let mut b = http::Request::builder()
                .method(method)
                .uri("/ws")
                .version(version);
            for (n, v) in fields {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(handshake(&parts("GET", http::Version::HTTP_11, &ws)));
        let with = |extra: (&'static str, &'static str)| {
            let mut f = ws.to_vec();
            f.push(extra);
            parts("GET", http::Version::HTTP_11, &f)
        };
        assert!(handshake(&with(("content-length", "0"))));
        assert!(!handshake(&with(("content-length", "5"))));
        assert!(!handshake(&with(("transfer-encoding", "chunked"))));
        assert!(!handshake(&parts("POST", http::Version::HTTP_11, &ws)));
        assert!(!handshake(&parts("GET", http::Version::HTTP_10, &ws)));
        assert!(!handshake(&parts(
            "GET",
            http::Version::HTTP_11,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        assert!(!handshake(&parts(
            "GET",
            http::Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
    }

    #[test]
    fn dot_segments_are_detected_raw_and_encoded() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/..",
            "/a\\b",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in ["/a/b", "/a/..b/c", "/a/b.c", "/"] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    fn passed_names(h: &http::HeaderMap, upstream: bool) -> Vec<String> {
        let api_key = HeaderName::from_static("x-api-key");
        let p = Passed {
            drop_api_key: true,
            drop_authorization: false,
            api_key_header: &api_key,
            named_in_connection: named_in_connection(h),
        };
        h.keys()
            .filter(|n| p.passes(n, upstream))
            .map(|n| n.as_str().to_owned())
            .collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_stay_behind() {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret-Hop, close"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-portcullis-client", "spoof"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "mine"),
            ("x-api-key", "pk_test_x"),
            ("authorization", "Bearer t"),
            ("host", "h"),
            ("content-length", "3"),
            ("expect", "100-continue"),
            ("content-type", "text/plain"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        assert_eq!(passed_names(&h, true), ["authorization", "content-type"]);
        assert_eq!(
            passed_names(&h, false),
            [
                "authorization",
                "host",
                "content-length",
                "expect",
                "content-type"
            ]
        );
    }

    #[test]
    fn our_fields_extend_a_previous_forwarded_for() {
        let mut h = http::HeaderMap::new();
        h.append(H_XFF, HeaderValue::from_static("203.0.113.7"));
        h.append(H_XFF, HeaderValue::from_static("198.51.100.1"));
        let ours = Ours {
            identity_token: None,
            authn: None,
            headers: &h,
            peer: "[::1]:9".parse().unwrap(),
            trusted_peer: false,
            host: Some("api.example.test"),
            request_id: "abc-1",
        };
        let mut got = Vec::new();
        ours.write(|n, v| got.push(format!("{n}: {v}")));
        assert_eq!(
            got,
            [
                "x-forwarded-for: 203.0.113.7, 198.51.100.1, ::1",
                "x-forwarded-proto: http",
                "x-forwarded-host: api.example.test",
                "x-request-id: abc-1"
            ]
        );
    }

    #[test]
    fn a_trusted_peers_forwarded_proto_and_host_are_passed_on() {
        let mut h = http::HeaderMap::new();
        h.append(H_XF_PROTO, HeaderValue::from_static("https"));
        h.append(H_XF_HOST, HeaderValue::from_static("api.example.com"));
        let ours = |trusted_peer, h: &http::HeaderMap| {
            let o = Ours {
                identity_token: None,
                authn: None,
                headers: h,
                peer: "10.0.0.1:9".parse().unwrap(),
                trusted_peer,
                host: Some("internal"),
                request_id: "abc-1",
            };
            let mut got = Vec::new();
            o.write(|n, v| got.push(format!("{n}: {v}")));
            got[1..3].to_vec()
        };
        assert_eq!(
            ours(true, &h),
            [
                "x-forwarded-proto: https",
                "x-forwarded-host: api.example.com"
            ]
        );
        assert_eq!(
            ours(false, &h),
            ["x-forwarded-proto: http", "x-forwarded-host: internal"]
        );
        h.insert(H_XF_PROTO, HeaderValue::from_static("gopher"));
        assert_eq!(
            ours(true, &h)[0],
            "x-forwarded-proto: http",
            "only http or https"
        );
    }

    #[test]
    fn query_param_removal_keeps_the_rest() {
        assert_eq!(
            remove_param("a=1&api_key=x&b=2", "api_key").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(remove_param("api_key=x", "api_key"), None);
    }

    #[test]
    fn paths_join_base_and_query() {
        assert_eq!(
            build_path_and_query("/v1", "/x", Some("q=1"))
                .unwrap()
                .to_string(),
            "/v1/x?q=1"
        );
        assert_eq!(
            build_path_and_query("", "/", None).unwrap().to_string(),
            "/"
        );
    }
}

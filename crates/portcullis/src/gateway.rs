//! The gateway's request path: bound sizes → match a route → `Gate::admit` → set identity
//! headers → proxy (or the built-in echo). Every decision is the domain's; this file only
//! translates HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use portcullis_core::error::GatewayError;
use portcullis_core::text::IpText;
use portcullis_core::{AuthError, RequestParts, WireError};
use portcullis_domain::authn::Authenticated;
use portcullis_domain::gate::{Gate, RouteGate};
use portcullis_domain::Clock;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::proxy::{strip_hop_by_hop, UpstreamBody, UpstreamPool};
use crate::wire::{error_response, rate_headers};

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
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const H_SCHEME: HeaderName = HeaderName::from_static(identity_headers::SCHEME);
const H_CLIENT: HeaderName = HeaderName::from_static(identity_headers::CLIENT);
const H_SUBJECT: HeaderName = HeaderName::from_static(identity_headers::SUBJECT);
const H_SCOPES: HeaderName = HeaderName::from_static(identity_headers::SCOPES);
const H_CREDENTIAL: HeaderName = HeaderName::from_static(identity_headers::CREDENTIAL);
const H_XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const H_XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const H_XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the gateway answers with: an upstream's body streamed through, or one made here
/// (errors, echo, admin, health). One concrete type for the HTTP server, so that proxied
/// responses skip `Body`'s boxing (an allocation and two virtual calls per frame).
pub enum GatewayBody {
    /// Streamed from an upstream connection.
    Upstream(UpstreamBody),
    /// Made by Portcullis.
    Local(Body),
}

impl hyper::body::Body for GatewayBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Self::Local(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Local(b) => b.size_hint(),
        }
    }
}

/// Where a route sends admitted requests, resolved at load.
pub enum Target {
    /// The built-in echo service.
    Echo,
    /// An HTTP(S) upstream: its connection pool and the base path to prefix.
    Upstream {
        /// The pool of the upstream's origin (shared by the routes that name it).
        pool: Arc<UpstreamPool>,
        /// Path prefixed to the forwarded path (`""` for none).
        base_path: String,
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
        }
    }

    fn matches(&self, host: Option<&str>, path: &str, method: &http::Method) -> bool {
        let path_ok = self.path_prefix.is_empty()
            || path
                .strip_prefix(self.path_prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let method_ok = self.methods.is_empty() || self.methods.contains(method);
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
        path_ok && method_ok && host_ok
    }
}

/// The gateway.
pub struct Gateway {
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// The decision.
    pub gate: Gate,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Size limits.
    pub limits: LimitsConfig,
    /// The API-key header (removed before proxying when consumed).
    pub api_key_header: HeaderName,
}

impl Gateway {
    /// Handles one request from `peer`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
    ) -> Response<GatewayBody> {
        // Made once: the upstream gets a copy (a reference-count increment), the caller this.
        let id_header = HeaderValue::from_str(request_id).ok();
        let mut resp = self
            .handle_inner(req, peer, request_id, id_header.as_ref())
            .await;
        if let Some(v) = id_header {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        resp
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        id_header: Option<&HeaderValue>,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        if header_bytes(req.headers()) > self.limits.max_header_bytes {
            return self.refuse_gateway(GatewayError::HeadersTooLarge, "-");
        }
        if content_length(req.headers()).is_some_and(|n| n > self.limits.max_body_bytes) {
            return self.refuse_gateway(GatewayError::BodyTooLarge, "-");
        }
        let path = req.uri().path();
        if has_dot_segment(path) {
            return self.refuse_gateway(GatewayError::BadRequest, "-");
        }
        let host = request_host(&req);
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.matches(host.as_deref(), path, req.method()))
        else {
            return self.refuse_gateway(GatewayError::NoRoute, "-");
        };
        let now = self.clock.now();
        let parts = RequestParts {
            method: req.method(),
            path,
            query: req.uri().query(),
            headers: req.headers(),
            client_ip: peer.ip(),
        };
        let admitted = match self.gate.admit(&route.gate, &parts, request_id, now).await {
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
                let mut resp = error_response(wire, &route.gate.challenges, refused.rate.as_ref());
                if let AuthError::QuotaExceeded { retry_after_secs } = refused.error {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                }
                route.latency.observe(started.elapsed().as_secs_f64());
                return resp.map(GatewayBody::Local);
            }
        };
        let host_header = host.map(|h| h.into_owned());
        let mut resp = match self
            .forward(
                route,
                req,
                peer,
                admitted.authn.as_ref(),
                host_header,
                id_header,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .requests
                    .with_label_values(&[&*route.gate.name, "-", WireError::from(&e).code])
                    .inc();
                return error_response(WireError::from(&e), &[], None).map(GatewayBody::Local);
            }
        };
        if let Some(d) = &admitted.rate {
            rate_headers(resp.headers_mut(), d);
        }
        route.allowed.inc();
        route.latency.observe(started.elapsed().as_secs_f64());
        resp
    }

    fn refuse_gateway(&self, e: GatewayError, route: &str) -> Response<GatewayBody> {
        let w = WireError::from(&e);
        self.metrics
            .requests
            .with_label_values(&[route, "-", w.code])
            .inc();
        error_response(w, &[], None).map(GatewayBody::Local)
    }

    async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: SocketAddr,
        authn: Option<&Authenticated>,
        host: Option<String>,
        id_header: Option<&HeaderValue>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        // Room for the headers added below, so the map grows (and rehashes) at most once.
        h.reserve(10);
        let ours: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("x-portcullis-"))
            .cloned()
            .collect();
        for k in ours {
            h.remove(k);
        }
        let consumed = authn.map(|a| a.consumed).unwrap_or_default();
        if !route.forward_credentials {
            if consumed.api_key_header {
                h.remove(&self.api_key_header);
            }
            if consumed.authorization {
                h.remove(header::AUTHORIZATION);
            }
        }
        if let Some(a) = authn {
            let id = &a.identity;
            match id.schemes.single() {
                Some(one) => {
                    h.insert(H_SCHEME, HeaderValue::from_static(one.name()));
                }
                None => set(h, H_SCHEME, &id.schemes.to_string()),
            }
            if let Some(c) = &id.client_id {
                set(h, H_CLIENT, c);
            }
            if let Some(s) = &id.subject {
                set(h, H_SUBJECT, s);
            }
            set(h, H_SCOPES, id.scopes.as_space_separated());
            set(h, H_CREDENTIAL, &id.credential_id);
        }
        match h.get(&H_XFF).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                let xff = format!("{prev}, {}", IpText::new(peer.ip()));
                set(h, H_XFF, &xff);
            }
            None => {
                h.insert(H_XFF, ip_header_value(peer.ip()));
            }
        }
        h.insert(H_XF_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = &host {
            set(h, H_XF_HOST, host);
        }
        if let Some(v) = id_header {
            h.insert(REQUEST_ID, v.clone());
        }

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
            (true, Some(param), Some(q)) => remove_param(q, param),
            (_, _, q) => q.map(str::to_owned),
        };
        let limited = http_body_util::Limited::new(
            body,
            usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX),
        );
        match &route.target {
            Target::Echo => {
                let uri = build_path_and_query("", path, query.as_deref())
                    .ok_or(GatewayError::BadRequest)?;
                parts.uri = uri;
                let req = Request::from_parts(parts, Body::new(limited));
                Ok(crate::echo::respond(req).await.map(GatewayBody::Local))
            }
            Target::Upstream { pool, base_path } => {
                parts.uri = build_path_and_query(base_path, path, query.as_deref())
                    .ok_or(GatewayError::BadRequest)?;
                parts.version = http::Version::HTTP_11;
                // The upstream sees its own host (set by the pool); the original is in
                // X-Forwarded-Host.
                let resp = pool.forward(Request::from_parts(parts, limited)).await?;
                Ok(resp.map(GatewayBody::Upstream))
            }
        }
    }
}

fn set(h: &mut http::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The client address as a header value, formatted on the stack.
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(IpText::new(ip).as_str())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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

/// Total size of the request headers as sent (name, value and `: ` + CRLF per line).
fn header_bytes(h: &http::HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
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
fn request_host(req: &Request<Incoming>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn client_addresses_become_header_values() {
        for ip in [
            "127.0.0.1",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
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

//! The admin API under `/admin/v1/` (JSON, admin-token authenticated; see `openapi.json`).

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use portcullis_core::crypto::{hex, sha256};
use portcullis_core::error::GatewayError;
use portcullis_core::secret::ct_eq;
use portcullis_core::{Timestamp, WireError};
use portcullis_domain::admin::{Actor, AdminError, ImportKey, KeyAdmin, KeyUpdate, NewKey};
use portcullis_domain::audit;
use portcullis_domain::oauth::{ClientAdmin, NewClient};
use portcullis_domain::signing::{RingKey, SigningAdmin};
use portcullis_domain::Clock;
use portcullis_store::ClientRecord;
use portcullis_store::{ApiKeyRecord, AuditLog, AuditQuery};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::wire::error_response;

/// What the admin handlers share.
pub struct AdminState {
    /// Key use cases.
    pub keys: KeyAdmin,
    /// The audit store.
    pub audit: Arc<dyn AuditLog>,
    /// SHA-256 of the admin token.
    pub token_hash: [u8; 32],
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The routes in force, as `GET /admin/v1/routes` shows them (replaced on reload).
    pub routes: Arc<arc_swap::ArcSwap<Value>>,
    /// The `[upstreams]` groups in force (replaced on reload), with their live health.
    pub upstreams: crate::server::Upstreams,
    /// Token-signing keys.
    pub signing: SigningAdmin,
    /// OAuth clients.
    pub clients: ClientAdmin,
    /// HMAC signing credentials.
    pub hmac: portcullis_domain::hmac::HmacAdmin,
    /// Webhook endpoints and their delivery logs.
    pub webhooks: portcullis_domain::webhooks::WebhookAdmin,
}

/// Largest admin request body (an import of 100k keys fits).
pub const MAX_ADMIN_BODY: usize = 32 * 1024 * 1024;

const OPENAPI: &str = include_str!("openapi.json");

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/admin/v1/keys", post(create_key).get(list_keys))
        .route("/admin/v1/keys/import", post(import_keys))
        .route(
            "/admin/v1/keys/{id}",
            get(show_key).patch(update_key).delete(revoke_key),
        )
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route(
            "/admin/v1/routes",
            get(|State(st): State<Arc<AdminState>>| async move {
                Json(st.routes.load_full().as_ref().clone())
            }),
        )
        .route(
            "/admin/v1/upstreams",
            get(|State(st): State<Arc<AdminState>>| async move {
                Json(upstreams_view(&st.upstreams.load()))
            }),
        )
        .route(
            "/admin/v1/signing-keys",
            get(|State(st): State<Arc<AdminState>>| async move {
                let now = st.clock.now();
                let keys: Vec<Value> = st
                    .signing
                    .ring()
                    .keys()
                    .iter()
                    .rev()
                    .map(|k| signing_key_view(k, now))
                    .collect();
                Json(json!({ "signing_keys": keys }))
            }),
        )
        .route("/admin/v1/signing-keys/rotate", post(rotate_signing_key))
        .route("/admin/v1/clients", post(create_client).get(list_clients))
        .route(
            "/admin/v1/clients/{id}",
            get(show_client).delete(delete_client),
        )
        .route(
            "/admin/v1/clients/{id}/rotate-secret",
            post(rotate_client_secret),
        )
        .route(
            "/admin/v1/clients/{id}/jwks",
            axum::routing::put(set_client_jwks),
        )
        .route("/admin/v1/hmac", post(create_hmac).get(list_hmac))
        .route("/admin/v1/hmac/{key_id}", get(show_hmac))
        .route("/admin/v1/hmac/{key_id}/rotate", post(rotate_hmac))
        .route("/admin/v1/hmac/{key_id}/revoke", post(revoke_hmac))
        .route(
            "/admin/v1/webhooks",
            post(create_webhook).get(list_webhooks),
        )
        .route(
            "/admin/v1/webhooks/{id}",
            get(show_webhook).delete(delete_webhook),
        )
        .route(
            "/admin/v1/webhooks/{id}/rotate-secret",
            post(rotate_webhook_secret),
        )
        .route("/admin/v1/webhooks/{id}/test", post(test_webhook))
        .route(
            "/admin/v1/webhooks/{id}/deliveries",
            get(list_webhook_deliveries),
        )
        .route("/admin/v1/audit", get(list_audit))
        .route("/admin/v1/audit/verify", get(verify_audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state);
    Router::new()
        .route(
            "/admin/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .merge(protected)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such admin endpoint.",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
}

async fn require_admin(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if ct_eq(&sha256(t.as_bytes()), &st.token_hash) => next.run(req).await,
        _ => error_response(
            WireError::from(&GatewayError::AdminUnauthorized),
            &["Bearer realm=\"portcullis-admin\"".into()],
            None,
        ),
    }
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// Admin errors on the wire. Store details go to the log with an error id, never the client.
fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        AdminError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "No such key."),
        AdminError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        AdminError::AuditUnavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The audit trail cannot record changes right now; nothing was changed.",
        ),
        other => {
            let id = hex(&portcullis_domain::random_bytes::<8>());
            tracing::error!(error_id = %id, error = %other, "admin request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &format!("The store is unavailable (error id {id})."),
            )
        }
    }
}

/// An extractor rejection (bad query, body too large) as our JSON error.
fn rejection(e: impl IntoResponse + std::fmt::Display) -> Response {
    let msg = e.to_string();
    let status = e.into_response().status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload_too_large"
    } else {
        "invalid_request"
    };
    error(status, code, &msg)
}

/// Parses a JSON body, answering 400 with a useful (secret-free) message on failure.
#[allow(clippy::result_large_err)] // the error is the response itself
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        // serde_json messages name fields and positions, never values of `Secret` fields.
        let msg = format!("invalid JSON body: {}", e.to_string().replace('"', "'"));
        error(StatusCode::BAD_REQUEST, "invalid_request", &msg)
    })
}

/// A request body that must be JSON of type `T`.
#[allow(clippy::result_large_err)] // the error is the response itself
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<T, Response> {
    parse_json(&body.map_err(rejection)?)
}

/// A request body that may be empty (then `T::default()`) or JSON of type `T`.
#[allow(clippy::result_large_err)] // the error is the response itself
fn optional_json_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<T, Response> {
    let body = body.map_err(rejection)?;
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse_json(&body)
    }
}

fn rfc3339(t: Option<Timestamp>) -> Value {
    t.and_then(|t| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_millis()) * 1_000_000).ok()
    })
    .and_then(|d| {
        d.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

/// The public view of a key: no hash, no secret.
pub fn key_view(k: &ApiKeyRecord, now: Timestamp) -> Value {
    let status = if k.revoked_at.is_some_and(|t| t <= now) {
        "revoked"
    } else if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id, "name": k.name, "owner": k.owner, "prefix": k.display_prefix, "scopes": k.scopes,
        "metadata": k.metadata, "rate_limits": k.rate_limits, "quota": k.quota, "status": status,
        "created_at": rfc3339(Some(k.created_at)), "expires_at": rfc3339(k.expires_at),
        "revoked_at": rfc3339(k.revoked_at), "rotated_from": k.rotated_from, "rotated_to": k.rotated_to,
        "last_used_at": rfc3339(k.last_used_at), "last_used_ip": k.last_used_ip, "origin": k.origin,
    })
}

/// The routes in force as the admin API shows them (`GET /admin/v1/routes`): each route as
/// configured, and which file (and which content of it) they came from, since when.
pub fn routes_view(
    routes: &[crate::config::RouteConfig],
    file: Option<&std::path::Path>,
    sha256: Option<&str>,
    since: Timestamp,
) -> serde_json::Value {
    use serde_json::json;
    fn policy(p: &portcullis_domain::PolicyExpr) -> serde_json::Value {
        use portcullis_domain::PolicyExpr as P;
        match p {
            P::Public => json!("public"),
            P::Scheme(s) => json!(s.name()),
            P::All(v) => json!({"all": v.iter().map(policy).collect::<Vec<_>>()}),
            P::Any(v) => json!({"any": v.iter().map(policy).collect::<Vec<_>>()}),
        }
    }
    let limit = |l: &Option<portcullis_core::ratelimit::Limit>| {
        l.map(|l| {
            json!({
                "algorithm": l.algorithm.name(),
                "limit": l.limit, "period_ms": l.period_ms, "burst": l.burst,
            })
        })
    };
    let routes: Vec<_> = routes
        .iter()
        .map(|r| {
            let upstream = r.upstream.to_string();
            json!({
                "name": r.name,
                "host": r.host,
                "path_prefix": r.path_prefix,
                "methods": r.methods.iter().map(http::Method::as_str).collect::<Vec<_>>(),
                "upstream": upstream,
                "policy": policy(&r.policy),
                "scopes": r.scopes.iter().collect::<Vec<_>>(),
                "rate_limit": limit(&r.rate_limit),
                "failed_auth_limit": limit(&r.failed_auth_limit),
                "strip_prefix": r.strip_prefix,
                "forward_credentials": r.forward_credentials,
                "api_key_query_param": r.api_key_query_param,
                "websocket": r.websocket,
                "timeout_ms": r.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                "cors": r.cors.as_ref().map(|c| json!({
                    "origins": c.origins,
                    "methods": c.methods.as_ref().map(|m| m.iter().map(http::Method::as_str).collect::<Vec<_>>()),
                    "headers": c.headers.as_ref().map(|h| h.iter().map(http::HeaderName::as_str).collect::<Vec<_>>()),
                    "expose_headers": c.expose_headers.as_ref().map(|h| h.iter().map(http::HeaderName::as_str).collect::<Vec<_>>()),
                    "credentials": c.credentials,
                    "max_age_secs": c.max_age.as_secs(),
                })),
            })
        })
        .collect();
    json!({
        "routes": routes,
        "source": {
            "file": file.map(|f| f.display().to_string()),
            "sha256": sha256,
            "since": rfc3339(Some(since)),
        },
    })
}

/// The `[upstreams]` groups as `GET /admin/v1/upstreams` shows them: each target with
/// whether it is in rotation, its requests in flight, its failed requests in a row and its
/// last health check.
pub fn upstreams_view(groups: &[Arc<crate::balance::UpstreamGroup>]) -> Value {
    let groups: Vec<_> = groups
        .iter()
        .map(|g| {
            let targets: Vec<_> = g
                .members()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "url": m.pool.origin(),
                        "weight": m.weight,
                        "healthy": g.is_up(i),
                        "in_flight": m.in_flight(),
                        "consecutive_failures": m.failures(),
                        "last_check": m.last_check().map(|c| json!({
                            "at": rfc3339(Some(c.at)),
                            "passed": c.passed,
                            "detail": c.detail,
                        })),
                    })
                })
                .collect();
            json!({
                "name": g.name(),
                "balance": g.balance().name(),
                "active_checks": g.has_active_checks(),
                "targets": targets,
            })
        })
        .collect();
    json!({ "upstreams": groups })
}

/// The client address of an admin request (set by the server before routing).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Who an admin request acts as: the admin token, from the request's address.
fn actor(peer: Option<Extension<Peer>>) -> Actor {
    Actor {
        name: "admin-token",
        ip: peer.map(|Extension(Peer(p))| p.ip()),
    }
}

async fn create_key(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: NewKey = match json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.keys.create(actor(peer), req).await {
        Ok((record, key)) => {
            let mut v = key_view(&record, st.clock.now());
            v["key"] = Value::String(key.expose().to_owned());
            (
                StatusCode::CREATED,
                [(axum::http::header::CACHE_CONTROL, "no-store")],
                Json(v),
            )
                .into_response()
        }
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
struct ListParams {
    owner: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_keys(
    State(st): State<Arc<AdminState>>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    match st
        .keys
        .list(
            p.owner.as_deref(),
            p.after.as_deref(),
            p.limit.unwrap_or(100),
        )
        .await
    {
        Ok(keys) => {
            let now = st.clock.now();
            let next = next_after(&keys, p.limit.unwrap_or(100).clamp(1, 1000), |k| &k.id);
            Json(json!({"keys": keys.iter().map(|k| key_view(k, now)).collect::<Vec<_>>(), "next_after": next})).into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn show_key(State(st): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    match st.keys.show(&id).await {
        Ok(k) => Json(key_view(&k, st.clock.now())).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn update_key(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: KeyUpdate = match json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.keys.update(actor(peer), &id, req).await {
        Ok(k) => Json(key_view(&k, st.clock.now())).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn revoke_key(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.keys.revoke(actor(peer), &id).await {
        Ok(k) => Json(key_view(&k, st.clock.now())).into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateReq {
    #[serde(default)]
    grace_seconds: u64,
}

async fn rotate_key(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: RotateReq = match optional_json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.keys.rotate(actor(peer), &id, req.grace_seconds).await {
        Ok((new, key, old)) => {
            let now = st.clock.now();
            let mut v = key_view(&new, now);
            v["key"] = Value::String(key.expose().to_owned());
            v["previous"] = key_view(&old, now);
            (
                StatusCode::CREATED,
                [(axum::http::header::CACHE_CONTROL, "no-store")],
                Json(v),
            )
                .into_response()
        }
        Err(e) => admin_error(e),
    }
}

/// The `next_after` of a page of `limit`: its last id when the page is full, else none.
fn next_after<T>(page: &[T], limit: u32, id: impl Fn(&T) -> &String) -> Option<String> {
    page.last()
        .filter(|_| page.len() as u32 >= limit)
        .map(|t| id(t).clone())
}

/// The public view of an OAuth client: never the secret or its hash.
pub fn client_view(c: &ClientRecord) -> Value {
    json!({
        "client_id": c.id, "name": c.name,
        "client_type": if c.confidential { "confidential" } else { "public" },
        "grant_types": c.grant_types, "scopes": c.scopes, "audiences": c.audiences,
        "redirect_uris": c.redirect_uris, "token_endpoint_auth_method": c.auth_method,
        "token_lifetime_seconds": c.token_lifetime_secs,
        "created_at": rfc3339(Some(c.created_at)), "secret_set_at": rfc3339(c.secret_set_at),
        "jwks": c.jwks.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
    })
}

/// Admin errors of the client endpoints (a missing client is "No such client.").
fn client_error(e: AdminError) -> Response {
    match e {
        AdminError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "No such client."),
        other => admin_error(other),
    }
}

/// A view with the secret shown once: 201, never cached.
fn with_secret(c: &ClientRecord, secret: Option<&portcullis_core::secret::Secret>) -> Response {
    let mut v = client_view(c);
    if let Some(s) = secret {
        v["client_secret"] = Value::String(s.expose().to_owned());
    }
    (
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(v),
    )
        .into_response()
}

async fn create_client(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: NewClient = match json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.clients.create(actor(peer), req).await {
        Ok((c, secret)) => with_secret(&c, secret.as_ref()),
        Err(e) => client_error(e),
    }
}

async fn list_clients(
    State(st): State<Arc<AdminState>>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    match st.clients.list(p.after.as_deref(), limit).await {
        Ok(cs) => {
            let next = next_after(&cs, limit, |c| &c.id);
            Json(json!({"clients": cs.iter().map(client_view).collect::<Vec<_>>(), "next_after": next}))
                .into_response()
        }
        Err(e) => client_error(e),
    }
}

async fn show_client(State(st): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    match st.clients.show(&id).await {
        Ok(c) => Json(client_view(&c)).into_response(),
        Err(e) => client_error(e),
    }
}

async fn delete_client(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.clients.delete(actor(peer), &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_error(e),
    }
}

async fn set_client_jwks(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let jwks: Value = match json_body(body) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    match st.clients.set_jwks(actor(peer), &id, &jwks).await {
        Ok(c) => Json(client_view(&c)).into_response(),
        Err(e) => client_error(e),
    }
}

async fn rotate_client_secret(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.clients.rotate_secret(actor(peer), &id).await {
        Ok((c, secret)) => with_secret(&c, Some(&secret)),
        Err(e) => client_error(e),
    }
}

/// The public view of an HMAC credential: never a secret.
pub fn hmac_view(c: &portcullis_store::HmacCredentialRecord) -> Value {
    json!({
        "key_id": c.key_id, "name": c.name, "scopes": c.scopes,
        "status": if c.revoked_at.is_some() { "revoked" } else { "active" },
        "created_at": rfc3339(Some(c.created_at)), "rotated_at": rfc3339(c.rotated_at),
        "previous_secret_expires_at": rfc3339(c.previous_expires_at.filter(|_| c.previous_secret.is_some())),
        "revoked_at": rfc3339(c.revoked_at),
        "kind": if c.public_key.is_some() { "public_key" } else { "secret" },
        "algorithm": c.public_key_alg, "public_key": c.public_key,
    })
}

fn hmac_error(e: AdminError) -> Response {
    match e {
        AdminError::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such HMAC credential.",
        ),
        other => admin_error(other),
    }
}

fn hmac_with_secret(
    c: &portcullis_store::HmacCredentialRecord,
    secret: Option<&portcullis_core::secret::Secret>,
) -> Response {
    let mut v = hmac_view(c);
    if let Some(secret) = secret {
        v["secret"] = Value::String(secret.expose().to_owned());
    }
    (
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(v),
    )
        .into_response()
}

async fn create_hmac(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: portcullis_domain::hmac::NewHmac = match json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.hmac.create(actor(peer), req).await {
        Ok((c, secret)) => hmac_with_secret(&c, secret.as_ref()),
        Err(e) => hmac_error(e),
    }
}

async fn list_hmac(
    State(st): State<Arc<AdminState>>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    match st.hmac.list(p.after.as_deref(), limit).await {
        Ok(cs) => {
            let next = next_after(&cs, limit, |c| &c.key_id);
            Json(json!({"hmac": cs.iter().map(hmac_view).collect::<Vec<_>>(), "next_after": next}))
                .into_response()
        }
        Err(e) => hmac_error(e),
    }
}

async fn show_hmac(State(st): State<Arc<AdminState>>, Path(key_id): Path<String>) -> Response {
    match st.hmac.show(&key_id).await {
        Ok(c) => Json(hmac_view(&c)).into_response(),
        Err(e) => hmac_error(e),
    }
}

/// `POST /admin/v1/hmac/{key_id}/rotate`, body optional: `{"grace_seconds": N}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateHmac {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

async fn rotate_hmac(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(key_id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: RotateHmac = match &body {
        Ok(b) if b.is_empty() => RotateHmac::default(),
        _ => match json_body(body) {
            Ok(r) => r,
            Err(resp) => return resp,
        },
    };
    let grace = req.grace_seconds.map(std::time::Duration::from_secs);
    match st.hmac.rotate(actor(peer), &key_id, grace).await {
        Ok((c, secret)) => hmac_with_secret(&c, Some(&secret)),
        Err(e) => hmac_error(e),
    }
}

async fn revoke_hmac(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(key_id): Path<String>,
) -> Response {
    match st.hmac.revoke(actor(peer), &key_id).await {
        Ok(c) => Json(hmac_view(&c)).into_response(),
        Err(e) => hmac_error(e),
    }
}

/// The public view of a signing key: its public JWK and its schedule, never the private half.
pub fn signing_key_view(k: &RingKey, now: Timestamp) -> Value {
    let r = &k.record;
    let state = if k.signs_at(now) {
        "signing"
    } else if r.activates_at > now {
        "next"
    } else if k.published_at(now) {
        "retired"
    } else {
        "expired"
    };
    json!({
        "kid": r.kid, "algorithm": r.alg, "state": state,
        "created_at": rfc3339(Some(r.created_at)), "activates_at": rfc3339(Some(r.activates_at)),
        "retires_at": rfc3339(r.retires_at), "expires_at": rfc3339(r.expires_at),
        "public_jwk": k.jwk,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateSigningReq {
    algorithm: Option<String>,
    lead_time: Option<String>,
}

async fn rotate_signing_key(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: RotateSigningReq = match optional_json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let alg = match req
        .algorithm
        .as_deref()
        .map(portcullis_core::jose::Algorithm::from_name)
    {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`algorithm` must be ES256, EdDSA, RS256 or PS256",
            )
        }
    };
    let lead = match req.lead_time.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(m)) => return error(StatusCode::BAD_REQUEST, "invalid_request", &m),
    };
    match st.signing.rotate(actor(peer), alg, lead).await {
        Ok(k) => (
            StatusCode::CREATED,
            Json(signing_key_view(&k, st.clock.now())),
        )
            .into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ImportBody {
    List(Vec<ImportKey>),
    Wrapped { keys: Vec<ImportKey> },
}

async fn import_keys(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return rejection(e),
    };
    let items = match serde_json::from_slice::<ImportBody>(&body) {
        Ok(ImportBody::List(v) | ImportBody::Wrapped { keys: v }) => v,
        Err(_) => {
            // Re-parse strictly to report which item is wrong (without echoing any key text).
            let detail = serde_json::from_slice::<Vec<ImportKey>>(&body)
                .err()
                .map(|e| e.to_string().replace('"', "'"))
                .unwrap_or_default();
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("expected a JSON array of keys or {{\"keys\": [...]}}: {detail}"),
            );
        }
    };
    match st.keys.import(actor(peer), items).await {
        Ok(records) => {
            let now = st.clock.now();
            (StatusCode::CREATED, Json(json!({"imported": records.len(), "keys": records.iter().map(|k| key_view(k, now)).collect::<Vec<_>>()}))).into_response()
        }
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
struct AuditParams {
    kind: Option<String>,
    outcome: Option<String>,
    credential_id: Option<String>,
    since: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
}

async fn list_audit(
    State(st): State<Arc<AdminState>>,
    p: Result<Query<AuditParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    let q = AuditQuery {
        kind: p.kind,
        outcome: p.outcome,
        credential_id: p.credential_id,
        since: p.since.map(Timestamp::from_millis),
        before_seq: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    match st.audit.query(&q).await {
        Ok(events) => {
            let events: Vec<Value> = events
                .iter()
                .map(|e| {
                    let mut v: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("seq".into(), json!(e.seq));
                        o.insert("hash".into(), json!(hex(&e.hash)));
                        o.insert("prev_hash".into(), json!(hex(&e.prev_hash)));
                    }
                    v
                })
                .collect();
            Json(json!({"events": events})).into_response()
        }
        Err(e) => admin_error(AdminError::Store(e)),
    }
}

async fn verify_audit(State(st): State<Arc<AdminState>>) -> Response {
    match audit::verify(st.audit.as_ref()).await {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (status, Json(report)).into_response()
        }
        Err(e) => admin_error(AdminError::Store(e)),
    }
}

/// The public view of a webhook endpoint: never its secret.
pub fn webhook_view(e: &portcullis_store::WebhookEndpointRecord, now: Timestamp) -> Value {
    json!({
        "id": e.id, "url": e.url, "description": e.description, "events": e.events,
        "status": if e.disabled_at.is_some() { "disabled" } else { "active" },
        "created_at": rfc3339(Some(e.created_at)), "rotated_at": rfc3339(e.rotated_at),
        "previous_secret_expires_at": rfc3339(
            e.previous_expires_at.filter(|t| e.previous_secret.is_some() && *t > now)
        ),
        "disabled_at": rfc3339(e.disabled_at), "disabled_reason": e.disabled_reason,
    })
}

/// One entry of a delivery log (its payload included: it holds no secret).
pub fn delivery_view(d: &portcullis_store::WebhookDeliveryRecord) -> Value {
    json!({
        "id": d.id, "endpoint_id": d.endpoint_id, "type": d.event_type,
        "status": d.status.as_str(), "attempts": d.attempts,
        "next_attempt_at": rfc3339(
            (d.status == portcullis_store::DeliveryStatus::Pending).then_some(d.next_attempt_at)
        ),
        "last_attempt_at": rfc3339(d.last_attempt_at), "last_status": d.last_status,
        "last_error": d.last_error, "created_at": rfc3339(Some(d.created_at)),
        "delivered_at": rfc3339(d.delivered_at),
        "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::Null),
    })
}

fn webhook_error(e: AdminError) -> Response {
    match e {
        AdminError::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such webhook endpoint.",
        ),
        other => admin_error(other),
    }
}

/// A view with the secret shown once: 201, never cached.
fn webhook_with_secret(
    e: &portcullis_store::WebhookEndpointRecord,
    secret: &portcullis_core::secret::Secret,
    now: Timestamp,
) -> Response {
    let mut v = webhook_view(e, now);
    v["secret"] = Value::String(secret.expose().to_owned());
    (
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(v),
    )
        .into_response()
}

async fn create_webhook(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let req: portcullis_domain::webhooks::NewWebhook = match json_body(body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.webhooks.create(actor(peer), req).await {
        Ok((e, secret)) => webhook_with_secret(&e, &secret, st.clock.now()),
        Err(e) => webhook_error(e),
    }
}

async fn list_webhooks(
    State(st): State<Arc<AdminState>>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    match st.webhooks.list(p.after.as_deref(), limit).await {
        Ok(es) => {
            let now = st.clock.now();
            let next = next_after(&es, limit, |e| &e.id);
            let views: Vec<Value> = es.iter().map(|e| webhook_view(e, now)).collect();
            Json(json!({"webhooks": views, "next_after": next})).into_response()
        }
        Err(e) => webhook_error(e),
    }
}

async fn show_webhook(State(st): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    match st.webhooks.show(&id).await {
        Ok(e) => Json(webhook_view(&e, st.clock.now())).into_response(),
        Err(e) => webhook_error(e),
    }
}

async fn delete_webhook(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.webhooks.delete(actor(peer), &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => webhook_error(e),
    }
}

async fn rotate_webhook_secret(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.webhooks.rotate_secret(actor(peer), &id).await {
        Ok((e, secret)) => webhook_with_secret(&e, &secret, st.clock.now()),
        Err(e) => webhook_error(e),
    }
}

async fn test_webhook(
    State(st): State<Arc<AdminState>>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    match st.webhooks.test(actor(peer), &id).await {
        Ok(d) => (StatusCode::ACCEPTED, Json(delivery_view(&d))).into_response(),
        Err(e) => webhook_error(e),
    }
}

async fn list_webhook_deliveries(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return rejection(e),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    match st.webhooks.deliveries(&id, p.after.as_deref(), limit).await {
        Ok(ds) => {
            let next = next_after(&ds, limit, |d| &d.id);
            let views: Vec<Value> = ds.iter().map(delivery_view).collect();
            Json(json!({"deliveries": views, "next_after": next})).into_response()
        }
        Err(e) => webhook_error(e),
    }
}

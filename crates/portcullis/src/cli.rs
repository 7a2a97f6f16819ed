//! The admin CLI: a thin client of the admin API (`--server URL`, token from
//! `PORTCULLIS_ADMIN_TOKEN` or `<data-dir>/admin.token`), human output by default, `--json`.

use std::path::{Path, PathBuf};

use axum::body::Body;
use clap::{Args, Subcommand};
use http::{header, Method, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::config::parse_duration;

/// Options every admin command takes.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Data directory holding `admin.token` (when PORTCULLIS_ADMIN_TOKEN is unset).
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_DATA_DIR",
        default_value = "portcullis-data"
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `portcullis keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; the key is printed once (first line of the human output).
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Owner (client id forwarded upstream).
        #[arg(long)]
        owner: Option<String>,
        /// Lifetime, e.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// A named rate limit NAME=LIMIT/PERIOD[,burst=N] (e.g. burst=10/1s); repeatable.
        #[arg(long = "rate-limit")]
        rate_limits: Vec<String>,
        /// Usage quota LIMIT/REFILL (e.g. 10000/30d).
        #[arg(long)]
        quota: Option<String>,
    },
    /// List keys (never the raw keys).
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this key id.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one key.
    Show {
        /// Key id.
        id: String,
    },
    /// Change a key's properties (effective on the next request); what is not given stays.
    Update {
        /// Key id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// All the key's scopes, comma-separated or repeated (replaces them; '' for none).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// New owner.
        #[arg(long, conflicts_with = "no_owner")]
        owner: Option<String>,
        /// Remove the owner.
        #[arg(long)]
        no_owner: bool,
        /// New lifetime from now, e.g. 30d.
        #[arg(long, conflicts_with = "no_expiry")]
        expires_in: Option<String>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
        /// New metadata as a JSON object (replaces it whole).
        #[arg(long)]
        metadata: Option<String>,
        /// A named rate limit NAME=LIMIT/PERIOD[,burst=N]; repeatable; replaces all of them.
        #[arg(long = "rate-limit", conflicts_with = "no_rate_limits")]
        rate_limits: Vec<String>,
        /// Remove the key's own rate limits (the route's apply).
        #[arg(long)]
        no_rate_limits: bool,
        /// New usage quota LIMIT/REFILL (e.g. 10000/30d).
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<String>,
        /// Remove the quota.
        #[arg(long)]
        no_quota: bool,
    },
    /// Rotate: issue a new key; the old one stays valid for the grace period.
    Rotate {
        /// Key id.
        id: String,
        /// Grace period for the old key, e.g. 0, 10m, 7d.
        #[arg(long, default_value = "0s")]
        grace: String,
    },
    /// Revoke a key (effective on the next request).
    Revoke {
        /// Key id.
        id: String,
    },
    /// Import existing keys (raw or SHA-256) from JSON or CSV.
    Import {
        /// File to read (`-` for stdin).
        file: PathBuf,
        /// File format (default: from the extension, else JSON).
        #[arg(long, value_parser = ["json", "csv"])]
        format: Option<String>,
    },
}

/// `portcullis routes …`
#[derive(Debug, Subcommand)]
pub enum RoutesCmd {
    /// The routes in force (after the last reload), in match order.
    List,
}

/// `portcullis upstreams …`
#[derive(Debug, Subcommand)]
pub enum UpstreamsCmd {
    /// The `[upstreams]` groups in force and the health of each target.
    List,
}

/// `portcullis clients …`
#[derive(Debug, Subcommand)]
pub enum ClientsCmd {
    /// Register an OAuth client; a confidential one's secret is printed once.
    Create {
        /// Name (shown on consent pages).
        #[arg(long)]
        name: String,
        /// Grant types, comma-separated (default client_credentials).
        #[arg(long, value_delimiter = ',')]
        grant_types: Vec<String>,
        /// Scopes it may be granted, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Audiences (resources) it may ask tokens for; the first is the default.
        #[arg(long, value_delimiter = ',')]
        audiences: Vec<String>,
        /// Redirect URIs (for the user-facing flows), comma-separated.
        #[arg(long, value_delimiter = ',')]
        redirect_uris: Vec<String>,
        /// client_secret_basic (default), client_secret_post, private_key_jwt (needs
        /// --jwks), or none (public client).
        #[arg(long)]
        auth_method: Option<String>,
        /// Access-token lifetime, e.g. 10m (default: oauth.access_token_lifetime).
        #[arg(long)]
        token_lifetime: Option<String>,
        /// A file with the client's public keys, a JWKS or one JWK (`-`: stdin); implies
        /// --auth-method private_key_jwt.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// Replace the public keys of a private_key_jwt client (assertions signed by a key no
    /// longer listed stop working at once).
    SetJwks {
        /// The client id.
        id: String,
        /// A file with the JWKS or one JWK (`-`: stdin).
        #[arg(long)]
        jwks: PathBuf,
    },
    /// List clients (never their secrets).
    List {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this client id.
        #[arg(long)]
        after: Option<String>,
    },
    /// One client.
    Show {
        /// The client id.
        id: String,
    },
    /// A new secret, printed once; the old one stops working at once.
    RotateSecret {
        /// The client id.
        id: String,
    },
    /// Delete a client: its secret stops working at once.
    Delete {
        /// The client id.
        id: String,
    },
}

/// `portcullis hmac …`
#[derive(Debug, Subcommand)]
pub enum HmacCmd {
    /// Issue a signing credential: a key id and a secret, the secret printed once.
    Create {
        /// Name (the partner).
        #[arg(long)]
        name: String,
        /// Scopes it grants, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Register this PEM public key (file) for RFC 9421 signatures instead of issuing a
        /// secret.
        #[arg(long, requires = "algorithm")]
        public_key: Option<PathBuf>,
        /// The public key's algorithm: ed25519, ecdsa-p256-sha256, rsa-pss-sha512,
        /// rsa-v1_5-sha256.
        #[arg(long, requires = "public_key")]
        algorithm: Option<String>,
        /// Import: keep this key id (e.g. a partner's Kong username or APISIX keyId).
        #[arg(long)]
        key_id: Option<String>,
        /// Import: keep the secret in this file (at least 16 characters; one trailing
        /// newline ignored) instead of issuing one.
        #[arg(long, conflicts_with = "public_key")]
        secret_file: Option<PathBuf>,
    },
    /// List credentials (never their secrets).
    List {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this key id.
        #[arg(long)]
        after: Option<String>,
    },
    /// One credential.
    Show {
        /// The key id.
        key_id: String,
    },
    /// A new secret, printed once; the current one keeps working for the grace period.
    Rotate {
        /// The key id.
        key_id: String,
        /// How long the current secret keeps working, e.g. 1h (default 24h, at most 30d).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Revoke a credential: its signatures are refused from the next request.
    Revoke {
        /// The key id.
        key_id: String,
    },
}

/// Runs `portcullis hmac …`.
pub async fn hmac(conn: &Conn, cmd: HmacCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    let v = match cmd {
        HmacCmd::Create {
            name,
            scopes,
            public_key,
            algorithm,
            key_id,
            secret_file,
        } => {
            let scopes: Vec<String> = scopes.into_iter().filter(|s| !s.is_empty()).collect();
            let mut body = json!({ "name": name, "scopes": scopes });
            if let Some(id) = key_id {
                body["key_id"] = Value::String(id);
            }
            if let Some(path) = secret_file {
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .map_err(|e| CliError(format!("{}: {e}", path.display())))?,
                );
                let secret = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                body["secret"] = Value::String(secret.to_owned());
            }
            if let (Some(path), Some(alg)) = (public_key, algorithm) {
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
                body["public_key"] = Value::String(pem);
                body["algorithm"] = Value::String(alg);
            }
            api.call(Method::POST, "/admin/v1/hmac", Some(body)).await?
        }
        HmacCmd::List { limit, after } => {
            let mut q = format!("/admin/v1/hmac?limit={limit}");
            if let Some(a) = after {
                q.push_str(&format!("&after={}", urlencode(&a)));
            }
            let v = api.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            println!("{:<26} {:<20} {:<8} SCOPES", "KEY ID", "NAME", "STATUS");
            for c in v["hmac"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<20} {:<8} {}",
                    s(&c["key_id"]),
                    s(&c["name"]),
                    s(&c["status"]),
                    join(&c["scopes"])
                );
            }
            return Ok(());
        }
        HmacCmd::Show { key_id } => {
            let path = format!("/admin/v1/hmac/{}", urlencode(&key_id));
            api.call(Method::GET, &path, None).await?
        }
        HmacCmd::Rotate { key_id, grace } => {
            let path = format!("/admin/v1/hmac/{}/rotate", urlencode(&key_id));
            let body = match grace {
                Some(g) => json!({ "grace_seconds": secs(&g)? }),
                None => json!({}),
            };
            api.call(Method::POST, &path, Some(body)).await?
        }
        HmacCmd::Revoke { key_id } => {
            let path = format!("/admin/v1/hmac/{}/revoke", urlencode(&key_id));
            api.call(Method::POST, &path, None).await?
        }
    };
    if conn.json {
        println!("{v}");
        return Ok(());
    }
    if let Some(secret) = v["secret"].as_str() {
        println!("{secret}");
        println!("The secret above is shown only once: store it now.");
    }
    println!("key_id:   {}", s(&v["key_id"]));
    println!("name:     {}", s(&v["name"]));
    println!("status:   {}", s(&v["status"]));
    println!("scopes:   {}", join(&v["scopes"]));
    if let Some(alg) = v["algorithm"].as_str() {
        println!("public key: {alg}");
    }
    if let Some(t) = v["previous_secret_expires_at"].as_str() {
        println!("previous secret accepted until {t}");
    }
    Ok(())
}

/// `portcullis signing-keys …`
#[derive(Debug, Subcommand)]
pub enum SigningKeysCmd {
    /// Every key: the one signing, the next one, the retired ones still published.
    List,
    /// Make the next key: published now, signing after the lead time.
    Rotate {
        /// ES256, EdDSA, RS256 or PS256 (default: `signing_keys.algorithm`).
        #[arg(long)]
        algorithm: Option<String>,
        /// How long it is published before it signs, e.g. 1h, 0s (default:
        /// `signing_keys.lead_time`).
        #[arg(long)]
        lead_time: Option<String>,
    },
}

/// `portcullis audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Recent events, newest first.
    List {
        /// Only this kind (e.g. auth.decision, api_key.created).
        #[arg(long)]
        kind: Option<String>,
        /// Only this outcome (allow, deny, ok, notice).
        #[arg(long)]
        outcome: Option<String>,
        /// Only this credential id.
        #[arg(long)]
        credential: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Verify the hash chain of the stored trail.
    Verify,
}

/// A CLI failure: the message is for the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

pub(crate) struct Api {
    base: String,
    token: String,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Body,
    >,
}

impl Api {
    pub(crate) fn new(conn: &Conn) -> Result<Self, CliError> {
        let token = match std::env::var("PORTCULLIS_ADMIN_TOKEN") {
            Ok(t) => t.trim().to_owned(),
            Err(_) => read_token(&conn.data_dir.join("admin.token"))?,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            base: conn.server.trim_end_matches('/').to_owned(),
            token,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let uri = format!("{}{path}", self.base);
        let mut b = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = b
            .body(body)
            .map_err(|e| CliError(format!("bad server URL {uri}: {e}")))?;
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(60), self.client.request(req))
                .await
                .map_err(|_| CliError(format!("{} did not answer within 60s", self.base)))?
                .map_err(|e| CliError(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError(format!("reading the answer failed: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"error": "unexpected_response", "error_description": String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()}));
        if status.is_success() || status == http::StatusCode::CONFLICT && v.get("checked").is_some()
        {
            Ok(v)
        } else {
            Err(CliError(format!(
                "{} {}: {}",
                status.as_u16(),
                v["error"].as_str().unwrap_or("error"),
                v["error_description"].as_str().unwrap_or("")
            )))
        }
    }
}

fn read_token(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map(|t| t.trim().to_owned()).map_err(|e| {
        CliError(format!("no admin token: set PORTCULLIS_ADMIN_TOKEN or pass --data-dir (cannot read {}: {e})", path.display()))
    })
}

fn secs(d: &str) -> Result<u64, CliError> {
    parse_duration(d).map(|d| d.as_secs()).map_err(CliError)
}

/// Parses `NAME=LIMIT/PERIOD[,burst=N][,algorithm=A]`.
fn parse_rate_limit(s: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError(format!("--rate-limit `{s}`: expected NAME=LIMIT/PERIOD[,burst=N][,algorithm=gcra|token_bucket]"))
    };
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let mut parts = rest.split(',');
    let (limit, period) = parts
        .next()
        .and_then(|p| p.split_once('/'))
        .ok_or_else(bad)?;
    let limit: u32 = limit.parse().map_err(|_| bad())?;
    let period_ms =
        u64::try_from(parse_duration(period).map_err(CliError)?.as_millis()).unwrap_or(u64::MAX);
    let mut v = json!({"name": name, "limit": limit, "period_ms": period_ms});
    for p in parts {
        match p.split_once('=') {
            Some(("burst", n)) => v["burst"] = json!(n.parse::<u32>().map_err(|_| bad())?),
            Some(("algorithm", a)) => v["algorithm"] = json!(a),
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

fn parse_quota(s: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError(format!(
            "--quota `{s}`: expected LIMIT/REFILL, e.g. 10000/30d"
        ))
    };
    let (limit, refill) = s.split_once('/').ok_or_else(bad)?;
    let refill_ms =
        u64::try_from(parse_duration(refill).map_err(CliError)?.as_millis()).unwrap_or(u64::MAX);
    Ok(json!({"limit": limit.parse::<u64>().map_err(|_| bad())?, "refill_ms": refill_ms}))
}

/// Puts the options shared by `create` and `update` that were given into `body`.
fn put_properties(
    body: &mut Value,
    metadata: Option<String>,
    rate_limits: &[String],
    quota: Option<String>,
) -> Result<(), CliError> {
    if let Some(m) = metadata {
        body["metadata"] = serde_json::from_str(&m)
            .map_err(|e| CliError(format!("--metadata is not JSON: {e}")))?;
    }
    if !rate_limits.is_empty() {
        body["rate_limits"] = Value::Array(
            rate_limits
                .iter()
                .map(|s| parse_rate_limit(s))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(q) = quota {
        body["quota"] = parse_quota(&q)?;
    }
    Ok(())
}

/// Runs `portcullis keys …`.
pub async fn keys(conn: &Conn, cmd: KeysCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    match cmd {
        KeysCmd::Create {
            name,
            scopes,
            owner,
            expires_in,
            metadata,
            rate_limits,
            quota,
        } => {
            let mut body = json!({"name": name, "scopes": scopes.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()});
            if let Some(o) = owner {
                body["owner"] = json!(o);
            }
            if let Some(e) = expires_in {
                body["expires_in"] = json!(secs(&e)?);
            }
            put_properties(&mut body, metadata, &rate_limits, quota)?;
            let v = api.call(Method::POST, "/admin/v1/keys", Some(body)).await?;
            print_created(conn, &v, "Created");
        }
        KeysCmd::List {
            owner,
            limit,
            after,
        } => {
            let mut q = format!("/admin/v1/keys?limit={limit}");
            if let Some(o) = owner {
                q.push_str(&format!("&owner={}", urlencode(&o)));
            }
            if let Some(a) = after {
                q.push_str(&format!("&after={}", urlencode(&a)));
            }
            let v = api.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
            } else {
                println!(
                    "{:<28} {:<20} {:<18} {:<8} {:<20} SCOPES",
                    "ID", "NAME", "PREFIX", "STATUS", "LAST USED"
                );
                for k in v["keys"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<20} {:<18} {:<8} {:<20} {}",
                        s(&k["id"]),
                        s(&k["name"]),
                        s(&k["prefix"]),
                        s(&k["status"]),
                        s(&k["last_used_at"]),
                        join(&k["scopes"])
                    );
                }
                if let Some(n) = v["next_after"].as_str() {
                    println!("(more: --after {n})");
                }
            }
        }
        KeysCmd::Show { id } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/admin/v1/keys/{}", urlencode(&id)),
                    None,
                )
                .await?;
            print_key(conn, &v);
        }
        KeysCmd::Update {
            id,
            name,
            scopes,
            owner,
            no_owner,
            expires_in,
            no_expiry,
            metadata,
            rate_limits,
            no_rate_limits,
            quota,
            no_quota,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(sc) = scopes {
                body["scopes"] =
                    json!(sc.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>());
            }
            if let Some(o) = owner {
                body["owner"] = json!(o);
            } else if no_owner {
                body["owner"] = Value::Null;
            }
            if let Some(e) = expires_in {
                body["expires_in"] = json!(secs(&e)?);
            } else if no_expiry {
                body["expires_at"] = Value::Null;
            }
            if no_rate_limits {
                body["rate_limits"] = json!([]);
            }
            if no_quota {
                body["quota"] = Value::Null;
            }
            put_properties(&mut body, metadata, &rate_limits, quota)?;
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                return Err(CliError(
                    "nothing to change: give --name, --scopes, --owner, --no-owner, --expires-in, --no-expiry, --metadata, --rate-limit, --no-rate-limits, --quota or --no-quota".into(),
                ));
            }
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/admin/v1/keys/{}", urlencode(&id)),
                    Some(body),
                )
                .await?;
            print_key(conn, &v);
        }
        KeysCmd::Rotate { id, grace } => {
            let body = json!({"grace_seconds": secs(&grace)?});
            let v = api
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{}/rotate", urlencode(&id)),
                    Some(body),
                )
                .await?;
            print_created(conn, &v, "Rotated");
            if !conn.json {
                println!(
                    "previous key {} valid until {}",
                    s(&v["previous"]["id"]),
                    s(&v["previous"]["expires_at"])
                );
            }
        }
        KeysCmd::Revoke { id } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{}/revoke", urlencode(&id)),
                    None,
                )
                .await?;
            if conn.json {
                println!("{v}");
            } else {
                println!("revoked {} at {}", s(&v["id"]), s(&v["revoked_at"]));
            }
        }
        KeysCmd::Import { file, format } => {
            let text = read_input(&file)?;
            let fmt = format.unwrap_or_else(|| {
                if file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                {
                    "csv".into()
                } else {
                    "json".into()
                }
            });
            let body = if fmt == "csv" {
                csv_to_json(&text)?
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| CliError(format!("{}: not JSON: {e}", file.display())))?
            };
            let v = api
                .call(Method::POST, "/admin/v1/keys/import", Some(body))
                .await?;
            if conn.json {
                println!("{v}");
            } else {
                println!("imported {} keys", v["imported"]);
            }
        }
    }
    Ok(())
}

/// Runs `portcullis routes …`.
pub async fn routes(conn: &Conn, cmd: RoutesCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    match cmd {
        RoutesCmd::List => {
            let v = api.call(Method::GET, "/admin/v1/routes", None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            let src = &v["source"];
            println!(
                "from {} (sha256 {}) since {}",
                src["file"].as_str().unwrap_or("the built-in defaults"),
                src["sha256"]
                    .as_str()
                    .map_or("-", |h| &h[..h.len().min(12)]),
                s(&src["since"])
            );
            println!(
                "{:<16} {:<24} {:<14} {:<24} {:<20} UPSTREAM",
                "NAME", "HOST + PATH", "METHODS", "POLICY", "SCOPES"
            );
            for r in v["routes"].as_array().into_iter().flatten() {
                let methods = join(&r["methods"]);
                println!(
                    "{:<16} {:<24} {:<14} {:<24} {:<20} {}",
                    s(&r["name"]),
                    format!(
                        "{}{}",
                        r["host"].as_str().unwrap_or(""),
                        s(&r["path_prefix"])
                    ),
                    if methods.is_empty() {
                        "any".into()
                    } else {
                        methods
                    },
                    match &r["policy"] {
                        Value::String(p) => p.clone(),
                        other => other.to_string(),
                    },
                    join(&r["scopes"]),
                    s(&r["upstream"])
                );
            }
        }
    }
    Ok(())
}

/// Runs `portcullis upstreams …`.
pub async fn upstreams(conn: &Conn, cmd: UpstreamsCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    match cmd {
        UpstreamsCmd::List => {
            let v = api.call(Method::GET, "/admin/v1/upstreams", None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            println!(
                "{:<16} {:<15} {:<36} {:>6} {:<8} {:>9} LAST CHECK",
                "UPSTREAM", "BALANCE", "TARGET", "WEIGHT", "HEALTH", "IN FLIGHT"
            );
            for g in v["upstreams"].as_array().into_iter().flatten() {
                for t in g["targets"].as_array().into_iter().flatten() {
                    let check = &t["last_check"];
                    println!(
                        "{:<16} {:<15} {:<36} {:>6} {:<8} {:>9} {}",
                        s(&g["name"]),
                        s(&g["balance"]),
                        s(&t["url"]),
                        t["weight"],
                        if t["healthy"] == Value::Bool(true) {
                            "up"
                        } else {
                            "down"
                        },
                        t["in_flight"],
                        if check.is_null() {
                            "-".to_owned()
                        } else {
                            format!("{} {}", s(&check["detail"]), s(&check["at"]))
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs `portcullis clients …`.
pub async fn clients(conn: &Conn, cmd: ClientsCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    let nonempty = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
    let v = match cmd {
        ClientsCmd::Create {
            name,
            grant_types,
            scopes,
            audiences,
            redirect_uris,
            auth_method,
            token_lifetime,
            jwks,
        } => {
            let jwks = jwks.map(|f| json_file(&f)).transpose()?;
            let auth_method = match (auth_method, &jwks) {
                (None, Some(_)) => Some("private_key_jwt".to_owned()),
                (m, _) => m,
            };
            let mut body = json!({
                "name": name,
                "scopes": nonempty(scopes),
                "audiences": nonempty(audiences),
                "redirect_uris": nonempty(redirect_uris),
                "token_endpoint_auth_method": auth_method,
                "jwks": jwks,
            });
            let grant_types = nonempty(grant_types);
            if !grant_types.is_empty() {
                body["grant_types"] = json!(grant_types);
            }
            if let Some(t) = token_lifetime {
                body["token_lifetime_seconds"] = json!(secs(&t)?);
            }
            api.call(Method::POST, "/admin/v1/clients", Some(body))
                .await?
        }
        ClientsCmd::List { limit, after } => {
            let mut q = format!("/admin/v1/clients?limit={limit}");
            if let Some(a) = after {
                q.push_str(&format!("&after={}", urlencode(&a)));
            }
            let v = api.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            println!(
                "{:<26} {:<20} {:<13} {:<20} SCOPES",
                "CLIENT ID", "NAME", "TYPE", "AUTH METHOD"
            );
            for c in v["clients"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<20} {:<13} {:<20} {}",
                    s(&c["client_id"]),
                    s(&c["name"]),
                    s(&c["client_type"]),
                    s(&c["token_endpoint_auth_method"]),
                    join(&c["scopes"])
                );
            }
            return Ok(());
        }
        ClientsCmd::Show { id } => {
            api.call(
                Method::GET,
                &format!("/admin/v1/clients/{}", urlencode(&id)),
                None,
            )
            .await?
        }
        ClientsCmd::SetJwks { id, jwks } => {
            let path = format!("/admin/v1/clients/{}/jwks", urlencode(&id));
            api.call(Method::PUT, &path, Some(json_file(&jwks)?))
                .await?
        }
        ClientsCmd::RotateSecret { id } => {
            let path = format!("/admin/v1/clients/{}/rotate-secret", urlencode(&id));
            api.call(Method::POST, &path, None).await?
        }
        ClientsCmd::Delete { id } => {
            let path = format!("/admin/v1/clients/{}", urlencode(&id));
            api.call(Method::DELETE, &path, None).await?;
            if conn.json {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("Deleted client {id}.");
            }
            return Ok(());
        }
    };
    if conn.json {
        println!("{v}");
        return Ok(());
    }
    if let Some(secret) = v["client_secret"].as_str() {
        println!("{secret}");
        println!("The client secret above is shown only once: store it now.");
    }
    println!("client_id:    {}", s(&v["client_id"]));
    println!("name:         {}", s(&v["name"]));
    println!("type:         {}", s(&v["client_type"]));
    println!("auth method:  {}", s(&v["token_endpoint_auth_method"]));
    println!("grant types:  {}", join(&v["grant_types"]));
    println!("scopes:       {}", join(&v["scopes"]));
    if v["audiences"].as_array().is_some_and(|a| !a.is_empty()) {
        println!("audiences:    {}", join(&v["audiences"]));
    }
    if let Some(keys) = v["jwks"]["keys"].as_array() {
        let kids: Vec<&str> = keys
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or("(no kid)"))
            .collect();
        println!("keys:         {}", kids.join(", "));
    }
    Ok(())
}

/// A file's text, or stdin's for `-`.
fn read_input(file: &Path) -> Result<String, CliError> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError(format!("reading stdin: {e}")))
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError(format!("cannot read {}: {e}", file.display())))
    }
}

/// A JSON document from a file, or from stdin for `-`.
fn json_file(file: &Path) -> Result<Value, CliError> {
    let text = read_input(file)?;
    serde_json::from_str(&text).map_err(|e| CliError(format!("{}: not JSON: {e}", file.display())))
}

/// Runs `portcullis signing-keys …`.
pub async fn signing_keys(conn: &Conn, cmd: SigningKeysCmd) -> Result<(), CliError> {
    let api = Api::new(conn)?;
    let keys = match cmd {
        SigningKeysCmd::List => {
            let v = api
                .call(Method::GET, "/admin/v1/signing-keys", None)
                .await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            v["signing_keys"].as_array().cloned().unwrap_or_default()
        }
        SigningKeysCmd::Rotate {
            algorithm,
            lead_time,
        } => {
            let body = serde_json::json!({ "algorithm": algorithm, "lead_time": lead_time });
            let v = api
                .call(Method::POST, "/admin/v1/signing-keys/rotate", Some(body))
                .await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            vec![v]
        }
    };
    println!(
        "{:<44} {:<6} {:<8} {:<24} {:<24} EXPIRES",
        "KID", "ALG", "STATE", "SIGNS FROM", "RETIRES"
    );
    for k in &keys {
        println!(
            "{:<44} {:<6} {:<8} {:<24} {:<24} {}",
            s(&k["kid"]),
            s(&k["algorithm"]),
            s(&k["state"]),
            s(&k["activates_at"]),
            s(&k["retires_at"]),
            s(&k["expires_at"]),
        );
    }
    Ok(())
}

/// Converts CSV (header row; columns `key` or `hash`, `name`, and optionally `owner`,
/// `scopes` (space-separated), `expires_at` (Unix ms or RFC 3339), `metadata` (JSON)) to the
/// import JSON.
pub fn csv_to_json(text: &str) -> Result<Value, CliError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| CliError(format!("CSV header: {e}")))?
        .clone();
    for h in &headers {
        if ![
            "key",
            "hash",
            "name",
            "owner",
            "scopes",
            "expires_at",
            "metadata",
        ]
        .contains(&h)
        {
            return Err(CliError(format!(
                "CSV: unknown column `{h}` (key, hash, name, owner, scopes, expires_at, metadata)"
            )));
        }
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| CliError(format!("CSV line {line}: {e}")))?;
        let mut item = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            if v.is_empty() {
                continue;
            }
            let val = match h {
                "scopes" => json!(v.split_whitespace().collect::<Vec<_>>()),
                "expires_at" => json!(parse_time(v).ok_or_else(|| CliError(format!(
                    "CSV line {line}: expires_at must be Unix ms or RFC 3339"
                )))?),
                "metadata" => serde_json::from_str(v)
                    .map_err(|_| CliError(format!("CSV line {line}: metadata is not JSON")))?,
                _ => json!(v),
            };
            item.insert(h.to_owned(), val);
        }
        out.push(Value::Object(item));
    }
    Ok(Value::Array(out))
}

fn parse_time(v: &str) -> Option<i64> {
    v.parse::<i64>().ok().or_else(|| {
        let t =
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    })
}

/// Runs `portcullis audit …`.
pub async fn audit(conn: &Conn, cmd: AuditCmd) -> Result<bool, CliError> {
    let api = Api::new(conn)?;
    match cmd {
        AuditCmd::List {
            kind,
            outcome,
            credential,
            limit,
        } => {
            let mut q = format!("/admin/v1/audit?limit={limit}");
            for (k, v) in [
                ("kind", kind),
                ("outcome", outcome),
                ("credential_id", credential),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", urlencode(&v)));
                }
            }
            let v = api.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
            } else {
                for e in v["events"].as_array().into_iter().flatten() {
                    println!(
                        "{:>6} {} {:<18} {:<7} {:<22} {:<24} {}",
                        e["seq"],
                        s(&e["time"]),
                        s(&e["kind"]),
                        s(&e["outcome"]),
                        s(&e["reason"]),
                        s(&e["credential_id"]),
                        s(&e["route"])
                    );
                }
            }
            Ok(true)
        }
        AuditCmd::Verify => {
            let v = api
                .call(Method::GET, "/admin/v1/audit/verify", None)
                .await?;
            let ok = v["ok"].as_bool().unwrap_or(false);
            if conn.json {
                println!("{v}");
            } else if ok {
                println!(
                    "audit trail intact: {} events, head {}",
                    v["checked"],
                    s(&v["head"])
                );
                if let Some(n) = v["pruned_through"].as_i64() {
                    println!("(checked from the retention anchor: events 1 to {n} were removed)");
                }
            } else {
                println!(
                    "audit trail BROKEN after {} good events: {}",
                    v["checked"],
                    s(&v["error"])
                );
            }
            Ok(ok)
        }
    }
}

fn print_created(conn: &Conn, v: &Value, verb: &str) {
    if conn.json {
        println!("{v}");
        return;
    }
    println!("{}", s(&v["key"]));
    println!(
        "{verb} key {} ({}). The key above is shown only once: store it now.",
        s(&v["id"]),
        s(&v["name"])
    );
    println!("  prefix:  {}", s(&v["prefix"]));
    println!("  scopes:  {}", join(&v["scopes"]));
    if let Some(e) = v["expires_at"].as_str() {
        println!("  expires: {e}");
    }
}

fn print_key(conn: &Conn, v: &Value) {
    if conn.json {
        println!("{v}");
        return;
    }
    for f in [
        "id",
        "name",
        "owner",
        "prefix",
        "status",
        "created_at",
        "expires_at",
        "revoked_at",
        "rotated_from",
        "rotated_to",
        "last_used_at",
        "last_used_ip",
        "origin",
    ] {
        println!("{:<13} {}", format!("{f}:"), s(&v[f]));
    }
    println!("{:<13} {}", "scopes:", join(&v["scopes"]));
    println!("{:<13} {}", "metadata:", v["metadata"]);
    println!("{:<13} {}", "rate_limits:", v["rate_limits"]);
    println!("{:<13} {}", "quota:", v["quota"]);
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_import_converts_columns() {
        let v = csv_to_json("key,name,scopes,expires_at\nlegacy-key-0000000001,a,read write,2030-01-01T00:00:00Z\n,b,,\n").unwrap();
        assert_eq!(v[0]["key"], "legacy-key-0000000001");
        assert_eq!(v[0]["scopes"], json!(["read", "write"]));
        assert_eq!(v[0]["expires_at"], json!(1_893_456_000_000i64));
        assert!(v[1].get("key").is_none());
        assert!(csv_to_json("password,name\nx,y\n").is_err());
    }

    #[test]
    fn rate_limit_flags_parse() {
        let v = parse_rate_limit("burst=10/1s,burst=5").unwrap();
        assert_eq!(
            v,
            json!({"name": "burst", "limit": 10, "period_ms": 1000, "burst": 5})
        );
        assert!(parse_rate_limit("nope").is_err());
        assert_eq!(
            parse_quota("100/30d").unwrap()["refill_ms"],
            json!(2_592_000_000u64)
        );
    }
}

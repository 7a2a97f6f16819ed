//! External token issuers on the `jwt` scheme, against a test identity provider on a
//! loopback port that serves OpenID Connect discovery and a JWKS: its tokens open the routes
//! that trust it and no other; its keys are found by discovery, refetched for a new `kid`
//! at most once per interval, and kept while it is down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_core::crypto::sign::SigningKey;
use portcullis_core::jose::{b64_encode, sign_compact, Algorithm, Jwk};
use serde_json::{json, Value};

use crate::support::*;

/// A test identity provider: documents by path (status, body), and how often each path was
/// asked for.
#[derive(Clone, Default)]
struct Idp {
    base: String,
    docs: Arc<Mutex<HashMap<String, (u16, String)>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    /// The `Authorization` of each POST.
    posts: Arc<Mutex<Vec<String>>>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut idp = Idp {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Idp::default()
        };
        let served = idp.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let idp = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let idp = idp.clone();
                            async move {
                                use http_body_util::BodyExt as _;
                                let mut path = req.uri().path().to_owned();
                                if req.method() == hyper::Method::POST {
                                    let auth = req
                                        .headers()
                                        .get("authorization")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_owned();
                                    let body = req.into_body().collect().await.unwrap().to_bytes();
                                    idp.posts.lock().unwrap().push(auth);
                                    path = format!("{path} {}", String::from_utf8_lossy(&body));
                                }
                                idp.total.fetch_add(1, Ordering::SeqCst);
                                *idp.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                                let (status, body) = idp
                                    .docs
                                    .lock()
                                    .unwrap()
                                    .get(&path)
                                    .cloned()
                                    .unwrap_or((404, "{}".into()));
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        idp.issuer_root();
        idp
    }

    /// The issuer is `<base>/realm`; its metadata names `<base>/realm/certs`.
    fn issuer_root(&mut self) {
        let iss = self.issuer();
        self.put(
            "/realm/.well-known/openid-configuration",
            200,
            json!({"issuer": iss, "jwks_uri": format!("{iss}/certs")}),
        );
    }

    fn issuer(&self) -> String {
        format!("{}/realm", self.base)
    }

    fn put(&self, path: &str, status: u16, doc: Value) {
        self.docs
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, doc.to_string()));
    }

    fn publish(&self, keys: &[(&SigningKey, &str)]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(k, kid)| {
                let mut j =
                    serde_json::to_value(Jwk::from_public(&k.public_key(), k.algorithm()).unwrap())
                        .unwrap();
                j["kid"] = (*kid).into();
                j
            })
            .collect();
        self.put("/realm/certs", 200, json!({ "keys": keys }));
    }

    fn jwks_fetches(&self) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get("/realm/certs")
            .copied()
            .unwrap_or(0)
    }
}

fn now() -> i64 {
    portcullis_domain::Clock::now(&portcullis_domain::SystemClock).as_secs()
}

/// A token of the test issuer, signed by `key` under `kid`, with `extra` claims over the
/// usual ones (a `null` removes one).
fn idp_token(idp: &Idp, key: &SigningKey, kid: &str, extra: Value) -> String {
    let mut c = json!({"iss": idp.issuer(), "sub": "alice", "azp": "mobile-app",
        "aud": "orders-api", "exp": now() + 300, "iat": now(), "scope": "openid read:orders"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    sign_compact(key, kid, None, c.to_string().as_bytes()).unwrap()
}

/// A route for Portcullis's own tokens only (the default `jwt_issuers`).
const OWN_ONLY: &str = r#"
[[routes]]
name = "own-only"
path_prefix = "/own"
upstream = "builtin:echo"
policy = "jwt"
"#;

fn config(idp: &Idp, min_refetch: &str, extra: &str) -> String {
    format!(
        r#"
[[issuers]]
name = "idp"
issuer = "{iss}"
algorithms = ["RS256", "ES256"]
audiences = ["orders-api"]
min_refetch_interval = "{min_refetch}"
{extra}

[[routes]]
name = "trusting"
path_prefix = "/trusting"
upstream = "builtin:echo"
policy = "jwt"
jwt_issuers = ["idp", "portcullis"]
scopes = ["read:orders"]
"#,
        iss = idp.issuer()
    ) + OWN_ONLY
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_tokens_open_only_the_routes_that_trust_it() {
    let idp = Idp::start().await;
    let k1 = SigningKey::generate(Algorithm::Rs256).unwrap();
    idp.publish(&[(&k1, "k1")]);
    // A second issuer that never answers: its tokens are a 503, not a 401.
    let down = r#"
[[issuers]]
name = "down"
issuer = "http://127.0.0.1:9/never"
jwks_uri = "http://127.0.0.1:9/never/certs"
algorithms = ["ES256"]
audiences = ["orders-api"]

[[routes]]
name = "via-down"
path_prefix = "/via-down"
upstream = "builtin:echo"
policy = "jwt"
jwt_issuers = ["down"]
"#;
    let cfg = config(&idp, "1h", "refresh_interval = \"2h\"") + down;
    let (code, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    let s = Server::start(Some(&cfg));
    // Discovery, then the JWKS, before the first request.
    assert_eq!(idp.jwks_fetches(), 1);

    let t = idp_token(&idp, &k1, "k1", json!({}));
    let r = bearer(&s, "/trusting/orders", &t).await;
    assert_eq!(r.status(), 200);
    let h = json_of(r).await["headers"].clone();
    assert_eq!(h["x-portcullis-scheme"], "jwt");
    assert_eq!(h["x-portcullis-client"], "mobile-app");
    assert_eq!(h["x-portcullis-subject"], "alice");
    assert_eq!(h["x-portcullis-scopes"], "openid read:orders");
    assert!(h.get("authorization").is_none());
    // The route that does not name it refuses it.
    let r = bearer(&s, "/own/orders", &t).await;
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "invalid_token");

    // Refused on the trusting route too: another audience, expired, without the route's
    // scope, signed by another key under the issuer's kid, alg none, HS256 keyed with the
    // published key, a key carried in the header (jwk) or pointed at (jku).
    let stranger = SigningKey::generate(Algorithm::Rs256).unwrap();
    let body = b64_encode(
        json!({"iss": idp.issuer(), "aud": "orders-api", "exp": now() + 60, "scope": "read:orders"})
            .to_string()
            .as_bytes(),
    );
    let none = format!("{}.{}.", b64_encode(br#"{"alg":"none","kid":"k1"}"#), body);
    let hs256 = {
        let input = format!("{}.{}", b64_encode(br#"{"alg":"HS256","kid":"k1"}"#), body);
        let published = idp.docs.lock().unwrap()["/realm/certs"].1.clone();
        let mac =
            portcullis_core::crypto::sign::hmac_sha256(published.as_bytes(), input.as_bytes());
        format!("{input}.{}", b64_encode(&mac))
    };
    let embedded = {
        let jwk = Jwk::from_public(&stranger.public_key(), Algorithm::Rs256).unwrap();
        let header =
            json!({"alg": "RS256", "kid": "k1", "jwk": jwk, "jku": format!("{}/evil", idp.base)});
        let input = format!("{}.{}", b64_encode(header.to_string().as_bytes()), body);
        let sig = stranger.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64_encode(&sig))
    };
    for (bad, code) in [
        (
            idp_token(&idp, &k1, "k1", json!({"aud": "billing-api"})),
            "invalid_token",
        ),
        (
            idp_token(&idp, &k1, "k1", json!({"exp": now() - 120})),
            "token_expired",
        ),
        (
            idp_token(&idp, &k1, "k1", json!({"scope": "openid"})),
            "insufficient_scope",
        ),
        (idp_token(&idp, &stranger, "k1", json!({})), "invalid_token"),
        (none, "invalid_token"),
        (hs256, "invalid_token"),
        (embedded, "invalid_token"),
    ] {
        let r = bearer(&s, "/trusting/orders", &bad).await;
        assert_eq!(json_of(r).await["error"], code, "{bad}");
    }
    assert_eq!(
        idp.hits.lock().unwrap().get("/evil").copied().unwrap_or(0),
        0,
        "jku is never followed"
    );

    // Made-up kids: refused, and within the refetch interval the issuer is not asked again.
    for i in 0..20 {
        let t = idp_token(&idp, &stranger, &format!("made-up-{i}"), json!({}));
        assert_eq!(bearer(&s, "/trusting/orders", &t).await.status(), 401);
    }
    assert_eq!(idp.jwks_fetches(), 1);

    // Our own tokens still open the trusting route (it names `portcullis`).
    let (id, secret) = register(&s, "read:orders");
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    let own = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bearer(&s, "/trusting/x", &own).await.status(), 200);

    // The issuer that was never reached.
    let dk = SigningKey::generate(Algorithm::Es256).unwrap();
    let claims = json!({"iss": "http://127.0.0.1:9/never", "aud": "orders-api", "exp": now() + 60});
    let dt = sign_compact(&dk, "d1", None, claims.to_string().as_bytes()).unwrap();
    let r = bearer(&s, "/via-down/x", &dt).await;
    assert_eq!(r.status(), 503);
    assert_eq!(json_of(r).await["error"], "temporarily_unavailable");

    let m = metrics_text(&s).await;
    assert!(
        m.contains("portcullis_issuer_key_fetches_total{issuer=\"down\",outcome=\"error\"}"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_issuer_keys{issuer=\"idp\"} 1"),
        "{m}"
    );
    assert!(!s.output().contains(&t), "tokens are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_key_is_fetched_on_its_first_token_and_keys_outlive_the_issuer_going_down() {
    let idp = Idp::start().await;
    let k1 = SigningKey::generate(Algorithm::Rs256).unwrap();
    idp.publish(&[(&k1, "k1")]);
    let s = Server::start(Some(&config(&idp, "1s", "")));
    assert_eq!(
        bearer(&s, "/trusting/a", &idp_token(&idp, &k1, "k1", json!({})))
            .await
            .status(),
        200
    );

    // The issuer rolls in an ES256 key: its first token makes the refetch (once the minimum
    // interval since the last fetch has passed).
    let k2 = SigningKey::generate(Algorithm::Es256).unwrap();
    idp.publish(&[(&k1, "k1"), (&k2, "k2")]);
    s.eventually("the new key is fetched for its token", || async {
        let t = idp_token(&idp, &k2, "k2", json!({"jti": format!("{}", now())}));
        (bearer(&s, "/trusting/b", &t).await.status() == 200).then_some(())
    })
    .await;
    let fetches = idp.jwks_fetches();
    assert!(fetches >= 2, "{fetches}");

    // The issuer goes down (its JWKS answers 503): tokens by the keys held still pass,
    // including ones never seen before.
    idp.put("/realm/certs", 503, json!({}));
    let fresh = idp_token(&idp, &k2, "k2", json!({"sub": "bob"}));
    let r = bearer(&s, "/trusting/c", &fresh).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["headers"]["x-portcullis-subject"], "bob");
}

#[test]
fn issuer_settings_are_checked_at_load() {
    let base = |extra: &str| {
        format!(
            "[[issuers]]\nname = \"idp\"\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\n{extra}\n"
        )
    };
    for (cfg, want) in [
        (base("algorithms = [\"HS256\"]"), "never an HMAC"),
        (base("algorithms = [\"none\"]"), "is not accepted"),
        (
            "[[issuers]]\nname = \"idp\"\nissuer = \"https://idp.example\"\naudiences = []\n".to_owned(),
            "at least one audience",
        ),
        (
            "[[issuers]]\nname = \"idp\"\nissuer = \"http://idp.example\"\naudiences = [\"api\"]\n"
                .to_owned(),
            "https://",
        ),
        (base("jwks_uri = \"http://idp.example/certs\""), "https://"),
        (
            base("") + "[[routes]]\nname = \"r\"\nupstream = \"builtin:echo\"\npolicy = \"jwt\"\njwt_issuers = [\"other\"]\n",
            "no issuer named `other`",
        ),
        (
            "[[issuers]]\nname = \"portcullis\"\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\n"
                .to_owned(),
            "not `portcullis`",
        ),
        (base("refresh_interval = \"1s\""), "30s-24h"),
    ] {
        let (code, err) = check_config(&cfg);
        assert_ne!(code, 0, "{cfg}");
        assert!(err.contains(want), "{cfg}\n{err}");
    }
    let (code, err) = check_config(&base(
        "algorithms = [\"ES256\", \"EdDSA\"]\ntyp = \"at+jwt\"",
    ));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_checked_by_introspection_at_the_issuer() {
    let idp = Idp::start().await;
    let answer = |token: &str, v: Value| {
        idp.put(
            &format!("/introspect token={token}&token_type_hint=access_token"),
            200,
            v,
        );
    };
    answer(
        "opaque-good",
        json!({"active": true, "client_id": "partner", "sub": "carol", "scope": "read:orders",
            "exp": now() + 600, "iss": idp.issuer(), "aud": "orders-api"}),
    );
    answer("opaque-revoked", json!({"active": false}));
    answer(
        "opaque-elsewhere",
        json!({"active": true, "aud": "billing-api", "scope": "read:orders"}),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("as.secret"), "gw-secret\n").unwrap();
    let cfg = format!(
        r#"
[[issuers]]
name = "legacy-as"
issuer = "{iss}"
audiences = ["orders-api"]
introspection_endpoint = "{base}/introspect"
introspection_client_id = "gateway"
introspection_client_secret_file = "as.secret"
introspection_cache_ttl = "1h"

[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "builtin:echo"
policy = {{ any = ["api_key", "jwt"] }}
jwt_issuers = ["legacy-as"]
scopes = ["read:orders"]
"#,
        iss = idp.issuer(),
        base = idp.base
    ) + OWN_ONLY;
    let s = Server::start_in(dir.path(), Some(&cfg));
    assert_eq!(
        idp.total.load(Ordering::SeqCst),
        0,
        "nothing fetched for it at start"
    );

    let r = bearer(&s, "/legacy/a", "opaque-good").await;
    assert_eq!(r.status(), 200);
    let h = json_of(r).await["headers"].clone();
    assert_eq!(h["x-portcullis-scheme"], "jwt");
    assert_eq!(h["x-portcullis-client"], "partner");
    assert_eq!(h["x-portcullis-subject"], "carol");
    // Asked once, as a client with client_secret_basic; then from the cache.
    assert_eq!(bearer(&s, "/legacy/b", "opaque-good").await.status(), 200);
    assert_eq!(
        idp.posts.lock().unwrap().clone(),
        vec![portcullis_core::oauth2::basic_authorization(
            "gateway",
            "gw-secret"
        )]
    );
    for (t, code) in [
        ("opaque-revoked", "invalid_token"),
        ("opaque-elsewhere", "invalid_token"),
    ] {
        let r = bearer(&s, "/legacy/a", t).await;
        assert_eq!(r.status(), 401);
        assert_eq!(json_of(r).await["error"], code);
    }
    // Our API keys still work on the route and are never sent to the issuer.
    let (_, key) = s.create_key("app", "read:orders");
    let asked = idp.posts.lock().unwrap().len();
    assert_eq!(bearer(&s, "/legacy/k", &key).await.status(), 200);
    assert_eq!(idp.posts.lock().unwrap().len(), asked);
    // A route that does not trust the issuer does not ask it.
    assert_eq!(bearer(&s, "/own/x", "opaque-good").await.status(), 401);
    assert_eq!(idp.posts.lock().unwrap().len(), asked);
    // The issuer cannot answer a new token: fail closed, 503.
    let r = bearer(&s, "/legacy/a", "opaque-unknown").await;
    assert_eq!(r.status(), 503);
    assert!(!s.output().contains("gw-secret"));
}

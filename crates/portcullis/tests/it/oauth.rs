//! OAuth clients and the token endpoint (client_credentials), end to end: the CLI registers,
//! curl and reqwest ask for tokens, and the token verifies against our JWKS.

use portcullis_core::crypto::sign::SigningKey;
use portcullis_core::jose::{Algorithm, Jwk, Jws, MAX_TOKEN_LEN};
use portcullis_core::jwt::{self, Expectations};
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn a_registered_client_gets_a_token_that_our_jwks_verifies() {
    let s = Server::start(None);
    let c = s.cli_json(&[
        "clients",
        "create",
        "--name",
        "svc",
        "--grant-types",
        "client_credentials",
        "--scopes",
        "read:echo,write:echo",
    ]);
    let id = c["client_id"].as_str().unwrap().to_owned();
    let secret = c["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pcs_") && secret.len() > 40, "{c}");

    // curl, client_secret_basic: exactly what the quickstart shows.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-u",
            &format!("{id}:{secret}"),
            "-d",
            "grant_type=client_credentials",
            "-d",
            "scope=read:echo",
        ])
        .arg(s.url("/oauth2/token"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(v["scope"], "read:echo");
    let token = v["access_token"].as_str().unwrap().to_owned();

    // The token is an RFC 9068 JWT that the published key verifies.
    let r = client().get(s.url("/oauth2/jwks")).send().await.unwrap();
    let jwks = json_of(r).await;
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
    assert_eq!(jws.header().kid, jwk.kid);
    let issuer = format!("http://{}", s.addr);
    let aud = vec![issuer.clone()];
    let now = portcullis_domain::Clock::now(&portcullis_domain::SystemClock);
    let (claims, _) = jwt::verify(
        &jws,
        &jwk.public_key().unwrap(),
        &Expectations {
            algorithms: &[Algorithm::Es256],
            issuer: &issuer,
            audiences: &aud,
            typ: Some("at+jwt"),
            leeway_secs: 60,
        },
        now,
    )
    .unwrap();
    assert_eq!(claims.client_id.as_deref(), Some(id.as_str()));
    assert_eq!(claims.sub.as_deref(), Some(id.as_str()));
    assert!(claims.jti.is_some());

    // Answers are never cached.
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    assert_eq!(json_of(r).await["scope"], "read:echo write:echo");

    // Refusals, per RFC 6749 §5.2.
    let r = token_form(
        &s,
        Some((&id, "pcs_wrong")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic realm="));
    assert_eq!(json_of(r).await["error"], "invalid_client");
    let r = token_form(
        &s,
        None,
        &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
    )
    .await;
    assert_eq!(r.status(), 401, "registered for basic: post is refused");
    assert!(r.headers().get("www-authenticate").is_none());
    for (body, status, code) in [
        (
            "grant_type=client_credentials&scope=admin",
            400,
            "invalid_scope",
        ),
        (
            "grant_type=password&username=a&password=b",
            400,
            "unsupported_grant_type",
        ),
        ("scope=read:echo", 400, "invalid_request"),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
    ] {
        let r = token_form(&s, Some((&id, &secret)), body).await;
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(json_of(r).await["error"], code, "{body}");
    }
    let r = client()
        .post(s.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "JSON is not the token endpoint's format");
    let r = client().get(s.url("/oauth2/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Each answer is an audited decision; the secret and the token are in no log.
    let events = audit_events_eventually(&s, "kind=oauth.token").await;
    assert!(events
        .iter()
        .any(|e| e["outcome"] == "allow" && e["credential_id"] == id.as_str()));
    assert!(events
        .iter()
        .any(|e| e["outcome"] == "deny" && e["reason"] == "invalid_client"));

    // Rotate the secret: the old one stops at once. Delete: the client is gone.
    let rotated = s.cli_json(&["clients", "rotate-secret", &id]);
    let fresh = rotated["client_secret"].as_str().unwrap().to_owned();
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), 401);
    let r = token_form(&s, Some((&id, &fresh)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), 200);
    let listed = s.cli_json(&["clients", "list"]);
    assert_eq!(listed["clients"][0]["client_id"], id.as_str());
    assert!(
        listed.to_string().find("pcs_").is_none(),
        "no secret in a listing"
    );
    let shown = s.cli_json(&["clients", "show", &id]);
    assert_eq!(
        shown["grant_types"],
        serde_json::json!(["client_credentials"])
    );
    s.cli_json(&["clients", "delete", &id]);
    let r = token_form(&s, Some((&id, &fresh)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), 401);
    let (code, _, err) = s.cli(&["clients", "show", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");

    let dir = s.kill9();
    let logs = std::fs::read_to_string(dir.dir.join("data/audit.jsonl")).unwrap_or_default();
    for secret in [&secret, &fresh, &token] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret or token in the audit file"
        );
    }
}

#[tokio::test]
async fn a_token_from_the_token_endpoint_opens_the_jwt_route_and_nothing_else_does() {
    let s = Server::start(None);
    let (id, secret) = register(&s, "read:echo");
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The token opens /jwt/echo; the upstream sees who, not the token.
    let r = bearer(&s, "/jwt/echo/hi", &token).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    let h = &v["headers"];
    assert_eq!(h["x-portcullis-scheme"], "jwt");
    assert_eq!(h["x-portcullis-client"], id.as_str(), "{h}");
    assert_eq!(h["x-portcullis-scopes"], "read:echo");
    assert!(h["x-portcullis-credential"]
        .as_str()
        .unwrap()
        .starts_with("jwt:"));
    assert!(
        h.get("authorization").is_none(),
        "the token is not forwarded: {h}"
    );
    // Again (from the verified-token cache).
    assert_eq!(bearer(&s, "/jwt/echo/hi", &token).await.status(), 200);

    // Nothing else opens it: no token, an API key, a forged or tampered token.
    let r = client().get(s.url("/jwt/echo/hi")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    assert_eq!(json_of(r).await["error"], "missing_token");
    let (_, key) = s.create_key("k", "read:echo");
    let r = get_key(&s, "/jwt/echo/hi", &key).await;
    assert_eq!(json_of(r).await["error"], "missing_token");
    let r = bearer(&s, "/jwt/echo/hi", &key).await;
    assert_eq!(r.status(), 401, "an API key as a bearer is not a JWT");
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let r = bearer(&s, "/jwt/echo/hi", &tampered).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert_eq!(json_of(r).await["error"], "invalid_token");
    // In the query string: refused.
    let r = client()
        .get(s.url(&format!("/jwt/echo/hi?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "invalid_token");
    // The token does not open the API-key route.
    assert_eq!(bearer(&s, "/echo/hi", &token).await.status(), 401);

    // A token without the route's scope: 403 with the scope in the challenge.
    let (id2, secret2) = register(&s, "write:echo");
    let r = token_form(&s, Some((&id2, &secret2)), "grant_type=client_credentials").await;
    let narrow = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = bearer(&s, "/jwt/echo/hi", &narrow).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"read:echo\""
    );
    assert_eq!(json_of(r).await["error"], "insufficient_scope");

    // The decisions are audited under the token's jti, never the token.
    let decisions = audit_events_eventually(&s, "kind=auth.decision&outcome=allow").await;
    assert!(
        decisions.iter().any(|e| e["scheme"] == "jwt"),
        "{decisions:?}"
    );
    assert!(!s.output().contains(&token));
}

#[tokio::test]
async fn the_metadata_describes_exactly_what_is_served() {
    let s = Server::start(None);
    let r = client()
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    let m = json_of(r).await;
    let iss = format!("http://{}", s.addr);
    assert_eq!(m["issuer"], iss.as_str());
    assert_eq!(m["token_endpoint"], format!("{iss}/oauth2/token").as_str());
    assert_eq!(m["jwks_uri"], format!("{iss}/oauth2/jwks").as_str());
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        m["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA", "RS256", "PS256"])
    );
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA", "RS256", "PS256"])
    );
    // Every URL it names answers.
    let jwks = client()
        .get(m["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let token = client()
        .post(m["token_endpoint"].as_str().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(
        token.status(),
        401,
        "the endpoint is there and wants a client"
    );
}

async fn form_post(s: &Server, path: &str, basic: (&str, &str), body: &str) -> reqwest::Response {
    client()
        .post(s.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth(basic.0, Some(basic.1))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_revoked_token_is_refused_from_the_next_request_and_after_a_restart() {
    // A fixed issuer, so that tokens stay valid across the restart at the end.
    const CONFIG: &str = "[oauth]\nissuer = \"http://portcullis.test\"\n";
    let s = Server::start(Some(CONFIG));
    let (id, secret) = register(&s, "read:echo");
    let (other, other_secret) = register(&s, "read:echo");
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bearer(&s, "/jwt/echo/x", &token).await.status(), 200);

    // Introspection: active, with the claims; garbage is inactive and says nothing more.
    let r = form_post(
        &s,
        "/oauth2/introspect",
        (&other, &other_secret),
        &format!("token={token}"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v = json_of(r).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["client_id"], id.as_str());
    assert_eq!(v["scope"], "read:echo");
    assert_eq!(v["token_type"], "Bearer");
    let v =
        json_of(form_post(&s, "/oauth2/introspect", (&id, &secret), "token=garbage").await).await;
    assert_eq!(v, serde_json::json!({"active": false}));
    let r = form_post(
        &s,
        "/oauth2/introspect",
        (&id, "pcs_wrong"),
        &format!("token={token}"),
    )
    .await;
    assert_eq!(
        r.status(),
        401,
        "introspection needs an authenticated client"
    );

    // Only the client it was issued to may revoke it.
    let r = form_post(
        &s,
        "/oauth2/revoke",
        (&other, &other_secret),
        &format!("token={token}"),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"], "unauthorized_client");
    assert_eq!(bearer(&s, "/jwt/echo/x", &token).await.status(), 200);
    let r = form_post(
        &s,
        "/oauth2/revoke",
        (&id, &secret),
        &format!("token={token}&token_type_hint=access_token"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    // The next request is refused (the verified-token cache does not outvote the revocation).
    let r = bearer(&s, "/jwt/echo/x", &token).await;
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "invalid_token");
    let v = json_of(
        form_post(
            &s,
            "/oauth2/introspect",
            (&id, &secret),
            &format!("token={token}"),
        )
        .await,
    )
    .await;
    assert_eq!(v["active"], false);
    // Revoking something unknown is not an error (RFC 7009 §2.2).
    let r = form_post(&s, "/oauth2/revoke", (&id, &secret), "token=garbage").await;
    assert_eq!(r.status(), 200);
    let events = audit_events_eventually(&s, "kind=oauth.revoke").await;
    assert!(events
        .iter()
        .any(|e| e["credential_id"] == id.as_str() && e["outcome"] == "ok"));

    // Acknowledged means kept: after kill -9 the token is still refused, while one that was
    // not revoked still opens the route.
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    let kept = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = s.kill9().start(Some(CONFIG));
    assert_eq!(bearer(&s, "/jwt/echo/x", &kept).await.status(), 200);
    let r = bearer(&s, "/jwt/echo/x", &token).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_config_file_layers_api_key_and_jwt() {
    const CONFIG: &str = r#"
[[routes]]
name = "both"
path_prefix = "/both"
upstream = "builtin:echo"
policy = { all = ["api_key", "jwt"] }
scopes = ["read:echo"]

[[routes]]
name = "either"
path_prefix = "/either"
upstream = "builtin:echo"
policy = { any = ["jwt", "api_key"] }
"#;
    let (code, err) = check_config(CONFIG);
    assert_eq!(code, 0, "{err}");
    let s = Server::start(Some(CONFIG));
    let c = s.cli_json(&[
        "clients",
        "create",
        "--name",
        "svc",
        "--scopes",
        "read:echo",
    ]);
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let r = token_form(&s, Some((id, secret)), "grant_type=client_credentials").await;
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, key) = s.create_key("app", "read:echo");

    // Both factors: the upstream gets the application (key) and the client (token) together.
    let r = client()
        .get(s.url("/both/x"))
        .header("x-api-key", &key)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = json_of(r).await["headers"].clone();
    let schemes = h["x-portcullis-scheme"].as_str().unwrap().to_owned();
    assert!(
        schemes.contains("api_key") && schemes.contains("jwt"),
        "{h}"
    );
    assert_eq!(h["x-portcullis-credential"], key_id.as_str(), "{h}");
    // One factor alone is not enough.
    assert_eq!(get_key(&s, "/both/x", &key).await.status(), 401);
    assert_eq!(bearer(&s, "/both/x", &token).await.status(), 401);
    // Either one opens the `any` route.
    assert_eq!(get_key(&s, "/either/x", &key).await.status(), 200);
    assert_eq!(bearer(&s, "/either/x", &token).await.status(), 200);
}

/// A client assertion (RFC 7523) for `client` signed by `key`, valid for a minute.
fn assertion(key: &SigningKey, kid: &str, client: &str, aud: &str, jti: &str) -> String {
    let now = portcullis_domain::Clock::now(&portcullis_domain::SystemClock).as_secs();
    let claims = serde_json::json!({
        "iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + 60, "jti": jti,
    });
    portcullis_core::jose::sign_compact(key, kid, None, claims.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn a_private_key_jwt_client_authenticates_with_single_use_assertions() {
    // A fixed issuer, so that an assertion stays addressed to this server across a restart.
    const CONFIG: &str = "[oauth]\nissuer = \"https://auth.example\"\n";
    let s = Server::start(Some(CONFIG));
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let jwk = Jwk::from_public(&key.public_key(), Algorithm::Es256).unwrap();
    let kid = jwk.kid.clone().unwrap();
    let file = s.data_dir().join("client-jwks.json");
    std::fs::write(&file, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let c = s.cli_json(&[
        "clients",
        "create",
        "--name",
        "signer",
        "--scopes",
        "read:echo",
        "--jwks",
        file.to_str().unwrap(),
    ]);
    assert_eq!(c["token_endpoint_auth_method"], "private_key_jwt", "{c}");
    assert!(c.get("client_secret").is_none(), "no secret: {c}");
    assert_eq!(c["jwks"]["keys"][0]["kid"], kid.as_str());
    let id = c["client_id"].as_str().unwrap().to_owned();
    let token_url = "https://auth.example/oauth2/token";
    let body = |a: &str| {
        format!(
            "grant_type=client_credentials&client_assertion_type=\
             urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"
        )
    };
    let a = assertion(&key, &kid, &id, token_url, "first");
    let r = token_form(&s, None, &body(&a)).await;
    assert_eq!(r.status(), 200);
    let t = json_of(r).await;
    let claims = verified(
        &s,
        "https://auth.example",
        t["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(claims.client_id.as_deref(), Some(id.as_str()));

    // The same assertion again is a replay: refused, without a Basic challenge.
    let r = token_form(&s, None, &body(&a)).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(json_of(r).await["error"], "invalid_client");
    // ... and still after a restart: the used jti is stored durably.
    let s = s.kill9().start(Some(CONFIG));
    let r = token_form(&s, None, &body(&a)).await;
    assert_eq!(r.status(), 401, "a replay after kill -9 is still a replay");
    // Another key, same kid: refused; the issuer as audience: accepted.
    let other = SigningKey::generate(Algorithm::Es256).unwrap();
    let forged = assertion(&other, &kid, &id, token_url, "second");
    assert_eq!(token_form(&s, None, &body(&forged)).await.status(), 401);
    let a = assertion(&key, &kid, &id, "https://auth.example", "third");
    assert_eq!(token_form(&s, None, &body(&a)).await.status(), 200);

    // New keys through the CLI: the old key stops working at once.
    let jwk2 = Jwk::from_public(&other.public_key(), Algorithm::Es256).unwrap();
    std::fs::write(&file, serde_json::to_string(&jwk2).unwrap()).unwrap();
    let c = s.cli_json(&["clients", "set-jwks", &id, "--jwks", file.to_str().unwrap()]);
    assert_eq!(c["jwks"]["keys"][0]["kid"], jwk2.kid.as_deref().unwrap());
    let a = assertion(&key, &kid, &id, token_url, "fourth");
    assert_eq!(token_form(&s, None, &body(&a)).await.status(), 401);
    let a = assertion(
        &other,
        jwk2.kid.as_deref().unwrap(),
        &id,
        token_url,
        "fifth",
    );
    assert_eq!(token_form(&s, None, &body(&a)).await.status(), 200);
}

/// The token verified against the server's JWKS (any audience).
async fn verified(s: &Server, iss: &str, token: &str) -> portcullis_core::jwt::Claims<'static> {
    let jwks = json_of(client().get(s.url("/oauth2/jwks")).send().await.unwrap()).await;
    let jws = Jws::parse(token, MAX_TOKEN_LEN).unwrap();
    let jwk: Jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| serde_json::from_value::<Jwk>(k.clone()).unwrap())
        .find(|k| k.kid == jws.header().kid)
        .unwrap();
    let now = portcullis_domain::Clock::now(&portcullis_domain::SystemClock);
    let (claims, _) = jwt::verify(
        &jws,
        &jwk.public_key().unwrap(),
        &Expectations {
            algorithms: &[Algorithm::Es256],
            issuer: iss,
            audiences: &[],
            typ: Some("at+jwt"),
            leeway_secs: 5,
        },
        now,
    )
    .unwrap();
    claims.into_owned()
}

#[tokio::test]
async fn failed_client_authentication_is_rate_limited_per_address() {
    let s = Server::start(Some(
        r#"
[oauth]
failed_auth_limit = { limit = 3, period = "1h" }
"#,
    ));
    let (id, secret) = register(&s, "read:echo");
    for _ in 0..3 {
        let r = token_form(&s, Some((&id, "wrong")), "grant_type=client_credentials").await;
        assert_eq!(r.status(), 401);
    }
    // Blocked now, even with the right secret, at every OAuth endpoint, for this address.
    let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let v = json_of(r).await;
    assert_eq!(v["error"], "rate_limited", "{v}");
    let r = form_post(&s, "/oauth2/introspect", (&id, &secret), "token=x").await;
    assert_eq!(r.status(), 429);
    // Refusals are audited like any other answer of the token endpoint.
    let events = s
        .eventually("the refusal in the audit trail", || async {
            let events = audit_events(&s, "kind=oauth.token").await;
            events
                .iter()
                .any(|e| e["reason"] == "rate_limited")
                .then_some(events)
        })
        .await;
    assert!(events.iter().any(|e| e["reason"] == "invalid_client"));
}

/// A DPoP proof by `key` for `method` `url`, naming `token` when given.
fn dpop(key: &SigningKey, method: &str, url: &str, token: Option<&str>) -> String {
    dpop_with_nonce(key, method, url, token, None)
}

fn dpop_with_nonce(
    key: &SigningKey,
    method: &str,
    url: &str,
    token: Option<&str>,
    nonce: Option<&str>,
) -> String {
    let now = portcullis_domain::Clock::now(&portcullis_domain::SystemClock);
    let jti = portcullis_core::crypto::hex(&portcullis_domain::random_bytes::<12>());
    portcullis_core::dpop::sign_proof(
        key,
        &portcullis_core::dpop::NewProof {
            htm: method,
            htu: url,
            access_token: token,
            nonce,
            jti: &jti,
            iat: now.as_secs(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_dpop_bound_token_works_only_with_fresh_proofs_of_its_key() {
    let s = Server::start(None);
    let (id, secret) = register(&s, "read:echo");
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let token_url = s.url("/oauth2/token");
    let r = client()
        .post(&token_url)
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", dpop(&key, "POST", &token_url, None))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = json_of(r).await;
    assert_eq!(t["token_type"], "DPoP");
    let token = t["access_token"].as_str().unwrap().to_owned();
    let iss = format!("http://{}", s.addr);
    let claims = verified(&s, &iss, &token).await;
    let jkt = Jwk::from_public(&key.public_key(), Algorithm::Es256)
        .unwrap()
        .thumbprint()
        .unwrap();
    assert_eq!(claims.cnf.and_then(|c| c.jkt), Some(jkt));

    let url = s.url("/jwt/echo/orders?page=2");
    let call = |proof: Option<String>, scheme: &str| {
        let mut r = client()
            .get(&url)
            .header("authorization", format!("{scheme} {token}"));
        if let Some(p) = proof {
            r = r.header("dpop", p);
        }
        r.send()
    };
    // With a proof for this request: the upstream sees the client, neither token nor proof.
    let proof = dpop(&key, "GET", &url, Some(&token));
    let r = call(Some(proof.clone()), "DPoP").await.unwrap();
    assert_eq!(r.status(), 200);
    let h = json_of(r).await["headers"].clone();
    assert_eq!(h["x-portcullis-client"], id.as_str());
    assert!(
        h.get("authorization").is_none() && h.get("dpop").is_none(),
        "{h}"
    );

    // The same proof again, none, one for another path, one by another key, the bound
    // token as a bearer: all refused, each with its challenge.
    let other = SigningKey::generate(Algorithm::Es256).unwrap();
    for (proof, scheme, code) in [
        (Some(proof), "DPoP", "invalid_dpop_proof"),
        (None, "DPoP", "invalid_dpop_proof"),
        (
            Some(dpop(&key, "GET", &s.url("/jwt/echo/other"), Some(&token))),
            "DPoP",
            "invalid_dpop_proof",
        ),
        (
            Some(dpop(&key, "POST", &url, Some(&token))),
            "DPoP",
            "invalid_dpop_proof",
        ),
        (
            Some(dpop(&other, "GET", &url, Some(&token))),
            "DPoP",
            "invalid_dpop_proof",
        ),
        (None, "Bearer", "invalid_token"),
    ] {
        let r = call(proof, scheme).await.unwrap();
        assert_eq!(r.status(), 401);
        let challenges: Vec<String> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let carrying = challenges
            .iter()
            .find(|c| c.contains("error="))
            .unwrap_or_else(|| panic!("{challenges:?}"));
        assert!(
            carrying.starts_with(if scheme == "DPoP" {
                "DPoP realm=\"portcullis\", algs=\"ES256 EdDSA RS256 PS256\""
            } else {
                "Bearer "
            }),
            "{challenges:?}"
        );
        assert!(
            carrying.contains(&format!("error=\"{code}\"")),
            "{challenges:?}"
        );
        assert_eq!(json_of(r).await["error"], code);
    }
    // A fresh proof works again; a proof sent twice to the token endpoint is refused.
    let r = call(Some(dpop(&key, "GET", &url, Some(&token))), "DPoP")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let once = dpop(&key, "POST", &token_url, None);
    for want in [200, 400] {
        let r = client()
            .post(&token_url)
            .basic_auth(&id, Some(&secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", once.clone())
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
        if want == 400 {
            assert_eq!(json_of(r).await["error"], "invalid_dpop_proof");
        }
    }
    assert!(!s.output().contains(&token));
}

#[tokio::test]
async fn with_dpop_nonces_configured_a_proof_needs_the_servers_nonce() {
    let s = Server::start(Some("[oauth]\ndpop_nonce = true\n"));
    let (id, secret) = register(&s, "read:echo");
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let token_url = s.url("/oauth2/token");
    let ask = |proof: String| {
        client()
            .post(&token_url)
            .basic_auth(&id, Some(&secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", proof)
            .body("grant_type=client_credentials")
            .send()
    };
    // RFC 9449 §8: refused with the nonce to use, then accepted with it.
    let r = ask(dpop(&key, "POST", &token_url, None)).await.unwrap();
    assert_eq!(r.status(), 400);
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(json_of(r).await["error"], "use_dpop_nonce");
    let r = ask(dpop_with_nonce(
        &key,
        "POST",
        &token_url,
        None,
        Some("made-up"),
    ))
    .await
    .unwrap();
    assert_eq!(json_of(r).await["error"], "use_dpop_nonce");
    let r = ask(dpop_with_nonce(
        &key,
        "POST",
        &token_url,
        None,
        Some(&nonce),
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("dpop-nonce"));
    let t = json_of(r).await;
    assert_eq!(t["token_type"], "DPoP");
    let token = t["access_token"].as_str().unwrap().to_owned();

    // §9: the same at the resource, in a 401 with the DPoP challenge.
    let url = s.url("/jwt/echo/n");
    let call = |proof: String| {
        client()
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
    };
    let r = call(dpop(&key, "GET", &url, Some(&token))).await.unwrap();
    assert_eq!(r.status(), 401);
    let fresh = r.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let challenge = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("DPoP "))
        .unwrap();
    assert!(
        challenge.contains("error=\"use_dpop_nonce\""),
        "{challenge}"
    );
    assert_eq!(json_of(r).await["error"], "use_dpop_nonce");
    let r = call(dpop_with_nonce(
        &key,
        "GET",
        &url,
        Some(&token),
        Some(&fresh),
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_route_can_hand_its_upstream_a_signed_identity() {
    const CONFIG: &str = r#"
[[routes]]
name = "signed"
path_prefix = "/signed"
upstream = "builtin:echo"
policy = { any = ["jwt", "api_key"] }
scopes = ["read:echo"]
identity_token = true

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "builtin:echo"
policy = "api_key"
"#;
    let s = Server::start(Some(CONFIG));
    let (key_id, key) = s.create_key("app", "read:echo");
    let seen = |path: &'static str| {
        let key = key.clone();
        let s = &s;
        async move {
            let r = client()
                .get(s.url(path))
                .header("x-api-key", key)
                .header("x-portcullis-identity", "forged")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            json_of(r).await["headers"].clone()
        }
    };
    let h = seen("/signed/a").await;
    let token = h["x-portcullis-identity"].as_str().unwrap().to_owned();
    assert_ne!(token, "forged");
    // Checked as an upstream would: our JWKS, our issuer, its audience (the route's name),
    // its own typ — never an access token's.
    let iss = format!("http://{}", s.addr);
    let jwks = json_of(client().get(s.url("/oauth2/jwks")).send().await.unwrap()).await;
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
    let aud = vec!["signed".to_owned()];
    let now = portcullis_domain::Clock::now(&portcullis_domain::SystemClock);
    let expect = |typ| Expectations {
        algorithms: &[Algorithm::Es256],
        issuer: &iss,
        audiences: &aud,
        typ: Some(typ),
        leeway_secs: 5,
    };
    let (claims, _) = jwt::verify(
        &jws,
        &jwk.public_key().unwrap(),
        &expect("portcullis-identity+jwt"),
        now,
    )
    .unwrap();
    assert_eq!(claims.scope.as_deref(), Some("read:echo"));
    assert!(jwt::verify(&jws, &jwk.public_key().unwrap(), &expect("at+jwt"), now).is_err());
    let raw: Value = serde_json::from_slice(jws.unverified_payload()).unwrap();
    assert_eq!(raw["credential_id"], key_id.as_str());
    assert_eq!(raw["scheme"], "api_key");
    assert_eq!(raw["route"], "signed");
    // It does not open a jwt route: its typ is not at+jwt.
    assert_eq!(bearer(&s, "/signed/b", &token).await.status(), 401);
    // A route without identity_token passes none on, not even the caller's.
    let h = seen("/plain/a").await;
    assert!(h.get("x-portcullis-identity").is_none(), "{h}");
}

/// The `oauth2` crate's HTTP client, over reqwest.
async fn oauth2_http(req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, std::io::Error> {
    let (parts, body) = req.into_parts();
    let mut r = client()
        .request(parts.method, parts.uri.to_string())
        .body(body);
    for (n, v) in &parts.headers {
        r = r.header(n, v);
    }
    let resp = r.send().await.map_err(std::io::Error::other)?;
    let mut out = http::Response::builder().status(resp.status());
    for (n, v) in resp.headers() {
        out = out.header(n, v);
    }
    let body = resp.bytes().await.map_err(std::io::Error::other)?.to_vec();
    out.body(body).map_err(std::io::Error::other)
}

#[tokio::test]
async fn the_rust_oauth2_crate_gets_tokens_with_either_secret_method() {
    use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
    use oauth2::{
        AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl,
    };
    let s = Server::start(None);
    for method in ["client_secret_basic", "client_secret_post"] {
        let c = s.cli_json(&[
            "clients",
            "create",
            "--name",
            "rs",
            "--scopes",
            "read:echo,write:echo",
            "--auth-method",
            method,
        ]);
        let id = c["client_id"].as_str().unwrap().to_owned();
        let secret = c["client_secret"].as_str().unwrap().to_owned();
        let auth_type = if method == "client_secret_basic" {
            AuthType::BasicAuth
        } else {
            AuthType::RequestBody
        };
        let token_url = TokenUrl::new(s.url("/oauth2/token")).unwrap();
        let client = BasicClient::new(ClientId::new(id.clone()))
            .set_client_secret(ClientSecret::new(secret))
            .set_auth_type(auth_type.clone())
            .set_token_uri(token_url.clone());
        let token = client
            .exchange_client_credentials()
            .add_scope(Scope::new("read:echo".into()))
            .request_async(&oauth2_http)
            .await
            .unwrap();
        assert_eq!(*token.token_type(), BasicTokenType::Bearer);
        assert_eq!(
            token
                .scopes()
                .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            Some(vec!["read:echo".to_owned()])
        );
        assert!(token.expires_in().is_some_and(|d| d.as_secs() <= 900));
        let r = bearer(&s, "/jwt/echo/rs", token.access_token().secret()).await;
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(
            json_of(r).await["headers"]["x-portcullis-client"],
            id.as_str()
        );

        // A wrong secret: the crate reads our RFC 6749 §5.2 answer as invalid_client.
        let wrong = BasicClient::new(ClientId::new(id))
            .set_client_secret(ClientSecret::new("pcs_wrong".into()))
            .set_auth_type(auth_type)
            .set_token_uri(token_url);
        match wrong
            .exchange_client_credentials()
            .request_async(&oauth2_http)
            .await
        {
            Err(RequestTokenError::ServerResponse(e)) => {
                assert_eq!(*e.error(), BasicErrorResponseType::InvalidClient)
            }
            other => panic!("{method}: {other:?}"),
        }
    }
}

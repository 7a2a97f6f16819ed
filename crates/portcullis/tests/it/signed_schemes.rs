//! The `sigv4` and `http_signature` schemes end to end: the default routes with credentials
//! from the CLI, replays refused across a SIGKILL and a restart, route options from a file
//! (scope, replay rule, required components, tag), a registered public key.

use portcullis_core::hmac::http_sig::{self, DigestAlgorithm, SignParams, Signer};
use portcullis_core::hmac::sigv4;
use portcullis_core::Timestamp;
use portcullis_domain::Clock;

use crate::support::*;

fn now() -> Timestamp {
    portcullis_domain::SystemClock.now()
}

fn addr_of(s: &Server) -> String {
    s.url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// The headers that sign `method path?query` with `body` by SigV4 for `region`/`service`.
#[allow(clippy::too_many_arguments)]
fn sigv4_headers(
    s: &Server,
    key_id: &str,
    secret: &str,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    scope: (&str, &str),
) -> reqwest::header::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("host", addr_of(s).parse().unwrap());
    let date = sigv4::amz_date(now()).unwrap();
    let signer = sigv4::Signer {
        access_key_id: key_id,
        secret: secret.as_bytes(),
        region: scope.0,
        service: scope.1,
        amz_date: &date,
        session_token: None,
        content_sha256: true,
        path_rule: sigv4::PathRule::ByService,
    };
    let req = sigv4::Request {
        method,
        path,
        query,
        headers: &h,
        body,
    };
    let mut out = reqwest::header::HeaderMap::new();
    for (k, v) in sigv4::sign_headers(&req, &signer, &[]).unwrap() {
        out.insert(
            reqwest::header::HeaderName::try_from(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    out
}

/// The headers that sign `method path?query` with `body` by RFC 9421 (`@method`,
/// `@target-uri`, `content-digest` with a body, and `extra`), with `nonce` and `tag`.
#[allow(clippy::too_many_arguments)]
fn httpsig_headers(
    s: &Server,
    key_id: &str,
    signer: &Signer<'_>,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    nonce: Option<&str>,
    extra: &[(&'static str, &str)],
    tag: Option<&str>,
) -> reqwest::header::HeaderMap {
    let mut h = http::HeaderMap::new();
    let mut components = vec!["@method", "@target-uri"];
    for (name, value) in extra {
        h.insert(*name, value.parse().unwrap());
        components.push(name);
    }
    if !body.is_empty() {
        h.insert(
            http_sig::CONTENT_DIGEST,
            http_sig::content_digest(body, &[DigestAlgorithm::Sha256])
                .parse()
                .unwrap(),
        );
        components.push("content-digest");
    }
    let authority = addr_of(s);
    let req = http_sig::Request {
        method,
        scheme: "http",
        authority: &authority,
        path,
        query,
        headers: &h,
        body: (!body.is_empty()).then_some(body),
    };
    let params = SignParams {
        created: Some(now()),
        keyid: Some(key_id),
        nonce,
        include_alg: true,
        tag,
        ..SignParams::default()
    };
    let (input, sig) = http_sig::sign(&req, &components, &params, "sig1", signer).unwrap();
    h.insert(http_sig::SIGNATURE_INPUT, input.parse().unwrap());
    h.insert(http_sig::SIGNATURE, sig.parse().unwrap());
    h
}

async fn send(
    s: &Server,
    method: &http::Method,
    headers: reqwest::header::HeaderMap,
    path_and_query: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let r = client()
        .request(method.clone(), s.url(path_and_query))
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, json_of(r).await)
}

fn credential(s: &Server) -> (String, String) {
    let c = s.cli_json(&[
        "hmac",
        "create",
        "--name",
        "partner",
        "--scopes",
        "read:echo",
    ]);
    (
        c["key_id"].as_str().unwrap().to_owned(),
        c["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_default_routes_take_both_schemes_once_even_across_a_restart() {
    let s = Server::start(None);
    let (key_id, secret) = credential(&s);
    let post = http::Method::POST;
    let body = br#"{"amount":100}"#;
    let scope = ("us-east-1", "execute-api");
    let v4 = sigv4_headers(
        &s,
        &key_id,
        &secret,
        &post,
        "/sigv4/echo/orders",
        Some("b=2&a=1"),
        body,
        scope,
    );
    let (st, v) = send(&s, &post, v4.clone(), "/sigv4/echo/orders?b=2&a=1", body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["headers"]["x-portcullis-scheme"], "sigv4");
    assert_eq!(v["headers"]["x-portcullis-client"], key_id.as_str());
    assert_eq!(v["body"]["text"], r#"{"amount":100}"#);
    let hmac = Signer::HmacSha256(secret.as_bytes());
    let rfc = httpsig_headers(
        &s,
        &key_id,
        &hmac,
        &post,
        "/httpsig/echo/orders",
        Some("a=1"),
        body,
        Some("it-nonce-1"),
        &[],
        None,
    );
    let (st, v) = send(&s, &post, rfc.clone(), "/httpsig/echo/orders?a=1", body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["headers"]["x-portcullis-scheme"], "http_signature");
    // The signatures do not open the other schemes' routes.
    let (st, v) = send(&s, &post, v4.clone(), "/httpsig/echo/orders?b=2&a=1", body).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("missing_credentials"))
    );
    let (st, v) = send(&s, &post, rfc.clone(), "/hmac/echo/orders?a=1", body).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("missing_credentials"))
    );

    // Replays, now and after a SIGKILL and a restart (on another port: the `Host` signed is
    // sent as it was).
    let host = addr_of(&s);
    let s = s.kill9().start(None);
    for (mut h, url) in [
        (v4, "/sigv4/echo/orders?b=2&a=1"),
        (rfc, "/httpsig/echo/orders?a=1"),
    ] {
        h.insert(reqwest::header::HOST, host.parse().unwrap());
        let (st, v) = send(&s, &post, h, url, body).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("replayed_request")),
            "{url}"
        );
    }

    // Tampering: the query, the body.
    let h = sigv4_headers(
        &s,
        &key_id,
        &secret,
        &post,
        "/sigv4/echo/orders",
        Some("amount=1"),
        body,
        scope,
    );
    let (st, v) = send(&s, &post, h.clone(), "/sigv4/echo/orders?amount=1000", body).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_signature")));
    let (st, v) = send(&s, &post, h, "/sigv4/echo/orders?amount=1", b"{}").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("body_hash_mismatch")));
    let h = httpsig_headers(
        &s,
        &key_id,
        &hmac,
        &post,
        "/httpsig/echo/orders",
        None,
        body,
        Some("it-nonce-2"),
        &[],
        None,
    );
    let (st, v) = send(&s, &post, h, "/httpsig/echo/orders", b"{}").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("body_hash_mismatch")));

    // Revoked: both refused.
    s.cli_json(&["hmac", "revoke", &key_id]);
    let h = sigv4_headers(
        &s,
        &key_id,
        &secret,
        &post,
        "/sigv4/echo/x",
        None,
        body,
        scope,
    );
    let (_, v) = send(&s, &post, h, "/sigv4/echo/x", body).await;
    assert_eq!(v["error"], "unknown_key");
    let h = httpsig_headers(
        &s,
        &key_id,
        &hmac,
        &post,
        "/httpsig/echo/x",
        None,
        body,
        Some("it-nonce-3"),
        &[],
        None,
    );
    let (_, v) = send(&s, &post, h, "/httpsig/echo/x", body).await;
    assert_eq!(v["error"], "unknown_key");
}

#[tokio::test]
async fn route_options_set_the_scope_the_replay_rule_and_what_must_be_covered() {
    let s = Server::start(Some(
        r#"
[[routes]]
name = "s3ish"
path_prefix = "/v4"
upstream = "builtin:echo"
policy = "sigv4"
sigv4_region = "eu-west-1"
sigv4_service = "orders"
signature_replay = "window"

[[routes]]
name = "strict"
path_prefix = "/rfc"
upstream = "builtin:echo"
policy = "http_signature"
httpsig_components = ["date", "@authority"]
httpsig_tag = "orders-api"
"#,
    ));
    let c = s.cli_json(&["hmac", "create", "--name", "partner"]);
    let (key_id, secret) = (c["key_id"].as_str().unwrap(), c["secret"].as_str().unwrap());
    let get = http::Method::GET;
    // The route's scope only; with the window rule the same request passes twice.
    let h = sigv4_headers(
        &s,
        key_id,
        secret,
        &get,
        "/v4/a",
        None,
        b"",
        ("eu-west-1", "orders"),
    );
    for _ in 0..2 {
        let (st, v) = send(&s, &get, h.clone(), "/v4/a", b"").await;
        assert_eq!(st, 200, "{v}");
    }
    let h = sigv4_headers(
        &s,
        key_id,
        secret,
        &get,
        "/v4/a",
        None,
        b"",
        ("us-east-1", "execute-api"),
    );
    let (st, v) = send(&s, &get, h, "/v4/a", b"").await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_signature")));

    // `date`, `@authority` and the tag are required.
    let hmac = Signer::HmacSha256(secret.as_bytes());
    let date = "Fri, 04 Dec 2026 00:00:00 GMT";
    let no_authority = httpsig_headers(
        &s,
        key_id,
        &hmac,
        &get,
        "/rfc/a",
        None,
        b"",
        Some("it-strict-1"),
        &[("date", date)],
        Some("orders-api"),
    );
    let (st, v) = send(&s, &get, no_authority, "/rfc/a", b"").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid_signature")),
        "without @authority: {v}"
    );
    let h = {
        let mut h = http::HeaderMap::new();
        h.insert("date", date.parse().unwrap());
        let authority = addr_of(&s);
        let req = http_sig::Request {
            method: &get,
            scheme: "http",
            authority: &authority,
            path: "/rfc/a",
            query: None,
            headers: &h,
            body: None,
        };
        let params = SignParams {
            created: Some(now()),
            keyid: Some(key_id),
            nonce: Some("it-strict-2"),
            tag: Some("orders-api"),
            ..SignParams::default()
        };
        let (input, sig) = http_sig::sign(
            &req,
            &["@method", "@target-uri", "@authority", "date"],
            &params,
            "sig1",
            &hmac,
        )
        .unwrap();
        h.insert(http_sig::SIGNATURE_INPUT, input.parse().unwrap());
        h.insert(http_sig::SIGNATURE, sig.parse().unwrap());
        h
    };
    let (st, v) = send(&s, &get, h.clone(), "/rfc/a", b"").await;
    assert_eq!(st, 200, "{v}");
    // The wrong tag.
    let mut wrong = h;
    let input = wrong[http_sig::SIGNATURE_INPUT]
        .to_str()
        .unwrap()
        .replace("orders-api", "other-api");
    wrong.insert(http_sig::SIGNATURE_INPUT, input.parse().unwrap());
    let (st, v) = send(&s, &get, wrong, "/rfc/a", b"").await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_signature")));
}

#[test]
fn bad_route_options_are_refused_at_startup() {
    for (option, expect) in [
        ("sigv4_region = \"US East\"", "sigv4_region"),
        ("sigv4_service = \"\"", "sigv4_service"),
        ("signature_replay = \"never\"", "signature_replay"),
        ("httpsig_components = [\"Date\"]", "httpsig_components"),
        ("httpsig_tag = \"\"", "httpsig_tag"),
    ] {
        let (code, out) = check_config(&format!(
            "[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"builtin:echo\"\npolicy = \"sigv4\"\n{option}\n"
        ));
        assert!(code != 0 && out.contains(expect), "{option}: {out}");
    }
}

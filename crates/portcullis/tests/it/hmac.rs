//! The `hmac` scheme end to end: credentials from the CLI, requests signed with the core's
//! client side, replays refused across a restart, rotation, revocation, signed bodies
//! through the proxy.

use std::convert::Infallible;

use portcullis_core::hmac::native::{self, Layout};
use portcullis_domain::Clock;

use crate::support::*;

fn now_secs() -> i64 {
    portcullis_domain::SystemClock.now().as_secs()
}

/// A signed request: (headers, url) for `method path?query` with `body`.
#[allow(clippy::too_many_arguments)]
fn signed(
    key_id: &str,
    secret: &str,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    ts: i64,
    nonce: &str,
) -> reqwest::header::HeaderMap {
    let req = native::Request {
        method,
        path,
        query,
        body,
    };
    let mut h = reqwest::header::HeaderMap::new();
    for (k, v) in native::sign(
        Layout::Native,
        &req,
        key_id,
        secret.as_bytes(),
        &ts.to_string(),
        Some(nonce),
    )
    .unwrap()
    {
        h.insert(k, v.parse().unwrap());
    }
    h
}

async fn send(
    s: &Server,
    headers: reqwest::header::HeaderMap,
    path_and_query: &str,
    body: &[u8],
) -> reqwest::Response {
    client()
        .post(s.url(path_and_query))
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signed_requests_open_the_default_route_once_even_across_a_restart() {
    let s = Server::start(None);
    let c = s.cli_json(&[
        "hmac",
        "create",
        "--name",
        "partner",
        "--scopes",
        "read:echo",
    ]);
    let (key_id, secret) = (
        c["key_id"].as_str().unwrap().to_owned(),
        c["secret"].as_str().unwrap().to_owned(),
    );
    let post = http::Method::POST;
    let body = br#"{"amount":100}"#;
    let path = "/hmac/echo/orders";
    let h = signed(
        &key_id,
        &secret,
        &post,
        path,
        Some("b=2&a=1"),
        body,
        now_secs(),
        "nonce_it_000000001",
    );
    let r = send(&s, h.clone(), &format!("{path}?b=2&a=1"), body).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["body"]["text"], r#"{"amount":100}"#, "{v}");

    // The same request again, and after a SIGKILL and a restart: a replay.
    let r = send(&s, h.clone(), &format!("{path}?b=2&a=1"), body).await;
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "replayed_request");
    let s = s.kill9().start(None);
    let r = send(&s, h, &format!("{path}?b=2&a=1"), body).await;
    assert_eq!(json_of(r).await["error"], "replayed_request");

    // The query is signed: another amount is another request.
    let h = signed(
        &key_id,
        &secret,
        &post,
        path,
        Some("amount=1"),
        body,
        now_secs(),
        "nonce_it_000000002",
    );
    let r = send(&s, h, &format!("{path}?amount=1000"), body).await;
    assert_eq!(json_of(r).await["error"], "invalid_signature");

    // Out of the window: the answer says the server's time.
    let old = now_secs() - 3600;
    let h = signed(
        &key_id,
        &secret,
        &post,
        path,
        None,
        body,
        old,
        "nonce_it_000000003",
    );
    let r = send(&s, h, path, body).await;
    assert_eq!(r.status(), 401);
    let server_time: i64 = r.headers()["x-server-time"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((server_time - now_secs()).abs() < 60);
    assert_eq!(json_of(r).await["error"], "signature_expired");

    // Unknown key; a body hash that does not match; no signature at all.
    let h = signed(
        "hk_nobody",
        &secret,
        &post,
        path,
        None,
        body,
        now_secs(),
        "nonce_it_000000004",
    );
    assert_eq!(
        json_of(send(&s, h, path, body).await).await["error"],
        "unknown_key"
    );
    let mut h = signed(
        &key_id,
        &secret,
        &post,
        path,
        None,
        body,
        now_secs(),
        "nonce_it_000000005",
    );
    h.insert("x-body-hash", "00".repeat(32).parse().unwrap());
    let r = send(&s, h, path, body).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"], "body_hash_mismatch");
    let r = send(&s, reqwest::header::HeaderMap::new(), path, body).await;
    assert_eq!(r.status(), 401);

    // A body over the route's limit is refused before it is checked.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let h = signed(
        &key_id,
        &secret,
        &post,
        path,
        None,
        &big,
        now_secs(),
        "nonce_it_000000006",
    );
    assert_eq!(send(&s, h, path, &big).await.status(), 413);

    // Rotation: both secrets work during the grace period; revocation stops them.
    let rot = s.cli_json(&["hmac", "rotate", &key_id, "--grace", "1h"]);
    let new = rot["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, secret);
    assert!(rot["previous_secret_expires_at"].is_string(), "{rot}");
    for (n, sec) in [
        ("nonce_it_000000007", &secret),
        ("nonce_it_000000008", &new),
    ] {
        let h = signed(&key_id, sec, &post, path, None, body, now_secs(), n);
        assert_eq!(send(&s, h, path, body).await.status(), 200, "{n}");
    }
    let listed = s.cli_json(&["hmac", "list"]);
    assert!(
        !listed.to_string().contains(&new),
        "a listing never shows a secret"
    );
    s.cli_json(&["hmac", "revoke", &key_id]);
    let h = signed(
        &key_id,
        &new,
        &post,
        path,
        None,
        body,
        now_secs(),
        "nonce_it_000000009",
    );
    assert_eq!(
        json_of(send(&s, h, path, body).await).await["error"],
        "unknown_key"
    );
    let shown = s.cli_json(&["hmac", "show", &key_id]);
    assert_eq!(shown["status"], "revoked");
}

/// An upstream that answers with the length and SHA-256 of the body it received.
async fn body_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let out = serde_json::json!({
                            "len": body.len(),
                            "sha256": portcullis_core::crypto::hex(&portcullis_core::crypto::sha256(&body)),
                        });
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(out.to_string()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_signed_body_read_for_the_check_reaches_the_upstream_whole() {
    let up = body_upstream().await;
    let s = Server::start(Some(&format!(
        r#"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "http://{up}"
policy = "hmac"
signature_window = "60s"
max_signed_body_bytes = 100000
"#
    )));
    let c = s.cli_json(&["hmac", "create", "--name", "partner"]);
    let (key_id, secret) = (c["key_id"].as_str().unwrap(), c["secret"].as_str().unwrap());
    let post = http::Method::POST;
    // Keep-alive: the second request on the same connection must start where the first
    // body ended.
    let client = client();
    for (i, size) in [0usize, 1, 70_000].into_iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
        let h = signed(
            key_id,
            secret,
            &post,
            "/orders/1",
            None,
            &body,
            now_secs(),
            &format!("nonce_proxy_00000{i}"),
        );
        let r = client
            .post(s.url("/orders/1"))
            .headers(h)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "size {size}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["len"], size);
        assert_eq!(
            v["sha256"],
            portcullis_core::crypto::hex(&portcullis_core::crypto::sha256(&body))
        );
    }
    // A chunked body (no Content-Length) is read and checked the same way.
    let body = b"chunked body of a signed request".to_vec();
    let h = signed(
        key_id,
        secret,
        &post,
        "/orders/2",
        None,
        &body,
        now_secs(),
        "nonce_proxy_chunked",
    );
    let mut raw_req = String::from("POST /orders/2 HTTP/1.1\r\nhost: x\r\n");
    for (k, v) in &h {
        raw_req.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    let text = std::str::from_utf8(&body).unwrap();
    raw_req.push_str("transfer-encoding: chunked\r\n\r\n");
    raw_req.push_str(&format!("7\r\n{}\r\n", &text[..7]));
    raw_req.push_str(&format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        text.len() - 7,
        &text[7..]
    ));
    let answer = raw(&s, &raw_req).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"len\":{}", body.len())),
        "{answer}"
    );
    // Over the route's limit: 413.
    let big = vec![b'y'; 100_001];
    let h = signed(
        key_id,
        secret,
        &post,
        "/orders/3",
        None,
        &big,
        now_secs(),
        "nonce_proxy_big_01",
    );
    let r = client
        .post(s.url("/orders/3"))
        .headers(h)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

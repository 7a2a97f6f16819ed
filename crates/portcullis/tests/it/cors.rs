//! CORS on a route: preflights answered by the gateway before authentication, and the
//! gateway's `Access-Control-*` fields on every answer, the upstream's replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An upstream that answers every request `200 up` with CORS fields of its own; counts requests.
async fn upstream_with_its_own_cors() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\nVary: Accept-Encoding\r\n\r\nup";
                        if c.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

const APP: &str = "https://app.example.com";

fn config(up: &str) -> String {
    format!(
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"http://{up}\"\npolicy = \"api_key\"\ncors = {{ origins = [\"{APP}\"], credentials = true }}\n\n[[routes]]\nname = \"echo\"\npath_prefix = \"/echo\"\nupstream = \"builtin:echo\"\npolicy = \"api_key\"\n"
    )
}

fn field(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn preflight(
    s: &Server,
    path: &str,
    origin: &str,
    method: &str,
    fields: &str,
) -> reqwest::Response {
    client()
        .request(reqwest::Method::OPTIONS, s.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header("Access-Control-Request-Headers", fields)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_without_credentials() {
    let (up, seen) = upstream_with_its_own_cors().await;
    let s = Server::start(Some(&config(&up)));
    let r = preflight(&s, "/api/orders", APP, "POST", "x-api-key, content-type").await;
    assert_eq!(r.status(), 204);
    assert_eq!(field(&r, "access-control-allow-origin"), [APP]);
    assert_eq!(field(&r, "access-control-allow-credentials"), ["true"]);
    assert_eq!(
        field(&r, "access-control-allow-methods"),
        ["GET, POST"],
        "the route's methods"
    );
    assert_eq!(
        field(&r, "access-control-allow-headers"),
        ["x-api-key, authorization, content-type"]
    );
    assert_eq!(field(&r, "access-control-max-age"), ["600"]);

    for (origin, method, fields) in [
        ("https://evil.example", "POST", "x-api-key"),
        (APP, "DELETE", ""),
        (APP, "GET", "x-api-key, x-secret"),
    ] {
        let r = preflight(&s, "/api/orders", origin, method, fields).await;
        assert_eq!(r.status(), 403, "{origin} {method} {fields}");
        assert!(field(&r, "access-control-allow-origin").is_empty());
        assert_eq!(json_of(r).await["error"], "cors_not_allowed");
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "no preflight reached the upstream"
    );

    // A route without `cors` answers an OPTIONS like any request: no way around its policy.
    let r = preflight(&s, "/echo/x", APP, "GET", "").await;
    assert_eq!(r.status(), 401);
    assert!(field(&r, "access-control-allow-origin").is_empty());
}

#[tokio::test]
async fn every_answer_carries_the_gateways_cors_fields_for_an_allowed_origin() {
    let (up, seen) = upstream_with_its_own_cors().await;
    let s = Server::start(Some(&config(&up)));
    let (_, key) = s.create_key("browser", "");
    let get = |origin: Option<&'static str>, key: Option<String>| {
        let mut r = client().get(s.url("/api/orders"));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        r.send()
    };
    let r = get(Some(APP), Some(key.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        field(&r, "access-control-allow-origin"),
        [APP],
        "ours, not the upstream's *"
    );
    assert_eq!(field(&r, "access-control-allow-credentials"), ["true"]);
    assert!(field(&r, "access-control-expose-headers")[0].contains("ratelimit-remaining"));
    assert_eq!(field(&r, "vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(r.text().await.unwrap(), "up");
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // A refusal is readable by the page too (its reason, its challenge).
    let r = get(Some(APP), None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(field(&r, "access-control-allow-origin"), [APP]);
    assert!(!field(&r, "www-authenticate").is_empty());

    // Another origin: served (browsers enforce CORS, not servers) but not readable by its page.
    let r = get(Some("https://evil.example"), Some(key.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(field(&r, "access-control-allow-origin").is_empty());
    assert_eq!(field(&r, "vary"), ["Accept-Encoding", "Origin"]);
    // No origin at all (not a browser's cross-origin call): the same.
    let r = get(None, Some(key)).await.unwrap();
    assert!(field(&r, "access-control-allow-origin").is_empty());
}

#[test]
fn cors_settings_are_checked_at_load() {
    let (code, err) = check_config(
        "[[routes]]\nname = \"a\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\ncors = { origins = [\"*\"], credentials = true }\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("portcullis.toml:5") && err.contains("routes[0].cors"),
        "{err}"
    );
    let (code, err) = check_config(
        "[[routes]]\nname = \"a\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\ncors = { origins = [\"app.example.com\"] }\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not an origin"), "{err}");
}

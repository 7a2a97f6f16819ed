//! The reverse proxy against a real upstream: headers, bodies, prefixes, failures.

use std::convert::Infallible;
use std::time::Duration;

use crate::support::*;

/// A tiny upstream on an ephemeral port: `/slow` sleeps 3 s; everything else answers with a
/// JSON description of the request, including its body, with a hop-by-hop header.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        if req.uri().path().ends_with("/slow") {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let headers: serde_json::Map<String, serde_json::Value> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), serde_json::json!(v.to_str().unwrap_or("")))
                            })
                            .collect();
                        let out = serde_json::json!({"uri": parts.uri.to_string(), "headers": headers, "body_len": body.len()});
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .header("connection", "keep-alive, x-hop")
                                .header("x-hop", "should-not-pass")
                                .header("x-upstream", "yes")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    out.to_string(),
                                )))
                                .unwrap(),
                        )
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
async fn proxies_to_a_real_upstream() {
    let up = upstream().await;
    let s = Server::start(Some(&format!(
        r#"
[proxy]
timeout = "1s"

[[routes]]
name = "orders"
host = "api.example.test"
path_prefix = "/orders"
methods = ["GET", "POST"]
upstream = "http://{up}/v1"
policy = "api_key"
scopes = ["orders"]
strip_prefix = true

[[routes]]
name = "public"
path_prefix = "/pub"
upstream = "http://{up}"
policy = "public"

[[routes]]
name = "down"
path_prefix = "/down"
upstream = "http://127.0.0.1:9"
policy = "public"
"#
    )));
    let (id, key) = s.create_key("p", "orders");
    let big = vec![b'z'; 3 * 1024 * 1024];
    let r = client()
        .post(s.url("/orders/42?a=b"))
        .header("Host", "api.example.test:8443")
        .header("X-API-Key", &key)
        .header("X-Forwarded-For", "203.0.113.7")
        .header("Connection", "keep-alive, x-drop-me")
        .header("X-Drop-Me", "1")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(
        r.headers().get("x-hop").is_none(),
        "hop-by-hop headers named in Connection are removed"
    );
    let v = json_of(r).await;
    assert_eq!(
        v["uri"], "/v1/42?a=b",
        "prefix stripped, base path and query kept"
    );
    assert_eq!(v["body_len"], 3 * 1024 * 1024, "the body arrives whole");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "api.example.test");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-portcullis-credential"], id.as_str());
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert!(h.get("x-api-key").is_none(), "{h}");

    // Host and method must match.
    assert_eq!(
        client()
            .get(s.url("/orders/1"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = client()
        .delete(s.url("/orders/1"))
        .header("Host", "api.example.test")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Public routes need nothing and get no identity.
    let r = client()
        .get(s.url("/pub/x"))
        .header("X-Portcullis-Client", "spoof")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert!(v["headers"].get("x-portcullis-client").is_none());

    // Upstream down → 502; slow → 504; JSON bodies.
    let r = client().get(s.url("/down/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(json_of(r).await["error"], "upstream_unavailable");
    let r = client().get(s.url("/pub/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(json_of(r).await["error"], "upstream_timeout");
}

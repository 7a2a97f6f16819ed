//! The reverse proxy against a real upstream: headers, bodies, prefixes, failures.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Listens on an ephemeral loopback port and hands each accepted connection, numbered from 1,
/// to `serve` on a task of its own. Returns the address.
async fn listen<F, Fut>(serve: F) -> String
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(serve(stream, n));
        }
    });
    addr
}

/// A tiny upstream on an ephemeral port: `/slow` sleeps 3 s; everything else answers with a
/// JSON description of the request, including its body, with a hop-by-hop header.
async fn upstream() -> String {
    listen(|stream, _| async move {
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
    })
    .await
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
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
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
    assert_eq!(
        h["x-request-id"],
        request_id.as_str(),
        "the upstream sees the same id"
    );
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
    let down_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(json_of(r).await["error"], "upstream_unavailable");
    let r = client().get(s.url("/pub/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let slow_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(json_of(r).await["error"], "upstream_timeout");
    // The operator finds each failure in the log by the id the caller got.
    let log = s
        .eventually("both failures logged", || async {
            let out = s.output();
            (out.contains(&down_id) && out.contains(&slow_id)).then_some(out)
        })
        .await;
    let line = |id: &str| log.lines().find(|l| l.contains(id)).unwrap().to_owned();
    assert!(line(&down_id).contains("upstream connect failed"), "{log}");
    assert!(line(&slow_id).contains("did not answer in time"), "{log}");
}

/// 64 KiB chunks with no length given (so the upstream sends them chunked).
struct Chunks(usize);

impl hyper::body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        let chunk = bytes::Bytes::from(vec![b'b'; 64 * 1024]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

/// An upstream that numbers its connections and says which one served each request:
/// `/close` answers with `Connection: close`, `/empty` with 204, `/big` with 1 MiB sent in
/// 64 KiB chunks; anything else with a short body. HEAD gets the headers only.
async fn numbered_upstream() -> String {
    listen(|stream, conn_id| async move {
        let svc = hyper::service::service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let b = hyper::Response::builder().header("x-conn", conn_id.to_string());
                let body: http_body_util::combinators::BoxBody<bytes::Bytes, Infallible> =
                    match req.uri().path() {
                        "/big" => Chunks(16).boxed(),
                        _ => http_body_util::Full::new(bytes::Bytes::from_static(b"hello")).boxed(),
                    };
                let resp = match req.uri().path() {
                    "/close" => b.header("connection", "close").body(body),
                    "/empty" => b
                        .status(204)
                        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed()),
                    _ => b.body(body),
                };
                Ok::<_, Infallible>(resp.unwrap())
            },
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    })
    .await
}

/// A gateway whose one public route sends everything to `up`.
fn public_gateway_to(up: &str) -> Server {
    Server::start(Some(&format!(
        "[[routes]]\nname = \"up\"\npath_prefix = \"/\"\nupstream = \"http://{up}\"\npolicy = \"public\"\n"
    )))
}

#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_closed() {
    let up = numbered_upstream().await;
    let s = public_gateway_to(&up);
    let c = client();
    let conn_of = |r: &reqwest::Response| -> String {
        assert!(r.status().is_success(), "{}", r.status());
        r.headers()["x-conn"].to_str().unwrap().to_owned()
    };

    // One request at a time: one upstream connection serves them all.
    let first = c.get(s.url("/a")).send().await.unwrap();
    let first_conn = conn_of(&first);
    assert_eq!(first.text().await.unwrap(), "hello");
    for path in ["/b", "/c", "/d"] {
        let r = c.get(s.url(path)).send().await.unwrap();
        assert_eq!(conn_of(&r), first_conn, "{path} reuses the connection");
        r.bytes().await.unwrap();
    }
    // Bodiless answers (HEAD, 204) leave the connection reusable too.
    let r = c.head(s.url("/a")).send().await.unwrap();
    assert_eq!(conn_of(&r), first_conn);
    let r = c.get(s.url("/empty")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(conn_of(&r), first_conn);
    // A streamed body arrives whole, then its connection serves the next request.
    let r = c.get(s.url("/big")).send().await.unwrap();
    assert_eq!(conn_of(&r), first_conn);
    assert_eq!(r.bytes().await.unwrap().len(), 1024 * 1024);
    let r = c.get(s.url("/a")).send().await.unwrap();
    assert_eq!(conn_of(&r), first_conn);
    r.bytes().await.unwrap();

    // The upstream closes after this answer: the next request gets a new connection, not 502.
    let r = c.get(s.url("/close")).send().await.unwrap();
    assert_eq!(conn_of(&r), first_conn);
    r.bytes().await.unwrap();
    let r = c.get(s.url("/a")).send().await.unwrap();
    let second_conn = conn_of(&r);
    assert_ne!(second_conn, first_conn);
    r.bytes().await.unwrap();

    // A body abandoned halfway (the client went away) closes that upstream connection; the
    // gateway carries on with a fresh one.
    let mut r = client().get(s.url("/big")).send().await.unwrap();
    assert_eq!(conn_of(&r), second_conn);
    let _ = r.chunk().await.unwrap();
    drop(r);
    let r = c.get(s.url("/a")).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.text().await.unwrap(), "hello");
}

/// A keep-alive upstream with a 100 ms idle timeout: it answers requests (GETs without
/// bodies) until a connection has been idle that long, then closes it without saying so, as
/// upstreams do when their idle timeout hits or they restart; with a FIN or, when `reset`, an
/// RST.
async fn idle_closing_upstream(reset: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    listen(move |mut stream, _| async move {
        let mut buf = vec![0u8; 8192];
        let mut got = Vec::new();
        loop {
            // Serve every complete request head received so far.
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                let ok =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            let idle = Duration::from_millis(100);
            match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => break, // idle: close
            }
        }
        if reset {
            #[allow(deprecated)] // set_linger: fine for a test's abortive close
            let _ = stream.set_linger(Some(Duration::ZERO));
        }
        drop(stream);
    })
    .await
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_are_not_used() {
    for reset in [false, true] {
        let up = idle_closing_upstream(reset).await;
        let s = public_gateway_to(&up);
        for _ in 0..3 {
            // Several at once, so several connections are pooled and then closed.
            let mut answers = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let url = s.url("/x");
                answers.spawn(async move {
                    let r = client().get(url).send().await.unwrap();
                    (r.status(), r.text().await.unwrap())
                });
            }
            for (status, text) in answers.join_all().await {
                assert_eq!(status, 200, "reset: {reset}\n{}", s.output());
                assert_eq!(text, "ok");
            }
            // Long enough for the upstream to have closed the pooled connections.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
}

/// POSTs `body` chunked (no Content-Length) on a fresh connection; returns the raw answer.
async fn chunked_post(s: &Server, body: &str) -> String {
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    raw(s, &req).await
}

#[tokio::test]
async fn streamed_bodies_over_the_limit_are_413_on_proxied_routes() {
    let up = upstream().await;
    let s = Server::start(Some(&format!(
        "[limits]\nmax_body_bytes = 1000\n\n[[routes]]\nname = \"up\"\npath_prefix = \"/\"\nupstream = \"http://{up}\"\npolicy = \"public\"\n"
    )));
    // No Content-Length: the limit can only be found while the body streams to the upstream.
    let head = chunked_post(&s, &"a".repeat(3000)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");
    // Within the limit, the same request passes whole.
    let head = chunked_post(&s, &"a".repeat(900)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(r#""body_len":900"#), "{head}");
}

/// An HTTPS upstream on 127.0.0.1 whose certificate (for that IP) comes from a fresh private
/// CA; returns its address and the CA certificate in PEM.
async fn tls_upstream() -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = listen(move |stream, _| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(format!("tls ok, host {host}")),
                    )))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        }
    })
    .await;
    (addr, ca_cert.pem())
}

#[tokio::test]
async fn https_upstreams_with_a_private_ca_named_in_ca_file() {
    let (up, ca_pem) = tls_upstream().await;
    let route = format!(
        "[[routes]]\nname = \"tls\"\npath_prefix = \"/\"\nupstream = \"https://{up}\"\npolicy = \"public\"\n"
    );
    // Trusted through proxy.ca_file (relative to the config file), with the public roots off.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let s = Server::start_in(
        dir.path(),
        Some(&format!(
            "[proxy]\nca_file = \"upstream-ca.pem\"\npublic_roots = false\n\n{route}"
        )),
    );
    let r = client().get(s.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), format!("tls ok, host {up}"));

    // Without it, the certificate is not trusted: 502, and nothing of the upstream leaks.
    let s = Server::start(Some(&route));
    let r = client().get(s.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(json_of(r).await["error"], "upstream_unavailable");
}

#[test]
fn unusable_ca_files_stop_startup_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    for (ca, want) in [
        ("empty.pem", "no certificates"),
        ("missing.pem", "cannot read PEM certificates"),
    ] {
        let cfg = dir.path().join("portcullis.toml");
        std::fs::write(&cfg, format!("[proxy]\nca_file = \"{ca}\"\n")).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("PORTCULLIS_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(ca) && err.contains(want), "{err}");
        // `serve --check` finds it too.
        let out = std::process::Command::new(BIN)
            .args(["serve", "--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(ca) && err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn a_route_may_give_its_upstream_more_time_than_the_default() {
    let up = upstream().await;
    let s = Server::start(Some(&format!(
        "[proxy]\ntimeout = \"1s\"\n\n[[routes]]\nname = \"patient\"\npath_prefix = \"/patient\"\nupstream = \"http://{up}\"\npolicy = \"public\"\ntimeout = \"20s\"\n\n[[routes]]\nname = \"pub\"\npath_prefix = \"/pub\"\nupstream = \"http://{up}\"\npolicy = \"public\"\n"
    )));
    // The upstream takes 3 s on /slow.
    let r = client().get(s.url("/patient/slow")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the route's own timeout");
    let r = client().get(s.url("/pub/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504, "proxy.timeout elsewhere");
    let view = s.cli_json(&["routes", "list"]);
    assert_eq!(view["routes"][0]["timeout_ms"], 20_000);
    assert!(view["routes"][1]["timeout_ms"].is_null());

    let (code, err) = check_config(
        "[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\npolicy = \"public\"\ntimeout = \"2h\"\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("routes[0].timeout") && err.contains("at most 1h"),
        "{err}"
    );
}

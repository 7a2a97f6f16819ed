//! Portcullis's own events as signed webhooks: registered through the CLI, delivered to a
//! loopback receiver, verified the Standard Webhooks way, retried, logged, durable.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_core::hmac::webhook::{self, Style, Tolerance};
use portcullis_domain::Clock as _;
use serde_json::Value;

use crate::support::*;

/// Retries in tens of milliseconds, attempts bounded to a second: no test waits for long.
const FAST: &str = r#"
[webhooks]
first_retry = "50ms"
timeout = "1s"

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "builtin:echo"
policy = "api_key"
failed_auth_limit = { limit = 3, period = "1h" }
"#;

/// What the receiver got: headers and body of each POST.
#[derive(Default)]
struct Received {
    got: Mutex<Vec<(http::HeaderMap, Vec<u8>)>>,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
    /// While set, answer 503.
    down: AtomicBool,
}

impl Received {
    fn all(&self) -> Vec<(http::HeaderMap, Vec<u8>)> {
        self.got.lock().unwrap().clone()
    }
}

/// A loopback receiver: records every request, answers 500 `fail_first` times (or 503
/// while `down`), then 200. Returns its URL and what it records.
async fn receiver(fail_first: usize) -> (String, Arc<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let rec = Arc::new(Received::default());
    rec.fail_first.store(fail_first, Ordering::SeqCst);
    let r = rec.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            r.got.lock().unwrap().push((headers, body.to_vec()));
                            let status = if r.down.load(Ordering::SeqCst) {
                                503
                            } else if r
                                .fail_first
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                500
                            } else {
                                200
                            };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            ));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, rec)
}

/// Whether a received delivery verifies under `secret`.
fn verifies(headers: &http::HeaderMap, body: &[u8], secret: &str) -> bool {
    let s = webhook::parse_secret(Style::StandardWebhooks, secret).unwrap();
    webhook::verify(
        Style::StandardWebhooks,
        headers,
        body,
        &[s],
        Tolerance::default(),
        portcullis_domain::SystemClock.now(),
    )
    .is_ok()
}

async fn deliveries(s: &Server, id: &str) -> Vec<Value> {
    let r = s
        .admin()
        .get(s.url(&format!("/admin/v1/webhooks/{id}/deliveries")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    json_of(r).await["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_revoked_key_is_delivered_signed_retried_and_logged() {
    let (url, rec) = receiver(1).await;
    let s = Server::start(Some(FAST));
    let ep = s.cli_json(&[
        "webhook",
        "create",
        "--url",
        &url,
        "--events",
        "api_key.revoked,auth.failure_burst",
        "--description",
        "ops",
    ]);
    let (ep_id, secret) = (ep["id"].as_str().unwrap(), ep["secret"].as_str().unwrap());
    assert!(
        ep_id.starts_with("wh_") && secret.starts_with("whsec_"),
        "{ep}"
    );
    assert_eq!(ep["status"], "active");
    let (key_id, raw_key) = s.create_key("doomed", "");
    s.cli_json(&["keys", "revoke", &key_id]);

    // 500 first, then retried: two requests, the same message.
    let got = s
        .eventually("the retried delivery", || async {
            let all = rec.all();
            (all.len() >= 2).then_some(all)
        })
        .await;
    for (h, body) in &got {
        assert!(
            verifies(h, body, secret),
            "verifies under the returned secret"
        );
        assert!(!verifies(h, body, "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"));
        assert_eq!(h["content-type"], "application/json");
    }
    assert_eq!(got[0].0["webhook-id"], got[1].0["webhook-id"]);
    assert_eq!(got[0].1, got[1].1);
    let body = String::from_utf8(got[1].1.clone()).unwrap();
    assert!(
        !body.contains(secret) && !body.contains(&raw_key),
        "no secret: {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "api_key.revoked");
    assert_eq!(v["data"]["credential"], key_id.as_str());
    assert_eq!(v["data"]["actor"], "admin-token");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));

    // The log: one delivery, delivered on the second attempt.
    let log = s
        .eventually("the delivery logged as delivered", || async {
            let log = deliveries(&s, ep_id).await;
            (log.first().is_some_and(|d| d["status"] == "delivered")).then_some(log)
        })
        .await;
    assert_eq!(log.len(), 1);
    let d = &log[0];
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["last_status"], 200);
    assert_eq!(d["type"], "api_key.revoked");
    assert_eq!(d["id"], got[0].0["webhook-id"].to_str().unwrap());
    assert!(d["delivered_at"].is_string());
    let cli = s.cli_json(&["webhook", "deliveries", ep_id, "--limit", "5"]);
    assert_eq!(cli["deliveries"][0]["id"], d["id"]);

    // Failed authentications: one burst event when the limit starts refusing, not one per
    // refused request.
    for _ in 0..8 {
        get_key(&s, "/echo/x", "pk_test_wrong").await;
    }
    let burst = s
        .eventually("the failure burst", || async {
            let log = deliveries(&s, ep_id).await;
            let b: Vec<Value> = log
                .into_iter()
                .filter(|d| d["type"] == "auth.failure_burst")
                .collect();
            (!b.is_empty()).then_some(b)
        })
        .await;
    assert_eq!(burst.len(), 1, "{burst:?}");
    assert_eq!(burst[0]["payload"]["data"]["route"], "echo");
    assert_eq!(burst[0]["payload"]["data"]["client_ip"], "127.0.0.1");

    // Management through the CLI and the admin API.
    let list = s.cli_json(&["webhook", "list"]);
    assert_eq!(list["webhooks"][0]["id"], ep_id);
    assert!(list["webhooks"][0].get("secret").is_none());
    let rotated = s.cli_json(&["webhook", "rotate-secret", ep_id]);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let shown = s.cli_json(&["webhook", "show", ep_id]);
    assert!(shown.get("secret").is_none());
    let r = s
        .admin()
        .post(s.url("/admin/v1/webhooks"))
        .json(&serde_json::json!({"url": "http://hooks.example/x", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"], "invalid_request");
    let r = s
        .admin()
        .get(s.url("/admin/v1/webhooks/wh_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"], "not_found");

    // `webhook test`: delivered, signed with both secrets during the grace.
    let before = rec.all().len();
    let t = s.cli_json(&["webhook", "test", ep_id]);
    assert_eq!(t["type"], "webhook.test");
    let (h, body) = s
        .eventually("the test delivery", || async {
            let all = rec.all();
            all.get(before..)
                .and_then(|new| {
                    new.iter()
                        .find(|(h, _)| h["webhook-id"] == t["id"].as_str().unwrap())
                })
                .cloned()
        })
        .await;
    assert!(verifies(&h, &body, new_secret) && verifies(&h, &body, secret));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "webhook.test");

    // Every change audited; the routes documented.
    let trail = audit_events_eventually(&s, "kind=webhook.created").await;
    assert_eq!(trail[0]["credential_id"], ep_id);
    let doc = openapi_doc(&s).await;
    for p in [
        "/admin/v1/webhooks",
        "/admin/v1/webhooks/{id}",
        "/admin/v1/webhooks/{id}/rotate-secret",
        "/admin/v1/webhooks/{id}/test",
        "/admin/v1/webhooks/{id}/deliveries",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} documented");
    }

    let (code, _, _) = s.cli(&["webhook", "delete", ep_id]);
    assert_eq!(code, 0);
    let (code, _, err) = s.cli(&["webhook", "show", ep_id]);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn an_acknowledged_event_survives_a_kill_before_it_is_delivered() {
    let (url, rec) = receiver(0).await;
    rec.down.store(true, Ordering::SeqCst);
    let s = Server::start(Some(FAST));
    let ep = s.cli_json(&["webhook", "create", "--url", &url, "--events", "*"]);
    let (ep_id, secret) = (
        ep["id"].as_str().unwrap().to_owned(),
        ep["secret"].as_str().unwrap().to_owned(),
    );
    let (key_id, _) = s.create_key("doomed", "");
    // The revoke answered: its event is stored, and so is its delivery.
    s.cli_json(&["keys", "revoke", &key_id]);
    let s = s.kill9().start(Some(FAST));
    rec.down.store(false, Ordering::SeqCst);
    let log = s
        .eventually("delivered after the restart", || async {
            let log = deliveries(&s, &ep_id).await;
            log.first().filter(|d| d["status"] == "delivered").cloned()
        })
        .await;
    assert_eq!(log["type"], "api_key.revoked");
    let (h, body) = rec
        .all()
        .into_iter()
        .rev()
        .find(|(h, _)| h["webhook-id"] == log["id"].as_str().unwrap())
        .unwrap();
    assert!(verifies(&h, &body, &secret));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"]["credential"], key_id.as_str());
}

//! Upstream groups against real upstreams: requests spread over the targets, a target that
//! cannot be reached is skipped (and the request sent to another), health checks take a
//! target out and put it back, a reload changes the targets.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::support::*;

/// An upstream on an ephemeral port that answers every request with `x-target: <name>` and
/// the path it was asked, except `/healthz`, which answers 200 while `healthy` holds and 503
/// otherwise. Returns the address.
async fn target(name: &'static str, healthy: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let healthy = healthy.clone();
                        async move {
                            let status = if req.uri().path() == "/healthz"
                                && !healthy.load(Ordering::SeqCst)
                            {
                                503
                            } else {
                                200
                            };
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("x-target", name)
                                    .header("x-host-seen", host)
                                    .body(http_body_util::Full::new(bytes::Bytes::from(
                                        req.uri().path().to_owned(),
                                    )))
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
    addr
}

/// A loopback address nothing listens on (bound, then closed).
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

fn up() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(true))
}

/// `GET path` through the gateway: status, the `x-target` that answered, and the body.
async fn get(s: &Server, path: &str) -> (u16, String, String) {
    let r = client().get(s.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let target = r
        .headers()
        .get("x-target")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, target, r.text().await.unwrap())
}

async fn upstreams(s: &Server) -> Value {
    json_of(
        s.admin()
            .get(s.url("/admin/v1/upstreams"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The `healthy` flag of the target at `addr` in group `group`.
fn healthy(v: &Value, group: &str, addr: &str) -> Option<bool> {
    v["upstreams"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["url"] == format!("http://{addr}"))?["healthy"]
        .as_bool()
}

fn config(targets: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.pool]
targets = [{targets}]
{extra}

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "pool"
policy = "public"
"#
    )
}

#[tokio::test]
async fn requests_take_turns_by_weight_and_each_target_sees_its_own_host() {
    let (a, b) = (target("a", up()).await, target("b", up()).await);
    let s = Server::start(Some(&config(
        &format!(r#"{{ url = "http://{a}/base", weight = 2 }}, "http://{b}/base""#),
        "",
    )));
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = client().get(s.url("/api/x?q=1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let t = r.headers()["x-target"].to_str().unwrap().to_owned();
        let host = r.headers()["x-host-seen"].to_str().unwrap().to_owned();
        assert_eq!(
            &host,
            if t == "a" { &a } else { &b },
            "the Host of the target asked"
        );
        assert_eq!(r.text().await.unwrap(), "/base/api/x");
        seen.push(t);
    }
    assert_eq!(seen.iter().filter(|t| *t == "a").count(), 4, "{seen:?}");
    assert_eq!(seen.iter().filter(|t| *t == "b").count(), 2, "{seen:?}");

    // Counted down once the response has gone out whole, which may be just after the
    // client has read it: the view compared with the CLI's below is taken after that.
    s.eventually("no request in flight", || async {
        let v = upstreams(&s).await;
        let targets = v["upstreams"][0]["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!targets.is_empty() && targets.iter().all(|t| t["in_flight"] == 0)).then_some(())
    })
    .await;
    let v = upstreams(&s).await;
    let g = &v["upstreams"][0];
    assert_eq!(g["name"], "pool");
    assert_eq!(g["balance"], "round_robin");
    assert_eq!(g["targets"][0]["weight"], 2);
    // The view holds what the OpenAPI document says it does.
    let doc = openapi_doc(&s).await;
    assert!(doc["paths"]["/admin/v1/upstreams"]["get"].is_object());
    let schema = &doc["components"]["schemas"]["Upstreams"]["properties"]["upstreams"]["items"];
    let required = |s: &Value| -> Vec<String> {
        s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for field in required(schema) {
        assert!(g.get(&field).is_some(), "{field} missing from {g}");
    }
    for field in required(&schema["properties"]["targets"]["items"]) {
        assert!(
            g["targets"][0].get(&field).is_some(),
            "{field} missing from {g}"
        );
    }
    let cli = s.cli_json(&["upstreams", "list"]);
    assert_eq!(cli, v);
    let (code, table, _) = s.cli(&["upstreams", "list"]);
    assert_eq!(code, 0);
    assert!(
        table.lines().any(|l| l.starts_with("pool")
            && l.contains(&format!("http://{b}"))
            && l.contains(" up ")),
        "{table}"
    );
}

#[tokio::test]
async fn a_target_that_cannot_be_reached_is_skipped_and_then_taken_out() {
    let (a, dead) = (target("a", up()).await, closed_port().await);
    let s = Server::start(Some(&config(
        &format!(r#""http://{a}", "http://{dead}""#),
        "[upstreams.pool.passive]\nfailures = 2\ncooldown = \"1h\"\n",
    )));
    // Every request is answered, by the live target: those sent to the dead one go on to it.
    for i in 0..8 {
        // A body too: nothing of it is read before a connection is had.
        let r = client()
            .post(s.url("/api/p"))
            .body(vec![b'x'; 1000 * (i % 2)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-target"], "a");
    }
    let v = upstreams(&s).await;
    assert_eq!(healthy(&v, "pool", &dead), Some(false), "{v}");
    assert_eq!(healthy(&v, "pool", &a), Some(true), "{v}");
    let m = metrics_text(&s).await;
    assert!(
        m.contains(&format!(
            "portcullis_upstream_target_up{{target=\"http://{dead}\",upstream=\"pool\"}} 0"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!("portcullis_upstream_target_transitions_total{{target=\"http://{dead}\",to=\"out\",upstream=\"pool\"}} 1")),
        "{m}"
    );
    // Two failures took it out; after that no request went to it: exactly two retries.
    assert!(
        m.contains("portcullis_upstream_retries_total{upstream=\"pool\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn when_no_target_answers_the_caller_gets_502() {
    let (d1, d2) = (closed_port().await, closed_port().await);
    let s = Server::start(Some(&config(
        &format!(r#""http://{d1}", "http://{d2}""#),
        "",
    )));
    for _ in 0..4 {
        let r = client().get(s.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unavailable");
    }
}

#[tokio::test]
async fn health_checks_take_a_target_out_and_put_it_back() {
    let (a_ok, b_ok) = (up(), up());
    let (a, b) = (target("a", a_ok).await, target("b", b_ok.clone()).await);
    let s = Server::start(Some(&config(
        &format!(r#""http://{a}", "http://{b}""#),
        // Time enough for a loopback answer on a busy CI machine: a check of `a` that timed out
        // three times in a row would take it out too.
        "[upstreams.pool.health]\npath = \"/healthz\"\ninterval = \"300ms\"\ntimeout = \"300ms\"\nhealthy_after = 2\nunhealthy_after = 3\n",
    )));
    let checked = s
        .eventually("a passed check of b", || async {
            let v = upstreams(&s).await;
            let t = v["upstreams"][0]["targets"][1].clone();
            (t["last_check"]["passed"] == true).then_some(t)
        })
        .await;
    assert_eq!(checked["last_check"]["detail"], "status 200");
    assert_eq!(checked["healthy"], true);

    b_ok.store(false, Ordering::SeqCst);
    let v = s
        .eventually("b out of rotation", || async {
            let v = upstreams(&s).await;
            (healthy(&v, "pool", &b) == Some(false)).then_some(v)
        })
        .await;
    assert_eq!(
        v["upstreams"][0]["targets"][1]["last_check"]["detail"],
        "status 503"
    );
    for _ in 0..6 {
        assert_eq!(get(&s, "/api/x").await.1, "a", "b is out");
    }
    assert!(s.output().contains("upstream target taken out of rotation"));

    b_ok.store(true, Ordering::SeqCst);
    s.eventually("b back in rotation", || async {
        (healthy(&upstreams(&s).await, "pool", &b) == Some(true)).then_some(())
    })
    .await;
    let mut by = std::collections::HashSet::new();
    for _ in 0..4 {
        by.insert(get(&s, "/api/x").await.1);
    }
    assert_eq!(by.len(), 2, "both take turns again: {by:?}");
}

/// A reload changes a group's targets; a target that stays keeps what is known of its health,
/// and one that went leaves the metrics.
#[cfg(unix)]
#[tokio::test]
async fn a_reload_changes_the_targets_and_keeps_the_health_of_those_that_stay() {
    let (a, b, dead) = (
        target("a", up()).await,
        target("b", up()).await,
        closed_port().await,
    );
    let passive = "[upstreams.pool.passive]\nfailures = 1\ncooldown = \"1h\"\n";
    let s = Server::start(Some(&config(
        &format!(r#""http://{a}", "http://{dead}""#),
        passive,
    )));
    for _ in 0..2 {
        assert_eq!(get(&s, "/api/x").await.0, 200);
    }
    assert_eq!(healthy(&upstreams(&s).await, "pool", &dead), Some(false));

    let path = s.dir.join("portcullis.toml");
    std::fs::write(
        &path,
        config(&format!(r#""http://{dead}", "http://{b}""#), passive),
    )
    .unwrap();
    assert!(s.signal("HUP"));
    s.eventually("the reload", || {
        let seen = s.output().contains("SIGHUP: configuration reloaded");
        async move { seen.then_some(()) }
    })
    .await;
    let v = upstreams(&s).await;
    assert_eq!(healthy(&v, "pool", &a), None, "a is gone: {v}");
    assert_eq!(healthy(&v, "pool", &dead), Some(false), "still out: {v}");
    assert_eq!(healthy(&v, "pool", &b), Some(true));
    for _ in 0..4 {
        assert_eq!(get(&s, "/api/x").await.1, "b");
    }
    let m = metrics_text(&s).await;
    assert!(
        !m.contains(&format!(
            "portcullis_upstream_target_up{{target=\"http://{a}\""
        )),
        "a's gauge is gone: {m}"
    );
    assert!(m.contains(&format!(
        "portcullis_upstream_target_up{{target=\"http://{b}\",upstream=\"pool\"}} 1"
    )));
    let audit = audit_events_eventually(&s, "kind=config.reloaded").await;
    assert_eq!(audit[0]["detail"]["upstreams"], serde_json::json!(["pool"]));
}

#[tokio::test]
async fn a_route_naming_no_defined_upstream_does_not_start() {
    let (code, err) =
        check_config("[[routes]]\nname = \"api\"\nupstream = \"pool\"\npolicy = \"public\"\n");
    assert_ne!(code, 0);
    assert!(
        err.contains(":3:") && err.contains("no upstream named `pool`"),
        "{err}"
    );
}

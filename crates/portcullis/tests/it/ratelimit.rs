//! Rate limits per identity, per key, quotas, and failed attempts per address.

use crate::support::*;

#[tokio::test]
async fn route_limits_key_limits_quotas_and_failed_attempts() {
    let s = Server::start(Some(
        r#"
[[routes]]
name = "limited"
path_prefix = "/l"
upstream = "builtin:echo"
policy = "api_key"
rate_limit = { limit = 2, period = "1h" }
failed_auth_limit = { limit = 3, period = "1h" }
"#,
    ));
    let (_, key) = s.create_key("a", "x");
    let r1 = get_key(&s, "/l/1", &key).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.headers()["ratelimit-limit"], "2");
    assert_eq!(r1.headers()["ratelimit-remaining"], "1");
    assert_eq!(get_key(&s, "/l/1", &key).await.status(), 200);
    let r3 = get_key(&s, "/l/1", &key).await;
    assert_eq!(r3.status(), 429);
    let retry: u64 = r3.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 1800, "{retry}");
    assert_eq!(r3.headers()["ratelimit-remaining"], "0");
    assert!(r3.headers().contains_key("ratelimit-reset"));
    assert_eq!(json_of(r3).await["error"], "rate_limited");

    // The limit is per identity: another key has its own.
    let (_, other) = s.create_key("b", "x");
    assert_eq!(get_key(&s, "/l/1", &other).await.status(), 200);

    // A key's own limits override the route's.
    let v = s.cli_json(&[
        "keys",
        "create",
        "--name",
        "c",
        "--scopes",
        "x",
        "--rate-limit",
        "burst=5/1h",
    ]);
    let own = v["key"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(get_key(&s, "/l/1", &own).await.status(), 200);
    }
    assert_eq!(get_key(&s, "/l/1", &own).await.status(), 429);

    // Quota: spent → quota_exceeded.
    let v = s.cli_json(&[
        "keys",
        "create",
        "--name",
        "q",
        "--scopes",
        "x",
        "--quota",
        "1/30d",
        "--rate-limit",
        "wide=100/1s",
    ]);
    let q = v["key"].as_str().unwrap().to_string();
    assert_eq!(get_key(&s, "/l/1", &q).await.status(), 200);
    let r = get_key(&s, "/l/1", &q).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json_of(r).await["error"], "quota_exceeded");

    // Failed attempts per address: 3 allowed, then 429 even with a valid key.
    for _ in 0..3 {
        assert_eq!(get_key(&s, "/l/1", "pk_live_nonsense").await.status(), 401);
    }
    let r = get_key(&s, "/l/1", "pk_live_nonsense").await;
    assert_eq!(r.status(), 429);
    let (_, fresh) = s.create_key("fresh", "x");
    assert_eq!(
        get_key(&s, "/l/1", &fresh).await.status(),
        429,
        "a blocked address learns nothing"
    );

    let m = metrics_text(&s).await;
    assert!(
        m.contains("portcullis_rate_limited_total{route=\"limited\"}"),
        "{m}"
    );
}

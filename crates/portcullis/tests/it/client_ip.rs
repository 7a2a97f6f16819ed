//! Behind a trusted load balancer, the client is the address it forwarded: for per-address
//! limits, the audit trail and the upstream's forwarding fields. From anyone else, the
//! forwarding fields are not believed.

use crate::support::*;

const BEHIND_LB: &str = r#"
[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "builtin:echo"
policy = "api_key"
failed_auth_limit = { limit = 2, period = "1h" }
"#;

async fn get_from(s: &Server, key: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(s.url("/echo/x")).header("X-API-Key", key);
    for (n, v) in fields {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_address_is_the_client() {
    let s = Server::start(Some(BEHIND_LB));
    let (id, key) = s.create_key("k", "");
    let echo = json_of(
        get_from(
            &s,
            &key,
            &[
                ("X-Forwarded-For", "6.6.6.6, 198.51.100.7"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "api.example.com"),
            ],
        )
        .await,
    )
    .await;
    let h = &echo["headers"];
    assert_eq!(
        h["x-forwarded-for"], "6.6.6.6, 198.51.100.7, 127.0.0.1",
        "{h}"
    );
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "api.example.com", "{h}");

    let allowed = decisions_on(&s, &id).await;
    assert_eq!(allowed[0]["client_ip"], "198.51.100.7", "{allowed:?}");

    // Failed attempts are counted per forwarded client, not for the balancer as a whole.
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let bad = format!("{}{last}", &key[..key.len() - 1]);
    for _ in 0..2 {
        let r = get_from(&s, &bad, &[("X-Forwarded-For", "198.51.100.66")]).await;
        assert_eq!(r.status(), 401);
    }
    let r = get_from(&s, &bad, &[("X-Forwarded-For", "198.51.100.66")]).await;
    assert_eq!(r.status(), 429, "that client has used up its failures");
    let r = get_from(&s, &key, &[("X-Forwarded-For", "198.51.100.8")]).await;
    assert_eq!(
        r.status(),
        200,
        "another client behind the same balancer is not"
    );

    // The admin API's actor, too.
    let r = s
        .admin()
        .post(s.url("/admin/v1/keys"))
        .header("X-Forwarded-For", "192.0.2.44")
        .json(&serde_json::json!({"name": "via-lb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created = audit_events(&s, "kind=api_key.created").await;
    assert_eq!(created[0]["client_ip"], "192.0.2.44", "{created:?}");
}

#[tokio::test]
async fn an_untrusted_peers_forwarding_fields_are_not_believed() {
    let s = Server::start(Some(&BEHIND_LB.replace("127.0.0.0/8", "10.0.0.0/8")));
    let (id, key) = s.create_key("k", "");
    let echo = json_of(
        get_from(
            &s,
            &key,
            &[
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
        .await,
    )
    .await;
    let h = &echo["headers"];
    assert_eq!(
        h["x-forwarded-for"], "198.51.100.7, 127.0.0.1",
        "passed on, appended to"
    );
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_ne!(h["x-forwarded-host"], "evil.example", "{h}");
    let allowed = decisions_on(&s, &id).await;
    assert_eq!(allowed[0]["client_ip"], "127.0.0.1", "{allowed:?}");
}

#[test]
fn a_trusted_proxy_that_is_no_address_is_a_config_error() {
    let (code, err) =
        check_config("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("portcullis.toml:2")
            && err.contains("client_ip.trusted_proxies")
            && err.contains("lb.internal"),
        "{err}"
    );
}

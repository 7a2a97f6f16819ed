//! The quickstart and the API-key scheme end to end.

use crate::support::*;

#[tokio::test]
async fn quickstart_key_echo_and_refusals() {
    let s = Server::start(None);
    let (id, key) = s.create_key("demo", "read:echo");
    assert!(key.starts_with("pk_live_"), "{key}");

    // With the key: the echo shows what the upstream received.
    let r = get_key(&s, "/echo/hello?x=1", &key).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let v = json_of(r).await;
    assert_eq!(v["path"], "/echo/hello");
    assert_eq!(v["query"], "x=1");
    let h = &v["headers"];
    assert_eq!(h["x-portcullis-scheme"], "api_key");
    assert_eq!(h["x-portcullis-credential"], id.as_str());
    assert_eq!(h["x-portcullis-scopes"], "read:echo");
    assert!(
        h.get("x-api-key").is_none(),
        "the consumed key is not forwarded: {h}"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(
        !v.to_string().contains(&key),
        "the raw key never reaches the upstream"
    );

    // Bearer works too.
    let r = client()
        .get(s.url("/echo/b"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Without the key: 401 with a challenge and a documented code.
    let r = client().get(s.url("/echo/hello")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("ApiKey realm=\"portcullis\""),
        "{challenge}"
    );
    assert_eq!(json_of(r).await["error"], "missing_credentials");

    // A mistyped key: rejected by checksum, looks exactly like an unknown key.
    let mut typo = key.clone().into_bytes();
    let last = typo.len() - 10;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let r = get_key(&s, "/echo/hello", &typo).await;
    assert_eq!(r.status(), 401);
    let body_typo = r.text().await.unwrap();
    let r = get_key(&s, "/echo/hello", "pk_live_garbage").await;
    assert_eq!(
        r.text().await.unwrap(),
        body_typo,
        "malformed and mistyped keys look alike"
    );
    assert!(body_typo.contains("invalid_api_key"));

    // Two different keys at once are ambiguous.
    let (_, other) = s.create_key("other", "read:echo");
    let r = client()
        .get(s.url("/echo/x"))
        .header("X-API-Key", &key)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Revoked: 401 api_key_revoked on the very next request.
    let out = s.cli_json(&["keys", "revoke", &id]);
    assert_eq!(out["status"], "revoked");
    let r = get_key(&s, "/echo/hello", &key).await;
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "api_key_revoked");

    // No route: 404 without reaching any upstream.
    let r = get_key(&s, "/nope", &other).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"], "no_route");
    // Prefixes are segment-aligned.
    assert_eq!(get_key(&s, "/echoes", &other).await.status(), 404);
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_and_scopes_enforced() {
    let s = Server::start(None);
    let (_, key) = s.create_key("writer", "write:other");
    let r = get_key(&s, "/echo/x", &key).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"], "insufficient_scope");

    let (_, key) = s.create_key("reader", "read:echo");
    let r = client()
        .get(s.url("/echo/x"))
        .header("X-API-Key", &key)
        .header("X-Portcullis-Subject", "admin")
        .header("X-Portcullis-Scopes", "everything")
        .header("X-Portcullis-Whatever", "1")
        .send()
        .await
        .unwrap();
    let v = json_of(r).await;
    let h = &v["headers"];
    assert!(h.get("x-portcullis-subject").is_none(), "{h}");
    assert!(h.get("x-portcullis-whatever").is_none(), "{h}");
    assert_eq!(h["x-portcullis-scopes"], "read:echo");
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period_only() {
    let s = Server::start(None);
    let (id, old) = s.create_key("rot", "read:echo");
    let v = s.cli_json(&["keys", "rotate", &id, "--grace", "1h"]);
    let new = v["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(v["rotated_from"], id.as_str());
    assert_eq!(
        get_key(&s, "/echo/1", &old).await.status(),
        200,
        "old key valid during grace"
    );
    assert_eq!(get_key(&s, "/echo/1", &new).await.status(), 200);

    let new_id = v["id"].as_str().unwrap().to_string();
    let v = s.cli_json(&["keys", "rotate", &new_id, "--grace", "0"]);
    let newest = v["key"].as_str().unwrap().to_string();
    let r = get_key(&s, "/echo/1", &new).await;
    assert_eq!(r.status(), 401, "grace 0 stops the old key at once");
    assert_eq!(json_of(r).await["error"], "api_key_expired");
    assert_eq!(get_key(&s, "/echo/1", &newest).await.status(), 200);
    // Rotating an already-rotated key is a conflict.
    let (code, _, err) = s.cli(&["keys", "rotate", &new_id]);
    assert_ne!(code, 0);
    assert!(err.contains("409"), "{err}");
}

#[tokio::test]
async fn list_show_and_limits_and_keys_in_query_only_when_opted_in() {
    let s = Server::start(Some(
        r#"
[[routes]]
name = "q"
path_prefix = "/q"
upstream = "builtin:echo"
policy = "api_key"
api_key_query_param = "api_key"

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "builtin:echo"
policy = "api_key"
"#,
    ));
    let (id, key) = s.create_key("lister", "a,b");
    let list = s.cli_json(&["keys", "list"]);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert_eq!(keys[0]["scopes"], serde_json::json!(["a", "b"]));
    assert!(!list.to_string().contains(&key), "list never shows the key");
    assert!(key.starts_with(keys[0]["prefix"].as_str().unwrap()));
    let show = s.cli_json(&["keys", "show", &id]);
    assert_eq!(show["status"], "active");

    let r = client()
        .get(s.url(&format!("/q/x?a=1&api_key={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        v["query"], "a=1",
        "the key is removed from the forwarded query"
    );
    let r = client()
        .get(s.url(&format!("/echo/x?api_key={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "query keys only where the route opts in");

    // Human output shows the key on the first line.
    let (code, out, _) = s.cli(&["keys", "create", "--name", "human", "--scopes", "x"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("pk_live_"), "{out}");
    // Bad input is a clear 400.
    let (code, _, err) = s.cli(&["keys", "create", "--name", "bad", "--scopes", "has\"quote"]);
    assert_ne!(code, 0);
    assert!(err.contains("400"), "{err}");
}

#[tokio::test]
async fn import_raw_hashed_and_csv_keys() {
    let s = Server::start(Some("[api_keys]\naccept_foreign_keys = true\n"));
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("keys.json");
    let hash_of = |k: &str| {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import hashlib;print(hashlib.sha256(b'{k}').hexdigest())"
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    std::fs::write(
        &json_file,
        serde_json::json!([
            {"key": "kong-legacy-key-000000000001", "name": "raw", "scopes": ["read:echo"]},
            {"hash": hash_of("kong-legacy-key-000000000002"), "name": "hashed", "scopes": ["read:echo"], "owner": "acme"}
        ])
        .to_string(),
    )
    .unwrap();
    let v = s.cli_json(&["keys", "import", json_file.to_str().unwrap()]);
    assert_eq!(v["imported"], 2);
    assert!(!v.to_string().contains("kong-legacy-key-000000000001"));
    assert_eq!(
        get_key(&s, "/echo/1", "kong-legacy-key-000000000001")
            .await
            .status(),
        200
    );
    let r = get_key(&s, "/echo/1", "kong-legacy-key-000000000002").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["headers"]["x-portcullis-client"], "acme");
    assert_eq!(
        get_key(&s, "/echo/1", "kong-legacy-key-000000000003")
            .await
            .status(),
        401
    );

    let csv_file = dir.path().join("keys.csv");
    std::fs::write(
        &csv_file,
        "key,name,scopes\nkong-legacy-key-000000000004,csv one,read:echo\n",
    )
    .unwrap();
    let v = s.cli_json(&["keys", "import", csv_file.to_str().unwrap()]);
    assert_eq!(v["imported"], 1);
    assert_eq!(
        get_key(&s, "/echo/1", "kong-legacy-key-000000000004")
            .await
            .status(),
        200
    );
    // All or nothing: a duplicate in the batch imports nothing.
    std::fs::write(&csv_file, "key,name,scopes\nkong-legacy-key-000000000005,new,read:echo\nkong-legacy-key-000000000004,dup,read:echo\n").unwrap();
    let (code, _, err) = s.cli(&["keys", "import", csv_file.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(
        get_key(&s, "/echo/1", "kong-legacy-key-000000000005")
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn health_metrics_and_size_limits() {
    let s = Server::start(None);
    assert_eq!(
        client()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, key) = s.create_key("m", "read:echo");
    assert_eq!(get_key(&s, "/echo/m", &key).await.status(), 200);
    let _ = client().get(s.url("/echo/m")).send().await.unwrap();
    let m = metrics_text(&s).await;
    assert!(
        m.contains(r#"portcullis_requests_total{outcome="allow",route="echo",scheme="api_key"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"outcome="missing_credentials""#), "{m}");
    assert!(
        m.contains("portcullis_request_duration_seconds_bucket"),
        "{m}"
    );

    let big = "x".repeat(20_000);
    let r = client()
        .get(s.url("/echo/m"))
        .header("X-API-Key", &key)
        .header("X-Big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let head = raw(&s, &format!("POST /echo/m HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 99999999999\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");
    for path in [
        "/echo/a/../x",
        "/echo/%2e%2e/x",
        "/echo/.%2E/x",
        "/echo/./x",
    ] {
        let head = raw(
            &s,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
}

#[tokio::test]
async fn a_key_is_judged_afresh_on_every_request_of_a_keep_alive_connection() {
    let s = Server::start(None);
    let (id, key) = s.create_key("conn", "read:echo");
    let (_, other) = s.create_key("conn-other", "read:echo");
    let mut typo = key.clone();
    typo.pop();
    typo.push(if key.ends_with('2') { '3' } else { '2' });
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(on_conn(&mut c, &key).await.0, 200);
    assert_eq!(on_conn(&mut c, &key).await.0, 200);
    assert_eq!(
        on_conn(&mut c, &typo).await,
        (401, "invalid_api_key".into())
    );
    assert_eq!(on_conn(&mut c, &key).await.0, 200);
    // Revoked while the connection stays open: the next request on it is refused.
    s.cli_json(&["keys", "revoke", &id]);
    assert_eq!(on_conn(&mut c, &key).await, (401, "api_key_revoked".into()));
    assert_eq!(on_conn(&mut c, &other).await.0, 200);
    assert_eq!(on_conn(&mut c, &key).await, (401, "api_key_revoked".into()));
}

#[tokio::test]
async fn an_update_takes_effect_on_the_next_request_of_an_open_connection() {
    let s = Server::start(None);
    let (id, key) = s.create_key("upd", "write:other");
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    assert_eq!(
        on_conn(&mut c, &key).await,
        (403, "insufficient_scope".into())
    );
    let v = s.cli_json(&[
        "keys",
        "update",
        &id,
        "--scopes",
        "read:echo",
        "--owner",
        "acme",
        "--expires-in",
        "1h",
    ]);
    assert_eq!(v["scopes"], serde_json::json!(["read:echo"]));
    assert_eq!(
        (v["owner"].as_str(), v["name"].as_str()),
        (Some("acme"), Some("upd"))
    );
    assert!(v["expires_at"].is_string(), "{v}");
    assert_eq!(
        on_conn(&mut c, &key).await.0,
        200,
        "the new scope counts at once"
    );
    let echo = json_of(get_key(&s, "/echo/x", &key).await).await;
    assert_eq!(echo["headers"]["x-portcullis-client"], "acme", "{echo}");
    assert_eq!(
        echo["headers"]["x-portcullis-scopes"], "read:echo",
        "{echo}"
    );

    // Through the API: null removes; an expiry in the past stops the key at once.
    let patch = |body: serde_json::Value| {
        s.admin()
            .patch(s.url(&format!("/admin/v1/keys/{id}")))
            .json(&body)
            .send()
    };
    let v = json_of(
        patch(serde_json::json!({"owner": null, "expires_at": null}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (v["owner"].is_null(), v["expires_at"].is_null()),
        (true, true),
        "{v}"
    );
    let r = patch(serde_json::json!({"expires_at": 1_000}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["status"], "expired");
    assert_eq!(on_conn(&mut c, &key).await, (401, "api_key_expired".into()));
    patch(serde_json::json!({"expires_in": 3600}))
        .await
        .unwrap();
    assert_eq!(on_conn(&mut c, &key).await.0, 200, "and again");

    // Refusals: nothing to change, unknown or identity fields, bad values, no such key.
    for (body, status) in [
        (serde_json::json!({}), 400),
        (serde_json::json!({"hash": "00"}), 400),
        (serde_json::json!({"revoked_at": null}), 400),
        (serde_json::json!({"name": null}), 400),
        (serde_json::json!({"scopes": ["two words"]}), 400),
    ] {
        let r = patch(body.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(json_of(r).await["error"], "invalid_request", "{body}");
    }
    let r = s
        .admin()
        .patch(s.url("/admin/v1/keys/key_nope"))
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (code, _, err) = s.cli(&["keys", "update", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to change"), "{err}");

    // A revoked key stays as it was revoked.
    s.cli_json(&["keys", "revoke", &id]);
    let (code, _, err) = s.cli(&["keys", "update", &id, "--scopes", "read:echo,admin"]);
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("revoked"), "{err}");
    assert_eq!(on_conn(&mut c, &key).await, (401, "api_key_revoked".into()));

    let events = audit_events(&s, &format!("kind=api_key.updated&credential_id={id}")).await;
    let changed: Vec<_> = events
        .iter()
        .map(|e| e["detail"]["changed"].clone())
        .collect();
    assert_eq!(
        changed,
        [
            serde_json::json!(["expires_at"]),
            serde_json::json!(["expires_at"]),
            serde_json::json!(["owner", "expires_at"]),
            serde_json::json!(["owner", "scopes", "expires_at"]),
        ],
        "one event per change made, newest first: {events:?}"
    );
}

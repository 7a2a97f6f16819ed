//! Token-signing keys: the master key, the JWKS, rotation through the CLI, and what survives
//! a kill.

use portcullis_core::jose::Jwk;
use serde_json::Value;

use crate::support::*;

async fn jwks(s: &Server) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client().get(s.url("/oauth2/jwks")).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, json_of(r).await)
}

fn kids(v: &Value) -> Vec<String> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_jwks_publishes_the_next_key_before_it_signs_and_survives_a_kill() {
    let s = Server::start(None);
    // First start: a master key, private to its owner, never printed.
    let path = s.data_dir().join("master.key");
    let master = std::fs::read_to_string(&path).unwrap();
    assert_eq!(master.trim().len(), 64, "32 bytes in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !s.output().contains(master.trim()),
        "the master key is never printed"
    );

    // One ES256 key, published with caching headers; its kid is its RFC 7638 thumbprint.
    let (status, headers, doc) = jwks(&s).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "public, max-age=1800");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{doc}");
    let k = &keys[0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &"EC".into(),
            &"P-256".into(),
            &"ES256".into(),
            &"sig".into()
        )
    );
    assert!(k.get("d").is_none(), "no private member");
    let jwk: Jwk = serde_json::from_value(k.clone()).unwrap();
    assert_eq!(jwk.kid.as_deref(), Some(jwk.thumbprint().unwrap().as_str()));
    let first = jwk.kid.unwrap();

    // Revalidation costs nothing; other methods are refused.
    let r = client()
        .get(s.url("/oauth2/jwks"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = client().post(s.url("/oauth2/jwks")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    let listed = s.cli_json(&["signing-keys", "list"]);
    assert_eq!(listed["signing_keys"][0]["kid"], first.as_str());
    assert_eq!(listed["signing_keys"][0]["state"], "signing");
    assert_eq!(listed["signing_keys"][0]["retires_at"], Value::Null);

    // Rotation: the next key is published at once and signs only after the lead time.
    let next = s.cli_json(&[
        "signing-keys",
        "rotate",
        "--algorithm",
        "EdDSA",
        "--lead-time",
        "1h",
    ]);
    assert_eq!(next["state"], "next", "{next}");
    assert_eq!(next["algorithm"], "EdDSA");
    let next_kid = next["kid"].as_str().unwrap().to_owned();
    let (_, headers, doc) = jwks(&s).await;
    assert_ne!(headers["etag"].to_str().unwrap(), etag, "a new document");
    assert_eq!(
        kids(&doc),
        vec![next_kid.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(doc["keys"][0]["kty"], "OKP");
    let listed = s.cli_json(&["signing-keys", "list"]);
    let old = &listed["signing_keys"][1];
    assert_eq!(
        old["state"], "signing",
        "still signing during the lead time"
    );
    assert_eq!(old["retires_at"], next["activates_at"]);
    assert!(old["expires_at"].is_string(), "{old}");

    // Audited, with who did it.
    let events = audit_events_eventually(&s, "kind=signing_key.rotated").await;
    assert_eq!(events[0]["credential_id"], next_kid.as_str());
    assert_eq!(events[0]["actor"], "admin-token");

    // Bad requests name what to fix.
    let (code, _, err) = s.cli(&["signing-keys", "rotate", "--algorithm", "HS256"]);
    assert_ne!(code, 0);
    assert!(err.contains("algorithm"), "{err}");
    let (code, _, err) = s.cli(&["signing-keys", "rotate", "--lead-time", "30d"]);
    assert_ne!(code, 0);
    assert!(err.contains("lead_time"), "{err}");

    // Acknowledged means kept: killed right after, restarted, the same keys open again.
    let dir = s.kill9();
    let s = dir.start(None);
    let (_, _, doc) = jwks(&s).await;
    assert_eq!(kids(&doc), vec![next_kid, first]);

    // Under another master key the sealed keys do not open: startup stops and says why.
    let dir = s.kill9();
    std::fs::write(
        dir.dir.join("data/master.key"),
        format!("{}\n", "ab".repeat(32)),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.dir.join("data"))
        .env_remove("PORTCULLIS_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not open under this master key"), "{err}");
}

#[tokio::test]
async fn the_master_key_can_come_from_the_environment_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_MASTER_KEY", "not hex")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PORTCULLIS_MASTER_KEY must be 64 hex digits"),
        "{err}"
    );
    assert!(!err.contains("not hex"), "the value is not echoed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_the_signing_key_rotates_under_load() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = Server::start(None);
    let (id, secret) = register(&s, "read:echo");
    let fresh_token = || async {
        let r = token_form(&s, Some((&id, &secret)), "grant_type=client_credentials").await;
        assert_eq!(r.status(), 200);
        json_of(r).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let kid = |t: &str| {
        portcullis_core::jose::Jws::parse(t, 16 * 1024)
            .unwrap()
            .header()
            .kid
            .clone()
            .unwrap()
    };
    // Issued before any rotation: it must keep working to its expiry.
    let before = fresh_token().await;
    let done = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let kids = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let worker = || async {
        for _ in 0..60 {
            let t = fresh_token().await;
            kids.lock().unwrap().insert(kid(&t));
            for token in [&t, &before] {
                if bearer(&s, "/jwt/echo/load", token).await.status() != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let rotator = async {
        // Two rotations that sign at once (no lead time), each with requests in flight.
        for (at, alg) in [(30, "ES256"), (90, "EdDSA")] {
            while done.load(Ordering::SeqCst) < at {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let r = s
                .admin()
                .post(s.url("/admin/v1/signing-keys/rotate"))
                .json(&serde_json::json!({"algorithm": alg, "lead_time": "0s"}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    tokio::join!(worker(), worker(), worker(), rotator);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(done.load(Ordering::SeqCst), 180);
    assert_eq!(kids.lock().unwrap().len(), 3, "both rotations took effect");
    assert_eq!(bearer(&s, "/jwt/echo/after", &before).await.status(), 200);
}

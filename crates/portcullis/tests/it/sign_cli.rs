//! The client side on the command line: `portcullis request` and `portcullis sign` against
//! the default signed echo routes, and `portcullis webhook sign|verify`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use portcullis_core::hmac::http_sig;
use portcullis_core::hmac::sigv4;
use portcullis_domain::Clock;
use serde_json::Value;

use crate::support::*;

/// Runs `portcullis <args>` with `env` (and no secret inherited), `stdin` as its input;
/// returns (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PORTCULLIS_HMAC_SECRET")
        .env_remove("PORTCULLIS_WEBHOOK_SECRET")
        .env_remove("PORTCULLIS_KEY_ID")
        .env("PORTCULLIS_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HMAC credential from the CLI: (key id, secret).
fn credential(s: &Server) -> (String, String) {
    let c = s.cli_json(&[
        "hmac",
        "create",
        "--name",
        "partner",
        "--scopes",
        "read:echo",
    ]);
    (
        c["key_id"].as_str().unwrap().to_owned(),
        c["secret"].as_str().unwrap().to_owned(),
    )
}

/// `Name: value` lines as a header map.
fn header_lines(text: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (n, v) = line.split_once(": ").unwrap();
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[tokio::test]
async fn portcullis_request_opens_each_signed_echo_route() {
    let s = Server::start(None);
    let (key_id, secret) = credential(&s);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let secret_file = secret_file.to_str().unwrap();
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, br#"{"amount":100}"#).unwrap();
    let at_body = format!("@{}", body_file.display());

    // The contract of the issue: `portcullis request --hmac-key-id … METHOD URL [-d BODY]`,
    // the secret from the environment.
    let url = s.url("/hmac/echo/orders?b=2&a=x%20y");
    let (code, out, err) = run(
        &[
            "request",
            "--hmac-key-id",
            &key_id,
            "POST",
            &url,
            "-d",
            r#"{"amount":100}"#,
        ],
        &[("PORTCULLIS_HMAC_SECRET", &secret)],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["headers"]["x-portcullis-credential"],
        key_id.as_str(),
        "{v}"
    );
    assert_eq!(v["headers"]["x-portcullis-scheme"], "hmac", "{v}");
    assert_eq!(v["body"]["text"], r#"{"amount":100}"#);
    assert_eq!(v["query"], "b=2&a=x%20y");
    assert!(v["headers"]["x-body-hash"].is_string(), "{v}");

    // Each scheme, with a body from a file and without one; the secret from a file.
    for (scheme, prefix) in [
        ("hmac", "/hmac/echo"),
        ("sigv4", "/sigv4/echo"),
        ("http_signature", "/httpsig/echo"),
    ] {
        let url = s.url(&format!("{prefix}/orders?z=1&a=2"));
        let (code, out, err) = run(
            &[
                "request",
                "--scheme",
                scheme,
                "--key-id",
                &key_id,
                "--secret-file",
                secret_file,
                "-H",
                "Content-Type: application/json",
                "-d",
                &at_body,
                "post",
                &url,
            ],
            &[],
            b"",
        );
        assert_eq!(code, 0, "{scheme}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["headers"]["x-portcullis-credential"],
            key_id.as_str(),
            "{v}"
        );
        assert_eq!(v["method"], "POST");
        assert_eq!(v["body"]["text"], r#"{"amount":100}"#, "{scheme}");

        let url = s.url(&format!("{prefix}/x"));
        let (code, out, err) = run(
            &[
                "request",
                "-i",
                "--scheme",
                scheme,
                "--key-id",
                &key_id,
                "--secret-file",
                secret_file,
                "GET",
                &url,
            ],
            &[],
            b"",
        );
        assert_eq!(code, 0, "{scheme}: {err}");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let (_, body) = out.split_once("\r\n\r\n").unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["headers"]["x-portcullis-credential"],
            key_id.as_str(),
            "{v}"
        );
    }

    // A wrong secret: exit 1, the status and the error code on stderr, the secret nowhere.
    let (code, out, err) = run(
        &[
            "request",
            "--key-id",
            &key_id,
            "GET",
            &s.url("/hmac/echo/x"),
        ],
        &[("PORTCULLIS_HMAC_SECRET", "not-the-secret-at-all")],
        b"",
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(
        err.contains("401") && err.contains("invalid_signature"),
        "{err}"
    );
    assert!(!out.contains("not-the-secret") && !err.contains("not-the-secret"));

    // No secret at all: a usage error that says where the secret comes from.
    let (code, _, err) = run(
        &[
            "request",
            "--key-id",
            &key_id,
            "GET",
            &s.url("/hmac/echo/x"),
        ],
        &[],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("PORTCULLIS_HMAC_SECRET"), "{err}");
}

#[tokio::test]
async fn headers_from_portcullis_sign_open_a_route_once() {
    let s = Server::start(None);
    let (key_id, secret) = credential(&s);
    let client = client();
    for (scheme, path) in [
        ("hmac", "/hmac/echo/pay?amount=10"),
        ("http_signature", "/httpsig/echo/pay?amount=10"),
    ] {
        let url = s.url(path);
        let (code, out, err) = run(
            &[
                "sign", "--scheme", scheme, "--key-id", &key_id, "-d", "@-", "--json", "POST", &url,
            ],
            &[("PORTCULLIS_HMAC_SECRET", &secret)],
            b"amount=10",
        );
        assert_eq!(code, 0, "{err}");
        let signed: Value = serde_json::from_str(&out).unwrap();
        let mut h = reqwest::header::HeaderMap::new();
        for (n, v) in signed.as_object().unwrap() {
            h.insert(
                reqwest::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
        assert!(!out.contains(&secret));
        let send = || {
            client
                .post(&url)
                .headers(h.clone())
                .body("amount=10")
                .send()
        };
        let r = send().await.unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
        let v = json_of(r).await;
        assert_eq!(v["body"]["text"], "amount=10");
        // The same headers again: the nonce was spent.
        let r = send().await.unwrap();
        assert_eq!(r.status(), 401, "{scheme}");
        assert_eq!(json_of(r).await["error"], "replayed_request", "{scheme}");
    }
}

#[test]
fn portcullis_sign_output_verifies_with_the_core() {
    let secret = "hs_cli_test_secret_0123456789abcdef0123456789";
    let now = portcullis_domain::SystemClock.now();

    // SigV4, with content-type signed.
    let (code, out, err) = run(
        &[
            "sign",
            "--scheme",
            "sigv4",
            "--key-id",
            "hk_cli",
            "--region",
            "eu-west-1",
            "--service",
            "orders",
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            "PUT",
            "http://api.example:8443/v1/orders/1?x=1",
        ],
        &[("PORTCULLIS_HMAC_SECRET", secret)],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let mut h = header_lines(&out);
    assert!(h["authorization"]
        .to_str()
        .unwrap()
        .contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date"));
    h.insert("host", "api.example:8443".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    let r = sigv4::Request {
        method: &http::Method::PUT,
        path: "/v1/orders/1",
        query: Some("x=1"),
        headers: &h,
        body: b"{}",
    };
    let p = sigv4::parse(&r).unwrap().unwrap();
    let e = sigv4::Expect {
        region: "eu-west-1",
        service: "orders",
        window_secs: 300,
        allow_unsigned_payload: false,
        path_rule: sigv4::PathRule::ByService,
        now,
    };
    sigv4::verify(&p, &r, secret.as_bytes(), &e).unwrap();

    // RFC 9421 with a private key (PKCS#8 DER here; PEM works the same).
    let dir = tempfile::tempdir().unwrap();
    let key = portcullis_core::crypto::sign::SigningKey::generate(
        portcullis_core::jose::Algorithm::EdDsa,
    )
    .unwrap();
    let key_file = dir.path().join("key.der");
    std::fs::write(&key_file, key.pkcs8()).unwrap();
    let (code, out, err) = run(
        &[
            "sign",
            "--scheme",
            "http_signature",
            "--key-id",
            "k_ed",
            "--private-key",
            key_file.to_str().unwrap(),
            "--alg",
            "ed25519",
            "-d",
            "hello",
            "POST",
            "https://api.example/v1/notes",
        ],
        &[],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let mut h = header_lines(&out);
    assert!(h.contains_key("content-digest"), "{out}");
    h.insert("host", "api.example".parse().unwrap());
    let sigs = http_sig::parse(&h).unwrap().unwrap();
    let r = http_sig::Request {
        method: &http::Method::POST,
        scheme: "https",
        authority: "api.example",
        path: "/v1/notes",
        query: None,
        headers: &h,
        body: Some(b"hello"),
    };
    let vk = http_sig::VerifyingKey::from_signing_key(http_sig::Algorithm::Ed25519, &key).unwrap();
    let policy = http_sig::Policy::default();
    let (sig, vk) = http_sig::select(&sigs, &r, &policy, now, |kid| {
        (kid == "k_ed").then_some(&vk)
    })
    .unwrap();
    assert_eq!(sig.alg(), Some("ed25519"));
    http_sig::verify(sig, &r, vk, &policy, now).unwrap();
    let tampered = http_sig::Request {
        body: Some(b"hellO"),
        ..r
    };
    assert!(http_sig::verify(sig, &tampered, vk, &policy, now).is_err());

    // A private key with another scheme, or of another type than --alg: refused.
    let (code, _, err) = run(
        &[
            "sign",
            "--key-id",
            "k_ed",
            "--private-key",
            key_file.to_str().unwrap(),
            "--alg",
            "ed25519",
            "GET",
            "http://h/",
        ],
        &[],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("http_signature"), "{err}");
    let (code, _, err) = run(
        &[
            "sign",
            "--scheme",
            "http_signature",
            "--key-id",
            "k_ed",
            "--private-key",
            key_file.to_str().unwrap(),
            "--alg",
            "ecdsa-p256-sha256",
            "GET",
            "http://h/",
        ],
        &[],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("ecdsa-p256-sha256"), "{err}");
    // A relative URL cannot be signed.
    let (code, _, err) = run(
        &["sign", "--key-id", "k", "GET", "/relative"],
        &[("PORTCULLIS_HMAC_SECRET", secret)],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("absolute"), "{err}");
}

/// A Standard Webhooks secret (24 bytes), the form Svix documents.
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD_SECRET_2: &str = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

#[test]
fn webhooks_signed_by_the_cli_verify_and_tampered_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("event.json");
    std::fs::write(&body, br#"{"type":"invoice.paid","id":"evt_1"}"#).unwrap();
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, br#"{"type":"invoice.paid","id":"evt_2"}"#).unwrap();
    let body = body.to_str().unwrap();
    let tampered = tampered.to_str().unwrap();
    for (style, secret) in [
        ("stripe", "whsec_stripe_test_secret"),
        ("github", "It's a Secret to Everybody"),
        ("standard", STANDARD_SECRET),
    ] {
        let env = [("PORTCULLIS_WEBHOOK_SECRET", secret)];
        let (code, out, err) = run(&["webhook", "sign", "--style", style, body], &env, b"");
        assert_eq!(code, 0, "{style}: {err}");
        assert!(!out.contains(secret));
        let mut verify = vec!["webhook", "verify", "--style", style];
        let headers: Vec<String> = out.lines().map(str::to_owned).collect();
        for h in &headers {
            verify.push("-H");
            verify.push(h);
        }
        let mut ok = verify.clone();
        ok.push(body);
        let (code, out, err) = run(&ok, &env, b"");
        assert_eq!((code, out.as_str()), (0, "ok\n"), "{style}: {err}");
        // The body from stdin.
        let mut stdin = verify.clone();
        stdin.push("-");
        let raw = std::fs::read(body).unwrap();
        assert_eq!(run(&stdin, &env, &raw).0, 0, "{style}");
        // One byte changed.
        let mut bad = verify.clone();
        bad.push(tampered);
        let (code, out, _) = run(&bad, &env, b"");
        assert_eq!((code, out.as_str()), (1, "invalid_signature\n"), "{style}");
        // Another secret.
        let other = if style == "standard" {
            STANDARD_SECRET_2
        } else {
            "another secret"
        };
        let (code, out, _) = run(&ok, &[("PORTCULLIS_WEBHOOK_SECRET", other)], b"");
        assert_eq!((code, out.as_str()), (1, "invalid_signature\n"), "{style}");
        // No signature header at all.
        let (code, out, _) = run(&["webhook", "verify", "--style", style, body], &env, b"");
        assert_eq!((code, out.as_str()), (1, "missing_signature\n"), "{style}");
    }
}

#[test]
fn webhook_rotation_expiry_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("event.json");
    std::fs::write(&body, b"{}").unwrap();
    let body = body.to_str().unwrap();
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    std::fs::write(&old, format!("{STANDARD_SECRET}\n")).unwrap();
    std::fs::write(&new, STANDARD_SECRET_2).unwrap();
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());

    // Signed with both secrets of a rotation: either one verifies it.
    let (code, out, err) = run(
        &[
            "webhook",
            "sign",
            "--style",
            "standard",
            "--secret-file",
            old,
            "--secret-file",
            new,
            "--id",
            "msg_rotation_1",
            "--json",
            body,
        ],
        &[],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["webhook-id"], "msg_rotation_1");
    assert_eq!(
        v["webhook-signature"]
            .as_str()
            .unwrap()
            .matches("v1,")
            .count(),
        2
    );
    let hs: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.as_str().unwrap()))
        .collect();
    for secret in [old, new] {
        let mut args = vec![
            "webhook",
            "verify",
            "--style",
            "standard",
            "--secret-file",
            secret,
        ];
        for h in &hs {
            args.push("-H");
            args.push(h);
        }
        args.push(body);
        let (code, out, err) = run(&args, &[], b"");
        assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    }

    // Signed an hour ago: correctly signed, but outside the tolerance.
    let an_hour_ago = (portcullis_domain::SystemClock.now().as_secs() - 3600).to_string();
    let env = [("PORTCULLIS_WEBHOOK_SECRET", "whsec_stripe_test_secret")];
    let (code, out, err) = run(
        &[
            "webhook",
            "sign",
            "--style",
            "stripe",
            "--timestamp",
            &an_hour_ago,
            body,
        ],
        &env,
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let h = out.trim_end();
    let verify = |tolerance: &str| {
        run(
            &[
                "webhook",
                "verify",
                "--style",
                "stripe",
                "--tolerance",
                tolerance,
                "-H",
                h,
                body,
            ],
            &env,
            b"",
        )
    };
    let (code, out, _) = verify("300s");
    assert_eq!((code, out.as_str()), (1, "signature_expired\n"));
    let (code, out, _) = verify("2h");
    assert_eq!((code, out.as_str()), (0, "ok\n"));

    // Not a Standard Webhooks secret; GitHub takes one secret only.
    let (code, _, err) = run(
        &["webhook", "sign", "--style", "standard", body],
        &[("PORTCULLIS_WEBHOOK_SECRET", "plain text")],
        b"",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("whsec_") && !err.contains("plain text"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "webhook",
            "sign",
            "--style",
            "github",
            "--secret-file",
            old,
            "--secret-file",
            new,
            body,
        ],
        &[],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("one secret"), "{err}");
}

#[test]
fn githubs_documented_example_verifies() {
    // docs.github.com, "Validating webhook deliveries": test values.
    let env = [("PORTCULLIS_WEBHOOK_SECRET", "It's a Secret to Everybody")];
    let header = "X-Hub-Signature-256: \
                  sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let (code, out, err) = run(
        &["webhook", "verify", "--style", "github", "-H", header, "-"],
        &env,
        b"Hello, World!",
    );
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    let (code, out, _) = run(
        &["webhook", "verify", "--style", "github", "-H", header, "-"],
        &env,
        b"Hello, World?",
    );
    assert_eq!((code, out.as_str()), (1, "invalid_signature\n"));
    let (code, out, _) = run(
        &["webhook", "sign", "--style", "github", "-"],
        &env,
        b"Hello, World!",
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "x-hub-signature-256: \
         sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17\n"
    );
}

//! Nothing acknowledged is lost: SIGKILL right after the API answered, restart, check.

use crate::support::*;

#[tokio::test]
async fn acknowledged_changes_survive_sigkill() {
    let s = Server::start(None);
    let (revoked_id, revoked_key) = s.create_key("to-revoke", "read:echo");
    let (rotated_id, _) = s.create_key("to-rotate", "read:echo");
    s.cli_json(&["keys", "revoke", &revoked_id]);
    let rot = s.cli_json(&["keys", "rotate", &rotated_id, "--grace", "0"]);
    let rotated_new = rot["key"].as_str().unwrap().to_string();
    let (created_id, created_key) = s.create_key("created", "read:echo");
    // The last change, answered, then SIGKILL at once.
    let upd = s.cli_json(&[
        "keys",
        "update",
        &created_id,
        "--name",
        "updated-last",
        "--scopes",
        "read:echo,write:x",
    ]);
    assert_eq!(upd["name"], "updated-last");
    let s = s.kill9().start(None);
    assert_eq!(
        get_key(&s, "/echo/1", &created_key).await.status(),
        200,
        "created key survived"
    );
    assert_eq!(
        get_key(&s, "/echo/1", &rotated_new).await.status(),
        200,
        "rotated key survived"
    );
    let r = get_key(&s, "/echo/1", &revoked_key).await;
    assert_eq!(
        json_of(r).await["error"],
        "api_key_revoked",
        "revocation survived"
    );
    let show = s.cli_json(&["keys", "show", &created_id]);
    assert_eq!(show["name"], "updated-last", "update survived");
    assert_eq!(show["scopes"], serde_json::json!(["read:echo", "write:x"]));
    let old = s.cli_json(&["keys", "show", &rotated_id]);
    assert_eq!(old["rotated_to"], rot["id"]);
    // The admin changes' audit events were stored before the answers, too.
    let events = audit_events(&s, "kind=api_key.created").await;
    assert!(
        events
            .iter()
            .any(|e| e["credential_id"] == created_id.as_str()),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let s = Server::start(None);
    let mut second = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(s.data_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server on the same data dir kept running");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another Portcullis server (pid {})",
            s.child.id()
        )),
        "{err}"
    );
    // The first one is untouched.
    let r = client().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

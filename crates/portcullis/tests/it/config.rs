//! Configuration errors stop startup with file, line and key.

use std::process::Command;

use crate::support::{check_config, BIN};

#[test]
fn config_errors_name_file_line_and_key() {
    let (code, err) = check_config("listen = \"127.0.0.1:0\"\nlisten_typo = 1\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:2:") && err.contains("listen_typo"),
        "{err}"
    );

    let (code, err) = check_config("[[routes]]\nname = \"x\"\nupstream = \"builtin:echo\"\npolicy = { all = [\"mtls\", { any = [\"jwt\", \"api_key\"] }] }\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:4:")
            && err.contains("routes[0].policy")
            && err.contains("mtls"),
        "{err}"
    );

    let (code, err) = check_config("[proxy]\ntimeout = \"fast\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:2:") && err.contains("proxy.timeout"),
        "{err}"
    );

    let (code, err) = check_config("listen = [\n");
    assert_eq!(code, 2);
    assert!(err.contains("portcullis.toml:"), "{err}");

    let (code, out) = check_config(
        "[[routes]]\nname = \"x\"\nupstream = \"http://127.0.0.1:9\"\npolicy = \"public\"\n",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn listen_and_data_dir_come_from_flags_env_or_file() {
    // The env var is applied when no flag is given: a bad address from env fails clearly.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--check"])
        .env("PORTCULLIS_LISTEN", "not-an-address")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

mod reload {
    use crate::support::*;
    use serde_json::json;

    const FIRST: &str = r#"
[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "builtin:echo"
policy = "api_key"
scopes = ["read:echo"]
"#;

    /// The routes change on SIGHUP, for the next request of a connection already open; a file
    /// that does not load changes nothing; settings held by the process are named, not applied.
    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_puts_the_files_routes_in_force_or_keeps_the_old_ones() {
        let s = Server::start(Some(FIRST));
        let path = s.dir.join("portcullis.toml");
        let (_, key) = s.create_key("k", "read:echo");
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        assert_eq!(on_conn(&mut c, &key).await.0, 200);
        let open = || async {
            client()
                .get(s.url("/open/x"))
                .send()
                .await
                .unwrap()
                .status()
        };
        assert_eq!(open().await, 404, "no such route yet");
        let sha =
            |t: &str| portcullis_core::crypto::hex(&portcullis_core::crypto::sha256(t.as_bytes()));
        let names = |v: &serde_json::Value| -> Vec<String> {
            v["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let before = s.cli_json(&["routes", "list"]);
        assert_eq!(names(&before), ["echo"]);
        assert_eq!(before["source"]["sha256"], sha(FIRST), "{before}");
        assert_eq!(before["routes"][0]["policy"], "api_key");
        assert_eq!(before["routes"][0]["scopes"], json!(["read:echo"]));

        let second = format!(
            "{}\n[[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\n\n[limits]\nmax_header_bytes = 32768\n",
            FIRST.replace("[\"read:echo\"]", "[\"write:x\"]")
        );
        std::fs::write(&path, &second).unwrap();
        assert!(s.signal("HUP"), "kill -HUP failed");
        s.eventually("the reload's log line", || {
            let seen = s.output().contains("SIGHUP: configuration reloaded");
            async move { seen.then_some(()) }
        })
        .await;
        assert_eq!(
            on_conn(&mut c, &key).await,
            (403, "insufficient_scope".into()),
            "the new scopes count on the open connection's next request"
        );
        assert_eq!(open().await, 200, "the new route serves");
        let after = s.cli_json(&["routes", "list"]);
        assert_eq!(names(&after), ["echo", "open"], "the routes in force");
        assert_eq!(after["source"]["sha256"], sha(&second));
        assert_eq!(after["routes"][0]["scopes"], json!(["write:x"]));
        assert_eq!(after["routes"][1]["policy"], "public");
        let (code, table, _) = s.cli(&["routes", "list"]);
        assert_eq!(code, 0);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("open ") && l.contains("builtin:echo")),
            "{table}"
        );
        let out = s.output();
        let warning = out
            .lines()
            .find(|l| l.contains("apply only after a restart"))
            .unwrap_or_else(|| panic!("no warning in {out}"));
        assert!(warning.trim_end().ends_with("sections=limits"), "{warning}");

        let events = audit_events(&s, "kind=config.reloaded").await;
        let e = &events[0];
        assert_eq!(e["actor"], "system:sighup", "{e}");
        assert_eq!(
            e["detail"]["sha256"],
            sha(&second),
            "the event names the file's content"
        );
        assert_eq!(e["detail"]["routes"], json!(["echo", "open"]));
        assert_eq!(e["detail"]["not_applied"], json!(["limits"]));

        // A file with an error: the routes in force stay, the log says where the error is.
        std::fs::write(
            &path,
            "[[routes]]\nname = \"x\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\nbogus = 1\n",
        )
        .unwrap();
        assert!(s.signal("HUP"), "kill -HUP failed");
        s.eventually("the refused reload's log line", || {
            let seen = s.output().contains("SIGHUP: configuration not reloaded");
            async move { seen.then_some(()) }
        })
        .await;
        let out = s.output();
        let line = out
            .lines()
            .find(|l| l.contains("configuration not reloaded"))
            .unwrap();
        assert!(
            line.contains("portcullis.toml:5") && line.contains("bogus"),
            "{line}"
        );
        assert_eq!(open().await, 200, "the routes in force stay");
        assert_eq!(
            s.cli_json(&["routes", "list"])["source"]["sha256"],
            sha(&second),
            "and so does what the admin API shows"
        );
        assert_eq!(
            on_conn(&mut c, &key).await,
            (403, "insufficient_scope".into())
        );
        let metrics = metrics_text(&s).await;
        for want in [
            "portcullis_config_reloads_total{outcome=\"ok\"} 1",
            "portcullis_config_reloads_total{outcome=\"error\"} 1",
        ] {
            assert!(metrics.contains(want), "{want} in {metrics}");
        }
        assert_eq!(
            audit_events(&s, "kind=config.reloaded").await.len(),
            1,
            "a reload that changed nothing is not an admin change"
        );
    }

    /// Without a file there is nothing to reload, and SIGHUP's default action (termination)
    /// does not happen either.
    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_without_a_file_keeps_serving() {
        let mut s = Server::start(None);
        assert!(s.signal("HUP"), "kill -HUP failed");
        s.eventually("the handler's log line", || {
            let seen = s.output().contains("nothing to reload");
            async move { seen.then_some(()) }
        })
        .await;
        assert!(s.child.try_wait().unwrap().is_none(), "the server stopped");
        let (_, key) = s.create_key("k", "read:echo");
        assert_eq!(get_key(&s, "/echo/x", &key).await.status(), 200);
        let view = s.cli_json(&["routes", "list"]);
        assert!(view["source"]["file"].is_null(), "{view}");
        assert_eq!(view["routes"][0]["name"], "echo", "the built-in default");
    }
}

//! Configuration errors stop startup with file, line and key.

use std::process::Command;

use crate::support::BIN;

fn serve_with(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("portcullis.toml");
    std::fs::write(&p, config).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(&p)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_file_line_and_key() {
    let (code, err) = serve_with("listen = \"127.0.0.1:0\"\nlisten_typo = 1\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:2:") && err.contains("listen_typo"),
        "{err}"
    );

    let (code, err) = serve_with("[[routes]]\nname = \"x\"\nupstream = \"builtin:echo\"\npolicy = { all = [\"mtls\", { any = [\"jwt\", \"api_key\"] }] }\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:4:")
            && err.contains("routes[0].policy")
            && err.contains("mtls"),
        "{err}"
    );

    let (code, err) = serve_with("[proxy]\ntimeout = \"fast\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("portcullis.toml:2:") && err.contains("proxy.timeout"),
        "{err}"
    );

    let (code, err) = serve_with("listen = [\n");
    assert_eq!(code, 2);
    assert!(err.contains("portcullis.toml:"), "{err}");

    let (code, out) = serve_with(
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

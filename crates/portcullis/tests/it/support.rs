//! Starting the real binary on an ephemeral loopback port, and small helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A running server with captured output.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub output: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `portcullis serve` in a fresh data dir, optionally with a config file body.
    pub fn start(config: Option<&str>) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, config);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `portcullis serve` on an existing data dir.
    pub fn start_in(dir: &Path, config: Option<&str>) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.join("data"));
        if let Some(c) = config {
            let p = dir.join("portcullis.toml");
            std::fs::write(&p, c).unwrap();
            cmd.arg("--config").arg(p);
        }
        cmd.env_remove("PORTCULLIS_ADMIN_TOKEN")
            .env_remove("PORTCULLIS_MASTER_KEY")
            .env("PORTCULLIS_LOG", "info")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn portcullis");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("portcullis listening on http://") {
                    let _ = tx.send(a.to_string());
                }
                out.lock().unwrap().push_str(&line);
                out.lock().unwrap().push('\n');
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; output:\n{}", output.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            output,
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs `portcullis <args> --server … --data-dir …`; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--server")
            .arg(self.url(""))
            .arg("--data-dir")
            .arg(self.data_dir())
            .env_remove("PORTCULLIS_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a CLI command with `--json` that must succeed, and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.cli(&a);
        assert_eq!(code, 0, "portcullis {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Creates a key with these scopes; returns (id, raw key).
    pub fn create_key(&self, name: &str, scopes: &str) -> (String, String) {
        let v = self.cli_json(&["keys", "create", "--name", name, "--scopes", scopes]);
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// SIGKILL, no goodbye. The data directory stays for [`Stopped::start`].
    pub fn kill9(mut self) -> Stopped {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Stopped {
            dir: self.dir.clone(),
            tmp: self._tmp.take(),
        }
    }

    /// Sends the signal `name` (`TERM`, `USR1` …) to the server; whether `kill` succeeded.
    pub fn signal(&self, name: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }

    pub fn admin(&self) -> reqwest::Client {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token()).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    }

    /// Polls `f` until it returns Some, for at most 10 s.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A killed server's directory, ready to start again.
pub struct Stopped {
    pub dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl Stopped {
    /// Starts a new server on the same data directory.
    pub fn start(mut self, config: Option<&str>) -> Server {
        let mut s = Server::start_in(&self.dir, config);
        s._tmp = self.tmp.take();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn get_key(s: &Server, path: &str, key: &str) -> reqwest::Response {
    client()
        .get(s.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

/// A client registered through the CLI with `scopes`: its id and secret.
pub fn register(s: &Server, scopes: &str) -> (String, String) {
    let c = s.cli_json(&["clients", "create", "--name", "svc", "--scopes", scopes]);
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

pub async fn token_form(s: &Server, basic: Option<(&str, &str)>, body: &str) -> reqwest::Response {
    let mut r = client()
        .post(s.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some((id, secret)) = basic {
        r = r.basic_auth(id, Some(secret));
    }
    r.send().await.unwrap()
}

/// `GET path` with `Authorization: Bearer token`.
pub async fn bearer(s: &Server, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

/// Sends raw bytes on a fresh connection and returns what comes back until the server
/// closes or 2 s pass (for requests a well-behaved client library would not send).
pub async fn raw(s: &Server, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let req = request.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on an open keep-alive connection; its status and JSON `error` (or "").
pub async fn on_conn(c: &mut tokio::net::TcpStream, key: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /echo/same HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .expect("a content-length")
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body: serde_json::Value =
                    serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
                let error = body["error"].as_str().unwrap_or("").to_owned();
                return (status, error);
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("an answer in time")
}

/// The audit events the admin API lists for `query` (e.g. `kind=api_key.created`), newest
/// first.
pub async fn audit_events(s: &Server, query: &str) -> Vec<Value> {
    let v = json_of(
        s.admin()
            .get(s.url(&format!("/admin/v1/audit?{query}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    v["events"].as_array().unwrap().clone()
}

/// The server's `/metrics` text.
/// The admin API's OpenAPI document (served without a token).
pub async fn openapi_doc(s: &Server) -> Value {
    json_of(
        client()
            .get(s.url("/admin/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

pub async fn metrics_text(s: &Server) -> String {
    client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `portcullis serve --check` on a file holding `config`: the exit code and stderr.
pub fn check_config(config: &str) -> (i32, String) {
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

/// The audit events for `query`, once there is at least one (decisions and notices are
/// stored within the flush interval, not before the answer).
pub async fn audit_events_eventually(s: &Server, query: &str) -> Vec<Value> {
    s.eventually(&format!("audit events for {query}"), || async {
        let e = audit_events(s, query).await;
        (!e.is_empty()).then_some(e)
    })
    .await
}

/// The audit trail's decisions on `credential_id`, once there is one.
pub async fn decisions_on(s: &Server, credential_id: &str) -> Vec<Value> {
    audit_events_eventually(
        s,
        &format!("kind=auth.decision&credential_id={credential_id}"),
    )
    .await
}

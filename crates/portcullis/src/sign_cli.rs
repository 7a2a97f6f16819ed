//! The client side on the command line: `portcullis sign` (print the headers that sign a
//! request), `portcullis request` (sign and send it) and `portcullis webhook sign|verify`.
//!
//! Secrets never come from a command-line value (it would show in `ps` and in the shell's
//! history): a file (`--secret-file`) or the environment (`PORTCULLIS_HMAC_SECRET`,
//! `PORTCULLIS_WEBHOOK_SECRET`). Nothing here prints a secret, not even in an error.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_client::{Credential, Nonce, Outgoing, Scheme};
use portcullis_core::hmac::http_sig::Algorithm;
use portcullis_core::hmac::webhook::{self, Style, Tolerance, WebhookSecret};
use portcullis_core::Timestamp;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::cli::CliError;
use crate::config::parse_duration;

/// Where the request-signing secret is read when there is no `--secret-file`.
const HMAC_SECRET_ENV: &str = "PORTCULLIS_HMAC_SECRET";
/// Where the webhook secret is read when there is no `--secret-file`.
const WEBHOOK_SECRET_ENV: &str = "PORTCULLIS_WEBHOOK_SECRET";
/// How long `portcullis request` waits for the whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest body read from a file or stdin.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// The request-signing schemes, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// Portcullis's native scheme (`X-API-Key`, `X-Timestamp`, `X-Nonce`, `X-Signature`).
    Hmac,
    /// RFC 9421 HTTP Message Signatures.
    #[value(name = "http_signature", alias = "http-signature")]
    HttpSignature,
    /// AWS Signature Version 4.
    Sigv4,
    /// Kong's `hmac-auth` format (a route with `hmac_layout = "kong"`).
    Kong,
    /// Apache APISIX's `hmac-auth` format (a route with `hmac_layout = "apisix"`).
    Apisix,
}

/// What `portcullis sign` and `portcullis request` sign, and with what.
#[derive(Debug, Args)]
pub struct SignOpts {
    /// The scheme: hmac (native), sigv4, http_signature (RFC 9421), kong or apisix.
    #[arg(long, value_enum, default_value_t = SchemeArg::Hmac)]
    pub scheme: SchemeArg,
    /// The credential's key id (`key_id` of `portcullis hmac create`).
    #[arg(long, visible_alias = "hmac-key-id", env = "PORTCULLIS_KEY_ID")]
    pub key_id: String,
    /// A file holding the secret (default: the environment variable PORTCULLIS_HMAC_SECRET).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// SigV4: the region of the credential scope.
    #[arg(long, default_value = portcullis_client::SIGV4_DEFAULT_REGION)]
    pub region: String,
    /// SigV4: the service of the credential scope.
    #[arg(long, default_value = portcullis_client::SIGV4_DEFAULT_SERVICE)]
    pub service: String,
    /// http_signature: sign with this unencrypted PKCS#8 private key (PEM or DER) instead
    /// of the secret.
    #[arg(long, requires = "alg")]
    pub private_key: Option<PathBuf>,
    /// The private key's algorithm: ed25519, ecdsa-p256-sha256, rsa-pss-sha512 or
    /// rsa-v1_5-sha256.
    #[arg(long, value_parser = parse_alg, requires = "private_key")]
    pub alg: Option<Algorithm>,
    /// A header to send, `Name: value` (repeatable). SigV4 signs `content-type`; a `Host`
    /// given here is the authority signed.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The body: the text itself, `@FILE` for a file's exact bytes, `@-` for stdin.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,
    /// The method (GET, POST, …).
    pub method: String,
    /// The URL, as it will be sent (`http://host:port/path?query`).
    pub url: String,
}

/// `portcullis sign …`
#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub opts: SignOpts,
    /// Print a JSON object instead of `Name: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// `portcullis request …`
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub opts: SignOpts,
    /// Print the status line and the response headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
}

/// The webhook conventions, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StyleArg {
    /// GitHub's `X-Hub-Signature-256` (one secret).
    Github,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[value(alias = "standard-webhooks")]
    Standard,
    /// Stripe's `Stripe-Signature`.
    Stripe,
}

impl StyleArg {
    fn style(self) -> Style {
        match self {
            StyleArg::Github => Style::GitHub,
            StyleArg::Standard => Style::StandardWebhooks,
            StyleArg::Stripe => Style::Stripe,
        }
    }
}

/// The convention and the secrets of a webhook.
#[derive(Debug, Args)]
pub struct WebhookKeys {
    /// The convention: stripe, github or standard (Standard Webhooks).
    #[arg(long, value_enum)]
    pub style: StyleArg,
    /// A file holding a secret; repeat for a rotation (sign with each, verify with any).
    /// Default: the environment variable PORTCULLIS_WEBHOOK_SECRET.
    #[arg(long)]
    pub secret_file: Vec<PathBuf>,
}

/// `portcullis webhook …`
#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// Print the headers that sign a webhook body.
    Sign {
        #[command(flatten)]
        keys: WebhookKeys,
        /// Standard Webhooks: the message id (default: a random `msg_…`).
        #[arg(long)]
        id: Option<String>,
        /// Sign as of this Unix time in seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// Print a JSON object instead of `Name: value` lines.
        #[arg(long)]
        json: bool,
        /// The body file (`-` or nothing: stdin).
        body: Option<PathBuf>,
    },
    /// Verify a received webhook: prints `ok` (exit 0) or the error code (exit 1).
    Verify {
        #[command(flatten)]
        keys: WebhookKeys,
        /// How far the signed timestamp may be from now, either way (e.g. 300s, 5m).
        #[arg(long, default_value = "300s")]
        tolerance: String,
        /// A received header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The body file, exactly as received (`-` or nothing: stdin).
        body: Option<PathBuf>,
    },
    /// Register an endpoint for Portcullis's own events (admin API); its secret is printed
    /// once.
    Create {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// Where deliveries are POSTed (https://, or http:// to a loopback address).
        #[arg(long)]
        url: String,
        /// Event types, comma-separated: api_key.new_ip, api_key.revoked,
        /// auth.failure_burst, webhook.test, or * for all.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// A note for people.
        #[arg(long)]
        description: Option<String>,
    },
    /// List registered endpoints (never their secrets).
    List {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this endpoint id.
        #[arg(long)]
        after: Option<String>,
    },
    /// One endpoint.
    Show {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// The endpoint id (`wh_…`).
        id: String,
    },
    /// Delete an endpoint and its delivery log.
    Delete {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// The endpoint id.
        id: String,
    },
    /// A new secret, printed once; the old one keeps signing beside it for 24 hours.
    RotateSecret {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// The endpoint id.
        id: String,
    },
    /// Send a `webhook.test` event to the endpoint now.
    Test {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// The endpoint id.
        id: String,
    },
    /// The endpoint's delivery log, newest first.
    Deliveries {
        #[command(flatten)]
        conn: crate::cli::Conn,
        /// The endpoint id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after this delivery id.
        #[arg(long)]
        after: Option<String>,
    },
}

/// Runs `portcullis sign`: prints the headers to add.
pub fn sign(args: &SignArgs) -> Result<bool, CliError> {
    let prepared = Prepared::new(&args.opts)?;
    let signed = prepared.sign()?;
    print_headers(
        signed
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or_default())),
        args.json,
    );
    Ok(true)
}

/// Runs `portcullis request`: signs, sends, prints the answer's body; `Ok(false)` (exit 1)
/// when the status is not 2xx.
pub async fn request(args: &RequestArgs) -> Result<bool, CliError> {
    let prepared = Prepared::new(&args.opts)?;
    let signed = prepared.sign()?;
    let mut builder = http::Request::builder()
        .method(prepared.method.clone())
        .uri(prepared.uri.clone());
    if let Some(h) = builder.headers_mut() {
        h.extend(prepared.headers.clone());
        for (name, value) in signed {
            h.insert(name, value);
        }
    }
    let req = builder
        .body(Full::new(Bytes::from(prepared.body.clone())))
        .map_err(|e| CliError(format!("cannot build the request: {e}")))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| CliError(format!("TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let target = format!(
        "{}://{}",
        prepared.uri.scheme_str().unwrap_or("http"),
        prepared.uri.authority().map_or("", |a| a.as_str())
    );
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CliError(format!("cannot reach {target}: {}", error_chain(&e))))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| CliError(format!("reading the answer failed: {e}")))?
            .to_bytes();
        Ok::<_, CliError>((parts, body))
    };
    let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| CliError(format!("{target} did not answer within 60s")))??;
    let mut out = std::io::stdout().lock();
    let mut head = String::new();
    if args.include {
        head.push_str(&format!(
            "{:?} {} {}\r\n",
            parts.version,
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        ));
        for (name, value) in &parts.headers {
            head.push_str(&format!(
                "{name}: {}\r\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        head.push_str("\r\n");
    }
    out.write_all(head.as_bytes())
        .and_then(|()| out.write_all(&body))
        .and_then(|()| out.flush())
        .map_err(|e| CliError(format!("writing the answer: {e}")))?;
    if parts.status.is_success() {
        return Ok(true);
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = v["error"].as_str().unwrap_or("");
    let description = v["error_description"].as_str().unwrap_or("");
    let mut msg = format!("error: {}", parts.status);
    for part in [code, description] {
        if !part.is_empty() {
            msg.push_str(": ");
            msg.push_str(part);
        }
    }
    eprintln!("{msg}");
    Ok(false)
}

/// Runs `portcullis webhook …`: signing and checking here, endpoint management through the
/// admin API (`crate::webhook_cli`).
pub async fn webhook_any(cmd: WebhookCmd) -> Result<bool, CliError> {
    match cmd {
        WebhookCmd::Sign { .. } | WebhookCmd::Verify { .. } => webhook(&cmd),
        admin => crate::webhook_cli::run(admin).await.map(|()| true),
    }
}

/// Runs `portcullis webhook sign|verify`.
pub fn webhook(cmd: &WebhookCmd) -> Result<bool, CliError> {
    match cmd {
        WebhookCmd::Sign {
            keys,
            id,
            timestamp,
            json,
            body,
        } => {
            let style = keys.style.style();
            let secrets = webhook_secrets(keys)?;
            let body = read_body_file(body.as_deref())?;
            let id = match id {
                Some(id) => id.clone(),
                None => {
                    let nonce = Nonce::random().map_err(|e| CliError(e.to_string()))?;
                    format!("msg_{}", nonce.as_str())
                }
            };
            let now = timestamp.map_or_else(portcullis_client::now, Timestamp::from_secs);
            let headers = webhook::sign(style, &secrets, &id, &body, now).map_err(|e| match e {
                webhook::WebhookError::Unsignable("secrets") if style == Style::GitHub => {
                    CliError("GitHub's header carries one signature: give one secret".into())
                }
                e => CliError(format!("cannot sign: {e}")),
            })?;
            print_headers(headers.iter().map(|(n, v)| (*n, v.as_str())), *json);
            Ok(true)
        }
        WebhookCmd::Verify {
            keys,
            tolerance,
            headers,
            body,
        } => {
            let style = keys.style.style();
            let secrets = webhook_secrets(keys)?;
            let secs = parse_duration(tolerance)
                .map_err(|e| CliError(format!("--tolerance: {e}")))?
                .as_secs();
            let secs = u32::try_from(secs).unwrap_or(u32::MAX);
            let tolerance = Tolerance {
                past_secs: secs,
                future_secs: secs,
            };
            let headers = header_map(headers)?;
            let body = read_body_file(body.as_deref())?;
            let now = portcullis_client::now();
            match webhook::verify(style, &headers, &body, &secrets, tolerance, now) {
                Ok(_) => {
                    println!("ok");
                    Ok(true)
                }
                Err(e) => {
                    println!("{}", e.code());
                    eprintln!("error: {e}");
                    Ok(false)
                }
            }
        }
        _ => Err(CliError("not a signing command".into())),
    }
}

/// A request ready to sign: parsed options, the body read, the credential loaded.
struct Prepared {
    scheme: Scheme,
    credential: Credential,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Prepared {
    fn new(o: &SignOpts) -> Result<Self, CliError> {
        let method = Method::from_bytes(o.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| CliError(format!("`{}` is not an HTTP method", o.method)))?;
        let uri: Uri = o
            .url
            .parse()
            .map_err(|e| CliError(format!("`{}` is not a URL: {e}", o.url)))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(CliError(format!(
                    "`{}`: give an absolute http:// or https:// URL",
                    o.url
                )))
            }
        }
        let headers = header_map(&o.headers)?;
        let body = match &o.data {
            None => Vec::new(),
            Some(d) => match d.strip_prefix('@') {
                Some(file) => read_body_file(Some(Path::new(file)))?,
                None => d.as_bytes().to_vec(),
            },
        };
        let scheme = match o.scheme {
            SchemeArg::Hmac => Scheme::Native,
            SchemeArg::Kong => Scheme::Gateway(portcullis_core::hmac::compat::Format::Kong),
            SchemeArg::Apisix => Scheme::Gateway(portcullis_core::hmac::compat::Format::Apisix),
            SchemeArg::HttpSignature => Scheme::HttpSignature,
            SchemeArg::Sigv4 => Scheme::sigv4(o.region.clone(), o.service.clone()),
        };
        let credential = match (&o.private_key, o.alg) {
            (Some(file), Some(alg)) => {
                if o.scheme != SchemeArg::HttpSignature {
                    return Err(CliError(
                        "--private-key signs only --scheme http_signature".into(),
                    ));
                }
                let pem = Zeroizing::new(read_file(file)?);
                Credential::private_key(o.key_id.clone(), alg, &pem)
                    .map_err(|e| CliError(format!("{}: {e}", file.display())))?
            }
            _ => {
                let secret = read_secret(o.secret_file.as_deref(), HMAC_SECRET_ENV)?;
                Credential::hmac(o.key_id.clone(), secret.as_bytes())
                    .map_err(|e| CliError(e.to_string()))?
            }
        };
        Ok(Self {
            scheme,
            credential,
            method,
            uri,
            headers,
            body,
        })
    }

    fn sign(&self) -> Result<Vec<(HeaderName, HeaderValue)>, CliError> {
        let out = Outgoing {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body: &self.body,
        };
        let nonce = Nonce::random().map_err(|e| CliError(e.to_string()))?;
        portcullis_client::sign_parts(
            &self.scheme,
            &self.credential,
            &out,
            portcullis_client::now(),
            &nonce,
        )
        .map_err(|e| CliError(format!("cannot sign: {e}")))
    }
}

/// `Name: value` lines, or one JSON object.
fn print_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>, json: bool) {
    if json {
        let mut m = Map::new();
        for (name, value) in headers {
            m.insert(name.to_owned(), Value::String(value.to_owned()));
        }
        println!("{}", Value::Object(m));
    } else {
        for (name, value) in headers {
            println!("{name}: {value}");
        }
    }
}

/// `Name: value` options as a header map.
fn header_map(headers: &[String]) -> Result<HeaderMap, CliError> {
    let mut map = HeaderMap::new();
    for h in headers {
        let bad = || CliError(format!("-H `{h}`: expected `Name: value`"));
        let (name, value) = h.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// The secret from `file`, else from the environment variable `env`; one trailing line
/// ending removed (what an editor or `echo` adds).
fn read_secret(file: Option<&Path>, env: &str) -> Result<Zeroizing<String>, CliError> {
    let text = match file {
        Some(f) => Zeroizing::new(
            String::from_utf8(read_file(f)?)
                .map_err(|_| CliError(format!("{}: the secret is not UTF-8 text", f.display())))?,
        ),
        None => match std::env::var(env) {
            Ok(v) => Zeroizing::new(v),
            Err(std::env::VarError::NotPresent) => {
                return Err(CliError(format!(
                    "no secret: set {env} or pass --secret-file FILE"
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(CliError(format!("{env} is not UTF-8 text")))
            }
        },
    };
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(CliError(match file {
            Some(f) => format!("{}: the secret is empty", f.display()),
            None => format!("{env} is empty"),
        }));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// The webhook secrets, parsed for the style: each `--secret-file`, else the environment.
fn webhook_secrets(keys: &WebhookKeys) -> Result<Vec<WebhookSecret>, CliError> {
    let style = keys.style.style();
    let texts = if keys.secret_file.is_empty() {
        vec![(
            WEBHOOK_SECRET_ENV.to_owned(),
            read_secret(None, WEBHOOK_SECRET_ENV)?,
        )]
    } else {
        keys.secret_file
            .iter()
            .map(|f| {
                Ok((
                    f.display().to_string(),
                    read_secret(Some(f), WEBHOOK_SECRET_ENV)?,
                ))
            })
            .collect::<Result<Vec<_>, CliError>>()?
    };
    texts
        .iter()
        .map(|(source, text)| {
            webhook::parse_secret(style, text).map_err(|_| {
                let form = match style {
                    Style::StandardWebhooks => "whsec_ then base64 of 24 to 64 bytes",
                    Style::Stripe | Style::GitHub => "1 to 1024 bytes of text",
                };
                CliError(format!(
                    "{source}: not a {} secret (expected {form})",
                    keys.style
                        .to_possible_value()
                        .map_or_else(String::new, |v| v.get_name().to_owned())
                ))
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    read_limited(f).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))
}

/// A body file's exact bytes; stdin for `-` or none.
fn read_body_file(path: Option<&Path>) -> Result<Vec<u8>, CliError> {
    match path {
        Some(p) if p.as_os_str() != "-" => read_file(p),
        _ => read_limited(std::io::stdin().lock())
            .map_err(|e| CliError(format!("reading stdin: {e}"))),
    }
}

fn read_limited(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(MAX_BODY + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_BODY {
        return Err(std::io::Error::other("larger than 64 MiB"));
    }
    Ok(out)
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    match Algorithm::from_name(s) {
        Some(Algorithm::HmacSha256) => {
            Err("hmac-sha256 signs with the secret: leave --private-key and --alg out".to_owned())
        }
        Some(alg) => Ok(alg),
        None => Err(format!(
            "`{s}`: expected ed25519, ecdsa-p256-sha256, rsa-pss-sha512 or rsa-v1_5-sha256"
        )),
    }
}

/// An error and its sources, `a: b: c` (hyper's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        let m = header_map(&["Content-Type: application/json".into(), "X-A:  b ".into()]).unwrap();
        assert_eq!(m["content-type"], "application/json");
        assert_eq!(m["x-a"], "b");
        let e = header_map(&["no colon".into()]).unwrap_err();
        assert!(e.0.contains("no colon"), "{}", e.0);
        assert!(header_map(&["bad name: v".into()]).is_err());
    }

    #[test]
    fn a_secret_file_loses_one_line_ending_only() {
        let dir = std::env::temp_dir().join(format!("portcullis-sign-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "It's a Secret to Everybody \n").unwrap();
        assert_eq!(
            read_secret(Some(&f), "X").unwrap().as_str(),
            "It's a Secret to Everybody "
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret(Some(&f), "X").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn algorithms_parse_by_their_rfc_9421_names() {
        assert_eq!(parse_alg("ed25519"), Ok(Algorithm::Ed25519));
        assert_eq!(parse_alg("rsa-v1_5-sha256"), Ok(Algorithm::RsaV15Sha256));
        assert!(parse_alg("hmac-sha256").is_err());
        assert!(parse_alg("es256").is_err());
    }
}

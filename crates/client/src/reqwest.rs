//! Signing `reqwest` requests (feature `reqwest`).
//!
//! ```no_run
//! use portcullis_client::{Credential, Scheme};
//!
//! # async fn run() -> Result<(), portcullis_client::Error> {
//! let credential = Credential::hmac("hk_partner", std::env::var("PORTCULLIS_HMAC_SECRET").unwrap_or_default())?;
//! let client = reqwest::Client::new();
//! let builder = client
//!     .post("http://127.0.0.1:8080/hmac/echo/orders")
//!     .header("content-type", "application/json")
//!     .body(r#"{"amount":100}"#);
//! let response = portcullis_client::reqwest::send(builder, &Scheme::Native, &credential).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! The body must be in memory (bytes or a string, not a stream): every scheme signs it.
//! Sign last: a header added after [`sign`] may break a SigV4 signature (`content-type`),
//! and a redirect followed by `reqwest` is a new request the signature does not cover.

use ::reqwest::{Request, RequestBuilder, Response};

use crate::{sign_parts, Credential, Error, Nonce, Outgoing, Scheme, Timestamp};

/// Signs `request` in place under `scheme` at `now` with a fresh nonce, inserting the
/// signature headers (replacing any of the same name).
pub fn sign(
    request: &mut Request,
    scheme: &Scheme,
    credential: &Credential,
    now: Timestamp,
) -> Result<(), Error> {
    let body = match request.body() {
        None => &[][..],
        Some(b) => b.as_bytes().ok_or(Error::StreamingBody)?,
    };
    // A fragment is never sent.
    let url = request.url().as_str();
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Error::IncompleteUri("a valid URI"))?;
    let out = Outgoing {
        method: request.method(),
        uri: &uri,
        headers: request.headers(),
        body,
    };
    let headers = sign_parts(scheme, credential, &out, now, &Nonce::random()?)?;
    for (name, value) in headers {
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// Builds the request, signs it at [`crate::now`] and sends it with the builder's client.
pub async fn send(
    builder: RequestBuilder,
    scheme: &Scheme,
    credential: &Credential,
) -> Result<Response, Error> {
    let (client, request) = builder.build_split();
    let mut request = request?;
    sign(&mut request, scheme, credential, crate::now())?;
    Ok(client.execute(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::hmac::native::{self, Layout};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECRET: &str = "hs_reqwest_test_secret_0123456789abcdef";

    /// A one-request server: verifies the native signature of what it receives with the
    /// core verifier and answers 200 (valid) or 401.
    async fn verifying_server() -> (String, tokio::task::JoinHandle<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let (head_len, path, headers) = loop {
                let mut chunk = [0u8; 4096];
                let n = c.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed early");
                buf.extend_from_slice(&chunk[..n]);
                let mut h = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut h);
                if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
                    let mut map = http::HeaderMap::new();
                    for h in req.headers.iter() {
                        map.append(
                            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                            http::HeaderValue::from_bytes(h.value).unwrap(),
                        );
                    }
                    break (len, req.path.unwrap().to_owned(), map);
                }
            };
            let want: usize = headers
                .get("content-length")
                .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
            while buf.len() < head_len + want {
                let mut chunk = [0u8; 4096];
                let n = c.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = &buf[head_len..head_len + want];
            let (p, q) = path
                .split_once('?')
                .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
            let signed = native::parse(&headers, Layout::Native).unwrap().unwrap();
            let r = native::Request {
                method: &http::Method::POST,
                path: p,
                query: q,
                body,
            };
            let e = native::Expect {
                window_secs: 300,
                now: crate::now(),
            };
            let ok = native::verify(&signed, &r, &[SECRET.as_bytes()], &e).is_ok()
                && headers.contains_key("x-body-hash");
            let status = if ok { "200 OK" } else { "401 Unauthorized" };
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            c.write_all(answer.as_bytes()).await.unwrap();
            ok
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_signed_reqwest_request_verifies_on_the_other_side() {
        let (addr, server) = verifying_server().await;
        let credential = Credential::hmac("hk_reqwest", SECRET).unwrap();
        let client = ::reqwest::Client::builder().no_proxy().build().unwrap();
        let builder = client
            .post(format!("http://{addr}/hmac/echo/a%20b?z=1&a=x+y#frag"))
            .header("content-type", "application/json")
            .body(r#"{"amount":100}"#);
        let response = send(builder, &Scheme::Native, &credential).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(server.await.unwrap());
    }

    #[test]
    fn a_bodiless_request_signs_without_a_digest() {
        let credential = Credential::hmac("hk_reqwest", SECRET).unwrap();
        let mut req = Request::new(http::Method::GET, "http://127.0.0.1:1/x".parse().unwrap());
        sign(&mut req, &Scheme::HttpSignature, &credential, crate::now()).unwrap();
        assert!(req.headers().contains_key("signature-input"));
        assert!(!req.headers().contains_key("content-digest"));
    }
}

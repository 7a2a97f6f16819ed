//! Sending webhook deliveries: one `POST` of a signed JSON body over HTTP(S), with the
//! upstreams' TLS trust (the public roots and `proxy.ca_file`), no redirects followed and no
//! cookies — the adapter behind [`portcullis_domain::webhooks::Sender`]. The retry loop, the
//! signing and the per-attempt timeout are the domain's (`webhooks::Deliverer`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_domain::webhooks::{SendError, Sender};

use crate::config::ProxyConfig;

/// Most bytes of an answer read (then dropped): enough to keep the connection reusable.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

const USER_AGENT: &str = concat!("portcullis-webhooks/", env!("CARGO_PKG_VERSION"));

/// An HTTP(S) client for webhook endpoints.
pub struct HttpSender {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpSender {
    /// A client trusting what the upstreams trust, connecting within `connect_timeout`.
    pub fn new(proxy: &ProxyConfig, connect_timeout: Duration) -> Result<Self, String> {
        let tls = crate::proxy::tls_config(proxy)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https),
        })
    }
}

#[async_trait]
impl Sender for HttpSender {
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> Result<u16, SendError> {
        let uri: http::Uri = url.parse().map_err(|_| SendError::BadUrl)?;
        let mut req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT);
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|_| SendError::BadUrl)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| SendError::Unreachable(error_text(&e)))?;
        let status = resp.status().as_u16();
        // The answer's body is not used; reading a little of it lets the connection be reused.
        let _ = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        Ok(status)
    }
}

/// The error and its causes, one line (they name no URL, header or body).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

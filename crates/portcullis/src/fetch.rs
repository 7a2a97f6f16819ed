//! Talking to external issuers: `GET` of their metadata and JWKS, `POST` to their
//! introspection endpoints, over HTTP(S) with the upstreams' TLS trust (the public roots and
//! `proxy.ca_file`), a deadline, a size bound, no redirects and no cookies — the adapter
//! behind [`portcullis_domain::authn::issuers::Fetch`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_domain::authn::issuers::{fetchable, Fetch, FetchError};

use crate::config::ProxyConfig;

/// The longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP(S) client for issuers' documents.
pub struct HttpFetch {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpFetch {
    /// A client trusting what the upstreams trust.
    pub fn new(proxy: &ProxyConfig) -> Result<Self, String> {
        let tls = crate::proxy::tls_config(proxy)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }
}

impl HttpFetch {
    /// Sends `req` and reads a 200 answer's body, at most `max_bytes`, within the deadline.
    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        max_bytes: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Unreachable(e.to_string()))?;
            if resp.status() != http::StatusCode::OK {
                return Err(FetchError::Status(resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Unreachable(e.to_string())
                    }
                })?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| FetchError::Unreachable("timed out".into()))?
    }
}

/// `url` checked and parsed. Checked here too: a metadata document names the JWKS URL.
fn target(url: &str) -> Result<http::Uri, FetchError> {
    if !fetchable(url) {
        return Err(FetchError::BadDocument(
            "not an https:// (or loopback http://) URL",
        ));
    }
    url.parse()
        .map_err(|_| FetchError::BadDocument("not a URL"))
}

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

#[async_trait]
impl Fetch for HttpFetch {
    async fn get(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
        let req = http::Request::get(target(url)?)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::default())
            .map_err(|_| FetchError::BadDocument("not a URL"))?;
        self.send(req, max_bytes).await
    }

    async fn post_form(
        &self,
        url: &str,
        authorization: &str,
        body: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let req = http::Request::post(target(url)?)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|_| FetchError::BadDocument("not a URL"))?;
        self.send(req, max_bytes).await
    }
}

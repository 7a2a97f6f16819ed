//! Fetching external issuers' metadata and JWKS: `GET` over HTTP(S) with the upstreams' TLS
//! trust (the public roots and `proxy.ca_file`), a deadline, a size bound, no redirects and
//! no cookies — the adapter behind [`portcullis_domain::authn::issuers::Fetch`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_domain::authn::issuers::{fetchable, Fetch, FetchError};

use crate::config::ProxyConfig;

/// The longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP(S) client for issuers' documents.
pub struct HttpFetch {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
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

#[async_trait]
impl Fetch for HttpFetch {
    async fn get(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
        // Checked here too: a metadata document names the JWKS URL.
        if !fetchable(url) {
            return Err(FetchError::BadDocument(
                "not an https:// (or loopback http://) URL",
            ));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|_| FetchError::BadDocument("not a URL"))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| FetchError::BadDocument("not a URL"))?;
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

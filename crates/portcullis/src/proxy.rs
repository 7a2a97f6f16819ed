//! The reverse proxy: pooled upstream connections, streamed bodies, hop-by-hop headers removed,
//! timeouts mapped to 502/504.

use std::error::Error as StdError;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderMap, HeaderName, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_core::error::GatewayError;

use crate::config::ProxyConfig;

/// The upstream client.
#[derive(Clone)]
pub struct Proxy {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

impl Proxy {
    /// Builds the pooled client.
    pub fn new(cfg: &ProxyConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(https);
        Self {
            client,
            timeout: cfg.timeout,
        }
    }

    /// Sends `req` (absolute URI already set) and returns the upstream's response.
    pub async fn forward(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let fut = self.client.request(req);
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => {
                if is_body_too_large(&e) {
                    Err(GatewayError::BodyTooLarge)
                } else {
                    tracing::warn!(error = %e, source = ?e.source(), "upstream request failed");
                    Err(GatewayError::UpstreamUnavailable)
                }
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::new(body)))
            }
        }
    }
}

fn is_body_too_large(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}

//! The parts of an HTTP request that authentication reads, borrowed from the adapter's request.

use std::net::IpAddr;

/// A request as the schemes see it. Built by the HTTP adapter; nothing here is trusted yet.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// The path as sent (percent-encoding preserved), without the query.
    pub path: &'a str,
    /// The raw query string, without the `?`, if any.
    pub query: Option<&'a str>,
    /// The scheme the caller used, `http` or `https`: the listener's, or what a trusted
    /// proxy's `X-Forwarded-Proto` says.
    pub scheme: &'a str,
    /// The authority the caller addressed, as sent: a trusted proxy's `X-Forwarded-Host`,
    /// else the request target's authority, else `Host`.
    pub authority: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The address of the peer that connected to us.
    pub client_ip: IpAddr,
    /// What the caller's connection remembers between its requests; `None` when there is
    /// no connection to remember on (tests, internal callers).
    pub conn: Option<&'a ConnMemo>,
    /// The whole body, where the route's schemes sign it (the adapter buffers it, bounded,
    /// before authentication); `None`: not read (it streams to the upstream afterwards).
    pub body: Option<&'a [u8]>,
}

impl RequestParts<'_> {
    /// The URI the caller addressed, without the query: `scheme://authority/path` (what a
    /// DPoP proof's `htu` names); `None` without an authority.
    pub fn target_uri(&self) -> Option<String> {
        let authority = self.authority?;
        let mut s =
            String::with_capacity(self.scheme.len() + 3 + authority.len() + self.path.len());
        s.push_str(self.scheme);
        s.push_str("://");
        s.push_str(authority);
        s.push_str(self.path);
        Some(s)
    }
}

/// What one caller connection remembers between its requests, for the schemes to reuse. The
/// adapter keeps one per connection and lends it to each request; what is kept is a pure
/// function of what the caller sent (never a decision), so using it changes no outcome.
#[derive(Debug, Default)]
pub struct ConnMemo {
    /// The API key parsed last.
    pub api_key: crate::api_key::ParseMemo,
}

impl<'a> RequestParts<'a> {
    /// The value of the first query parameter named `name`, still percent-encoded.
    ///
    /// Returns `None` when absent; callers decode (and bound) the value themselves.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The value of header `name` if present exactly once and valid visible ASCII.
    ///
    /// `Err(())` when the header is repeated or not visible ASCII: a credential header must be
    /// unambiguous.
    #[allow(clippy::result_unit_err)]
    pub fn single_header(&self, name: &http::HeaderName) -> Result<Option<&'a str>, ()> {
        let mut it = self.headers.get_all(name).iter();
        let Some(first) = it.next() else {
            return Ok(None);
        };
        if it.next().is_some() {
            return Err(());
        }
        first.to_str().map(Some).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(
        m: &'a http::Method,
        h: &'a http::HeaderMap,
        q: Option<&'a str>,
    ) -> RequestParts<'a> {
        RequestParts {
            method: m,
            path: "/",
            query: q,
            scheme: "http",
            authority: None,
            headers: h,
            client_ip: [127, 0, 0, 1].into(),
            conn: None,
            body: None,
        }
    }

    #[test]
    fn query_param_finds_first_exact_name() {
        let (m, h) = (http::Method::GET, http::HeaderMap::new());
        let r = parts(&m, &h, Some("a=1&api_key=xyz&api_key=2&flag"));
        assert_eq!(r.query_param("api_key"), Some("xyz"));
        assert_eq!(r.query_param("flag"), Some(""));
        assert_eq!(r.query_param("api"), None);
        assert_eq!(parts(&m, &h, None).query_param("a"), None);
    }

    #[test]
    fn repeated_credential_header_is_refused() {
        let m = http::Method::GET;
        let mut h = http::HeaderMap::new();
        let name = http::HeaderName::from_static("x-api-key");
        h.append(&name, "a".parse().unwrap());
        assert_eq!(parts(&m, &h, None).single_header(&name), Ok(Some("a")));
        h.append(&name, "b".parse().unwrap());
        assert_eq!(parts(&m, &h, None).single_header(&name), Err(()));
    }
}

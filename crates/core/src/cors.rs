//! Cross-origin resource sharing (the Fetch standard's CORS protocol) for a route: which
//! browser origins may call it, answered by the gateway itself, before authentication,
//! because a browser's preflight request carries no credentials.

use http::header::{self, HeaderName, HeaderValue};
use http::Method;

/// A route's CORS settings, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: Origins,
    methods: Vec<Method>,
    /// Request fields a caller may send, lowercase.
    headers: Vec<HeaderName>,
    /// `Access-Control-Allow-Methods`, `-Allow-Headers`, `-Expose-Headers`, `-Max-Age`, rendered once.
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    Any,
    /// Exact origins (`https://app.example.com`), lowercase, and wildcard ones
    /// (`https://*.example.com`: a subdomain at any depth, not the domain itself).
    Listed(Vec<String>),
}

/// Why the settings cannot be used; the text names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CorsConfigError(pub String);

/// A preflight the route does not allow: answered 403 `cors_not_allowed`, without CORS fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this origin, method or header is not allowed by the route's CORS settings")]
pub struct CorsRefused;

impl Cors {
    /// Checks the settings: `origins` as `scheme://host[:port]`, `https://*.domain` or a lone
    /// `*` (not with `credentials`: browsers refuse that combination); `methods` and `headers`
    /// are what callers may use; `expose` the response fields scripts may read.
    pub fn new(
        origins: &[String],
        methods: &[Method],
        headers: &[HeaderName],
        expose: &[HeaderName],
        credentials: bool,
        max_age_secs: u64,
    ) -> Result<Self, CorsConfigError> {
        let bad = |m: String| Err(CorsConfigError(m));
        let origins = if origins.iter().any(|o| o == "*") {
            if origins.len() > 1 {
                return bad("`*` stands alone in `origins`".into());
            }
            if credentials {
                return bad("`origins = [\"*\"]` cannot be combined with `credentials = true` (browsers refuse it); list the origins".into());
            }
            Origins::Any
        } else {
            if origins.is_empty() {
                return bad("`origins` needs at least one origin".into());
            }
            let mut list = Vec::with_capacity(origins.len());
            for o in origins {
                if !is_origin_pattern(o) {
                    return bad(format!("`{o}` is not an origin (`https://app.example.com`, `http://localhost:3000`, `https://*.example.com`)"));
                }
                list.push(o.to_ascii_lowercase());
            }
            Origins::Listed(list)
        };
        if methods.is_empty() {
            return bad("`methods` needs at least one method".into());
        }
        let join = |items: &mut dyn Iterator<Item = &str>| items.collect::<Vec<_>>().join(", ");
        let value = |s: String| {
            HeaderValue::try_from(s)
                .map_err(|_| CorsConfigError("CORS settings must be visible ASCII".into()))
        };
        Ok(Self {
            allow_methods: value(join(&mut methods.iter().map(Method::as_str)))?,
            allow_headers: value(join(&mut headers.iter().map(HeaderName::as_str)))?,
            expose_headers: if expose.is_empty() {
                None
            } else {
                Some(value(join(&mut expose.iter().map(HeaderName::as_str)))?)
            },
            max_age: HeaderValue::from(max_age_secs),
            origins,
            methods: methods.to_vec(),
            headers: headers.to_vec(),
            credentials,
        })
    }

    /// Whether `origin` (the request's `Origin` field) may call the route.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(list) => list.iter().any(|o| origin_matches(o, origin)),
        }
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`):
    /// the fields of a 204, or [`CorsRefused`].
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &[u8],
        request_headers: impl Iterator<Item = HeaderValue>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, CorsRefused> {
        if !self.allows_origin(origin.as_bytes()) {
            return Err(CorsRefused);
        }
        // Methods are case-sensitive tokens; browsers upper-case the standard ones.
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(CorsRefused);
        }
        for v in request_headers {
            for name in v.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                if !self
                    .headers
                    .iter()
                    .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
                {
                    return Err(CorsRefused);
                }
            }
        }
        let mut out = self.origin_fields(origin);
        out.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        ));
        out.push((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        ));
        out.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        out.push((
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ));
        Ok(out)
    }

    /// The fields for a response to an actual request from `origin` (any status: a script
    /// should be able to read a 401's reason); none when the origin is not allowed.
    pub fn response_fields(&self, origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(origin) = origin.filter(|o| self.allows_origin(o.as_bytes())) {
            out = self.origin_fields(origin);
            if let Some(e) = &self.expose_headers {
                out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
            }
        }
        // The answer depends on the origin (except for a credential-less `*`): caches must know.
        if self.origins != Origins::Any {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        out
    }

    fn origin_fields(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let allow = if self.origins == Origins::Any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)];
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        out
    }
}

/// Whether a response field is CORS's own (`Access-Control-*`): on a route with CORS settings the
/// gateway's answer replaces the upstream's.
pub fn is_cors_field(name: &[u8]) -> bool {
    name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
}

/// `scheme://host[:port]` with an optional leading `*.` label in the host, nothing after.
/// (Origins with IPv6 literals are not accepted.)
fn is_origin_pattern(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return false;
    }
    let rest = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && !host.starts_with('.')
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    port_ok && host_ok
}

/// `pattern` (lowercase) against the request's origin, ignoring ASCII case.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once("://*.") {
        None => pattern.eq_ignore_ascii_case(origin),
        Some((scheme, domain)) => {
            let Some((o_scheme, o_host)) = origin.split_once("://") else {
                return false;
            };
            let (h, d) = (o_host.as_bytes(), domain.as_bytes());
            o_scheme.eq_ignore_ascii_case(scheme)
                && h.len() > d.len() + 1
                && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
                && h[h.len() - d.len() - 1] == b'.'
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, CorsConfigError> {
        Cors::new(
            &origins.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[Method::GET, Method::POST],
            &[HeaderName::from_static("x-api-key"), header::CONTENT_TYPE],
            &[HeaderName::from_static("ratelimit-remaining")],
            credentials,
            600,
        )
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn names(fields: &[(HeaderName, HeaderValue)]) -> Vec<String> {
        fields
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn a_preflight_from_a_listed_origin_gets_the_routes_rules() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true).unwrap();
        let ok = c
            .preflight(
                &hv("https://app.example.com"),
                b"POST",
                [hv("X-API-Key, content-type")].into_iter(),
            )
            .unwrap();
        assert_eq!(
            names(&ok),
            [
                "access-control-allow-origin: https://app.example.com",
                "access-control-allow-credentials: true",
                "access-control-allow-methods: GET, POST",
                "access-control-allow-headers: x-api-key, content-type",
                "access-control-max-age: 600",
                "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ]
        );
        assert!(c
            .preflight(&hv("https://a.b.example.org"), b"GET", std::iter::empty())
            .is_ok());
        for (origin, method, fields) in [
            ("https://evil.example.com", "GET", ""),
            ("http://app.example.com", "GET", ""),
            ("https://example.org", "GET", ""),
            ("https://app.example.com.evil.net", "GET", ""),
            ("https://app.example.com", "DELETE", ""),
            ("https://app.example.com", "post", ""),
            ("https://app.example.com", "GET", "x-api-key, x-admin"),
            ("null", "GET", ""),
        ] {
            assert_eq!(
                c.preflight(&hv(origin), method.as_bytes(), [hv(fields)].into_iter()),
                Err(CorsRefused),
                "{origin} {method} {fields}"
            );
        }
    }

    #[test]
    fn actual_responses_name_the_origin_or_nothing_and_always_vary() {
        let c = cors(&["https://app.example.com"], false).unwrap();
        assert_eq!(
            names(&c.response_fields(Some(&hv("HTTPS://APP.example.com")))),
            [
                "access-control-allow-origin: HTTPS://APP.example.com",
                "access-control-expose-headers: ratelimit-remaining",
                "vary: Origin",
            ]
        );
        assert_eq!(
            names(&c.response_fields(Some(&hv("https://x.test")))),
            ["vary: Origin"]
        );
        assert_eq!(names(&c.response_fields(None)), ["vary: Origin"]);
        let any = cors(&["*"], false).unwrap();
        assert_eq!(
            names(&any.response_fields(Some(&hv("https://x.test")))),
            [
                "access-control-allow-origin: *",
                "access-control-expose-headers: ratelimit-remaining",
            ]
        );
    }

    #[test]
    fn settings_are_checked_at_load() {
        assert!(cors(&["*"], true).is_err(), "* with credentials");
        assert!(cors(&["*", "https://a.test"], false).is_err());
        assert!(cors(&[], false).is_err());
        for bad in [
            "app.example.com",
            "https://",
            "ftp://x.test",
            "https://x.test/path",
            "https://x.test:",
            "https://x.test:123456",
            "https://.x.test",
        ] {
            assert!(cors(&[bad], false).is_err(), "{bad}");
        }
        for good in [
            "http://localhost:3000",
            "https://*.example.com",
            "HTTPS://App.Example.com",
        ] {
            assert!(cors(&[good], false).is_ok(), "{good}");
        }
        assert!(is_cors_field(b"Access-Control-Allow-Origin"));
        assert!(!is_cors_field(b"access-control-"));
        assert!(!is_cors_field(b"content-type"));
    }

    proptest::proptest! {
        #[test]
        fn no_origin_text_panics(origin in "\\PC{0,40}") {
            let c = cors(&["https://*.example.com"], false).unwrap();
            let _ = c.allows_origin(origin.as_bytes());
        }
    }
}

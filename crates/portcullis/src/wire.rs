//! The one renderer of refusals: JSON body, `WWW-Authenticate`, rate-limit headers, no caching.

use axum::body::Body;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use portcullis_core::ratelimit::Decision;
use portcullis_core::WireError;

/// Renders `e` as `{"error": code, "error_description": text}`.
pub fn error_response(
    e: WireError,
    challenges: &[String],
    rate: Option<&Decision>,
) -> Response<Body> {
    let body = format!(
        r#"{{"error":"{}","error_description":"{}"}}"#,
        e.code, e.description
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() =
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.status == 401 {
        for c in challenges {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.append(header::WWW_AUTHENTICATE, v);
            }
        }
    }
    if let Some(d) = rate {
        rate_headers(h, d);
        if !d.allowed {
            h.insert(header::RETRY_AFTER, HeaderValue::from(d.retry_after_secs));
        }
    }
    resp
}

/// Sets `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
pub fn rate_headers(h: &mut http::HeaderMap, d: &Decision) {
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    h.insert(LIMIT, number_value(u64::from(d.limit)));
    h.insert(REMAINING, number_value(u64::from(d.remaining)));
    h.insert(RESET, number_value(d.reset_secs));
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` as header lines.
pub fn push_rate_fields(out: &mut Vec<u8>, d: &Decision) {
    use crate::h1::head::push_decimal;
    out.extend_from_slice(b"ratelimit-limit: ");
    push_decimal(out, u64::from(d.limit));
    out.extend_from_slice(b"\r\nratelimit-remaining: ");
    push_decimal(out, u64::from(d.remaining));
    out.extend_from_slice(b"\r\nratelimit-reset: ");
    push_decimal(out, d.reset_secs);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is one of the fields [`rate_headers`] sets.
pub fn is_rate_field(name: &[u8]) -> bool {
    name.len() > 10
        && name[..10].eq_ignore_ascii_case(b"ratelimit-")
        && [&b"limit"[..], b"remaining", b"reset"]
            .iter()
            .any(|s| name[10..].eq_ignore_ascii_case(s))
}

/// A decimal header value; the small numbers that most rate-limit headers carry come from a
/// table made once (a clone is a reference-count increment, not an allocation and a format).
fn number_value(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    usize::try_from(n)
        .ok()
        .and_then(|i| SMALL.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{AuthError, WireError};

    #[test]
    fn rate_fields_are_recognised_in_any_case_and_written_as_lines() {
        for n in ["ratelimit-limit", "RateLimit-Remaining", "RATELIMIT-RESET"] {
            assert!(is_rate_field(n.as_bytes()), "{n}");
        }
        for n in [
            "ratelimit-",
            "ratelimit-policy",
            "x-ratelimit-limit",
            "ratelimit",
        ] {
            assert!(!is_rate_field(n.as_bytes()), "{n}");
        }
        let d = Decision {
            allowed: true,
            cell: 0,
            limit: 100,
            remaining: 99,
            reset_secs: 1,
            retry_after_secs: 0,
        };
        let mut out = Vec::new();
        push_rate_fields(&mut out, &d);
        assert_eq!(
            out,
            b"ratelimit-limit: 100\r\nratelimit-remaining: 99\r\nratelimit-reset: 1\r\n"
        );
    }

    #[test]
    fn number_values_are_decimal_inside_and_outside_the_table() {
        for n in [0u64, 1, 9, 10, 1023, 1024, 99_999, u64::MAX] {
            assert_eq!(number_value(n), n.to_string().as_str());
        }
    }

    #[test]
    fn challenges_only_on_401_and_retry_after_on_refusal() {
        let ch = vec!["ApiKey realm=\"portcullis\"".to_string()];
        let r = error_response(WireError::from(&AuthError::MissingCredentials), &ch, None);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], ch[0].as_str());
        let r = error_response(WireError::from(&AuthError::InsufficientScope), &ch, None);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        let d = Decision {
            allowed: false,
            cell: 0,
            limit: 5,
            remaining: 0,
            reset_secs: 9,
            retry_after_secs: 3,
        };
        let r = error_response(
            WireError::from(&AuthError::RateLimited {
                retry_after_secs: 3,
            }),
            &ch,
            Some(&d),
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert_eq!(r.headers()["ratelimit-limit"], "5");
    }
}

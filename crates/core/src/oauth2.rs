//! OAuth 2.0 token requests (RFC 6749 §2.3, §3.2, §4.4, §5) read exactly: the form body, the
//! client's credentials (HTTP Basic with the form-encoding of §2.3.1, or in the body), and the
//! error codes of §5.2.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::identity::ScopeSet;
use crate::jose::{Jws, MAX_TOKEN_LEN};

/// The largest token request body read.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// An error of the token endpoint, as RFC 6749 §5.2 names it. The description is a fixed,
/// safe text: it never echoes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// Malformed request: a parameter missing, repeated or unreadable; several client
    /// authentication methods at once.
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed (unknown client, wrong secret, wrong method).
    #[error("invalid_client")]
    InvalidClient,
    /// The grant (code, refresh token, assertion) is invalid.
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    /// The client may not use this grant type.
    #[error("unauthorized_client")]
    UnauthorizedClient,
    /// The grant type is not supported here.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// A requested scope is unknown to the client or malformed.
    #[error("invalid_scope")]
    InvalidScope,
    /// A requested resource (RFC 8707) is not one the client may ask for.
    #[error("invalid_target")]
    InvalidTarget,
    /// The `DPoP` proof sent to the token endpoint is missing where required, repeated,
    /// malformed, replayed or not for this request (RFC 9449 §5, §12.2).
    #[error("invalid_dpop_proof")]
    InvalidDpopProof,
    /// The DPoP proof lacks the server's current nonce, where nonces are required (RFC 9449
    /// §8): the answer carries one in `DPoP-Nonce`.
    #[error("use_dpop_nonce")]
    UseDpopNonce,
    /// The server cannot answer now (store down).
    #[error("temporarily_unavailable")]
    TemporarilyUnavailable,
    /// Too many failed client authentications from this address: 429 with `Retry-After`
    /// (not an RFC 6749 code; the gateway's `rate_limited`).
    #[error("rate_limited")]
    RateLimited {
        /// Seconds until a request may be made again.
        retry_after_secs: u64,
    },
}

impl OAuthError {
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// The HTTP status: 401 for a failed client authentication, 503 when unavailable, else
    /// 400 (RFC 6749 §5.2).
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidClient => 401,
            Self::TemporarilyUnavailable => 503,
            Self::RateLimited { .. } => 429,
            _ => 400,
        }
    }

    /// A safe description.
    pub fn description(&self) -> &'static str {
        match self {
            Self::InvalidRequest(what) | Self::InvalidGrant(what) => what,
            Self::InvalidClient => "Client authentication failed.",
            Self::UnauthorizedClient => "This client may not use this grant type.",
            Self::UnsupportedGrantType => "The grant type is not supported.",
            Self::InvalidScope => "A requested scope is not allowed for this client.",
            Self::InvalidTarget => "A requested resource is not allowed for this client.",
            Self::InvalidDpopProof => "The DPoP proof is not valid for this request.",
            Self::UseDpopNonce => {
                "Retry with a DPoP proof carrying the nonce in the DPoP-Nonce header."
            }
            Self::TemporarilyUnavailable => "The server cannot answer now; try again.",
            Self::RateLimited { .. } => {
                "Too many failed client authentications from this address; retry later."
            }
        }
    }
}

/// A parsed `application/x-www-form-urlencoded` body: each name once (§3.2), except
/// `resource`, which RFC 8707 lets repeat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form {
    one: BTreeMap<String, String>,
    resources: Vec<String>,
}

impl Form {
    /// Parses `body`. A repeated parameter, or one without a value where a value is needed,
    /// is `invalid_request`; empty values count as absent (§3.1).
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        if body.len() > MAX_FORM_BYTES {
            return Err(OAuthError::InvalidRequest("The request body is too large."));
        }
        let mut f = Form::default();
        for (k, v) in form_urlencoded::parse(body) {
            if v.is_empty() {
                continue;
            }
            if k == "resource" {
                if f.resources.len() >= 16 {
                    return Err(OAuthError::InvalidRequest("Too many resource parameters."));
                }
                f.resources.push(v.into_owned());
                continue;
            }
            if f.one.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(
                    "A request parameter is repeated.",
                ));
            }
        }
        Ok(f)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.one.get(name).map(String::as_str)
    }

    /// Every `resource` value, in order.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }
}

/// How the client authenticated itself (RFC 6749 §2.3).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCredentials {
    /// `client_secret_basic`: the `Authorization: Basic` header.
    Basic {
        /// The client id (form-decoded).
        client_id: String,
        /// The secret (form-decoded).
        secret: String,
    },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post {
        /// The client id.
        client_id: String,
        /// The secret.
        secret: String,
    },
    /// A public client naming itself (`client_id` only): `none`.
    None {
        /// The client id.
        client_id: String,
    },
    /// `private_key_jwt` (RFC 7523 §2.2): a JWT signed with the client's key in
    /// `client_assertion`. The id is the `client_id` parameter or, without one, the
    /// assertion's unverified `sub` — used only to find the key it must verify under.
    Assertion {
        /// The client id.
        client_id: String,
        /// The compact JWS.
        assertion: String,
    },
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (method, id) = match self {
            Self::Basic { client_id, .. } => ("client_secret_basic", client_id),
            Self::Post { client_id, .. } => ("client_secret_post", client_id),
            Self::None { client_id } => ("none", client_id),
            Self::Assertion { client_id, .. } => ("private_key_jwt", client_id),
        };
        write!(f, "ClientCredentials({method}, {id:?})")
    }
}

impl ClientCredentials {
    /// The client id presented.
    pub fn client_id(&self) -> &str {
        match self {
            Self::Basic { client_id, .. }
            | Self::Post { client_id, .. }
            | Self::None { client_id }
            | Self::Assertion { client_id, .. } => client_id,
        }
    }

    /// The `token_endpoint_auth_method` name of how it was presented.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "client_secret_basic",
            Self::Post { .. } => "client_secret_post",
            Self::None { .. } => "none",
            Self::Assertion { .. } => "private_key_jwt",
        }
    }

    /// Reads the client's credentials from the `Authorization` header value (if any) and
    /// the form. Exactly one method may be used (§2.3).
    pub fn from_request(authorization: Option<&str>, form: &Form) -> Result<Self, OAuthError> {
        let basic = match authorization {
            Some(h) => Some(parse_basic(h)?),
            None => None,
        };
        let (post_id, post_secret) = (form.get("client_id"), form.get("client_secret"));
        if form.get("client_assertion_type").is_some() || form.get("client_assertion").is_some() {
            if basic.is_some() || post_secret.is_some() {
                return Err(OAuthError::InvalidRequest(
                    "Use one client authentication method, not several.",
                ));
            }
            return assertion(form, post_id);
        }
        match (basic, post_id, post_secret) {
            (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
                "Use one client authentication method, not several.",
            )),
            (Some((client_id, secret)), id, None) => {
                if id.is_some_and(|id| id != client_id) {
                    return Err(OAuthError::InvalidRequest(
                        "client_id differs from the authenticated client.",
                    ));
                }
                Ok(Self::Basic { client_id, secret })
            }
            (None, Some(id), Some(secret)) => Ok(Self::Post {
                client_id: id.to_owned(),
                secret: secret.to_owned(),
            }),
            (None, Some(id), None) => Ok(Self::None {
                client_id: id.to_owned(),
            }),
            (None, None, _) => Err(OAuthError::InvalidClient),
        }
    }
}

/// A JWT client assertion: the type must be [`JWT_BEARER_ASSERTION`]; the client is the
/// `client_id` parameter if given, else the assertion's `sub` (read unverified, to choose
/// the key; the verifier checks `iss` and `sub` against the client it found).
fn assertion(form: &Form, client_id: Option<&str>) -> Result<ClientCredentials, OAuthError> {
    if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
        return Err(OAuthError::InvalidClient);
    }
    let assertion = form
        .get("client_assertion")
        .ok_or(OAuthError::InvalidRequest("client_assertion is missing."))?;
    let client_id = match client_id {
        Some(id) => id.to_owned(),
        None => {
            #[derive(serde::Deserialize)]
            struct Sub {
                sub: String,
            }
            let jws =
                Jws::parse(assertion, MAX_TOKEN_LEN).map_err(|_| OAuthError::InvalidClient)?;
            serde_json::from_slice::<Sub>(jws.unverified_payload())
                .map_err(|_| OAuthError::InvalidClient)?
                .sub
        }
    };
    if client_id.is_empty() {
        return Err(OAuthError::InvalidClient);
    }
    Ok(ClientCredentials::Assertion {
        client_id,
        assertion: assertion.to_owned(),
    })
}

/// `Basic base64(form-encode(id) ":" form-encode(secret))` (RFC 6749 §2.3.1). A header of
/// another scheme is not client authentication.
fn parse_basic(h: &str) -> Result<(String, String), OAuthError> {
    let (scheme, rest) = h.trim().split_once(' ').ok_or(OAuthError::InvalidClient)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient);
    }
    let raw = STANDARD
        .decode(rest.trim())
        .map_err(|_| OAuthError::InvalidClient)?;
    let text = String::from_utf8(raw).map_err(|_| OAuthError::InvalidClient)?;
    let (id, secret) = text.split_once(':').ok_or(OAuthError::InvalidClient)?;
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    if id.is_empty() {
        return Err(OAuthError::InvalidClient);
    }
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XY` a byte;
/// the result must be UTF-8.
fn form_decode(s: &str) -> Result<String, OAuthError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(OAuthError::InvalidClient)?;
                let hex = std::str::from_utf8(hex).map_err(|_| OAuthError::InvalidClient)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| OAuthError::InvalidClient)?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| OAuthError::InvalidClient)
}

/// `application/x-www-form-urlencoded` encoding of one value: ASCII letters, digits and
/// `*-._` stay, a space becomes `+`, every other byte `%XY`.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// The client side of `client_secret_basic`: `Basic base64(form-encode(id) ":"
/// form-encode(secret))` (RFC 6749 §2.3.1).
pub fn basic_authorization(client_id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!(
            "{}:{}",
            form_encode(client_id),
            form_encode(secret)
        ))
    )
}

/// The scopes to grant: those asked for, each allowed to the client; or, when none are
/// asked for, every scope the client may have (RFC 6749 §3.3).
pub fn grant_scopes(requested: Option<&str>, allowed: &ScopeSet) -> Result<ScopeSet, OAuthError> {
    let Some(req) = requested else {
        return Ok(allowed.clone());
    };
    let asked = ScopeSet::parse(req.split(' ').filter(|s| !s.is_empty()))
        .map_err(|_| OAuthError::InvalidScope)?;
    if !allowed.contains_all(&asked) {
        return Err(OAuthError::InvalidScope);
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
    }

    #[test]
    fn forms_refuse_repeats_but_let_resource_repeat() {
        let f = Form::parse(b"grant_type=client_credentials&scope=a+b&resource=https%3A%2F%2Fx&resource=https%3A%2F%2Fy&empty=").unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), Some("a b"));
        assert_eq!(f.resources(), ["https://x", "https://y"]);
        assert_eq!(f.get("empty"), None);
        assert_eq!(
            Form::parse(b"scope=a&scope=b").unwrap_err().code(),
            "invalid_request"
        );
        assert!(Form::parse(&vec![b'a'; MAX_FORM_BYTES + 1]).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded_as_rfc6749_says() {
        // §2.3.1: id and secret are form-encoded before Basic; '+' is a space, %3A a colon.
        let f = Form::default();
        let c = ClientCredentials::from_request(Some(&basic("my%3Aclient", "s+e%2Bcret%3A")), &f)
            .unwrap();
        assert_eq!(
            c,
            ClientCredentials::Basic {
                client_id: "my:client".into(),
                secret: "s e+cret:".into()
            }
        );
        assert_eq!(c.method(), "client_secret_basic");
        assert!(
            !format!("{c:?}").contains("e+cret"),
            "Debug hides the secret"
        );
        // '&' and '=' are ordinary characters of an id or secret.
        let c = ClientCredentials::from_request(Some(&basic("a%26b%3Dc", "x&y=z")), &f).unwrap();
        assert_eq!(c.client_id(), "a&b=c");
        assert!(matches!(c, ClientCredentials::Basic { secret, .. } if secret == "x&y=z"));
        assert_eq!(
            ClientCredentials::from_request(Some(&basic("a%zz", "b")), &f).unwrap_err(),
            OAuthError::InvalidClient
        );
        // Lower-case scheme, extra spaces.
        assert!(ClientCredentials::from_request(
            Some(&format!("  basic  {}", STANDARD.encode("a:b"))),
            &f
        )
        .is_ok());
    }

    #[test]
    fn one_authentication_method_only() {
        let both = Form::parse(b"client_id=a&client_secret=b").unwrap();
        assert_eq!(
            ClientCredentials::from_request(Some(&basic("a", "b")), &both)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        let other = Form::parse(b"client_id=z").unwrap();
        assert_eq!(
            ClientCredentials::from_request(Some(&basic("a", "b")), &other).unwrap_err(),
            OAuthError::InvalidRequest("client_id differs from the authenticated client.")
        );
        let post = ClientCredentials::from_request(None, &both).unwrap();
        assert_eq!(post.method(), "client_secret_post");
        assert_eq!(post.client_id(), "a");
        let none = ClientCredentials::from_request(None, &other).unwrap();
        assert_eq!(none.method(), "none");
        for bad in [
            "Bearer x",
            "Basic !!!",
            "Basic",
            &basic("", "x"),
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            assert_eq!(
                ClientCredentials::from_request(Some(bad), &Form::default()).unwrap_err(),
                OAuthError::InvalidClient,
                "{bad}"
            );
        }
        assert_eq!(
            ClientCredentials::from_request(None, &Form::default()).unwrap_err(),
            OAuthError::InvalidClient
        );
    }

    #[test]
    fn client_assertions_name_their_client() {
        let jwt = |claims: &str| {
            format!(
                "{}.{}.c2ln",
                crate::jose::b64_encode(br#"{"alg":"ES256"}"#),
                crate::jose::b64_encode(claims.as_bytes())
            )
        };
        let a = jwt(r#"{"iss":"cl_1","sub":"cl_1"}"#);
        let form = |extra: &str| {
            Form::parse(
                format!("client_assertion_type={JWT_BEARER_ASSERTION}&client_assertion={a}{extra}")
                    .as_bytes(),
            )
            .unwrap()
        };
        let c = ClientCredentials::from_request(None, &form("")).unwrap();
        assert_eq!(c.client_id(), "cl_1", "from sub when client_id is absent");
        assert_eq!(c.method(), "private_key_jwt");
        assert!(!format!("{c:?}").contains(&a), "Debug hides the assertion");
        let c = ClientCredentials::from_request(None, &form("&client_id=cl_2")).unwrap();
        assert_eq!(
            c.client_id(),
            "cl_2",
            "client_id, when given, names the client"
        );
        assert_eq!(
            ClientCredentials::from_request(None, &form("&client_secret=x"))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            ClientCredentials::from_request(Some(&basic("a", "b")), &form(""))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        for bad in [
            "client_assertion_type=urn:other&client_assertion=x.y.z".to_owned(),
            format!("client_assertion_type={JWT_BEARER_ASSERTION}&client_assertion=garbage"),
            format!(
                "client_assertion_type={JWT_BEARER_ASSERTION}&client_assertion={}",
                jwt("{}")
            ),
            format!(
                "client_assertion_type={JWT_BEARER_ASSERTION}&client_assertion={}",
                jwt(r#"{"sub":""}"#)
            ),
        ] {
            assert_eq!(
                ClientCredentials::from_request(None, &Form::parse(bad.as_bytes()).unwrap())
                    .unwrap_err(),
                OAuthError::InvalidClient,
                "{bad}"
            );
        }
        let missing =
            Form::parse(format!("client_assertion_type={JWT_BEARER_ASSERTION}").as_bytes())
                .unwrap();
        assert_eq!(
            ClientCredentials::from_request(None, &missing)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn scopes_narrow_and_default_to_all_allowed() {
        let allowed = ScopeSet::parse(["read:echo", "write:echo"]).unwrap();
        assert_eq!(grant_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(
            grant_scopes(Some("read:echo"), &allowed)
                .unwrap()
                .as_space_separated(),
            "read:echo"
        );
        assert_eq!(
            grant_scopes(Some("read:echo admin"), &allowed).unwrap_err(),
            OAuthError::InvalidScope
        );
        assert_eq!(
            grant_scopes(Some("bad\"scope"), &allowed).unwrap_err(),
            OAuthError::InvalidScope
        );
    }

    #[test]
    fn error_codes_and_statuses_follow_rfc6749_5_2() {
        assert_eq!(
            (
                OAuthError::InvalidClient.code(),
                OAuthError::InvalidClient.status()
            ),
            ("invalid_client", 401)
        );
        assert_eq!(OAuthError::UnsupportedGrantType.status(), 400);
        assert_eq!(OAuthError::TemporarilyUnavailable.status(), 503);
    }

    #[test]
    fn basic_authorization_round_trips_through_the_servers_parser() {
        for (id, secret) in [("svc", "pcs_abc"), ("a:b c", "p%ss+wörd/=&"), ("x", "")] {
            let h = basic_authorization(id, secret);
            assert_eq!(parse_basic(&h).unwrap(), (id.to_owned(), secret.to_owned()));
        }
        assert_eq!(form_encode("a b+c/é"), "a+b%2Bc%2F%C3%A9");
    }
}

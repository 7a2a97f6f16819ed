//! JWT (RFC 7519) access tokens: the claims Portcullis issues (RFC 9068) and the checks it
//! makes of any token it is given, after [`crate::jose::Jws::verify`].

use serde::{Deserialize, Serialize};

use crate::crypto::sign::PublicKey;
use crate::jose::{Algorithm, JoseError, Jws};
use crate::time::Timestamp;
use crate::verified::Verified;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The JWS itself (form, algorithm, signature).
    #[error("jws: {0}")]
    Jose(#[from] JoseError),
    /// The claims are not a JSON object of the registered claim types.
    #[error("bad claims")]
    BadClaims,
    /// A claim the check needs is missing.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// `exp` is past (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future, or `iat` is (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// No `aud` value is an expected audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The header's `typ` is not the expected one.
    #[error("wrong type")]
    WrongType,
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    /// Every value.
    pub fn values(&self) -> &[String] {
        match self {
            Self::One(a) => std::slice::from_ref(a),
            Self::Many(v) => v,
        }
    }
}

/// `cnf` (RFC 7800): what the token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Confirmation {
    /// The DPoP key's thumbprint (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// The client certificate's SHA-256 thumbprint (RFC 8705 §3.1).
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// The registered claims and those of RFC 9068 / RFC 8693 that Portcullis reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claims {
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The client the token was issued to (RFC 9068 §2.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Space-separated scopes (RFC 9068 §2.2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Confirmation (proof of possession).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Authorized party (OpenID Connect Core §2): the client, in tokens of issuers that
    /// name it so (Keycloak, Auth0, Entra ID) instead of `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// Scopes as some issuers write them (Okta, Entra ID): a list or a space-separated string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<ScopeClaim>,
}

/// A scope claim's two spellings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    /// Space-separated.
    Text(String),
    /// One scope per element.
    List(Vec<String>),
}

impl Claims {
    /// The client the token was issued to: `client_id` (RFC 9068), else `azp`.
    pub fn client(&self) -> Option<&str> {
        self.client_id.as_deref().or(self.azp.as_deref())
    }

    /// The granted scopes: `scope` (RFC 9068 §2.2.3), else `scp`, each scope once.
    pub fn scopes(&self) -> Vec<&str> {
        let mut v: Vec<&str> = match (&self.scope, &self.scp) {
            (Some(s), _) | (None, Some(ScopeClaim::Text(s))) => {
                s.split(' ').filter(|s| !s.is_empty()).collect()
            }
            (None, Some(ScopeClaim::List(l))) => l.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// What a verifier expects of a token.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    /// The algorithms accepted (never `none`; an HMAC one only with a shared secret).
    pub algorithms: &'a [Algorithm],
    /// The exact `iss`.
    pub issuer: &'a str,
    /// At least one `aud` value must be one of these; empty: `aud` is not checked.
    pub audiences: &'a [String],
    /// The header's `typ`, compared case-insensitively without an `application/` prefix
    /// (RFC 7515 §4.1.9); `None`: not checked.
    pub typ: Option<&'a str>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_secs: i64,
}

/// Marker for a verified JWT (see [`verify`]).
#[derive(Debug)]
pub struct Jwt(());

/// Verifies `jws` under `key` and checks its claims at `now`: signature and algorithm first
/// (nothing in the claims is read before), then `typ`, `iss`, `exp` (required), `nbf`,
/// `iat` (not in the future) and `aud`.
pub fn verify(
    jws: &Jws<'_>,
    key: &PublicKey,
    expect: &Expectations<'_>,
    now: Timestamp,
) -> Result<(Claims, Verified<Jwt>), JwtError> {
    let payload = jws.verify(key, expect.algorithms)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::BadClaims)?;
    if let Some(want) = expect.typ {
        let got = jws.header().typ.as_deref().ok_or(JwtError::WrongType)?;
        if !media_type_eq(got, want) {
            return Err(JwtError::WrongType);
        }
    }
    if claims.iss.as_deref() != Some(expect.issuer) {
        return Err(JwtError::WrongIssuer);
    }
    let now = now.as_secs();
    let leeway = expect.leeway_secs.max(0);
    let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now.saturating_add(leeway) < nbf)
        || claims
            .iat
            .is_some_and(|iat| now.saturating_add(leeway) < iat)
    {
        return Err(JwtError::NotYetValid);
    }
    if !expect.audiences.is_empty() {
        let aud = claims.aud.as_ref().ok_or(JwtError::WrongAudience)?;
        if !aud.values().iter().any(|a| expect.audiences.contains(a)) {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok((claims, Verified::assertion()))
}

/// `typ` values compare as media types: case-insensitive, `application/` optional.
fn media_type_eq(got: &str, want: &str) -> bool {
    let strip = |s: &str| {
        let lower = s.len() > 12 && s[..12].eq_ignore_ascii_case("application/");
        if lower {
            s[12..].to_owned()
        } else {
            s.to_owned()
        }
    };
    strip(got).eq_ignore_ascii_case(&strip(want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;
    use crate::jose::{sign_compact, MAX_TOKEN_LEN};

    const ISS: &str = "https://auth.example";
    const NOW: i64 = 1_800_000_000;

    fn token(key: &SigningKey, typ: Option<&str>, claims: serde_json::Value) -> String {
        sign_compact(key, "k1", typ, claims.to_string().as_bytes()).unwrap()
    }

    fn check(
        t: &str,
        key: &PublicKey,
        aud: &[String],
        typ: Option<&str>,
    ) -> Result<Claims, JwtError> {
        let jws = Jws::parse(t, MAX_TOKEN_LEN)?;
        let e = Expectations {
            algorithms: &[Algorithm::Es256],
            issuer: ISS,
            audiences: aud,
            typ,
            leeway_secs: 30,
        };
        verify(&jws, key, &e, Timestamp::from_secs(NOW)).map(|(c, _)| c)
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let k = SigningKey::generate(Algorithm::Es256).unwrap();
        let public = k.public_key();
        let api = vec!["https://api.example".to_owned()];
        let good = serde_json::json!({
            "iss": ISS, "sub": "svc", "aud": ["other", "https://api.example"],
            "exp": NOW + 900, "iat": NOW, "jti": "j1", "client_id": "svc", "scope": "read:echo",
        });
        let c = check(
            &token(&k, Some("at+jwt"), good.clone()),
            &public,
            &api,
            Some("at+jwt"),
        )
        .unwrap();
        assert_eq!(c.scope.as_deref(), Some("read:echo"));
        assert_eq!(c.jti.as_deref(), Some("j1"));
        // typ spelled as a full media type, other case.
        assert!(check(
            &token(&k, Some("application/AT+JWT"), good.clone()),
            &public,
            &api,
            Some("at+jwt")
        )
        .is_ok());

        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            token(&k, Some("at+jwt"), v)
        };
        let cases: Vec<(String, JwtError)> = vec![
            (with(&|v| v["exp"] = (NOW - 31).into()), JwtError::Expired),
            (with(&|v| v["exp"] = (NOW - 30).into()), JwtError::Expired),
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("exp");
                }),
                JwtError::MissingClaim("exp"),
            ),
            (
                with(&|v| v["nbf"] = (NOW + 31).into()),
                JwtError::NotYetValid,
            ),
            (
                with(&|v| v["iat"] = (NOW + 3600).into()),
                JwtError::NotYetValid,
            ),
            (
                with(&|v| v["iss"] = "https://evil.example".into()),
                JwtError::WrongIssuer,
            ),
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("iss");
                }),
                JwtError::WrongIssuer,
            ),
            (
                with(&|v| v["aud"] = "other".into()),
                JwtError::WrongAudience,
            ),
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("aud");
                }),
                JwtError::WrongAudience,
            ),
            (with(&|v| v["exp"] = "tomorrow".into()), JwtError::BadClaims),
            (token(&k, Some("JWT"), good.clone()), JwtError::WrongType),
            (token(&k, None, good.clone()), JwtError::WrongType),
        ];
        for (t, want) in cases {
            assert_eq!(
                check(&t, &public, &api, Some("at+jwt")).unwrap_err(),
                want,
                "{t}"
            );
        }
        // Within the leeway.
        assert!(check(
            &with(&|v| v["exp"] = (NOW - 29).into()),
            &public,
            &api,
            Some("at+jwt")
        )
        .is_ok());
        assert!(check(
            &with(&|v| v["nbf"] = (NOW + 29).into()),
            &public,
            &api,
            Some("at+jwt")
        )
        .is_ok());
        // Claims that are not an object.
        let arr = sign_compact(&k, "k1", None, b"[1]").unwrap();
        assert_eq!(
            check(&arr, &public, &api, None).unwrap_err(),
            JwtError::BadClaims
        );
        // Another key's signature: refused before the claims are read.
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let forged = token(&other, Some("at+jwt"), good);
        assert_eq!(
            check(&forged, &public, &api, Some("at+jwt")).unwrap_err(),
            JwtError::Jose(JoseError::BadSignature)
        );
    }

    #[test]
    fn clients_and_scopes_are_read_in_every_common_spelling() {
        let c = |v: serde_json::Value| serde_json::from_value::<Claims>(v).unwrap();
        let rfc = c(serde_json::json!({"client_id": "a", "azp": "b", "scope": "y x y"}));
        assert_eq!((rfc.client(), rfc.scopes()), (Some("a"), vec!["x", "y"]));
        let keycloak = c(serde_json::json!({"azp": "b", "scope": "openid  x"}));
        assert_eq!(
            (keycloak.client(), keycloak.scopes()),
            (Some("b"), vec!["openid", "x"])
        );
        let okta = c(serde_json::json!({"scp": ["x", "z"]}));
        assert_eq!((okta.client(), okta.scopes()), (None, vec!["x", "z"]));
        let entra = c(serde_json::json!({"scp": "x z"}));
        assert_eq!(entra.scopes(), vec!["x", "z"]);
        assert!(serde_json::from_value::<Claims>(serde_json::json!({"scp": 3})).is_err());
    }
}

//! JWT (RFC 7519) access tokens: the claims Portcullis issues (RFC 9068) and the checks it
//! makes of any token it is given, after [`crate::jose::Jws::verify`].

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Audience<'a> {
    /// A single audience.
    One(Cow<'a, str>),
    /// Several.
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    /// Every value.
    pub fn values(&self) -> &[Cow<'_, str>] {
        match self {
            Self::One(a) => std::slice::from_ref(a),
            Self::Many(v) => v,
        }
    }

    /// The same, owning its strings.
    pub fn into_owned(self) -> Audience<'static> {
        match self {
            Self::One(a) => Audience::One(Cow::Owned(a.into_owned())),
            Self::Many(v) => Audience::Many(owned_all(v)),
        }
    }
}

/// A JSON string, borrowed from the token when it has no escape in it.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

fn opt_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Option::<Text<'a>>::deserialize(d).map(|o| o.map(|t| t.0))
}

fn owned(v: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    v.map(|s| Cow::Owned(s.into_owned()))
}

fn owned_all(v: Vec<Cow<'_, str>>) -> Vec<Cow<'static, str>> {
    v.into_iter().map(|s| Cow::Owned(s.into_owned())).collect()
}

/// A string or an array of strings (`aud`, `scp`), read without buffering.
struct StringOrList<'a>(Result<Cow<'a, str>, Vec<Cow<'a, str>>>);

impl<'de: 'a, 'a> Deserialize<'de> for StringOrList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = StringOrList<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(StringOrList(Ok(Cow::Borrowed(v))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrList(Ok(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(Text(s)) = seq.next_element::<Text<'a>>()? {
                    v.push(s);
                }
                Ok(StringOrList(Err(v)))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Audience<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match StringOrList::deserialize(d)?.0 {
            Ok(one) => Self::One(one),
            Err(many) => Self::Many(many),
        })
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

/// The registered claims and those of RFC 9068 / RFC 8693 that Portcullis reads. Strings
/// borrow from the token's payload where they can (no escape in them); [`Claims::into_owned`]
/// detaches them. Only a JSON object is a claims set (RFC 7519 §7.2 step 10); a repeated
/// claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claims<'a> {
    /// Issuer.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<Cow<'a, str>>,
    /// Subject.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<Cow<'a, str>>,
    /// Audience.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience<'a>>,
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
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<Cow<'a, str>>,
    /// The client the token was issued to (RFC 9068 §2.2).
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Cow<'a, str>>,
    /// Space-separated scopes (RFC 9068 §2.2.3).
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Cow<'a, str>>,
    /// Confirmation (proof of possession).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Authorized party (OpenID Connect Core §2): the client, in tokens of issuers that
    /// name it so (Keycloak, Auth0, Entra ID) instead of `client_id`.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azp: Option<Cow<'a, str>>,
    /// Scopes as some issuers write them (Okta, Entra ID): a list or a space-separated string.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub scp: Option<ScopeClaim<'a>>,
}

/// A scope claim's two spellings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ScopeClaim<'a> {
    /// Space-separated.
    Text(Cow<'a, str>),
    /// One scope per element.
    List(Vec<Cow<'a, str>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ScopeClaim<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match StringOrList::deserialize(d)?.0 {
            Ok(text) => Self::Text(text),
            Err(list) => Self::List(list),
        })
    }
}

impl<'a> Claims<'a> {
    /// Reads a claims set: a JSON object (a derived reader would also take an array,
    /// member by position).
    pub fn from_json(json: &'a [u8]) -> Result<Self, JwtError> {
        if json.trim_ascii_start().first() != Some(&b'{') {
            return Err(JwtError::BadClaims);
        }
        // UTF-8 checked once for the whole, rather than string by string.
        let json = std::str::from_utf8(json).map_err(|_| JwtError::BadClaims)?;
        serde_json::from_str(json).map_err(|_| JwtError::BadClaims)
    }

    /// The same claims, owning their strings.
    pub fn into_owned(self) -> Claims<'static> {
        Claims {
            iss: owned(self.iss),
            sub: owned(self.sub),
            aud: self.aud.map(Audience::into_owned),
            exp: self.exp,
            nbf: self.nbf,
            iat: self.iat,
            jti: owned(self.jti),
            client_id: owned(self.client_id),
            scope: owned(self.scope),
            cnf: self.cnf,
            azp: owned(self.azp),
            scp: self.scp.map(|s| match s {
                ScopeClaim::Text(t) => ScopeClaim::Text(Cow::Owned(t.into_owned())),
                ScopeClaim::List(l) => ScopeClaim::List(owned_all(l)),
            }),
        }
    }

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
            (None, Some(ScopeClaim::List(l))) => l.iter().map(|s| &**s).collect(),
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
pub fn verify<'j>(
    jws: &'j Jws<'_>,
    key: &PublicKey,
    expect: &Expectations<'_>,
    now: Timestamp,
) -> Result<(Claims<'j>, Verified<Jwt>), JwtError> {
    let claims = Claims::from_json(jws.verify(key, expect.algorithms)?)?;
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
        if !aud
            .values()
            .iter()
            .any(|a| expect.audiences.iter().any(|e| e == a))
        {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok((claims, Verified::assertion()))
}

/// `typ` values compare as media types: case-insensitive, `application/` optional.
fn media_type_eq(got: &str, want: &str) -> bool {
    fn strip(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if s.len() > 12 && p.eq_ignore_ascii_case("application/") => &s[12..],
            _ => s,
        }
    }
    strip(got).eq_ignore_ascii_case(strip(want))
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
    ) -> Result<Claims<'static>, JwtError> {
        let jws = Jws::parse(t, MAX_TOKEN_LEN)?;
        let e = Expectations {
            algorithms: &[Algorithm::Es256],
            issuer: ISS,
            audiences: aud,
            typ,
            leeway_secs: 30,
        };
        verify(&jws, key, &e, Timestamp::from_secs(NOW)).map(|(c, _)| c.into_owned())
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
        let c = |v: serde_json::Value| {
            Claims::from_json(v.to_string().as_bytes())
                .unwrap()
                .into_owned()
        };
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
        assert!(Claims::from_json(br#"{"scp": 3}"#).is_err());
    }

    #[test]
    fn claims_borrow_plain_strings_unescape_others_and_must_be_one_object() {
        let json =
            br#"{"iss":"https:\/\/auth.example","sub":"u1","aud":["a","b\u0021"],"scp":["x"]}"#;
        let c = Claims::from_json(json).unwrap();
        assert!(matches!(c.sub, Some(Cow::Borrowed("u1"))));
        assert_eq!(c.iss.as_deref(), Some("https://auth.example"));
        let aud: Vec<&str> = c
            .aud
            .as_ref()
            .unwrap()
            .values()
            .iter()
            .map(|a| &**a)
            .collect();
        assert_eq!(aud, ["a", "b!"]);
        let owned: Claims<'static> = c.clone().into_owned();
        assert_eq!(owned, c);
        // A claims set is an object: not an array read by position, not a repeated claim.
        for bad in [
            &br#"["https://auth.example","u1"]"#[..],
            br#"{"sub":"a","sub":"b"}"#,
            br#"{"aud":["a",1]}"#,
            br#"{"aud":{"a":1}}"#,
            br#"{"exp":"soon"}"#,
            b"",
        ] {
            assert_eq!(Claims::from_json(bad), Err(JwtError::BadClaims));
        }
    }
}

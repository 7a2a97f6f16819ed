//! Who a request proved to be: the value that is forwarded upstream and checked against scopes.

use std::fmt;
use std::sync::Arc;

use crate::verified::Verified;
use crate::Timestamp;

/// An authentication scheme Portcullis knows by name.
///
/// Some are not built yet; configuration naming those is rejected at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheme {
    /// API keys (`X-API-Key` or `Authorization: Bearer`).
    ApiKey,
    /// HTTP Basic (RFC 7617).
    Basic,
    /// HTTP Digest (RFC 7616).
    Digest,
    /// HMAC request signing, the native scheme (and its legacy layouts).
    Hmac,
    /// JWT bearer tokens (RFC 9068).
    Jwt,
    /// Mutual TLS client certificates.
    Mtls,
    /// OAuth 1.0a (RFC 5849).
    OAuth1,
    /// AWS Signature Version 4 (`AWS4-HMAC-SHA256`).
    SigV4,
    /// RFC 9421 HTTP Message Signatures.
    HttpSignature,
}

impl Scheme {
    /// Every scheme, in canonical order.
    pub const ALL: [Scheme; 9] = [
        Scheme::ApiKey,
        Scheme::Basic,
        Scheme::Digest,
        Scheme::Hmac,
        Scheme::HttpSignature,
        Scheme::Jwt,
        Scheme::Mtls,
        Scheme::OAuth1,
        Scheme::SigV4,
    ];

    /// The name used in configuration and in `X-Portcullis-Scheme`.
    pub const fn name(self) -> &'static str {
        match self {
            Scheme::ApiKey => "api_key",
            Scheme::Basic => "basic",
            Scheme::Digest => "digest",
            Scheme::Hmac => "hmac",
            Scheme::Jwt => "jwt",
            Scheme::Mtls => "mtls",
            Scheme::OAuth1 => "oauth1",
            Scheme::SigV4 => "sigv4",
            Scheme::HttpSignature => "http_signature",
        }
    }

    /// Whether a credential of this scheme signs the request, body included: a route that
    /// takes it reads the body whole before the check.
    pub const fn signs_body(self) -> bool {
        matches!(self, Scheme::Hmac | Scheme::SigV4 | Scheme::HttpSignature)
    }

    /// The scheme with this configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A small set of schemes (the factors an identity was proven with).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SchemeSet(u16);

impl SchemeSet {
    /// A set holding one scheme.
    pub const fn one(s: Scheme) -> Self {
        Self(s.bit())
    }

    /// The union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the set holds `s`.
    pub const fn contains(self, s: Scheme) -> bool {
        self.0 & s.bit() != 0
    }

    /// The only scheme, when the set holds exactly one.
    pub fn single(self) -> Option<Scheme> {
        (self.0.count_ones() == 1)
            .then(|| self.iter().next())
            .flatten()
    }

    /// The schemes in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Scheme> {
        Scheme::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Display for SchemeSet {
    /// Comma-separated names in canonical order, as sent in `X-Portcullis-Scheme`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(s.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for SchemeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchemeSet({self})")
    }
}

/// Why a scope string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`, and we cap the length.
    #[error("scope {0:?} is not a valid RFC 6749 scope token (1-128 visible ASCII characters, no '\"' or '\\')")]
    Invalid(String),
}

/// A set of OAuth-style scopes, sorted and unique. Cheap to clone (shared).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Arc<Scopes>);

/// The shared part of a [`ScopeSet`]: the tokens and, computed once, their space-separated
/// form (forwarded upstream on every request).
#[derive(Default, PartialEq, Eq, Hash)]
struct Scopes {
    items: Box<[Box<str>]>,
    joined: Box<str>,
}

impl ScopeSet {
    fn from_sorted(v: Vec<Box<str>>) -> Self {
        let joined = v.join(" ").into();
        Self(Arc::new(Scopes {
            items: v.into(),
            joined,
        }))
    }
}

impl ScopeSet {
    /// Longest scope token accepted.
    pub const MAX_SCOPE_LEN: usize = 128;

    /// Builds a set from scope tokens, validating each per RFC 6749 §3.3.
    pub fn parse<I, S>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v: Vec<Box<str>> = Vec::new();
        for s in scopes {
            let s = s.as_ref();
            let ok = !s.is_empty()
                && s.len() <= Self::MAX_SCOPE_LEN
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
            if !ok {
                return Err(ScopeError::Invalid(
                    s.chars().take(Self::MAX_SCOPE_LEN).collect(),
                ));
            }
            v.push(s.into());
        }
        v.sort();
        v.dedup();
        Ok(Self::from_sorted(v))
    }

    /// Whether every scope in `required` is in this set.
    pub fn contains_all(&self, required: &ScopeSet) -> bool {
        required
            .0
            .items
            .iter()
            .all(|r| self.0.items.binary_search(r).is_ok())
    }

    /// The union of two sets.
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut v: Vec<Box<str>> = self.iter().chain(other.iter()).map(Into::into).collect();
        v.sort();
        v.dedup();
        Self::from_sorted(v)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.items.is_empty()
    }

    /// The scopes in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.items.iter().map(|s| &**s)
    }

    /// Space-separated, as in OAuth's `scope` parameter and `X-Portcullis-Scopes`.
    pub fn to_space_separated(&self) -> String {
        self.as_space_separated().to_owned()
    }

    /// Space-separated, without an allocation (computed when the set was built).
    pub fn as_space_separated(&self) -> &str {
        &self.0.joined
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What a successful authentication proves. Carries no secret, only ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The schemes that proved this identity (one, or several under an `all` policy).
    pub schemes: SchemeSet,
    /// The application, partner or service (for API keys: the key's owner).
    pub client_id: Option<Arc<str>>,
    /// The end user, when there is one.
    pub subject: Option<Arc<str>>,
    /// Scopes granted to this credential.
    pub scopes: ScopeSet,
    /// The credential's id (key id, certificate fingerprint, `jti`); never the secret.
    pub credential_id: Arc<str>,
    /// When the credential stops being valid, if it does.
    pub expires_at: Option<Timestamp>,
}

/// The non-secret facts about a credential, filled in by the caller from its records.
#[derive(Clone, Debug)]
pub struct Claims {
    /// See [`Identity::client_id`].
    pub client_id: Option<Arc<str>>,
    /// See [`Identity::subject`].
    pub subject: Option<Arc<str>>,
    /// See [`Identity::scopes`].
    pub scopes: ScopeSet,
    /// See [`Identity::credential_id`].
    pub credential_id: Arc<str>,
    /// See [`Identity::expires_at`].
    pub expires_at: Option<Timestamp>,
}

impl Identity {
    /// An identity for an API key that [`crate::api_key::verify`] accepted.
    pub fn from_api_key(_proof: Verified<crate::verified::ApiKey>, claims: Claims) -> Self {
        Self::new(Scheme::ApiKey, claims)
    }

    /// An identity for a JWT access token that [`crate::jwt::verify`] accepted.
    pub fn from_jwt(_proof: Verified<crate::jwt::Jwt>, claims: Claims) -> Self {
        Self::new(Scheme::Jwt, claims)
    }

    /// An identity for a signed request that one of the [`crate::hmac`] schemes verified.
    pub fn from_hmac(_proof: Verified<crate::verified::Hmac>, claims: Claims) -> Self {
        Self::new(Scheme::Hmac, claims)
    }

    /// An identity for a request whose AWS Signature V4 [`crate::hmac::sigv4::verify`]
    /// accepted.
    pub fn from_sigv4(_proof: Verified<crate::verified::Hmac>, claims: Claims) -> Self {
        Self::new(Scheme::SigV4, claims)
    }

    /// An identity for a request whose RFC 9421 signature [`crate::hmac::http_sig::verify`]
    /// accepted.
    pub fn from_http_signature(_proof: Verified<crate::verified::Hmac>, claims: Claims) -> Self {
        Self::new(Scheme::HttpSignature, claims)
    }

    fn new(scheme: Scheme, c: Claims) -> Self {
        Self {
            schemes: SchemeSet::one(scheme),
            client_id: c.client_id,
            subject: c.subject,
            scopes: c.scopes,
            credential_id: c.credential_id,
            expires_at: c.expires_at,
        }
    }

    /// Combines the identities proven under an `all` policy.
    ///
    /// Schemes and scopes are united (each factor was verified); client, subject and credential
    /// come from the first factor that has them, and the earliest expiry wins.
    pub fn combine(self, other: Identity) -> Identity {
        let expires_at = match (self.expires_at, other.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Identity {
            schemes: self.schemes.union(other.schemes),
            client_id: self.client_id.or(other.client_id),
            subject: self.subject.or(other.subject),
            scopes: self.scopes.union(&other.scopes),
            credential_id: self.credential_id,
            expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_scheme_and_joined_scopes() {
        assert_eq!(
            SchemeSet::one(Scheme::ApiKey).single(),
            Some(Scheme::ApiKey)
        );
        let two = SchemeSet::one(Scheme::ApiKey).union(SchemeSet::one(Scheme::Jwt));
        assert_eq!(two.single(), None);
        assert_eq!(SchemeSet::default().single(), None);
        let s = ScopeSet::parse(["b", "a", "b"]).unwrap();
        assert_eq!(s.as_space_separated(), "a b");
        let u = s.union(&ScopeSet::parse(["c"]).unwrap());
        assert_eq!(u.as_space_separated(), "a b c");
        assert_eq!(ScopeSet::default().as_space_separated(), "");
    }

    #[test]
    fn scheme_names_round_trip() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::from_name(s.name()), Some(s));
        }
        assert_eq!(Scheme::from_name("kerberos"), None);
    }

    #[test]
    fn scheme_set_displays_in_canonical_order() {
        let set = SchemeSet::one(Scheme::Mtls).union(SchemeSet::one(Scheme::ApiKey));
        assert_eq!(set.to_string(), "api_key,mtls");
    }

    #[test]
    fn scopes_are_sorted_unique_and_validated() {
        let s = ScopeSet::parse(["write:x", "read:echo", "write:x"]).unwrap();
        assert_eq!(s.to_space_separated(), "read:echo write:x");
        assert!(ScopeSet::parse(["has space"]).is_err());
        assert!(ScopeSet::parse([""]).is_err());
        assert!(ScopeSet::parse(["quo\"te"]).is_err());
        let need = ScopeSet::parse(["read:echo"]).unwrap();
        assert!(s.contains_all(&need));
        assert!(!need.contains_all(&s));
        assert!(s.contains_all(&ScopeSet::default()));
    }
}

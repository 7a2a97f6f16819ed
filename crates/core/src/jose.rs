//! JOSE: JWS in compact serialisation (RFC 7515), public JWKs (RFC 7517) and their
//! thumbprints (RFC 7638), for the algorithms of RFC 7518 and RFC 8037 that Portcullis takes.
//!
//! [`Jws::parse`] reads a token without trusting any of it; [`Jws::verify`] checks the
//! signature with a key the caller chose (never one the token names: `jku`, `x5u`, `jwk` and
//! `x5c` are read as nothing more than unknown header parameters), under an algorithm
//! allow-list, and only then hands out the payload.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::crypto::sha256;
use crate::crypto::sign::{KeyError, PublicKey, SigningKey};

/// The longest compact JWS [`Jws::parse`] reads, unless the caller bounds it lower.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWS algorithm Portcullis knows (RFC 7518 §3.1 names; `EdDSA` from RFC 8037). `none` is
/// not one of them, in any spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// HMAC with SHA-256 (a shared secret; never with a public key).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256 (MGF1 SHA-256, 32-byte salt).
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// EdDSA on Ed25519.
    EdDsa,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Es256,
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Hs256,
    ];

    /// The `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The algorithm named exactly `name` (names are case-sensitive, RFC 7515 §4.1.1).
    /// `Ed25519`, RFC 9864's fully-specified name for EdDSA on Ed25519 (the only EdDSA curve
    /// Portcullis takes), is [`Algorithm::EdDsa`] too: newer libraries (joserfc) sign with
    /// it, and the operation is the same. Portcullis itself still writes `EdDSA`, which
    /// every verifier knows.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "Ed25519" {
            return Some(Self::EdDsa);
        }
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether it is a public-key algorithm (the ones Portcullis signs with).
    pub fn is_asymmetric(self) -> bool {
        self != Self::Hs256
    }
}

/// Why a JWS or a JWK was refused. The texts are for logs; they never hold token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    /// Longer than the bound.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url parts joined by dots (a JWE has five: not taken either).
    #[error("not a compact JWS")]
    Malformed,
    /// A part is not strict base64url without padding.
    #[error("bad base64url")]
    BadBase64,
    /// The header is not a JSON object with a string `alg`, or repeats a member.
    #[error("bad JOSE header")]
    BadHeader,
    /// `alg` is `none`, unknown, or not on the verifier's allow-list.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `crit` names an extension Portcullis does not implement (it implements none).
    #[error("unsupported critical header")]
    UnsupportedCritical,
    /// The signature does not verify under the chosen key.
    #[error("bad signature")]
    BadSignature,
    /// A JWK is malformed or of a type or curve Portcullis does not take.
    #[error("bad JWK")]
    BadJwk,
}

/// The JOSE header members Portcullis reads besides `alg` (which [`Jws::algorithm`] gives,
/// typed). Others are ignored, which is what makes `jku`, `x5u`, `jwk` and `x5c` harmless:
/// nothing here can select a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// The key id.
    pub kid: Option<String>,
    /// The media type (`at+jwt`, `JWT`, `dpop+jwt` …).
    pub typ: Option<String>,
    /// Extensions the producer says must be understood.
    pub crit: Option<Vec<String>>,
}

/// The longest signature [`Jws::verify`] takes: RSA with an 8192-bit modulus.
const MAX_SIGNATURE_LEN: usize = 1024;

/// Headers up to this many decoded bytes are read from the stack.
const STACK_HEADER_LEN: usize = 512;

/// A compact JWS, parsed but not verified.
#[derive(Debug)]
pub struct Jws<'t> {
    header: Header,
    alg: Option<Algorithm>,
    signing_input: &'t str,
    /// Decoded (its form checked) by [`Jws::parse`]; handed out only by [`Jws::verify`].
    payload: Vec<u8>,
    /// Still base64url: decoded on the stack when it is checked.
    signature: &'t str,
}

/// Strict base64url without padding (RFC 7515 §2): no `=`, no whitespace, no stray bits.
pub fn b64_decode(s: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| JoseError::BadBase64)
}

/// [`b64_decode`] into `out`, returning the decoded bytes; `out` too short is bad base64 too
/// (the callers bound their input by it).
fn b64_decode_into<'o>(s: &str, out: &'o mut [u8]) -> Result<&'o [u8], JoseError> {
    let n = URL_SAFE_NO_PAD
        .decode_slice(s.as_bytes(), out)
        .map_err(|_| JoseError::BadBase64)?;
    Ok(&out[..n])
}

/// base64url without padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl<'t> Jws<'t> {
    /// Splits and decodes `token` (at most `max_len` bytes), checking only its form: three
    /// strict base64url parts, a header that is a JSON object with a string `alg` and no
    /// repeated member, no `crit` (Portcullis understands no extension, RFC 7515
    /// §4.1.11), and a signature no longer than an RSA-8192 one.
    pub fn parse(token: &'t str, max_len: usize) -> Result<Self, JoseError> {
        if token.len() > max_len.min(MAX_TOKEN_LEN) {
            return Err(JoseError::TooLarge);
        }
        let (h, rest) = token.split_once('.').ok_or(JoseError::Malformed)?;
        let (p, s) = rest.split_once('.').ok_or(JoseError::Malformed)?;
        if h.is_empty() || s.is_empty() || s.contains('.') {
            // An empty signature is what `alg: none` tokens carry.
            return Err(JoseError::Malformed);
        }
        let (header, alg) = if h.len() <= STACK_HEADER_LEN / 3 * 4 {
            let mut buf = [0u8; STACK_HEADER_LEN];
            parse_header(b64_decode_into(h, &mut buf)?)?
        } else {
            parse_header(&b64_decode(h)?)?
        };
        if header.crit.is_some() {
            return Err(JoseError::UnsupportedCritical);
        }
        // Decoded now so that a token is either well-formed or refused as a whole; its
        // JSON is read only after the signature.
        let payload = b64_decode(p)?;
        if s.len() > MAX_SIGNATURE_LEN / 3 * 4 + 2 || !is_b64url(s) {
            return Err(JoseError::BadBase64);
        }
        Ok(Self {
            alg,
            header,
            signing_input: &token[..h.len() + 1 + p.len()],
            payload,
            signature: s,
        })
    }

    /// The header, unverified: its `kid` may be used to look up a key, nothing more.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The algorithm the header names, if Portcullis knows it.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.alg
    }

    /// Verifies the signature under `key`, with `alg` from the header only if it is in
    /// `allowed` and suits the key's type; returns the decoded payload.
    pub fn verify(&self, key: &PublicKey, allowed: &[Algorithm]) -> Result<&[u8], JoseError> {
        let alg = self
            .alg
            .filter(|a| allowed.contains(a) && key.suits(*a))
            .ok_or(JoseError::AlgorithmNotAllowed)?;
        // On the stack, in a buffer sized for the HMAC and elliptic-curve signatures unless
        // it is longer (+3: the decoder's estimate rounds up to whole groups).
        let ok = if self.signature.len() <= 96 {
            let mut buf = [0u8; 72 + 3];
            key.verify(
                alg,
                self.signing_input.as_bytes(),
                b64_decode_into(self.signature, &mut buf)?,
            )
        } else {
            let mut buf = [0u8; MAX_SIGNATURE_LEN + 3];
            key.verify(
                alg,
                self.signing_input.as_bytes(),
                b64_decode_into(self.signature, &mut buf)?,
            )
        };
        if !ok {
            return Err(JoseError::BadSignature);
        }
        Ok(&self.payload)
    }

    /// The payload without verifying anything. Only for reading claims that choose the key
    /// (`iss`) before [`Jws::verify`]; never for a decision.
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.len() % 4 != 1
}

/// A header is a JSON object; repeated members are refused (RFC 7515 §5.2 step 4 allows
/// refusing them, and two `alg`s are how confusion attacks start). One pass: the members
/// Portcullis reads are typed as they come, the others skipped unread and their names kept
/// to catch a repeat (at most 64 members).
fn parse_header(json: &[u8]) -> Result<(Header, Option<Algorithm>), JoseError> {
    std::str::from_utf8(json)
        .ok()
        .and_then(|json| serde_json::from_str::<UniqueHeader>(json).ok())
        .map(|h| (h.header, h.alg))
        .ok_or(JoseError::BadHeader)
}

/// [`Header`] read member by member, so that a repeated name is seen.
struct UniqueHeader {
    header: Header,
    alg: Option<Algorithm>,
}

impl<'de> Deserialize<'de> for UniqueHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                use std::borrow::Cow;
                let repeated = || A::Error::custom("repeated member");
                // The names read: the four known ones as flags, the others (rare) kept.
                let mut others: Vec<Cow<'de, str>> = Vec::new();
                let (mut seen_kid, mut seen_typ, mut seen_crit) = (false, false, false);
                let mut alg: Option<Option<Algorithm>> = None;
                let mut h = Header::default();
                let mut members = 0;
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    members += 1;
                    if members > 64 {
                        return Err(A::Error::custom("too many members"));
                    }
                    let once = |seen: &mut bool| {
                        if std::mem::replace(seen, true) {
                            Err(repeated())
                        } else {
                            Ok(())
                        }
                    };
                    match &*name {
                        "alg" => {
                            if alg.is_some() {
                                return Err(repeated());
                            }
                            let name = map.next_value::<Cow<'de, str>>()?;
                            alg = Some(Algorithm::from_name(&name));
                        }
                        "kid" => {
                            once(&mut seen_kid)?;
                            h.kid = map.next_value()?;
                        }
                        "typ" => {
                            once(&mut seen_typ)?;
                            h.typ = map.next_value()?;
                        }
                        "crit" => {
                            once(&mut seen_crit)?;
                            h.crit = map.next_value()?;
                        }
                        _ => {
                            if others.contains(&name) {
                                return Err(repeated());
                            }
                            map.next_value::<serde::de::IgnoredAny>()?;
                            others.push(name);
                        }
                    }
                }
                let alg = alg.ok_or_else(|| A::Error::missing_field("alg"))?;
                Ok(UniqueHeader { header: h, alg })
            }
        }
        d.deserialize_map(V)
    }
}

/// Signs `claims` (a JSON object, already serialised) as a compact JWS with `key`, putting
/// `kid` and `typ` in the header.
pub fn sign_compact(
    key: &SigningKey,
    kid: &str,
    typ: Option<&str>,
    claims: &[u8],
) -> Result<String, KeyError> {
    #[derive(Serialize)]
    struct Out<'a> {
        alg: &'a str,
        kid: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        typ: Option<&'a str>,
    }
    let header = serde_json::to_vec(&Out {
        alg: key.algorithm().name(),
        kid,
        typ,
    })
    .map_err(|_| KeyError::Library)?;
    let mut token = b64_encode(&header);
    token.push('.');
    token.push_str(&b64_encode(claims));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64_encode(&signature));
    Ok(token)
}

/// A public JWK as published in a JWKS (RFC 7517 §4) and as registered for clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`, `RSA` or `OKP`.
    pub kty: String,
    /// The curve (`P-256`, `Ed25519`), for `EC` and `OKP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// x coordinate (`EC`) or the public key (`OKP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// y coordinate (`EC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Modulus (`RSA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Exponent (`RSA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The algorithm the key is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `sig` for signing keys.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Private members (`d`, `p`, `q`, `k` …) are refused, not carried: a published or
    /// registered key must be public.
    #[serde(default, skip_serializing)]
    pub d: Option<serde_json::Value>,
}

impl Jwk {
    /// The JWK of a public key, with its RFC 7638 thumbprint as `kid`.
    pub fn from_public(key: &PublicKey, alg: Algorithm) -> Result<Self, JoseError> {
        let mut jwk = Self {
            kty: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: None,
            alg: Some(alg.name().to_owned()),
            use_: Some("sig".to_owned()),
            d: None,
        };
        match key {
            PublicKey::Ec { x, y } => {
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(b64_encode(x));
                jwk.y = Some(b64_encode(y));
            }
            PublicKey::Rsa { n, e } => {
                jwk.kty = "RSA".into();
                jwk.n = Some(b64_encode(n));
                jwk.e = Some(b64_encode(e));
            }
            PublicKey::Ed25519 { x } => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64_encode(x));
            }
            PublicKey::Oct { .. } => return Err(JoseError::BadJwk),
        }
        jwk.kid = Some(jwk.thumbprint()?);
        Ok(jwk)
    }

    /// The public key it describes, checked: only P-256 `EC`, `RSA` of at least 2048 bits and
    /// Ed25519 `OKP`; no private member.
    pub fn public_key(&self) -> Result<PublicKey, JoseError> {
        if self.d.is_some() {
            return Err(JoseError::BadJwk);
        }
        let field = |v: &Option<String>| -> Result<Vec<u8>, JoseError> {
            b64_decode(v.as_deref().ok_or(JoseError::BadJwk)?).map_err(|_| JoseError::BadJwk)
        };
        let key = match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => PublicKey::Ec {
                x: field(&self.x)?,
                y: field(&self.y)?,
            },
            ("RSA", None) => PublicKey::Rsa {
                n: field(&self.n)?,
                e: field(&self.e)?,
            },
            ("OKP", Some("Ed25519")) => PublicKey::Ed25519 { x: field(&self.x)? },
            _ => return Err(JoseError::BadJwk),
        };
        key.check().map_err(|_| JoseError::BadJwk)?;
        Ok(key)
    }

    /// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order,
    /// without whitespace, base64url.
    pub fn thumbprint(&self) -> Result<String, JoseError> {
        fn need(v: &Option<String>) -> Result<&str, JoseError> {
            v.as_deref().ok_or(JoseError::BadJwk)
        }
        // serde_json escapes strings as RFC 7638 §3.1 asks (the members hold base64url and
        // fixed names, so there is nothing to escape in practice).
        let s = |v: &str| serde_json::to_string(v).map_err(|_| JoseError::BadJwk);
        let canonical = match self.kty.as_str() {
            "EC" => format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                s(need(&self.crv)?)?,
                s(need(&self.x)?)?,
                s(need(&self.y)?)?
            ),
            "RSA" => format!(
                r#"{{"e":{},"kty":"RSA","n":{}}}"#,
                s(need(&self.e)?)?,
                s(need(&self.n)?)?
            ),
            "OKP" => format!(
                r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
                s(need(&self.crv)?)?,
                s(need(&self.x)?)?
            ),
            _ => return Err(JoseError::BadJwk),
        };
        Ok(b64_encode(&sha256(canonical.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 Appendix A: the payload every example signs.
    const PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    const PAYLOAD_JSON: &[u8] =
        b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

    fn jwk(json: &str) -> Jwk {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rfc7515_a1_hs256() {
        let token = format!(
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.{PAYLOAD}.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        let k = b64_decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow").unwrap();
        let key = PublicKey::Oct {
            k: zeroize::Zeroizing::new(k.clone()),
        };
        let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.header().typ.as_deref(), Some("JWT"));
        assert_eq!(jws.verify(&key, &[Algorithm::Hs256]).unwrap(), PAYLOAD_JSON);
        // Not on the allow-list: refused before any MAC is computed.
        assert_eq!(
            jws.verify(&key, &[Algorithm::Rs256]).unwrap_err(),
            JoseError::AlgorithmNotAllowed
        );
        // Our HMAC gives the RFC's bytes.
        let input = token.rsplit_once('.').unwrap().0;
        assert_eq!(
            b64_encode(&crate::crypto::sign::hmac_sha256(&k, input.as_bytes())),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
    }

    const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const A2_SIG: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

    #[test]
    fn rfc7515_a2_rs256() {
        let key = jwk(&format!(r#"{{"kty":"RSA","n":"{A2_N}","e":"AQAB"}}"#))
            .public_key()
            .unwrap();
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{PAYLOAD}.{A2_SIG}");
        let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.verify(&key, &[Algorithm::Rs256]).unwrap(), PAYLOAD_JSON);
        // The same key under PS256 (a header rewritten) does not verify the PKCS#1 signature.
        let ps = format!("eyJhbGciOiJQUzI1NiJ9.{PAYLOAD}.{A2_SIG}");
        assert_eq!(
            Jws::parse(&ps, MAX_TOKEN_LEN)
                .unwrap()
                .verify(&key, &[Algorithm::Rs256, Algorithm::Ps256])
                .unwrap_err(),
            JoseError::BadSignature
        );
    }

    const A3_KEY: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const A3_SIG: &str =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    #[test]
    fn rfc7515_a3_es256() {
        let key = jwk(A3_KEY).public_key().unwrap();
        let token = format!("eyJhbGciOiJFUzI1NiJ9.{PAYLOAD}.{A3_SIG}");
        let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.verify(&key, &[Algorithm::Es256]).unwrap(), PAYLOAD_JSON);
        // One bit of the payload changed.
        let bad = token.replacen("eyJpc3Mi", "eyJpc3Ni", 1);
        assert_eq!(
            Jws::parse(&bad, MAX_TOKEN_LEN)
                .unwrap()
                .verify(&key, &[Algorithm::Es256])
                .unwrap_err(),
            JoseError::BadSignature
        );
    }

    /// RFC 8037 Appendix A: the Ed25519 key, its thumbprint, and the signed example.
    const OKP: &str =
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    #[test]
    fn rfc8037_ed25519() {
        let j = jwk(OKP);
        assert_eq!(
            j.thumbprint().unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let jws = Jws::parse(token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(
            jws.verify(&j.public_key().unwrap(), &[Algorithm::EdDsa])
                .unwrap(),
            b"Example of Ed25519 signing"
        );
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        let j = jwk(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        );
        assert_eq!(
            j.thumbprint().unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn what_we_sign_verifies_and_carries_kid_and_typ() {
        for alg in [
            Algorithm::Es256,
            Algorithm::EdDsa,
            Algorithm::Rs256,
            Algorithm::Ps256,
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = Jwk::from_public(&key.public_key(), alg).unwrap();
            let kid = jwk.kid.clone().unwrap();
            assert_eq!(kid, jwk.thumbprint().unwrap());
            let token = sign_compact(&key, &kid, Some("at+jwt"), br#"{"sub":"a"}"#).unwrap();
            let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
            assert_eq!(jws.header().kid.as_deref(), Some(kid.as_str()));
            assert_eq!(jws.header().typ.as_deref(), Some("at+jwt"));
            // The published JWK (through JSON, as a client reads it) verifies it.
            let published: Jwk =
                serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
            assert_eq!(
                jws.verify(&published.public_key().unwrap(), &[alg])
                    .unwrap(),
                br#"{"sub":"a"}"#
            );
        }
    }

    fn es256_token(header: &str) -> (String, PublicKey) {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut t = format!("{}.{}", b64_encode(header.as_bytes()), b64_encode(b"{}"));
        let s = key.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&b64_encode(&s));
        (t, key.public_key())
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused_with_the_right_error() {
        let (good, key) = es256_token(r#"{"alg":"ES256"}"#);
        let verify = |t: &str| {
            Jws::parse(t, MAX_TOKEN_LEN)
                .and_then(|j| j.verify(&key, &[Algorithm::Es256]).map(<[u8]>::to_vec))
        };
        assert!(verify(&good).is_ok());
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();

        // alg none, in several spellings, with and without a signature.
        for none in ["none", "None", "NONE", "nOnE"] {
            let h = b64_encode(format!(r#"{{"alg":"{none}"}}"#).as_bytes());
            assert_eq!(
                verify(&format!("{h}.{p}.")).unwrap_err(),
                JoseError::Malformed
            );
            assert_eq!(
                verify(&format!("{h}.{p}.{s}")).unwrap_err(),
                JoseError::AlgorithmNotAllowed
            );
        }
        // Algorithm confusion: HS256 "signed" with the public key's bytes.
        let PublicKey::Ec { x, y } = &key else {
            unreachable!()
        };
        let hs = b64_encode(br#"{"alg":"HS256"}"#);
        let mut pem_like = vec![4u8];
        pem_like.extend_from_slice(x);
        pem_like.extend_from_slice(y);
        let input = format!("{hs}.{p}");
        let mac = crate::crypto::sign::hmac_sha256(&pem_like, input.as_bytes());
        let forged = format!("{input}.{}", b64_encode(&mac));
        assert_eq!(
            Jws::parse(&forged, MAX_TOKEN_LEN)
                .unwrap()
                .verify(&key, &[Algorithm::Es256, Algorithm::Hs256])
                .unwrap_err(),
            JoseError::AlgorithmNotAllowed
        );
        // Stripped, truncated, zero signatures.
        assert_eq!(
            verify(&format!("{h}.{p}")).unwrap_err(),
            JoseError::Malformed
        );
        assert_eq!(
            verify(&format!("{h}.{p}.{}", &s[..s.len() - 2])).unwrap_err(),
            JoseError::BadSignature
        );
        assert_eq!(
            verify(&format!("{h}.{p}.{}", b64_encode(&[0u8; 64]))).unwrap_err(),
            JoseError::BadSignature
        );
        // Bad base64: padding, the standard alphabet, whitespace, stray bits.
        for bad in [
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.+{}", &s[1..]),
            format!("{h}.{p} .{s}"),
            format!("{h}.{p}.{s}A"),
        ] {
            let e = verify(&bad).unwrap_err();
            assert!(
                matches!(e, JoseError::BadBase64 | JoseError::BadSignature),
                "{bad}: {e:?}"
            );
        }
        // Five parts (a JWE) and two.
        assert_eq!(
            verify(&format!("{good}.a.b")).unwrap_err(),
            JoseError::Malformed
        );
        // Headers: not an object, no alg, alg not a string, alg twice, unknown crit.
        for (header, err) in [
            ("[]", JoseError::BadHeader),
            ("{}", JoseError::BadHeader),
            (r#"{"alg":256}"#, JoseError::BadHeader),
            (r#"{"alg":"HS256","alg":"ES256"}"#, JoseError::BadHeader),
            // The same name escaped, an unread member twice, kid twice.
            (r#"{"alg":"ES256","\u0061lg":"none"}"#, JoseError::BadHeader),
            (r#"{"alg":"ES256","x":1,"x":[2]}"#, JoseError::BadHeader),
            (
                r#"{"alg":"ES256","kid":"a","kid":"b"}"#,
                JoseError::BadHeader,
            ),
            (r#"{"alg":"ES256","kid":7}"#, JoseError::BadHeader),
            (
                r#"{"alg":"ES256","crit":["exp"],"exp":1}"#,
                JoseError::UnsupportedCritical,
            ),
            (
                r#"{"alg":"ES256","crit":["b64"],"b64":false}"#,
                JoseError::UnsupportedCritical,
            ),
        ] {
            let (t, _) = es256_token(header);
            assert_eq!(verify(&t).unwrap_err(), err, "{header}");
        }
        // At most 64 members.
        let many: String = (0..65).map(|i| format!(",\"m{i}\":{i}")).collect();
        let (t, _) = es256_token(&format!(r#"{{"alg":"ES256"{many}}}"#));
        assert_eq!(verify(&t).unwrap_err(), JoseError::BadHeader);
        let fine: String = (0..60).map(|i| format!(",\"m{i}\":{i}")).collect();
        let (t, _) = es256_token(&format!(r#"{{"alg":"ES256"{fine}}}"#));
        assert_ne!(verify(&t).unwrap_err(), JoseError::BadHeader);
        // An attacker's own key in jwk / jku / x5c does not select the key: the token signed
        // with it is checked against ours, and fails.
        let attacker = SigningKey::generate(Algorithm::Es256).unwrap();
        let their_jwk = serde_json::to_string(
            &Jwk::from_public(&attacker.public_key(), Algorithm::Es256).unwrap(),
        )
        .unwrap();
        let header = format!(
            r#"{{"alg":"ES256","jwk":{their_jwk},"jku":"https://evil.example/jwks","x5c":["MIIB"],"x5u":"https://evil.example/c"}}"#
        );
        let mut t = format!("{}.{p}", b64_encode(header.as_bytes()));
        let sig = attacker.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&b64_encode(&sig));
        assert_eq!(verify(&t).unwrap_err(), JoseError::BadSignature);
        // Oversize.
        let big = format!("{h}.{}.{s}", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(verify(&big).unwrap_err(), JoseError::TooLarge);
        assert_eq!(
            Jws::parse(&good, 100).unwrap_err(),
            JoseError::TooLarge,
            "the caller's bound"
        );
    }

    #[test]
    fn jwks_refuse_private_members_and_keys_we_do_not_take() {
        let mut with_d: Jwk = jwk(A3_KEY);
        with_d.d = Some(serde_json::json!(
            "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
        ));
        assert_eq!(with_d.public_key().unwrap_err(), JoseError::BadJwk);
        // P-384, a 1024-bit RSA key, an oct key, an X25519 key.
        for j in [
            r#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}"#,
            r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#,
            r#"{"kty":"oct","k":"AAAA"}"#,
            r#"{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        ] {
            assert_eq!(jwk(j).public_key().unwrap_err(), JoseError::BadJwk, "{j}");
        }
        // A point that is not on the curve parses as a JWK but verifies nothing.
        let off = jwk(r#"{"kty":"EC","crv":"P-256","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#)
            .public_key()
            .unwrap();
        let token = format!("eyJhbGciOiJFUzI1NiJ9.{PAYLOAD}.{A3_SIG}");
        assert_eq!(
            Jws::parse(&token, MAX_TOKEN_LEN)
                .unwrap()
                .verify(&off, &[Algorithm::Es256])
                .unwrap_err(),
            JoseError::BadSignature
        );
    }

    #[test]
    fn rfc9864_ed25519_names_the_same_verification_as_eddsa() {
        assert_eq!(Algorithm::from_name("Ed25519"), Some(Algorithm::EdDsa));
        assert_eq!(Algorithm::from_name("ed25519"), None);
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let input = format!(
            "{}.{}",
            b64_encode(br#"{"alg":"Ed25519"}"#),
            b64_encode(b"{}")
        );
        let token = format!(
            "{input}.{}",
            b64_encode(&key.sign(input.as_bytes()).unwrap())
        );
        let jws = Jws::parse(&token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.algorithm(), Some(Algorithm::EdDsa));
        assert!(jws.verify(&key.public_key(), &[Algorithm::EdDsa]).is_ok());
    }
}

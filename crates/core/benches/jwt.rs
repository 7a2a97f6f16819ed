//! JWT verification per algorithm: Portcullis's full path (parse, algorithm allow-list,
//! signature, claims) against the bare signature primitive it rests on, and against the
//! `jsonwebtoken` crate doing the same checks, on the same token.
//!
//! `cargo bench -p portcullis-core --bench jwt`
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis_core::crypto::sign::{hmac_sha256, PublicKey, SigningKey};
use portcullis_core::jose::{b64_encode, sign_compact, Algorithm, Jws, MAX_TOKEN_LEN};
use portcullis_core::jwt::{self, Expectations};
use portcullis_core::Timestamp;

const ISS: &str = "https://issuer.example";
const AUD: &str = "https://api.example";
// In the past: jsonwebtoken checks nbf against the real clock (its exp check is off).
const NOW: i64 = 1_700_000_000;

fn claims() -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": "svc", "aud": AUD, "exp": NOW + 900, "iat": NOW,
        "nbf": NOW, "jti": "j1", "client_id": "svc", "scope": "read:echo"})
}

/// A token, the key to verify it, and the jsonwebtoken crate's view of both.
struct Case {
    alg: Algorithm,
    token: String,
    key: PublicKey,
    jt_key: jsonwebtoken::DecodingKey,
    jt_alg: jsonwebtoken::Algorithm,
}

fn case(alg: Algorithm) -> Case {
    let payload = claims().to_string();
    if alg == Algorithm::Hs256 {
        let secret = [7u8; 32];
        let input = format!(
            "{}.{}",
            b64_encode(br#"{"alg":"HS256","typ":"JWT","kid":"h1"}"#),
            b64_encode(payload.as_bytes())
        );
        let tag = hmac_sha256(&secret, input.as_bytes());
        return Case {
            alg,
            token: format!("{input}.{}", b64_encode(&tag)),
            key: PublicKey::Oct {
                k: secret.to_vec().into(),
            },
            jt_key: jsonwebtoken::DecodingKey::from_secret(&secret).unwrap(),
            jt_alg: jsonwebtoken::Algorithm::HS256,
        };
    }
    let signer = SigningKey::generate(alg).unwrap();
    let token = sign_compact(&signer, "k1", Some("JWT"), payload.as_bytes()).unwrap();
    let key = signer.public_key();
    let (jt_key, jt_alg) = match &key {
        PublicKey::Ec { x, y } => (
            jsonwebtoken::DecodingKey::from_ec_components(&b64_encode(x), &b64_encode(y)).unwrap(),
            jsonwebtoken::Algorithm::ES256,
        ),
        PublicKey::Rsa { n, e } => (
            jsonwebtoken::DecodingKey::from_rsa_components(&b64_encode(n), &b64_encode(e)).unwrap(),
            jsonwebtoken::Algorithm::RS256,
        ),
        PublicKey::Ed25519 { x } => (
            jsonwebtoken::DecodingKey::from_ed_components(&b64_encode(x)).unwrap(),
            jsonwebtoken::Algorithm::EdDSA,
        ),
        PublicKey::Oct { .. } => unreachable!(),
    };
    Case {
        alg,
        token,
        key,
        jt_key,
        jt_alg,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt_verify");
    let aud = vec![AUD.to_owned()];
    let now = Timestamp::from_secs(NOW);
    for alg in [
        Algorithm::Hs256,
        Algorithm::Rs256,
        Algorithm::Es256,
        Algorithm::EdDsa,
    ] {
        let k = case(alg);
        let name = alg.name();
        let (input, sig) = {
            let (input, sig) = k.token.rsplit_once('.').unwrap();
            (
                input.to_owned(),
                portcullis_core::jose::b64_decode(sig).unwrap(),
            )
        };
        // The primitive alone: one signature check over the signing input.
        g.bench_function(BenchmarkId::new("primitive", name), |b| {
            b.iter(|| assert!(k.key.verify(k.alg, input.as_bytes(), &sig)))
        });
        // Ours: parse, allow-list, signature, then iss/exp/nbf/iat/aud.
        let expect = Expectations {
            algorithms: &[k.alg],
            issuer: ISS,
            audiences: &aud,
            typ: None,
            leeway_secs: 30,
        };
        g.bench_function(BenchmarkId::new("portcullis", name), |b| {
            b.iter(|| {
                let jws = Jws::parse(&k.token, MAX_TOKEN_LEN).unwrap();
                // Claims borrow from the token: dropped here, in the measured loop.
                let (claims, _) = jwt::verify(&jws, &k.key, &expect, now).unwrap();
                std::hint::black_box(claims);
            })
        });
        if alg == Algorithm::Hs256 {
            // Where the overhead goes: the form check and header alone, the claims alone.
            g.bench_function("parse_only/HS256", |b| {
                b.iter(|| Jws::parse(&k.token, MAX_TOKEN_LEN).unwrap())
            });
            let payload = Jws::parse(&k.token, MAX_TOKEN_LEN)
                .unwrap()
                .unverified_payload()
                .to_vec();
            g.bench_function("claims_only/HS256", |b| {
                b.iter(|| jwt::Claims::from_json(&payload).unwrap())
            });
        }
        // jsonwebtoken: the same checks (its clock is the real one: exp is set far ahead).
        let mut v = jsonwebtoken::Validation::new(k.jt_alg);
        v.set_issuer(&[ISS]);
        v.set_audience(&[AUD]);
        v.validate_nbf = true;
        v.validate_exp = false;
        g.bench_function(BenchmarkId::new("jsonwebtoken", name), |b| {
            b.iter(|| jsonwebtoken::decode::<serde_json::Value>(&k.token, &k.jt_key, &v).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

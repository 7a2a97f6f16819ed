//! The `jwt` scheme's cost per request on Portcullis's own tokens (ES256): a token presented
//! again (the verified-token cache: one SHA-256, one lookup, the revocation check) and a
//! token not seen before (the full verification), through `authenticate_now` as the gate
//! calls it.
//!
//! `cargo bench -p portcullis-domain --bench jwt`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_core::crypto::seal::SealKey;
use portcullis_core::{RequestParts, Timestamp};
use portcullis_domain::authn::jwt::{JwtAuthenticator, JwtConfig};
use portcullis_domain::authn::{Authenticator, RouteAuth};
use portcullis_domain::dpop::DpopChecker;
use portcullis_domain::oauth::Revocations;
use portcullis_domain::signing::{KeyRing, RingConfig};
use portcullis_store::memory::MemoryStore;

const ISS: &str = "http://127.0.0.1:8080";
const NOW: i64 = 1_800_000_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(NOW);
    let ring = Arc::new(
        rt.block_on(KeyRing::open(
            store.clone(),
            SealKey::new(&[1; 32]),
            RingConfig::default(),
            now,
        ))
        .unwrap(),
    );
    let revocations = Arc::new(rt.block_on(Revocations::load(store.clone(), now)).unwrap());
    let make = |capacity| {
        JwtAuthenticator::new(
            JwtConfig {
                issuer: ISS.into(),
                audiences: vec![ISS.into()],
                leeway_secs: 30,
                cache_capacity: capacity,
            },
            ring.clone(),
            revocations.clone(),
            Arc::new(DpopChecker::new(store.clone(), 60)),
        )
    };
    let mint = |jti: &str| {
        let claims = serde_json::json!({"iss": ISS, "sub": "svc", "aud": ISS, "exp": NOW + 900,
            "iat": NOW, "nbf": NOW, "jti": jti, "client_id": "svc", "scope": "read:echo"});
        ring.signer(now)
            .unwrap()
            .sign(Some("at+jwt"), claims.to_string().as_bytes())
            .unwrap()
    };
    let headers = |t: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    };
    let route = RouteAuth::default();
    let method = http::Method::GET;
    let run = |a: &JwtAuthenticator, h: &http::HeaderMap| {
        let req = RequestParts {
            method: &method,
            path: "/jwt/",
            query: None,
            scheme: "http",
            authority: None,
            headers: h,
            client_ip: [127, 0, 0, 1].into(),
            conn: None,
            body: None,
        };
        assert!(a
            .authenticate_now(&req, &route, now)
            .unwrap()
            .unwrap()
            .is_some());
    };

    let mut g = c.benchmark_group("jwt_scheme_es256");
    let cached = make(1024);
    let one = headers(&mint("j0"));
    run(&cached, &one);
    g.bench_function("repeated_token_cached", |b| b.iter(|| run(&cached, &one)));
    // A cache of one entry and two tokens in turn: every request verifies in full.
    let uncached = make(1);
    let two = [headers(&mint("j1")), headers(&mint("j2"))];
    let mut i = 0;
    g.bench_function("new_token_full_verification", |b| {
        b.iter(|| {
            i ^= 1;
            run(&uncached, &two[i])
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

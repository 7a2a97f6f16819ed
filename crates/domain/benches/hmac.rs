//! The signing schemes' cost per request, as the gateway runs them (`authenticate`: parse,
//! the credential from the opened-secret cache, the time window, the body digest, the
//! signature, and the nonce or signature spent in the store — the memory store here, whose
//! map of live values is the SQLite store's, so the figure is the CPU cost; the SQLite
//! store's one `write` to its log is the load benchmark's), for a 1 KiB and a
//! 1 MiB body, next to the bare primitives in the same run: one HMAC-SHA256 of a 200-byte
//! string plus one SHA-256 of the body.
//!
//! `cargo bench -p portcullis-domain --bench hmac`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use portcullis_core::crypto::seal::SealKey;
use portcullis_core::crypto::sign::HmacAlg;
use portcullis_core::hmac::{compat, http_sig, native, sigv4};
use portcullis_core::{crypto, RequestParts, Timestamp};
use portcullis_domain::authn::hmac::HmacAuthenticator;
use portcullis_domain::authn::http_sig::HttpSigAuthenticator;
use portcullis_domain::authn::sigv4::SigV4Authenticator;
use portcullis_domain::authn::{Authenticator, HmacFormat, RouteAuth};
use portcullis_domain::hmac::{HmacAdmin, HmacKeys, NewHmac};
use portcullis_domain::ManualClock;
use portcullis_store::memory::MemoryStore;

const NOW: i64 = 1_800_000_000;
const HOST: &str = "127.0.0.1:8080";
const PATH: &str = "/orders";

fn parts<'a>(h: &'a http::HeaderMap, body: &'a [u8], query: Option<&'a str>) -> RequestParts<'a> {
    RequestParts {
        method: &http::Method::POST,
        path: PATH,
        query,
        scheme: "http",
        authority: Some(HOST),
        headers: h,
        client_ip: [127, 0, 0, 1].into(),
        conn: None,
        body: Some(body),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(NOW);
    let clock = Arc::new(ManualClock::new(now));
    let seal = Arc::new(SealKey::new(&[3; 32]));
    let keys = Arc::new(HmacKeys::new(store.clone(), seal.clone(), clock.clone()));
    let (key_id, secret) = rt.block_on(async {
        let (auditor, writer) = portcullis_domain::audit::channel(store.clone(), None, 1024)
            .await
            .unwrap();
        tokio::spawn(writer.run());
        let admin = HmacAdmin::new(store.clone(), keys.clone(), seal, auditor, clock.clone());
        let (r, s) = admin
            .create(
                portcullis_domain::admin::Actor {
                    name: "bench",
                    ip: None,
                },
                NewHmac {
                    name: "bench".into(),
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        (r.key_id, s.unwrap().expose().to_owned())
    });
    let native_auth = HmacAuthenticator::new(keys.clone(), store.clone());
    let sigv4_auth = SigV4Authenticator::new(keys.clone(), store.clone());
    let httpsig_auth = HttpSigAuthenticator::new(keys.clone(), store.clone());
    let route = RouteAuth::default();
    let mut kong_route = RouteAuth::default();
    kong_route.hmac.layout = HmacFormat::Gateway(compat::Format::Kong);
    let mut n = 0u64;
    let mut next = move || {
        n += 1;
        n
    };

    let (native_auth, sigv4_auth, httpsig_auth) = (&native_auth, &sigv4_auth, &httpsig_auth);
    let (route, kong_route) = (&route, &kong_route);
    let mut g = c.benchmark_group("hmac_verify");
    for size in [1024usize, 1024 * 1024] {
        let body_owned = vec![b'x'; size];
        let body = &body_owned[..];
        let label = if size == 1024 { "1KiB" } else { "1MiB" };
        g.throughput(Throughput::Bytes(size as u64));

        let text = vec![b'a'; 200];
        g.bench_function(
            BenchmarkId::new("primitives_hmac_sha256_plus_sha256", label),
            |b| {
                b.iter(|| {
                    let h = crypto::sha256(std::hint::black_box(body));
                    let mac =
                        crypto::sign::hmac_sha256(secret.as_bytes(), std::hint::black_box(&text));
                    (h, mac)
                })
            },
        );

        g.bench_function(BenchmarkId::new("native", label), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    let req = native::Request {
                        method: &http::Method::POST,
                        path: PATH,
                        query: None,
                        body,
                    };
                    let mut h = http::HeaderMap::new();
                    let nonce = format!("bench_nonce_{:016}", next());
                    for (k, v) in native::sign(
                        native::Layout::Native,
                        &req,
                        &key_id,
                        secret.as_bytes(),
                        &NOW.to_string(),
                        Some(&nonce),
                    )
                    .unwrap()
                    {
                        h.insert(k, v.parse().unwrap());
                    }
                    h
                },
                |h| async move {
                    let ok = native_auth
                        .authenticate(&parts(&h, body, None), route, now)
                        .await;
                    assert!(matches!(ok, Ok(Some(_))));
                },
                BatchSize::SmallInput,
            )
        });

        g.bench_function(BenchmarkId::new("sigv4", label), |b| {
            let date = sigv4::amz_date(now).unwrap();
            b.to_async(&rt).iter_batched(
                || {
                    let query = format!("i={}", next());
                    let mut h = http::HeaderMap::new();
                    h.insert("host", HOST.parse().unwrap());
                    let req = sigv4::Request {
                        method: &http::Method::POST,
                        path: PATH,
                        query: Some(&query),
                        headers: &h,
                        body,
                    };
                    let signer = sigv4::Signer {
                        access_key_id: &key_id,
                        secret: secret.as_bytes(),
                        region: "us-east-1",
                        service: "execute-api",
                        amz_date: &date,
                        session_token: None,
                        content_sha256: true,
                        path_rule: sigv4::PathRule::ByService,
                    };
                    let signed = sigv4::sign_headers(&req, &signer, &[]).unwrap();
                    for (k, v) in signed {
                        h.insert(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
                    }
                    (h, query)
                },
                |(h, query)| async move {
                    let ok = sigv4_auth
                        .authenticate(&parts(&h, body, Some(&query)), route, now)
                        .await;
                    assert!(matches!(ok, Ok(Some(_))));
                },
                BatchSize::SmallInput,
            )
        });

        g.bench_function(BenchmarkId::new("http_signature_hmac_sha256", label), |b| {
            let digest = http_sig::content_digest(body, &[http_sig::DigestAlgorithm::Sha256]);
            b.to_async(&rt).iter_batched(
                || {
                    let mut h = http::HeaderMap::new();
                    h.insert(http_sig::CONTENT_DIGEST, digest.parse().unwrap());
                    let req = http_sig::Request {
                        method: &http::Method::POST,
                        scheme: "http",
                        authority: HOST,
                        path: PATH,
                        query: None,
                        headers: &h,
                        body: Some(body),
                    };
                    let nonce = format!("n{}", next());
                    let params = http_sig::SignParams {
                        created: Some(now),
                        keyid: Some(&key_id),
                        nonce: Some(&nonce),
                        include_alg: true,
                        ..http_sig::SignParams::default()
                    };
                    let (input, sig) = http_sig::sign(
                        &req,
                        &["@method", "@target-uri", "content-digest"],
                        &params,
                        "sig1",
                        &http_sig::Signer::HmacSha256(secret.as_bytes()),
                    )
                    .unwrap();
                    h.insert(http_sig::SIGNATURE_INPUT, input.parse().unwrap());
                    h.insert(http_sig::SIGNATURE, sig.parse().unwrap());
                    h
                },
                |h| async move {
                    let ok = httpsig_auth
                        .authenticate(&parts(&h, body, None), route, now)
                        .await;
                    assert!(matches!(ok, Ok(Some(_))));
                },
                BatchSize::SmallInput,
            )
        });

        g.bench_function(BenchmarkId::new("kong_hmac_sha256", label), |b| {
            let date = now.to_http_date().unwrap();
            let digest = compat::digest(body);
            b.to_async(&rt).iter_batched(
                || {
                    let nonce = format!("n{}", next());
                    let mut h = http::HeaderMap::new();
                    h.insert("date", date.parse().unwrap());
                    h.insert("digest", digest.parse().unwrap());
                    h.insert("x-nonce", nonce.parse().unwrap());
                    let req = compat::Request {
                        method: &http::Method::POST,
                        path: PATH,
                        query: None,
                        headers: &h,
                        body,
                    };
                    let auth = compat::authorization(
                        compat::Format::Kong,
                        HmacAlg::Sha256,
                        &key_id,
                        secret.as_bytes(),
                        &["date", "request-line", "digest", "x-nonce"],
                        &req,
                    )
                    .unwrap();
                    h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
                    h
                },
                |h| async move {
                    let ok = native_auth
                        .authenticate(&parts(&h, body, None), kong_route, now)
                        .await;
                    assert!(matches!(ok, Ok(Some(_))));
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

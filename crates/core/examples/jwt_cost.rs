//! Runs one HS256 verification `N` times, either the bare HMAC primitive or Portcullis's
//! full path, so that `perf stat` can count what each costs without the VM's clock noise:
//!
//! ```sh
//! cargo build --release -p portcullis-core --example jwt_cost
//! perf stat -e instructions:u,cycles:u target/release/examples/jwt_cost primitive 1000000
//! perf stat -e instructions:u,cycles:u target/release/examples/jwt_cost full 1000000
//! ```
#![allow(clippy::unwrap_used)]

use portcullis_core::crypto::sign::{hmac_sha256, PublicKey};
use portcullis_core::jose::{b64_decode, b64_encode, Algorithm, Jws, MAX_TOKEN_LEN};
use portcullis_core::jwt::{self, Expectations};
use portcullis_core::Timestamp;

const ISS: &str = "https://issuer.example";
const AUD: &str = "https://api.example";
const NOW: i64 = 1_700_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "full".into());
    let n: u64 = args.next().map_or(1_000_000, |s| s.parse().unwrap());
    // The same token as `benches/jwt.rs`.
    let claims = serde_json::json!({"iss": ISS, "sub": "svc", "aud": AUD, "exp": NOW + 900,
        "iat": NOW, "nbf": NOW, "jti": "j1", "client_id": "svc", "scope": "read:echo"});
    let secret = [7u8; 32];
    let input = format!(
        "{}.{}",
        b64_encode(br#"{"alg":"HS256","typ":"JWT","kid":"h1"}"#),
        b64_encode(claims.to_string().as_bytes())
    );
    let token = format!(
        "{input}.{}",
        b64_encode(&hmac_sha256(&secret, input.as_bytes()))
    );
    let key = PublicKey::Oct {
        k: secret.to_vec().into(),
    };
    let aud = vec![AUD.to_owned()];
    let expect = Expectations {
        algorithms: &[Algorithm::Hs256],
        issuer: ISS,
        audiences: &aud,
        typ: None,
        leeway_secs: 30,
    };
    let now = Timestamp::from_secs(NOW);
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let sig = b64_decode(sig).unwrap();
    let mut ok = 0u64;
    for _ in 0..n {
        let token = std::hint::black_box(token.as_str());
        ok += u64::from(match mode.as_str() {
            "primitive" => key.verify(Algorithm::Hs256, signed.as_bytes(), &sig),
            "none" => !token.is_empty(),
            _ => {
                let jws = Jws::parse(token, MAX_TOKEN_LEN).unwrap();
                let (c, _) = jwt::verify(&jws, &key, &expect, now).unwrap();
                std::hint::black_box(c).exp.is_some()
            }
        });
    }
    assert_eq!(ok, n);
}

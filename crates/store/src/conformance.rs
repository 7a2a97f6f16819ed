//! One conformance suite, run against every backend (Hydra's `TestHelper…`, rustls's
//! per-provider tests). A backend's test module calls [`durable_suite`] / [`ephemeral_suite`]
//! with a constructor that returns a fresh, empty store.
//!
//! The functions panic on the first broken contract, naming it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::future::Future;

use portcullis_core::audit::{chain_hash, write_json, GENESIS};
use portcullis_core::ratelimit::{Algorithm, Limit};
use portcullis_core::Timestamp;

use crate::audit_block::{OwnedFields, Record};
use crate::{hmac_invalid, HmacCredentialRecord, HmacCredentials, Nonces, RevokedTokens};
use crate::{
    ApiKeyRecord, ApiKeys, AuditLog, AuditQuery, ClientRecord, Durable, KeyPatch, KeyUsage,
    OAuthClients, QuotaSpec, RateCells, RateLimitSpec, Retirement, Sealed, SigningKeyRecord,
    SigningKeys, StoreError,
};
use crate::{
    Attempt, AttemptNext, DeliveryStatus, WebhookDeliveryRecord, WebhookEndpointRecord, Webhooks,
};

/// A key record for tests; `n` makes id and hash unique.
pub fn sample_key(n: u8) -> ApiKeyRecord {
    ApiKeyRecord {
        id: format!("key_{n:03}"),
        name: format!("key {n}"),
        owner: Some(if n.is_multiple_of(2) {
            "even".into()
        } else {
            "odd".into()
        }),
        hash: [n; 32],
        display_prefix: format!("pk_test_{n:08}"),
        scopes: vec!["read:echo".into(), "write:x".into()],
        metadata: serde_json::json!({"team": "t", "n": n}),
        rate_limits: vec![RateLimitSpec {
            name: "burst".into(),
            algorithm: "gcra".into(),
            limit: 10,
            period_ms: 1000,
            burst: Some(5),
        }],
        quota: Some(QuotaSpec {
            limit: 100,
            refill_ms: 86_400_000,
        }),
        created_at: Timestamp::from_secs(1_700_000_000),
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
        rotated_to: None,
        last_used_at: None,
        last_used_ip: None,
        origin: "native".into(),
    }
}

/// An audit event continuing a chain after `prev`.
pub fn sample_event(
    seq: i64,
    prev: [u8; 32],
    kind: &str,
    outcome: &str,
    cred: Option<&str>,
) -> Record {
    let fields = OwnedFields {
        time_ms: (1_700_000_000 + seq) * 1000,
        kind: kind.to_owned(),
        outcome: outcome.to_owned(),
        request_id: Some(format!("req-{seq}")),
        route: None,
        scheme: None,
        reason: None,
        credential_id: cred.map(Into::into),
        client_ip: None,
        actor: None,
        detail: None,
    };
    let mut body = String::new();
    write_json(&fields.fields(), &mut body);
    Record {
        seq,
        hash: chain_hash(&prev, seq, body.as_bytes()),
        fields,
        prev_hash: prev,
    }
}

/// [`AuditLog::append`] of owned records.
pub async fn append(s: &impl AuditLog, records: &[Record]) -> Result<(), StoreError> {
    let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
    s.append(&sealed).await
}

/// Runs every durable-store contract against fresh stores from `make`.
pub async fn durable_suite<S, F, Fut>(make: F)
where
    S: Durable,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    api_keys_round_trip(&make().await).await;
    api_keys_conflicts(&make().await).await;
    api_keys_list_pages_and_filters(&make().await).await;
    api_keys_revoke(&make().await).await;
    api_keys_rotate(&make().await).await;
    api_keys_update(&make().await).await;
    api_keys_usage_and_ips(&make().await).await;
    api_keys_import_is_atomic(&make().await).await;
    audit_chain_append_query_scan(&make().await).await;
    audit_prune_keeps_a_verifiable_tail(&make().await).await;
    signing_keys_rotate_and_expire(&make().await).await;
    clients_round_trip(&make().await).await;
    revoked_tokens_until_expiry(&make().await).await;
    nonces_are_single_use_until_expiry(&make().await).await;
    hmac_round_trip_and_conflicts(&make().await).await;
    hmac_list_pages(&make().await).await;
    hmac_rotate_keeps_one_previous_secret(&make().await).await;
    hmac_concurrent_rotations_lose_no_secret(&make().await).await;
    hmac_rotate_refusals(&make().await).await;
    hmac_revoke_keeps_the_first_time(&make().await).await;
    webhook_endpoints_round_trip_rotate_disable_delete(&make().await).await;
    webhook_deliveries_enqueue_claim_and_record(&make().await).await;
    webhook_concurrent_claims_take_each_delivery_once(&make().await).await;
    webhook_delivery_log_pages_and_prunes(&make().await).await;
}

/// Sealed bytes for tests: every byte value (NUL and 0xff included), then `n`.
pub fn sample_sealed(n: u8) -> Vec<u8> {
    (0..=255u8).chain([n, 0, n]).collect()
}

/// A shared-secret HMAC credential for tests, with a sealed secret from [`sample_sealed`].
pub fn sample_hmac(key_id: &str) -> HmacCredentialRecord {
    HmacCredentialRecord {
        key_id: key_id.to_owned(),
        name: format!("partner {key_id}"),
        scopes: vec!["read:echo".into(), "write:echo".into()],
        secret: Some(sample_sealed(1)),
        previous_secret: None,
        previous_expires_at: None,
        public_key: None,
        public_key_alg: None,
        created_at: Timestamp::from_millis(1_000),
        rotated_at: None,
        revoked_at: None,
    }
}

/// A public-key (RFC 9421) credential for tests.
fn sample_public_key_hmac(key_id: &str) -> HmacCredentialRecord {
    HmacCredentialRecord {
        secret: None,
        public_key: Some(
            "-----BEGIN PUBLIC KEY-----\n\
             MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
             -----END PUBLIC KEY-----\n"
                .into(),
        ),
        public_key_alg: Some("ed25519".into()),
        ..sample_hmac(key_id)
    }
}

/// Whether `text` shows `bytes` in any of the ways `Debug` of a `Vec<u8>` or a slice would.
fn shows_bytes(text: &str, bytes: &[u8]) -> bool {
    let decimal = bytes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    text.contains(&decimal) || text.contains(&portcullis_core::crypto::hex(bytes))
}

async fn hmac_round_trip_and_conflicts(s: &impl HmacCredentials) {
    let a = sample_hmac("hk_a");
    s.insert_hmac(&a).await.unwrap();
    assert_eq!(
        s.find_hmac("hk_a").await.unwrap(),
        Some(a.clone()),
        "stored exactly"
    );
    // Every field set (a credential in its rotation grace, revoked since), scopes that need
    // JSON escaping.
    let full = HmacCredentialRecord {
        scopes: vec!["a \"quoted\" scope".into(), "é\\x".into()],
        secret: Some(sample_sealed(2)),
        previous_secret: Some(sample_sealed(3)),
        previous_expires_at: Some(Timestamp::from_millis(9_000)),
        rotated_at: Some(Timestamp::from_millis(2_000)),
        revoked_at: Some(Timestamp::from_millis(3_000)),
        ..sample_hmac("hk_full")
    };
    s.insert_hmac(&full).await.unwrap();
    let got = s.find_hmac("hk_full").await.unwrap().unwrap();
    assert_eq!(got, full, "every field stored exactly");
    assert_eq!(
        got.previous_secret.as_deref(),
        Some(&sample_sealed(3)[..]),
        "sealed bytes exactly"
    );
    let pk = HmacCredentialRecord {
        scopes: vec![],
        ..sample_public_key_hmac("hk_pk")
    };
    s.insert_hmac(&pk).await.unwrap();
    assert_eq!(s.find_hmac("hk_pk").await.unwrap(), Some(pk.clone()));
    assert_eq!(s.find_hmac("hk_nope").await.unwrap(), None, "unknown id");

    let same_id = HmacCredentialRecord {
        name: "other".into(),
        ..sample_public_key_hmac("hk_a")
    };
    assert!(
        matches!(s.insert_hmac(&same_id).await, Err(StoreError::Conflict(_))),
        "duplicate key id"
    );
    assert_eq!(
        s.find_hmac("hk_a").await.unwrap(),
        Some(a.clone()),
        "a refused insert changes nothing"
    );

    // Exactly one of a secret and a public key, and their companions.
    let both = HmacCredentialRecord {
        secret: Some(vec![1]),
        ..sample_public_key_hmac("hk_both")
    };
    let neither = HmacCredentialRecord {
        secret: None,
        ..sample_hmac("hk_neither")
    };
    let alg_only = HmacCredentialRecord {
        public_key_alg: Some("ed25519".into()),
        ..sample_hmac("hk_alg")
    };
    let no_deadline = HmacCredentialRecord {
        previous_secret: Some(vec![1]),
        ..sample_hmac("hk_nodeadline")
    };
    for bad in [both, neither, alg_only, no_deadline] {
        assert!(
            matches!(s.insert_hmac(&bad).await, Err(StoreError::Invalid(_))),
            "{bad:?}"
        );
        assert_eq!(s.find_hmac(&bad.key_id).await.unwrap(), None);
    }

    // Debug says whether the secrets are set, never what they are.
    let shown = format!("{full:?}");
    assert!(shown.contains("hk_full"), "{shown}");
    for secret in [&full.secret, &full.previous_secret] {
        assert!(!shows_bytes(&shown, secret.as_deref().unwrap()), "{shown}");
    }
    assert!(!shown.contains("0, 1, 2, 3"), "{shown}");
    assert!(shown.contains("<set>"), "{shown}");
}

async fn hmac_list_pages(s: &impl HmacCredentials) {
    assert!(s.list_hmac(None, 10).await.unwrap().is_empty());
    // Inserted out of order: the list is by key id.
    for id in ["hk_c", "hk_a", "hk_e", "hk_b", "hk_d"] {
        s.insert_hmac(&sample_hmac(id)).await.unwrap();
    }
    s.revoke_hmac("hk_b", Timestamp::from_millis(5_000))
        .await
        .unwrap();
    let ids = |v: Vec<HmacCredentialRecord>| v.into_iter().map(|c| c.key_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_hmac(None, 10).await.unwrap()),
        ["hk_a", "hk_b", "hk_c", "hk_d", "hk_e"],
        "ordered by key id, revoked ones included"
    );
    assert_eq!(ids(s.list_hmac(None, 2).await.unwrap()), ["hk_a", "hk_b"]);
    assert_eq!(
        ids(s.list_hmac(Some("hk_b"), 2).await.unwrap()),
        ["hk_c", "hk_d"],
        "after is exclusive"
    );
    assert_eq!(
        ids(s.list_hmac(Some("hk_d"), 2).await.unwrap()),
        ["hk_e"],
        "the last page"
    );
    assert_eq!(
        ids(s.list_hmac(Some("hk_bb"), 10).await.unwrap()),
        ["hk_c", "hk_d", "hk_e"],
        "after need not exist"
    );
    assert!(s.list_hmac(Some("hk_e"), 10).await.unwrap().is_empty());
    assert!(s.list_hmac(None, 0).await.unwrap().is_empty());
    assert_eq!(
        s.list_hmac(None, 10).await.unwrap()[0],
        sample_hmac("hk_a"),
        "listed exactly"
    );
}

async fn hmac_rotate_keeps_one_previous_secret(s: &impl HmacCredentials) {
    let c = sample_hmac("hk_a");
    s.insert_hmac(&c).await.unwrap();
    let t = Timestamp::from_millis;
    let r = s
        .rotate_hmac("hk_a", &sample_sealed(2), t(60_000), t(10_000))
        .await
        .unwrap();
    assert_eq!(
        r.secret,
        Some(sample_sealed(2)),
        "the new secret is current"
    );
    assert_eq!(
        r.previous_secret, c.secret,
        "the current one became the previous one"
    );
    assert_eq!(r.previous_expires_at, Some(t(60_000)));
    assert_eq!(r.rotated_at, Some(t(10_000)));
    assert_eq!(
        (&r.key_id, &r.name, &r.scopes, r.created_at, r.revoked_at),
        (&c.key_id, &c.name, &c.scopes, c.created_at, None),
        "the rest stays"
    );
    assert_eq!(
        s.find_hmac("hk_a").await.unwrap(),
        Some(r),
        "the rotation is stored"
    );

    let r2 = s
        .rotate_hmac("hk_a", &sample_sealed(3), t(90_000), t(20_000))
        .await
        .unwrap();
    assert_eq!(r2.secret, Some(sample_sealed(3)));
    assert_eq!(
        r2.previous_secret,
        Some(sample_sealed(2)),
        "a second rotation drops the oldest secret"
    );
    assert_eq!(
        (r2.previous_expires_at, r2.rotated_at),
        (Some(t(90_000)), Some(t(20_000)))
    );
    assert_eq!(s.find_hmac("hk_a").await.unwrap(), Some(r2));
}

async fn hmac_concurrent_rotations_lose_no_secret(s: &impl HmacCredentials) {
    s.insert_hmac(&sample_hmac("hk_a")).await.unwrap();
    let t = Timestamp::from_millis;
    let (x, y) = (sample_sealed(2), sample_sealed(3));
    let (rx, ry) = tokio::join!(
        s.rotate_hmac("hk_a", &x, t(60_000), t(10_000)),
        s.rotate_hmac("hk_a", &y, t(60_000), t(10_000)),
    );
    let (rx, ry) = (rx.unwrap(), ry.unwrap());
    let stored = s.find_hmac("hk_a").await.unwrap().unwrap();
    // One ran after the other: the later one's previous secret is the earlier one's.
    let (first, last) = if stored.secret.as_ref() == Some(&y) {
        (rx, ry)
    } else {
        (ry, rx)
    };
    assert_eq!(stored, last, "the later rotation is what is stored");
    assert_eq!(
        last.previous_secret, first.secret,
        "the secret the first rotation set is the previous one, not lost"
    );
    assert_eq!(first.previous_secret, Some(sample_sealed(1)));
}

async fn hmac_rotate_refusals(s: &impl HmacCredentials) {
    let t = Timestamp::from_millis;
    assert!(
        matches!(
            s.rotate_hmac("hk_nope", &[1], t(60_000), t(10_000)).await,
            Err(StoreError::NotFound)
        ),
        "unknown"
    );
    let pk = sample_public_key_hmac("hk_pk");
    s.insert_hmac(&pk).await.unwrap();
    assert!(
        matches!(
            s.rotate_hmac("hk_pk", &[1], t(60_000), t(10_000)).await,
            Err(StoreError::Invalid(hmac_invalid::NO_SECRET))
        ),
        "a public-key credential has no secret to rotate"
    );
    assert_eq!(s.find_hmac("hk_pk").await.unwrap(), Some(pk));

    let c = sample_hmac("hk_a");
    s.insert_hmac(&c).await.unwrap();
    let revoked = s.revoke_hmac("hk_a", t(5_000)).await.unwrap();
    assert!(
        matches!(
            s.rotate_hmac("hk_a", &[1], t(60_000), t(10_000)).await,
            Err(StoreError::Invalid(hmac_invalid::REVOKED))
        ),
        "a revoked credential cannot rotate"
    );
    assert_eq!(
        s.find_hmac("hk_a").await.unwrap(),
        Some(revoked),
        "a refused rotation changes nothing"
    );
}

async fn hmac_revoke_keeps_the_first_time(s: &impl HmacCredentials) {
    let t = Timestamp::from_millis;
    let c = sample_hmac("hk_a");
    s.insert_hmac(&c).await.unwrap();
    let r = s.revoke_hmac("hk_a", t(5_000)).await.unwrap();
    assert_eq!(
        r,
        HmacCredentialRecord {
            revoked_at: Some(t(5_000)),
            ..c.clone()
        },
        "revocation sets revoked_at only"
    );
    assert_eq!(s.find_hmac("hk_a").await.unwrap(), Some(r.clone()));
    let r2 = s.revoke_hmac("hk_a", t(9_000)).await.unwrap();
    assert_eq!(
        r2.revoked_at,
        Some(t(5_000)),
        "a second revoke keeps the first time"
    );
    let r3 = s.revoke_hmac("hk_a", t(1_000)).await.unwrap();
    assert_eq!(r3.revoked_at, Some(t(5_000)), "even one dated earlier");
    assert_eq!(s.find_hmac("hk_a").await.unwrap(), Some(r));
    assert!(matches!(
        s.revoke_hmac("hk_nope", t(5_000)).await,
        Err(StoreError::NotFound)
    ));
    let pk = sample_public_key_hmac("hk_pk");
    s.insert_hmac(&pk).await.unwrap();
    assert_eq!(
        s.revoke_hmac("hk_pk", t(7_000)).await.unwrap().revoked_at,
        Some(t(7_000)),
        "a public-key credential is revoked the same way"
    );
}

async fn nonces_are_single_use_until_expiry(s: &impl Nonces) {
    let t = Timestamp::from_millis;
    assert!(s.claim_nonce("a:1", t(5_000), t(1_000)).await.unwrap());
    assert!(
        !s.claim_nonce("a:1", t(9_000), t(2_000)).await.unwrap(),
        "a second use before expiry is a replay"
    );
    assert!(s.claim_nonce("a:2", t(3_000), t(2_000)).await.unwrap());
    assert!(
        s.claim_nonce("a:1", t(8_000), t(5_000)).await.unwrap(),
        "once expired, a key may be used again (its credential is refused on its own)"
    );
    assert!(!s.claim_nonce("a:1", t(9_000), t(7_999)).await.unwrap());
    assert_eq!(s.delete_expired_nonces(t(3_000)).await.unwrap(), 1);
    assert!(!s.claim_nonce("a:1", t(9_000), t(7_000)).await.unwrap());
}

async fn revoked_tokens_until_expiry(s: &impl RevokedTokens) {
    let t = Timestamp::from_millis;
    s.revoke_token("j1", t(5_000)).await.unwrap();
    s.revoke_token("j2", t(9_000)).await.unwrap();
    s.revoke_token("j1", t(4_000)).await.unwrap();
    assert_eq!(
        s.revoked_tokens(t(1_000)).await.unwrap(),
        vec![("j1".to_owned(), t(5_000)), ("j2".to_owned(), t(9_000))],
        "a second revocation keeps the later expiry"
    );
    assert_eq!(s.revoked_tokens(t(5_000)).await.unwrap().len(), 1);
    assert_eq!(s.delete_expired_revocations(t(5_000)).await.unwrap(), 1);
    assert_eq!(
        s.revoked_tokens(t(0)).await.unwrap(),
        vec![("j2".to_owned(), t(9_000))]
    );
}

fn sample_client(id: &str) -> ClientRecord {
    ClientRecord {
        id: id.to_owned(),
        name: format!("client {id}"),
        confidential: true,
        grant_types: vec!["client_credentials".into()],
        scopes: vec!["read:echo".into(), "write:echo".into()],
        audiences: vec!["https://api.example".into()],
        redirect_uris: vec![],
        auth_method: "client_secret_basic".into(),
        token_lifetime_secs: Some(600),
        secret_hash: Some([7; 32]),
        created_at: Timestamp::from_millis(1_000),
        secret_set_at: Some(Timestamp::from_millis(1_000)),
        jwks: None,
    }
}

async fn clients_round_trip(s: &impl OAuthClients) {
    let a = sample_client("cl_a");
    s.insert_client(&a).await.unwrap();
    assert_eq!(
        s.find_client("cl_a").await.unwrap(),
        Some(a.clone()),
        "stored exactly"
    );
    assert!(matches!(
        s.insert_client(&a).await,
        Err(StoreError::Conflict(_))
    ));
    let mut b = sample_client("cl_b");
    b.confidential = false;
    b.secret_hash = None;
    b.secret_set_at = None;
    b.token_lifetime_secs = None;
    b.auth_method = "none".into();
    b.redirect_uris = vec!["https://app.example/cb".into()];
    s.insert_client(&b).await.unwrap();
    assert_eq!(s.find_client("cl_b").await.unwrap(), Some(b.clone()));
    assert_eq!(s.find_client("cl_c").await.unwrap(), None);
    let ids = |v: Vec<ClientRecord>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_clients(None, 10).await.unwrap()),
        ["cl_a", "cl_b"]
    );
    assert_eq!(
        ids(s.list_clients(Some("cl_a"), 10).await.unwrap()),
        ["cl_b"]
    );
    assert_eq!(ids(s.list_clients(None, 1).await.unwrap()), ["cl_a"]);

    let at = Timestamp::from_millis(5_000);
    let changed = s.set_client_secret("cl_a", &[9; 32], at).await.unwrap();
    assert_eq!(changed.secret_hash, Some([9; 32]));
    assert_eq!(changed.secret_set_at, Some(at));
    assert_eq!(s.find_client("cl_a").await.unwrap(), Some(changed));
    assert!(matches!(
        s.set_client_secret("cl_x", &[9; 32], at).await,
        Err(StoreError::NotFound)
    ));
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
    let changed = s.set_client_jwks("cl_b", jwks).await.unwrap();
    assert_eq!(changed.jwks.as_deref(), Some(jwks));
    assert_eq!(s.find_client("cl_b").await.unwrap(), Some(changed));
    assert!(matches!(
        s.set_client_jwks("cl_x", jwks).await,
        Err(StoreError::NotFound)
    ));
    s.delete_client("cl_a").await.unwrap();
    assert_eq!(s.find_client("cl_a").await.unwrap(), None);
    assert!(matches!(
        s.delete_client("cl_a").await,
        Err(StoreError::NotFound)
    ));
}

fn sample_signing_key(kid: &str, activates_at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        alg: "ES256".to_owned(),
        private_sealed: vec![1, 2, 3, kid.len() as u8],
        public_jwk: format!(r#"{{"kty":"EC","kid":"{kid}"}}"#),
        created_at: Timestamp::from_millis(activates_at - 10),
        activates_at: Timestamp::from_millis(activates_at),
        retires_at: None,
        expires_at: None,
    }
}

async fn signing_keys_rotate_and_expire(s: &impl SigningKeys) {
    assert!(s.signing_keys().await.unwrap().is_empty());
    let first = sample_signing_key("k1", 1_000);
    s.insert_signing_key(&first, None).await.unwrap();
    assert_eq!(
        s.signing_keys().await.unwrap(),
        vec![first.clone()],
        "stored exactly"
    );
    assert!(matches!(
        s.insert_signing_key(&first, None).await,
        Err(StoreError::Conflict(_))
    ));

    // Rotation: the new key is stored and every unretired key retires, in one step.
    let retire = Retirement {
        retires_at: Timestamp::from_millis(5_000),
        expires_at: Timestamp::from_millis(9_000),
    };
    let second = sample_signing_key("k2", 5_000);
    s.insert_signing_key(&second, Some(retire)).await.unwrap();
    let all = s.signing_keys().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].kid, "k1", "oldest activation first");
    assert_eq!(all[0].retires_at, Some(retire.retires_at));
    assert_eq!(all[0].expires_at, Some(retire.expires_at));
    assert_eq!(
        all[1], second,
        "the new key is not retired by its own rotation"
    );
    // A failed insert retires nothing.
    let again = Retirement {
        retires_at: Timestamp::from_millis(7_000),
        expires_at: Timestamp::from_millis(8_000),
    };
    assert!(s.insert_signing_key(&second, Some(again)).await.is_err());
    assert_eq!(s.signing_keys().await.unwrap()[1].retires_at, None);

    assert_eq!(
        s.delete_expired_signing_keys(Timestamp::from_millis(8_999))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.delete_expired_signing_keys(Timestamp::from_millis(9_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.signing_keys().await.unwrap(), vec![second]);
}

async fn api_keys_round_trip(s: &impl ApiKeys) {
    let k = sample_key(1);
    s.insert(&k).await.unwrap();
    assert_eq!(
        s.find(&k.id).await.unwrap().as_ref(),
        Some(&k),
        "find returns what insert stored"
    );
    assert_eq!(
        s.find_by_hash(&k.hash).await.unwrap().as_ref(),
        Some(&k),
        "find_by_hash"
    );
    assert_eq!(
        s.find_by_hash(&[9; 32]).await.unwrap(),
        None,
        "unknown hash"
    );
    assert_eq!(s.find("key_nope").await.unwrap(), None, "unknown id");
    assert_eq!(s.count().await.unwrap(), 1);
}

async fn api_keys_conflicts(s: &impl ApiKeys) {
    let k = sample_key(1);
    s.insert(&k).await.unwrap();
    let same_id = ApiKeyRecord {
        hash: [2; 32],
        ..k.clone()
    };
    assert!(
        matches!(s.insert(&same_id).await, Err(StoreError::Conflict(_))),
        "duplicate id"
    );
    let same_hash = ApiKeyRecord {
        id: "key_other".into(),
        ..k.clone()
    };
    assert!(
        matches!(s.insert(&same_hash).await, Err(StoreError::Conflict(_))),
        "duplicate hash"
    );
}

async fn api_keys_list_pages_and_filters(s: &impl ApiKeys) {
    for n in 1..=5 {
        s.insert(&sample_key(n)).await.unwrap();
    }
    let page1 = s.list(None, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["key_001", "key_002"]
    );
    let page2 = s.list(None, Some("key_002"), 10).await.unwrap();
    assert_eq!(page2.len(), 3, "after is exclusive");
    let odd = s.list(Some("odd"), None, 10).await.unwrap();
    assert_eq!(odd.len(), 3, "owner filter");
    assert!(odd.iter().all(|k| k.owner.as_deref() == Some("odd")));
}

async fn api_keys_revoke(s: &impl ApiKeys) {
    let k = sample_key(1);
    s.insert(&k).await.unwrap();
    let t1 = Timestamp::from_secs(1_800_000_000);
    let r = s.revoke(&k.id, t1).await.unwrap();
    assert_eq!(r.revoked_at, Some(t1));
    let r2 = s.revoke(&k.id, t1.plus_millis(5000)).await.unwrap();
    assert_eq!(
        r2.revoked_at,
        Some(t1),
        "a later revoke keeps the first time"
    );
    assert_eq!(
        s.find_by_hash(&k.hash).await.unwrap().unwrap().revoked_at,
        Some(t1),
        "revocation is visible by hash"
    );
    assert!(matches!(
        s.revoke("key_nope", t1).await,
        Err(StoreError::NotFound)
    ));
}

async fn api_keys_rotate(s: &impl ApiKeys) {
    let old = sample_key(1);
    s.insert(&old).await.unwrap();
    let new = ApiKeyRecord {
        rotated_from: Some(old.id.clone()),
        ..sample_key(2)
    };
    let grace_end = Timestamp::from_secs(1_800_000_000);
    let o = s.rotate(&old.id, &new, grace_end).await.unwrap();
    assert_eq!(o.rotated_to.as_deref(), Some("key_002"));
    assert_eq!(o.expires_at, Some(grace_end));
    assert_eq!(
        s.find("key_002")
            .await
            .unwrap()
            .unwrap()
            .rotated_from
            .as_deref(),
        Some("key_001")
    );
    let again = ApiKeyRecord {
        rotated_from: Some(old.id.clone()),
        ..sample_key(3)
    };
    assert!(
        matches!(
            s.rotate(&old.id, &again, grace_end).await,
            Err(StoreError::Conflict(_))
        ),
        "rotating twice"
    );
    assert_eq!(
        s.find("key_003").await.unwrap(),
        None,
        "a refused rotation inserts nothing"
    );
    assert!(matches!(
        s.rotate("key_nope", &again, grace_end).await,
        Err(StoreError::NotFound)
    ));

    // Expiry is only ever lowered.
    let early = ApiKeyRecord {
        expires_at: Some(Timestamp::from_secs(10)),
        ..sample_key(4)
    };
    s.insert(&early).await.unwrap();
    let n5 = ApiKeyRecord {
        rotated_from: Some("key_004".into()),
        ..sample_key(5)
    };
    let o = s.rotate("key_004", &n5, grace_end).await.unwrap();
    assert_eq!(o.expires_at, Some(Timestamp::from_secs(10)));
}

async fn api_keys_update(s: &impl ApiKeys) {
    let k = sample_key(1);
    s.insert(&k).await.unwrap();
    let until = Timestamp::from_secs(1_900_000_000);
    let patch = KeyPatch {
        name: Some("renamed".into()),
        owner: Some(None),
        scopes: Some(vec!["read:echo".into()]),
        quota: Some(None),
        expires_at: Some(Some(until)),
        ..KeyPatch::default()
    };
    let u = s.update(&k.id, &patch).await.unwrap();
    let mut want = k.clone();
    patch.apply(&mut want);
    assert_eq!(u, want, "update returns the key as patched");
    assert_eq!(
        (
            u.name.as_str(),
            u.owner.as_deref(),
            u.quota.as_ref(),
            u.expires_at
        ),
        ("renamed", None, None, Some(until)),
        "the given fields replaced, nullable ones cleared"
    );
    assert_eq!(
        (&u.metadata, &u.rate_limits, &u.hash),
        (&k.metadata, &k.rate_limits, &k.hash),
        "fields not given stay"
    );
    assert_eq!(
        s.find_by_hash(&k.hash).await.unwrap().as_ref(),
        Some(&u),
        "the change is stored"
    );
    let cleared = s
        .update(
            &k.id,
            &KeyPatch {
                expires_at: Some(None),
                metadata: Some(serde_json::json!({})),
                rate_limits: Some(vec![]),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            cleared.expires_at,
            cleared.rate_limits.len(),
            cleared.name.as_str()
        ),
        (None, 0, "renamed"),
        "a second patch changes only its own fields"
    );
    assert!(
        s.list(Some("odd"), None, 10).await.unwrap().is_empty(),
        "owner index follows"
    );

    assert!(matches!(
        s.update("key_nope", &patch).await,
        Err(StoreError::NotFound)
    ));
    s.revoke(&k.id, Timestamp::from_secs(1_800_000_000))
        .await
        .unwrap();
    assert!(
        matches!(s.update(&k.id, &patch).await, Err(StoreError::Conflict(_))),
        "a revoked key cannot change"
    );

    // A key in its rotation grace keeps its grace end, but its other properties may change.
    let old = sample_key(2);
    s.insert(&old).await.unwrap();
    let new = ApiKeyRecord {
        rotated_from: Some(old.id.clone()),
        ..sample_key(3)
    };
    let grace_end = Timestamp::from_secs(1_800_000_000);
    s.rotate(&old.id, &new, grace_end).await.unwrap();
    assert!(
        matches!(
            s.update(
                &old.id,
                &KeyPatch {
                    expires_at: Some(None),
                    ..KeyPatch::default()
                }
            )
            .await,
            Err(StoreError::Conflict(_))
        ),
        "a rotated key's expiry is its grace end"
    );
    let narrowed = s
        .update(
            &old.id,
            &KeyPatch {
                scopes: Some(vec![]),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (narrowed.scopes.len(), narrowed.expires_at),
        (0, Some(grace_end))
    );
}

async fn api_keys_usage_and_ips(s: &impl ApiKeys) {
    let k = sample_key(1);
    s.insert(&k).await.unwrap();
    let at = Timestamp::from_secs(1_750_000_000);
    let u = KeyUsage {
        key_id: k.id.clone(),
        last_used_at: at,
        last_used_ip: "127.0.0.9".into(),
        quota_window: 3,
        quota_used: 42,
    };
    s.record_usage(&[
        u,
        KeyUsage {
            key_id: "key_nope".into(),
            last_used_at: at,
            last_used_ip: "x".into(),
            quota_window: 0,
            quota_used: 0,
        },
    ])
    .await
    .unwrap();
    let got = s.find(&k.id).await.unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(at));
    assert_eq!(got.last_used_ip.as_deref(), Some("127.0.0.9"));
    let q = s.quota_state(&k.id).await.unwrap();
    assert_eq!((q.window, q.used), (3, 42));
    assert_eq!(s.quota_state("key_nope").await.unwrap().used, 0);
    assert!(
        s.remember_ip(&k.id, "127.0.0.9", at).await.unwrap(),
        "first use from an address is new"
    );
    assert!(
        !s.remember_ip(&k.id, "127.0.0.9", at).await.unwrap(),
        "second is not"
    );
    assert!(s.remember_ip(&k.id, "::1", at).await.unwrap());
    assert!(
        !s.remember_ip("key_nope", "::1", at).await.unwrap(),
        "an unknown key id remembers nothing"
    );

    // Batches from several instances arrive in any order: last use never goes back in time.
    let earlier = KeyUsage {
        key_id: k.id.clone(),
        last_used_at: Timestamp::from_secs(1_700_000_000),
        last_used_ip: "10.0.0.1".into(),
        quota_window: 3,
        quota_used: 43,
    };
    s.record_usage(&[earlier]).await.unwrap();
    let got = s.find(&k.id).await.unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(at), "an older report does not win");
    assert_eq!(got.last_used_ip.as_deref(), Some("127.0.0.9"));
}

async fn api_keys_import_is_atomic(s: &impl ApiKeys) {
    s.insert(&sample_key(3)).await.unwrap();
    let batch = [sample_key(1), sample_key(2), sample_key(3)];
    assert!(matches!(
        s.insert_many(&batch).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.count().await.unwrap(),
        1,
        "nothing of a refused batch is stored"
    );
    s.insert_many(&batch[..2]).await.unwrap();
    assert_eq!(s.count().await.unwrap(), 3);
}

async fn audit_chain_append_query_scan(s: &impl AuditLog) {
    assert_eq!(s.head().await.unwrap(), None);
    let e1 = sample_event(1, GENESIS, "api_key.created", "ok", Some("key_001"));
    let e2 = sample_event(2, e1.hash, "auth.decision", "deny", None);
    let e3 = sample_event(3, e2.hash, "auth.decision", "allow", Some("key_001"));
    append(s, &[e1.clone(), e2.clone()]).await.unwrap();
    append(s, std::slice::from_ref(&e3)).await.unwrap();
    assert_eq!(s.head().await.unwrap(), Some((3, e3.hash)));
    assert!(
        matches!(
            append(s, std::slice::from_ref(&e3)).await,
            Err(StoreError::Conflict(_))
        ),
        "seq is unique"
    );
    let e4 = sample_event(4, e3.hash, "auth.decision", "allow", None);
    assert!(
        matches!(
            append(s, &[e4.clone(), e4.clone()]).await,
            Err(StoreError::Conflict(_))
        ),
        "a batch must increase"
    );
    let e5 = sample_event(5, e3.hash, "auth.decision", "allow", None);
    assert!(
        matches!(
            append(s, std::slice::from_ref(&e5)).await,
            Err(StoreError::Invalid(_))
        ),
        "seqs continue the head without gaps"
    );
    let e6 = sample_event(6, e4.hash, "auth.decision", "allow", None);
    assert!(
        matches!(
            append(s, &[e4.clone(), e6]).await,
            Err(StoreError::Invalid(_))
        ),
        "within a batch too"
    );
    let mut unchained = sample_event(5, [9; 32], "auth.decision", "allow", None);
    unchained.prev_hash = [9; 32];
    assert!(
        matches!(
            append(s, &[e4, unchained]).await,
            Err(StoreError::Invalid(_))
        ),
        "within a batch, each event follows the one before"
    );
    assert_eq!(
        s.head().await.unwrap(),
        Some((3, e3.hash)),
        "nothing of a refused batch is stored"
    );

    let all = s
        .query(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 2, 1],
        "newest first"
    );
    assert_eq!(all[2], e1.sealed().to_stored(), "stored exactly");
    let decisions = s
        .query(&AuditQuery {
            kind: Some("auth.decision".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(decisions.len(), 2);
    let denies = s
        .query(&AuditQuery {
            outcome: Some("deny".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(denies.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let by_key = s
        .query(&AuditQuery {
            credential_id: Some("key_001".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_key.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3],
        "filter + limit"
    );
    let older = s
        .query(&AuditQuery {
            before_seq: Some(3),
            since: Some(Timestamp::from_millis(e2.fields.time_ms)),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(older.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let scan = s.scan(1, 10).await.unwrap();
    assert_eq!(
        scan.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3],
        "scan is oldest first, after exclusive"
    );
}

/// Retention removes a run of old events from the start, never the head, and leaves an
/// anchor the rest of the chain starts from. Each event is appended on its own, so that it is
/// its own unit of storage in every backend (SQLite removes whole blocks only).
async fn audit_prune_keeps_a_verifiable_tail(s: &impl AuditLog) {
    assert_eq!(
        s.prune(Timestamp::from_millis(i64::MAX)).await.unwrap(),
        None,
        "nothing stored"
    );
    assert_eq!(s.anchor().await.unwrap(), None);
    // Times (s after 1_700_000_000): 1, 2, 3, then 9 (new), then 4 (a clock stepped back),
    // then 10, the head.
    let mut events: Vec<Record> = Vec::new();
    for (seq, t) in [(1, 1), (2, 2), (3, 3), (4, 9), (5, 4), (6, 10)] {
        let prev = events.last().map_or(GENESIS, |e| e.hash);
        let mut e = sample_event(seq, prev, "auth.decision", "allow", Some("key_001"));
        e.fields.time_ms = (1_700_000_000 + t) * 1000;
        let mut body = String::new();
        write_json(&e.fields.fields(), &mut body);
        e.hash = chain_hash(&prev, seq, body.as_bytes());
        append(s, std::slice::from_ref(&e)).await.unwrap();
        events.push(e);
    }
    let at = |t: i64| Timestamp::from_secs(1_700_000_000 + t);
    assert_eq!(
        s.prune(at(1)).await.unwrap(),
        None,
        "none older than the oldest"
    );
    // Older than 5: events 1–3 go; 4 (time 9) stops the run, though 5 (time 4) is older.
    let mut removed = 0;
    while let Some(p) = s.prune(at(5)).await.unwrap() {
        removed += p.events;
        assert!(p.anchor.0 <= 3, "{p:?}");
    }
    assert_eq!(removed, 3);
    assert_eq!(s.anchor().await.unwrap(), Some((3, events[2].hash)));
    let left = s.scan(0, 100).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(
        left[0].prev_hash, events[2].hash,
        "the tail starts at the anchor"
    );
    assert_eq!(
        s.query(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        3
    );
    // Everything is older now, but the head stays (the next append continues it).
    while s.prune(at(100)).await.unwrap().is_some() {}
    assert_eq!(s.anchor().await.unwrap(), Some((5, events[4].hash)));
    assert_eq!(s.head().await.unwrap(), Some((6, events[5].hash)));
    let e7 = sample_event(7, events[5].hash, "auth.decision", "allow", None);
    append(s, std::slice::from_ref(&e7)).await.unwrap();
    assert_eq!(
        s.scan(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [6, 7]
    );
}

/// Runs every ephemeral-store contract against fresh stores from `make`.
pub async fn ephemeral_suite<S: RateCells>(make: impl Fn() -> S) {
    let s = make();
    let limit = Limit {
        algorithm: Algorithm::Gcra,
        limit: 2,
        period_ms: 1000,
        burst: 2,
    };
    let t = Timestamp::from_secs(1_700_000_000);
    assert!(
        s.peek("a", &limit, t).await.unwrap().allowed,
        "peek on a fresh cell"
    );
    assert!(s.check("a", &limit, t).await.unwrap().allowed);
    assert!(
        s.peek("a", &limit, t).await.unwrap().allowed,
        "peek does not count"
    );
    assert!(s.check("a", &limit, t).await.unwrap().allowed);
    assert!(
        !s.peek("a", &limit, t).await.unwrap().allowed,
        "peek sees the spent burst"
    );
    let third = s.check("a", &limit, t).await.unwrap();
    assert!(!third.allowed, "burst spent");
    assert!(third.retry_after_secs >= 1);
    assert!(
        s.check("b", &limit, t).await.unwrap().allowed,
        "keys are independent"
    );
    assert!(
        s.check("a", &limit, t.plus_millis(1000))
            .await
            .unwrap()
            .allowed,
        "refills with time"
    );
    let later = t.plus_millis(10_000);
    let fresh = s.check("a", &limit, later).await.unwrap();
    assert_eq!(fresh.remaining, 1, "an idle cell is back to full");

    // A store that answers in process does so from the same cells as its async methods.
    if let Some(first) = s.check_in_process("c", &limit, t, true) {
        assert!(first.allowed);
        assert!(s.check("c", &limit, t).await.unwrap().allowed);
        assert!(
            !s.peek("c", &limit, t).await.unwrap().allowed,
            "the in-process check counted in the shared cell"
        );
        assert_eq!(
            s.check_in_process("c", &limit, t, false).map(|d| d.allowed),
            Some(false),
            "the in-process peek sees what the async check spent"
        );
        for _ in 0..3 {
            assert_eq!(
                s.check_in_process("d", &limit, t, false).map(|d| d.allowed),
                Some(true)
            );
        }
        assert_eq!(
            s.check("d", &limit, t).await.unwrap().remaining,
            1,
            "an in-process peek does not count"
        );
    }
}

/// A webhook endpoint for tests, with a sealed secret from [`sample_sealed`].
pub fn sample_webhook(id: &str) -> WebhookEndpointRecord {
    WebhookEndpointRecord {
        id: id.to_owned(),
        url: format!("https://hooks.example/{id}"),
        description: format!("endpoint {id}"),
        events: vec!["api_key.revoked".into(), "auth.failure_burst".into()],
        secret: sample_sealed(1),
        previous_secret: None,
        previous_expires_at: None,
        created_at: Timestamp::from_millis(1_000),
        rotated_at: None,
        disabled_at: None,
        disabled_reason: None,
    }
}

/// A pending delivery for tests, created at `created_ms` and due then.
pub fn sample_delivery(id: &str, endpoint_id: &str, created_ms: i64) -> WebhookDeliveryRecord {
    WebhookDeliveryRecord {
        id: id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        event_type: "api_key.revoked".into(),
        payload: format!(r#"{{"type":"api_key.revoked","data":{{"n":"{id}"}}}}"#),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: Timestamp::from_millis(created_ms),
        last_attempt_at: None,
        last_status: None,
        last_error: None,
        created_at: Timestamp::from_millis(created_ms),
        delivered_at: None,
    }
}

fn delivery_ids(v: &[WebhookDeliveryRecord]) -> Vec<&str> {
    v.iter().map(|d| d.id.as_str()).collect()
}

async fn webhook_endpoints_round_trip_rotate_disable_delete(s: &impl Webhooks) {
    let t = Timestamp::from_millis;
    let a = sample_webhook("wh_a");
    s.insert_webhook(&a).await.unwrap();
    assert_eq!(s.find_webhook("wh_a").await.unwrap(), Some(a.clone()));
    assert_eq!(s.find_webhook("wh_nope").await.unwrap(), None);
    assert!(
        !shows_bytes(&format!("{a:?}"), &a.secret),
        "Debug shows no sealed bytes"
    );
    assert!(matches!(
        s.insert_webhook(&sample_webhook("wh_a")).await,
        Err(StoreError::Conflict(_))
    ));
    let bad = WebhookEndpointRecord {
        previous_secret: Some(sample_sealed(2)),
        ..sample_webhook("wh_bad")
    };
    assert!(matches!(
        s.insert_webhook(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.find_webhook("wh_bad").await.unwrap(), None);
    for id in ["wh_c", "wh_b"] {
        s.insert_webhook(&sample_webhook(id)).await.unwrap();
    }
    let ids = |v: Vec<WebhookEndpointRecord>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_webhooks(None, 10).await.unwrap()),
        ["wh_a", "wh_b", "wh_c"]
    );
    assert_eq!(
        ids(s.list_webhooks(Some("wh_a"), 1).await.unwrap()),
        ["wh_b"]
    );
    assert!(s.list_webhooks(Some("wh_c"), 10).await.unwrap().is_empty());

    // Rotation keeps one previous secret, with its deadline.
    let r = s
        .rotate_webhook_secret("wh_a", &sample_sealed(2), t(90_000), t(10_000))
        .await
        .unwrap();
    assert_eq!(r.secret, sample_sealed(2));
    assert_eq!(r.previous_secret, Some(sample_sealed(1)));
    assert_eq!(
        (r.previous_expires_at, r.rotated_at),
        (Some(t(90_000)), Some(t(10_000)))
    );
    let r2 = s
        .rotate_webhook_secret("wh_a", &sample_sealed(3), t(95_000), t(20_000))
        .await
        .unwrap();
    assert_eq!(r2.previous_secret, Some(sample_sealed(2)));
    assert_eq!(s.find_webhook("wh_a").await.unwrap(), Some(r2));
    assert!(matches!(
        s.rotate_webhook_secret("wh_nope", &[1], t(1), t(1)).await,
        Err(StoreError::NotFound)
    ));

    // Disabling keeps the first time and reason, and fails what was pending.
    s.enqueue_deliveries(&[sample_delivery("msg_1", "wh_b", 1_000)])
        .await
        .unwrap();
    let d = s.disable_webhook("wh_b", t(5_000), "gone").await.unwrap();
    assert_eq!(
        (d.disabled_at, d.disabled_reason.as_deref()),
        (Some(t(5_000)), Some("gone"))
    );
    let d2 = s.disable_webhook("wh_b", t(9_000), "other").await.unwrap();
    assert_eq!(d2, d, "a second disable changes nothing");
    let log = s.list_deliveries("wh_b", None, 10).await.unwrap();
    assert_eq!(log[0].status, DeliveryStatus::Failed);
    assert_eq!(log[0].last_error.as_deref(), Some("gone"));
    assert!(s
        .claim_deliveries(t(100_000), t(200_000), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.disable_webhook("wh_nope", t(1), "x").await,
        Err(StoreError::NotFound)
    ));

    // Deleting takes the delivery log with it.
    s.delete_webhook("wh_b").await.unwrap();
    assert_eq!(s.find_webhook("wh_b").await.unwrap(), None);
    assert!(s
        .list_deliveries("wh_b", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.delete_webhook("wh_b").await,
        Err(StoreError::NotFound)
    ));
    // Its id can be used again, with an empty log.
    s.insert_webhook(&sample_webhook("wh_b")).await.unwrap();
    assert!(s
        .list_deliveries("wh_b", None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn webhook_deliveries_enqueue_claim_and_record(s: &impl Webhooks) {
    let t = Timestamp::from_millis;
    s.insert_webhook(&sample_webhook("wh_a")).await.unwrap();
    // Unknown endpoints are skipped; the rest is stored.
    let n = s
        .enqueue_deliveries(&[
            sample_delivery("msg_1", "wh_a", 1_000),
            sample_delivery("msg_x", "wh_gone", 1_000),
            sample_delivery("msg_2", "wh_a", 2_000),
        ])
        .await
        .unwrap();
    assert_eq!(n, 2);
    // A clash stores nothing of the batch.
    assert!(matches!(
        s.enqueue_deliveries(&[
            sample_delivery("msg_3", "wh_a", 3_000),
            sample_delivery("msg_1", "wh_a", 3_000),
        ])
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        delivery_ids(&s.list_deliveries("wh_a", None, 10).await.unwrap()),
        ["msg_2", "msg_1"]
    );
    assert_eq!(s.enqueue_deliveries(&[]).await.unwrap(), 0);

    // Only what is due, oldest first, and leased.
    let c = s.claim_deliveries(t(1_500), t(60_000), 10).await.unwrap();
    assert_eq!(delivery_ids(&c), ["msg_1"]);
    assert_eq!(c[0].next_attempt_at, t(60_000));
    assert_eq!(
        c[0].payload,
        sample_delivery("msg_1", "wh_a", 1_000).payload
    );
    let c = s.claim_deliveries(t(2_000), t(60_000), 10).await.unwrap();
    assert_eq!(delivery_ids(&c), ["msg_2"], "msg_1 is leased");
    assert!(s
        .claim_deliveries(t(59_999), t(90_000), 10)
        .await
        .unwrap()
        .is_empty());
    // A lease that ends unrecorded (the claimer died) gives the delivery back.
    let c = s.claim_deliveries(t(60_000), t(120_000), 1).await.unwrap();
    assert_eq!(c.len(), 1, "limit");

    // A failed attempt: due again at the retry time.
    s.record_attempt(
        "msg_1",
        &Attempt {
            at: t(61_000),
            status_code: Some(500),
            error: Some("HTTP 500".into()),
            next: AttemptNext::RetryAt(t(66_000)),
        },
    )
    .await
    .unwrap();
    let got = |id: &'static str| async move {
        s.list_deliveries("wh_a", None, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
    };
    let d = got("msg_1").await;
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_at),
        (DeliveryStatus::Pending, 1, t(66_000))
    );
    assert_eq!(
        (d.last_attempt_at, d.last_status, d.last_error.as_deref()),
        (Some(t(61_000)), Some(500), Some("HTTP 500"))
    );
    assert!(s
        .claim_deliveries(t(65_999), t(200_000), 10)
        .await
        .unwrap()
        .iter()
        .all(|d| d.id != "msg_1"));
    // Delivered.
    s.record_attempt(
        "msg_1",
        &Attempt {
            at: t(67_000),
            status_code: Some(204),
            error: None,
            next: AttemptNext::Delivered,
        },
    )
    .await
    .unwrap();
    let d = got("msg_1").await;
    assert_eq!(
        (d.status, d.attempts, d.delivered_at, d.last_error.clone()),
        (DeliveryStatus::Delivered, 2, Some(t(67_000)), None)
    );
    // A finished delivery takes no more attempts.
    s.record_attempt(
        "msg_1",
        &Attempt {
            at: t(68_000),
            status_code: None,
            error: Some("late".into()),
            next: AttemptNext::Failed,
        },
    )
    .await
    .unwrap();
    assert_eq!(got("msg_1").await, d);
    // Given up.
    s.record_attempt(
        "msg_2",
        &Attempt {
            at: t(70_000),
            status_code: None,
            error: Some("connection refused".into()),
            next: AttemptNext::Failed,
        },
    )
    .await
    .unwrap();
    let d = got("msg_2").await;
    assert_eq!(
        (d.status, d.attempts, d.last_status),
        (DeliveryStatus::Failed, 1, None)
    );
    assert!(s
        .claim_deliveries(t(i64::MAX / 2), t(i64::MAX / 2), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.record_attempt(
            "msg_nope",
            &Attempt {
                at: t(1),
                status_code: None,
                error: None,
                next: AttemptNext::Failed
            }
        )
        .await,
        Err(StoreError::NotFound)
    ));
}

async fn webhook_concurrent_claims_take_each_delivery_once(s: &impl Webhooks) {
    let t = Timestamp::from_millis;
    s.insert_webhook(&sample_webhook("wh_a")).await.unwrap();
    let all: Vec<_> = (0..20)
        .map(|i| sample_delivery(&format!("msg_{i:02}"), "wh_a", 1_000 + i))
        .collect();
    s.enqueue_deliveries(&all).await.unwrap();
    let (a, b) = tokio::join!(
        s.claim_deliveries(t(5_000), t(60_000), 15),
        s.claim_deliveries(t(5_000), t(60_000), 15),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seen: Vec<&str> = delivery_ids(&a);
    seen.extend(delivery_ids(&b));
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before, "no delivery claimed twice");
    assert_eq!(seen.len(), 20, "every due delivery claimed by one of them");
}

async fn webhook_delivery_log_pages_and_prunes(s: &impl Webhooks) {
    let t = Timestamp::from_millis;
    for id in ["wh_a", "wh_b"] {
        s.insert_webhook(&sample_webhook(id)).await.unwrap();
    }
    // Two at the same time: the id breaks the tie.
    s.enqueue_deliveries(&[
        sample_delivery("msg_a1", "wh_a", 1_000),
        sample_delivery("msg_a2", "wh_a", 2_000),
        sample_delivery("msg_a3", "wh_a", 2_000),
        sample_delivery("msg_a4", "wh_a", 4_000),
        sample_delivery("msg_b1", "wh_b", 3_000),
    ])
    .await
    .unwrap();
    let page = |after: Option<&'static str>, limit| async move {
        s.list_deliveries("wh_a", after, limit).await.unwrap()
    };
    assert_eq!(
        delivery_ids(&page(None, 10).await),
        ["msg_a4", "msg_a3", "msg_a2", "msg_a1"]
    );
    assert_eq!(delivery_ids(&page(None, 2).await), ["msg_a4", "msg_a3"]);
    assert_eq!(
        delivery_ids(&page(Some("msg_a3"), 2).await),
        ["msg_a2", "msg_a1"]
    );
    assert!(page(Some("msg_a1"), 2).await.is_empty());
    assert!(page(Some("msg_nope"), 2).await.is_empty(), "unknown cursor");
    assert_eq!(
        page(None, 10).await[0],
        sample_delivery("msg_a4", "wh_a", 4_000)
    );

    // Retention removes finished deliveries older than the bound, never pending ones.
    let finish = |id: &'static str, next| async move {
        s.record_attempt(
            id,
            &Attempt {
                at: t(5_000),
                status_code: Some(200),
                error: None,
                next,
            },
        )
        .await
        .unwrap();
    };
    finish("msg_a1", AttemptNext::Delivered).await;
    finish("msg_a2", AttemptNext::Failed).await;
    finish("msg_a4", AttemptNext::Delivered).await;
    assert_eq!(s.prune_deliveries(t(3_000)).await.unwrap(), 2);
    assert_eq!(s.prune_deliveries(t(3_000)).await.unwrap(), 0);
    assert_eq!(
        delivery_ids(&page(None, 10).await),
        ["msg_a4", "msg_a3"],
        "pending msg_a3 stays, newer msg_a4 stays"
    );
    assert_eq!(s.list_deliveries("wh_b", None, 10).await.unwrap().len(), 1);
}

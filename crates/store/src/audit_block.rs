//! The stored form of a run of audit events ("block", format 2): each event's fields, not
//! its JSON. Pure: no IO, no clock.
//!
//! Events at request rate are nearly all alike — the same kind, route, scheme, reason, and
//! one of a few credentials and client addresses — and differ in their time, request id and
//! hash. A block keeps one dictionary per repeated field and, per event, small indices into
//! them; the request id, the address and the 32-byte hash as they are. About 64 bytes per
//! gateway decision, against ≈ 66 for format 1 (the canonical JSON lines, LZ4-compressed),
//! without compression or a second JSON rendering on the writer's path. The canonical JSON
//! is rendered again on read by `portcullis_core::audit::write_json`, which is frozen for
//! this reason.
//!
//! Layout (integers are LEB128 varints unless sized; strings are a varint length and UTF-8):
//!
//! ```text
//! magic "PA2" 0xFF | first seq | prev_hash of the first event (32 bytes) | event count
//! 7 dictionaries, in order kind, outcome, route, scheme, reason, credential, actor:
//!     value count, values
//! per event: field mask (u16 LE) | time: zigzag delta from the event before (from 0 for
//!     the first) | kind index | outcome index | [request id string] | [route index]
//!     | [scheme index] | [reason index] | [credential index] | [IPv4: 4 bytes | IPv6: 16]
//!     | [actor index] | [detail string] | hash (32 bytes)
//! ```
//!
//! Every event after the first follows the one before: its `seq` is one more, its
//! `prev_hash` is that event's hash. The 0xFF in the magic is never the last byte of a
//! format-1 block, which starts with its text length as 4 bytes little-endian (at most
//! 256 MiB), so both formats can live in one table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_core::audit::Fields;
use portcullis_core::crypto::Sha256Digest;

use crate::{check_run, Sealed, StoreError, StoredEvent};

/// First bytes of a format-2 block.
pub const MAGIC: [u8; 4] = *b"PA2\xff";

/// Most events a block may claim (a forged count must not size an allocation).
const MAX_EVENTS: u64 = 1 << 20;
/// Most values a dictionary may claim.
const MAX_VALUES: u64 = 1 << 20;

const HAS_REQUEST_ID: u16 = 1;
const HAS_ROUTE: u16 = 1 << 1;
const HAS_SCHEME: u16 = 1 << 2;
const HAS_REASON: u16 = 1 << 3;
const HAS_CREDENTIAL: u16 = 1 << 4;
const HAS_IPV4: u16 = 1 << 5;
const HAS_IPV6: u16 = 1 << 6;
const HAS_ACTOR: u16 = 1 << 7;
const HAS_DETAIL: u16 = 1 << 8;
const KNOWN: u16 = (1 << 9) - 1;

/// The dictionaries, in stored order.
const KIND: usize = 0;
const OUTCOME: usize = 1;
const ROUTE: usize = 2;
const SCHEME: usize = 3;
const REASON: usize = 4;
const CREDENTIAL: usize = 5;
const ACTOR: usize = 6;
const DICTS: usize = 7;

/// An encoded block and what the store indexes it by.
#[derive(Debug)]
pub struct Encoded<'a> {
    /// The block's bytes.
    pub bytes: Vec<u8>,
    /// `seq` of the first and the last event.
    pub first_seq: i64,
    /// See `first_seq`.
    pub last_seq: i64,
    /// Earliest and latest event time (ms).
    pub min_time: i64,
    /// See `min_time`.
    pub max_time: i64,
    /// Distinct kinds, in order of first appearance.
    pub kinds: Vec<&'a str>,
    /// Distinct outcomes.
    pub outcomes: Vec<&'a str>,
    /// Distinct credential ids.
    pub credentials: Vec<&'a str>,
}

/// One dictionary being built. Consecutive events nearly always repeat a value, and the
/// writer's values are shared strings (constants, `Arc<str>`s), so the last value is
/// recognised by its address before any hashing.
#[derive(Default)]
struct Dict<'a> {
    values: Vec<&'a str>,
    index: std::collections::HashMap<&'a str, u64, foldhash::fast::RandomState>,
    last: Option<(*const u8, usize, u64)>,
}

impl<'a> Dict<'a> {
    fn index_of(&mut self, v: &'a str) -> u64 {
        if let Some((ptr, len, i)) = self.last {
            if std::ptr::eq(ptr, v.as_ptr()) && len == v.len() {
                return i;
            }
        }
        let next = self.values.len() as u64;
        let i = *self.index.entry(v).or_insert(next);
        if i == next {
            self.values.push(v);
        }
        self.last = Some((v.as_ptr(), v.len(), i));
        i
    }
}

/// Encodes a non-empty run of events, each following the one before.
pub fn encode<'a>(events: &[Sealed<'a>]) -> Result<Encoded<'a>, StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(StoreError::Invalid("empty audit block"));
    };
    let mut dicts: [Dict<'a>; DICTS] = Default::default();
    let mut body = Vec::with_capacity(events.len() * 72);
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    let mut prev_time = 0i64;
    // The layout keeps neither seq nor prev_hash after the first event: they must follow.
    check_run(events, first.seq)?;
    for e in events {
        let f = &e.fields;
        min_time = min_time.min(f.time_ms);
        max_time = max_time.max(f.time_ms);
        let mut mask = 0u16;
        let flag = |m: &mut u16, bit: u16, present: bool| {
            if present {
                *m |= bit;
            }
        };
        flag(&mut mask, HAS_REQUEST_ID, f.request_id.is_some());
        flag(&mut mask, HAS_ROUTE, f.route.is_some());
        flag(&mut mask, HAS_SCHEME, f.scheme.is_some());
        flag(&mut mask, HAS_REASON, f.reason.is_some());
        flag(&mut mask, HAS_CREDENTIAL, f.credential_id.is_some());
        flag(
            &mut mask,
            HAS_IPV4,
            matches!(f.client_ip, Some(IpAddr::V4(_))),
        );
        flag(
            &mut mask,
            HAS_IPV6,
            matches!(f.client_ip, Some(IpAddr::V6(_))),
        );
        flag(&mut mask, HAS_ACTOR, f.actor.is_some());
        flag(&mut mask, HAS_DETAIL, f.detail.is_some());
        body.extend_from_slice(&mask.to_le_bytes());
        put_varint(&mut body, zigzag(f.time_ms.wrapping_sub(prev_time)));
        prev_time = f.time_ms;
        put_varint(&mut body, dicts[KIND].index_of(f.kind));
        put_varint(&mut body, dicts[OUTCOME].index_of(f.outcome));
        if let Some(v) = f.request_id {
            put_str(&mut body, v);
        }
        for (dict, value) in [
            (ROUTE, f.route),
            (SCHEME, f.scheme),
            (REASON, f.reason),
            (CREDENTIAL, f.credential_id),
        ] {
            if let Some(v) = value {
                put_varint(&mut body, dicts[dict].index_of(v));
            }
        }
        match f.client_ip {
            Some(IpAddr::V4(a)) => body.extend_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => body.extend_from_slice(&a.octets()),
            None => {}
        }
        if let Some(v) = f.actor {
            put_varint(&mut body, dicts[ACTOR].index_of(v));
        }
        if let Some(v) = f.detail {
            put_str(&mut body, v);
        }
        body.extend_from_slice(&e.hash);
    }
    let dict_len: usize = dicts
        .iter()
        .flat_map(|d| &d.values)
        .map(|v| v.len() + 2)
        .sum();
    let mut bytes = Vec::with_capacity(64 + dict_len + body.len());
    bytes.extend_from_slice(&MAGIC);
    put_varint(&mut bytes, zigzag(first.seq));
    bytes.extend_from_slice(&first.prev_hash);
    put_varint(&mut bytes, events.len() as u64);
    for d in &dicts {
        put_varint(&mut bytes, d.values.len() as u64);
        for v in &d.values {
            put_str(&mut bytes, v);
        }
    }
    bytes.extend_from_slice(&body);
    let [kinds, outcomes, _, _, _, credentials, _] = dicts.map(|d| d.values);
    Ok(Encoded {
        bytes,
        first_seq: first.seq,
        last_seq: last.seq,
        min_time,
        max_time,
        kinds,
        outcomes,
        credentials,
    })
}

/// Whether `bytes` is a format-2 block.
pub fn is_block(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// An event's fields, owned: what [`decode`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFields {
    /// See [`Fields::time_ms`].
    pub time_ms: i64,
    /// See [`Fields::kind`].
    pub kind: String,
    /// See [`Fields::outcome`].
    pub outcome: String,
    /// See [`Fields::request_id`].
    pub request_id: Option<String>,
    /// See [`Fields::route`].
    pub route: Option<String>,
    /// See [`Fields::scheme`].
    pub scheme: Option<String>,
    /// See [`Fields::reason`].
    pub reason: Option<String>,
    /// See [`Fields::credential_id`].
    pub credential_id: Option<String>,
    /// See [`Fields::client_ip`].
    pub client_ip: Option<IpAddr>,
    /// See [`Fields::actor`].
    pub actor: Option<String>,
    /// See [`Fields::detail`].
    pub detail: Option<String>,
}

impl OwnedFields {
    /// The borrowed view.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            time_ms: self.time_ms,
            kind: &self.kind,
            outcome: &self.outcome,
            request_id: self.request_id.as_deref(),
            route: self.route.as_deref(),
            scheme: self.scheme.as_deref(),
            reason: self.reason.as_deref(),
            credential_id: self.credential_id.as_deref(),
            client_ip: self.client_ip,
            actor: self.actor.as_deref(),
            detail: self.detail.as_deref(),
        }
    }
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the chain.
    pub seq: i64,
    /// What it says.
    pub fields: OwnedFields,
    /// Hash of the event before.
    pub prev_hash: Sha256Digest,
    /// Its hash.
    pub hash: Sha256Digest,
}

impl Record {
    /// The form [`encode`] takes (forensic tools and tests re-encode edited records).
    pub fn sealed(&self) -> Sealed<'_> {
        Sealed {
            seq: self.seq,
            fields: self.fields.fields(),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// Decodes a format-2 block into its events, in stored order.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, StoreError> {
    let mut r = Reader(
        bytes
            .strip_prefix(&MAGIC)
            .ok_or_else(|| corrupt("not a format-2 block"))?,
    );
    let first_seq = unzigzag(r.varint()?);
    let mut prev_hash = r.hash()?;
    let count = r.varint()?;
    if count == 0 || count > MAX_EVENTS {
        return Err(corrupt("event count"));
    }
    let mut dicts: [Vec<String>; DICTS] = Default::default();
    for d in &mut dicts {
        let n = r.varint()?;
        if n > MAX_VALUES || n > r.0.len() as u64 {
            return Err(corrupt("dictionary size"));
        }
        for _ in 0..n {
            d.push(r.string()?);
        }
    }
    let pick = |dict: usize, r: &mut Reader<'_>| -> Result<String, StoreError> {
        let i = r.varint()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| dicts[dict].get(i))
            .cloned()
            .ok_or_else(|| corrupt("dictionary index"))
    };
    // Each event takes at least 36 bytes: a forged count cannot size the allocation.
    let mut out = Vec::with_capacity((count as usize).min(r.0.len() / 36 + 1));
    let mut time = 0i64;
    for i in 0..count {
        let mask = u16::from_le_bytes(r.take::<2>()?);
        if mask & !KNOWN != 0 || mask & HAS_IPV4 != 0 && mask & HAS_IPV6 != 0 {
            return Err(corrupt("field mask"));
        }
        time = time.wrapping_add(unzigzag(r.varint()?));
        let kind = pick(KIND, &mut r)?;
        let outcome = pick(OUTCOME, &mut r)?;
        let has = |bit: u16| mask & bit != 0;
        let request_id = has(HAS_REQUEST_ID).then(|| r.string()).transpose()?;
        let opt =
            |bit: u16, dict: usize, r: &mut Reader<'_>| has(bit).then(|| pick(dict, r)).transpose();
        let route = opt(HAS_ROUTE, ROUTE, &mut r)?;
        let scheme = opt(HAS_SCHEME, SCHEME, &mut r)?;
        let reason = opt(HAS_REASON, REASON, &mut r)?;
        let credential_id = opt(HAS_CREDENTIAL, CREDENTIAL, &mut r)?;
        let client_ip = if has(HAS_IPV4) {
            Some(IpAddr::V4(Ipv4Addr::from(r.take::<4>()?)))
        } else if has(HAS_IPV6) {
            Some(IpAddr::V6(Ipv6Addr::from(r.take::<16>()?)))
        } else {
            None
        };
        let actor = opt(HAS_ACTOR, ACTOR, &mut r)?;
        let detail = has(HAS_DETAIL).then(|| r.string()).transpose()?;
        let hash = r.hash()?;
        let seq = i64::try_from(i)
            .ok()
            .and_then(|i| first_seq.checked_add(i))
            .ok_or_else(|| corrupt("seq"))?;
        out.push(Record {
            seq,
            fields: OwnedFields {
                time_ms: time,
                kind,
                outcome,
                request_id,
                route,
                scheme,
                reason,
                credential_id,
                client_ip,
                actor,
                detail,
            },
            prev_hash,
            hash,
        });
        prev_hash = hash;
    }
    if !r.0.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

/// Decodes a format-2 block into events as read back (canonical JSON rendered).
pub fn decode_stored(bytes: &[u8]) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(decode(bytes)?
        .iter()
        .map(|r| r.sealed().to_stored())
        .collect())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("audit block: {what}"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a block's bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| corrupt("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn hash(&mut self) -> Result<Sha256Digest, StoreError> {
        self.take::<32>()
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let [b] = self.take::<1>()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint"))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| corrupt("length"))?;
        if len > self.0.len() {
            return Err(corrupt("truncated"));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use portcullis_core::audit::{chain_hash, write_json, GENESIS};
    use proptest::prelude::*;

    use super::*;

    /// Chains `fields` from `first_seq` after `prev`, as the writer does.
    fn seal(first_seq: i64, prev: Sha256Digest, fields: &[OwnedFields]) -> Vec<Record> {
        let mut prev_hash = prev;
        fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let seq = first_seq + i as i64;
                let mut body = String::new();
                write_json(&f.fields(), &mut body);
                let hash = chain_hash(&prev_hash, seq, body.as_bytes());
                let r = Record {
                    seq,
                    fields: f.clone(),
                    prev_hash,
                    hash,
                };
                prev_hash = hash;
                r
            })
            .collect()
    }

    fn decision(time_ms: i64, rid: &str, cred: &str, ip: &str) -> OwnedFields {
        OwnedFields {
            time_ms,
            kind: "auth.decision".into(),
            outcome: "allow".into(),
            request_id: Some(rid.into()),
            route: Some("orders".into()),
            scheme: Some("api_key".into()),
            reason: Some("ok".into()),
            credential_id: Some(cred.into()),
            client_ip: Some(ip.parse().unwrap()),
            actor: None,
            detail: None,
        }
    }

    fn round_trip(records: &[Record]) -> Vec<Record> {
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        decode(&encode(&sealed).unwrap().bytes).unwrap()
    }

    #[test]
    fn a_block_of_decisions_round_trips_and_is_small() {
        let fields: Vec<OwnedFields> = (0..1000)
            .map(|i| {
                decision(
                    1_764_000_000_000 + i / 30,
                    &format!("bd2f041c01dd-{:x}", 0x1226f9 + i),
                    &format!("key_{}", i % 3),
                    if i % 2 == 0 {
                        "10.0.0.7"
                    } else {
                        "2001:db8::1"
                    },
                )
            })
            .collect();
        let records = seal(41, [7; 32], &fields);
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        let enc = encode(&sealed).unwrap();
        assert_eq!((enc.first_seq, enc.last_seq), (41, 1040));
        assert_eq!(enc.kinds, ["auth.decision"]);
        assert_eq!(enc.outcomes, ["allow"]);
        assert_eq!(enc.credentials, ["key_0", "key_1", "key_2"]);
        assert_eq!(
            (enc.min_time, enc.max_time),
            (1_764_000_000_000, 1_764_000_000_033)
        );
        assert!(enc.bytes.len() < 1000 * 72, "{} bytes", enc.bytes.len());
        assert_eq!(decode(&enc.bytes).unwrap(), records);
        // Read back, every event's rendered JSON still has its hash.
        let mut v = portcullis_core::audit::ChainVerifier::default();
        let mut prev = GENESIS;
        for e in decode_stored(
            &encode(
                &seal(1, GENESIS, &fields[..5])
                    .iter()
                    .map(Record::sealed)
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .bytes,
        )
        .unwrap()
        {
            v.check(e.seq, e.body.as_bytes(), &e.prev_hash, &e.hash)
                .unwrap();
            assert_eq!(e.prev_hash, prev);
            prev = e.hash;
        }
        assert_eq!(v.checked(), 5);
    }

    #[test]
    fn admin_events_with_every_field_round_trip() {
        let f = OwnedFields {
            time_ms: -5,
            kind: "api_key.revoked".into(),
            outcome: "ok".into(),
            request_id: Some("req \"1\"\n".into()),
            route: None,
            scheme: Some("mtls,jwt".into()),
            reason: None,
            credential_id: Some("key_1".into()),
            client_ip: Some("::1".parse().unwrap()),
            actor: Some("admin é\t".into()),
            detail: Some(r#"{"ids":["x"],"n":1}"#.into()),
        };
        let bare = OwnedFields {
            time_ms: i64::MAX,
            kind: "k".into(),
            outcome: "o".into(),
            request_id: None,
            route: None,
            scheme: None,
            reason: None,
            credential_id: None,
            client_ip: None,
            actor: None,
            detail: None,
        };
        let records = seal(i64::MAX - 2, GENESIS, &[f.clone(), bare, f]);
        assert_eq!(round_trip(&records), records);
    }

    #[test]
    fn events_that_do_not_follow_each_other_are_refused() {
        let fields = [decision(1, "a", "k", "::1"), decision(2, "b", "k", "::1")];
        let mut records = seal(1, GENESIS, &fields);
        records[1].seq = 3;
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        assert!(matches!(encode(&sealed), Err(StoreError::Invalid(_))));
        records[1].seq = 1;
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        assert!(matches!(encode(&sealed), Err(StoreError::Conflict(_))));
        let mut records = seal(1, GENESIS, &fields);
        records[1].prev_hash = [1; 32];
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        assert!(matches!(encode(&sealed), Err(StoreError::Invalid(_))));
        assert!(matches!(encode(&[]), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn damaged_blocks_are_refused_not_misread() {
        let records = seal(1, GENESIS, &[decision(1, "a", "k", "10.0.0.1")]);
        let sealed: Vec<Sealed<'_>> = records.iter().map(Record::sealed).collect();
        let good = encode(&sealed).unwrap().bytes;
        assert!(is_block(&good));
        // Every truncation, and trailing bytes.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        // A format-1 block is not mistaken for one (its 4th byte is a length's top byte).
        assert!(!is_block(&[3, 0, 0, 0, b'x']));
        assert!(!is_block(&[0xff, 0xff, 0xff, 0x10]));
    }

    proptest! {
        /// Any bytes after the magic: an error or events, never a panic or a huge allocation.
        #[test]
        fn any_bytes_decode_without_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes);
        }

        /// Any field values survive encoding, and render the same canonical JSON.
        #[test]
        fn any_fields_round_trip(
            times in proptest::collection::vec(any::<i64>(), 1..6),
            text in "\\PC{0,12}",
            ip in any::<Option<u128>>(),
            pick in any::<u16>(),
        ) {
            let fields: Vec<OwnedFields> = times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let on = |bit: usize| pick >> ((bit + i) % 16) & 1 == 1;
                    let s = |bit: usize| on(bit).then(|| format!("{text}{}", bit % 3));
                    OwnedFields {
                        time_ms: *t,
                        kind: text.clone(),
                        outcome: format!("{i}"),
                        request_id: s(0),
                        route: s(1),
                        scheme: s(2),
                        reason: s(3),
                        credential_id: s(4),
                        client_ip: ip.map(|v| match on(5) {
                            true => IpAddr::from(Ipv6Addr::from(v)),
                            false => IpAddr::from(Ipv4Addr::from(v as u32)),
                        }),
                        actor: s(6),
                        detail: on(7).then(|| "{\"a\":[1,2]}".to_owned()),
                    }
                })
                .collect();
            let records = seal(1, GENESIS, &fields);
            let back = round_trip(&records);
            prop_assert_eq!(&back, &records);
            for (a, b) in back.iter().zip(&records) {
                prop_assert_eq!(a.sealed().to_stored(), b.sealed().to_stored());
            }
        }
    }
}

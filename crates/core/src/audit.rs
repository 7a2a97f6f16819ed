//! The audit trail's hash chain: each stored event carries the hash of the one before.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ seq(n) as 8 big-endian bytes ‖ body(n))`, with 32 zero bytes
//! before the first event. Editing a body breaks its hash; removing or reordering events
//! breaks the `seq` sequence or a `prev_hash` link. Removing events from the *end* can only be
//! detected against a head (seq, hash) kept elsewhere, which is why the JSON-lines sink carries
//! both for every event.

use std::net::IpAddr;

use crate::crypto::{self, Sha256Digest};
use crate::text::IpText;

/// The `prev_hash` of the first event.
pub const GENESIS: Sha256Digest = [0u8; 32];

/// The chain hash of event `seq` with canonical JSON `body`, following `prev`.
pub fn chain_hash(prev: &Sha256Digest, seq: i64, body: &[u8]) -> Sha256Digest {
    crypto::sha256_parts(&[prev, &seq.to_be_bytes(), body])
}

/// The fields of one audit event: everything its canonical JSON is made of, borrowed.
///
/// The writer renders an event's canonical JSON from these fields with [`write_json`] and
/// hashes that; a store may keep the fields instead of the JSON and render it again when
/// read (the SQLite store does). Both renderings must be the same bytes for ever, so
/// [`write_json`] is frozen: changing its output would make every stored event that is
/// rendered on read fail verification. A different rendering needs a new stored format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// `auth.decision`, `api_key.created`, `api_key.new_ip` …
    pub kind: &'a str,
    /// `allow`, `deny`, `ok`, `notice` …
    pub outcome: &'a str,
    /// Request id.
    pub request_id: Option<&'a str>,
    /// Route name.
    pub route: Option<&'a str>,
    /// Scheme(s) that decided, comma-separated.
    pub scheme: Option<&'a str>,
    /// Documented reason code.
    pub reason: Option<&'a str>,
    /// Credential id (never the secret).
    pub credential_id: Option<&'a str>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// Who made an admin change.
    pub actor: Option<&'a str>,
    /// Admin-change details: a JSON value's text, written into the event as it is.
    pub detail: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// An event of `kind` with `outcome` at `time_ms`, no other field set.
    pub fn new(time_ms: i64, kind: &'a str, outcome: &'a str) -> Self {
        Self {
            time_ms,
            kind,
            outcome,
            request_id: None,
            route: None,
            scheme: None,
            reason: None,
            credential_id: None,
            client_ip: None,
            actor: None,
            detail: None,
        }
    }
}

/// Appends the canonical JSON of an event: one line, fields in the order of [`Fields`],
/// absent ones left out, `time` first as RFC 3339 UTC with milliseconds
/// (`2025-11-24T16:00:00.123Z`). `detail` is written as given (the caller's JSON text).
pub fn write_json(f: &Fields<'_>, out: &mut String) {
    JsonWriter::default().write(f, out);
}

/// [`write_json`] for a run of events: remembers what consecutive events nearly always share
/// (the date and time of the last second, the text of the last client address, and the
/// rendering of the kind and outcome and of the route, scheme and reason) and copies it
/// instead of rendering it again. The output is [`write_json`]'s, byte for byte (it is the
/// same code).
#[derive(Default)]
pub struct JsonWriter {
    /// The last second rendered and its `YYYY-MM-DDTHH:MM:SS`.
    second: Option<(i64, [u8; 19])>,
    /// The last client address and its text.
    ip: Option<(IpAddr, IpText)>,
    /// `,"kind":…,"outcome":…` of the last event.
    kind_outcome: Rendered<2>,
    /// `,"route":…,"scheme":…,"reason":…` of the last event.
    route_scheme_reason: Rendered<3>,
}

/// The rendering of `N` consecutive optional string fields, and the values it was rendered
/// from (compared by content: the writer cannot know how long a borrowed value lives, so an
/// address seen before may hold other text now).
#[derive(Default)]
struct Rendered<const N: usize> {
    /// The values' lengths (`None`: absent); `None` for the whole until something is rendered.
    lens: Option<[Option<usize>; N]>,
    /// The values, one after another.
    values: String,
    /// Their JSON.
    json: String,
}

impl<const N: usize> Rendered<N> {
    /// Appends the JSON of `values` (each opened by its `names` entry, absent ones left out).
    fn write(&mut self, out: &mut String, names: [&str; N], values: [Option<&str>; N]) {
        if !self.holds(&values) {
            let mut lens = [None; N];
            self.values.clear();
            self.json.clear();
            for ((len, name), v) in lens.iter_mut().zip(names).zip(values) {
                if let Some(v) = v {
                    *len = Some(v.len());
                    self.values.push_str(v);
                }
                field(&mut self.json, name, v);
            }
            self.lens = Some(lens);
        }
        out.push_str(&self.json);
    }

    fn holds(&self, values: &[Option<&str>; N]) -> bool {
        let Some(lens) = &self.lens else {
            return false;
        };
        let mut rest = self.values.as_bytes();
        for (len, v) in lens.iter().zip(values) {
            match (len, v) {
                (None, None) => {}
                (Some(n), Some(v)) => match rest.split_at_checked(*n) {
                    Some((seen, after)) if seen == v.as_bytes() => rest = after,
                    _ => return false,
                },
                _ => return false,
            }
        }
        true
    }
}

impl JsonWriter {
    /// Appends the canonical JSON of `f` (see [`write_json`]).
    pub fn write(&mut self, f: &Fields<'_>, out: &mut String) {
        out.push_str("{\"time\":\"");
        let (secs, milli) = (f.time_ms.div_euclid(1000), f.time_ms.rem_euclid(1000));
        let date_time = match self.second {
            Some((s, text)) if s == secs => text,
            _ => {
                let text = date_time(secs);
                self.second = Some((secs, text));
                text
            }
        };
        let mut fraction = *b".000Z";
        put_digits(&mut fraction[1..4], milli);
        // Only ASCII digits were written into ASCII templates.
        out.push_str(std::str::from_utf8(&date_time).unwrap_or("0000-00-00T00:00:00"));
        out.push_str(std::str::from_utf8(&fraction).unwrap_or(".000Z"));
        out.push('"');
        self.kind_outcome.write(
            out,
            [",\"kind\":", ",\"outcome\":"],
            [Some(f.kind), Some(f.outcome)],
        );
        field(out, ",\"request_id\":", f.request_id);
        self.route_scheme_reason.write(
            out,
            [",\"route\":", ",\"scheme\":", ",\"reason\":"],
            [f.route, f.scheme, f.reason],
        );
        field(out, ",\"credential_id\":", f.credential_id);
        if let Some(ip) = f.client_ip {
            let text = match self.ip {
                Some((last, text)) if last == ip => text,
                _ => {
                    let text = IpText::new(ip);
                    self.ip = Some((ip, text));
                    text
                }
            };
            out.push_str(",\"client_ip\":\"");
            out.push_str(text.as_str());
            out.push('"');
        }
        field(out, ",\"actor\":", f.actor);
        if let Some(d) = f.detail {
            out.push_str(",\"detail\":");
            out.push_str(d);
        }
        out.push('}');
    }
}

/// `,"name":"value"` when there is a value; `open` is `,"name":`.
fn field(out: &mut String, open: &str, value: Option<&str>) {
    if let Some(v) = value {
        out.push_str(open);
        push_json_str(out, v);
    }
}

/// A JSON string literal. Identifiers (the common case) are copied as they are; anything
/// that needs escaping goes through serde_json.
pub fn push_json_str(out: &mut String, s: &str) {
    if is_plain(s.as_bytes()) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serialising a `str` cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
    }
}

/// Whether `s` can stand in a JSON string literal as it is: no control character (below
/// 0x20), quote or backslash. Eight bytes at a time (the audit writer checks every string
/// field of every decision), with the word tricks of Hacker's Delight §6.1: a byte of `w`
/// is below `n` (`n` ≤ 0x80) exactly when `(w - n·L) & !w & H` has its high bit set; zero
/// is below one; any false positive sits above a true one, so the test of a whole word is
/// exact.
fn is_plain(s: &[u8]) -> bool {
    const L: u64 = u64::from_ne_bytes([0x01; 8]);
    const H: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u64| w.wrapping_sub(n * L) & !w & H != 0;
    let bad = |w: u64| below(w, 0x20) || below(w ^ (0x22 * L), 1) || below(w ^ (0x5c * L), 1);
    let mut words = s.chunks_exact(8);
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if bad(u64::from_ne_bytes(w)) {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` since the Unix epoch (UTC, proleptic
/// Gregorian). Years outside 0..=9999 are written as `0000-00-00T00:00:00` (with the
/// milliseconds): no clock of ours produces them.
pub fn push_time(out: &mut String, ms: i64) {
    let mut fraction = *b".000Z";
    put_digits(&mut fraction[1..4], ms.rem_euclid(1000));
    // Only ASCII digits were written into ASCII templates.
    out.push_str(
        std::str::from_utf8(&date_time(ms.div_euclid(1000))).unwrap_or("0000-00-00T00:00:00"),
    );
    out.push_str(std::str::from_utf8(&fraction).unwrap_or(".000Z"));
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the Unix epoch; all zeros outside years 0..=9999.
fn date_time(secs: i64) -> [u8; 19] {
    let mut b = *b"0000-00-00T00:00:00";
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return b;
    };
    let year = i64::from(t.year());
    if (0..=9999).contains(&year) {
        put_digits(&mut b[0..4], year);
        put_digits(&mut b[5..7], i64::from(u8::from(t.month())));
        put_digits(&mut b[8..10], i64::from(t.day()));
        put_digits(&mut b[11..13], i64::from(t.hour()));
        put_digits(&mut b[14..16], i64::from(t.minute()));
        put_digits(&mut b[17..19], i64::from(t.second()));
    }
    b
}

/// Writes the low `dst.len()` decimal digits of `n` (non-negative) into `dst`.
fn put_digits(dst: &mut [u8], mut n: i64) {
    for slot in dst.iter_mut().rev() {
        // n % 10 is 0..=9 for the non-negative values passed here.
        *slot = b'0' + u8::try_from(n.rem_euclid(10)).unwrap_or(0);
        n /= 10;
    }
}

/// What is wrong with a chain, at the first event found broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An event's stored hash does not match its content: it was edited.
    #[error("event {seq}: content does not match its hash (edited)")]
    Edited {
        /// The event.
        seq: i64,
    },
    /// An event's `prev_hash` is not the hash of the event before it (reordered or replaced).
    #[error("event {seq}: does not follow the event before it (reordered or replaced)")]
    BrokenLink {
        /// The event.
        seq: i64,
    },
    /// Sequence numbers are not contiguous: events are missing.
    #[error("events {expected}..{found} are missing (removed)")]
    Gap {
        /// The seq that should have come next.
        expected: i64,
        /// The seq that came.
        found: i64,
    },
}

/// Incremental verifier: feed events in `seq` order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    start: i64,
    next_seq: i64,
    prev: Sha256Digest,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::after(0, GENESIS)
    }
}

impl ChainVerifier {
    /// A verifier that expects the chain to go on after the event `seq` with `hash` (a
    /// trail whose older events were removed by retention starts at its anchor); `(0,
    /// GENESIS)` is the start of a whole chain.
    pub fn after(seq: i64, hash: Sha256Digest) -> Self {
        let next = seq.saturating_add(1);
        Self {
            start: next,
            next_seq: next,
            prev: hash,
        }
    }

    /// Checks the next event.
    pub fn check(
        &mut self,
        seq: i64,
        body: &[u8],
        prev_hash: &Sha256Digest,
        hash: &Sha256Digest,
    ) -> Result<(), ChainError> {
        if seq != self.next_seq {
            return Err(ChainError::Gap {
                expected: self.next_seq,
                found: seq,
            });
        }
        if prev_hash != &self.prev {
            return Err(ChainError::BrokenLink { seq });
        }
        if &chain_hash(prev_hash, seq, body) != hash {
            return Err(ChainError::Edited { seq });
        }
        self.prev = *hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Events checked so far.
    pub fn checked(&self) -> i64 {
        self.next_seq - self.start
    }

    /// The hash of the last event checked.
    pub fn head(&self) -> Sha256Digest {
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(ms: i64) -> String {
        let mut s = String::new();
        push_time(&mut s, ms);
        s
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(time(951_782_400_999), "2000-02-29T00:00:00.999Z");
        assert_eq!(time(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(time(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(time(253_402_300_800_000), "0000-00-00T00:00:00.000Z");
        assert_eq!(time(i64::MIN), "0000-00-00T00:00:00.192Z");
    }

    #[test]
    fn canonical_json_writes_fields_in_order_and_leaves_out_absent_ones() {
        let mut bare = String::new();
        write_json(&Fields::new(0, "k", "o"), &mut bare);
        assert_eq!(
            bare,
            r#"{"time":"1970-01-01T00:00:00.000Z","kind":"k","outcome":"o"}"#
        );
        let full = Fields {
            request_id: Some("req-1"),
            route: Some("r"),
            scheme: Some("mtls,jwt"),
            reason: Some("ok"),
            credential_id: Some("key_1"),
            client_ip: Some("::1".parse().unwrap_or(IpAddr::from([0u8; 16]))),
            actor: Some("a \"b\"\u{1}\n\\ é\u{7f}"),
            detail: Some(r#"{"ids":["x"]}"#),
            ..Fields::new(1_764_000_000_123, "api_key.revoked", "ok")
        };
        let mut out = String::new();
        write_json(&full, &mut out);
        assert_eq!(
            out,
            concat!(
                r#"{"time":"2025-11-24T16:00:00.123Z","kind":"api_key.revoked","outcome":"ok","#,
                r#""request_id":"req-1","route":"r","scheme":"mtls,jwt","reason":"ok","#,
                r#""credential_id":"key_1","client_ip":"::1","#,
                "\"actor\":\"a \\\"b\\\"\\u0001\\n\\\\ é\u{7f}\",",
                r#""detail":{"ids":["x"]}}"#
            )
        );
    }

    /// One writer over a run of events writes what `write_json` writes for each.
    #[test]
    fn a_json_writer_reusing_its_memory_writes_the_same() {
        let ips: [IpAddr; 3] = [[10, 0, 0, 1].into(), [10, 0, 0, 2].into(), [0u8; 16].into()];
        let mut w = JsonWriter::default();
        for i in 0..200i64 {
            let f = Fields {
                client_ip: Some(ips[(i / 7 % 3) as usize]),
                request_id: Some("r"),
                ..Fields::new(1_764_000_000_000 + i * 137 - 9_000, "k", "o")
            };
            let (mut a, mut b) = (String::new(), String::new());
            w.write(&f, &mut a);
            write_json(&f, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn a_json_writer_remembering_fields_writes_what_a_fresh_one_writes() {
        let kinds = ["auth.decision", "api_key.new_ip"];
        let outcomes = ["allow", "deny", "notice"];
        let routes = [None, Some("orders"), Some("order"), Some("s\"x")];
        let schemes = [None, Some("api_key"), Some("api_key,jwt")];
        let reasons = [None, Some("ok"), Some("invalid_api_key")];
        let mut w = JsonWriter::default();
        // One buffer, its text changed in place: a value at an address seen before may be
        // other text now.
        let mut route_buf = String::from("orders");
        for i in 0..400usize {
            if i % 11 == 0 {
                route_buf.clear();
                route_buf.push_str(if i % 22 == 0 { "orders" } else { "ordery" });
            }
            let route = if i % 5 == 0 {
                Some(route_buf.as_str())
            } else {
                routes[i / 3 % routes.len()]
            };
            let f = Fields {
                route,
                scheme: schemes[i / 7 % schemes.len()],
                reason: reasons[i / 2 % reasons.len()],
                request_id: Some("r"),
                ..Fields::new(1_764_000_000_000, kinds[i / 13 % 2], outcomes[i / 4 % 3])
            };
            let (mut a, mut b) = (String::new(), String::new());
            w.write(&f, &mut a);
            write_json(&f, &mut b);
            assert_eq!(a, b, "event {i}");
        }
    }

    #[test]
    fn plain_text_is_told_from_text_that_needs_escaping_at_every_offset() {
        for len in 0..20 {
            let base = vec![b'a'; len];
            assert!(is_plain(&base));
            for at in 0..len {
                for bad in [0u8, 0x01, 0x1f, b'"', b'\\'] {
                    let mut v = base.clone();
                    v[at] = bad;
                    assert!(!is_plain(&v), "{bad:#x} at {at} of {len}");
                }
                for good in [0x20u8, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff] {
                    let mut v = base.clone();
                    v[at] = good;
                    assert!(is_plain(&v), "{good:#x} at {at} of {len}");
                }
            }
        }
    }

    proptest::proptest! {
        /// The word-at-a-time check agrees with the byte-at-a-time definition.
        #[test]
        fn plain_check_matches_the_bytewise_definition(
            v in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![0u8, 0x1f, 0x20, 0x21, 0x22, 0x5c, 0x80]),
            ], 0..64)
        ) {
            let want = v.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
            proptest::prop_assert_eq!(is_plain(&v), want);
        }

        /// Against an independent oracle: days back to a date by counting forward.
        #[test]
        fn time_matches_a_day_count(days in 0i64..2_932_897, sod in 0i64..86_400, ms in 0i64..1000) {
            let t = time((days * 86_400 + sod) * 1000 + ms);
            let (y, m, d) = {
                let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
                let (mut y, mut left) = (1970, days);
                while left >= if leap(y) { 366 } else { 365 } {
                    left -= if leap(y) { 366 } else { 365 };
                    y += 1;
                }
                let lens = [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
                let mut m = 0;
                while left >= lens[m] {
                    left -= lens[m];
                    m += 1;
                }
                (y, m as i64 + 1, left + 1)
            };
            let want = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod / 60 % 60, sod % 60);
            proptest::prop_assert_eq!(t, want);
        }

        /// Any text makes a JSON string literal that reads back as that text.
        #[test]
        fn json_strings_read_back(s in "\\PC*|[\\x00-\\x7f]{0,20}") {
            let mut out = String::new();
            push_json_str(&mut out, &s);
            proptest::prop_assert!(!out.contains('\n'));
            proptest::prop_assert_eq!(unquote(&out), Some(s));
        }
    }

    /// Reads a JSON string literal back (serde_json's reader).
    fn unquote(lit: &str) -> Option<String> {
        serde_json::from_str(lit).ok()
    }

    fn chain(bodies: &[&str]) -> Vec<(i64, Vec<u8>, Sha256Digest, Sha256Digest)> {
        let mut prev = GENESIS;
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let seq = i as i64 + 1;
                let h = chain_hash(&prev, seq, b.as_bytes());
                let row = (seq, b.as_bytes().to_vec(), prev, h);
                prev = h;
                row
            })
            .collect()
    }

    fn verify(rows: &[(i64, Vec<u8>, Sha256Digest, Sha256Digest)]) -> Result<i64, ChainError> {
        let mut v = ChainVerifier::default();
        for (seq, body, prev, h) in rows {
            v.check(*seq, body, prev, h)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(&["a", "b", "c"])), Ok(3));
    }

    #[test]
    fn edit_removal_and_reorder_are_found() {
        let mut edited = chain(&["a", "b", "c"]);
        edited[1].1 = b"B".to_vec();
        assert_eq!(verify(&edited), Err(ChainError::Edited { seq: 2 }));

        let mut removed = chain(&["a", "b", "c"]);
        removed.remove(1);
        assert_eq!(
            verify(&removed),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );

        let mut reordered = chain(&["a", "b", "c"]);
        reordered.swap(1, 2);
        reordered[1].0 = 2;
        reordered[2].0 = 3;
        assert_eq!(verify(&reordered), Err(ChainError::BrokenLink { seq: 2 }));
    }

    #[test]
    fn a_chain_is_checked_from_its_anchor() {
        let rows = chain(&["a", "b", "c", "d"]);
        let (seq, hash) = (rows[1].0, rows[1].3);
        let mut v = ChainVerifier::after(seq, hash);
        for (seq, body, prev, h) in &rows[2..] {
            v.check(*seq, body, prev, h).unwrap();
        }
        assert_eq!((v.checked(), v.head()), (2, rows[3].3));
        // A tail that does not start right after the anchor, or not from its hash, is broken.
        let mut v = ChainVerifier::after(seq, hash);
        let (s, b, p, h) = &rows[3];
        assert_eq!(
            v.check(*s, b, p, h),
            Err(ChainError::Gap {
                expected: 3,
                found: 4
            })
        );
        let mut v = ChainVerifier::after(seq, [7; 32]);
        let (s, b, p, h) = &rows[2];
        assert_eq!(v.check(*s, b, p, h), Err(ChainError::BrokenLink { seq: 3 }));
    }
}

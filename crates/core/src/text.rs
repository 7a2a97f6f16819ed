//! Small text renderings used once per request or event (client addresses in headers and
//! audit events, sequence numbers, request ids, rate-limit keys), written without the
//! formatting machinery and, where they fit, without an allocation.

use std::net::IpAddr;

/// An IP address as text, on the stack (the longest, an IPv6 address with an embedded
/// IPv4 one, is 45 bytes).
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    /// Renders `ip` as `Display` would.
    pub fn new(ip: IpAddr) -> Self {
        let mut t = Self {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + (octet / 10) % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cur = std::io::Cursor::new(&mut t.buf[..]);
                // Cannot fail: the longest rendering fits the buffer.
                let _ = write!(cur, "{v6}");
                t.len = u8::try_from(cur.position()).unwrap_or(0);
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Appends `n` in decimal, as `Display` would (sequence numbers and times, per event).
pub fn push_decimal(out: &mut String, n: i64) {
    // itoa: two digits per step from a table.
    out.push_str(itoa::Buffer::new().format(n));
}

/// Text joined from pieces and kept inline when it fits in `N` bytes, on the heap only when
/// longer: request ids in audit events and rate-limit cell keys, made once or twice per
/// request, nearly always fit.
#[derive(Clone, Debug)]
pub enum CompactText<const N: usize> {
    /// The text is the first `len` bytes of `buf`.
    Inline {
        /// Storage.
        buf: [u8; N],
        /// Bytes used.
        len: usize,
    },
    /// Longer than `N` bytes.
    Heap(Box<str>),
}

impl<const N: usize> CompactText<N> {
    /// The concatenation of `parts`. A slice of pieces, walked twice in plain loops: the
    /// rate-limit keys were built from an iterator chain before, at twice the cost.
    pub fn from_parts(parts: &[&str]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > N {
            return Self::Heap(parts.concat().into_boxed_str());
        }
        let mut buf = [0u8; N];
        let mut at = 0;
        for p in parts {
            // The lengths add up to `len <= N`: `at + p.len()` never passes N.
            buf[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        Self::Inline { buf, len: at }
    }

    /// A copy of `s`.
    pub fn new(s: &str) -> Self {
        Self::from_parts(&[s])
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            // Whole `&str`s were copied in: always UTF-8.
            Self::Inline { buf, len } => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
            Self::Heap(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_text_is_inline_up_to_its_size() {
        let t = CompactText::<8>::from_parts(&["abcd", "", "efgh"]);
        assert!(matches!(t, CompactText::Inline { len: 8, .. }));
        assert_eq!(t.as_str(), "abcdefgh");
        let t = CompactText::<8>::from_parts(&["abcd", "efghi"]);
        assert!(matches!(t, CompactText::Heap(_)));
        assert_eq!(t.as_str(), "abcdefghi");
        assert_eq!(CompactText::<0>::new("").as_str(), "");
    }

    #[test]
    fn decimals_render_like_display_at_the_edges() {
        for n in [0, 1, -1, 9, 10, -10, 1_764_000_000_000, i64::MAX, i64::MIN] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn edge_addresses_render_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.100.9",
            "::",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "0:0:0:0:0:ffff:192.168.100.200",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    proptest! {
        #[test]
        fn any_decimal_renders_like_display(n in any::<i64>()) {
            let mut s = String::new();
            push_decimal(&mut s, n);
            prop_assert_eq!(s, n.to_string());
        }

        #[test]
        fn compact_text_is_the_concatenation(parts in proptest::collection::vec(".{0,12}", 0..6)) {
            let joined: String = parts.concat();
            let pieces: Vec<&str> = parts.iter().map(String::as_str).collect();
            let t = CompactText::<24>::from_parts(&pieces);
            prop_assert_eq!(t.as_str(), joined.as_str());
            prop_assert_eq!(matches!(t, CompactText::Inline { .. }), joined.len() <= 24);
        }

        #[test]
        fn any_address_renders_like_display(v4 in any::<u32>(), v6 in any::<u128>()) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(v4));
            let t = IpText::new(a);
            prop_assert_eq!(t.as_str(), a.to_string());
            let b = IpAddr::from(std::net::Ipv6Addr::from(v6));
            let t = IpText::new(b);
            prop_assert_eq!(t.as_str(), b.to_string());
        }
    }
}

//! Small text renderings used once per request or event (client addresses in headers and
//! audit events, sequence numbers), written without the formatting machinery, which costs
//! several times more.

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
    if n < 0 {
        out.push('-');
    }
    let mut v = n.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

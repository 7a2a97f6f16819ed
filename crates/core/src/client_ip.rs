//! Which address a request comes from, when proxies the deployment trusts stand in front of
//! the gateway (a load balancer, a CDN): their `X-Forwarded-For` is believed, a caller's is not.
//!
//! The rule is nginx's `real_ip_recursive on` and Envoy's trusted hops: walk the forwarded
//! addresses from the right (the one the nearest proxy appended) leftwards while the address
//! in hand is a trusted proxy; the first address that is not trusted is the client. Whatever a
//! caller wrote into the field itself lies to the left of what its first proxy appended, so it
//! is never reached unless every hop after it is trusted.

use std::net::IpAddr;

use ipnet::IpNet;

/// A `trusted_proxies` entry that is neither an address nor a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or network (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)")]
pub struct BadNetwork(pub String);

/// The proxies whose forwarding fields are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses addresses (`192.0.2.7`, `::1`) and networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadNetwork> {
        let nets = entries
            .iter()
            .map(|e| {
                let e = e.as_ref().trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| BadNetwork(e.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }

    /// Whether none is trusted (the peer is always the client).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy. An IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: `peer` (who connected) unless it is trusted, in which case the
    /// forwarded addresses (`values`: the field's lines, in order, each a comma-separated
    /// list) are walked from the right as the module says. A malformed entry stops the walk
    /// at the last trusted address (a proxy that writes garbage is not believed further).
    pub fn client_ip<'v>(
        &self,
        peer: IpAddr,
        values: impl DoubleEndedIterator<Item = &'v [u8]>,
    ) -> IpAddr {
        if self.nets.is_empty() {
            return peer;
        }
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        for value in values.rev() {
            for entry in value.rsplit(|&b| b == b',') {
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = ip;
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// One forwarded address: `192.0.2.7`, `192.0.2.7:443`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|a| canonical(a.into()));
    }
    let (ip, port) = s.rsplit_once(':')?;
    is_port(port).then_some(())?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.7`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(t: &TrustedProxies, peer: &str, xff: &[&str]) -> IpAddr {
        t.client_ip(ip(peer), xff.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn only_trusted_hops_are_believed_from_the_right() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "192.0.2.7", "fd00::/8"]).unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client(&t, "203.0.113.9", &["198.51.100.1"]),
            ip("203.0.113.9")
        );
        // A trusted load balancer: the address it appended.
        assert_eq!(
            client(&t, "10.1.2.3", &["198.51.100.1"]),
            ip("198.51.100.1")
        );
        // A caller's own claim sits left of what the first proxy appended: not reached.
        assert_eq!(
            client(&t, "10.1.2.3", &["6.6.6.6, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        // Several trusted hops, over several field lines, in order.
        assert_eq!(
            client(
                &t,
                "10.1.2.3",
                &["6.6.6.6, 198.51.100.1", "192.0.2.7, 10.9.9.9"]
            ),
            ip("198.51.100.1")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(client(&t, "10.1.2.3", &["10.0.0.5"]), ip("10.0.0.5"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(client(&t, "10.1.2.3", &[]), ip("10.1.2.3"));
        // Garbage from a trusted hop stops the walk at the last trusted address.
        assert_eq!(
            client(&t, "10.1.2.3", &["198.51.100.1, nonsense"]),
            ip("10.1.2.3")
        );
        assert_eq!(client(&t, "10.1.2.3", &["198.51.100.1, "]), ip("10.1.2.3"));
        // Ports and brackets as proxies write them; IPv6 networks; mapped IPv4.
        assert_eq!(
            client(&t, "10.1.2.3", &["198.51.100.1:4711"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(&t, "fd00::1", &["[2001:db8::5]:443"]),
            ip("2001:db8::5")
        );
        assert_eq!(
            client(&t, "::ffff:10.1.2.3", &["2001:db8::5"]),
            ip("2001:db8::5")
        );
        assert_eq!(
            client(&t, "10.1.2.3", &["::ffff:198.51.100.1"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_as_it_is() {
        let t = TrustedProxies::default();
        assert!(t.is_empty());
        assert_eq!(
            client(&t, "::ffff:10.1.2.3", &["198.51.100.1"]),
            ip("::ffff:10.1.2.3")
        );
    }

    #[test]
    fn entries_are_addresses_or_networks() {
        assert!(TrustedProxies::parse(&["10.0.0.0/8", "::1", " 192.0.2.0/24 "]).is_ok());
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0.1/8/8"] {
            assert_eq!(
                TrustedProxies::parse(&[bad]),
                Err(BadNetwork(bad.trim().to_owned())),
                "{bad}"
            );
        }
        // A network written with host bits set covers the network.
        assert!(TrustedProxies::parse(&["10.1.2.3/8"])
            .unwrap()
            .trusts(ip("10.200.0.1")));
    }

    proptest::proptest! {
        /// Never a panic, and the answer is the peer or one of the forwarded addresses.
        #[test]
        fn any_field_gives_the_peer_or_a_forwarded_address(xff in "[0-9a-f:.,\\[\\] ]{0,60}") {
            let t = TrustedProxies::parse(&["0.0.0.0/0", "::/0"]).unwrap();
            let got = t.client_ip(ip("10.0.0.1"), std::iter::once(xff.as_bytes()));
            let listed = xff.split(',').filter_map(|e| parse_entry(e.as_bytes())).any(|a| a == got);
            proptest::prop_assert!(got == ip("10.0.0.1") || listed);
        }
    }
}

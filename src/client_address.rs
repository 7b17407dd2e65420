//! Where a request comes from, for per-client rate limits.
//!
//! Limits are keyed by [`ClientNetwork`], not by the raw address: an IPv6 client usually holds a
//! whole /64 and can pick a fresh address from it for every request, so IPv6 addresses are keyed
//! by their /64. A request whose address is unknown shares one bucket with every other such
//! request; it is never unlimited.

use std::net::{IpAddr, Ipv4Addr};

/// The network address a request came from, when known, as request data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

/// What per-client limits are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNetwork {
    /// One IPv4 address (or an IPv4-mapped IPv6 address).
    V4(Ipv4Addr),
    /// The /64 an IPv6 address belongs to.
    V6Prefix(u64),
    /// The address is not known: all such requests share one key.
    Unknown,
}

impl std::fmt::Display for ClientNetwork {
    /// The key's text form (for keys kept outside this process, such as in Redis).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientNetwork::V4(address) => write!(f, "{address}"),
            ClientNetwork::V6Prefix(prefix) => write!(f, "{prefix:016x}::/64"),
            ClientNetwork::Unknown => f.write_str("unknown"),
        }
    }
}

impl ClientAddress {
    /// The key for per-client limits.
    pub fn network(self) -> ClientNetwork {
        match self.0 {
            None => ClientNetwork::Unknown,
            Some(IpAddr::V4(v4)) => ClientNetwork::V4(v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientNetwork::V4(v4),
                None => ClientNetwork::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The client behind `trusted_proxies` reverse proxies that each append the address they
    /// saw to `X-Forwarded-For`: the entry that many places from the right. Entries further left
    /// were written by the client itself and prove nothing. With no trusted proxies, or a header
    /// shorter than the proxy chain, the TCP peer is the client.
    pub fn behind_proxies(
        peer: Option<IpAddr>,
        forwarded_for: &[&str],
        trusted_proxies: usize,
    ) -> ClientAddress {
        if trusted_proxies == 0 {
            return ClientAddress(peer);
        }
        let entries: Vec<&str> =
            forwarded_for.iter().flat_map(|header| header.split(',')).map(str::trim).collect();
        let from_right = entries.len().checked_sub(trusted_proxies).and_then(|i| entries.get(i));
        match from_right.and_then(|entry| entry.parse::<IpAddr>().ok()) {
            Some(address) => ClientAddress(Some(address)),
            None => ClientAddress(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = ClientAddress(Some(ip("2001:db8:1:2::1"))).network();
        let b = ClientAddress(Some(ip("2001:db8:1:2:ffff:1:2:3"))).network();
        let other = ClientAddress(Some(ip("2001:db8:1:3::1"))).network();
        assert_eq!(a, b);
        assert_ne!(a, other);
        let mapped = ClientAddress(Some(ip("::ffff:192.0.2.7"))).network();
        assert_eq!(mapped, ClientNetwork::V4("192.0.2.7".parse().unwrap()));
        assert_eq!(ClientAddress(None).network(), ClientNetwork::Unknown);
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let peer = Some(ip("10.0.0.2"));
        // The client wrote "1.1.1.1"; the one proxy appended the address it saw.
        let header = ["1.1.1.1, 203.0.113.9"];
        assert_eq!(ClientAddress::behind_proxies(peer, &header, 1).0, Some(ip("203.0.113.9")));
        // Two proxies: the second appended the first's address.
        let header = ["1.1.1.1", "203.0.113.9, 10.0.0.1"];
        assert_eq!(ClientAddress::behind_proxies(peer, &header, 2).0, Some(ip("203.0.113.9")));
        // Not trusting proxies, or a chain shorter than configured: the peer.
        assert_eq!(ClientAddress::behind_proxies(peer, &header, 0).0, peer);
        assert_eq!(ClientAddress::behind_proxies(peer, &["203.0.113.9"], 2).0, peer);
        assert_eq!(ClientAddress::behind_proxies(peer, &["garbage"], 1).0, peer);
    }
}

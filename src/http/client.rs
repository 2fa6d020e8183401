//! Who a request comes from, and the per-address stream limit (`--max-connections-per-ip`).
//!
//! The server puts the address of the connection's peer in every request's extensions ([`Peer`]);
//! [`client_address`] is the one place that turns it into the client's address, for logs and per-address
//! limits: the peer's own, unless the peer is a proxy named by `--trusted-proxy` ([`TrustedProxies`]), in
//! which case the address it forwards. [`AddressSlots`] counts the streams open per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use http::Request;

use crate::error::Error;

/// The address of the peer of the connection a request came on, put in the request's extensions by the
/// server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The client's address: the peer's, with an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as a dual-stack
/// listener reports IPv4 clients) read as the IPv4 address it is. `None` for a request that came on no
/// connection (built in a test).
///
/// When the peer is a trusted proxy, the client is found in the chain of addresses the proxies forwarded
/// (`X-Forwarded-For`, or `Forwarded` when there is no `X-Forwarded-For`), the standard way: from the right
/// (the hop the peer itself appended), skipping trusted proxies, the first address that is not trusted is
/// the client's. Everything to its left was written by the client or by proxies Herald does not know, and
/// cannot be believed. When every address is trusted, the left-most is the client; an entry that is not an
/// address (`unknown`, an obfuscated name, garbage) stops the walk at the trusted hop to its right. Headers
/// from a peer that is not trusted are ignored, so a client cannot choose its own address.
pub fn client_address<B>(req: &Request<B>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.extensions().get::<Peer>()?.0.ip().to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let forwarded_for = headers.get_all(X_FORWARDED_FOR);
    let chain: Vec<Option<IpAddr>> = if forwarded_for.iter().next().is_some() {
        list_items(forwarded_for).map(parse_node).collect()
    } else {
        list_items(headers.get_all(FORWARDED)).map(forwarded_for_param).collect()
    };
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        let Some(hop) = hop else { break };
        client = hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    Some(client)
}

/// The comma-separated items of every value of a header, in order, trimmed, empty ones left out.
fn list_items<'a>(values: http::header::GetAll<'a, http::HeaderValue>) -> impl DoubleEndedIterator<Item = &'a str> {
    values
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`. `None` for anything else.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    node.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The `for=` address of one element of `Forwarded` (RFC 7239): `for=192.0.2.60;proto=http`,
/// `For="[2001:db8:cafe::17]:4711"`. `None` without one, or when it is not an address (`unknown`, `_hidden`).
fn forwarded_for_param(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| parse_node(value)).flatten()
    })
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";

/// An address range of `--trusted-proxy`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an address range (like 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)"))?
            .to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{s:?}: the prefix length must be a number from 0 to {bits}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    /// Whether `ip` (canonical: IPv4-mapped addresses read as IPv4) is in the range.
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The peers whose forwarding headers are believed (`--trusted-proxy`); none by default.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts peers in these ranges.
    pub fn new(ranges: Vec<Cidr>) -> Self {
        TrustedProxies(ranges)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }
}

/// Streams open per client address, each at most `max`.
#[derive(Debug)]
pub struct AddressSlots {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl AddressSlots {
    /// Allows `max` streams per address.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(AddressSlots { max: max.max(1), open: Mutex::default() })
    }

    /// Takes one of `address`'s slots; the slot is freed when the permit is dropped.
    ///
    /// # Errors
    /// [`Error::TooManyConnectionsFromAddress`] when `address` already has `max` streams open.
    pub fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<AddressPermit, Error> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return Err(Error::TooManyConnectionsFromAddress { max: self.max });
        }
        *count += 1;
        Ok(AddressPermit { slots: self.clone(), address })
    }

    /// How many addresses have a stream open.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One stream's slot of its client address.
#[derive(Debug)]
pub struct AddressPermit {
    slots: Arc<AddressSlots>,
    address: IpAddr,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // Forgotten at once: a scan of many addresses leaves nothing behind.
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_freed() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.acquire(a).unwrap();
        let _second = slots.acquire(a).unwrap();
        assert!(matches!(slots.acquire(a), Err(Error::TooManyConnectionsFromAddress { max: 2 })));
        let _other = slots.acquire(b).unwrap();
        assert_eq!(slots.addresses(), 2);
        drop(first);
        let _third = slots.acquire(a).unwrap();
        drop((_second, _third, _other));
        assert_eq!(slots.addresses(), 0, "addresses without streams are forgotten");
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Peer("[::ffff:192.0.2.7]:4000".parse().unwrap()));
        let none = TrustedProxies::default();
        assert_eq!(client_address(&req, &none), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(client_address(&Request::new(()), &none), None);
    }

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    /// The client a request from `peer` with these headers comes from.
    fn client(peer: &str, headers: &[(&str, &str)], trust: &TrustedProxies) -> String {
        let mut req = Request::new(());
        req.extensions_mut().insert(Peer(SocketAddr::new(peer.parse().unwrap(), 4000)));
        for (name, value) in headers {
            req.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        client_address(&req, trust).unwrap().to_string()
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_peers_only() {
        let trust = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        let xff = |v| [("x-forwarded-for", v)];
        // Not trusted: its headers are ignored.
        assert_eq!(client("192.0.2.1", &xff("198.51.100.7"), &trust), "192.0.2.1");
        assert_eq!(client("192.0.2.1", &[("forwarded", "for=198.51.100.7")], &trust), "192.0.2.1");
        // Trusted: the right-most address that is not trusted.
        assert_eq!(client("10.0.0.1", &xff("198.51.100.7"), &trust), "198.51.100.7");
        assert_eq!(client("10.0.0.1", &xff("203.0.113.66, 198.51.100.7, 10.1.2.3"), &trust), "198.51.100.7");
        assert_eq!(
            client("10.0.0.1", &[("x-forwarded-for", "203.0.113.66"), ("x-forwarded-for", "198.51.100.7")], &trust),
            "198.51.100.7"
        );
        // Every hop trusted: the left-most; none given: the peer.
        assert_eq!(client("10.0.0.1", &xff("10.9.9.9, 10.1.1.1"), &trust), "10.9.9.9");
        assert_eq!(client("10.0.0.1", &[], &trust), "10.0.0.1");
        // An entry that is no address stops the walk at the trusted hop to its right.
        assert_eq!(client("10.0.0.1", &xff("198.51.100.7, unknown, 10.1.1.1"), &trust), "10.1.1.1");
        assert_eq!(client("10.0.0.1", &xff("garbage"), &trust), "10.0.0.1");
        // Ports and brackets, IPv6, IPv4-mapped.
        assert_eq!(client("10.0.0.1", &xff("198.51.100.7:4711"), &trust), "198.51.100.7");
        assert_eq!(client("10.0.0.1", &xff("[2001:db9::7]:4711"), &trust), "2001:db9::7");
        assert_eq!(client("2001:db8::1", &xff("2001:db9::7, 2001:db8::2"), &trust), "2001:db9::7");
        assert_eq!(client("::ffff:10.0.0.1", &xff("::ffff:198.51.100.7"), &trust), "198.51.100.7");
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trust = trusted(&["10.0.0.0/8"]);
        let fwd = |v| [("forwarded", v)];
        assert_eq!(client("10.0.0.1", &fwd("for=198.51.100.7;proto=https"), &trust), "198.51.100.7");
        let chain = r#"for=203.0.113.66, For="[2001:db9::7]:4711";by=10.0.0.1, for=10.2.2.2"#;
        assert_eq!(client("10.0.0.1", &fwd(chain), &trust), "2001:db9::7");
        assert_eq!(client("10.0.0.1", &fwd("for=unknown"), &trust), "10.0.0.1");
        assert_eq!(client("10.0.0.1", &fwd("for=_hidden, for=10.3.3.3"), &trust), "10.3.3.3");
        // With both, X-Forwarded-For (what most proxies write) is the one read.
        let both = [("forwarded", "for=203.0.113.66"), ("x-forwarded-for", "198.51.100.7")];
        assert_eq!(client("10.0.0.1", &both, &trust), "198.51.100.7");
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.255.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(!range.contains("::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!("::/0".parse::<Cidr>().unwrap().contains("2001:db8::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()) && !one.contains("192.0.2.8".parse().unwrap()));
        assert!("2001:db8::/32".parse::<Cidr>().unwrap().contains("2001:db8:ffff::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }
}

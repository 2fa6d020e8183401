//! Who a request comes from, and the per-address stream limit (`--max-connections-per-ip`).
//!
//! The server puts the address of the connection's peer in every request's extensions ([`Peer`]);
//! [`client_address`] is the one place that turns it into the client's address, for logs and per-address
//! limits. [`AddressSlots`] counts the streams open per client address.

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
pub fn client_address<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions().get::<Peer>().map(|peer| peer.0.ip().to_canonical())
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
        assert_eq!(client_address(&req), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(client_address(&Request::new(())), None);
    }
}

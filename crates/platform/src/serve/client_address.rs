//! The client's address when requests pass through proxies (the gateway, a
//! load balancer): `x-forwarded-for` is believed only from a trusted hop.

use std::net::IpAddr;

/// The header (and gRPC metadata key) proxies append the client address to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The address of the client behind `peer`. When `peer` is one of `trusted`,
/// the `x-forwarded-for` list (every header line, in order, as one list) is
/// read from the right, skipping trusted hops, and the first other address
/// is the client; any other peer is the client itself, whatever it claims.
/// IPv4 addresses seen through an IPv6 socket compare as IPv4.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpAddr],
) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|t| t.to_canonical() == address);
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|line| line.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = address.to_canonical();
                if !is_trusted(client) {
                    break;
                }
            }
            // A malformed entry ends what can be believed.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn only_trusted_peers_may_name_the_client() {
        let trusted = [ip("10.0.0.1")];
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("203.0.113.7"), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_address(ip("198.51.100.2"), Some("203.0.113.7"), &trusted),
            ip("198.51.100.2")
        );
        assert_eq!(client_address(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // The client forged the first entry; the trusted hops appended the rest.
        let chain = "1.2.3.4, 203.0.113.7, 10.0.0.2";
        assert_eq!(client_address(ip("10.0.0.1"), Some(chain), &trusted), ip("203.0.113.7"));
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("junk, 10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
    }
}

//! Where the replicas of `keel up --replicas N` listen, and the URL that
//! names them all.

use std::net::SocketAddr;

use anyhow::Context as _;

/// The most replicas of each `keel up` runs: enough to try balancing and
/// failover on one machine.
pub(super) const MAX: i64 = 16;

/// Where replica `replica` of a service, or of a metrics listener, set to
/// `listen` listens: the first where it was told, the others on a port the
/// system picks on the same address (the default ports are consecutive, so
/// the ports after one are another's).
pub(super) fn replica_listen(listen: SocketAddr, replica: usize) -> SocketAddr {
    if replica == 0 {
        listen
    } else {
        SocketAddr::new(listen.ip(), 0)
    }
}

/// Where gateway `replica` listens: on the ports after the first's (8080,
/// 8081, ...), so they are easy to find; a system-picked port stays so.
pub(super) fn gateway_listen(listen: SocketAddr, replica: usize) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        return Ok(listen);
    }
    let port = u16::try_from(replica)
        .ok()
        .and_then(|replica| listen.port().checked_add(replica))
        .with_context(|| format!("no port for gateway replica {} after {listen}", replica + 1))?;
    Ok(SocketAddr::new(listen.ip(), port))
}

/// `addrs` as one client URL: `http://a,http://b` (calls are balanced over
/// them), or `http://a` for one.
pub(super) fn url(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sets `flag` to `value` in `argv`, replacing the value it has.
pub(super) fn set_flag(argv: &mut Vec<String>, flag: &str, value: &str) {
    match argv.iter().position(|arg| arg == flag) {
        Some(at) if at + 1 < argv.len() => argv[at + 1] = value.to_owned(),
        _ => argv.extend([flag.to_owned(), value.to_owned()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn gateways_take_the_ports_after_the_first_and_services_any() {
        let listen = addr("0.0.0.0:8080");
        assert_eq!(gateway_listen(listen, 0).ok(), Some(listen));
        assert_eq!(gateway_listen(listen, 1).ok(), Some(addr("0.0.0.0:8081")));
        assert!(gateway_listen(addr("127.0.0.1:65535"), 1).is_err());
        assert_eq!(replica_listen(addr("127.0.0.1:50051"), 0), addr("127.0.0.1:50051"));
        assert_eq!(replica_listen(addr("127.0.0.1:50051"), 1), addr("127.0.0.1:0"));
    }

    #[test]
    fn peer_urls_list_every_replica() {
        assert_eq!(url(&[addr("127.0.0.1:1")]), "http://127.0.0.1:1");
        assert_eq!(
            url(&[addr("127.0.0.1:1"), addr("127.0.0.1:2")]),
            "http://127.0.0.1:1,http://127.0.0.1:2"
        );
        let mut argv = vec!["keel".to_owned(), "--auth-url".to_owned(), "http://a".to_owned()];
        set_flag(&mut argv, "--auth-url", "http://a,http://b");
        set_flag(&mut argv, "--orders-url", "http://c");
        assert_eq!(
            argv,
            ["keel", "--auth-url", "http://a,http://b", "--orders-url", "http://c"]
        );
    }
}

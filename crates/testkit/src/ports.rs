//! Ports for servers a test starts in another process, where the server
//! binds the port itself later.
//!
//! A port from binding port 0 lies in the kernel's ephemeral range
//! (32768-60999 on Linux), where any outgoing connection (the tests running
//! beside this one make thousands) may take it before the server binds it.
//! These come from below that range instead, as `.ci/ports.py` picks them.

use std::{collections::HashSet, net::TcpListener, sync::Mutex};

/// Handed out before in this process: a port is given to one server only.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port in 20000-31999 that binds now and was not handed out
/// before in this process.
pub fn free_port() -> anyhow::Result<u16> {
    let mut taken = TAKEN.lock().map_err(|_| anyhow::anyhow!("the port list is poisoned"))?;
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..1_000 {
        let port = rand::random_range(20_000..32_000);
        if taken.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    anyhow::bail!("no free loopback port in 20000-31999")
}

//! The edge's own protections: who the client is, and how fast it may call.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::keyed::HashMapStateStore,
};
use keel_platform::principal::Principal;

/// Who a request counts against: the token's subject when it carries a
/// valid one, else the client's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A signed-in user.
    User(uuid::Uuid),
    /// A service with a client-credentials token.
    Service(String),
    /// Anyone else, by address.
    Address(IpAddr),
}

impl ClientKey {
    /// The key for a request from `address`, with `principal` when its token
    /// verified.
    pub fn of(principal: Option<&Principal>, address: IpAddr) -> Self {
        match principal {
            Some(Principal::User(user)) => ClientKey::User(user.user_id),
            Some(Principal::Service(service)) => ClientKey::Service(service.client_id.clone()),
            None => ClientKey::Address(address),
        }
    }
}

/// A per-client rate limit (GCRA: a steady rate with a burst allowance).
#[derive(Debug, Clone)]
pub struct ClientLimiter {
    limiter: Arc<RateLimiter<ClientKey, HashMapStateStore<ClientKey>, DefaultClock>>,
    clock: DefaultClock,
}

impl ClientLimiter {
    /// `per_minute` requests a minute per client, up to `burst` at once.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        ClientLimiter {
            limiter: Arc::new(RateLimiter::hashmap(quota)),
            clock: DefaultClock::default(),
        }
    }

    /// Ok if `key` may make a request now, else how long until it may.
    pub fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose allowance is full again, so the table holds only
    /// recent callers; run now and then.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_own_allowance() {
        let limiter = ClientLimiter::new(NonZeroU32::new(60).expect("60"), NonZeroU32::new(2).expect("2"));
        let a = ClientKey::Address(IpAddr::from([10, 0, 0, 1]));
        let b = ClientKey::Address(IpAddr::from([10, 0, 0, 2]));
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        let wait = limiter.check(&a).expect_err("the burst is spent");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check(&b).is_ok(), "another client is not affected");
        limiter.prune();
    }
}

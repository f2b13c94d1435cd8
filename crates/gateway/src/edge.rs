//! The edge's own protections: who the client is, and how fast it may call.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use keel_platform::auth::principal::Principal;

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

/// As logs name it: `user:<id>`, `service:<client id>` or the address.
impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::User(id) => write!(f, "user:{id}"),
            ClientKey::Service(id) => write!(f, "{}{id}", keel_platform::auth::principal::SERVICE_SUBJECT_PREFIX),
            ClientKey::Address(address) => write!(f, "{address}"),
        }
    }
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

/// A per-client rate limit: GCRA (the generic cell rate algorithm), which
/// keeps one instant per client, its theoretical arrival time, and allows a
/// steady rate with a burst allowance. (governor implements the same, but it
/// would bring a third hashbrown into the build.)
#[derive(Debug, Clone)]
pub struct ClientLimiter {
    /// The time one request "costs": a minute over the rate.
    interval: Duration,
    /// How far ahead of now a client's arrival time may run: the burst.
    tolerance: Duration,
    arrivals: Arc<Mutex<HashMap<ClientKey, Instant>>>,
}

impl ClientLimiter {
    /// `per_minute` requests a minute per client, up to `burst` at once.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.get();
        ClientLimiter {
            interval,
            tolerance: interval * (burst.get() - 1),
            arrivals: Arc::default(),
        }
    }

    /// Ok if `key` may make a request now (and counts it), else how long
    /// until it may.
    pub fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        let arrival = arrivals.get(key).map_or(now, |&at| at.max(now));
        let allowed_from = arrival.checked_sub(self.tolerance).unwrap_or(now);
        if now < allowed_from {
            return Err(allowed_from - now);
        }
        arrivals.insert(key.clone(), arrival + self.interval);
        Ok(())
    }

    /// Forgets clients whose allowance is full again, so the table holds only
    /// recent callers; run now and then.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        arrivals.retain(|_, arrival| *arrival > now);
        arrivals.shrink_to_fit();
    }

    /// How many clients it remembers.
    pub fn len(&self) -> usize {
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether it remembers no client.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn the_allowance_refills_at_the_rate_and_idle_clients_are_forgotten() {
        // 600 a minute: one every 100 ms.
        let limiter = ClientLimiter::new(NonZeroU32::new(600).expect("600"), NonZeroU32::MIN);
        let a = ClientKey::Address(IpAddr::from([10, 0, 0, 1]));
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_err());
        std::thread::sleep(Duration::from_millis(150));
        assert!(limiter.check(&a).is_ok(), "one interval later, one more");
        std::thread::sleep(Duration::from_millis(150));
        limiter.prune();
        assert!(limiter.is_empty(), "a client whose allowance is full again is dropped");
    }
}

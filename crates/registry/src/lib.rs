//! The services that make up Keel. `keel up`, `keel serve`, `keel migrate`,
//! the test suite, the relays' subscriber lists and the gateway's upstreams
//! all read [`REGISTRY`]: adding a service is its crate and one line here
//! (docs/architecture.md, "Adding a service").

use keel_platform::registry::Registry;

/// Every Keel service, in start order: auth first, since the others fetch
/// its signing keys and service tokens.
pub const REGISTRY: Registry = Registry(&[
    &keel_auth::SERVICE,
    &keel_accounts::SERVICE,
    &keel_orders::SERVICE,
    &keel_notifications::SERVICE,
]);

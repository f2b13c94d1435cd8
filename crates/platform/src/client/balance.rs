//! Calls spread over several addresses of one service: where the addresses
//! come from (a list, names resolved again and again), which of them answer
//! their health check, and the task that keeps tonic's balancing channel
//! told.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tonic::transport::{Channel, Endpoint, Uri, channel::Change};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::ClientConfig;

/// Marks a URL whose name is resolved, each of its addresses an endpoint.
const DNS_PREFIX: &str = "dns+";

/// How many endpoint changes may wait for the balancer. It takes them only
/// when a call comes, so an idle channel lets them pile up; past this many
/// the task waits for the next call, which takes them all at once.
const PENDING_CHANGES: usize = 256;

/// The longest one lookup may take before the last addresses are kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest health-check interval: a check must have time to answer.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(50);

/// Where some of a service's addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// One address, used as written (a host name in it is resolved when
    /// connecting, as for a single URL).
    Address {
        /// `scheme://host:port`, the endpoint's key in the balancer.
        key: String,
        uri: Uri,
    },
    /// A name whose A/AAAA records are the addresses.
    Name {
        /// `scheme://host:port` without the `dns+`: the calls' `:authority`,
        /// and the address itself while the name resolves to nothing.
        origin: Uri,
        scheme: String,
        host: String,
        port: u16,
    },
}

impl Source {
    /// The sources of a service URL, or None for a single plain URL (one
    /// channel of its own, as it always was).
    pub(super) fn parse_list(url: &str) -> anyhow::Result<Option<Vec<Source>>> {
        if !url.contains(',') && !url.starts_with(DNS_PREFIX) {
            return Ok(None);
        }
        url.split(',')
            .map(str::trim)
            .enumerate()
            .map(|(index, item)| {
                anyhow::ensure!(!item.is_empty(), "{url:?}: address {} is empty", index + 1);
                Source::parse(item)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some)
    }

    fn parse(item: &str) -> anyhow::Result<Source> {
        let (resolve, url) = match item.strip_prefix(DNS_PREFIX) {
            Some(url) => (true, url),
            None => (false, item),
        };
        let uri: Uri = url.parse().with_context(|| format!("{item:?} is not a URL"))?;
        let scheme = uri
            .scheme_str()
            .with_context(|| format!("{item:?} has no scheme (http://host:port)"))?
            .to_owned();
        anyhow::ensure!(
            scheme == "http" || scheme == "https",
            "{item:?}: the scheme must be http or https"
        );
        let authority = uri
            .authority()
            .filter(|authority| !authority.host().is_empty())
            .with_context(|| format!("{item:?} names no host"))?;
        let key = format!("{scheme}://{authority}");
        let origin: Uri = key.parse().with_context(|| format!("{item:?} is not a URL"))?;
        if !resolve {
            return Ok(Source::Address { key, uri: origin });
        }
        let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        // An IPv6 literal is bracketed in a URL, not in a lookup.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Source::Name {
            origin,
            scheme,
            host,
            port,
        })
    }

    /// The address itself, or for a name the name as one address.
    fn itself(&self, config: &ClientConfig) -> Address {
        match self {
            Source::Address { key, uri } => (key.clone(), config.configure(Channel::builder(uri.clone()))),
            Source::Name { origin, .. } => (
                format!("{}://{}", origin.scheme_str().unwrap_or("http"), authority(origin)),
                config.configure(Channel::builder(origin.clone())),
            ),
        }
    }
}

fn authority(uri: &Uri) -> &str {
    uri.authority().map_or("", |authority| authority.as_str())
}

/// A balanced channel over `sources`, with what shows its state: the keys
/// of the endpoints that get calls, and the task keeping them (which ends
/// with the last clone of the channel).
pub(super) fn balanced(
    url: &str,
    sources: Vec<Source>,
    config: &ClientConfig,
) -> (Channel, watch::Receiver<BTreeSet<String>>, JoinHandle<()>) {
    let (channel, changes) = Channel::balance_channel(PENDING_CHANGES);
    let (active_tx, active_rx) = watch::channel(BTreeSet::new());
    let known = sources
        .into_iter()
        .map(|source| {
            // Addresses are known at once; names once looked up.
            let addresses = matches!(source, Source::Address { .. }).then(|| vec![source.itself(config)]);
            (source, addresses)
        })
        .collect();
    let balancer = Balancer {
        target: url.to_owned(),
        config: config.clone(),
        sources: known,
        members: BTreeMap::new(),
        active: BTreeSet::new(),
        changes,
        published: active_tx,
    };
    let task = tokio::spawn(balancer.run());
    (channel, active_rx, task)
}

/// One address: its key in the balancer, and how to reach it.
type Address = (String, Endpoint);

/// The task that owns a balanced channel's endpoints.
#[derive(Debug)]
struct Balancer {
    /// The service URL, for the logs.
    target: String,
    config: ClientConfig,
    /// Each source and its addresses last found (None: not yet).
    sources: Vec<(Source, Option<Vec<Address>>)>,
    /// Every address found, by key.
    members: BTreeMap<String, Member>,
    /// The keys the balancer has.
    active: BTreeSet<String>,
    /// Tells the balancer; closed once the channel's last clone is gone.
    changes: mpsc::Sender<Change<String, Endpoint>>,
    published: watch::Sender<BTreeSet<String>>,
}

/// One address, and what its last health check said.
#[derive(Debug)]
struct Member {
    endpoint: Endpoint,
    /// A connection of its own, so the check reaches this address and no
    /// other, and tells whether it can be reached at all.
    health: HealthClient<Channel>,
    state: State,
    /// Its failure was logged: its return is logged too.
    reported: bool,
    /// The balancer got it while it was failing (no address answered): its
    /// connection there may hold the error of a connect that failed then,
    /// which the next call would get, so it is given to the balancer afresh
    /// once it answers.
    stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unchecked,
    Serving,
    Failing,
}

enum Due {
    Resolve,
    Check,
}

/// The balancer is gone: so is every clone of the channel.
struct Closed;

impl Balancer {
    async fn run(mut self) {
        let interval = self.health_interval();
        let mut check = tokio::time::interval(interval);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resolve = tokio::time::interval(Duration::from_secs(self.config.client_resolve_secs.max(1)));
        resolve.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let names = self
            .sources
            .iter()
            .any(|(source, _)| matches!(source, Source::Name { .. }));
        self.update_members();
        loop {
            let due = tokio::select! {
                biased;
                () = self.changes.closed() => return,
                _ = resolve.tick(), if names => Due::Resolve,
                _ = check.tick() => Due::Check,
            };
            match due {
                Due::Resolve => {
                    self.resolve().await;
                    if self.update_members() {
                        // New addresses get calls after one check, not one interval.
                        self.check(true, interval).await;
                    }
                }
                Due::Check => self.check(false, interval).await,
            }
            if self.reconcile().await.is_err() {
                return;
            }
        }
    }

    fn health_interval(&self) -> Duration {
        Duration::from_millis(self.config.client_health_interval_ms).max(MIN_HEALTH_INTERVAL)
    }

    /// Looks every name up again.
    async fn resolve(&mut self) {
        for (source, known) in &mut self.sources {
            let Source::Name {
                origin,
                scheme,
                host,
                port,
            } = &*source
            else {
                continue;
            };
            let found = match lookup(host, *port).await {
                Ok(found) => found,
                Err(err) => {
                    // A lookup that fails keeps the addresses last found.
                    tracing::warn!(url = %self.target, error = format!("{err:#}"), "looking the service's name up failed");
                    if known.is_none() {
                        *known = Some(vec![source.itself(&self.config)]);
                    }
                    continue;
                }
            };
            let addresses: Vec<_> = found
                .into_iter()
                .filter_map(|address| {
                    let key = format!("{scheme}://{address}");
                    let uri = key.parse::<Uri>().ok()?;
                    let endpoint = self.config.configure(Channel::builder(uri)).origin(origin.clone());
                    Some((key, endpoint))
                })
                .collect();
            *known = Some(if addresses.is_empty() {
                // Nothing to balance over: the name itself stands in, so
                // calls fail with the connection's own error, not wait.
                tracing::warn!(url = %self.target, "the service's name has no address");
                vec![source.itself(&self.config)]
            } else {
                addresses
            });
        }
    }

    /// Makes the members the addresses the sources found; true when one is
    /// new.
    fn update_members(&mut self) -> bool {
        let found: BTreeMap<&String, &Endpoint> = self
            .sources
            .iter()
            .filter_map(|(_, known)| known.as_ref())
            .flatten()
            .map(|(key, endpoint)| (key, endpoint))
            .collect();
        self.members.retain(|key, _| found.contains_key(key));
        let mut added = false;
        for (key, endpoint) in found {
            if !self.members.contains_key(key) {
                self.members.insert(
                    key.clone(),
                    Member {
                        endpoint: endpoint.clone(),
                        health: HealthClient::new(endpoint.connect_lazy()),
                        state: State::Unchecked,
                        reported: false,
                        stale: false,
                    },
                );
                added = true;
            }
        }
        added
    }

    /// Checks every member's health (or only the unchecked ones'), each
    /// within `timeout`.
    async fn check(&mut self, only_unchecked: bool, timeout: Duration) {
        let checks = self
            .members
            .values_mut()
            .filter(|member| !only_unchecked || member.state == State::Unchecked)
            .map(|member| async move {
                let check = member.health.check(HealthCheckRequest { service: String::new() });
                let serving = matches!(
                    tokio::time::timeout(timeout, check).await,
                    Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving
                );
                member.state = if serving { State::Serving } else { State::Failing };
            });
        futures::future::join_all(checks).await;
    }

    /// The keys that should get calls: those answering SERVING; when none
    /// does, every one checked, so calls fail with their own error rather
    /// than wait for one to come back. An address not yet checked gets calls
    /// once its first check is in (at most one interval).
    fn wanted(&self) -> BTreeSet<String> {
        let with = |state: State| -> BTreeSet<String> {
            self.members
                .iter()
                .filter(|(_, member)| member.state == state)
                .map(|(key, _)| key.clone())
                .collect()
        };
        let serving = with(State::Serving);
        if serving.is_empty() {
            with(State::Failing)
        } else {
            serving
        }
    }

    /// Tells the balancer what changed since last time.
    async fn reconcile(&mut self) -> Result<(), Closed> {
        let wanted = self.wanted();
        let renewed: Vec<String> = wanted
            .intersection(&self.active)
            .filter(|key| {
                self.members
                    .get(*key)
                    .is_some_and(|member| member.stale && member.state == State::Serving)
            })
            .cloned()
            .collect();
        if wanted == self.active && renewed.is_empty() {
            return Ok(());
        }
        // A renewed one is removed first: an insert under a key the
        // balancer has would leave the old endpoint taking calls until the
        // new one is connected.
        for key in &renewed {
            self.changes
                .send(Change::Remove(key.clone()))
                .await
                .map_err(|_| Closed)?;
        }
        // Then inserts, before removals: the balancer is never left empty in
        // between.
        let inserts: Vec<String> = wanted.difference(&self.active).cloned().chain(renewed).collect();
        for key in inserts {
            if let Some(member) = self.members.get_mut(&key) {
                member.stale = member.state != State::Serving;
                self.changes
                    .send(Change::Insert(key, member.endpoint.clone()))
                    .await
                    .map_err(|_| Closed)?;
            }
        }
        for key in self.active.difference(&wanted) {
            self.changes
                .send(Change::Remove(key.clone()))
                .await
                .map_err(|_| Closed)?;
        }
        self.log_changes(&wanted);
        self.active = wanted;
        self.published.send_replace(self.active.clone());
        Ok(())
    }

    fn log_changes(&mut self, wanted: &BTreeSet<String>) {
        let url = &self.target;
        let none_serving = self.members.values().all(|member| member.state != State::Serving);
        if none_serving && !wanted.is_empty() {
            tracing::warn!(%url, "no address of the service answers SERVING: calls go to every one");
        }
        for (key, member) in &mut self.members {
            let getting = wanted.contains(key);
            let had = self.active.contains(key);
            if had && !getting && member.state == State::Failing && !member.reported {
                tracing::warn!(%url, address = %key, "an address fails its health check: it gets no calls");
                member.reported = true;
            } else if getting && !had && member.state == State::Serving && member.reported {
                tracing::info!(%url, address = %key, "an address answers SERVING again: it gets calls");
                member.reported = false;
            } else if getting != had {
                tracing::debug!(%url, address = %key, getting, "balanced addresses changed");
            }
        }
    }
}

async fn lookup(host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .with_context(|| format!("no answer for {host} within {RESOLVE_TIMEOUT:?}"))?
        .with_context(|| format!("looking {host} up"))?;
    Ok(found.collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::net::{TcpListener, TcpSocket};
    use tonic::{Status, transport::Server};
    use tonic_health::server::HealthReporter;

    use super::*;

    /// A gRPC server in a runtime of its own, so taking it down ends its
    /// connections too, as when a process dies. It serves the standard
    /// health service and names itself in every answer (`x-server`).
    struct TestServer {
        addr: SocketAddr,
        health: HealthReporter,
        runtime: Option<tokio::runtime::Runtime>,
    }

    impl TestServer {
        async fn start(name: &'static str, addr: SocketAddr) -> anyhow::Result<Self> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let (health, service) = tonic_health::server::health_reporter();
            let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
            runtime.spawn(async move {
                let listener = match bind(addr).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        let _ = bound_tx.send(Err(err));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr().map_err(Into::into));
                let name = http::HeaderValue::from_static(name);
                let _ = Server::builder()
                    .layer(tower::util::MapResponseLayer::new(
                        move |mut response: http::Response<tonic::body::Body>| {
                            response.headers_mut().insert("x-server", name.clone());
                            response
                        },
                    ))
                    .add_service(service)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
            });
            let addr = bound_rx.await??;
            Ok(Self {
                addr,
                health,
                runtime: Some(runtime),
            })
        }

        /// Ends the server and every connection to it at once.
        fn kill(&mut self) {
            if let Some(runtime) = self.runtime.take() {
                runtime.shutdown_background();
            }
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Binds `addr`; the same port again once its last server is gone
    /// (SO_REUSEADDR, and a few tries while the old listener closes).
    async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let mut tries = 0;
        loop {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            match socket.bind(addr).and_then(|()| socket.listen(128)) {
                Ok(listener) => return Ok(listener),
                Err(err) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(%err, "binding again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn config() -> ClientConfig {
        ClientConfig {
            client_health_interval_ms: 200,
            client_connect_timeout_ms: 1_000,
            ..ClientConfig::default()
        }
    }

    /// One call through `channel`: which server answered.
    async fn who(channel: &Channel) -> Result<String, Status> {
        let mut client = HealthClient::new(channel.clone());
        let call = client.check(HealthCheckRequest { service: String::new() });
        let reply = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .map_err(|_| Status::deadline_exceeded("no answer within 5 s"))??;
        Ok(reply
            .metadata()
            .get("x-server")
            .and_then(|name| name.to_str().ok())
            .unwrap_or("nobody")
            .to_owned())
    }

    /// `calls` calls: how many each server answered; the first error ends it.
    async fn tally(channel: &Channel, calls: usize) -> Result<BTreeMap<String, usize>, Status> {
        let mut answered = BTreeMap::new();
        for _ in 0..calls {
            *answered.entry(who(channel).await?).or_insert(0) += 1;
        }
        Ok(answered)
    }

    /// Waits (at most `within`) until the endpoints getting calls are `keys`.
    async fn until_active(
        active: &mut watch::Receiver<BTreeSet<String>>,
        keys: &[&SocketAddr],
        within: Duration,
    ) -> anyhow::Result<()> {
        let wanted: BTreeSet<String> = keys.iter().map(|addr| format!("http://{addr}")).collect();
        tokio::time::timeout(within, active.wait_for(|now| *now == wanted))
            .await
            .with_context(|| format!("the balanced endpoints did not become {wanted:?} within {within:?}"))??;
        Ok(())
    }

    #[test]
    fn a_url_names_one_address_several_or_a_name_to_resolve() -> anyhow::Result<()> {
        assert_eq!(
            Source::parse_list("http://orders:50053")?,
            None,
            "one channel, as always"
        );
        let list = Source::parse_list("http://10.0.0.1:50051, http://10.0.0.2:50051")?.context("a list")?;
        assert_eq!(list.len(), 2);
        assert!(matches!(&list[0], Source::Address { key, .. } if key == "http://10.0.0.1:50051"));
        let name = Source::parse_list("dns+http://orders-headless.keel.svc:50053")?.context("a name")?;
        assert!(matches!(
            &name[..],
            [Source::Name { host, port: 50053, scheme, .. }] if host == "orders-headless.keel.svc" && scheme == "http"
        ));
        let mixed = Source::parse_list("http://10.0.0.1:50051,dns+http://orders:50053")?.context("a list")?;
        assert!(matches!(&mixed[..], [Source::Address { .. }, Source::Name { .. }]));
        let v6 = Source::parse_list("dns+http://[::1]:7")?.context("a literal")?;
        assert!(matches!(&v6[..], [Source::Name { host, .. }] if host == "::1"));
        for wrong in [
            "http://a:1,",
            "http://a:1,,http://b:1",
            "dns+",
            "dns+orders:50053",
            "dns+ftp://orders:21",
            "http://a:1,b c",
        ] {
            assert!(Source::parse_list(wrong).is_err(), "{wrong:?} is refused");
        }
        Ok(())
    }

    #[tokio::test]
    async fn calls_spread_over_every_endpoint_and_go_on_when_one_goes_down() -> anyhow::Result<()> {
        let mut a = TestServer::start("a", any_port()).await?;
        let mut b = TestServer::start("b", any_port()).await?;
        let c = TestServer::start("c", any_port()).await?;
        let (a_addr, b_addr, c_addr) = (a.addr, b.addr, c.addr);
        let url = format!("http://{a_addr},http://{b_addr},http://{c_addr}");
        let sources = Source::parse_list(&url)?.context("a list")?;
        let (channel, mut active, _task) = balanced(&url, sources, &config());
        until_active(&mut active, &[&a_addr, &b_addr, &c_addr], Duration::from_secs(5)).await?;

        let answered = tally(&channel, 90).await?;
        for name in ["a", "b", "c"] {
            // 30 each on average; fewer than 5 is as good as impossible.
            let got = answered.get(name).copied().unwrap_or(0);
            assert!(got >= 5, "{name} answered {got} of 90: {answered:?}");
        }

        // b dies: its connections end with it. Calls sent to it before its
        // health check fails may fail; the check takes it out within two
        // intervals (400 ms here; 2 s allowed under load), and from then on
        // every call succeeds.
        b.kill();
        let died = tokio::time::Instant::now();
        while active.borrow().contains(&format!("http://{b_addr}")) {
            // Calls keep coming meanwhile; those that reach b fail.
            let _ = who(&channel).await;
            anyhow::ensure!(
                died.elapsed() < Duration::from_secs(2),
                "b was not taken out within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answered = tally(&channel, 60).await?;
        assert_eq!(answered.get("b"), None, "b is down: {answered:?}");
        assert!(answered.contains_key("a") && answered.contains_key("c"), "{answered:?}");

        // b comes back on its port: it gets calls again.
        let b = TestServer::start("b", b_addr).await?;
        until_active(&mut active, &[&a_addr, &b_addr, &c_addr], Duration::from_secs(5)).await?;
        let answered = tally(&channel, 90).await?;
        assert!(answered.get("b").copied().unwrap_or(0) >= 5, "b is back: {answered:?}");

        // a goes down as a Keel service does: NOT_SERVING first, then gone.
        // Taken out before it stops, it costs no call at all.
        a.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        until_active(&mut active, &[&b_addr, &c_addr], Duration::from_secs(2)).await?;
        a.kill();
        let answered = tally(&channel, 60).await?;
        assert_eq!(answered.get("a"), None, "{answered:?}");
        drop((b, c));
        Ok(())
    }

    #[tokio::test]
    async fn with_no_endpoint_answering_calls_fail_rather_than_wait() -> anyhow::Result<()> {
        // Two ports nobody listens on any more.
        let gone = [bind(any_port()).await?, bind(any_port()).await?]
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()?;
        let url = format!("http://{},http://{}", gone[0], gone[1]);
        let sources = Source::parse_list(&url)?.context("a list")?;
        let (channel, mut active, _task) = balanced(&url, sources, &config());
        until_active(&mut active, &[&gone[0], &gone[1]], Duration::from_secs(5)).await?;
        let started = tokio::time::Instant::now();
        let refused = who(&channel).await.expect_err("nothing listens");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "it failed at once");

        // One comes up: calls go to it alone.
        let server = TestServer::start("up", gone[1]).await?;
        until_active(&mut active, &[&gone[1]], Duration::from_secs(5)).await?;
        assert_eq!(tally(&channel, 10).await?.get("up"), Some(&10));
        drop(server);
        Ok(())
    }

    #[tokio::test]
    async fn a_dns_url_balances_over_the_addresses_of_its_name() -> anyhow::Result<()> {
        let server = TestServer::start("local", any_port()).await?;
        let port = server.addr.port();
        // `localhost` may also name ::1, where nothing listens: its health
        // check keeps calls off it, from the first call on.
        let channel = super::super::channel(&format!("dns+http://localhost:{port}"), &config())?;
        assert_eq!(tally(&channel, 20).await?.get("local"), Some(&20));

        let url = format!("dns+http://localhost:{port}");
        let sources = Source::parse_list(&url)?.context("a name")?;
        let (_channel, mut active, _task) = balanced(&url, sources, &config());
        until_active(&mut active, &[&server.addr], Duration::from_secs(5)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn the_task_ends_with_the_last_clone_of_its_channel() -> anyhow::Result<()> {
        let server = TestServer::start("only", any_port()).await?;
        let url = format!("http://{0},http://{0}", server.addr);
        let sources = Source::parse_list(&url)?.context("a list")?;
        let (channel, mut active, task) = balanced(&url, sources, &config());
        until_active(&mut active, &[&server.addr], Duration::from_secs(5)).await?;
        let clone = channel.clone();
        assert_eq!(tally(&clone, 3).await?.get("only"), Some(&3));
        drop((channel, clone));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .context("the task outlived its channel")??;
        Ok(())
    }
}

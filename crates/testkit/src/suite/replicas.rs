//! Several replicas of a service: the URL that lists them all (what every
//! client of the suite is given), each replica's address and metrics, and
//! stopping and restarting one of them; and [`Replica`], one more instance
//! started beside a running suite.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use keel_platform::registry::Launch;
use keel_registry::REGISTRY;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{Instance, Running, Suite, metrics_listener};

/// A second instance of a service, from [`Suite::spawn_replica`].
#[derive(Debug)]
pub struct Replica {
    /// The channel to it.
    pub channel: Channel,
    running: Running,
}

impl Replica {
    /// Stops it as a shutdown signal does, and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.running.shutdown.cancel();
        (&mut self.running.task).await.context("the replica panicked")?
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
        self.running.task.abort();
    }
}

impl Suite {
    /// How many replicas of each service the suite runs
    /// ([`super::SuiteOptions::replicas`]).
    pub fn replicas(&self) -> usize {
        self.members.first().map_or(1, |member| member.instances.len())
    }

    /// The URL a client of service `name` is given: every replica's address,
    /// comma-separated (`http://127.0.0.1:5001,http://127.0.0.1:5002`), or
    /// the one address's.
    pub fn url(&self, name: &str) -> String {
        url(&self.replica_addrs(name))
    }

    /// Where each replica of service `name` listens, in order.
    pub fn replica_addrs(&self, name: &str) -> Vec<SocketAddr> {
        self.member(name).instances.iter().map(|i| i.addr).collect()
    }

    /// A channel to replica `i` of service `name` alone.
    pub fn replica_channel(&self, name: &str, i: usize) -> anyhow::Result<Channel> {
        Ok(self.instance(name, i)?.channel.clone())
    }

    /// Where replica `i` of service `name` serves its Prometheus metrics
    /// (`http://…/metrics`); an error while it is stopped. A restarted
    /// replica serves them on a new port, its counters from zero.
    pub fn replica_metrics_url(&self, name: &str, i: usize) -> anyhow::Result<String> {
        let running = self.instance(name, i)?.running.as_ref().with_context(|| {
            if self.replicas() == 1 {
                format!("{name} is not running")
            } else {
                format!("replica {i} of {name} is not running")
            }
        })?;
        Ok(format!("http://{}/metrics", running.metrics))
    }

    /// Where each replica of service `name` serves its metrics, in order;
    /// an error while one is stopped.
    pub fn replica_metrics_urls(&self, name: &str) -> anyhow::Result<Vec<String>> {
        (0..self.member(name).instances.len())
            .map(|i| self.replica_metrics_url(name, i))
            .collect()
    }

    /// Stops replica `i` of service `name` as a shutdown signal does (it
    /// reports NOT_SERVING, then drains), and waits for it to exit.
    pub async fn stop_replica(&mut self, name: &str, i: usize) -> anyhow::Result<()> {
        self.member_mut(name).stop_instance(i).await
    }

    /// Starts replica `i` of service `name` again on its address, and waits
    /// until it reports SERVING.
    pub async fn start_replica(&mut self, name: &str, i: usize) -> anyhow::Result<()> {
        self.start_instance(name, i).await?;
        self.instance(name, i)?.wait_until_serving(self.member(name).spec).await
    }

    /// Another instance of service `name` with the same settings and
    /// database (a replica), on a port of its own; it stops when dropped.
    pub async fn spawn_replica(&self, name: &str) -> anyhow::Result<Replica> {
        let member = self.member(name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let (metrics_listener, metrics) = metrics_listener()?;
        let serve = REGISTRY.start(
            member.spec,
            Launch {
                matches: REGISTRY.parse(member.spec, &member.argv)?,
                listener,
                shutdown: shutdown.clone(),
                suite_clients: self.clients.entries.clone(),
                data_dir: Some(self.data_dir.clone()),
                metrics_listener: Some(metrics_listener),
            },
        )?;
        let replica = Replica {
            channel: Channel::from_shared(format!("http://{addr}"))?.connect_lazy(),
            running: Running::spawn(serve, shutdown, metrics),
        };
        let service = member.spec.grpc_services.first().copied().unwrap_or_default();
        keel_platform::serve::server::wait_until_serving(replica.channel.clone(), service, Duration::from_secs(30))
            .await?;
        Ok(replica)
    }

    fn instance(&self, name: &str, i: usize) -> anyhow::Result<&Instance> {
        self.member(name)
            .instances
            .get(i)
            .with_context(|| format!("{name} has no replica {i}"))
    }
}

/// `addrs` as one client URL: `http://a,http://b`.
pub(super) fn url(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The channel the suite's own clients use to reach `instances`: the one
/// instance's, or one balanced over them all as a service's would be.
pub(super) fn channel(instances: &[Instance]) -> anyhow::Result<Channel> {
    match instances {
        [one] => Ok(one.channel.clone()),
        _ => {
            let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
            keel_platform::client::channel(&url(&addrs), &keel_platform::client::ClientConfig::default())
        }
    }
}

/// Sets `flag` to `value` in `argv`, replacing the value it has.
pub(super) fn set_flag(argv: &mut Vec<String>, flag: &str, value: &str) {
    match argv.iter().position(|arg| arg == flag) {
        Some(at) if at + 1 < argv.len() => argv[at + 1] = value.to_owned(),
        _ => argv.extend([flag.to_owned(), value.to_owned()]),
    }
}

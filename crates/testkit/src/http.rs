//! A gateway in front of a [`Suite`], and a small HTTP client to call it.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use keel_gateway::GatewayConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Suite;

/// A running gateway; dropping it stops it.
#[derive(Debug)]
pub struct TestGateway {
    addr: SocketAddr,
    /// Where it serves its metrics.
    metrics: SocketAddr,
    client: HttpClient,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Suite {
    /// Starts a gateway on port 0 in front of this suite's services; `args`
    /// are extra `keel serve gateway` flags.
    pub async fn spawn_gateway(&self, args: &[&str]) -> anyhow::Result<TestGateway> {
        self.spawn_gateway_with(BTreeMap::new(), args).await
    }

    /// Like [`Suite::spawn_gateway`], with some areas served by other
    /// upstreams (scripted stand-ins).
    pub async fn spawn_gateway_with(
        &self,
        mut upstreams: BTreeMap<&'static str, String>,
        args: &[&str],
    ) -> anyhow::Result<TestGateway> {
        for name in self.service_names() {
            // Every replica of the service: the gateway balances over them.
            upstreams.entry(name).or_insert_with(|| self.url(name));
        }
        spawn_gateway(upstreams, args).await
    }

    /// Starts `n` gateways (replicas of one another, as behind a load
    /// balancer), each as [`Suite::spawn_gateway`] starts one.
    pub async fn spawn_gateways(&self, n: usize, args: &[&str]) -> anyhow::Result<Vec<TestGateway>> {
        let mut gateways = Vec::with_capacity(n);
        for _ in 0..n {
            gateways.push(self.spawn_gateway(args).await?);
        }
        Ok(gateways)
    }
}

/// Starts a gateway on port 0 in front of `upstreams` (area -> URL), with
/// `args` (`keel serve gateway` flags).
pub async fn spawn_gateway(upstreams: BTreeMap<&'static str, String>, args: &[&str]) -> anyhow::Result<TestGateway> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config =
        GatewayConfig::from_args(std::iter::once("keel").chain(args.iter().copied())).context("gateway test flags")?;
    let shutdown = CancellationToken::new();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics = metrics_listener.local_addr()?;
    let task = tokio::spawn(keel_gateway::run(
        config,
        upstreams,
        listener,
        Some(metrics_listener),
        shutdown.clone(),
    ));
    Ok(TestGateway {
        addr,
        metrics,
        client: HttpClient::new(format!("http://{addr}")),
        shutdown,
        task,
    })
}

impl TestGateway {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it serves its Prometheus metrics (`http://…/metrics`).
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// A client whose paths are relative to the gateway.
    pub fn http(&self) -> &HttpClient {
        &self.client
    }

    /// Stops it and waits for it to exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task;
        task.await.context("the gateway panicked")?
    }
}

/// A plain HTTP/1.1 client for one base URL.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A whole response.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (Null when it is not JSON, so assertions say what
    /// they expected).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HttpClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// GET `path`, with a bearer token when given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<HttpResponse> {
        self.send(Method::GET, path, token, &[], Bytes::new()).await
    }

    /// `method` `path` with a JSON body, with a bearer token when given.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<HttpResponse> {
        let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        self.send(method, path, token, &headers, Bytes::from(body.to_string()))
            .await
    }

    /// POST `path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<HttpResponse> {
        self.json(Method::POST, path, token, body).await
    }

    /// Any request: extra headers and a raw body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<HttpResponse> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body))?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        }
        for (name, value) in headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let response = self.client.request(request).await.context("sending the request")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("reading the response")?.to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

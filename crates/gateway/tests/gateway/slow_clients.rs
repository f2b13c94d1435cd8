//! Clients that would hold the gateway's connections: headers sent a byte at
//! a time, a body that stalls, connections that never send a request, and a
//! thousand of them open at once.

use std::time::Duration;

use keel_testkit::{Suite, http::TestGateway};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

/// Reads until the peer closes; returns what it sent and when it closed
/// (None if it stayed open for `patience`).
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> anyhow::Result<(String, Option<Instant>)> {
    let mut received = Vec::new();
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((String::from_utf8_lossy(&received).into(), Some(Instant::now()))),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return Ok((String::from_utf8_lossy(&received).into(), None)),
        }
    }
}

/// A connection closed `elapsed` after the moment a `timeout` started: not
/// before it (100 ms of timer slack), and within 4 s (a loaded machine).
fn assert_closed_at(elapsed: Duration, timeout: Duration) {
    assert!(
        elapsed >= timeout - Duration::from_millis(100) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?} for a timeout of {timeout:?}"
    );
}

async fn gateway(suite: &Suite, args: &[&str]) -> anyhow::Result<TestGateway> {
    suite.spawn_gateway(args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_sent_a_byte_a_second_are_cut_off_at_the_header_timeout() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &["--header-timeout-ms", "1500"]).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    let started = Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: keel\r\nX-Slow: ";
    // The writer is abandoned once the gateway hangs up.
    let (mut read, mut write) = stream.split();
    let writer = async {
        for byte in request.iter().chain(b"aaaaaaaaaaaaaaaaaaaa") {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut buf = [0u8; 1024];
    let closed = tokio::select! {
        read = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)) => read,
        () = writer => anyhow::bail!("the gateway let a slow client send 60 bytes of headers"),
    };
    let elapsed = started.elapsed();
    match closed {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => anyhow::bail!(
            "the gateway answered a half-sent request: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => anyhow::bail!("still open after 10 s"),
    }
    assert_closed_at(elapsed, Duration::from_millis(1_500));
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stalls_gets_408_and_the_connection_closes() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &["--body-timeout-ms", "1000"]).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    stream
        .write_all(
            b"POST /v1/auth:login HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .await?;
    let started = Instant::now();
    let (reply, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await?;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let closed = closed.expect("the connection is closed after the 408");
    assert_closed_at(closed - started, Duration::from_secs(1));
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &["--idle-timeout-ms", "1000"]).await?;

    // A connection that never sends a request...
    let mut silent = TcpStream::connect(gateway.addr()).await?;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await?;
    assert_closed_at(closed.expect("closed") - started, Duration::from_secs(1));

    // ...and one kept alive after a request.
    let mut kept = TcpStream::connect(gateway.addr()).await?;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await?;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut kept, Duration::from_secs(10)).await?;
    assert_closed_at(closed.expect("closed") - answered, Duration::from_secs(1));
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_connections_do_not_lock_others_out() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &[]).await?;
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        idle.push(TcpStream::connect(gateway.addr()).await.map_err(|err| {
            anyhow::anyhow!(
                "opening idle connection {} (is `ulimit -n` at least 2500?): {err}",
                idle.len()
            )
        })?);
    }
    let http = gateway.http();
    assert_eq!(http.get("/healthz", None).await?.status, 200);
    let jwks = http.get("/v1/auth/jwks", None).await?;
    assert_eq!(jwks.status, 200, "{:?}", jwks.body);
    assert!(jwks.json()["keys"].as_array().is_some_and(|keys| !keys.is_empty()));
    drop(idle);
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_for_a_free_one() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &["--max-connections", "2", "--idle-timeout-ms", "1500"]).await?;
    let _first = TcpStream::connect(gateway.addr()).await?;
    let _second = TcpStream::connect(gateway.addr()).await?;
    // The third connects (the listen queue takes it) but is served only when
    // an idle one is closed.
    let started = Instant::now();
    let health = gateway.http().get("/healthz", None).await?;
    assert_eq!(health.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "served after {:?}",
        started.elapsed()
    );
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_is_dropped_after_the_send_timeout() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = gateway(&suite, &["--send-timeout-ms", "1000"]).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    // Fifty pipelined requests for the whole document: far more than the
    // sockets' buffers hold, so the gateway's writes block while the client
    // reads nothing.
    const REQUESTS: usize = 50;
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: keel\r\n\r\n".repeat(REQUESTS);
    stream.write_all(&request).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await?;
    assert!(closed.is_some(), "the connection stayed open");
    let answered = received.matches("HTTP/1.1 200").count();
    assert!(
        answered < REQUESTS,
        "the gateway gave up before answering all {REQUESTS}: {answered}"
    );

    // A client that reads is unaffected.
    let mut reader = TcpStream::connect(gateway.addr()).await?;
    reader
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n")
        .await?;
    let (whole, closed) = read_until_closed(&mut reader, Duration::from_secs(10)).await?;
    assert!(closed.is_some() && whole.starts_with("HTTP/1.1 200"));

    gateway.stop().await?;
    suite.stop().await
}

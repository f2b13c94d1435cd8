//! The API reference at /docs: a page that runs no inline code, files with
//! their types and caching, a strict CSP on everything, the rate limit, and
//! nothing at all when the setting is off. The gateway needs no services for
//! these: its upstreams are closed ports.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use keel_gateway::docs::{CONTENT_SECURITY_POLICY, SWAGGER_UI_VERSION};
use keel_testkit::http::{HttpResponse, TestGateway, spawn_gateway};
use regex::Regex;

/// A gateway with `args` in front of closed ports.
async fn start(args: &[&str]) -> anyhow::Result<TestGateway> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://{closed}");
    spawn_gateway([("auth", url.clone()), ("accounts", url)].into(), args).await
}

/// The headers every /docs response carries.
fn assert_protected(path: &str, response: &HttpResponse) {
    assert_eq!(
        response.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY),
        "{path}"
    );
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{path}");
    assert_eq!(response.header("referrer-policy"), Some("no-referrer"), "{path}");
}

/// The standard 404 of an unknown path.
fn assert_not_found(path: &str, response: &HttpResponse) {
    assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
    assert_eq!(response.header("content-type"), Some("application/json"), "{path}");
    assert_eq!(response.json()["code"], tonic::Code::NotFound as i32, "{path}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_serve_a_page_without_inline_code_and_its_files_cached_for_good() -> anyhow::Result<()> {
    let gateway = start(&["--gateway-docs", "true"]).await?;
    let http = gateway.http();

    let page = http.get("/docs", None).await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert_protected("/docs", &page);
    for strict in ["default-src 'none'", "script-src 'self';", "frame-ancestors 'none'"] {
        assert!(CONTENT_SECURITY_POLICY.contains(strict), "{strict}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));

    // No inline script or style: every script is a file, no event handler
    // attributes, no style elements or attributes.
    let html = std::str::from_utf8(&page.body)?;
    let scripts: Vec<&str> = Regex::new(r"(?i)<script\b[^>]*>")?
        .find_iter(html)
        .map(|m| m.as_str())
        .collect();
    assert_eq!(scripts.len(), 2, "{html}");
    for script in &scripts {
        assert!(script.contains(" src=\"/docs/"), "{script}");
    }
    assert!(
        Regex::new(r"(?i)\son[a-z]+\s*=")?.find(html).is_none(),
        "an event handler attribute: {html}"
    );
    assert!(!html.to_ascii_lowercase().contains("<style"), "{html}");
    assert!(
        Regex::new(r"(?i)\sstyle\s*=")?.find(html).is_none(),
        "a style attribute: {html}"
    );
    assert!(html.contains(&format!("/docs/swagger-ui/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js")));

    // Every file the page loads: its type, the CSP, cached for good.
    let assets: Vec<&str> = Regex::new(r#"(?:src|href)="([^"]+)""#)?
        .captures_iter(html)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .filter(|url| *url != "/openapi.json")
        .collect();
    assert_eq!(assets.len(), 5, "{assets:?}");
    for asset in &assets {
        assert!(asset.starts_with("/docs/"), "a same-origin path: {asset}");
        let response = http.get(asset, None).await?;
        assert_eq!(response.status, StatusCode::OK, "{asset}");
        let expected = match asset.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("png") => "image/png",
            other => panic!("an unexpected file type {other:?}: {asset}"),
        };
        assert_eq!(response.header("content-type"), Some(expected), "{asset}");
        assert_eq!(
            response.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{asset}"
        );
        assert!(!response.body.is_empty(), "{asset}");
        assert_protected(asset, &response);
    }
    let bundle = http
        .get(
            &format!("/docs/swagger-ui/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js"),
            None,
        )
        .await?;
    assert_eq!(
        bundle.body.len(),
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js").len()
    );

    // The page is revalidated: its ETag answers 304, with the CSP still.
    let etag = page.header("etag").expect("an ETag");
    let again = http
        .send(
            Method::GET,
            "/docs",
            None,
            &[(header::IF_NONE_MATCH, HeaderValue::from_str(etag)?)],
            Bytes::new(),
        )
        .await?;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag));
    assert_protected("/docs (304)", &again);

    // One URL for the page; unknown paths beside it are unknown paths.
    let slash = http.get("/docs/", None).await?;
    assert_eq!(slash.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(slash.header("location"), Some("/docs"));
    assert_protected("/docs/", &slash);
    for unknown in [
        "/docs/index.html",
        "/docs/swagger-ui/0.0.1/swagger-ui-bundle.js",
        "/docs/swagger-ui/5.36.0/swagger-ui-bundle.js.map",
    ] {
        assert_not_found(unknown, &http.get(unknown, None).await?);
    }
    // The document it shows.
    assert_eq!(http.get("/openapi.json", None).await?.status, StatusCode::OK);
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_are_off_unless_the_setting_turns_them_on() -> anyhow::Result<()> {
    let gateway = start(&[]).await?;
    let http = gateway.http();
    let bundle = format!("/docs/swagger-ui/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js");
    for path in ["/docs", "/docs/", bundle.as_str()] {
        let response = http.get(path, None).await?;
        assert_not_found(path, &response);
        assert_eq!(response.header("content-security-policy"), None, "{path}");
    }
    gateway.stop().await?;

    let gateway = start(&["--gateway-docs", "false"]).await?;
    assert_not_found("/docs", &gateway.http().get("/docs", None).await?);
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_count_against_the_clients_address() -> anyhow::Result<()> {
    let gateway = start(&[
        "--gateway-docs",
        "true",
        "--rate-limit-per-minute",
        "60",
        "--rate-limit-burst",
        "3",
    ])
    .await?;
    let http = gateway.http();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(http.get("/docs", None).await?.status);
    }
    assert_eq!(statuses.first(), Some(&StatusCode::OK), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let refused = http.get("/docs", None).await?;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.json()["code"], tonic::Code::ResourceExhausted as i32);
    gateway.stop().await
}

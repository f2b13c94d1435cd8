//! What every Keel server offers besides its own RPCs: gRPC health and
//! server reflection (both versions that tools speak).

use keel_testkit::Suite;
use keel_testkit::reflection::{describe_v1, describe_v1alpha, list_services_v1, list_services_v1alpha};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

async fn health(suite: &Suite, service: &str) -> Result<i32, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    Ok(suite.auth_health().check(request).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_lists_only_what_auth_serves() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let services = list_services_v1(suite.auth_channel()).await?;
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            keel_auth::SERVICE_NAME,
        ],
        "no other Keel service is listed on auth's port"
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1alpha_lists_the_auth_service() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let services = list_services_v1alpha(suite.auth_channel()).await?;
    assert!(services.iter().any(|s| s == keel_auth::SERVICE_NAME), "{services:?}");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_describes_the_auth_service() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    describe_v1(suite.auth_channel(), keel_auth::SERVICE_NAME).await?;
    describe_v1alpha(suite.auth_channel(), keel_auth::SERVICE_NAME).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_for_auth_and_the_whole_server() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    assert_eq!(
        health(&suite, keel_auth::SERVICE_NAME).await?,
        ServingStatus::Serving as i32
    );
    assert_eq!(health(&suite, "").await?, ServingStatus::Serving as i32);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn health_of_an_unknown_service_is_not_found() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = health(&suite, "keel.nothing.v1.NoService").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_gets_a_request_id_back() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let request_id = |response: &tonic::Response<_>| {
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let check = || HealthCheckRequest {
        service: keel_auth::SERVICE_NAME.into(),
    };

    // The caller's own id is kept...
    let mut request = tonic::Request::new(check());
    request.metadata_mut().insert("x-request-id", "probe-1".parse()?);
    let response = suite.auth_health().check(request).await?;
    assert_eq!(request_id(&response).as_deref(), Some("probe-1"));
    // ...unless it is too long or not printable (it goes into every log line)...
    let mut request = tonic::Request::new(check());
    request.metadata_mut().insert("x-request-id", "x".repeat(65).parse()?);
    let response = suite.auth_health().check(request).await?;
    let replaced = request_id(&response).expect("a fresh request id");
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
    // ...and a call without one gets a fresh one.
    let response = suite.auth_health().check(check()).await?;
    let generated = request_id(&response).expect("a generated request id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    suite.stop().await
}

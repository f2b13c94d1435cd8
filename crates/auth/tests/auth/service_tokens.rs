//! The client-credentials token source every service-to-service client uses:
//! it caches auth's token, renews it before it expires, and recovers when
//! auth was down.

use std::{sync::Arc, time::Duration};

use keel_platform::{
    auth::scopes,
    auth::service_token::{ClientCredentials, ServiceTokenSource, TokenProvider as _},
    auth::{auth_service::GrpcKeySource, verifier::Verifier},
    client::{self, ClientConfig},
    registry,
};
use keel_testkit::suite::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};

fn source(suite: &keel_testkit::Suite) -> anyhow::Result<ServiceTokenSource> {
    let auth = client::channel(&format!("http://{}", suite.auth_addr()), &ClientConfig::default())?;
    let credentials = ClientCredentials {
        client_id: TEST_CLIENT_ID.into(),
        client_secret: TEST_CLIENT_SECRET.into(),
    };
    // Auth's tokens live 15 minutes; renewing with all but a second of that
    // left makes a token due for renewal after one second, long before it
    // expires.
    Ok(ServiceTokenSource::new(auth, credentials, &[scopes::EVENTS_DELIVER])
        .renew_before(Duration::from_secs(15 * 60 - 1)))
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_cached_renewed_before_expiry_and_survive_an_auth_restart() -> anyhow::Result<()> {
    let mut suite = keel_testkit::spawn_suite().await?;
    let tokens = source(&suite)?;
    let first = tokens.token().await?;
    assert_eq!(tokens.token().await?, first, "a fresh token is reused");

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let renewed = tokens.token().await?;
    assert_ne!(renewed, first, "renewed once due, while the first was still valid");

    // Auth goes away: the current token still has minutes to live, so callers
    // keep getting it.
    suite.stop_service(registry::AUTH).await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(tokens.token().await?, renewed);

    // Auth comes back: the next renewal works again.
    suite.start(registry::AUTH).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = tokens.token().await?;
    assert_ne!(after, renewed);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_started_while_auth_is_down_recovers_when_it_returns() -> anyhow::Result<()> {
    let mut suite = keel_testkit::spawn_suite().await?;
    suite.stop_service(registry::AUTH).await?;
    let tokens = source(&suite)?;
    let refused = tokens.token().await.expect_err("no token while auth is down");
    assert!(format!("{refused:#}").contains("IssueServiceToken"), "{refused:#}");

    suite.start(registry::AUTH).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let token = tokens.token().await?;
    // The token is one auth accepts as a service with the scope asked for.
    let config = &suite.auth_config().service.tokens;
    let verifier = Verifier::new(
        &config.token_issuer,
        &config.token_audience,
        Arc::new(GrpcKeySource::new(suite.auth_channel())),
    );
    let principal = verifier.verify(&token).await?;
    assert_eq!(
        principal.service_with_scope(scopes::EVENTS_DELIVER)?.client_id,
        TEST_CLIENT_ID
    );
    suite.stop().await
}

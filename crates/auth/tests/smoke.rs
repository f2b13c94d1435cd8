use keel::auth::v1 as pb;

#[tokio::test(flavor = "multi_thread")]
async fn register_then_login() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let user = suite.register("Smoke@Example.com", "correct horse battery").await?;
    assert_eq!(user.email, "smoke@example.com");
    let login = suite.login("smoke@example.com", "correct horse battery").await?;
    assert!(login.tokens.is_some());
    let jwks = suite.auth().get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    assert_eq!(jwks.keys.len(), 1);
    suite.stop().await
}

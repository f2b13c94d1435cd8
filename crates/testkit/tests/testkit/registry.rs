//! Every registered service, as the registry describes it: started by the
//! suite, healthy under each name it serves, and listing through reflection
//! exactly what its port serves. A new service is covered by adding it to
//! the registry.

use keel_registry::REGISTRY;
use keel_testkit::reflection::{describe_v1, describe_v1alpha, list_services_v1, list_services_v1alpha};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// What every port serves besides its own services.
const STANDARD: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_registered_service_is_healthy_and_lists_exactly_its_services() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let names: Vec<&str> = REGISTRY.services().map(|s| s.name).collect();
    assert_eq!(suite.service_names(), names, "the suite runs every registered service");
    for spec in REGISTRY.services() {
        let channel = suite.channel(spec.name);
        let mut health = HealthClient::new(channel.clone());
        for service in spec.grpc_services.iter().copied().chain([""]) {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await?
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{}: health of {service:?}",
                spec.name
            );
        }
        let mut expected: Vec<String> = spec
            .grpc_services
            .iter()
            .chain(&STANDARD)
            .map(|s| (*s).to_owned())
            .collect();
        expected.sort();
        assert_eq!(
            list_services_v1(channel.clone()).await?,
            expected,
            "{} (reflection v1)",
            spec.name
        );
        assert_eq!(
            list_services_v1alpha(channel.clone()).await?,
            expected,
            "{} (reflection v1alpha)",
            spec.name
        );
        // Clients (buf curl, grpcurl) then ask for each listed service's file.
        for service in &expected {
            describe_v1(channel.clone(), service).await?;
            describe_v1alpha(channel.clone(), service).await?;
        }
    }
    suite.stop().await
}

#[test]
fn every_consumed_event_has_a_producer_and_names_are_unique() {
    let mut names = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::from([keel_platform::registry::GATEWAY_METRICS_PORT]);
    for spec in REGISTRY.services() {
        assert!(names.insert(spec.name), "two services are called {}", spec.name);
        assert!(
            ports.insert(spec.default_port),
            "two services default to port {}",
            spec.default_port
        );
        assert!(
            ports.insert(spec.default_metrics_port),
            "the metrics port {} is taken twice",
            spec.default_metrics_port
        );
        for consumed in spec.consumes {
            assert!(
                REGISTRY.services().any(|producer| producer.produces.contains(consumed)),
                "{} consumes {consumed}, which no registered service produces",
                spec.name
            );
        }
    }
}

#[test]
fn every_event_type_has_at_most_one_producer() -> anyhow::Result<()> {
    // A sink trusts an event's source only because exactly one service may be
    // it: two producers of one type could forge each other's.
    for event_type in keel_platform::events::EventType::ALL {
        let producers: Vec<&str> = REGISTRY
            .services()
            .filter(|spec| spec.produces.contains(&event_type))
            .map(|spec| spec.name)
            .collect();
        assert!(producers.len() <= 1, "{event_type} is produced by {producers:?}");
    }
    let owners = REGISTRY.event_producers()?;
    for spec in REGISTRY.services() {
        for produced in spec.produces {
            assert_eq!(owners.producer(*produced), Some(spec.name), "{produced}");
        }
    }
    Ok(())
}

#[test]
fn two_producers_of_one_event_type_are_refused() {
    use keel_platform::events::{EventProducers, EventType};
    let claimed = EventProducers::new([
        (EventType::UserRegistered, "auth"),
        (EventType::UserRegistered, "impostor"),
    ]);
    assert!(
        claimed.is_err(),
        "a registry with two producers of a type must not start"
    );
}

//! What `keel up` prints once everything serves: every replica's endpoint
//! and metrics, where Postgres, mail and the API reference are, and
//! commands to try.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use keel_platform::registry;

use super::{Service, say};
use crate::database::Database;

/// Prints the banner for `services` (in the order listed), `replicas` of
/// each, whose clients reach them at `urls`; `docs` when the gateway serves
/// its API reference.
pub(super) fn print(
    services: &[Service],
    replicas: usize,
    urls: &BTreeMap<&'static str, String>,
    database: &Database,
    data_dir: &std::path::Path,
    docs: bool,
) {
    let postgres = match database.cluster() {
        Some(cluster) => format!(
            "private cluster on 127.0.0.1:{}, data in {}{}",
            cluster.port(),
            cluster.root().join("data").display(),
            if cluster.started_here() {
                " (stops with Keel)"
            } else {
                " (already running; left running)"
            }
        ),
        None => keel_platform::db::redact(&database.url("postgres").unwrap_or_default()),
    };
    // Where notifications sends mail, as it reads the same settings.
    let mail = match (
        std::env::var_os("KEEL_SMTP_URL"),
        std::env::var_os("KEEL_NOTIFICATIONS_MAIL_DIR"),
    ) {
        (Some(_), _) => "sent over SMTP (KEEL_SMTP_URL)".to_owned(),
        (None, Some(dir)) => format!("written as .eml files to {}", std::path::Path::new(&dir).display()),
        (None, None) => format!(
            "written as .eml files to {} (set KEEL_SMTP_URL to send it)",
            data_dir.join("mail").display()
        ),
    };
    // A replica is named with its number: `auth #2`.
    let label = |service: &Service| {
        if replicas > 1 {
            format!("{} #{}", service.name, service.replica + 1)
        } else {
            service.name.to_owned()
        }
    };
    let width = services.iter().map(|s| label(s).len() + 1).max().unwrap_or(0).max(14);
    let mut text = String::from("\nKeel is up.\n\n");
    let _ = writeln!(
        text,
        "  {:<width$} {:<28} {:<8} METRICS",
        "SERVICE", "ENDPOINT", "HEALTH"
    );
    for service in services {
        let metrics = format!("http://{}/metrics", service.metrics);
        let _ = writeln!(
            text,
            "  {:<width$} {:<28} {:<8} {metrics}",
            label(service),
            service.endpoint,
            "SERVING"
        );
    }
    let auth = services
        .iter()
        .find(|s| s.name == registry::AUTH)
        .map_or(SocketAddr::from(([127, 0, 0, 1], 50051)), |s| s.addr);
    let gateway = services.iter().find(|s| s.grpc_name.is_none()).map_or(auth, |s| s.addr);
    if replicas > 1
        && let Some(url) = urls.get(registry::AUTH)
    {
        let _ = write!(
            text,
            "\nEvery client balances its calls over a service's replicas, at a URL that lists them all:\n  \
             KEEL_AUTH_URL={url}\n"
        );
    }
    let _ = write!(text, "\nPostgres: {postgres}\nMail:     {mail}\n");
    if docs {
        let _ = writeln!(
            text,
            "Docs:     http://{gateway}{} (API reference; try any route from the browser)",
            keel_gateway::docs::PATH
        );
    }
    let _ = write!(
        text,
        "\nTry it:\n  \
         curl http://{gateway}/v1/auth/jwks\n  \
         curl http://{gateway}/openapi.json\n  \
         buf curl --protocol grpc --http2-prior-knowledge http://{auth}/keel.auth.v1.AuthService/GetJwks\n  \
         grpcurl -plaintext -d '{{}}' {auth} keel.auth.v1.AuthService/GetJwks\n\nCtrl-C stops everything.\n"
    );
    say(&text);
}

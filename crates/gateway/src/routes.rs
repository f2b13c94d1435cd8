//! The route table: every RPC with a `google.api.http` annotation (and its
//! additional bindings), read from the descriptor set once at start.

use std::collections::HashMap;

use anyhow::Context as _;
use http::uri::PathAndQuery;
use keel::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::MethodDescriptor;

use crate::{
    descriptors::{Descriptors, settable_field_path},
    resume::StreamResume,
    template::{Binding, PathTemplate},
};

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method, upper case.
    pub method: String,
    /// The path template.
    pub template: PathTemplate,
    /// `*` for the whole request message, a field name, or None (no body).
    pub body: Option<String>,
    /// The response field to return instead of the whole message, if any.
    pub response_body: Option<String>,
    /// The RPC, e.g. `keel.auth.v1.AuthService.Login`.
    pub rpc: MethodDescriptor,
    /// Callable without an access token (`keel.common.v1.anonymous`).
    pub anonymous: bool,
    /// How the stream resumes (`keel.common.v1.stream_resume`), if it does.
    pub resume: Option<StreamResume>,
    /// The gRPC path to call, e.g. `/keel.auth.v1.AuthService/Login`.
    pub grpc_path: PathAndQuery,
    /// The template as the OpenAPI document writes it: the route's label
    /// in the metrics.
    pub openapi_path: std::sync::Arc<str>,
    /// The names of the path's parameters in the document, in order.
    pub path_parameters: Vec<String>,
}

impl Route {
    /// The area whose service answers this route: `auth` for
    /// `keel.auth.v1.AuthService`.
    pub fn area(&self) -> &str {
        let package = self.rpc.parent_service().package_name();
        package.split('.').nth(1).unwrap_or(package)
    }

    /// Whether the RPC answers with a stream (served as Server-Sent Events,
    /// or WebSocket when the client asks to upgrade).
    pub fn is_streaming(&self) -> bool {
        self.rpc.is_server_streaming()
    }
}

/// What a request resolves to.
#[derive(Debug)]
pub enum Resolved<'a> {
    /// A route, with the path's variable values.
    Route(&'a Route, Vec<Binding>),
    /// The path exists, but only for these other methods (405).
    MethodNotAllowed(Vec<String>),
    /// No route has this path (404).
    NotFound,
}

/// Every HTTP route of the contract.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Reads the routes from the descriptors, checking that every path
    /// variable and body field names a field of the request, and that no two
    /// routes claim the same request.
    pub fn from_descriptors(descriptors: &Descriptors) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        for service in descriptors.pool().services() {
            for rpc in service.methods() {
                let options = rpc.options();
                if !options.has_extension(descriptors.http()) {
                    continue;
                }
                let anonymous = options.has_extension(descriptors.anonymous())
                    && options.get_extension(descriptors.anonymous()).as_bool() == Some(true);
                let resume = StreamResume::of(&rpc, descriptors.stream_resume())?;
                let rule: HttpRule = options
                    .get_extension(descriptors.http())
                    .as_message()
                    .context("google.api.http is not a message")?
                    .transcode_to()
                    .with_context(|| format!("reading the HTTP rule of {}", rpc.full_name()))?;
                for rule in std::iter::once(&rule).chain(rule.additional_bindings.iter()) {
                    routes.push(route(&rpc, rule, anonymous, resume.clone())?);
                }
            }
        }
        // Templates that differ only in their variables' names are one path
        // in OpenAPI (GET /v1/notificationPreferences/{user_id} and PATCH
        // .../{preferences.user_id}): the first route's names stand for all.
        let mut first: HashMap<String, (std::sync::Arc<str>, Vec<String>)> = HashMap::new();
        for route in &mut routes {
            let (path, names) = first
                .entry(route.template.sample_path())
                .or_insert_with(|| (route.openapi_path.clone(), route.path_parameters.clone()))
                .clone();
            route.openapi_path = path;
            route.path_parameters = names;
        }
        let table = RouteTable { routes };
        table.check_unambiguous()?;
        Ok(table)
    }

    /// Keeps only the routes `keep` accepts (those with an upstream).
    pub fn retain(&mut self, keep: impl FnMut(&Route) -> bool) {
        self.routes.retain(keep);
    }

    /// Fails if one request could match two routes.
    fn check_unambiguous(&self) -> anyhow::Result<()> {
        for route in &self.routes {
            let sample = route.template.sample_path();
            let claimants = self
                .routes
                .iter()
                .filter(|other| other.method == route.method && other.template.matches(&sample).is_some())
                .count();
            anyhow::ensure!(
                claimants <= 1,
                "{} {} is claimed by more than one RPC",
                route.method,
                route.template.as_str()
            );
        }
        Ok(())
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path` (percent-encoded, no query).
    pub fn resolve(&self, method: &str, path: &str) -> Resolved<'_> {
        let matching: Vec<(&Route, Vec<Binding>)> = self
            .routes
            .iter()
            .filter_map(|route| route.template.matches(path).map(|bindings| (route, bindings)))
            .collect();
        // A custom method (`/v1/orders/{id}:cancel`) is more specific than
        // a variable that would take its verb as part of an id: when one
        // matches, the path names that method's resource and nothing else.
        let has_verb = matching.iter().any(|(route, _)| route.template.has_verb());
        let mut allowed = Vec::new();
        for (route, bindings) in matching {
            if has_verb && !route.template.has_verb() {
                continue;
            }
            if route.method.eq_ignore_ascii_case(method) {
                return Resolved::Route(route, bindings);
            }
            allowed.push(route.method.clone());
        }
        if allowed.is_empty() {
            Resolved::NotFound
        } else {
            Resolved::MethodNotAllowed(allowed)
        }
    }
}

fn route(
    rpc: &MethodDescriptor,
    rule: &HttpRule,
    anonymous: bool,
    resume: Option<StreamResume>,
) -> anyhow::Result<Route> {
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(path)) => ("GET", path.as_str()),
        Some(Pattern::Put(path)) => ("PUT", path.as_str()),
        Some(Pattern::Post(path)) => ("POST", path.as_str()),
        Some(Pattern::Delete(path)) => ("DELETE", path.as_str()),
        Some(Pattern::Patch(path)) => ("PATCH", path.as_str()),
        Some(Pattern::Custom(custom)) => (custom.kind.as_str(), custom.path.as_str()),
        None => anyhow::bail!("{} has an HTTP rule without a pattern", rpc.full_name()),
    };
    let template = PathTemplate::parse(path)?;
    let input = rpc.input();
    for field_path in template.field_paths() {
        // Checked as binding will read it, so a bad template fails here, once.
        settable_field_path(&input, field_path)
            .map_err(|reason| anyhow::anyhow!("{} {path}: {reason}", rpc.full_name()))?;
    }
    let body = match rule.body.as_str() {
        "" => None,
        "*" => Some("*".to_owned()),
        field => {
            input
                .get_field_by_name(field)
                .with_context(|| format!("{} body: {} has no field {field}", rpc.full_name(), input.full_name()))?;
            Some(field.to_owned())
        }
    };
    let response_body = match rule.response_body.as_str() {
        "" => None,
        field => {
            rpc.output()
                .get_field_by_name(field)
                .with_context(|| format!("{} response_body: no field {field}", rpc.full_name()))?;
            Some(field.to_owned())
        }
    };
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())
        .parse()
        .with_context(|| format!("{} has no valid gRPC path", rpc.full_name()))?;
    Ok(Route {
        method: method.to_ascii_uppercase(),
        openapi_path: template.openapi_path().into(),
        path_parameters: template.field_paths().map(|path| path.join("_")).collect(),
        template,
        body,
        response_body,
        rpc: rpc.clone(),
        anonymous,
        resume,
        grpc_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::from_descriptors(&Descriptors::load().expect("descriptors")).expect("the contract's routes")
    }

    fn rpc_of(resolved: Resolved<'_>) -> Option<(String, Vec<(String, String)>)> {
        match resolved {
            Resolved::Route(route, bindings) => Some((
                route.rpc.full_name().to_owned(),
                bindings
                    .into_iter()
                    .map(|b| (b.field_path.join("."), b.value))
                    .collect(),
            )),
            _ => None,
        }
    }

    #[test]
    fn every_annotated_rpc_has_a_route_and_internal_ones_none() {
        let table = table();
        let names: Vec<&str> = table.routes().iter().map(|r| r.rpc.full_name()).collect();
        for public in [
            "keel.auth.v1.AuthService.Login",
            "keel.auth.v1.AuthService.GetJwks",
            "keel.accounts.v1.AccountsService.GetBalance",
            "keel.accounts.v1.AccountsService.Deposit",
        ] {
            assert!(names.contains(&public), "{public} has no route");
        }
        for internal in [
            "keel.auth.v1.AuthService.IssueServiceToken",
            "keel.accounts.v1.AccountsService.Debit",
            "keel.accounts.v1.AccountsService.Refund",
            "keel.accounts.v1.AccountsService.VoidDebit",
            "keel.events.v1.EventSink.Deliver",
        ] {
            assert!(!names.contains(&internal), "{internal} must stay internal");
        }
    }

    #[test]
    fn requests_resolve_to_their_rpc_with_path_values() {
        let table = table();
        assert_eq!(
            rpc_of(table.resolve("POST", "/v1/auth:login")),
            Some(("keel.auth.v1.AuthService.Login".into(), vec![]))
        );
        assert_eq!(
            rpc_of(table.resolve("GET", "/v1/accounts/me/balance")),
            Some((
                "keel.accounts.v1.AccountsService.GetBalance".into(),
                vec![("account_id".into(), "me".into())]
            ))
        );
        assert_eq!(
            rpc_of(table.resolve("PATCH", "/v1/accounts/me")),
            Some((
                "keel.accounts.v1.AccountsService.UpdateProfile".into(),
                vec![("account.id".into(), "me".into())]
            ))
        );
        let login = table.routes().iter().find(|r| r.rpc.name() == "Login").expect("login");
        assert_eq!(login.grpc_path, "/keel.auth.v1.AuthService/Login");
        assert_eq!(login.body.as_deref(), Some("*"));
        assert_eq!(login.area(), "auth");
        assert!(login.anonymous);
        let balance = table
            .routes()
            .iter()
            .find(|r| r.rpc.name() == "GetBalance")
            .expect("balance");
        assert_eq!(balance.area(), "accounts");
        assert!(!balance.anonymous);
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        let table = table();
        assert!(matches!(table.resolve("GET", "/v1/nothing"), Resolved::NotFound));
        match table.resolve("DELETE", "/v1/auth:login") {
            Resolved::MethodNotAllowed(allowed) => assert_eq!(allowed, ["POST"]),
            other => panic!("expected 405, got {other:?}"),
        }
    }
}

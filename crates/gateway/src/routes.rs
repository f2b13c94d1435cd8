//! The route table: every RPC with a `google.api.http` annotation (and its
//! additional bindings), read from the descriptor set once at start.

use anyhow::Context as _;
use keel::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor, MethodDescriptor};

use crate::template::{Binding, PathTemplate};

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
}

impl Route {
    /// The gRPC path to call, e.g. `/keel.auth.v1.AuthService/Login`.
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.rpc.parent_service().full_name(), self.rpc.name())
    }
}

/// What a request resolves to.
#[derive(Debug)]
pub enum Resolved<'a> {
    /// A route, with the path's variable values.
    Route(&'a Route, Vec<Binding>),
    /// The path exists, but not for this method (405).
    MethodNotAllowed,
    /// No route has this path (404).
    NotFound,
}

/// Every HTTP route of the contract.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Reads the routes from an encoded `FileDescriptorSet`, checking that
    /// every path variable and body field names a field of the request.
    pub fn from_descriptor_set(bytes: &[u8]) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(bytes).context("decoding the descriptor set")?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .context("the descriptor set lacks google.api.http")?;
        let mut routes = Vec::new();
        for service in pool.services() {
            for rpc in service.methods() {
                let options = rpc.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule: HttpRule = options
                    .get_extension(&http)
                    .as_message()
                    .context("google.api.http is not a message")?
                    .transcode_to()
                    .with_context(|| format!("reading the HTTP rule of {}", rpc.full_name()))?;
                for rule in std::iter::once(&rule).chain(rule.additional_bindings.iter()) {
                    routes.push(route(&rpc, rule)?);
                }
            }
        }
        Ok(RouteTable { routes })
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path` (percent-encoded, no query).
    pub fn resolve(&self, method: &str, path: &str) -> Resolved<'_> {
        let mut path_known = false;
        for route in &self.routes {
            if let Some(bindings) = route.template.matches(path) {
                if route.method.eq_ignore_ascii_case(method) {
                    return Resolved::Route(route, bindings);
                }
                path_known = true;
            }
        }
        if path_known {
            Resolved::MethodNotAllowed
        } else {
            Resolved::NotFound
        }
    }
}

fn route(rpc: &MethodDescriptor, rule: &HttpRule) -> anyhow::Result<Route> {
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
        check_field_path(&input, field_path).with_context(|| format!("{} {path}", rpc.full_name()))?;
    }
    let body = match rule.body.as_str() {
        "" => None,
        "*" => Some("*".to_owned()),
        field => {
            check_field_path(&input, &[field.to_owned()]).with_context(|| format!("{} body", rpc.full_name()))?;
            Some(field.to_owned())
        }
    };
    Ok(Route {
        method: method.to_ascii_uppercase(),
        template,
        body,
        response_body: Some(rule.response_body.clone()).filter(|b| !b.is_empty()),
        rpc: rpc.clone(),
    })
}

/// Fails unless `path` names a (nested) field of `message`.
fn check_field_path(message: &MessageDescriptor, path: &[String]) -> anyhow::Result<()> {
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .with_context(|| format!("{} has no field {name}", current.full_name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(inner) => current = inner,
                _ => anyhow::bail!("{}.{name} is not a message", current.full_name()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::from_descriptor_set(keel::FILE_DESCRIPTOR_SET).expect("the contract's routes")
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
        assert_eq!(login.grpc_path(), "/keel.auth.v1.AuthService/Login");
        assert_eq!(login.body.as_deref(), Some("*"));
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        let table = table();
        assert!(matches!(table.resolve("GET", "/v1/nothing"), Resolved::NotFound));
        assert!(matches!(
            table.resolve("DELETE", "/v1/auth:login"),
            Resolved::MethodNotAllowed
        ));
    }

    #[test]
    fn no_two_routes_claim_the_same_request() {
        let table = table();
        for route in table.routes() {
            let path = route.template.as_str().replace(['{', '}'], "");
            let claimants = table
                .routes()
                .iter()
                .filter(|other| other.method == route.method && other.template.matches(&path).is_some())
                .count();
            assert!(
                claimants <= 1,
                "{} {} is ambiguous",
                route.method,
                route.template.as_str()
            );
        }
    }
}

//! The OpenAPI 3.1 document, generated from the same routes and descriptors
//! the gateway serves, with the protos' comments as descriptions.
//!
//! [`document`] walks the routes with a `Builder`: `operation` turns a route
//! into its operation (parameters, request body, responses), `schema` turns
//! messages and fields into JSON Schema, `rules` adds the keywords of the
//! protos' request rules, and `well_known` holds the JSON forms of the
//! google.protobuf types and google.rpc.Status.

mod operation;
mod rules;
mod schema;
mod well_known;

use std::collections::{BTreeMap, BTreeSet};

use keel_platform::serve::rules::FieldText;
use prost_reflect::{DescriptorPool, ExtensionDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use crate::{
    descriptors::Descriptors,
    routes::{Route, RouteTable},
};

use self::{
    schema::{Side, schema_name},
    well_known::status_schema,
};

/// The OpenAPI document describing every route in `routes`.
pub fn document(descriptors: &Descriptors, routes: &RouteTable) -> Json {
    let mut builder = Builder::new(descriptors.pool());
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    let ids: Vec<String> = routes
        .routes()
        .iter()
        .map(|route| {
            let base_id = format!("{}_{}", route.rpc.parent_service().name(), route.rpc.name());
            let seen = operation_ids.entry(base_id.clone()).or_insert(0);
            *seen += 1;
            if *seen == 1 {
                base_id
            } else {
                format!("{base_id}_{seen}")
            }
        })
        .collect();
    for (route, operation_id) in routes.routes().iter().zip(&ids) {
        let service = route.rpc.parent_service();
        tags.entry(service.name().to_owned())
            .or_insert_with(|| comments(&service.parent_file(), service.path()));
        let mut operation = builder.operation(route, operation_id.clone());
        let links = links(route, routes.routes(), &ids);
        if !links.is_empty() {
            operation["responses"]["200"]["links"] = Json::Object(links);
        }
        paths
            .entry(route.openapi_path.to_string())
            .or_default()
            .insert(route.method.to_ascii_lowercase(), operation);
    }
    let mut schemas = builder.finish();
    schemas.insert("google.rpc.Status".to_owned(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Keel API",
            "version": "v1",
            "description": "REST/JSON for Keel's services, transcoded to gRPC by the gateway. \
                Bodies use the proto3 JSON mapping: lowerCamelCase names, 64-bit integers as strings, \
                enum values by name, RFC 3339 timestamps. Errors are google.rpc.Status objects.",
        },
        "tags": tags
            .into_iter()
            .map(|(name, description)| json!({ "name": name, "description": description.unwrap_or_default() }))
            .collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /v1/auth:login or /v1/auth:refresh.",
                },
            },
        },
    })
}

/// OpenAPI links from a reply that holds a resource to the routes its id
/// names: by AIP-122 a `{product_id}` path parameter names a Product, so the
/// Product in CreateProduct's reply links to GetProduct, UpdateProduct and
/// AdjustStock. A client (or a fuzzer's stateful phase) follows them from a
/// created resource to what acts on it.
fn links(route: &Route, routes: &[Route], operation_ids: &[String]) -> Map<String, Json> {
    let mut links = Map::new();
    if route.is_streaming() || route.response_body.is_some() {
        return links;
    }
    for field in route.rpc.output().fields() {
        let Kind::Message(resource) = field.kind() else {
            continue;
        };
        if field.is_list() || field.is_map() || resource.get_field_by_name("id").is_none() {
            continue;
        }
        let parameter = format!("{}_id", snake_case(resource.name()));
        let id = format!("$response.body#/{}/id", field.json_name());
        for (target, operation_id) in routes.iter().zip(operation_ids) {
            if target.path_parameters == [parameter.as_str()] {
                links.insert(
                    operation_id.clone(),
                    json!({
                        "operationId": operation_id,
                        "parameters": { &parameter: &id },
                        "description": format!("The {} in this reply.", resource.name()),
                    }),
                );
            } else if target.path_parameters.is_empty()
                && target.body.as_deref() == Some("*")
                && let Some(body) = example_body(&target.rpc.input(), &parameter, &format!("{{{id}}}"))
            {
                // A body that names the resource (an order's line names a
                // product): the target's example, with this reply's id in it.
                links.insert(
                    operation_id.clone(),
                    json!({
                        "operationId": operation_id,
                        "requestBody": body,
                        "description": format!("The example request, with the {} in this reply.", resource.name()),
                    }),
                );
            }
        }
    }
    links
}

/// How deep an example body goes into nested messages.
const MAX_EXAMPLE_DEPTH: usize = 4;

/// `message`'s example body (its fields' `keel.common.v1.field` examples,
/// one item per list) with `id` as the value of every field named
/// `id_field`; None when no field is named so.
fn example_body(message: &MessageDescriptor, id_field: &str, id: &str) -> Option<Json> {
    fn fill(
        message: &MessageDescriptor,
        id_field: &str,
        id: &str,
        depth: usize,
        found: &mut bool,
    ) -> Map<String, Json> {
        let mut body = Map::new();
        // Recursive types (google.protobuf.Struct) end here.
        if depth > MAX_EXAMPLE_DEPTH {
            return body;
        }
        for field in message.fields() {
            let value = if field.name() == id_field {
                *found = true;
                Some(json!(id))
            } else if let Kind::Message(inner) = field.kind() {
                let inner = fill(&inner, id_field, id, depth + 1, found);
                (!inner.is_empty()).then_some(Json::Object(inner))
            } else {
                FieldText::of(&field).example.map(|example| match field.kind() {
                    Kind::Int32 | Kind::Sint32 | Kind::Uint32 => {
                        example.parse::<i64>().map_or(Json::String(example), Json::from)
                    }
                    _ => Json::String(example),
                })
            };
            if let Some(value) = value {
                let value = if field.is_list() { json!([value]) } else { value };
                body.insert(field.json_name().to_owned(), value);
            }
        }
        body
    }
    let mut found = false;
    let body = fill(message, id_field, id, 0, &mut found);
    found.then_some(Json::Object(body))
}

/// A message name as AIP's snake_case: `WebhookEndpoint` is
/// `webhook_endpoint`, and an acronym is one word (`HTTPBody` is `http_body`).
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let after_lower = chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit();
            let acronym_ends =
                chars[i - 1].is_ascii_uppercase() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if after_lower || acronym_ends {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Builds the document: each route's operation, and the schemas of the
/// messages they reference, each written once in components.
struct Builder {
    field_behavior: Option<ExtensionDescriptor>,
    /// Messages referenced so far, and those whose schema is written.
    pending: Vec<(MessageDescriptor, Side)>,
    schemas: Map<String, Json>,
    queued: BTreeSet<String>,
}

impl Builder {
    fn new(pool: &DescriptorPool) -> Self {
        Builder {
            field_behavior: pool.get_extension_by_name("google.api.field_behavior"),
            pending: Vec::new(),
            schemas: Map::new(),
            queued: BTreeSet::new(),
        }
    }

    /// Writes the schema of every referenced message.
    fn finish(mut self) -> Map<String, Json> {
        while let Some((message, side)) = self.pending.pop() {
            let schema = self.object_schema(&message, side);
            self.schemas.insert(schema_name(&message, side), schema);
        }
        self.schemas
    }
}

/// The leading comment of the element at `path` in `file`, if any.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|location| location.path == path)?;
    let text = location.leading_comments.as_deref()?.trim();
    let joined = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::{rules::UUID_PATTERN, *};

    fn doc() -> Json {
        let descriptors = Descriptors::load().expect("descriptors");
        let routes = RouteTable::from_descriptors(&descriptors).expect("routes");
        document(&descriptors, &routes)
    }

    #[test]
    fn every_route_is_an_operation_with_its_security() {
        let doc = doc();
        let login = &doc["paths"]["/v1/auth:login"]["post"];
        assert_eq!(login["operationId"], "AuthService_Login");
        assert_eq!(login["security"], json!([]));
        assert_eq!(
            login["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["email", "password"])
        );
        let balance = &doc["paths"]["/v1/accounts/{account_id}/balance"]["get"];
        assert_eq!(balance["security"], json!([{ "bearer": [] }]));
        assert_eq!(balance["parameters"][0]["name"], "account_id");
        assert_eq!(balance["parameters"][0]["in"], "path");
        let update = &doc["paths"]["/v1/accounts/{account_id}"]["patch"];
        let names: Vec<&str> = update["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["account_id", "updateMask"]);
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // Internal RPCs have no route, so neither they nor their messages show.
        assert!(!doc.to_string().contains("VoidDebit"), "VoidDebit is internal");
    }

    #[test]
    fn message_names_become_aip_snake_case() {
        for (name, snake) in [
            ("Product", "product"),
            ("WebhookEndpoint", "webhook_endpoint"),
            ("HTTPBody", "http_body"),
            ("Oauth2Client", "oauth2_client"),
        ] {
            assert_eq!(snake_case(name), snake);
        }
    }

    #[test]
    fn a_reply_holding_a_resource_links_to_the_routes_its_id_names() {
        let doc = doc();
        let links = &doc["paths"]["/v1/products"]["post"]["responses"]["200"]["links"];
        let mut targets: Vec<&str> = links
            .as_object()
            .expect("CreateProduct's links")
            .keys()
            .map(String::as_str)
            .collect();
        targets.sort_unstable();
        assert_eq!(
            targets,
            [
                "OrdersService_AdjustStock",
                "OrdersService_CreateOrder",
                "OrdersService_GetProduct",
                "OrdersService_UpdateProduct"
            ]
        );
        assert_eq!(
            links["OrdersService_GetProduct"]["parameters"],
            json!({ "product_id": "$response.body#/product/id" })
        );
        // An order names products in its body: the link fills the example
        // order with this product.
        assert_eq!(
            links["OrdersService_CreateOrder"]["requestBody"],
            json!({
                "requestId": "first-order",
                "items": [{ "productId": "{$response.body#/product/id}", "quantity": 1 }],
                "paymentMethod": "PAYMENT_METHOD_ACCOUNT_BALANCE",
                "externalPaymentMethodId": "pm_card_visa",
            })
        );
        let order = &doc["paths"]["/v1/orders"]["post"]["responses"]["200"]["links"];
        assert_eq!(
            order["OrdersService_CancelOrder"]["parameters"],
            json!({ "order_id": "$response.body#/order/id" })
        );
        let endpoint = &doc["paths"]["/v1/webhookEndpoints"]["post"]["responses"]["200"]["links"];
        assert_eq!(
            endpoint["NotificationsService_DeleteWebhookEndpoint"]["parameters"],
            json!({ "webhook_endpoint_id": "$response.body#/webhookEndpoint/id" })
        );
        // A list is not one resource, and nothing links from a deletion.
        assert!(doc["paths"]["/v1/products"]["get"]["responses"]["200"]["links"].is_null());
        assert!(
            doc["paths"]["/v1/webhookEndpoints/{webhook_endpoint_id}"]["delete"]["responses"]["200"]["links"].is_null()
        );
    }

    #[test]
    fn streams_document_events_their_resume_header_and_websocket() {
        let doc = doc();
        let stream = &doc["paths"]["/v1/notifications:stream"]["get"];
        assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
        assert!(
            stream["responses"]["101"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("websocket"))
        );
        let parameters = stream["parameters"].as_array().expect("parameters");
        let header = parameters
            .iter()
            .find(|p| p["in"] == "header")
            .expect("a header parameter");
        assert_eq!(header["name"], "Last-Event-ID");
        assert!(parameters.iter().any(|p| p["name"] == "afterNotificationId"));
        let unary = &doc["paths"]["/v1/accounts/{account_id}/balance"]["get"];
        assert!(unary["responses"]["101"].is_null());
    }

    #[test]
    fn request_schemas_carry_the_protos_rules() {
        let doc = doc();
        let register = &doc["paths"]["/v1/auth:register"]["post"]["requestBody"];
        assert_eq!(register["required"], true);
        let schema = &register["content"]["application/json"]["schema"]["properties"];
        assert_eq!(schema["password"]["minLength"], 8);
        assert!(schema["email"]["pattern"].as_str().is_some_and(|p| p.contains('@')));
        assert_eq!(schema["email"]["maxLength"], 254);
        let sessions = &doc["paths"]["/v1/auth/sessions"]["get"]["parameters"];
        let page_size = sessions
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "pageSize"))
            .expect("pageSize");
        assert_eq!(page_size["schema"]["minimum"], 0);
        let revoke = &doc["paths"]["/v1/auth/sessions/{session_id}:revoke"]["post"]["parameters"][0];
        assert_eq!(revoke["schema"]["format"], "uuid");
        assert_eq!(revoke["schema"]["pattern"], UUID_PATTERN);
        let dead_letters = &doc["paths"]["/v1/deadLetters"]["get"]["parameters"];
        let endpoint = dead_letters
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "webhookEndpointId"))
            .expect("webhookEndpointId");
        assert_eq!(
            endpoint["schema"]["pattern"],
            format!("^$|{UUID_PATTERN}"),
            "optional: empty is fine"
        );
        let schemas = &doc["components"]["schemas"];
        // The rules hold for what is sent, not for replies.
        let money_in = &schemas["keel.common.v1.Money.Input"]["properties"];
        assert_eq!(money_in["amountMinor"]["exclusiveMinimum"], 0);
        assert_eq!(money_in["currencyCode"]["pattern"], "^[A-Z]{3}$");
        assert!(schemas["keel.common.v1.Money"]["properties"]["amountMinor"]["exclusiveMinimum"].is_null());
        let roles = &doc["paths"]["/v1/auth/users/{user_id}:setRoles"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["roles"];
        assert_eq!(roles["minItems"], 1);
        assert!(
            !roles["items"]["enum"]
                .as_array()
                .expect("enum")
                .iter()
                .any(|v| v == "ROLE_UNSPECIFIED")
        );
    }

    #[test]
    fn what_leaving_out_would_break_is_required_and_updates_may_leave_out() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        // amount > 0 and a currency pattern: neither may be left out.
        assert_eq!(
            schemas["keel.common.v1.Money.Input"]["required"],
            json!(["amountMinor", "currencyCode"])
        );
        // Creating a product needs its name and price; updating it does not.
        let product_in = &schemas["keel.orders.v1.Product.Input"];
        assert_eq!(product_in["required"], json!(["name", "price"]));
        // RE2's \x{1680} is written as ECMA-262's \u1680.
        let name = product_in["properties"]["name"]["pattern"].as_str().unwrap_or_default();
        assert!(name.contains("\\u1680") && !name.contains("\\x{"), "{name}");
        let update =
            &doc["paths"]["/v1/products/{product_id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"];
        assert!(update["required"].is_null(), "{update}");
        assert!(
            update["properties"]["name"]["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("^$|"))
        );
        // A required query parameter, and an update mask limited to its paths.
        let verify = &doc["paths"]["/v1/auth:verifyEmail"]["get"]["parameters"][0];
        assert_eq!((&verify["name"], &verify["required"]), (&json!("token"), &json!(true)));
        let mask = doc["paths"]["/v1/accounts/{account_id}"]["patch"]["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "updateMask"))
            .expect("updateMask")["schema"]["pattern"]
            .clone();
        assert_eq!(mask, "^(?:(?:displayName)(?:,(?:displayName))*)?$");
    }

    #[test]
    fn message_rules_lists_and_excluded_numbers_are_published() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let order = &doc["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            order["if"]["properties"]["paymentMethod"]["const"],
            "PAYMENT_METHOD_EXTERNAL"
        );
        assert_eq!(order["then"]["required"], json!(["externalPaymentMethodId"]));
        assert_eq!(order["properties"]["items"]["minItems"], 1);
        assert_eq!(order["properties"]["items"]["maxItems"], 100);
        let adjust = &doc["paths"]["/v1/products/{product_id}:adjustStock"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["delta"];
        assert_eq!(
            adjust["anyOf"],
            json!([
                { "minimum": -1_000_000_000_000_i64, "maximum": -1 },
                { "minimum": 1, "maximum": 1_000_000_000_000_i64 },
            ])
        );
        let channels = &doc["paths"]["/v1/notificationPreferences/{user_id}"]["patch"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["defaultChannels"];
        assert_eq!(channels["uniqueItems"], true);
        let endpoint = &schemas["keel.notifications.v1.WebhookEndpoint.Input"]["properties"]["eventTypes"]["items"];
        assert!(
            endpoint["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("order.paid")))
        );
    }

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let money = &schemas["keel.common.v1.Money"]["properties"];
        assert_eq!(money["amountMinor"]["type"], "string", "int64 is a string");
        let transaction = &schemas["keel.accounts.v1.Transaction"]["properties"];
        assert_eq!(transaction["kind"]["enum"][1], "TRANSACTION_KIND_DEPOSIT");
        assert_eq!(transaction["createTime"]["format"], "date-time");
        assert!(schemas["google.rpc.Status"].is_object());
    }
}

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_checked_in_openapi_document_is_the_one_served() {
    let app = spawn_app().await;
    let served = app.get("/api-docs/openapi.json", None).await;
    assert_eq!(served.status, 200);
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string("openapi/openapi.json").unwrap()).unwrap();
    assert!(
        served.body == checked_in,
        "openapi/openapi.json is stale: run `cargo run -- openapi --output openapi/openapi.json`"
    );
    assert_eq!(served.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn the_documented_request_schema_is_the_enforced_json_schema() {
    let doc = repayment_gateway::api::openapi::document();
    let mut schema: Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/repayment-report.schema.json").unwrap(),
    )
    .unwrap();
    let object = schema.as_object_mut().unwrap();
    object.remove("$schema");
    object.remove("$id");
    assert_eq!(doc["components"]["schemas"]["RepaymentReport"], schema);
    for path in ["/v1/repayments", "/v1/repayments/validate"] {
        assert_eq!(
            doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RepaymentReport"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-Api-Key"
    );
}

#[tokio::test]
async fn swagger_ui_and_its_assets_are_served_without_network() {
    let app = spawn_app().await;
    let page = app.get("/swagger-ui/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
    ] {
        let answer = app.get(&format!("/swagger-ui/{asset}"), None).await;
        assert_eq!(answer.status, 200, "{asset}");
        assert!(!answer.text.is_empty(), "{asset}");
    }
    let initializer = app.get("/swagger-ui/swagger-initializer.js", None).await;
    assert!(initializer.text.contains("/api-docs/openapi.json"));
}

/// Swagger UI's "Try it out" pre-fills a parameter's example: the README's own key there
/// made Execute, after following the README, a 422. The key's format is described instead.
#[test]
fn the_idempotency_key_is_a_plain_optional_string_with_no_reusable_example() {
    let doc = repayment_gateway::api::openapi::document();
    let params = doc["paths"]["/v1/repayments"]["post"]["parameters"]
        .as_array()
        .unwrap();
    let key = params
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(key["required"], false, "{key}");
    assert_eq!(key["schema"]["type"], "string", "{key}");
    assert!(
        key.get("example").is_none() && key.get("examples").is_none(),
        "{key}"
    );
    assert!(key["schema"].get("example").is_none(), "{key}");
    assert!(
        key["description"]
            .as_str()
            .unwrap()
            .contains("<period>-<branch>-<n>"),
        "{key}"
    );
}

/// Each error answer shows an example of itself: its own status and type.
#[test]
fn every_error_answer_has_its_own_example() {
    let doc = repayment_gateway::api::openapi::document();
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let Some(content) = response["content"].get("application/problem+json") else {
                    continue;
                };
                let examples = content["examples"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: no examples"));
                assert!(!examples.is_empty(), "{method} {path} {status}");
                for (name, example) in examples {
                    let value = &example["value"];
                    assert_eq!(
                        value["status"].to_string(),
                        *status,
                        "{method} {path} {status} {name}"
                    );
                    assert_eq!(
                        value["type"],
                        format!("/problems/{name}"),
                        "{method} {path} {status}"
                    );
                    assert!(value["detail"].as_str().is_some_and(|d| !d.is_empty()));
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 30, "{checked}");
}

/// Swagger UI makes up a value for a number without an example: `9007199254740991` ms.
#[test]
fn every_number_in_the_answers_has_an_example() {
    fn walk(at: &str, schema: &Value, missing: &mut Vec<String>) {
        let types = match &schema["type"] {
            Value::Array(types) => types.clone(),
            t => vec![t.clone()],
        };
        if types.iter().any(|t| t == "integer" || t == "number")
            && schema.get("example").is_none()
            && schema.get("examples").is_none()
        {
            missing.push(at.to_owned());
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                walk(&format!("{at}.{name}"), property, missing);
            }
        }
        if schema.get("items").is_some() {
            walk(&format!("{at}[]"), &schema["items"], missing);
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for (i, sub) in schema[key].as_array().into_iter().flatten().enumerate() {
                walk(&format!("{at}.{key}[{i}]"), sub, missing);
            }
        }
    }
    let doc = repayment_gateway::api::openapi::document();
    let mut missing = vec![];
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        // The request body's schema is the published JSON Schema, verbatim.
        if name != "RepaymentReport" {
            walk(name, schema, &mut missing);
        }
    }
    assert!(
        missing.is_empty(),
        "numbers without an example: {missing:?}"
    );
}

/// What Swagger UI 5's "Try it out" fills a parameter in with, and sends unless cleared: the
/// first of its named `examples`, its `example`, its schema's `example` or `default`, or its
/// `default` (swagger-ui's `ParameterRow.setDefaultValue`, as vendored by utoipa-swagger-ui).
fn swagger_prefill(parameter: &Value) -> Option<String> {
    let first_named = parameter["examples"]
        .as_object()
        .and_then(|named| named.values().next())
        .map(|example| example["value"].clone());
    let value = first_named
        .or_else(|| parameter.get("example").cloned())
        .or_else(|| parameter["schema"].get("example").cloned())
        .or_else(|| parameter["schema"].get("default").cloned())
        .or_else(|| parameter.get("default").cloned())?;
    Some(
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned),
    )
}

/// Each `/v1/` operation whose path Swagger UI fills in entirely, executed as "Try it out"
/// sends it with nothing changed but the key: the JSON report example with the query
/// parameters it pre-fills, against the demo's partners and sandbox. A file-only parameter
/// filled in made the JSON report a 400, and `partner_id=123` is no demo partner.
#[tokio::test]
async fn swaggers_try_it_out_with_what_it_fills_in_works_against_the_demo() {
    use repayment_gateway::sandbox::{Sandbox, SandboxConfig};
    let sandbox = Sandbox::start(SandboxConfig::demo(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (mut settings, keys) = repayment_gateway::demo::settings(&sandbox).unwrap();
    let data = tempfile::tempdir().unwrap();
    settings.store.url = format!("embedded:{}", data.path().display());
    settings.server.bind = "127.0.0.1:0".into();
    settings.metrics.enabled = false;
    let store = repayment_gateway::startup::build_store(&settings).unwrap();
    let app = spawn_app_with_settings(&settings, store);

    let doc = repayment_gateway::api::openapi::document();
    let report = &doc["components"]["schemas"]["RepaymentReport"]["examples"][0];
    let mut operations: Vec<(&String, &String, &Value)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            let operations = operations.as_object().unwrap();
            operations
                .iter()
                .map(move |(method, op)| (path, method, op))
        })
        .collect();
    // The report once checked, then sent: sent first, its check would find its loans reported.
    operations.sort_by_key(|(path, _, _)| *path == "/v1/repayments");
    let mut executed = vec![];
    for (path, method, operation) in operations {
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut url = path.clone();
        let mut query = vec![];
        for parameter in &parameters {
            let name = parameter["name"].as_str().unwrap();
            match (
                parameter["in"].as_str().unwrap(),
                swagger_prefill(parameter),
            ) {
                ("path", Some(value)) => url = url.replace(&format!("{{{name}}}"), &value),
                ("query", Some(value)) => query.push((name.to_owned(), value)),
                _ => {}
            }
        }
        if !url.starts_with("/v1/") || url.contains('{') {
            continue;
        }
        // A report is a branch's; the rest is the Coordinator's and the operator's.
        let key = if operation.get("requestBody").is_some() {
            &keys.three_column_branch
        } else {
            &keys.admin
        };
        let mut request = app
            .client
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{url}", app.address),
            )
            .header("X-Api-Key", key)
            .query(&query);
        if operation.get("requestBody").is_some() {
            request = request.json(report);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {url} {query:?}: {status} {text}"
        );
        executed.push(format!("{method} {path}"));
    }
    for expected in [
        "post /v1/repayments",
        "post /v1/repayments/validate",
        "get /v1/reports",
        "get /v1/periods/{period}",
        "get /v1/partners/{id}/expected-loans",
    ] {
        assert!(executed.iter().any(|e| e == expected), "{executed:?}");
    }
}

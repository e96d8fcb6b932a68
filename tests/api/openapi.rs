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

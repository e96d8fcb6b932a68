//! `POST /oauth/token`: OAuth2 client credentials, answered like Kiva's Auth0 tenant.

use std::time::Instant;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use serde_json::json;

use super::reply::{
    Answer, CREATE_REPAYMENT, READ_LOANS, Reply, apply_fault, has_media_type, json_answer,
};
use super::{Grant, Shared};

pub(super) async fn handle(shared: &Shared, parts: &Parts, body: &Bytes) -> Answer {
    let fault = {
        let mut state = shared.lock();
        state.token_requests += 1;
        state.token_faults.pop_front()
    };
    if let Some(answer) = apply_fault(shared, fault).await {
        return answer;
    }
    Ok(issue(shared, parts, body))
}

fn issue(shared: &Shared, parts: &Parts, body: &Bytes) -> Reply {
    if !has_media_type(&parts.headers, "application/x-www-form-urlencoded") {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not form-urlencoded",
        );
    };
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    for name in ["grant_type", "client_id", "client_secret"] {
        if field(name).is_none_or(str::is_empty) {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("missing {name}"),
            );
        }
    }
    if field("grant_type") != Some("client_credentials") {
        return refusal(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let Some(partner) = shared.partners.iter().find(|partner| {
        Some(partner.client_id.as_str()) == field("client_id")
            && Some(partner.client_secret.as_str()) == field("client_secret")
    }) else {
        return refusal(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    };
    if field("audience") != Some(shared.audience.as_str()) {
        return refusal(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!(
                "Service not found: {}",
                field("audience").unwrap_or_default()
            ),
        );
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in field("scope").unwrap_or_default().split(' ') {
        if scope.is_empty() || scopes.iter().any(|known| known == scope) {
            continue;
        }
        if scope != CREATE_REPAYMENT && scope != READ_LOANS {
            return refusal(
                StatusCode::FORBIDDEN,
                "access_denied",
                &format!("Client has not been granted scopes: {scope}"),
            );
        }
        scopes.push(scope.to_owned());
    }
    if scopes.is_empty() {
        return refusal(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("scope must name {CREATE_REPAYMENT} and/or {READ_LOANS}"),
        );
    }

    let access_token = format!("sbx_{:032x}", rand::random::<u128>());
    let scope = scopes.join(" ");
    {
        let mut state = shared.lock();
        state.tokens.insert(
            access_token.clone(),
            Grant {
                partner_id: partner.partner_id.clone(),
                scopes,
                expires_at: Instant::now() + shared.token_ttl,
            },
        );
        state.tokens_issued += 1;
    }
    let mut response = json_answer(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": shared.token_ttl.as_secs(),
            "scope": scope,
            "iss": format!("{}/", shared.base_url),
            "partnerId": partner.partner_id,
            "jti": uuid::Uuid::new_v4().to_string(),
        }),
    );
    no_store(&mut response);
    response
}

fn refusal(status: StatusCode, error: &str, description: &str) -> Reply {
    let mut response = json_answer(
        status,
        &json!({"error": error, "error_description": description}),
    );
    no_store(&mut response);
    response
}

// As RFC 6749 §5.1 requires of token responses.
fn no_store(response: &mut Reply) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

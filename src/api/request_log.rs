//! One log line per request: request id, method, path, status, latency, the API key's name,
//! partner and branch (recorded by the `Caller` extractor), and the id of a report it stored.
//! Never a key or a body.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Accepts an incoming id only if it is short and plain, so a log line can't be forged.
fn incoming_request_id(req: &ServiceRequest) -> Option<String> {
    let id = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    plain.then(|| id.to_owned())
}

pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = incoming_request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
        api_key = tracing::field::Empty,
        partner = tracing::field::Empty,
        branch = tracing::field::Empty,
        report_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let latency_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
    let _entered = span.enter();
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            if status >= 500 {
                tracing::error!(status, %latency_ms, "request");
            } else {
                tracing::info!(status, %latency_ms, "request");
            }
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            Ok(response)
        }
        Err(error) => {
            tracing::error!(%latency_ms, %error, "request failed");
            Err(error)
        }
    }
}

//! What every route answers with: replies, injected faults, the bearer-token check.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Response;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::{Fault, Shared};

/// The scopes a sandbox partner may be granted.
pub(super) const CREATE_REPAYMENT: &str = "create:repayment";
pub(super) const READ_LOANS: &str = "read:loans";

pub(super) type Reply = Response<UnsyncBoxBody<Bytes, io::Error>>;
pub(super) type Answer = Result<Reply, DroppedOnPurpose>;

/// Returned from the service so that hyper closes the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox dropped the connection on purpose")]
pub(super) struct DroppedOnPurpose;

/// `Some(answer)` when the fault replaces the normal answer; `None` to go on normally.
pub(super) async fn apply_fault(shared: &Shared, fault: Option<Fault>) -> Option<Answer> {
    match fault? {
        Fault::Status {
            status,
            retry_after,
            body,
        } => {
            let status = StatusCode::from_u16(status).expect("checked when the fault was pushed");
            let content_type = if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let mut response = answer(status, content_type, body.into());
            if let Some(value) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&value).expect("checked when the fault was pushed"),
                );
            }
            Some(Ok(response))
        }
        Fault::Stall(duration) => {
            if shared.pause(duration).await {
                None
            } else {
                Some(Err(DroppedOnPurpose))
            }
        }
        Fault::DropConnection => Some(Err(DroppedOnPurpose)),
        // Applied by the repayments route to its normal answer.
        Fault::HtmlAfterUpload(_)
        | Fault::TruncatedAfterUpload { .. }
        | Fault::ProblemsForOtherLoans(_) => None,
    }
}

/// Checks the bearer token for a partner route; `Ok` carries the token.
pub(super) fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    partner_id: &str,
    scope: &str,
) -> Result<String, Box<Reply>> {
    let unauthorized = |message: &str| {
        let mut response = error_answer(StatusCode::UNAUTHORIZED, "unauthorized", message);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Box::new(response)
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| unauthorized("a bearer token is required"))?;
    let state = shared.lock();
    let grant = state
        .tokens
        .get(token)
        .ok_or_else(|| unauthorized("the token is unknown or revoked"))?;
    if Instant::now() >= grant.expires_at {
        return Err(unauthorized("the token has expired"));
    }
    if grant.partner_id != partner_id {
        return Err(Box::new(error_answer(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("the token is not valid for partner {partner_id}"),
        )));
    }
    if !grant.scopes.iter().any(|granted| granted == scope) {
        return Err(Box::new(error_answer(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("the token lacks the scope {scope}"),
        )));
    }
    Ok(token.to_owned())
}

/// Whether the request's Content-Type is this media type (parameters such as charset allowed).
pub(super) fn has_media_type(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(media_type))
}

pub(super) fn json_answer(status: StatusCode, body: &Value) -> Reply {
    answer(status, "application/json", body.to_string().into())
}

/// The partner API's error body: `{"code", "message"}`.
pub(super) fn error_answer(status: StatusCode, code: &str, message: &str) -> Reply {
    json_answer(status, &json!({"code": code, "message": message}))
}

pub(super) fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An answer whose body stops after `sent` of `full`'s bytes: the headers announce all of it;
/// what is sent is flushed, then the body fails and hyper closes the connection mid-body.
pub(super) fn cut_short(
    status: StatusCode,
    content_type: &'static str,
    full: Bytes,
    sent: usize,
) -> Reply {
    let declared = full.len();
    let part = futures_util::stream::iter([Ok(hyper::body::Frame::data(
        full.slice(..sent.min(declared)),
    ))]);
    // Failing at once would abort the connection before hyper wrote the headers out.
    let failure = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(io::Error::other(
            "the sandbox cuts this answer short on purpose",
        ))
    });
    let mut response = Response::new(StreamBody::new(part.chain(failure)).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
    response
}

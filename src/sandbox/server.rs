//! Transport and routing: connections, reading requests, faults, bearer tokens, answers.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::{Fault, Shared};

/// Far above 300 repayments; a bigger body is a client bug, answered 413.
const MAX_BODY_BYTES: usize = 1 << 20;

pub(super) type Reply = Response<UnsyncBoxBody<Bytes, io::Error>>;
pub(super) type Answer = Result<Reply, DroppedOnPurpose>;

/// Returned from the service so that hyper closes the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox dropped the connection on purpose")]
pub(super) struct DroppedOnPurpose;

pub(super) async fn accept_loop(shared: Arc<Shared>) {
    let _open = OpenGuard(shared.clone());
    let mut stop = shared.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = poll_fn(|cx| shared.poll_accept(cx)) => accepted,
        };
        match accepted {
            None => break,
            Some(Ok((stream, _))) => {
                // Counted before the spawn so that `stopped()` can't miss a starting connection.
                shared.open.send_modify(|n| *n += 1);
                let guard = OpenGuard(shared.clone());
                tokio::spawn(serve_connection(shared.clone(), stream, guard));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "sandbox accept failed");
                // Errors such as EMFILE repeat at once; back off rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Shared {
    /// `None` once `stop()` has closed the listener.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<(TcpStream, SocketAddr)>>> {
        match self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        }
    }
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, _open: OpenGuard) {
    // Small answers on a kept-alive connection would otherwise wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut stop = shared.stop.subscribe();
    let service = service_fn(move |request| handle(shared.clone(), request));
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "sandbox connection ended");
            }
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Ok(error_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body exceeds 1 MiB",
            ));
        }
        // The client went away mid-body: there is nobody to answer.
        Err(_) => return Err(DroppedOnPurpose),
    };
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    // Once read, a request is handled to the end even if the client leaves (the connection's
    // future is then dropped, but not this task), so the outcome never depends on timing.
    let answer = match tokio::spawn(route(shared, parts, body)).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::error!(%error, "sandbox handler failed");
            Ok(error_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the sandbox failed",
            ))
        }
    };
    match &answer {
        Ok(response) => {
            tracing::debug!(%method, %path, status = response.status().as_u16(), "sandbox answered")
        }
        Err(_) => tracing::debug!(%method, %path, "sandbox dropped the connection"),
    }
    answer
}

async fn route(shared: Arc<Shared>, parts: Parts, body: Bytes) -> Answer {
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (segments.as_slice(), &parts.method) {
        (["oauth", "token"], &Method::POST) => super::token::handle(&shared, &parts, &body).await,
        (["v3", "partner", partner_id, "repayments"], &Method::POST) if !partner_id.is_empty() => {
            super::repayments::handle(&shared, partner_id, &parts, body).await
        }
        (["v3", "partner", partner_id, "loans"], &Method::GET) if !partner_id.is_empty() => {
            super::loans::handle(&shared, partner_id, &parts).await
        }
        (["oauth", "token"] | ["v3", "partner", _, "repayments"], _) => {
            Ok(method_not_allowed("POST"))
        }
        (["v3", "partner", _, "loans"], _) => Ok(method_not_allowed("GET")),
        _ => Ok(json_answer(
            StatusCode::NOT_FOUND,
            &json!({"code": "not_found"}),
        )),
    }
}

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

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut response = json_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"code": "method_not_allowed"}),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
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

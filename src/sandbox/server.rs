//! Transport and routing: connections, reading requests, handing each to its route.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

use super::reply::{Answer, DroppedOnPurpose, Reply, error_answer, json_answer};
use super::{Shared, loans, repayments, token};

/// Far above 300 repayments; a bigger body is a client bug, answered 413.
const MAX_BODY_BYTES: usize = 1 << 20;

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
        (["oauth", "token"], &Method::POST) => token::handle(&shared, &parts, &body).await,
        (["v3", "partner", partner_id, "repayments"], &Method::POST) if !partner_id.is_empty() => {
            repayments::handle(&shared, partner_id, &parts, body).await
        }
        (["v3", "partner", partner_id, "loans"], &Method::GET) if !partner_id.is_empty() => {
            loans::handle(&shared, partner_id, &parts).await
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

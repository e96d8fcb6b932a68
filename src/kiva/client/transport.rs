//! One HTTP exchange with Kiva: sending, reading the answer within a bound, and telling a
//! request that never left from one that may have been processed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::Value;

use crate::config::redact_url;

/// An HTTP exchange that produced a status line and a fully read body.
pub(super) struct RawAnswer {
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Bytes,
    /// More arrived than the endpoint's bound: `body` is its first part only.
    pub(super) over_limit: bool,
}

pub(super) enum Failure {
    /// Nothing was written to Kiva.
    NotSent(String),
    /// Something may have been written and processed.
    Unknown(String),
}

impl Failure {
    pub(super) fn into_reason(self) -> String {
        match self {
            Failure::NotSent(reason) | Failure::Unknown(reason) => reason,
        }
    }
}

/// Sends and reads the whole answer, sorting failures by whether anything reached the server.
pub(super) async fn perform(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
) -> Result<RawAnswer, Failure> {
    let mut response = request.send().await.map_err(|e| {
        // reqwest marks every failure of the connector (DNS, TCP connect, TLS handshake and
        // the connect timeout) as a connect error; only then is it certain nothing was written.
        if e.is_connect() {
            Failure::NotSent(describe(&e))
        } else {
            Failure::Unknown(describe(&e))
        }
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    let mut over_limit = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max_bytes - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    over_limit = true;
                    break;
                }
            }
            Ok(None) => break,
            // The status line is Kiva's answer: a 200 means it processed the call, whatever
            // became of the body. Calling this an unknown outcome would hold a delivered batch
            // (and invite a resend, a second upload); so it is answered, with the part that
            // arrived kept raw as the excerpt (empty result, as for any unreadable body).
            Err(e) => {
                tracing::warn!(
                    status = status.as_u16(),
                    received_bytes = body.len(),
                    error = %describe(&e),
                    "Kiva's answer was cut short; keeping its status and what arrived"
                );
                break;
            }
        }
    }
    Ok(RawAnswer {
        status,
        retry_after,
        body: Bytes::from(body),
        over_limit,
    })
}

/// The error with its causes: reqwest's own message alone ("error sending request") does not
/// say whether it was a refusal, a reset or a timeout.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    // reqwest names the URL; a token or key in its query must not reach a reason or a log.
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &redact_url(url.as_str()));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if error.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// Belt and braces: no path is known to put a secret in a reason, but a server that echoes
/// the request in its error body would, possibly still form-encoded.
pub(super) fn redact(mut text: String, secret: &str) -> String {
    if secret.is_empty() {
        return text;
    }
    let encoded = serde_urlencoded::to_string([("", secret)]).unwrap_or_default();
    let encoded = encoded.trim_start_matches('=');
    for form in [secret, encoded] {
        if !form.is_empty() && text.contains(form) {
            text = text.replace(form, "[redacted]");
        }
    }
    text
}

pub(super) fn redact_failure(failure: Failure, secret: &str) -> Failure {
    match failure {
        Failure::NotSent(reason) => Failure::NotSent(redact(reason, secret)),
        Failure::Unknown(reason) => Failure::Unknown(redact(reason, secret)),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date; a date in the past means now.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// At most `max` bytes of the body as text, cut on a char boundary; invalid UTF-8 is
/// replaced rather than dropped so the excerpt still shows what came.
pub(super) fn excerpt(body: &[u8], max: usize) -> String {
    // A char that starts before `max` ends within 3 bytes after it, so this prefix holds
    // every char that can fit, and only chars past `max` can be cut by it.
    let prefix = &body[..body.len().min(max + 3)];
    let mut text = String::from_utf8_lossy(prefix).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// A string or a number as text; with `arbitrary_precision`, a number keeps its exact digits.
pub(super) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A whole number given as a JSON number (`43199`, `43199.0`) or as digits in a string.
pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

//! Reading a request body: at most `server.max_body_bytes`, with one of the intake's few
//! large-body turns once it is past `LARGE_BODY_BYTES`, and within
//! `server.body_read_timeout_secs`. The API reads whole bodies with it; the upload page reads
//! its form's file with it, so both share the same turns and limits.

use std::time::Duration;

use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::problem::ApiError;
use crate::intake::{Intake, LARGE_BODY_BYTES};

#[derive(Debug)]
pub enum BodyError {
    TooLarge {
        max: usize,
    },
    /// Not received in full before the read deadline.
    TimedOut {
        after: Duration,
    },
    Unreadable(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { max } => {
                ApiError::PayloadTooLarge(format!("the body is larger than the {max}-byte limit"))
            }
            BodyError::TimedOut { after } => ApiError::RequestTimeout(format!(
                "the body was not received in full within {} s; send it again",
                after.as_secs()
            )),
            BodyError::Unreadable(reason) => {
                ApiError::BadRequest(format!("could not read the body: {reason}"))
            }
        }
    }
}

/// When the reading of one request's body must be over. Time spent waiting for a large-body
/// turn does not count: a queue of honest clients is not the client's fault.
#[derive(Debug)]
pub struct ReadDeadline {
    at: Instant,
    timeout: Duration,
}

impl ReadDeadline {
    pub fn start(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// The stream's next item, unless the deadline passes first.
    pub async fn next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<Option<S::Item>, BodyError> {
        tokio::time::timeout_at(self.at, stream.next())
            .await
            .map_err(|_| BodyError::TimedOut {
                after: self.timeout,
            })
    }

    /// A large-body turn; the deadline moves by the time waited for it.
    pub async fn turn(&mut self, intake: &Intake) -> OwnedSemaphorePermit {
        let asked = Instant::now();
        let permit = intake.large_body_permit().await;
        self.at += asked.elapsed();
        permit
    }
}

/// Reads `stream` up to `max` bytes; a larger one is refused as soon as it is known to be.
/// Past `LARGE_BODY_BYTES` (declared, an upper bound the client gave, or read), waits for a
/// large-body turn first and returns it, to be held until the body is parsed. The body is
/// read into one buffer and handed on as it is, never copied.
pub async fn read_limited<S, E>(
    stream: &mut S,
    declared: Option<usize>,
    max: usize,
    intake: &Intake,
    deadline: &mut ReadDeadline,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut permit = None;
    if declared.is_some_and(|n| n > LARGE_BODY_BYTES) {
        permit = Some(deadline.turn(intake).await);
    }
    // Only after the turn: a declared length is the client's word, not yet a body.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(max));
    while let Some(chunk) = deadline.next(stream).await? {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        if permit.is_none() && body.len() + chunk.len() > LARGE_BODY_BYTES {
            permit = Some(deadline.turn(intake).await);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), permit))
}

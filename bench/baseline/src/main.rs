//! The two ingest baselines of `bench/run`, one binary:
//!
//! - `--mode http`: the HTTP limit. actix-web reads the body of `POST /v1/repayments`, parses
//!   it as JSON (serde_json with the gateway's features) and answers 202 with a small JSON
//!   body. No validation, no store.
//! - `--mode store`: the store limit. The same, plus one Redis MULTI/EXEC that stores the raw
//!   body, claims an idempotency key (SET NX EX) and XADDs a queue entry, on a deadpool-redis
//!   pool sized for the load.
//!
//! `GET /health/ready` answers 200 (in store mode after a PING), so start-up is measured the
//! same way as the gateway's. Stops on SIGTERM (actix-web's own signal handling).
//!
//! Usage: baseline --mode http|store --bind 127.0.0.1:PORT [--redis URL] [--pool N]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime};

/// Largest body accepted: the gateway's default `server.max_body_bytes`.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Idempotency keys live as long as the gateway's default (24 h).
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

struct State {
    pool: Option<Pool>,
    /// Ids unique within the process; the prefix (start time) makes them unique across runs.
    prefix: String,
    next: AtomicU64,
}

async fn submit(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    // The gateway refuses a request without a key before reading it; so does the baseline.
    if req.headers().get("x-api-key").is_none() {
        return HttpResponse::Unauthorized().finish();
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => return HttpResponse::BadRequest().finish(),
    };
    let count = value
        .get("repayments")
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    let id = format!(
        "{}-{}",
        state.prefix,
        state.next.fetch_add(1, Ordering::Relaxed)
    );
    if let Some(pool) = &state.pool {
        let mut conn = match pool.get().await {
            Ok(conn) => conn,
            Err(_) => return HttpResponse::ServiceUnavailable().finish(),
        };
        let stored: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(format!("bl:report:{id}"))
            .arg(&body[..])
            .ignore()
            .cmd("SET")
            .arg(format!("bl:idem:{id}"))
            .arg("in_progress")
            .arg("NX")
            .arg("EX")
            .arg(IDEMPOTENCY_TTL_SECS)
            .ignore()
            .cmd("XADD")
            .arg("bl:deliveries")
            .arg("*")
            .arg("report")
            .arg(&id)
            .ignore()
            .query_async(&mut conn)
            .await;
        if stored.is_err() {
            return HttpResponse::ServiceUnavailable().finish();
        }
    }
    HttpResponse::Accepted()
        .content_type("application/json")
        .insert_header(("Location", format!("/v1/reports/{id}")))
        .body(format!(
            r#"{{"id":"{id}","status":"queued","repayment_count":{count}}}"#
        ))
}

async fn ready(state: web::Data<State>) -> HttpResponse {
    if let Some(pool) = &state.pool {
        let ok = match pool.get().await {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok(),
            Err(_) => false,
        };
        if !ok {
            return HttpResponse::ServiceUnavailable().finish();
        }
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

fn usage() -> ! {
    eprintln!("usage: baseline --mode http|store --bind 127.0.0.1:PORT [--redis URL] [--pool N]");
    std::process::exit(2)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut mode = None;
    let mut bind = None;
    let mut redis_url = None;
    let mut pool_size = 64usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--mode" => mode = Some(value),
            "--bind" => bind = Some(value),
            "--redis" => redis_url = Some(value),
            "--pool" => pool_size = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let bind = bind.unwrap_or_else(|| usage());
    let pool = match mode.as_deref() {
        Some("http") => None,
        Some("store") => {
            let url = redis_url.unwrap_or_else(|| usage());
            let mut config = Config::from_url(url);
            config.pool = Some(PoolConfig::new(pool_size));
            Some(
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(std::io::Error::other)?,
            )
        }
        _ => usage(),
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let state = web::Data::new(State {
        pool,
        prefix: format!("{:x}", started.as_nanos()),
        next: AtomicU64::new(1),
    });
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route("/v1/repayments", web::post().to(submit))
            .route("/health/ready", web::get().to(ready))
    })
    .bind(&bind)?
    .run()
    .await
}

//! A stand-in for Kiva (token endpoint, repayments, loans list) that the client's tests run
//! against; the tests themselves are grouped by what they exercise.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode as ActixStatus;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::future::join_all;
use secrecy::SecretString;

use super::*;
use crate::domain::ColumnFormat;

const SECRET: &str = "s3cret-do-not-leak";
const AUDIENCE: &str = "https://partner-api.audience.test";
const PARTNER: &str = "123";
const BODY: &[u8] = br#"{"repayments":[{"loan_id":"L1","amount":25.00}]}"#;

/// What the fake saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    content_type: Option<String>,
    accept: Option<String>,
    authorization: Option<String>,
    user_agent: Option<String>,
    body: Bytes,
}

enum Reply {
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Accepts the request and never answers.
    Stall,
    /// Sends the status line and part of the body, then breaks the connection.
    BrokenBody,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply::Answer {
        status,
        headers: Vec::new(),
        body: body.into(),
    }
}

fn token_reply(n: usize, expires_in: u64) -> Reply {
    reply(
        200,
        serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "bearer",
            "expires_in": expires_in,
            "scope": TOKEN_SCOPE,
            "partnerId": PARTNER,
        })
        .to_string(),
    )
}

type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

/// A stand-in for Kiva; each endpoint counts its calls (1-based `n` for the script).
#[derive(Clone)]
struct FakeKiva {
    token_calls: Arc<AtomicUsize>,
    repayment_calls: Arc<AtomicUsize>,
    loans_calls: Arc<AtomicUsize>,
    token_requests: Arc<StdMutex<Vec<Seen>>>,
    api_requests: Arc<StdMutex<Vec<Seen>>>,
    token_script: Script,
    repayments_script: Script,
    loans_script: Script,
}

impl FakeKiva {
    fn new() -> Self {
        Self {
            token_calls: Arc::default(),
            repayment_calls: Arc::default(),
            loans_calls: Arc::default(),
            token_requests: Arc::default(),
            api_requests: Arc::default(),
            token_script: Arc::new(|n, _| token_reply(n, 43199)),
            repayments_script: Arc::new(|_, _| reply(200, r#"{"upload_id":1,"problems":[]}"#)),
            loans_script: Arc::new(|_, _| reply(200, r#"{"total_records":0,"data":[]}"#)),
        }
    }

    fn token(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        self.token_script = Arc::new(f);
        self
    }

    fn repayments(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        self.repayments_script = Arc::new(f);
        self
    }

    fn loans(mut self, f: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        self.loans_script = Arc::new(f);
        self
    }

    fn token_calls(&self) -> usize {
        self.token_calls.load(Ordering::SeqCst)
    }

    fn repayment_calls(&self) -> usize {
        self.repayment_calls.load(Ordering::SeqCst)
    }

    fn start(&self) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = web::Data::new(self.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(fake.clone())
                .route("/oauth2/token", web::post().to(token_endpoint))
                .route(
                    "/partner-api/v3/partner/{id}/repayments",
                    web::post().to(repayments_endpoint),
                )
                .route(
                    "/partner-api/v3/partner/{id}/loans",
                    web::get().to(loans_endpoint),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Running { base, handle }
    }
}

struct Running {
    base: String,
    handle: ServerHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        // `stop` sends the command before returning; its future only awaits completion.
        #[allow(clippy::let_underscore_future)]
        let _ = self.handle.stop(false);
    }
}

fn seen(request: &HttpRequest, body: Bytes) -> Seen {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Seen {
        path: request.path().to_owned(),
        query: request.query_string().to_owned(),
        content_type: header("content-type"),
        accept: header("accept"),
        authorization: header("authorization"),
        user_agent: header("user-agent"),
        body,
    }
}

async fn respond(reply: Reply) -> HttpResponse {
    match reply {
        Reply::Answer {
            status,
            headers,
            body,
        } => {
            let mut response = HttpResponse::build(ActixStatus::from_u16(status).unwrap());
            for header in headers {
                response.insert_header(header);
            }
            response.content_type("application/json").body(body)
        }
        Reply::Stall => std::future::pending().await,
        Reply::BrokenBody => {
            // A first chunk beyond actix's write buffer and a yield before the error make
            // sure the status line is on the wire before the connection breaks.
            let body = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(Bytes::from(vec![b' '; 64 * 1024])), 1)),
                    1 => {
                        tokio::task::yield_now().await;
                        Some((Err(std::io::Error::other("cut")), 2))
                    }
                    _ => None,
                }
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .streaming(body)
        }
    }
}

async fn token_endpoint(
    fake: web::Data<FakeKiva>,
    request: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let n = fake.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let seen = seen(&request, body);
    let reply = (fake.token_script)(n, &seen);
    fake.token_requests.lock().unwrap().push(seen);
    respond(reply).await
}

async fn repayments_endpoint(
    fake: web::Data<FakeKiva>,
    request: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let n = fake.repayment_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let seen = seen(&request, body);
    let reply = (fake.repayments_script)(n, &seen);
    fake.api_requests.lock().unwrap().push(seen);
    respond(reply).await
}

async fn loans_endpoint(
    fake: web::Data<FakeKiva>,
    request: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let n = fake.loans_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let seen = seen(&request, body);
    let reply = (fake.loans_script)(n, &seen);
    fake.api_requests.lock().unwrap().push(seen);
    respond(reply).await
}

fn partner() -> PartnerId {
    PartnerId::parse(PARTNER).unwrap()
}

fn partner_settings(secret: Option<&str>) -> Vec<PartnerSettings> {
    vec![PartnerSettings {
        id: partner(),
        name: "Demo MFI".into(),
        column_format: ColumnFormat::TwoColumn,
        client_id: "cid".into(),
        client_secret: secret.map(SecretString::from),
        resend_on_unknown_outcome: false,
        unexpected_loans: Default::default(),
    }]
}

/// Token URL, audience and API base deliberately share nothing, and the base carries a
/// path and a trailing slash.
fn kiva_settings(token_base: &str, api_base: &str, timeout_secs: u64) -> KivaSettings {
    KivaSettings {
        token_url: format!("{token_base}/oauth2/token"),
        audience: AUDIENCE.into(),
        api_base_url: format!("{api_base}/partner-api/"),
        batch_size: 200,
        request_timeout_secs: timeout_secs,
    }
}

fn client_for(running: &Running) -> KivaClient {
    KivaClient::new(
        &kiva_settings(&running.base, &running.base, 5),
        &partner_settings(Some(SECRET)),
    )
    .unwrap()
}

async fn send(client: &KivaClient) -> SendOutcome {
    client
        .send_repayments(&partner(), Bytes::from_static(BODY))
        .await
}

fn answered(outcome: SendOutcome) -> KivaAnswer {
    match outcome {
        SendOutcome::Answered(answer) => answer,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn assert_no_secrets(text: &str) {
    assert!(!text.contains(SECRET), "the client secret leaked: {text}");
    assert!(!text.contains("tok-"), "an access token leaked: {text}");
}

mod loans;
mod send;
mod token;

//! A local Kiva stand-in: the OAuth2 token endpoint, the repayments endpoint and the loans
//! list, speaking the wire formats of KIVA.md. Tests run it in-process, tell it how to answer
//! and read back exactly what it received; developers run it standalone.
//!
//! It is written on hyper directly because "drop the connection" must close the TCP connection
//! without any response, which a service does in hyper by returning `Err`.
//!
//! Semantics worth knowing when writing tests against it:
//! - Once a request has been read in full, it is handled in a task of its own: what the sandbox
//!   does with it (count it, record an upload) never depends on whether the client is still
//!   waiting for the answer. A client that times out during a [`Fault::Stall`] or during
//!   [`Sandbox::set_latency`] therefore still produces an upload, like a slow Kiva that did
//!   process the call. A request whose body never arrived in full, or passed 1 MiB (413), is
//!   not counted.
//! - Only `POST` requests count as repayment or token requests; other methods answer 405.
//! - A token is opaque (`sbx_` + 32 hex digits). Expiry uses real time, so a config with
//!   `token_ttl_secs: 0` issues tokens that are already expired (401), for testing refresh.
//! - `shutdown()` closes the listening socket before it returns (new connections are refused);
//!   open keep-alive connections close right after, and [`Sandbox::stopped`] awaits that.

mod config;
mod loans;
mod repayments;
mod reply;
mod server;
mod token;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{DEMO_HOLD_LOAN, SandboxConfig, SandboxLoan, SandboxPartner};

/// A repayments call the sandbox answered with 2xx.
#[derive(Clone)]
pub struct Upload {
    pub upload_id: u64,
    /// The partner id from the URL path.
    pub partner_id: String,
    /// The raw request body, byte for byte (numbers keep their exact digits).
    pub body: String,
    pub json: serde_json::Value,
    /// The bearer token the call used, without the `Bearer ` prefix.
    pub authorization: String,
}

// The token stays out of Debug so that an assertion message can't print it.
impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("upload_id", &self.upload_id)
            .field("partner_id", &self.partner_id)
            .field("body", &self.body)
            .field("authorization", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// One request to the loans list, as the sandbox read it (whatever it answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoansRequest {
    pub partner_id: String,
    pub statuses: Vec<String>,
    pub offset: usize,
    pub limit: usize,
}

/// How the loans list spells its count: `total_records` in the integration that runs against
/// Kiva, `totalRecords` in Kiva's own typed client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TotalRecordsField {
    #[default]
    Snake,
    Camel,
}

/// How the loans list misbehaves with its paging, from `Sandbox::set_loans_paging` on, for
/// every request until set back to the default (which behaves like Kiva).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoansPaging {
    /// Loans sent beyond the `limit` asked for: the next ones of the list, as if `limit`
    /// were this much larger.
    pub beyond_limit: usize,
    /// Answer every page as if `offset` were 0: the same page again and again.
    pub ignore_offset: bool,
    /// Say this many loans in `total_records`, whatever the list holds.
    pub total_records: Option<u64>,
    /// Give each loan a `description` of this many bytes: a page of 300 loans as large as a
    /// misbehaving server or proxy cares to make it.
    pub padding_bytes: usize,
}

/// How the sandbox answers one request instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status, an optional `Retry-After` header and this body (sent as
    /// `application/json` when it parses as JSON, else as `text/plain`).
    Status {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// Read the whole request, wait this long, then handle it normally. The request counts at
    /// once; after the wait it is authorized, validated and, if valid, recorded as an upload
    /// whether or not the client is still there.
    Stall(Duration),
    /// Read the whole request, then close the connection without any response. Nothing is
    /// recorded but the count.
    DropConnection,
    /// Handle the request normally (a valid batch is recorded as an upload), then answer 200
    /// with this HTML instead of Kiva's JSON: a proxy's or maintenance page in front of a Kiva
    /// that did process the call.
    HtmlAfterUpload(String),
    /// Handle the request normally, then send the answer's status line and headers, with the
    /// full `Content-Length`, but only the first `sent_bytes` bytes of its body, and close the
    /// connection: Kiva processed the call and the answer was cut short on the way.
    TruncatedAfterUpload { sent_bytes: usize },
    /// Handle the request normally and add an `error` problem for each of these loan ids,
    /// which the batch did not name.
    ProblemsForOtherLoans(Vec<String>),
}

impl Fault {
    /// Shorthand for a `Status` fault without `Retry-After`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Fault::Status {
            status,
            retry_after: None,
            body: body.into(),
        }
    }

    /// Faults that change the answer to a request that was handled normally.
    fn after_handling(&self) -> bool {
        matches!(
            self,
            Fault::HtmlAfterUpload(_)
                | Fault::TruncatedAfterUpload { .. }
                | Fault::ProblemsForOtherLoans(_)
        )
    }

    // A bad fault is a bug in the test that pushed it: refuse it there, not mid-request.
    fn check(&self) {
        if let Fault::Status {
            status,
            retry_after,
            ..
        } = self
        {
            assert!(
                (200..=599).contains(status),
                "sandbox fault status {status} is not a final HTTP status"
            );
            if let Some(value) = retry_after {
                assert!(
                    hyper::header::HeaderValue::from_str(value).is_ok(),
                    "sandbox fault Retry-After {value:?} is not a valid header value"
                );
            }
        }
    }
}

/// The shape of a successful repayments answer. Kiva does not document it; the one typed
/// client reads a list, the one production integration a single object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResponseShape {
    #[default]
    Object,
    Array,
}

/// A running sandbox. Clones share one server; it stops on `shutdown()` or when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    owner: Arc<Owner>,
}

struct Owner {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("base_url", &self.shared().base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Sandbox {
    /// Binds `addr` (use `127.0.0.1:0` in tests) and serves until `shutdown()` or the drop of
    /// the last handle.
    pub async fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        // A wildcard bind is reachable on loopback; clients can't connect to 0.0.0.0 everywhere.
        let host = match local.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], local.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
            }
            _ => local,
        };
        let SandboxConfig {
            partners,
            audience,
            token_ttl_secs,
            loans,
            unknown_outcome_once,
        } = config;
        let shared = Arc::new(Shared {
            base_url: format!("http://{host}"),
            partners,
            audience,
            token_ttl: Duration::from_secs(token_ttl_secs),
            state: Mutex::new(State {
                loans,
                unknown_outcome_once,
                ..State::default()
            }),
            repayment_requests: watch::Sender::new(0),
            uploads: watch::Sender::new(Vec::new()),
            stop: watch::Sender::new(false),
            // The accept loop counts as one until it ends.
            open: watch::Sender::new(1),
            listener: Mutex::new(Some(listener)),
        });
        tokio::spawn(server::accept_loop(shared.clone()));
        Ok(Sandbox {
            owner: Arc::new(Owner { shared }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// `http://127.0.0.1:PORT`: the gateway's `api_base_url`.
    pub fn base_url(&self) -> String {
        self.shared().base_url.clone()
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.shared().base_url)
    }

    pub fn audience(&self) -> String {
        self.shared().audience.clone()
    }

    /// Stops accepting (the port is closed when this returns) and closes every connection.
    pub fn shutdown(&self) {
        self.shared().stop();
    }

    /// Resolves once the listener and every connection are closed (after `shutdown()`).
    pub async fn stopped(&self) {
        let mut open = self.shared().open.subscribe();
        // The sender lives in `Shared`, which we hold: `wait_for` can't fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Uploads answered with 2xx, in the order they were recorded.
    pub fn uploads(&self) -> Vec<Upload> {
        self.shared().uploads.borrow().clone()
    }

    /// Every POST to the repayments route, whatever the answer (faults, stalls, drops, 4xx).
    pub fn repayment_requests(&self) -> usize {
        *self.shared().repayment_requests.borrow()
    }

    /// Every POST to the token route, whatever the answer.
    pub fn token_requests(&self) -> usize {
        self.shared().lock().token_requests
    }

    pub fn tokens_issued(&self) -> usize {
        self.shared().lock().tokens_issued
    }

    /// Resolves when `repayment_requests() >= n`; panics after `deadline`.
    pub async fn wait_for_repayment_requests(&self, n: usize, deadline: Duration) {
        let mut seen = self.shared().repayment_requests.subscribe();
        let reached = tokio::time::timeout(deadline, seen.wait_for(|count| *count >= n))
            .await
            .is_ok();
        assert!(
            reached,
            "the sandbox saw {} repayment request(s) within {deadline:?}, expected at least {n}",
            self.repayment_requests()
        );
    }

    /// Resolves when `uploads().len() >= n`; panics after `deadline`.
    pub async fn wait_for_uploads(&self, n: usize, deadline: Duration) {
        let mut seen = self.shared().uploads.subscribe();
        let reached = tokio::time::timeout(deadline, seen.wait_for(|uploads| uploads.len() >= n))
            .await
            .is_ok();
        assert!(
            reached,
            "the sandbox recorded {} upload(s) within {deadline:?}, expected at least {n}",
            self.uploads().len()
        );
    }

    /// Queues a fault; each repayments request takes the oldest one before any other check.
    pub fn push_fault(&self, fault: Fault) {
        fault.check();
        self.shared().lock().faults.push_back(fault);
    }

    /// Queues a fault for the token route, taken like `push_fault`'s.
    pub fn push_token_fault(&self, fault: Fault) {
        fault.check();
        assert!(
            !fault.after_handling(),
            "{fault:?} is a fault of the repayments route only"
        );
        self.shared().lock().token_faults.push_back(fault);
    }

    /// Every token issued so far answers 401 from now on; new tokens work.
    pub fn revoke_tokens(&self) {
        self.shared().lock().tokens.clear();
    }

    /// Delays every repayments answer except an injected fault's (default: none).
    pub fn set_latency(&self, latency: Duration) {
        self.shared().lock().latency = latency;
    }

    pub fn set_response_shape(&self, shape: ResponseShape) {
        self.shared().lock().shape = shape;
    }

    /// Panics if the partner has no such loan: a test that names a missing loan is wrong.
    pub fn set_loan_status(&self, partner_id: &str, internal_loan_id: &str, status: &str) {
        let found = {
            let mut state = self.shared().lock();
            let mut found = false;
            for loan in state.loans.iter_mut().filter(|loan| {
                loan.partner_id == partner_id && loan.internal_loan_id == internal_loan_id
            }) {
                loan.status = status.to_owned();
                found = true;
            }
            found
        };
        assert!(
            found,
            "the sandbox has no loan {internal_loan_id} for partner {partner_id}"
        );
    }

    /// Every GET of the loans list so far, in order (faults and refusals included).
    pub fn loans_requests(&self) -> Vec<LoansRequest> {
        self.shared().lock().loans_requests.clone()
    }

    /// Queues a fault for the loans list, taken like `push_fault`'s (status, stall or drop).
    pub fn push_loans_fault(&self, fault: Fault) {
        fault.check();
        assert!(
            !fault.after_handling(),
            "{fault:?} is a fault of the repayments route only"
        );
        self.shared().lock().loans_faults.push_back(fault);
    }

    /// The loans list's paging misbehaves this way from now on (`LoansPaging::default()`
    /// behaves like Kiva again).
    pub fn set_loans_paging(&self, paging: LoansPaging) {
        self.shared().lock().loans_paging = paging;
    }

    pub fn set_total_records_field(&self, field: TotalRecordsField) {
        self.shared().lock().total_records_field = field;
    }

    /// Adds loans to the list (after those the sandbox has).
    pub fn add_loans(&self, loans: impl IntoIterator<Item = SandboxLoan>) {
        self.shared().lock().loans.extend(loans);
    }

    /// Every later upload naming this loan carries a `warning` problem with these details.
    pub fn warn_on_loan(&self, partner_id: &str, internal_loan_id: &str, details: &str) {
        self.shared().lock().warnings.insert(
            (partner_id.to_owned(), internal_loan_id.to_owned()),
            details.to_owned(),
        );
    }
}

struct Shared {
    base_url: String,
    partners: Vec<SandboxPartner>,
    audience: String,
    token_ttl: Duration,
    state: Mutex<State>,
    // Watches rather than fields of `State` so that tests can await them.
    repayment_requests: watch::Sender<usize>,
    uploads: watch::Sender<Vec<Upload>>,
    stop: watch::Sender<bool>,
    /// The accept loop plus open connections.
    open: watch::Sender<usize>,
    // Behind a lock so that `stop()` closes the socket synchronously: otherwise the kernel
    // would keep completing handshakes into the backlog until the accept task got around to
    // it, and a client would see a reset instead of a refused connection.
    listener: Mutex<Option<TcpListener>>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Grant>,
    tokens_issued: usize,
    token_requests: usize,
    faults: VecDeque<Fault>,
    token_faults: VecDeque<Fault>,
    latency: Duration,
    shape: ResponseShape,
    loans: Vec<SandboxLoan>,
    /// (partner id, internal loan id) → details.
    warnings: HashMap<(String, String), String>,
    loans_requests: Vec<LoansRequest>,
    loans_faults: VecDeque<Fault>,
    total_records_field: TotalRecordsField,
    loans_paging: LoansPaging,
    /// See `SandboxConfig::unknown_outcome_once`; and the (partner, loan) already answered so.
    unknown_outcome_once: Vec<String>,
    answered_unknown: std::collections::HashSet<(String, String)>,
}

struct Grant {
    partner_id: String,
    scopes: Vec<String>,
    expires_at: Instant,
}

impl Shared {
    // A test that panicked while holding the lock must not turn every later call into a panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        drop(
            self.listener
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.stop.send_replace(true);
    }

    /// Waits `duration`; false when the sandbox stopped meanwhile.
    async fn pause(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return true;
        }
        let mut stop = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = stop.wait_for(|stopped| *stopped) => false,
        }
    }
}

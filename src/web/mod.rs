//! The pages for the Kiva Coordinator and the operator: server-rendered HTML (maud, compiled
//! in), one vendored stylesheet, no script needed. Another edge beside `api/`: pages call the
//! same functions the API's handlers call (the month view, report lookups, operator actions),
//! never a second copy of their rules.

pub mod i18n;
mod layout;
pub mod limiter;
mod pages;
pub mod session;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use maud::Markup;

use crate::api::AppState;
use crate::api::problem::ApiError;
use i18n::Lang;
use session::{Viewer, WebConfig};

/// Where the pages live; `/` leads here.
pub const HOME: &str = "/web/";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/")
            .route(web::get().to(to_home))
            .route(web::head().to(to_home))
            .default_service(web::to(crate::api::not_allowed("GET"))),
    )
    .service(
        // The pages' own answer to a query string they can't read: a page, not the API's
        // problem+json.
        web::scope("/web")
            .app_data(
                web::QueryConfig::default().error_handler(|_, req| {
                    PageError::new(Lang::of(req), Failure::BadRequest).into()
                }),
            )
            .service(web::resource("").route(web::get().to(to_home)))
            .service(web::resource("/").route(web::get().to(pages::months::months)))
            .service(web::resource("/assets/site.css").route(web::get().to(stylesheet)))
            .service(web::resource("/language").route(web::get().to(pages::sign_in::language)))
            .service(
                web::resource("/sign-in")
                    .route(web::get().to(pages::sign_in::form))
                    .route(web::post().to(pages::sign_in::sign_in)),
            )
            .service(web::resource("/sign-out").route(web::post().to(pages::sign_in::sign_out)))
            .service(web::resource("/months/{period}").route(web::get().to(pages::months::month)))
            .service(
                web::resource("/months/{period}/{list}.csv")
                    .route(web::get().to(pages::months::month_csv)),
            )
            .service(web::resource("/reports").route(web::get().to(pages::reports::list)))
            .service(web::resource("/reports/{id}").route(web::get().to(pages::reports::detail)))
            .service(
                web::resource("/upload")
                    .route(web::get().to(pages::upload::form))
                    .route(web::post().to(pages::upload::upload)),
            )
            .service(web::resource("/attention").route(web::get().to(pages::attention::list)))
            .service(
                web::resource("/batches/{id}/{action}")
                    .route(web::get().to(pages::attention::confirm))
                    .route(web::post().to(pages::attention::act)),
            ),
    );
}

async fn to_home() -> HttpResponse {
    see_other(HOME)
}

pub(crate) fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=3600"))
        .body(include_str!("assets/site.css"))
}

/// What every page handler starts from: the reader's language and, once signed in, who.
pub(crate) struct Ctx {
    pub lang: Lang,
    pub viewer: Viewer,
    pub path: String,
}

/// A page that could not be shown: said in the reader's language, with the right status.
#[derive(Debug)]
pub(crate) struct PageError {
    lang: Lang,
    kind: Failure,
    viewer: Option<Viewer>,
}

#[derive(Debug)]
pub(crate) enum Failure {
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn,
    /// A state-changing form without its token.
    Csrf,
    NotFound,
    Forbidden,
    BadRequest,
    /// A form whose body came too slowly (`server.body_read_timeout_secs`).
    TimedOut,
    Conflict,
    Unavailable,
    /// The store may or may not have made the change: look before repeating it.
    Unconfirmed,
    Internal,
}

impl PageError {
    pub fn new(lang: Lang, kind: Failure) -> Self {
        Self {
            lang,
            kind,
            viewer: None,
        }
    }
}

impl Ctx {
    /// The signed-in reader, or a `SignIn` failure (the handler's `?` sends the browser there).
    pub async fn of(
        req: &HttpRequest,
        state: &AppState,
        config: &WebConfig,
    ) -> Result<Ctx, PageError> {
        let lang = Lang::of(req);
        match session::viewer(req, state, config).await {
            Ok(Some(viewer)) => Ok(Ctx {
                lang,
                viewer,
                // With the query, so a language switch comes back to the same filters.
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()),
            }),
            Ok(None) => Err(PageError::new(lang, Failure::SignIn)),
            Err(_) => Err(PageError::new(lang, Failure::Unavailable)),
        }
    }

    pub fn fail(&self, kind: Failure) -> PageError {
        PageError {
            lang: self.lang,
            kind,
            viewer: Some(self.viewer.clone()),
        }
    }

    /// An API refusal, as a page. Its English detail is not shown: the page says it in the
    /// reader's language.
    pub fn api(&self, error: ApiError) -> PageError {
        self.fail(match error {
            ApiError::NotFound(_) => Failure::NotFound,
            ApiError::Forbidden(_) | ApiError::Unauthenticated => Failure::Forbidden,
            ApiError::Conflict(_) => Failure::Conflict,
            ApiError::StoreUnavailable => Failure::Unavailable,
            ApiError::OutcomeUnknown { .. } | ApiError::ChangeUnconfirmed => Failure::Unconfirmed,
            ApiError::BadRequest(_) => Failure::BadRequest,
            _ => Failure::Internal,
        })
    }

    pub fn page(&self, title: &str, body: Markup) -> HttpResponse {
        html(
            StatusCode::OK,
            layout::page(self.lang, Some(self), title, body),
        )
    }
}

pub(crate) fn html(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        // Pages show reports and loans: never kept in a shared cache, nor framed by another site.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ))
        .body(markup.into_string())
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self.kind {
            Failure::SignIn => StatusCode::SEE_OTHER,
            Failure::Csrf | Failure::Forbidden => StatusCode::FORBIDDEN,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::BadRequest => StatusCode::BAD_REQUEST,
            Failure::TimedOut => StatusCode::REQUEST_TIMEOUT,
            Failure::Conflict => StatusCode::CONFLICT,
            Failure::Unavailable | Failure::Unconfirmed => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Failure::SignIn = self.kind {
            return see_other("/web/sign-in");
        }
        let (title, text) = match self.kind {
            Failure::Csrf => ("error.csrf_title", "error.csrf"),
            Failure::Forbidden => ("error.forbidden_title", "error.forbidden"),
            Failure::NotFound => ("error.not_found_title", "error.not_found"),
            Failure::BadRequest => ("error.bad_request_title", "error.bad_request"),
            Failure::TimedOut => ("error.timed_out_title", "error.timed_out"),
            Failure::Conflict => ("error.conflict_title", "error.conflict"),
            Failure::Unavailable => ("error.unavailable_title", "error.unavailable"),
            Failure::Unconfirmed => ("error.unavailable_title", "error.unconfirmed"),
            Failure::Internal | Failure::SignIn => ("error.internal_title", "error.internal"),
        };
        let lang = self.lang;
        let ctx = self.viewer.clone().map(|viewer| Ctx {
            lang,
            viewer,
            path: HOME.to_owned(),
        });
        let body = maud::html! {
            h1 { (lang.t(title)) }
            p.notice.bad role="alert" { (lang.t(text)) }
            p { a href=(HOME) { (lang.t("error.back_home")) } }
        };
        html(
            self.status_code(),
            layout::page(lang, ctx.as_ref(), lang.t(title), body),
        )
    }
}

/// Reads a form body (`application/x-www-form-urlencoded`) into pairs; a body that is not one
/// is empty, and the CSRF check then refuses it.
pub(crate) fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

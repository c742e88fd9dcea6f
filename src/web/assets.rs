//! The page: one HTML shell, its scripts and stylesheets, embedded in the
//! binary (no build step, nothing to install next to it). The shell holds
//! no data; everything it shows comes from the API after sign-in.

use super::WebState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const PAGES_JS: &str = include_str!("assets/pages.js");
const PAGES_CSS: &str = include_str!("assets/pages.css");
const CONFIG_JS: &str = include_str!("assets/config.js");
const CONFIG_CSS: &str = include_str!("assets/config.css");

/// `/`, `/assets/app.js`, `/assets/app.css`, the cameras, system and
/// "read now" pages' `/assets/pages.{js,css}`, and the configuration
/// editor's `/assets/config.{js,css}`.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/pages.js", get(|| async { js(PAGES_JS) }))
        .route("/assets/pages.css", get(|| async { css(PAGES_CSS) }))
        .route("/assets/config.js", get(|| async { js(CONFIG_JS) }))
        .route("/assets/config.css", get(|| async { css(CONFIG_CSS) }))
}

fn js(body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
}

fn css(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], body)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

/// Headers on every page and API response: only the gateway's own
/// scripts run, the page is never framed, API answers are never cached.
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

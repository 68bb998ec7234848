//! The web chat page at `/chat`: a plain HTML page with its script and style sheet, embedded in the binary and
//! served under a strict Content-Security-Policy (everything from this server only, nothing inline).
//!
//! The page is public: it holds no data of its own, and reaches the API with whatever credentials its visitor
//! gives it (an API key kept in the tab's `sessionStorage`, or a session token from the URL fragment).

use poem::http::header::{self, HeaderValue};
use poem::{Endpoint, EndpointExt, Response, Route};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The page's policy: scripts, styles and connections (fetch, EventSource) from this origin only; no inline
/// code, no plugins, no framing, no forms posted elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the page, to nest at `/chat`: the page itself, `/app.js` and `/app.css`.
pub fn routes() -> impl Endpoint<Output = Response> {
    Route::new()
        .at("/", asset(INDEX_HTML, "text/html; charset=utf-8"))
        .at("/app.js", asset(APP_JS, "text/javascript; charset=utf-8"))
        .at("/app.css", asset(APP_CSS, "text/css; charset=utf-8"))
}

/// One embedded file, answered to GET (and HEAD) with its type, the page's policy and revalidation on each use
/// (the assets change with the server's version, and are small).
fn asset(body: &'static str, content_type: &'static str) -> impl Endpoint<Output = Response> {
    poem::get(poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            .header(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            )
            .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
            .body(body)
    }))
    .map_to_response()
}

//! The interactive API reference at `/docs`: Swagger UI over `/openapi.json`,
//! served from files embedded in the binary, so it works with no network.
//!
//! Swagger UI is vendored, unchanged, in `assets/swagger-ui` (its README says
//! which release and how to update it); the page and its initializer are
//! Keel's own, in `assets/docs`. Every response carries a strict
//! Content-Security-Policy: scripts, styles and calls from the gateway's own
//! origin only, no inline script or style. The page is revalidated on every
//! visit (`no-cache` with an ETag); the files it loads sit under paths that
//! name their version (Swagger UI's release, a hash of Keel's own files), so
//! browsers keep them for good. `/docs/` redirects to `/docs`.

use axum::{
    Router,
    body::Body,
    response::Response,
    routing::{MethodRouter, get},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// The page's path.
pub const PATH: &str = "/docs";

/// The vendored Swagger UI release; its files' URLs carry it.
pub const SWAGGER_UI_VERSION: &str = "5.36.0";

/// On every `/docs` response. Swagger UI needs nothing more: its styles are
/// files or set through the DOM (which CSP does not govern), its icons are
/// `data:` images in its stylesheet, and it calls only the gateway.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The files under a versioned path never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PNG: &str = "image/png";

/// The page, with `%SWAGGER_UI%` and `%KEEL%` standing for the two asset
/// folders.
const PAGE: &str = include_str!("../assets/docs/docs.html");

/// Swagger UI's files: name, content type, bytes.
const SWAGGER_UI: [(&str, &str, &[u8]); 3] = [
    (
        "swagger-ui-bundle.js",
        JAVASCRIPT,
        include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        CSS,
        include_bytes!("../assets/swagger-ui/swagger-ui.css"),
    ),
    (
        "favicon-32x32.png",
        PNG,
        include_bytes!("../assets/swagger-ui/favicon-32x32.png"),
    ),
];

/// Keel's own files beside the page.
const KEEL: [(&str, &str, &[u8]); 2] = [
    ("docs.js", JAVASCRIPT, include_bytes!("../assets/docs/docs.js")),
    ("docs.css", CSS, include_bytes!("../assets/docs/docs.css")),
];

/// One file served.
#[derive(Debug, Clone)]
struct File {
    content_type: &'static str,
    cache_control: &'static str,
    etag: HeaderValue,
    body: Bytes,
}

/// The reference's routes: the page, the redirect from `/docs/`, and each
/// file the page loads. Unknown paths under `/docs/` are left to the
/// router's fallback.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let swagger_ui = format!("{PATH}/swagger-ui/{SWAGGER_UI_VERSION}");
    // Keel's files change with Keel, not with a version number: their folder
    // is named by their content.
    let keel = format!(
        "{PATH}/keel/{:016x}",
        KEEL.iter().fold(FNV_OFFSET, |hash, (name, _, bytes)| {
            fnv1a(fnv1a(hash, name.as_bytes()), bytes)
        })
    );
    let page = PAGE.replace("%SWAGGER_UI%", &swagger_ui).replace("%KEEL%", &keel);
    let mut router = Router::new()
        .route(PATH, serve(File::new(HTML, "no-cache", Bytes::from(page))))
        .route(&format!("{PATH}/"), get(redirect));
    let files = SWAGGER_UI
        .iter()
        .map(|file| (&swagger_ui, file))
        .chain(KEEL.iter().map(|file| (&keel, file)));
    for (folder, (name, content_type, bytes)) in files {
        let file = File::new(content_type, IMMUTABLE, Bytes::from_static(bytes));
        router = router.route(&format!("{folder}/{name}"), serve(file));
    }
    router
}

impl File {
    fn new(content_type: &'static str, cache_control: &'static str, body: Bytes) -> Self {
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(FNV_OFFSET, &body)))
            .unwrap_or(HeaderValue::from_static("\"\""));
        File {
            content_type,
            cache_control,
            etag,
            body,
        }
    }

    /// The file, or 304 when the client holds this version.
    fn respond(&self, request: &HeaderMap) -> Response {
        let mut response = if matches(request, &self.etag) {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(Body::from(self.body.clone()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        protect(headers);
        response
    }
}

/// The route serving `file`.
fn serve<S: Clone + Send + Sync + 'static>(file: File) -> MethodRouter<S> {
    get(move |request: HeaderMap| std::future::ready(file.respond(&request)))
}

/// `/docs/` -> `/docs`: one URL for the page.
async fn redirect() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(PATH));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    protect(headers);
    response
}

/// The headers every `/docs` response carries.
fn protect(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // For browsers that predate CSP's frame-ancestors.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 13.1.2).
fn matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: a validator and a folder name, not a defence against anyone.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_any() {
        let etag = HeaderValue::from_static("\"abc\"");
        let asking = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            matches(&headers, &etag)
        };
        assert!(asking("\"abc\""));
        assert!(asking("\"x\", W/\"abc\""));
        assert!(asking("*"));
        assert!(!asking("\"abcd\""));
        assert!(!matches(&HeaderMap::new(), &etag));
    }

    #[test]
    fn the_page_names_only_files_served_and_runs_no_inline_script() {
        for placeholder in ["%SWAGGER_UI%", "%KEEL%"] {
            assert!(PAGE.contains(placeholder), "{placeholder}");
        }
        assert!(!PAGE.contains("<style"));
        assert_eq!(PAGE.matches("<script").count(), PAGE.matches("<script src=").count());
    }
}

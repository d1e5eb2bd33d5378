//! The dashboard at `/`: one HTML page, a script and a style sheet, written
//! by hand and embedded in the binary so it works offline.
//!
//! Cache policy: the page is revalidated on every load (`no-cache` with an
//! ETag), and it links the script and style sheet with `?v=<content hash>`,
//! so those are cached for a year as immutable; a new binary links new URLs.

use std::sync::LazyLock;

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use xxhash_rust::xxh3::xxh3_64;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// Scripts, styles and data only from this server; no inline script, no
/// framing. A value that slipped into markup still could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: String,
    content_type: &'static str,
    /// Content hash, hex: the `v` query parameter and the ETag.
    version: String,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Asset {
        let version = format!("{:016x}", xxh3_64(body.as_bytes()));
        Asset {
            body,
            content_type,
            version,
        }
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// The asset, or 304 when the client holds this version.
    fn respond(&'static self, request: &HeaderMap, cache_control: &'static str) -> Response {
        let etag = self.etag();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        // The hex hash in quotes is always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, v);
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        let matches = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        (headers, self.body.as_str()).into_response()
    }
}

static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(APP_JS.to_owned(), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(STYLE_CSS.to_owned(), "text/css; charset=utf-8"));
static PAGE: LazyLock<Asset> = LazyLock::new(|| {
    let html = INDEX_HTML
        .replace(
            "{{app.js}}",
            &format!("/assets/app.js?v={}", SCRIPT.version),
        )
        .replace(
            "{{style.css}}",
            &format!("/assets/style.css?v={}", STYLE.version),
        )
        .replace("{{version}}", env!("CARGO_PKG_VERSION"));
    Asset::new(html, "text/html; charset=utf-8")
});

/// `GET /`: the page.
pub async fn index(request: HeaderMap) -> Response {
    let mut resp = PAGE.respond(&request, "no-cache");
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /assets/{file}`: the script and the style sheet.
pub async fn asset(
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    request: HeaderMap,
) -> Response {
    let asset: &'static Asset = match file.as_str() {
        "app.js" => &SCRIPT,
        "style.css" => &STYLE,
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let current = query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "v" && v == asset.version)
    });
    // Only the exact version the page links may be cached for good; any
    // other URL may name an older build and must be checked each time.
    let cache_control = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    asset.respond(&request, cache_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_versioned_assets_and_loads_nothing_external() {
        let html = &PAGE.body;
        assert!(html.contains(&format!("/assets/app.js?v={}", SCRIPT.version)));
        assert!(html.contains(&format!("/assets/style.css?v={}", STYLE.version)));
        assert!(!html.contains("{{"), "unreplaced placeholder");
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace URI is a name, not something fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import"));
        }
    }

    #[test]
    fn the_script_never_assigns_markup() {
        // Row values reach the page only as text nodes and attribute values.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
    }
}

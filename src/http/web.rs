//! The administrators' dashboard (`GET /admin/`) and the interactive API reference
//! (`GET /docs`): pages and every asset they load are embedded in the binary (the page makes
//! no request to another host), served with caching headers and gzip when the client takes
//! it. The third-party files come from `web/vendor/` (`scripts/vendor-web`, pinned and
//! checked); the dashboard's own from `web/admin/`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file: its path under `/admin/assets/`, bytes and type.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
    mime: &'static str,
}

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: $path,
            bytes: include_bytes!(concat!("../../web/", $path)),
            mime: $mime,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PNG: &str = "image/png";
const JSON: &str = "application/json";

static ASSETS: &[Asset] = &[
    asset!("admin/app.js", JS),
    asset!("admin/app.css", CSS),
    asset!("admin/docs.js", JS),
    asset!("vendor/leaflet/dist/leaflet.js", JS),
    asset!("vendor/leaflet/dist/leaflet.css", CSS),
    asset!("vendor/leaflet/dist/images/marker-icon.png", PNG),
    asset!("vendor/leaflet/dist/images/marker-icon-2x.png", PNG),
    asset!("vendor/leaflet/dist/images/marker-shadow.png", PNG),
    asset!("vendor/leaflet/dist/images/layers.png", PNG),
    asset!(
        "vendor/leaflet.markercluster/dist/leaflet.markercluster.js",
        JS
    ),
    asset!("vendor/leaflet.markercluster/dist/MarkerCluster.css", CSS),
    asset!(
        "vendor/leaflet.markercluster/dist/MarkerCluster.Default.css",
        CSS
    ),
    asset!("vendor/topojson-client/dist/topojson-client.min.js", JS),
    asset!("vendor/us-atlas/states-10m.json", JSON),
    asset!("vendor/uplot/dist/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/dist/uPlot.min.css", CSS),
    asset!("vendor/swagger-ui-dist/swagger-ui-bundle.js", JS),
    asset!("vendor/swagger-ui-dist/swagger-ui.css", CSS),
];

const INDEX: &[u8] = include_bytes!("../../web/admin/index.html");
const DOCS: &[u8] = include_bytes!("../../web/admin/docs.html");

/// The routes of the pages and their assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get(|h: HeaderMap| async move { page(&h, INDEX) }),
        )
        .route("/docs", get(|h: HeaderMap| async move { page(&h, DOCS) }))
        .route("/admin/assets/{*path}", get(asset))
}

/// Gzip of each asset, made once on first request.
fn gzipped(bytes: &'static [u8]) -> &'static [u8] {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<usize, &'static [u8]>>> = OnceLock::new();
    let key = bytes.as_ptr() as usize;
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key).or_insert_with(|| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(bytes).expect("gzip into memory");
        Box::leak(enc.finish().expect("gzip into memory").into_boxed_slice())
    })
}

/// `bytes` as the response, gzipped when the client accepts it.
fn send(h: &HeaderMap, bytes: &'static [u8], mime: &'static str, cache: &'static str) -> Response {
    let gzip = h
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (StatusCode::OK, headers, gzipped(bytes)).into_response()
    } else {
        (StatusCode::OK, headers, bytes).into_response()
    }
}

/// A page: never cached (it names the assets), and loading nothing from elsewhere.
fn page(h: &HeaderMap, bytes: &'static [u8]) -> Response {
    let mut r = send(h, bytes, "text/html; charset=utf-8", "no-cache");
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

async fn asset(Path(path): Path<String>, h: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => send(&h, a.bytes, a.mime, "public, max-age=86400"),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_unique_and_typed() {
        let mut seen = std::collections::HashSet::new();
        for a in ASSETS {
            assert!(seen.insert(a.path), "{} twice", a.path);
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            let ext = a.path.rsplit('.').next().unwrap();
            let want = match ext {
                "js" => JS,
                "css" => CSS,
                "png" => PNG,
                "json" => JSON,
                other => panic!("unexpected asset type {other}"),
            };
            assert_eq!(a.mime, want, "{}", a.path);
        }
    }
}

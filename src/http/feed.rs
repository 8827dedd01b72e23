//! `GET /v1/feed`, and the node's cache of its first pages. Every app asks for the newest
//! page to animate, so that page is read from the store at most once per `feed.cache_ms`
//! and page size on a node, whatever the number of apps; pages after a cursor are read
//! each time. A change of name or consent made on this node empties the cache at once;
//! one made on another node shows here within `feed.cache_ms`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::store::feed::{FeedCursor, FeedItem};

/// `GET /v1/feed`: shareable connections and trophies, newest first.
#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    /// The items (display names, zip, city, time; never a position).
    pub items: Vec<FeedItem>,
    /// Cursor of the next page (`before`), null on the last.
    pub next: Option<String>,
}

/// Largest page of the feed.
pub const MAX_FEED_PAGE: u64 = 100;

/// The first page of each size, as sent, while it is fresh: at most [`MAX_FEED_PAGE`]
/// entries.
pub struct FeedCache {
    ttl: Duration,
    pages: Mutex<HashMap<u64, (Instant, Bytes)>>,
    /// Bumped by [`FeedCache::forget`]: a page read before it is not kept.
    generation: AtomicU64,
    /// One store read at a time refreshes a page; the others wait for it, then use it.
    refresh: tokio::sync::Mutex<()>,
}

impl FeedCache {
    /// A cache keeping pages for `ttl_ms` (0: none kept).
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            pages: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Drops every page (what they show changed).
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pages.lock().expect("feed cache lock").clear();
    }

    fn fresh(&self, limit: u64) -> Option<Bytes> {
        let pages = self.pages.lock().expect("feed cache lock");
        let (at, body) = pages.get(&limit)?;
        (at.elapsed() < self.ttl).then(|| body.clone())
    }

    fn keep(&self, limit: u64, read_in: u64, body: Bytes) {
        let mut pages = self.pages.lock().expect("feed cache lock");
        if self.generation.load(Ordering::SeqCst) == read_in {
            pages.insert(limit, (Instant::now(), body));
        }
    }
}

/// `GET /v1/feed?limit=..&before=..`
#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "profile",
    params(
        ("limit" = Option<u64>, Query, description = "Page size (default 20)", minimum = 1, maximum = 100),
        ("before" = Option<String>, Query, description = "Cursor: the previous page's `next`"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Shareable connections (both sides consented) and trophies (their account consented), newest first; the first page may be up to `feed.cache_ms` old", body = FeedPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub async fn feed(
    State(st): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = super::limit_param(&q, 20, MAX_FEED_PAGE)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(FeedCursor::parse(b).ok_or_else(super::api::invalid_cursor)?),
    };
    let cache = &st.feed;
    if before.is_some() || cache.ttl.is_zero() {
        return Ok(json(read(&st, limit, before.as_ref()).await?));
    }
    if let Some(body) = cache.fresh(limit) {
        metrics::counter!("feed_cache_total", "outcome" => "hit").increment(1);
        return Ok(json(body));
    }
    let _turn = cache.refresh.lock().await;
    if let Some(body) = cache.fresh(limit) {
        metrics::counter!("feed_cache_total", "outcome" => "hit").increment(1);
        return Ok(json(body));
    }
    metrics::counter!("feed_cache_total", "outcome" => "miss").increment(1);
    let read_in = cache.generation.load(Ordering::SeqCst);
    let body = read(&st, limit, None).await?;
    cache.keep(limit, read_in, body.clone());
    Ok(json(body))
}

/// A page from the store, as the JSON sent.
async fn read(st: &AppState, limit: u64, before: Option<&FeedCursor>) -> Result<Bytes, ApiError> {
    // Read your writes: what committed is folded (trophies awarded) before it is read.
    st.ctx.publisher.publish_pending().await?;
    let (items, next) = st.ctx.store.feed_page(limit, before).await?;
    Ok(serde_json::to_vec(&FeedPage { items, next })
        .expect("feed pages serialise")
        .into())
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pages_are_kept_for_the_ttl_and_a_forget_wins_over_a_read_in_flight() {
        let c = FeedCache::new(1000);
        let page = Bytes::from_static(b"{}");
        c.keep(20, 0, page.clone());
        assert_eq!(c.fresh(20), Some(page.clone()));
        assert_eq!(c.fresh(10), None, "by page size");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(c.fresh(20).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.fresh(20), None, "stale at the ttl");
        // A page read before a forget is not kept after it.
        let read_in = c.generation.load(Ordering::SeqCst);
        c.forget();
        c.keep(20, read_in, page.clone());
        assert_eq!(c.fresh(20), None);
        let none = FeedCache::new(0);
        none.keep(20, 0, page);
        assert_eq!(none.fresh(20), None, "ttl 0 keeps nothing");
    }
}

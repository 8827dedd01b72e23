//! The dashboard's live feed, `GET /admin/v1/live` (Server-Sent Events, read with `fetch`
//! because `EventSource` cannot send the Bearer header). One task per node samples the map
//! (every available officer, in a cluster on every node; citizens per zip) and the counters
//! every `admin.live_interval_ms` while anyone watches, and broadcasts what changed once,
//! serialised once, to every watcher. A watcher starts with the whole map (`snapshot`),
//! then gets the changes (`delta`); one that falls `admin.live_queue` updates behind is sent
//! the whole map again. Nobody watching: the task sleeps and forgets the map.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use utoipa::ToSchema;

use super::AppState;
use super::admin::{Stats, ZipCitizens, stats_of, zip_counts};
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::actors::directory::AvailableOfficer;
use crate::context::Context;
use crate::geo::{ZipId, ZipTable};
use crate::protocol::Role;

/// The first event of a feed, and the one a watcher that fell behind gets again.
#[derive(Serialize, ToSchema)]
pub struct LiveSnapshot {
    /// Number of the sample; the deltas that follow count on from it.
    pub seq: u64,
    /// Every available officer (at most `admin.live_max_officers`).
    pub officers: Vec<AvailableOfficer>,
    /// Citizen sessions per zip, at the zips' centroids (never a citizen's position).
    pub citizens: Vec<ZipCitizens>,
    /// Whether `admin.live_max_officers` cut the officers.
    pub truncated: bool,
    /// The counters of `GET /admin/v1/stats`.
    pub stats: Stats,
}

/// What changed since the sample before (`seq - 1`).
#[derive(Serialize, ToSchema)]
pub struct LiveDelta {
    /// Number of the sample.
    pub seq: u64,
    /// Officers that became available or whose position, zip or window changed.
    pub upsert: Vec<AvailableOfficer>,
    /// Officers no longer available, by id.
    pub gone: Vec<String>,
    /// Zips whose citizen count changed (`citizens` 0: none left).
    pub citizens: Vec<ZipCitizens>,
    /// Whether `admin.live_max_officers` cut the officers.
    pub truncated: bool,
    /// The counters of `GET /admin/v1/stats`.
    pub stats: Stats,
}

/// The last sample, which a new watcher is sent whole.
#[derive(Default)]
struct Sample {
    /// Whether the map was sampled since the feed last went idle (a forgotten map is not
    /// sent: a new watcher waits for the next sample).
    fresh: bool,
    seq: u64,
    officers: HashMap<String, AvailableOfficer>,
    citizens: HashMap<ZipId, u32>,
    truncated: bool,
    stats: Option<Stats>,
}

/// A delta as sent: its number and its JSON.
type Update = Arc<(u64, String)>;

/// The number of the update that ends the feeds.
const CLOSED: u64 = u64::MAX;

/// The node's live feed.
pub struct LiveFeed {
    tx: broadcast::Sender<Update>,
    sample: Mutex<Sample>,
    watchers: AtomicUsize,
    wake: Notify,
    started: OnceLock<()>,
}

impl LiveFeed {
    /// A feed whose watchers each queue at most `queue` updates.
    pub fn new(queue: usize) -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(queue.max(1)).0,
            sample: Mutex::default(),
            watchers: AtomicUsize::new(0),
            wake: Notify::new(),
            started: OnceLock::new(),
        })
    }

    /// Ends every feed (the server is stopping: its graceful shutdown waits for them).
    pub fn close(&self) {
        let _ = self.tx.send(Arc::new((CLOSED, String::new())));
    }

    fn sample(&self) -> std::sync::MutexGuard<'_, Sample> {
        self.sample.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples while anyone watches, until the process ends.
    async fn run(self: Arc<Self>, ctx: Arc<Context>) {
        let cfg = &ctx.settings.admin;
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.live_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let idle = {
                let mut s = self.sample();
                let idle = self.watchers.load(Ordering::Acquire) == 0;
                if idle {
                    // Under the lock a new watcher takes its snapshot with: it sees the
                    // map whole or forgotten, never forgotten under its feet.
                    s.officers = HashMap::new();
                    s.citizens = HashMap::new();
                    s.fresh = false;
                }
                idle
            };
            if idle {
                self.wake.notified().await;
                tick.reset_immediately();
            }
            tick.tick().await;
            let started = Instant::now();
            let map = match ctx.map(cfg.live_max_officers).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("live feed: map not read this round: {e}");
                    metrics::counter!("admin_live_samples_failed_total").increment(1);
                    continue;
                }
            };
            let delta = self.apply(map, stats_of(&ctx), &ctx.zips);
            let json = serde_json::to_string(&delta).expect("deltas serialise");
            metrics::histogram!("admin_live_sample_seconds")
                .record(started.elapsed().as_secs_f64());
            let _ = self.tx.send(Arc::new((delta.seq, json)));
        }
    }

    /// Folds a new sample into the last and returns what changed.
    fn apply(&self, map: crate::cluster::MapData, stats: Stats, zips: &ZipTable) -> LiveDelta {
        let mut s = self.sample();
        let mut upsert = Vec::new();
        let mut now = HashMap::with_capacity(map.officers.len());
        for o in map.officers {
            if s.officers.remove(&o.officer_id).as_ref() != Some(&o) {
                upsert.push(o.clone());
            }
            now.insert(o.officer_id.clone(), o);
        }
        let gone = std::mem::replace(&mut s.officers, now)
            .into_keys()
            .collect();
        let mut changed = Vec::new();
        let mut citizens = HashMap::with_capacity(map.citizens.len());
        for &(z, n) in &map.citizens {
            if s.citizens.remove(&z) != Some(n) {
                changed.push((z, n));
            }
            citizens.insert(z, n);
        }
        changed.extend(s.citizens.drain().map(|(z, _)| (z, 0)));
        s.citizens = citizens;
        s.seq += 1;
        s.fresh = true;
        s.truncated = map.truncated;
        let delta = LiveDelta {
            seq: s.seq,
            upsert,
            gone,
            citizens: zip_counts(zips, &changed),
            truncated: map.truncated,
            stats,
        };
        s.stats = Some(delta.stats.clone());
        delta
    }

    /// The last sample whole, as JSON, with its number; the number alone while the map
    /// is forgotten.
    fn snapshot(&self, ctx: &Context) -> (u64, Option<String>) {
        let s = self.sample();
        if !s.fresh {
            return (s.seq, None);
        }
        let citizens: Vec<(ZipId, u32)> = s.citizens.iter().map(|(&z, &n)| (z, n)).collect();
        let snap = LiveSnapshot {
            seq: s.seq,
            officers: s.officers.values().cloned().collect(),
            citizens: zip_counts(&ctx.zips, &citizens),
            truncated: s.truncated,
            stats: s.stats.clone().unwrap_or_else(|| stats_of(ctx)),
        };
        (
            s.seq,
            Some(serde_json::to_string(&snap).expect("snapshots serialise")),
        )
    }
}

/// One watcher's side of the feed.
struct Watcher {
    watching: Watching,
    rx: broadcast::Receiver<Update>,
    /// The last sample sent (whole or as a delta).
    seq: u64,
    /// The whole map, to be sent next.
    snapshot: Option<String>,
    /// Whether the whole map was sent (deltas only follow it).
    started: bool,
    ctx: Arc<Context>,
}

impl Watcher {
    /// The next event; `None` when the server stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(snap) = self.snapshot.take() {
                self.started = true;
                return Some(Event::default().event("snapshot").data(snap));
            }
            let update = match self.rx.recv().await {
                Ok(u) => u,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    metrics::counter!("admin_live_resyncs_total").increment(1);
                    self.resync();
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            match update.0 {
                CLOSED => return None,
                n if n <= self.seq => {}
                // Nothing sent yet (the map was forgotten when this watcher came): the
                // map is sampled now; send it whole.
                _ if !self.started => self.resync(),
                n => {
                    self.seq = n;
                    return Some(Event::default().event("delta").data(update.1.as_str()));
                }
            }
        }
    }

    /// Takes the map whole as it is now: first a fresh place in the queue (what it held
    /// is older than the map), then the map, so no later update is missed.
    fn resync(&mut self) {
        self.rx = self.rx.resubscribe();
        let (seq, snap) = self.watching.0.snapshot(&self.ctx);
        self.seq = seq;
        self.snapshot = snap;
    }
}

/// Releases a watcher's slot when its stream ends.
struct Watching(Arc<LiveFeed>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /admin/v1/live`: the live feed of the map and the counters, as Server-Sent Events:
/// first `event: snapshot` (a [`LiveSnapshot`]), then an `event: delta` (a [`LiveDelta`])
/// every `admin.live_interval_ms`; a watcher that fell behind gets a `snapshot` again.
#[utoipa::path(
    get,
    path = "/admin/v1/live",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream: `snapshot` (LiveSnapshot), then `delta` (LiveDelta) events", content_type = "text/event-stream", body = LiveDelta),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Wrong role", body = ErrorBody),
        (status = 503, description = "too_many_watchers: admin.live_max_watchers feeds are open on this node", body = ErrorBody),
    )
)]
pub async fn live(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Role::Admin)?;
    let feed = st.live.clone();
    let max = st.ctx.settings.admin.live_max_watchers;
    if feed
        .watchers
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        metrics::counter!("admin_live_refused_total").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watchers",
            format!("{max} live feeds are open on this node (admin.live_max_watchers)"),
        ));
    }
    let watching = Watching(feed.clone());
    feed.started
        .get_or_init(|| drop(tokio::spawn(feed.clone().run(st.ctx.clone()))));
    feed.wake.notify_one();
    let rx = feed.tx.subscribe();
    let (seq, snapshot) = feed.snapshot(&st.ctx);
    let watcher = Watcher {
        watching,
        rx,
        seq,
        snapshot,
        started: false,
        ctx: st.ctx.clone(),
    };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move {
        let ev = w.next().await?;
        Some((Ok(ev), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::geo::ZipTable;
    use crate::store::Store;

    async fn ctx() -> Arc<Context> {
        let dir = std::env::temp_dir().join(format!("heyblue-live-{}", uuid::Uuid::new_v4()));
        let store = Store::connect(&format!("sqlite://{}/t.db?mode=rwc", dir.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Context::start(Settings::defaults(), Arc::new(ZipTable::embedded()), store)
            .await
            .unwrap()
    }

    fn name(e: &Event) -> String {
        // The event's wire form starts with its name.
        format!("{e:?}")
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_the_whole_map_again() {
        let ctx = ctx().await;
        let feed = LiveFeed::new(1);
        let map = |ids: &[&str]| crate::cluster::MapData {
            officers: ids
                .iter()
                .map(|id| AvailableOfficer {
                    officer_id: (*id).into(),
                    display_name: "N".into(),
                    lat: 40.75,
                    lon: -73.99,
                    zip: "10001".into(),
                    window_ends_at: chrono::Utc::now(),
                })
                .collect(),
            citizens: vec![],
            truncated: false,
        };
        let publish = |ids: &[&str]| {
            let d = feed.apply(map(ids), stats_of(&ctx), &ctx.zips);
            let json = serde_json::to_string(&d).unwrap();
            let _ = feed.tx.send(Arc::new((d.seq, json)));
        };
        publish(&["o1"]);
        feed.watchers.fetch_add(1, Ordering::AcqRel);
        let (seq, snapshot) = feed.snapshot(&ctx);
        let mut w = Watcher {
            watching: Watching(feed.clone()),
            rx: feed.tx.subscribe(),
            seq,
            snapshot,
            started: false,
            ctx: ctx.clone(),
        };
        assert!(name(&w.next().await.unwrap()).contains("snapshot"));
        publish(&["o1", "o2"]);
        assert!(name(&w.next().await.unwrap()).contains("delta"));
        // Three updates while it reads none, with room for one: it lagged.
        publish(&["o2"]);
        publish(&["o2", "o3"]);
        publish(&["o3"]);
        let again = w.next().await.unwrap();
        assert!(name(&again).contains("snapshot"), "{again:?}");
        assert!(name(&again).contains("o3") && !name(&again).contains("o1"));
        assert_eq!(w.seq, 5);
        // Then deltas again, from where the snapshot was.
        publish(&["o4"]);
        let next = w.next().await.unwrap();
        assert!(
            name(&next).contains("delta") && name(&next).contains("o4"),
            "{next:?}"
        );
    }
}

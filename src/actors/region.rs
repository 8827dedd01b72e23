//! `RegionActor`: one per zip. It owns a *derived* index of the available officers whose
//! position lies in its cell, and the search circles of the citizens watching it.
//!
//! Invariants:
//! * the index only holds officers whose sessions told it so (`Upsert`) and not since
//!   `Remove`d; it is never the truth — after a crash it is rebuilt from the sessions;
//! * a watcher is told of a change (through its [`PushSignal`]) only when the changed
//!   officer's old or new position lies inside the watcher's circle, and at most once until
//!   the watcher consumes the signal;
//! * the actor is the index's only writer; readers take the shared lock and register
//!   their watch afterwards with the version they read (`Watch`), which is signalled at once
//!   if the index changed in between;
//! * the actor never awaits another actor: it only answers calls and casts signals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use smallvec::SmallVec;

use super::session::PushSignal;
use crate::geo::index::OfficerKey;
use crate::geo::{LatLon, Nearby, OfficerIndex, ZipId};
use crate::protocol::OfficerCard;

/// What a region keeps about each available officer, shared: every answer naming the
/// officer holds it, and a clone is one reference count. (Three counts — id, name, card —
/// were most of what taking an officer into an answer cost: each is a cache line that
/// the cores hand between them as they answer citizens around the same officers.)
#[derive(Debug, Clone)]
pub struct OfficerData(Arc<OfficerInfo>);

/// The fields of [`OfficerData`].
#[derive(Debug)]
pub struct OfficerInfo {
    /// Display name.
    pub display_name: Arc<str>,
    /// End of the availability window.
    pub expires_at: DateTime<Utc>,
    /// The officer session that published the entry; only it may remove it.
    pub session_id: u64,
    /// Id, name and zip code as the officer's entry in a `nearby` frame writes them.
    pub card: OfficerCard,
}

impl std::ops::Deref for OfficerData {
    type Target = OfficerInfo;
    fn deref(&self) -> &OfficerInfo {
        &self.0
    }
}

impl OfficerData {
    /// The data of officer `id` in the region whose code is `zip_code`.
    pub fn new(
        id: &str,
        display_name: Arc<str>,
        expires_at: DateTime<Utc>,
        session_id: u64,
        zip_code: &str,
    ) -> Self {
        Self(Arc::new(OfficerInfo {
            card: OfficerCard::new(id, &display_name, zip_code),
            display_name,
            expires_at,
            session_id,
        }))
    }
}

/// An officer update from its session.
#[derive(Debug, Clone)]
pub struct OfficerUpdate {
    /// Account id.
    pub id: OfficerKey,
    /// Position.
    pub pos: LatLon,
    /// Payload.
    pub data: OfficerData,
}

/// A citizen watching a region: the session and its signal, which carries the search
/// circle (shared by all the regions the citizen watches; see [`PushSignal`]).
#[derive(Debug, Clone)]
pub struct Watch {
    /// The citizen session.
    pub session_id: u64,
    /// How to tell the session its result may have changed, and its circle.
    pub signal: Arc<PushSignal>,
}

/// Messages of a region.
pub enum RegionMsg {
    /// Insert or move an available officer.
    Upsert(OfficerUpdate),
    /// An officer left (closed, unavailable, expired or moved to another region). Ignored
    /// unless the entry was published by this session id (a replaced session must not
    /// remove its successor's entry).
    Remove(OfficerKey, u64),
    /// The `k` nearest officers within `radius_m` of `at` (citizens read the shared index
    /// directly; this is the same answer through the mailbox).
    Query {
        /// Centre.
        at: LatLon,
        /// Radius.
        radius_m: f64,
        /// Count.
        k: usize,
        /// Answer.
        reply: RpcReplyPort<Vec<Nearby<OfficerData>>>,
    },
    /// Registers a watcher that read the index at the given version.
    Watch(Watch, u64),
    /// A citizen no longer watches this region.
    Unwatch(u64),
    /// One officer's entry, if indexed here.
    Officer(OfficerKey, RpcReplyPort<Option<(LatLon, OfficerData)>>),
    /// The region's own state, for the admin API and tests.
    Snapshot(RpcReplyPort<RegionSnapshot>),
    /// Fault injection: panics inside the handler (tests prove supervision with it).
    Crash,
}

/// A serialisable view of one region.
#[derive(Debug, Clone, Serialize)]
pub struct RegionSnapshot {
    /// The zip code.
    pub zip: String,
    /// Available officers.
    pub officers: Vec<OfficerView>,
    /// Watching citizen sessions.
    pub citizens_watching: usize,
    /// The same count, under the name the admin dashboard reads.
    pub citizens: usize,
    /// Times this region was restarted after a failure.
    pub restarts: u64,
}

/// One officer in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct OfficerView {
    /// Account id.
    pub officer_id: String,
    /// Display name.
    pub display_name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Window end.
    pub window_ends_at: String,
    /// Always `available` (only available officers are indexed).
    pub status: &'static str,
}

/// A region's index, shared with readers: the actor alone writes it (bumping `version`
/// on every change); citizens read it under the lock without a message.
pub struct Indexed {
    /// The officers of the region.
    pub index: OfficerIndex<OfficerData>,
    /// Changes so far.
    pub version: u64,
}

/// Officers indexed in each zip, one dense array for the node: a citizen's walk tests
/// a dozen regions for officers, and most hold none — adjacent counters share cache
/// lines, where a count kept in each region's index was a cache miss per region.
pub type Occupancy = Arc<[AtomicU32]>;

/// A region's index as readers see it: one per zip for the life of the node (a restarted
/// region clears it), so readers reach it without a lock on the slot.
pub struct RegionIndex {
    indexed: RwLock<Indexed>,
    /// `occupancy[zip]`: officers indexed, stored (`SeqCst`) after every change and before
    /// watchers are tested: a watcher that reads 0 there needs no lock (see
    /// `Regions::nearby`).
    occupancy: Occupancy,
    zip: ZipId,
}

impl RegionIndex {
    /// An empty index for region `zip`, whose centroid is `centroid`, counting its
    /// officers in `occupancy`.
    pub fn new(centroid: LatLon, occupancy: Occupancy, zip: ZipId) -> Self {
        Self {
            indexed: RwLock::new(Indexed {
                index: OfficerIndex::new(centroid),
                version: 0,
            }),
            occupancy,
            zip,
        }
    }

    /// Takes the read lock (a panic while a writer held it leaves nothing half-written
    /// that a reader could see: a failed region clears its index when it restarts).
    pub fn read(&self) -> RwLockReadGuard<'_, Indexed> {
        self.indexed.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexed> {
        self.indexed.write().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_count(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.occupancy[self.zip as usize].store(n, Ordering::SeqCst);
    }
}

/// The shared form of a region's index.
pub type SharedIndex = Arc<RegionIndex>;

/// Arguments of a region.
pub struct RegionArgs {
    /// Its index, created by the directory so readers can find it.
    pub shared: SharedIndex,
    /// Which zip.
    pub zip: ZipId,
    /// Its code.
    pub code: Arc<str>,
    /// Its centroid.
    pub centroid: LatLon,
    /// Restarts so far.
    pub restarts: u64,
}

/// State of a region.
pub struct RegionState {
    code: Arc<str>,
    shared: SharedIndex,
    watchers: HashMap<u64, Arc<PushSignal>>,
    restarts: u64,
}

impl RegionState {
    fn read(&self) -> RwLockReadGuard<'_, Indexed> {
        self.shared.read()
    }

    /// Applies a change to the index: bumps the version and publishes the count.
    fn change<R>(&self, f: impl FnOnce(&mut OfficerIndex<OfficerData>) -> (R, bool)) -> R {
        let mut w = self.shared.write();
        let (r, changed) = f(&mut w.index);
        if changed {
            w.version += 1;
        }
        let n = w.index.len();
        drop(w);
        self.shared.publish_count(n);
        r
    }

    fn notify(&mut self, changed: &[LatLon]) {
        // Once per change, not once per watcher: the test per watcher is a dot product.
        let units: SmallVec<[[f64; 3]; 2]> = changed.iter().map(|p| p.unit()).collect();
        // A watcher whose session is gone is dropped here.
        self.watchers
            .retain(|_, w| !w.covers_any(&units) || w.raise());
    }
}

/// The region actor.
pub struct RegionActor;

impl Actor for RegionActor {
    type Msg = RegionMsg;
    type State = RegionState;
    type Arguments = RegionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RegionArgs,
    ) -> Result<RegionState, ActorProcessingErr> {
        metrics::gauge!("region_actors_alive").increment(1.0);
        let st = RegionState {
            code: args.code,
            shared: args.shared,
            watchers: HashMap::new(),
            restarts: args.restarts,
        };
        // A restarted region starts empty; its officers' sessions publish again.
        st.change(|index| {
            *index = OfficerIndex::new(args.centroid);
            ((), true)
        });
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: RegionMsg,
        st: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegionMsg::Upsert(u) => {
                let r = st.change(|index| {
                    let r = index.upsert(u.id.clone(), u.pos, u.data);
                    let changed = r.is_ok();
                    (r, changed)
                });
                match r {
                    Ok(Some(old)) => st.notify(&[old, u.pos]),
                    Ok(None) => st.notify(&[u.pos]),
                    Err(e) => {
                        tracing::warn!(zip = %st.code, officer = %u.id, "upsert refused: {e}")
                    }
                }
            }
            RegionMsg::Remove(id, session) => {
                let removed = st.change(|index| {
                    let owned = index.get(&id).is_some_and(|(_, d)| d.session_id == session);
                    let old = if owned { index.remove(&id) } else { None };
                    let changed = old.is_some();
                    (old, changed)
                });
                if let Some(old) = removed {
                    st.notify(&[old]);
                }
            }
            RegionMsg::Query {
                at,
                radius_m,
                k,
                reply,
            } => {
                // The asker may have timed out and gone; nothing to do then.
                let _ = reply.send(st.read().index.nearest_within(at, radius_m, k));
            }
            RegionMsg::Watch(w, seen) => {
                // The watcher read the index at version `seen`: a change since then that it
                // did not see is signalled now.
                if st.read().version != seen {
                    w.signal.raise();
                }
                st.watchers.insert(w.session_id, w.signal);
            }
            RegionMsg::Unwatch(session) => {
                st.watchers.remove(&session);
            }
            RegionMsg::Officer(id, reply) => {
                let found = st.read().index.get(&id).map(|(p, d)| (p, d.clone()));
                let _ = reply.send(found);
            }
            RegionMsg::Snapshot(reply) => {
                let officers = st
                    .read()
                    .index
                    .iter()
                    .map(|(id, pos, d)| OfficerView {
                        officer_id: id.to_string(),
                        display_name: d.display_name.to_string(),
                        lat: pos.lat,
                        lon: pos.lon,
                        window_ends_at: d
                            .expires_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        status: "available",
                    })
                    .collect();
                let _ = reply.send(RegionSnapshot {
                    zip: st.code.to_string(),
                    officers,
                    citizens_watching: st.watchers.len(),
                    citizens: st.watchers.len(),
                    restarts: st.restarts,
                });
            }
            RegionMsg::Crash => panic!("injected region failure in {}", st.code),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _st: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("region_actors_alive").decrement(1.0);
        Ok(())
    }
}

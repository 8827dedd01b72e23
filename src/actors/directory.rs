//! [`Regions`], the handle sessions use to reach regions (the supervisor of the region
//! actors, `RegionDirectory`, is in [`super::supervisor`]).
//!
//! Invariants:
//! * at most one live region actor per zip; its ref is published in a slot table so that
//!   sessions reach it without a round trip through the directory (only first use does);
//! * a region that fails is restarted at once (one-for-one), the restart is counted, and
//!   every live session of the node is told to resend what the region derived from it
//!   (officers in that zip re-publish, citizens watching it re-query); failures are rare,
//!   so one broadcast beats keeping per-zip membership for every session.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};

use super::region::{OfficerData, OfficerUpdate, RegionMsg, RegionSnapshot, SharedIndex};
use super::region_index::{Occupancy, Watch};
use crate::context::Sessions;
use crate::geo::index::OfficerKey;
use crate::geo::{LatLon, Nearby, ZipId, ZipTable};

/// Errors reaching a region.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegionError {
    /// The region did not answer in time.
    #[error("region {0} timed out")]
    Timeout(String),
    /// The region (or the directory) is gone, e.g. during shutdown or a restart.
    #[error("region {0} is unavailable")]
    Unavailable(String),
}

/// One available officer, as the admin map shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AvailableOfficer {
    /// Account id.
    pub officer_id: String,
    /// Display name.
    pub display_name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// The officer's region.
    pub zip: String,
    /// When the availability window ends (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub window_ends_at: chrono::DateTime<chrono::Utc>,
}

/// Regions this node does not own, in a cluster: their officers are read from their owners.
/// A node running alone has none.
pub trait RemoteRegions: Send + Sync {
    /// Whether `zip` is owned by another node (read through [`RemoteRegions::read`]).
    fn is_remote(&self, zip: ZipId) -> bool;
    /// The `k` nearest officers within `radius_m` of `at` in the remote regions `zips`,
    /// nearest first (ties by id). Regions whose owner cannot be reached after the
    /// configured retries are left out (and counted): an answer arrives in bounded time.
    fn read<'a>(
        &'a self,
        at: LatLon,
        radius_m: f64,
        k: usize,
        zips: Vec<ZipId>,
    ) -> futures_util::future::BoxFuture<'a, Vec<Nearby<OfficerData>>>;
    /// A region of this node changed at `points` (an officer's old and new position):
    /// the owner's side of pushes across nodes. Never blocks.
    fn changed(&self, zip: ZipId, points: &[LatLon]);
    /// A session here watches `zip`, which is owned elsewhere: its changes must reach
    /// this node's region actor for `zip` from now on. Returns whether they already do
    /// (a first interest starts receiving them and answers false).
    fn interest(&self, zip: ZipId) -> bool;
}

/// Where the cluster, if any, plugs in; set once.
pub type RemoteSlot = Arc<OnceLock<Arc<dyn RemoteRegions>>>;

pub(super) struct Slots {
    pub(super) refs: Vec<RwLock<Option<ActorRef<RegionMsg>>>>,
    /// Set when the zip's region is first spawned, kept across its restarts.
    pub(super) indexes: Vec<OnceLock<SharedIndex>>,
    /// Officers per zip, as each region's index publishes them.
    pub(super) occupancy: Occupancy,
    pub(super) restarts: Vec<AtomicU64>,
    /// Citizen sessions whose position is in each zip (the admin map's counts).
    pub(super) citizens: Vec<AtomicU32>,
    pub(super) remote: RemoteSlot,
}

/// Whether a region actor takes messages. A region just spawned is `Starting` until its
/// task runs (ractor marks it `Running` after `spawn` returns): it is alive, and its
/// mailbox keeps what is cast meanwhile. Replacing it then made a second region whose
/// start emptied the shared index under the first one's officers.
pub(super) fn alive(r: &ActorRef<RegionMsg>) -> bool {
    ractor::ACTIVE_STATES.contains(&r.get_status())
}

/// Handle to the regions: lookups, casts and calls with the timeout inside.
#[derive(Clone)]
pub struct Regions {
    zips: Arc<ZipTable>,
    slots: Arc<Slots>,
    directory: ActorRef<DirectoryMsg>,
    timeout: Duration,
}

impl Regions {
    /// Starts the directory; regions are spawned on first use.
    pub async fn start(
        zips: Arc<ZipTable>,
        sessions: Arc<Sessions>,
        timeout: Duration,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
        let slots = Arc::new(Slots {
            refs: (0..zips.len()).map(|_| RwLock::new(None)).collect(),
            indexes: (0..zips.len()).map(|_| OnceLock::new()).collect(),
            occupancy: (0..zips.len()).map(|_| AtomicU32::new(0)).collect(),
            restarts: (0..zips.len()).map(|_| AtomicU64::new(0)).collect(),
            citizens: (0..zips.len()).map(|_| AtomicU32::new(0)).collect(),
            remote: Arc::default(),
        });
        let (directory, join) = Actor::spawn(
            None,
            RegionDirectory,
            DirectoryArgs {
                zips: zips.clone(),
                slots: slots.clone(),
                sessions,
            },
        )
        .await?;
        Ok((
            Self {
                zips,
                slots,
                directory,
                timeout,
            },
            join,
        ))
    }

    /// Makes `nearby` read the regions `remote` names from their owners (cluster mode;
    /// set once, before sessions open).
    pub fn set_remote(&self, remote: Arc<dyn RemoteRegions>) {
        let _ = self.slots.remote.set(remote);
    }

    /// The `k` nearest officers within `radius_m` of `at` in `zips` as indexed here (the
    /// owner's side of a cross-node read), nearest first.
    pub fn read_local(
        &self,
        zips: &[ZipId],
        at: LatLon,
        radius_m: f64,
        k: usize,
    ) -> Vec<Nearby<OfficerData>> {
        let mut best = Vec::with_capacity(k);
        for &z in zips {
            if (z as usize) < self.zips.len() {
                self.read_into(z, at, radius_m, k, &mut best, false);
            }
        }
        best
    }

    /// The available officers indexed on this node in the regions `keep` accepts, from
    /// `cursor` on (a zip and how many of its officers were already taken; `(0, 0)` to
    /// start), at most `limit`; and the cursor of the rest, if there is more.
    pub fn officers(
        &self,
        cursor: (ZipId, usize),
        limit: usize,
        keep: impl Fn(ZipId) -> bool,
    ) -> (Vec<AvailableOfficer>, Option<(ZipId, usize)>) {
        let mut out = Vec::new();
        let (first, mut skip) = cursor;
        for (z, slot) in self.slots.indexes.iter().enumerate().skip(first as usize) {
            let Some(index) = slot.get() else {
                skip = 0;
                continue;
            };
            if index.occupied() == 0 || !keep(z as ZipId) {
                skip = 0;
                continue;
            }
            let code = &self.zips.get(z as ZipId).code;
            for (i, (id, pos, d)) in index.read().index.iter().enumerate().skip(skip) {
                if out.len() == limit {
                    return (out, Some((z as ZipId, i)));
                }
                out.push(AvailableOfficer {
                    officer_id: id.to_string(),
                    display_name: d.display_name.to_string(),
                    lat: pos.lat,
                    lon: pos.lon,
                    zip: code.to_string(),
                    window_ends_at: d.expires_at,
                });
            }
            skip = 0;
        }
        (out, None)
    }

    /// A citizen session's position entered (`true`) or left `zip`.
    pub fn citizen_in(&self, zip: ZipId, entered: bool) {
        let n = &self.slots.citizens[zip as usize];
        if entered {
            n.fetch_add(1, Ordering::Relaxed);
        } else {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Citizen sessions per zip, the zips that have any (never a citizen's position).
    pub fn citizens_by_zip(&self) -> Vec<(ZipId, u32)> {
        self.slots
            .citizens
            .iter()
            .enumerate()
            .filter_map(|(z, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then_some((z as ZipId, n))
            })
            .collect()
    }

    /// The zip table.
    pub fn zips(&self) -> &Arc<ZipTable> {
        &self.zips
    }

    fn code(&self, zip: ZipId) -> String {
        self.zips.get(zip).code.to_string()
    }

    /// The live region actor of `zip`, if it was ever used.
    pub fn get(&self, zip: ZipId) -> Option<ActorRef<RegionMsg>> {
        self.slots.refs[zip as usize]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The region actor of `zip`, spawning it on first use (or replacing one that died
    /// and whose restart is still on its way).
    pub async fn ensure(&self, zip: ZipId) -> Result<ActorRef<RegionMsg>, RegionError> {
        if let Some(r) = self.get(zip)
            && alive(&r)
        {
            return Ok(r);
        }
        match self
            .directory
            .call(|reply| DirectoryMsg::Ensure(zip, reply), Some(self.timeout))
            .await
        {
            Ok(CallResult::Success(Some(r))) => Ok(r),
            Ok(CallResult::Timeout) => Err(RegionError::Timeout(self.code(zip))),
            _ => Err(RegionError::Unavailable(self.code(zip))),
        }
    }

    /// Number of region actors alive.
    pub fn alive(&self) -> usize {
        self.slots
            .refs
            .iter()
            .filter(|s| s.read().map(|r| r.is_some()).unwrap_or(false))
            .count()
    }

    /// Restarts of `zip` so far.
    pub fn restarts(&self, zip: ZipId) -> u64 {
        self.slots.restarts[zip as usize].load(Ordering::Relaxed)
    }

    /// Inserts or moves an officer in `zip`'s index.
    pub async fn upsert(
        &self,
        zip: ZipId,
        id: OfficerKey,
        pos: LatLon,
        data: OfficerData,
    ) -> Result<(), RegionError> {
        let r = self.ensure(zip).await?;
        r.cast(RegionMsg::Upsert(OfficerUpdate { id, pos, data }))
            .map_err(|_| RegionError::Unavailable(self.code(zip)))
    }

    /// Removes an officer from `zip`'s index (a no-op where it is not indexed).
    pub fn remove(&self, zip: ZipId, id: OfficerKey, session_id: u64) {
        if let Some(r) = self.get(zip) {
            // A region that is gone holds nobody; its replacement is rebuilt from sessions.
            let _ = r.cast(RegionMsg::Remove(id, session_id));
        }
    }

    /// Stops watching `zip`.
    pub fn unwatch(&self, zip: ZipId, w: &Watch) {
        if let Some(r) = self.get(zip) {
            // As above: a replacement region starts without this watcher. The signal
            // travels with the message, so its address cannot be reused meanwhile.
            let _ = r.cast(RegionMsg::Unwatch(w.clone()));
        }
    }

    /// The `k` nearest officers within `radius_m` of `at` over every region, exactly. The
    /// regions the circle touches are read nearest first, and once `k` officers are found
    /// the circle shrinks to the `k`-th (`ZipTable::walk_touching`): in a city only the
    /// regions near the answer are read, not the dozens a 2 km circle touches.
    ///
    /// With `watch` (the watcher and the regions it watches already), the watcher's circle
    /// is the whole radius while the regions are read and the shrunk one after — a change
    /// outside that cannot change the answer (an officer of the answer that leaves is inside
    /// it, and signals its departure; see [`super::region_index`]) — and
    /// regions read that it did not watch yet are told to, with the version read.
    /// Returns the answer, the regions read (the set to watch) and the last radius.
    pub async fn nearby(
        &self,
        at: LatLon,
        own: ZipId,
        d0: f64,
        radius_m: f64,
        k: usize,
        watch: Option<(&Watch, &[ZipId])>,
    ) -> Result<(Vec<Nearby<OfficerData>>, Vec<ZipId>, f64), RegionError> {
        let centre = at.unit();
        if let Some((w, _)) = watch {
            w.signal.set_circle(centre, radius_m);
        }
        // Regions that need no watch registered (none asked, or watched already) are only
        // peeked at; the others are read with their version and told to watch below.
        let needs_watch = |z: ZipId| watch.is_some_and(|(_, watched)| !watched.contains(&z));
        // Sized once: about a dozen regions in a city, and never more than k officers.
        let mut best = Vec::with_capacity(k);
        let mut touching = Vec::with_capacity(16);
        let mut to_watch = Vec::new();
        // In a cluster, the regions owned elsewhere are read in place too (an officer whose
        // session is still here during a handoff stays visible), noted, and asked from
        // their owners once the walk is done: only those touching its last circle can hold
        // one of the k nearest, as for the regions read here.
        let remote = self.slots.remote.get();
        let mut far = Vec::new();
        let reach = self.zips.walk_touching(centre, own, d0, radius_m, |z, r| {
            touching.push(z);
            let watch_it = needs_watch(z);
            let mut version = self.read_into(z, at, r, k, &mut best, watch_it);
            if let Some(remote) = remote.filter(|rm| rm.is_remote(z)) {
                far.push(z);
                // The version was read before the owner is asked: its changes published
                // since bump it, and the watch is told of them. Before this node receives
                // the unit's changes at all, the watch is told at once (u64::MAX matches
                // no version) and reads again.
                if watch_it && !remote.interest(z) {
                    version = u64::MAX;
                }
            }
            if watch_it {
                to_watch.push((z, version));
            }
            if k > 0 && best.len() >= k {
                best[k - 1].distance_m.min(r)
            } else {
                r
            }
        });
        if let Some(remote) = remote
            && !far.is_empty()
        {
            let theirs = remote.read(at, reach, k, far).await;
            best = crate::geo::index::merge_nearest([best, theirs], k);
        }
        if let Some((w, _)) = watch {
            w.signal.set_circle(centre, reach);
            for (z, version) in to_watch {
                let region = self.ensure(z).await?;
                region
                    .cast(RegionMsg::Watch(w.clone(), version))
                    .map_err(|_| RegionError::Unavailable(self.code(z)))?;
            }
        }
        Ok((best, touching, reach))
    }

    /// Tells this node's watchers of `zip` (a region owned elsewhere) that its owner
    /// changed it at `points`; spawns the local region if needed, so its version moves.
    pub async fn remote_changed(&self, zip: ZipId, points: Vec<LatLon>) {
        if let Ok(r) = self.ensure(zip).await {
            let _ = r.cast(RegionMsg::RemoteChanged(points));
        }
    }

    /// Makes this node's watchers of `zip` read again (changes of its owner may have
    /// been missed).
    pub fn resync(&self, zip: ZipId) {
        if let Some(r) = self.get(zip) {
            let _ = r.cast(RegionMsg::Resync);
        }
    }

    /// Merges `zip`'s answer into `best` without spawning its region (one never spawned
    /// holds nobody, at version 0, where its index starts); returns the version read.
    fn read_into(
        &self,
        zip: ZipId,
        at: LatLon,
        radius_m: f64,
        k: usize,
        best: &mut Vec<Nearby<OfficerData>>,
        want_version: bool,
    ) -> u64 {
        match self.slots.indexes[zip as usize].get() {
            Some(index) => index.read_into(at, radius_m, k, best, want_version),
            None => 0,
        }
    }

    /// The region's snapshot (spawning it if never used).
    pub async fn snapshot(&self, zip: ZipId) -> Result<RegionSnapshot, RegionError> {
        let mut snap = self.call(zip, RegionMsg::Snapshot).await?;
        snap.restarts = self.restarts(zip);
        Ok(snap)
    }

    /// Calls a region with the timeout inside. A region that died between lookup and call
    /// is looked up once more (its replacement is spawned by then or by that lookup).
    async fn call<T: Send + 'static>(
        &self,
        zip: ZipId,
        msg: impl Fn(RpcReplyPort<T>) -> RegionMsg,
    ) -> Result<T, RegionError> {
        for attempt in 0..2 {
            let r = self.ensure(zip).await?;
            match r.call(&msg, Some(self.timeout)).await {
                Ok(CallResult::Success(v)) => return Ok(v),
                Ok(CallResult::Timeout) => {
                    metrics::counter!("region_call_timeouts_total").increment(1);
                    return Err(RegionError::Timeout(self.code(zip)));
                }
                _ if attempt == 0 => continue,
                _ => {}
            }
        }
        Err(RegionError::Unavailable(self.code(zip)))
    }

    /// Makes `zip`'s region panic (fault injection for supervision tests).
    pub fn crash(&self, zip: ZipId) -> bool {
        self.get(zip)
            .map(|r| r.cast(RegionMsg::Crash).is_ok())
            .unwrap_or(false)
    }

    /// Stops the directory and every region.
    pub fn stop(&self) {
        self.directory.stop(None);
    }
}

pub use super::supervisor::{DirectoryArgs, DirectoryMsg, DirectoryState, RegionDirectory};

//! `RegionActor`: one per zip. It owns a *derived* index of the available officers whose
//! position lies in its cell, and the search circles of the citizens watching it.
//!
//! Invariants:
//! * the index only holds officers whose sessions told it so (`Upsert`) and not since
//!   `Remove`d; it is never the truth — after a crash it is rebuilt from the sessions;
//! * a watcher is told of a change (through its `PushSignal`) only when the changed
//!   officer's old or new position lies inside the watcher's circle, and at most once until
//!   the watcher consumes the signal;
//! * the actor is the index's only writer, through its [`RegionCore`]; readers read the
//!   index in place and register their watch afterwards with the version they read (the
//!   handshake and its ordering argument are in [`super::region_index`]);
//! * the actor never awaits another actor: it only answers calls and casts signals.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use super::directory::RemoteSlot;
use super::region_index::{RegionCore, RegionIndex, Watch};
use crate::geo::index::OfficerKey;
use crate::geo::{LatLon, ZipId};
use crate::protocol::OfficerCard;

/// What a region keeps about each available officer, shared: every answer naming the
/// officer holds it, and a clone is one reference count. One, not one per field: each
/// count is a cache line the cores hand between them as they answer citizens around the
/// same officers, and separate counts for id, name and card dominated taking an officer
/// into an answer.
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

/// Messages of a region.
pub enum RegionMsg {
    /// Insert or move an available officer.
    Upsert(OfficerUpdate),
    /// An officer left (closed, unavailable, expired or moved to another region). Ignored
    /// unless the entry was published by this session id (a replaced session must not
    /// remove its successor's entry).
    Remove(OfficerKey, u64),
    /// Registers a watcher that read the index at the given version.
    Watch(Watch, u64),
    /// A citizen no longer watches this region.
    Unwatch(Watch),
    /// The region's own state, for the admin API and tests.
    Snapshot(RpcReplyPort<RegionSnapshot>),
    /// Another node, the region's owner, changed it at these positions (cluster mode: this
    /// actor then only holds the watchers of this node's sessions).
    RemoteChanged(Vec<LatLon>),
    /// The owner's changes may have been missed: every watcher reads again.
    Resync,
    /// Fault injection: panics inside the handler (tests prove supervision with it).
    Crash,
}

/// A serialisable view of one region.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// A region's index as readers share it.
pub type SharedIndex = Arc<RegionIndex<OfficerData>>;

/// Arguments of a region.
pub struct RegionArgs {
    /// Its index, created by the directory so readers can find it.
    pub shared: SharedIndex,
    /// Its code.
    pub code: Arc<str>,
    /// Its centroid.
    pub centroid: LatLon,
    /// Restarts so far.
    pub restarts: u64,
    /// The cluster, if any: told of every change, for the other nodes' watchers.
    pub remote: RemoteSlot,
}

/// State of a region.
pub struct RegionState {
    code: Arc<str>,
    zip: ZipId,
    remote: RemoteSlot,
    core: RegionCore<OfficerData>,
    restarts: u64,
}

impl RegionState {
    /// Tells the cluster, if any, of a change (it publishes it for the other nodes when this
    /// node owns the region).
    fn publish(&self, changed: &[LatLon]) {
        if let Some(remote) = self.remote.get() {
            remote.changed(self.zip, changed);
        }
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
        Ok(RegionState {
            zip: args.shared.zip(),
            remote: args.remote,
            code: args.code,
            core: RegionCore::new(args.shared, args.centroid),
            restarts: args.restarts,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: RegionMsg,
        st: &mut RegionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegionMsg::Upsert(u) => match st.core.upsert(u.id.clone(), u.pos, u.data) {
                Ok(changed) => st.publish(&changed),
                Err(e) => tracing::warn!(zip = %st.code, officer = %u.id, "upsert refused: {e}"),
            },
            RegionMsg::Remove(id, session) => {
                if let Some(old) = st.core.remove(&id, |d| d.session_id == session) {
                    st.publish(&[old]);
                }
            }
            RegionMsg::RemoteChanged(points) => st.core.remote_changed(&points),
            RegionMsg::Resync => st.core.resync(),
            RegionMsg::Watch(w, seen) => st.core.watch(w, seen),
            RegionMsg::Unwatch(w) => st.core.unwatch(&w),
            RegionMsg::Snapshot(reply) => {
                let officers = st
                    .core
                    .index()
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
                let watching = st.core.watchers();
                // The asker may have timed out and gone; nothing to do then.
                let _ = reply.send(RegionSnapshot {
                    zip: st.code.to_string(),
                    officers,
                    citizens_watching: watching,
                    citizens: watching,
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

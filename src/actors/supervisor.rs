//! `RegionDirectory`: the supervisor of every region actor. It spawns a zip's region on
//! first use, publishes its ref in the slot table, restarts it when it fails (counting the
//! restart) and asks the node's sessions to resend what the region derived from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::directory::{Slots, alive};
use super::region::{RegionActor, RegionArgs, RegionMsg};
use super::region_index::RegionIndex;
use super::session::{SessionMsg, tell};
use crate::context::Sessions;
use crate::geo::{ZipId, ZipTable};

/// Messages of the directory.
pub enum DirectoryMsg {
    /// The region of a zip, spawned if needed (`None` if it cannot be spawned).
    Ensure(ZipId, RpcReplyPort<Option<ActorRef<RegionMsg>>>),
}

/// Arguments of the directory.
pub struct DirectoryArgs {
    pub(super) zips: Arc<ZipTable>,
    pub(super) slots: Arc<Slots>,
    pub(super) sessions: Arc<Sessions>,
}

/// State of the directory.
pub struct DirectoryState {
    zips: Arc<ZipTable>,
    slots: Arc<Slots>,
    sessions: Arc<Sessions>,
    by_actor: HashMap<ActorId, ZipId>,
}

/// The supervisor of the region actors.
pub struct RegionDirectory;

impl RegionDirectory {
    async fn spawn_region(
        myself: &ActorRef<DirectoryMsg>,
        st: &mut DirectoryState,
        zip: ZipId,
    ) -> Option<ActorRef<RegionMsg>> {
        let z = st.zips.get(zip);
        let shared = st.slots.indexes[zip as usize]
            .get_or_init(|| {
                Arc::new(RegionIndex::new(
                    z.centroid,
                    st.slots.occupancy.clone(),
                    zip,
                ))
            })
            .clone();
        let args = RegionArgs {
            shared,
            code: Arc::from(&*z.code),
            centroid: z.centroid,
            restarts: st.slots.restarts[zip as usize].load(Ordering::Relaxed),
            remote: st.slots.remote.clone(),
        };
        match Actor::spawn_linked(None, RegionActor, args, myself.get_cell()).await {
            Ok((r, _)) => {
                st.by_actor.insert(r.get_id(), zip);
                *st.slots.refs[zip as usize]
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
                Some(r)
            }
            Err(e) => {
                tracing::error!(zip = %z.code, "cannot spawn region: {e}");
                None
            }
        }
    }

    fn resync(st: &DirectoryState, zip: ZipId) {
        let mut told = 0usize;
        for s in st.sessions.all() {
            // A session that ended meanwhile has nothing to resend; one whose task is stuck
            // gets what it derived back with its next change.
            if tell(&s.handle, SessionMsg::Resync(zip), "resync") {
                told += 1;
            }
        }
        tracing::info!(
            zip,
            sessions = told,
            "asked sessions to rebuild a restarted region"
        );
    }
}

impl Actor for RegionDirectory {
    type Msg = DirectoryMsg;
    type State = DirectoryState;
    type Arguments = DirectoryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DirectoryArgs,
    ) -> Result<DirectoryState, ActorProcessingErr> {
        Ok(DirectoryState {
            zips: args.zips,
            slots: args.slots,
            sessions: args.sessions,
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: DirectoryMsg,
        st: &mut DirectoryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DirectoryMsg::Ensure(zip, reply) => {
                let existing = st.slots.refs[zip as usize]
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let r = match existing {
                    Some(r) if alive(&r) => Some(r),
                    // Dead, its failure not yet handled: replace it now; the supervision
                    // event will find the slot taken and only count and resync.
                    _ => Self::spawn_region(&myself, st, zip).await,
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut DirectoryState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(zip) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let code = st.zips.get(zip).code.clone();
                // post_stop does not run after a panic: account for the dead actor here.
                metrics::gauge!("region_actors_alive").decrement(1.0);
                metrics::counter!("region_restarts_total").increment(1);
                let n = st.slots.restarts[zip as usize].fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(zip = %code, restarts = n, "region failed, restarting: {err}");
                let current = st.slots.refs[zip as usize]
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let replaced = current.is_some_and(|r| r.get_id() != cell.get_id());
                if replaced || Self::spawn_region(&myself, st, zip).await.is_some() {
                    Self::resync(st, zip);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(zip) = st.by_actor.remove(&cell.get_id()) {
                    *st.slots.refs[zip as usize]
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

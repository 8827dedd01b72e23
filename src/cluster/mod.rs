//! Cluster mode: several nodes share the regions through NATS (JetStream KV and core
//! request/reply) and one PostgreSQL store. A node runs alone when `cluster.nats_url` is
//! empty, and then nothing here runs.
//!
//! - **Membership**: each node keeps a record in the members bucket, renewed by
//!   compare-and-set every `cluster.renew_interval_ms`; every node watches the bucket, and a
//!   member whose last renewal is older than `cluster.lease_ttl_s` is dead.
//! - **Ownership**: regions are grouped by zip3 into units ([`placement`]); each unit goes to
//!   the live member that rendezvous hashing picks. The owner holds the unit's key in the
//!   owners bucket, taken by compare-and-set; the key's revision is the unit's *epoch*, which
//!   only grows. A unit whose owner died is taken over by CAS on the revision seen, so two
//!   survivors cannot both take it; a unit whose placement moved to a live joiner is released
//!   by its owner first (at most `cluster.moves_per_round` a round) and then taken.
//! - **Fencing**: a node whose own renewal is older than TTL − 1 s stops serving every unit
//!   (its reads answer `stale`, its sessions are closed with 1012) and rejoins as a fresh
//!   member; an owner answers a read only for the epochs the asker saw.
//! - **Reads across nodes**: [`Cluster`] implements [`RemoteRegions`]: a citizen's circle
//!   that touches units owned elsewhere asks each owner once (request/reply) and merges.

pub mod placement;
pub mod wire;

pub use map::MapData;

mod changes;
mod link;
mod map;
mod ownership;
mod reads;
mod stream;
mod windows;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::actors::directory::Regions;
use crate::config::ClusterSettings;
use crate::geo::{ZipId, ZipTable};
pub use link::Link;
use placement::{UNITS, Unit, unit_of};
use wire::{MemberRecord, NodeCounts, OwnerRecord};

/// A callback the node's context installs.
type Hook<A> = Box<dyn Fn(&A) + Send + Sync>;

/// A window write: the key, the value to put (`None` deletes), and who waits for it.
type WindowWrite = (
    String,
    Option<Vec<u8>>,
    Option<tokio::sync::oneshot::Sender<()>>,
);

/// A live member as this node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its last record.
    pub record: MemberRecord,
    /// When its last renewal was written, on this node's clock.
    pub seen: Instant,
}

/// One node's membership in the cluster and its view of the others.
pub struct Cluster {
    /// Itself, for the tasks a `&self` method starts.
    me: std::sync::Weak<Cluster>,
    cfg: ClusterSettings,
    /// The longest availability window (how long the windows bucket keeps an entry).
    max_window_s: u64,
    id: String,
    zips: Arc<ZipTable>,
    /// The unit of each region, by zip id.
    unit_of_zip: Vec<Unit>,
    /// Regions per unit.
    regions_in_unit: Vec<u32>,
    /// The units that hold at least one region.
    units: Vec<Unit>,
    /// The regions of each unit.
    zips_of_unit: Vec<Vec<ZipId>>,
    /// Per unit: the last sequence number given to a change published here.
    change_seq: Vec<AtomicU64>,
    /// Changes of regions served here, on their way to NATS (bounded; a full queue drops
    /// the change, and its receivers see the gap in the sequence and read again).
    changes_tx: tokio::sync::mpsc::Sender<wire::ChangeMsg>,
    changes_rx: Mutex<Option<tokio::sync::mpsc::Receiver<wire::ChangeMsg>>>,
    /// Window writes, applied in order by one task (bounded like `changes_tx`).
    windows_tx: tokio::sync::mpsc::Sender<WindowWrite>,
    windows_rx: Mutex<Option<tokio::sync::mpsc::Receiver<WindowWrite>>>,
    /// Per unit: 0 no session here watches it, 1 subscribing to its changes, 2 receiving.
    interest: Vec<std::sync::atomic::AtomicU8>,
    /// The regions, once running (the subscriptions deliver changes to them).
    regions: OnceLock<Regions>,
    /// Told the account of a session opened on another node.
    elsewhere: OnceLock<Hook<str>>,
    /// Told when this node released units.
    released: OnceLock<Hook<()>>,
    /// The epoch of each unit this node serves; 0 when it does not.
    owned: Vec<AtomicU64>,
    owned_count: AtomicUsize,
    view: Mutex<View>,
    /// Set once NATS is reached and the buckets exist.
    link: OnceLock<Link>,
    linked: tokio::sync::Notify,
    /// When the link came up: a node judges another dead only after watching renewals
    /// for a whole TTL (its view may still be filling before that).
    linked_at: OnceLock<Instant>,
    /// This process start's random tag (a new one on every rejoin after fencing).
    incarnation: AtomicU64,
    /// Whether this node's lease is known fresh (cleared at fencing).
    live: AtomicBool,
    /// Set when the node leaves (SIGTERM): it renews and takes nothing more.
    leaving: AtomicBool,
    /// Told when this node fenced itself (its sessions must close with 1012).
    pub fenced: tokio::sync::Notify,
    /// This node's live counts, for the member record.
    counts: OnceLock<Box<dyn Fn() -> NodeCounts + Send + Sync>>,
}

#[derive(Default)]
struct View {
    members: HashMap<String, Member>,
    /// Owner and epoch of every unit that has one.
    owners: HashMap<Unit, (OwnerRecord, u64)>,
    /// The last successful renewal of this node's lease, and the record's revision.
    lease: Option<(Instant, u64)>,
}

/// A cross-node read that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS has not been reached yet.
    #[error("the cluster link is not up")]
    NotLinked,
    /// No live member owns the unit (yet).
    #[error("no live owner for unit {0:03}")]
    NoOwner(Unit),
    /// The owner did not answer in time, or NATS failed.
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    /// The owner answered with a refusal the client is told as it is (code, message).
    #[error("refused: {0}: {1}")]
    Refused(String, String),
}

impl Cluster {
    /// A member-to-be; [`Cluster::run`] links it and keeps it alive.
    pub fn new(
        cfg: ClusterSettings,
        node_id: String,
        max_window_s: u64,
        zips: Arc<ZipTable>,
    ) -> Arc<Self> {
        let unit_of_zip: Vec<Unit> = zips
            .iter()
            .map(|(_, z)| unit_of(&z.code).unwrap_or(0))
            .collect();
        let mut regions_in_unit = vec![0u32; UNITS];
        for &u in &unit_of_zip {
            regions_in_unit[u as usize] += 1;
        }
        let units = (0..UNITS as Unit)
            .filter(|&u| regions_in_unit[u as usize] > 0)
            .collect();
        let mut zips_of_unit = vec![Vec::new(); UNITS];
        for (z, &u) in unit_of_zip.iter().enumerate() {
            zips_of_unit[u as usize].push(z as ZipId);
        }
        let (changes_tx, changes_rx) = tokio::sync::mpsc::channel(cfg.change_queue);
        let (windows_tx, windows_rx) = tokio::sync::mpsc::channel(cfg.change_queue);
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            cfg,
            max_window_s,
            id: node_id,
            zips,
            unit_of_zip,
            regions_in_unit,
            units,
            zips_of_unit,
            change_seq: (0..UNITS).map(|_| AtomicU64::new(0)).collect(),
            changes_tx,
            changes_rx: Mutex::new(Some(changes_rx)),
            windows_tx,
            windows_rx: Mutex::new(Some(windows_rx)),
            interest: (0..UNITS)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
            regions: OnceLock::new(),
            elsewhere: OnceLock::new(),
            released: OnceLock::new(),
            owned: (0..UNITS).map(|_| AtomicU64::new(0)).collect(),
            owned_count: AtomicUsize::new(0),
            view: Mutex::new(View::default()),
            link: OnceLock::new(),
            linked: tokio::sync::Notify::new(),
            linked_at: OnceLock::new(),
            incarnation: AtomicU64::new(rand::random()),
            live: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            fenced: tokio::sync::Notify::new(),
            counts: OnceLock::new(),
        })
    }

    fn self_arc(&self) -> Arc<Self> {
        self.me
            .upgrade()
            .expect("a cluster method runs while the cluster exists")
    }

    /// This node's member id.
    pub fn node_id(&self) -> &str {
        &self.id
    }

    /// This node's advertised URL.
    pub fn advertise_url(&self) -> &str {
        &self.cfg.advertise_url
    }

    /// The settings in force.
    pub fn settings(&self) -> &ClusterSettings {
        &self.cfg
    }

    /// Tells the member record how to count this node's sessions.
    pub fn count_with(&self, f: impl Fn() -> NodeCounts + Send + Sync + 'static) {
        let _ = self.counts.set(Box::new(f));
    }

    /// This node's counts now.
    pub fn counts(&self) -> NodeCounts {
        self.counts.get().map_or_else(NodeCounts::default, |f| f())
    }

    /// The link, waiting for it to come up.
    pub async fn wait_link(&self) -> &Link {
        loop {
            let up = self.linked.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            if let Some(l) = self.link.get() {
                return l;
            }
            up.await;
        }
    }

    /// Whether this node is leaving the cluster.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Leaves the cluster gracefully (SIGTERM): stops renewing and reconciling, gives every
    /// unit up (the others take them at their next round) and removes its member record, so
    /// the others place without it at once instead of after the lease TTL. Its sessions
    /// then hand off (the caller tells them).
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let Some(link) = self.link.get() else { return };
        let mut released = 0;
        for &u in &self.units {
            if let Some(epoch) = self.serving(u) {
                self.drop_unit(u);
                released += 1;
                if let Err(e) = link.release(u, epoch).await {
                    tracing::debug!(unit = u, "cluster: release on leaving: {e}");
                }
            }
        }
        if let Err(e) = link.forget_member(&self.id).await {
            tracing::warn!("cluster: member record not removed: {e}");
        }
        tracing::info!(node = %self.id, units = released, "cluster: left");
    }

    /// Whether NATS is reached and this node's lease is fresh.
    pub fn ready(&self) -> bool {
        self.link.get().is_some() && self.lease_fresh()
    }

    /// The unit of a region.
    pub fn unit(&self, zip: ZipId) -> Unit {
        self.unit_of_zip[zip as usize]
    }

    /// The epoch of `unit` if this node serves it now.
    pub fn serving(&self, unit: Unit) -> Option<u64> {
        let e = self.owned[unit as usize].load(Ordering::Acquire);
        (e != 0).then_some(e)
    }

    /// Units served here.
    pub fn units_owned(&self) -> usize {
        self.owned_count.load(Ordering::Relaxed)
    }

    /// The regions this node serves, and the units it still has to take or give up to match
    /// the placement over the live members it sees now — in one pass, so the two agree.
    pub fn ownership(&self) -> (usize, usize) {
        let fresh = self.lease_fresh();
        let members = self.members();
        let ids = || members.iter().map(|m| m.record.node_id.as_str());
        let (mut regions, mut moving) = (0, 0);
        for &u in &self.units {
            let served = self.serving(u).is_some();
            if served {
                regions += self.regions_in_unit[u as usize] as usize;
            }
            let want = fresh && placement::owner(u, ids()) == Some(self.id.as_str());
            if want != served {
                moving += 1;
            }
        }
        (regions, moving)
    }

    /// Whether this node's lease was renewed within TTL − 1 s (self-fencing bound).
    fn lease_fresh(&self) -> bool {
        let bound = self.lease_bound();
        self.live.load(Ordering::Acquire)
            && self
                .view
                .lock()
                .expect("view lock")
                .lease
                .is_some_and(|(at, _)| at.elapsed() < bound)
    }

    fn lease_bound(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_ttl_s).saturating_sub(Duration::from_secs(1))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_ttl_s)
    }

    /// The live members (renewed within the TTL), this node included while its lease is
    /// fresh, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        let ttl = self.ttl();
        let v = self.view.lock().expect("view lock");
        let mut out: Vec<Member> = v
            .members
            .values()
            .filter(|m| m.seen.elapsed() < ttl)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.record.node_id.cmp(&b.record.node_id));
        out
    }

    /// The member that serves `zip` now (its recorded owner if alive), else the one
    /// placement names (it takes the unit within a reconcile round); `None` with no member.
    /// A node that is leaving names the others only.
    pub fn owner_of(&self, zip: ZipId) -> Option<Member> {
        let unit = self.unit(zip);
        let mut members = self.members();
        if self.is_leaving() {
            members.retain(|m| m.record.node_id != self.id);
        }
        if let Some((o, _)) = self.recorded_owner(unit)
            && let Some(m) = members.iter().find(|m| m.record.node_id == o.node_id)
        {
            return Some(m.clone());
        }
        let id = placement::owner(unit, members.iter().map(|m| m.record.node_id.as_str()))?;
        members.iter().find(|m| m.record.node_id == id).cloned()
    }

    /// The owner record and epoch of a unit as the owners bucket says now (alive or not).
    fn recorded_owner(&self, unit: Unit) -> Option<(OwnerRecord, u64)> {
        self.view
            .lock()
            .expect("view lock")
            .owners
            .get(&unit)
            .cloned()
    }

    /// Owner id and epoch of a unit, if recorded and alive.
    fn live_owner(&self, unit: Unit) -> Option<(String, u64)> {
        let ttl = self.ttl();
        let v = self.view.lock().expect("view lock");
        let (o, epoch) = v.owners.get(&unit)?;
        let alive = v
            .members
            .get(&o.node_id)
            .is_some_and(|m| m.seen.elapsed() < ttl);
        alive.then(|| (o.node_id.clone(), *epoch))
    }

    /// A ticket from `node` (another member) for the session `req` describes.
    pub async fn ticket_at(
        &self,
        node: &str,
        req: &wire::TicketRequest,
    ) -> Result<String, ClusterError> {
        let link = self.link.get().ok_or(ClusterError::NotLinked)?;
        let reply: wire::TicketReply = link.request(node, "ticket", req).await?;
        let error = reply.error.unwrap_or_default();
        match (reply.ticket, reply.code) {
            (Some(t), _) => Ok(t),
            (None, Some(code)) => Err(ClusterError::Refused(code, error)),
            (None, None) => Err(ClusterError::Request(node.to_owned(), error)),
        }
    }

    /// Tells the other nodes that a session of `account` opened here (they close theirs).
    pub fn session_opened(&self, account: &str) {
        let Some(link) = self.link.get() else { return };
        let msg = wire::SessionOpened {
            account: account.to_owned(),
            node: self.id.clone(),
        };
        link.publish(link.sessions_subject(), &msg, "session opening");
    }

    /// What to do when a session of an account opened on another node.
    pub fn on_session_elsewhere(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.elsewhere.set(Box::new(f));
    }

    /// What to do when this node gave up units (its sessions there hand off).
    pub fn on_units_released(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.released.set(Box::new(move |_: &()| f()));
    }
}

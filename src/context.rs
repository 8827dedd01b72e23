//! The node's shared context: settings, the zip table, the region handle and the session
//! registry. Only handles live here; state lives in the actors that own it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::actors::directory::Regions;
use crate::actors::outbox::{Outbox, close};
use crate::actors::session::{SessionHandle, SessionMsg, tell};
use crate::actors::windows::{LocalWindows, WindowStore};
use crate::cluster::wire::NodeCounts;
use crate::cluster::{Cluster, ClusterError, MapData};
use crate::config::Settings;
use crate::events::EventBus;
use crate::geo::ZipTable;
use crate::protocol::Role;
use crate::store::Store;
use crate::store::publisher::Publisher;
use crate::store::rewards::VoucherSigner;

/// One live session, as the registry knows it.
#[derive(Clone)]
pub struct SessionEntry {
    /// Session id (unique on this node).
    pub session_id: u64,
    /// Role.
    pub role: Role,
    /// The session's mailbox.
    pub handle: SessionHandle,
}

/// Account → its one live session on this node; and every open socket's outbox.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<Arc<str>, SessionEntry>,
    sockets: AtomicUsize,
    /// Session id → the outbox of its socket, from upgrade to close: shutdown closes them
    /// all through it (a socket task then needs no shutdown future of its own, which it
    /// would poll, and lock a shared waiter list for, on every frame).
    outboxes: DashMap<u64, Outbox>,
    closing_all: AtomicBool,
    available: Arc<AtomicUsize>,
    pending: Arc<AtomicUsize>,
}

/// What [`Sessions::kick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The session was told to close; its role.
    Ended(Role),
    /// No live session of the account here.
    NoSession,
    /// The session takes no messages now.
    Busy,
}

/// Counts one thing while it lives: +1 when made, −1 when dropped (also when the session
/// that owns it ends by a panic), so live counters cannot drift.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sessions {
    /// Registers a session; returns the one it replaces.
    pub fn register(&self, account: Arc<str>, entry: SessionEntry) -> Option<SessionEntry> {
        self.map.insert(account, entry)
    }

    /// Forgets a session, unless a newer one of the same account took its place.
    pub fn unregister(&self, account: &str, session_id: u64) {
        self.map
            .remove_if(account, |_, e| e.session_id == session_id);
    }

    /// The live session of an account.
    pub fn get(&self, account: &str) -> Option<SessionEntry> {
        self.map.get(account).map(|e| e.clone())
    }

    /// Ends the account's session here by an administrator's order: an `error` frame
    /// `session_ended`, then close 4002.
    pub fn kick(&self, account: &str) -> Kick {
        let Some(entry) = self.get(account) else {
            return Kick::NoSession;
        };
        let close = SessionMsg::Close {
            code: close::KICKED,
            error: Some("session_ended"),
            reason: "ended by an administrator".into(),
        };
        match entry.handle.send(close) {
            Ok(()) => {
                metrics::counter!("sessions_ended_by_admin_total").increment(1);
                Kick::Ended(entry.role)
            }
            Err(crate::actors::mailbox::SendError::Closed(_)) => Kick::NoSession,
            Err(crate::actors::mailbox::SendError::Full(_)) => {
                metrics::counter!("session_mailbox_full_total", "msg" => "kick").increment(1);
                Kick::Busy
            }
        }
    }

    /// Every live session (a snapshot; for rare broadcasts).
    pub fn all(&self) -> Vec<SessionEntry> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Marks an officer available while the guard lives.
    pub fn count_available(&self) -> Counted {
        Counted::new(&self.available)
    }

    /// Marks a connection request pending while the guard lives.
    pub fn count_pending(&self) -> Counted {
        Counted::new(&self.pending)
    }

    /// Officers available now.
    pub fn available(&self) -> usize {
        self.available.load(Ordering::Acquire)
    }

    /// Connection requests waiting for an officer's answer.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Live sessions by role: (officers, citizens).
    pub fn counts(&self) -> (usize, usize) {
        let mut o = 0;
        let mut c = 0;
        for e in self.map.iter() {
            match e.role {
                Role::Officer => o += 1,
                Role::Citizen => c += 1,
                Role::Admin | Role::Retailer => {}
            }
        }
        (o, c)
    }

    /// Reserves a socket slot if fewer than `max` are open.
    pub fn try_open_socket(&self, max: usize) -> bool {
        self.sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Releases a socket slot.
    pub fn close_socket(&self) {
        self.sockets.fetch_sub(1, Ordering::AcqRel);
    }

    /// Open sockets.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    /// Lists a socket's outbox until [`Sessions::detach`]; closed at once (1001) if
    /// shutdown has begun.
    pub fn attach(&self, session_id: u64, out: Outbox) {
        self.outboxes.insert(session_id, out.clone());
        // After the insert: either `close_all` iterated past it, or this sees its flag.
        if self.closing_all.load(Ordering::SeqCst) {
            out.close(close::GOING_AWAY, SHUTDOWN_REASON);
        }
    }

    /// Unlists a socket's outbox.
    pub fn detach(&self, session_id: u64) {
        self.outboxes.remove(&session_id);
    }

    /// Closes every open socket with `code` (sockets attached later are not touched).
    pub fn close_open(&self, code: u16, reason: &'static str) {
        for out in self.outboxes.iter() {
            out.close(code, reason);
        }
    }

    /// Closes every socket with 1001, and every socket attached from now on.
    pub fn close_all(&self) {
        self.closing_all.store(true, Ordering::SeqCst);
        for out in self.outboxes.iter() {
            out.close(close::GOING_AWAY, SHUTDOWN_REASON);
        }
    }
}

/// A node's live counts.
fn node_counts(sessions: &Sessions, regions: &Regions) -> NodeCounts {
    let (officers, citizens) = sessions.counts();
    NodeCounts {
        sessions: sessions.sockets(),
        officers_available: sessions.available(),
        officers_online: officers,
        citizens_online: citizens,
        regions_active: regions.alive(),
        pending_requests: sessions.pending(),
        messages_in: crate::telemetry::messages_in(),
    }
}

/// The close reason of the sockets of a node that lost its cluster lease.
const FENCED_REASON: &str = "node lost its cluster lease; reconnect";

/// The close reason of a socket closed by shutdown.
const SHUTDOWN_REASON: &str = "server shutting down";

/// Everything a node's sessions and routes share.
pub struct Context {
    /// Settings in force.
    pub settings: Settings,
    /// The zip table.
    pub zips: Arc<ZipTable>,
    /// The regions.
    pub regions: Regions,
    /// Live sessions.
    pub sessions: Arc<Sessions>,
    /// The durable store.
    pub store: Store,
    /// Domain events after commit.
    pub events: EventBus,
    /// Wakes the outbox publisher after a commit.
    pub events_wake: Arc<tokio::sync::Notify>,
    /// Moves committed events to the bus and the profile projection.
    pub publisher: Arc<Publisher>,
    /// Signs and checks voucher codes.
    pub vouchers: VoucherSigner,
    /// This node's membership, when it runs in a cluster.
    pub cluster: Option<Arc<Cluster>>,
    /// Officers' running windows, kept across their sockets (in memory alone, in the
    /// cluster's KV store in a cluster).
    pub windows: Arc<dyn WindowStore>,
    next_session: AtomicU64,
}

impl Context {
    /// Starts the region directory and builds the context.
    pub async fn start(
        settings: Settings,
        zips: Arc<ZipTable>,
        store: Store,
    ) -> anyhow::Result<Arc<Self>> {
        let timeout = Duration::from_millis(settings.regions.call_timeout_ms);
        let sessions = Arc::new(Sessions::default());
        let events_capacity = settings.events.capacity;
        let vouchers = VoucherSigner::new(settings.rewards.voucher_key.expose());
        let events = EventBus::new(events_capacity);

        let (regions, _join) = Regions::start(zips.clone(), sessions.clone(), timeout).await?;
        let cluster = settings.cluster.enabled().then(|| {
            let c = Cluster::new(
                settings.cluster.clone(),
                settings.server.node_id.clone(),
                settings.officer.max_window_s,
                zips.clone(),
            );
            regions.set_remote(c.clone());
            // A session of the account opened on another node: this node's one closes.
            let registry = sessions.clone();
            c.on_session_elsewhere(move |account| {
                if let Some(e) = registry.get(account) {
                    tell(&e.handle, SessionMsg::OpenedElsewhere, "elsewhere");
                }
            });
            // Units given up: every session checks whether its region went with them.
            let registry = sessions.clone();
            c.on_units_released(move || {
                for e in registry.all() {
                    tell(&e.handle, SessionMsg::CheckOwner, "owner");
                }
            });
            let (counted, alive) = (sessions.clone(), regions.clone());
            c.count_with(move || node_counts(&counted, &alive));
            tokio::spawn(c.clone().run(regions.clone(), store.clone()));
            // A node that fenced itself serves none of its regions: its phones reconnect
            // through a live node.
            let (fenced, sessions) = (c.clone(), sessions.clone());
            tokio::spawn(async move {
                loop {
                    fenced.fenced.notified().await;
                    sessions.close_open(close::SERVICE_RESTART, FENCED_REASON);
                }
            });
            c
        });
        let publisher = Publisher::new(store.clone(), events.clone(), settings.events.batch);
        let publisher = Arc::new(match &cluster {
            Some(c) => publisher.with_stream(c.clone()),
            None => publisher,
        });
        let windows: Arc<dyn WindowStore> = match &cluster {
            Some(c) => c.clone(),
            None => Arc::new(LocalWindows::new(settings.limits.max_sessions)),
        };
        Ok(Arc::new(Self {
            settings,
            zips,
            regions,
            sessions,
            store,
            events,
            publisher,
            events_wake: Arc::new(tokio::sync::Notify::new()),
            vouchers,
            cluster,
            windows,
            next_session: AtomicU64::new(1),
        }))
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Tells every socket to close with 1001.
    pub fn begin_shutdown(&self) {
        self.sessions.close_all();
    }

    /// This node's live counts (what the admin stats sum over a cluster).
    pub fn counts(&self) -> NodeCounts {
        node_counts(&self.sessions, &self.regions)
    }

    /// Every available officer (at most `limit`) and the citizen sessions per zip: this
    /// node's, or in a cluster every live member's.
    pub async fn map(&self, limit: usize) -> Result<MapData, ClusterError> {
        if let Some(cluster) = &self.cluster {
            return cluster.map(&self.regions, limit).await;
        }
        let (officers, more) = self.regions.officers((0, 0), limit, |_| true);
        Ok(MapData {
            officers,
            citizens: self.regions.citizens_by_zip(),
            truncated: more.is_some(),
        })
    }

    /// Stops the actors.
    pub fn stop(&self) {
        self.regions.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_closes_listed_sockets_and_late_ones() {
        let s = Sessions::default();
        let open = Outbox::new(4, 10);
        s.attach(1, open.clone());
        let gone = Outbox::new(4, 10);
        s.attach(2, gone.clone());
        s.detach(2);
        s.close_all();
        assert!(open.is_closing());
        assert!(!gone.is_closing(), "a socket that left is not touched");
        let late = Outbox::new(4, 10);
        s.attach(3, late.clone());
        assert!(
            late.is_closing(),
            "a socket opened during shutdown is closed at once"
        );
    }
}

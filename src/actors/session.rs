//! `SessionActor`: one per connected app. It owns its user's truth — position, region,
//! availability window (officers), search circle and watched regions (citizens).
//!
//! Invariants:
//! * an officer is in exactly one region index while available (the one holding its
//!   position) and in none otherwise; it leaves at once on unavailable, expiry or close;
//! * a citizen watches exactly the regions its circle can touch, and is told `nearby` at
//!   once after each `location`, and otherwise at most once per push interval, only when
//!   the answer changed;
//! * every session is in the node's session registry, so a restarted region can ask all of
//!   them to resend what it derived from them (each checks whether the zip is its own);
//! * handlers never fail: errors go to the client as `error` frames and to the log.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smallvec::SmallVec;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::directory::RegionError;
use super::outbox::{Outbox, close};
use super::region::{OfficerData, Watch};
use crate::context::{Context, Counted, SessionEntry};
use crate::geo::index::OfficerKey;
use crate::geo::index::merge_nearest;
use crate::geo::{LatLon, Nearby, SharedCircle, ZipId};
use crate::http::auth::Ticket;
use crate::protocol::{
    CitizenRef, Command, Mode, NearbyOfficerRef, NearbyRef, Role, ServerMsg, WireError,
};
use crate::store::NewConnection;

/// Most officers announced by `officer_nearby` from one answer.
const MAX_CLOSE: usize = 64;

/// How a region tells a citizen session that its answer may have changed: a flag that is
/// raised once (one message) until the session consumes it, so a busy region costs a
/// watcher at most one message per push.
///
/// It also carries the citizen's search circle, shared by every region the citizen
/// watches, so that moving costs no message to regions watched already. The session (the
/// only writer) sets the circle *before* it reads the region indexes, and regions test
/// it *after* writing theirs, so no change can be missed: a change the session's read did
/// not see was written after that read, and its test therefore sees the circle stored
/// before the read. "After" is given by the index lock for a read under it, and by the
/// single order of `SeqCst` operations for a read of a region's officer count alone (the
/// count is stored, and the circle loaded, `SeqCst` too). A test that sees a circle half
/// stored is for a change the read includes anyway; it can only signal once too often.
#[derive(Debug)]
pub struct PushSignal {
    dirty: AtomicBool,
    session: ActorRef<SessionMsg>,
    circle: SharedCircle,
}

impl PushSignal {
    /// A lowered signal for `session`, with an empty circle.
    pub fn new(session: ActorRef<SessionMsg>) -> Self {
        Self {
            dirty: AtomicBool::new(false),
            session,
            circle: SharedCircle::default(),
        }
    }

    /// Raises the flag; returns false if the session is gone.
    pub fn raise(&self) -> bool {
        if self.dirty.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.session.cast(SessionMsg::Changed).is_ok()
    }

    fn consume(&self) {
        self.dirty.store(false, Ordering::Release);
    }

    /// Sets the circle regions test changes against (see the type's invariant): around
    /// the point with unit vector `centre`.
    pub fn set_circle(&self, centre: [f64; 3], radius_m: f64) {
        self.circle.set(centre, radius_m);
    }

    /// Whether any of `points` (unit vectors) lies in the circle.
    pub fn covers_any(&self, points: &[[f64; 3]]) -> bool {
        self.circle.covers_any(points)
    }
}

/// Messages of a session.
pub enum SessionMsg {
    /// A validated frame from the socket.
    Command(Command),
    /// A frame the socket could not take (bad input, rate limit): answered in frame order.
    Refused(WireError),
    /// A watched region changed.
    Changed,
    /// Time for a coalesced push.
    PushTick,
    /// Window timer: `expired` false is the warning, true the end.
    WindowTick {
        /// Window generation the timer belongs to.
        generation: u64,
        /// End (true) or warning (false).
        expired: bool,
    },
    /// A region restarted: resend what it derived from this session.
    Resync(ZipId),
    /// Officer: a citizen's request, to take or refuse (`Err` carries the error code).
    Offer(OfferedRequest, RpcReplyPort<Result<(), &'static str>>),
    /// Officer: the request was not answered in time.
    RequestTimeout(String),
    /// Officer: the citizen withdrew the request (disconnected).
    CancelRequest(String),
    /// Citizen: how its request ended.
    Decided(String, Outcome),
    /// End the session: optional error frame, then close.
    Close {
        /// Close code.
        code: u16,
        /// `error` frame code sent first.
        error: Option<&'static str>,
        /// Close reason and error message.
        reason: String,
    },
}

/// A connection request as the officer's session receives it.
pub struct OfferedRequest {
    /// Request id.
    pub request_id: String,
    /// The citizen.
    pub citizen_id: Arc<str>,
    /// Its display name.
    pub citizen_name: Arc<str>,
    /// Its session, for the answer.
    pub citizen: ActorRef<SessionMsg>,
    /// Distance when asked.
    pub distance_m: f64,
    /// Mode.
    pub mode: Mode,
}

/// How a request ended, for the citizen.
pub enum Outcome {
    /// Declined, expired or cancelled (the wire status).
    Status(&'static str),
    /// Accepted and recorded.
    Established {
        /// The connection.
        connection_id: String,
        /// The officer.
        officer_id: String,
        /// Mode.
        mode: Mode,
        /// Points the citizen earned.
        points_awarded: i64,
        /// The citizen's balance.
        balance: i64,
    },
}

/// The request an officer holds (at most one).
struct Pending {
    _counted: Counted,
    request_id: String,
    citizen_id: Arc<str>,
    citizen: ActorRef<SessionMsg>,
    mode: Mode,
    timer: JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>,
}

/// Start-up arguments of a session.
pub struct SessionArgs {
    /// Shared context.
    pub ctx: Arc<Context>,
    /// Session id.
    pub session_id: u64,
    /// What the orchestrator granted: account, name, role, first position and region.
    pub ticket: Ticket,
    /// Socket writer.
    pub out: Outbox,
    /// The session's current zip, for the socket bridge's clean-up if the actor dies.
    pub last_zip: Arc<AtomicU32>,
    /// Where the actor leaves its state for the socket task ([`SessionHandle::new`]).
    pub shared: Arc<OnceLock<Shared>>,
}

struct Window {
    _counted: Counted,
    expires_at: DateTime<Utc>,
    timers: [JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>; 2],
}

/// Officer-only state.
#[derive(Default)]
struct OfficerState {
    window: Option<Window>,
    generation: u64,
    pending: Option<Pending>,
    /// The last accepted request and the frame sent for it, so a duplicated `respond`
    /// gets the same answer and records nothing new.
    last_accepted: Option<(String, ServerMsg)>,
    /// What the officer's region entry carries, and the zip it was made for.
    data: Option<(ZipId, OfficerData)>,
}

/// Citizen-only state.
struct CitizenState {
    radius_m: f64,
    limit: usize,
    watched: Vec<ZipId>,
    /// This session and its push signal, as the regions it watches hold them (kept, so
    /// that an answer costs no reference count on the signal the regions share).
    watch: Watch,
    last_push: Option<Instant>,
    /// When a watched region first signalled a change not yet answered (push latency).
    changed_at: Option<Instant>,
    /// A `PushTick` is on its way: at most one timer per session, whatever the rate of
    /// changes and locations.
    push_armed: bool,
    /// The officers of the last answer: id, position, distance. A push is due when ids or
    /// positions change; requests may ask any of them.
    last: Vec<Nearby<OfficerData>>,
    last_radius: f64,
    close_by: HashSet<OfficerKey>,
    /// The one request this citizen may have open: (request id, officer session).
    pending: Option<(String, ActorRef<SessionMsg>)>,
}

enum RoleState {
    Officer(Box<OfficerState>),
    Citizen(Box<CitizenState>),
}

/// State of a session.
pub struct SessionState {
    ctx: Arc<Context>,
    id: u64,
    account: Arc<str>,
    name: Arc<str>,
    pos: LatLon,
    zip: ZipId,
    d0: f64,
    out: Outbox,
    last_zip: Arc<AtomicU32>,
    role: RoleState,
    /// Socket commands the actor has handled, and its start: the socket task compares it
    /// with the number it cast, and handles a `location` itself only when none is waiting.
    handled: u64,
}

/// A session's state, shared by its actor and its socket task, which takes it for a
/// `location` when the actor has nothing of the socket's to do ([`SessionHandle`]).
pub type Shared = Arc<Mutex<SessionState>>;

/// The actor's state: the shared session state and what is needed when the actor ends.
pub struct SessionCell {
    shared: Shared,
    out: Outbox,
    role: Role,
    id: u64,
}

/// However the actor ends — stopped, killed, or panicking (ractor skips `post_stop` for
/// the last two) — its state is dropped.
impl Drop for SessionCell {
    fn drop(&mut self) {
        metrics::gauge!("ws_sessions", "role" => self.role.as_str()).decrement(1.0);
        // The socket task retires the outbox before it stops the actor: an outbox still
        // open means the actor ended by itself, and nothing else will serve the socket.
        if !self.out.is_closing() {
            tracing::error!(
                session = self.id,
                "session actor ended unexpectedly; closing its socket"
            );
            self.out.abort(close::INTERNAL, "internal error");
        }
    }
}

/// The socket task's side of its session. Frames reach the session in their order: each
/// is cast to the actor, except a `location` that finds the actor with no frame of the
/// socket's left to handle and the state free; that one is handled here, under the
/// state's lock, exactly as the actor would (one task wake-up and mailbox hop less on the
/// hot path). The actor still owns the session's life, timers and every other message.
pub struct SessionHandle {
    actor: ActorRef<SessionMsg>,
    shared: Shared,
    out: Outbox,
    /// Frames cast to the actor, and the actor's start (`post_start`, which sends
    /// `welcome` and a citizen's first `nearby`) counted as one: nothing is answered here
    /// before it.
    casts: u64,
}

/// The session can take no more frames: its actor is gone, or a frame handled by the
/// socket task panicked.
#[derive(Debug)]
pub struct SessionGone;

/// What became of a frame handed to the session.
pub enum Handed<'a> {
    /// Queued for the actor.
    Cast,
    /// A `location` for the socket task to handle now, by awaiting this. Boxed: inline,
    /// the handling would stay part of every socket task's state (and memory).
    Here(BoxFuture<'a, Result<(), SessionGone>>),
}

impl SessionHandle {
    /// The handle of a started session: `slot` is what its `pre_start` filled.
    pub fn new(actor: ActorRef<SessionMsg>, slot: &OnceLock<Shared>, out: Outbox) -> Self {
        Self {
            actor,
            shared: slot
                .get()
                .expect("pre_start leaves the state before the actor starts")
                .clone(),
            out,
            casts: 1,
        }
    }

    /// Hands a frame (a command or a refusal) to the session, in order.
    pub fn send(&mut self, msg: SessionMsg) -> Result<Handed<'_>, SessionGone> {
        let p = match msg {
            SessionMsg::Command(Command::Location(p)) => p,
            msg => return cast(&self.actor, &mut self.casts, msg),
        };
        // The state, if free and every frame cast has been handled.
        let Some(mut st) = self
            .shared
            .try_lock()
            .ok()
            .filter(|st| st.handled == self.casts)
        else {
            let msg = SessionMsg::Command(Command::Location(p));
            return cast(&self.actor, &mut self.casts, msg);
        };
        self.out.unregister();
        let out = &self.out;
        Ok(Handed::Here(Box::pin(async move {
            // Caught as ractor catches a handler's panic: the socket closes with 1011.
            let handled = AssertUnwindSafe(st.on_location(p)).catch_unwind().await;
            handled.map_err(|_| {
                tracing::error!("a location handled by the socket task panicked");
                out.abort(close::INTERNAL, "internal error");
                SessionGone
            })
        })))
    }
}

/// Casts a frame to the session actor, counting it (fields apart, so that a borrow of the
/// state may be held meanwhile).
fn cast(
    actor: &ActorRef<SessionMsg>,
    casts: &mut u64,
    msg: SessionMsg,
) -> Result<Handed<'static>, SessionGone> {
    *casts += 1;
    actor.cast(msg).map_err(|_| SessionGone)?;
    Ok(Handed::Cast)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl SessionState {
    fn role(&self) -> Role {
        match self.role {
            RoleState::Officer(_) => Role::Officer,
            RoleState::Citizen(_) => Role::Citizen,
        }
    }

    fn code(&self, zip: ZipId) -> String {
        self.ctx.zips.get(zip).code.to_string()
    }

    /// Publishes the officer's position to its region if available.
    async fn publish(&mut self) -> Result<(), RegionError> {
        let (zip, pos) = (self.zip, self.pos);
        let RoleState::Officer(o) = &mut self.role else {
            return Ok(());
        };
        let Some(w) = &o.window else {
            return Ok(());
        };
        let expires_at = w.expires_at;
        // The entry changes only with the zip and the window: made (and its card escaped)
        // once per region and window, not once per move.
        let data = match &o.data {
            Some((z, d)) if *z == zip && d.expires_at == expires_at => d.clone(),
            _ => {
                let code = &self.ctx.zips.get(zip).code;
                let d =
                    OfficerData::new(&self.account, self.name.clone(), expires_at, self.id, code);
                o.data = Some((zip, d.clone()));
                d
            }
        };
        self.ctx
            .regions
            .upsert(zip, self.account.clone(), pos, data)
            .await
    }

    fn withdraw(&self) {
        self.ctx
            .regions
            .remove(self.zip, self.account.clone(), self.id);
    }

    async fn on_location(&mut self, p: LatLon) {
        let max = self.ctx.settings.regions.max_distance_m;
        let (zip, d0) = match self.ctx.zips.locate_from(p, self.zip, max) {
            Ok(v) => v,
            Err(e) => {
                self.refuse("outside_service_area", &e.to_string(), Some("location"));
                return;
            }
        };
        self.out.accepted();
        let old = self.zip;
        self.pos = p;
        self.d0 = d0;
        if zip != old {
            if matches!(self.role, RoleState::Officer(_)) {
                self.withdraw();
            }
            self.zip = zip;
            self.last_zip.store(zip, Ordering::Relaxed);
            self.out.send(&ServerMsg::ZipChanged {
                zip: self.code(zip),
            });
        }
        match self.role {
            RoleState::Officer(_) => {
                if let Err(e) = self.publish().await {
                    self.server_error("location", &e);
                }
            }
            RoleState::Citizen(_) => self.refresh(true).await,
        }
    }

    /// An error frame for a refused command; closes with 1008 at the error limit.
    fn refuse(&self, code: &str, message: &str, reference: Option<&str>) {
        if self.out.refuse(code, message, reference) {
            self.out.close(close::POLICY, "too many errors");
        }
    }

    fn server_error(&self, reference: &str, e: &RegionError) {
        tracing::warn!(session = self.id, "region call failed: {e}");
        metrics::counter!("ws_errors_total", "code" => "unavailable").increment(1);
        self.out.send(&ServerMsg::error(
            "unavailable",
            "try again shortly",
            Some(reference),
        ));
    }

    async fn on_available(&mut self, myself: &ActorRef<SessionMsg>, window_s: u64) {
        let RoleState::Officer(o) = &mut self.role else {
            return;
        };
        let now = Utc::now();
        let expires_at = now + chrono::Duration::seconds(window_s as i64);
        if let Some(w) = o.window.take() {
            w.timers.iter().for_each(JoinHandle::abort);
        }
        o.generation += 1;
        let generation = o.generation;
        let total = Duration::from_secs(window_s);
        let warn_at = if window_s >= 120 {
            total - Duration::from_secs(60)
        } else {
            total / 2
        };
        let warn = myself.send_after(warn_at, move || SessionMsg::WindowTick {
            generation,
            expired: false,
        });
        let end = myself.send_after(total, move || SessionMsg::WindowTick {
            generation,
            expired: true,
        });
        o.window = Some(Window {
            _counted: self.ctx.sessions.count_available(),
            expires_at,
            timers: [warn, end],
        });
        if let Err(e) = self.publish().await {
            self.server_error("available", &e);
            return;
        }
        self.out.send(&ServerMsg::Availability {
            available: true,
            expires_at: Some(rfc3339(expires_at)),
        });
    }

    fn end_window(&mut self) -> bool {
        let RoleState::Officer(o) = &mut self.role else {
            return false;
        };
        let Some(w) = o.window.take() else {
            return false;
        };
        w.timers.iter().for_each(JoinHandle::abort);
        o.generation += 1;
        self.withdraw();
        true
    }

    fn on_window_tick(&mut self, generation: u64, expired: bool) {
        let RoleState::Officer(o) = &self.role else {
            return;
        };
        let Some(w) = &o.window else { return };
        if o.generation != generation {
            return;
        }
        if !expired {
            self.out.send(&ServerMsg::WindowExpiring {
                expires_at: rfc3339(w.expires_at),
            });
            return;
        }
        self.end_window();
        self.out.send(&ServerMsg::WindowExpired);
        self.out.close(close::NORMAL, "window expired");
    }

    /// Citizen: recompute the answer over every region the circle touches, update the
    /// watched set, and send `nearby` when `reply` (answer to a location) or when changed.
    async fn refresh(&mut self, reply: bool) {
        let (pos, zip, d0, session, regions) = (
            self.pos,
            self.zip,
            self.d0,
            self.id,
            self.ctx.regions.clone(),
        );
        let RoleState::Citizen(c) = &mut self.role else {
            return;
        };
        c.watch.signal.consume();
        let changed_at = c.changed_at.take();
        let started = Instant::now();
        let zips = &self.ctx.zips;
        let answer = regions
            .nearby(
                pos,
                zip,
                d0,
                c.radius_m,
                c.limit,
                Some((&c.watch, &c.watched)),
            )
            .await;
        let (merged, touching) = match answer {
            Ok((merged, touching, _)) => (merged, touching),
            Err(e) => {
                tracing::warn!(session, "nearby incomplete: {e}");
                metrics::counter!("ws_errors_total", "code" => "unavailable").increment(1);
                self.out.send(&ServerMsg::error(
                    "unavailable",
                    "nearby officers are unavailable; try again shortly",
                    Some(if reply { "location" } else { "nearby" }),
                ));
                return;
            }
        };
        // Watched set: regions no longer asked forget this watcher.
        for &z in c.watched.iter().filter(|z| !touching.contains(z)) {
            regions.unwatch(z, session);
        }
        c.watched = touching;
        crate::telemetry::nearby_query_seconds().record(started.elapsed().as_secs_f64());

        let changed = c.radius_m != c.last_radius
            || merged.len() != c.last.len()
            || merged
                .iter()
                .zip(&c.last)
                // The same officer is usually the same shared id: no string compared.
                .any(|(n, l)| !(Arc::ptr_eq(&n.id, &l.id) || n.id == l.id) || n.pos != l.pos);
        if reply || changed {
            let officers: SmallVec<[NearbyOfficerRef<'_>; 8]> = merged
                .iter()
                .map(|n| NearbyOfficerRef {
                    card: &n.data.card,
                    lat: n.pos.lat,
                    lon: n.pos.lon,
                    distance_m: n.distance_m,
                })
                .collect();
            let frame = NearbyRef {
                officers: &officers,
                radius_m: c.radius_m,
            };
            // One buffer sized for the frame, no regrowth.
            let mut text = Vec::with_capacity(frame.size_hint());
            frame.write_json(&mut text);
            self.out.send_json("nearby", text);
            c.last_radius = c.radius_m;
            c.last_push = Some(Instant::now());
            if let (false, Some(t)) = (reply, changed_at) {
                // From the region's change signal to the push leaving: coalescing included.
                metrics::histogram!("nearby_push_latency_seconds")
                    .record(t.elapsed().as_secs_f64());
            }
        }

        // officer_nearby: once per entry into the proximity distance. When the `limit`
        // nearest are all that close, more may be: ask the same regions for them.
        let proximity = self.ctx.settings.citizen.proximity_m;
        let mut close: Vec<(OfficerKey, f64)> = merged
            .iter()
            .filter(|n| n.distance_m <= proximity)
            .map(|n| (n.id.clone(), n.distance_m))
            .collect();
        if close.len() == c.limit && c.limit > 0 {
            let calls = zips
                .regions_touching(pos, zip, d0, proximity)
                .into_iter()
                .map(|z| regions.query(z, pos, proximity, MAX_CLOSE));
            let parts: Vec<_> = join_all(calls)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            close = merge_nearest(parts, MAX_CLOSE)
                .into_iter()
                .map(|n| (n.id, n.distance_m))
                .collect();
        }
        for (id, d) in close.iter().filter(|(id, _)| !c.close_by.contains(id)) {
            self.out.send(&ServerMsg::OfficerNearby {
                officer_id: id.to_string(),
                distance_m: *d,
            });
        }
        c.close_by = close.into_iter().map(|(id, _)| id).collect();
        // Kept whether sent or not (unsent only when ids and positions are those last
        // sent: only distances differ). Moved, not cloned: no reference counts; but an
        // empty answer keeps no buffer (it was made for `limit` officers: ~0.25 KB for
        // each idle citizen with nobody around).
        c.last = if merged.is_empty() {
            Vec::new()
        } else {
            merged
        };
    }

    /// Citizen: a watched region changed; push now or at the end of the interval.
    async fn schedule_push(&mut self, myself: &ActorRef<SessionMsg>) {
        if let RoleState::Citizen(c) = &mut self.role {
            c.changed_at.get_or_insert_with(Instant::now);
            if !c.push_armed {
                self.push_or_arm(myself).await;
            }
        }
    }

    /// Citizen: the push timer fired; push what changed since the last `nearby` sent, if
    /// that was an interval ago, or wait for the rest of the interval. A reply to a
    /// location carries every change before it, so a change it covered is not pushed.
    async fn on_push_tick(&mut self, myself: &ActorRef<SessionMsg>) {
        if let RoleState::Citizen(c) = &mut self.role {
            c.push_armed = false;
            if c.changed_at.is_some() {
                self.push_or_arm(myself).await;
            }
        }
    }

    /// Citizen: a change is unsent and no timer runs: push now if the last `nearby` went
    /// out an interval ago, else arm the one timer for the moment it is due.
    async fn push_or_arm(&mut self, myself: &ActorRef<SessionMsg>) {
        let interval = Duration::from_millis(self.ctx.settings.citizen.push_interval_ms);
        let RoleState::Citizen(c) = &mut self.role else {
            return;
        };
        let now = Instant::now();
        let due = c.last_push.map_or(now, |t| t + interval);
        if due <= now {
            self.refresh(false).await;
        } else {
            c.push_armed = true;
            myself.send_after(due - now, || SessionMsg::PushTick);
        }
    }

    /// Citizen: ask an officer in the current `nearby` set for a connection.
    async fn request_connection(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        officer_id: String,
        mode: Mode,
    ) {
        let cfg = &self.ctx.settings.connections;
        let RoleState::Citizen(c) = &self.role else {
            return;
        };
        if c.pending.is_some() {
            return self.refuse(
                "request_pending",
                "you already have a pending request",
                Some("request_connection"),
            );
        }
        let Some(distance_m) = c
            .last
            .iter()
            .find(|n| *n.id == *officer_id)
            .map(|n| n.distance_m)
        else {
            return self.refuse(
                "officer_unavailable",
                "that officer is not among your nearby available officers",
                Some("request_connection"),
            );
        };
        if mode == Mode::InPerson && distance_m > cfg.in_person_m {
            return self.refuse(
                "too_far",
                &format!("in-person connections need {} m or less", cfg.in_person_m),
                Some("request_connection"),
            );
        }
        let Some(officer) = self
            .ctx
            .sessions
            .get(&officer_id)
            .filter(|e| e.role == Role::Officer)
        else {
            return self.refuse(
                "officer_unavailable",
                "that officer is no longer online",
                Some("request_connection"),
            );
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let offer = OfferedRequest {
            request_id: request_id.clone(),
            citizen_id: self.account.clone(),
            citizen_name: self.name.clone(),
            citizen: myself.clone(),
            distance_m,
            mode,
        };
        let timeout = Duration::from_millis(self.ctx.settings.regions.call_timeout_ms);
        match officer
            .actor
            .call(|reply| SessionMsg::Offer(offer, reply), Some(timeout))
            .await
        {
            Ok(CallResult::Success(Ok(()))) => {
                self.out.accepted();
                let expires_at =
                    Utc::now() + chrono::Duration::seconds(cfg.request_timeout_s as i64);
                if let RoleState::Citizen(c) = &mut self.role {
                    c.pending = Some((request_id.clone(), officer.actor.clone()));
                }
                // Safety net: should the officer's session die without answering, the
                // citizen's request still ends (a little after the officer's own timeout).
                let (id, grace) = (
                    request_id.clone(),
                    Duration::from_secs(cfg.request_timeout_s + 5),
                );
                myself.send_after(grace, move || {
                    SessionMsg::Decided(id, Outcome::Status("expired"))
                });
                metrics::counter!("connection_requests_total").increment(1);
                self.out.send(&ServerMsg::ConnectionPending {
                    request_id,
                    officer_id,
                    expires_at: rfc3339(expires_at),
                });
            }
            Ok(CallResult::Success(Err(code))) => {
                let msg = if code == "officer_busy" {
                    "that officer is answering another request"
                } else {
                    "that officer is not available"
                };
                self.refuse(code, msg, Some("request_connection"));
            }
            _ => self.refuse(
                "officer_unavailable",
                "that officer did not answer",
                Some("request_connection"),
            ),
        }
    }

    /// Officer: take a request if available and free.
    fn take_offer(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        req: OfferedRequest,
    ) -> Result<(), &'static str> {
        let timeout_s = self.ctx.settings.connections.request_timeout_s;
        let RoleState::Officer(o) = &mut self.role else {
            return Err("officer_unavailable");
        };
        if o.window.is_none() {
            return Err("officer_unavailable");
        }
        if o.pending.is_some() {
            return Err("officer_busy");
        }
        let id = req.request_id.clone();
        let expires_at = Utc::now() + chrono::Duration::seconds(timeout_s as i64);
        let timer = myself.send_after(Duration::from_secs(timeout_s), move || {
            SessionMsg::RequestTimeout(id)
        });
        o.pending = Some(Pending {
            _counted: self.ctx.sessions.count_pending(),
            request_id: req.request_id.clone(),
            citizen_id: req.citizen_id.clone(),
            citizen: req.citizen,
            mode: req.mode,
            timer,
        });
        self.out.send(&ServerMsg::ConnectionRequested {
            request_id: req.request_id,
            citizen: CitizenRef {
                citizen_id: req.citizen_id.to_string(),
                display_name: req.citizen_name.to_string(),
            },
            distance_m: req.distance_m,
            mode: req.mode,
            expires_at: rfc3339(expires_at),
        });
        Ok(())
    }

    /// Officer: accept or decline the pending request.
    async fn respond(&mut self, request_id: String, accept: bool) {
        let RoleState::Officer(o) = &mut self.role else {
            return;
        };
        if let Some((id, frame)) = &o.last_accepted
            && *id == request_id
        {
            // A duplicated respond: the same answer, nothing recorded again.
            let frame = frame.clone();
            self.out.accepted();
            self.out.send(&frame);
            return;
        }
        if o.pending
            .as_ref()
            .is_none_or(|p| p.request_id != request_id)
        {
            return self.refuse(
                "unknown_request",
                "no pending request with that id",
                Some("respond"),
            );
        }
        self.out.accepted();
        if !accept {
            return self.end_pending(&request_id, "declined", false);
        }
        let p = o.pending.as_ref().expect("checked above");
        let new = NewConnection {
            request_id: request_id.clone(),
            officer_id: self.account.to_string(),
            citizen_id: p.citizen_id.to_string(),
            mode: p.mode.as_str().to_owned(),
            zip: self.ctx.zips.get(self.zip).code.to_string(),
            per_connection: self.ctx.settings.points.per_connection,
            pair_cooldown: Duration::from_secs(self.ctx.settings.points.pair_cooldown_s),
            at: Utc::now(),
        };
        let rec = match self.ctx.store.record_accepted(&new).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing was recorded; the request stays pending and may be answered again.
                tracing::warn!(session = self.id, "recording a connection failed: {e}");
                self.out.send(&ServerMsg::error(
                    "unavailable",
                    "could not record the connection; try again",
                    Some("respond"),
                ));
                return;
            }
        };
        if !rec.replayed {
            self.ctx.events_wake.notify_one();
        }
        let RoleState::Officer(o) = &mut self.role else {
            return;
        };
        let Some(p) = o.pending.take() else { return };
        p.timer.abort();
        metrics::counter!("connections_established_total").increment(1);
        let mode = p.mode;
        let officer_frame = ServerMsg::ConnectionEstablished {
            connection_id: rec.connection_id.clone(),
            officer_id: self.account.to_string(),
            citizen_id: p.citizen_id.to_string(),
            mode,
            points_awarded: rec.points_awarded,
            balance: rec.officer_balance,
        };
        o.last_accepted = Some((request_id.clone(), officer_frame.clone()));
        self.out.send(&officer_frame);
        let outcome = Outcome::Established {
            connection_id: rec.connection_id,
            officer_id: self.account.to_string(),
            mode,
            points_awarded: rec.points_awarded,
            balance: rec.citizen_balance,
        };
        // A citizen who left meanwhile still has its points; it sees them in its profile.
        let _ = p.citizen.cast(SessionMsg::Decided(request_id, outcome));
    }

    /// Officer: end the pending request `id` with `status`, telling the citizen, and the
    /// officer too when `tell_officer` (timeouts and cancellations; a decline needs no echo).
    fn end_pending(&mut self, id: &str, status: &'static str, tell_officer: bool) {
        let RoleState::Officer(o) = &mut self.role else {
            return;
        };
        if o.pending.as_ref().is_none_or(|p| p.request_id != id) {
            return;
        }
        let p = o.pending.take().expect("checked above");
        p.timer.abort();
        if tell_officer {
            self.out.send(&ServerMsg::ConnectionResponse {
                request_id: id.to_owned(),
                status: status.to_owned(),
            });
        }
        if status != "cancelled" {
            // The citizen cancelled itself otherwise; if it left, there is nobody to tell.
            let _ = p
                .citizen
                .cast(SessionMsg::Decided(id.to_owned(), Outcome::Status(status)));
        }
        metrics::counter!("connection_requests_ended_total", "status" => status).increment(1);
    }

    /// Either side leaves (closes, goes unavailable): the other side is told `cancelled`.
    fn drop_pending(&mut self) {
        match &mut self.role {
            RoleState::Officer(o) => {
                if let Some(p) = o.pending.take() {
                    p.timer.abort();
                    let _ = p.citizen.cast(SessionMsg::Decided(
                        p.request_id,
                        Outcome::Status("cancelled"),
                    ));
                }
            }
            RoleState::Citizen(c) => {
                if let Some((id, officer)) = c.pending.take() {
                    // An officer that left has nothing to cancel.
                    let _ = officer.cast(SessionMsg::CancelRequest(id));
                }
            }
        }
    }

    /// Citizen: the officer's side decided.
    fn decided(&mut self, id: String, outcome: Outcome) {
        let RoleState::Citizen(c) = &mut self.role else {
            return;
        };
        if c.pending.as_ref().is_none_or(|(p, _)| *p != id) {
            return;
        }
        c.pending = None;
        match outcome {
            Outcome::Status(status) => {
                self.out.send(&ServerMsg::ConnectionResponse {
                    request_id: id,
                    status: status.to_owned(),
                });
            }
            Outcome::Established {
                connection_id,
                officer_id,
                mode,
                points_awarded,
                balance,
            } => {
                self.out.send(&ServerMsg::ConnectionResponse {
                    request_id: id,
                    status: "accepted".to_owned(),
                });
                self.out.send(&ServerMsg::ConnectionEstablished {
                    connection_id,
                    officer_id,
                    citizen_id: self.account.to_string(),
                    mode,
                    points_awarded,
                    balance,
                });
            }
        }
    }

    /// Handles a message of the actor (a socket's frame, or news from elsewhere).
    async fn handle(&mut self, myself: ActorRef<SessionMsg>, msg: SessionMsg) {
        if matches!(msg, SessionMsg::Command(_) | SessionMsg::Refused(_)) {
            // Counted under the lock: the socket task cannot take the state meanwhile.
            self.handled += 1;
        }
        match msg {
            SessionMsg::Command(cmd) => match cmd {
                Command::Location(p) => self.on_location(p).await,
                Command::Ping => {
                    self.out.accepted();
                    self.out.send(&ServerMsg::Pong);
                }
                Command::Available(w) => {
                    self.out.accepted();
                    self.on_available(&myself, w).await;
                }
                Command::Unavailable => {
                    self.out.accepted();
                    self.end_window();
                    self.out.send(&ServerMsg::Availability {
                        available: false,
                        expires_at: None,
                    });
                }
                Command::Watch { radius_m, limit } => {
                    self.out.accepted();
                    if let RoleState::Citizen(c) = &mut self.role {
                        c.radius_m = radius_m.unwrap_or(c.radius_m);
                        c.limit = limit.unwrap_or(c.limit);
                    }
                    self.schedule_push(&myself).await;
                }
                Command::RequestConnection { officer_id, mode } => {
                    self.request_connection(&myself, officer_id, mode).await
                }
                Command::Respond { request_id, accept } => self.respond(request_id, accept).await,
            },
            SessionMsg::Refused(e) => self.refuse(e.code, &e.message, e.reference.as_deref()),
            SessionMsg::Changed => self.schedule_push(&myself).await,
            SessionMsg::Offer(req, reply) => {
                let r = self.take_offer(&myself, req);
                // The citizen may have given up waiting; it then cancels on its side.
                let _ = reply.send(r);
            }
            SessionMsg::RequestTimeout(id) => self.end_pending(&id, "expired", true),
            SessionMsg::CancelRequest(id) => self.end_pending(&id, "cancelled", true),
            SessionMsg::Decided(id, outcome) => self.decided(id, outcome),
            SessionMsg::PushTick => self.on_push_tick(&myself).await,
            SessionMsg::WindowTick {
                generation,
                expired,
            } => self.on_window_tick(generation, expired),
            SessionMsg::Resync(zip) => match &mut self.role {
                RoleState::Officer(_) if zip == self.zip => {
                    if let Err(e) = self.publish().await {
                        tracing::warn!(session = self.id, "resync failed: {e}");
                    }
                }
                RoleState::Citizen(c) => {
                    // The restarted region has forgotten this watcher: register it anew.
                    c.watched.retain(|&z| z != zip);
                    self.refresh(false).await
                }
                _ => {}
            },
            SessionMsg::Close {
                code,
                error,
                reason,
            } => {
                self.leave_everything();
                if let Some(e) = error {
                    self.out.send(&ServerMsg::error(e, reason.clone(), None));
                }
                self.out.close(code, &reason);
            }
        }
    }

    fn leave_everything(&mut self) {
        self.drop_pending();
        match &self.role {
            RoleState::Officer(_) => {
                self.end_window();
            }
            RoleState::Citizen(c) => {
                for &z in &c.watched {
                    self.ctx.regions.unwatch(z, self.id);
                }
            }
        }
        self.ctx.sessions.unregister(&self.account, self.id);
    }
}

/// The session actor.
pub struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionCell;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: SessionArgs,
    ) -> Result<SessionCell, ActorProcessingErr> {
        let t = a.ticket;
        let role = match t.role {
            Role::Officer => RoleState::Officer(Box::default()),
            _ => {
                let cfg = &a.ctx.settings.citizen;
                RoleState::Citizen(Box::new(CitizenState {
                    radius_m: cfg.default_radius_m,
                    limit: cfg.default_limit,
                    watched: Vec::new(),
                    watch: Watch {
                        session_id: a.session_id,
                        signal: Arc::new(PushSignal::new(myself.clone())),
                    },
                    last_push: None,
                    changed_at: None,
                    push_armed: false,
                    last: Vec::new(),
                    last_radius: cfg.default_radius_m,
                    close_by: HashSet::new(),
                    pending: None,
                }))
            }
        };
        let entry = SessionEntry {
            session_id: a.session_id,
            role: t.role,
            actor: myself.clone(),
        };
        if let Some(old) = a.ctx.sessions.register(t.account.clone(), entry) {
            // The replaced session may already be stopping; then its socket closes anyway.
            let _ = old.actor.cast(SessionMsg::Close {
                code: close::REPLACED,
                error: Some("session_replaced"),
                reason: "a newer session of this account opened".into(),
            });
        }
        metrics::gauge!("ws_sessions", "role" => t.role.as_str()).increment(1.0);
        let shared = Arc::new(Mutex::new(SessionState {
            ctx: a.ctx,
            id: a.session_id,
            account: t.account,
            name: t.display_name,
            pos: t.pos,
            zip: t.zip,
            d0: t.d0,
            out: a.out.clone(),
            last_zip: a.last_zip,
            role,
            handled: 0,
        }));
        let _ = a.shared.set(shared.clone());
        Ok(SessionCell {
            shared,
            out: a.out,
            role: t.role,
            id: a.session_id,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        cell: &mut SessionCell,
    ) -> Result<(), ActorProcessingErr> {
        let mut st = cell.shared.lock().await;
        st.out.send(&ServerMsg::Welcome {
            session_id: st.id.to_string(),
            role: st.role(),
            account_id: st.account.to_string(),
            zip: st.code(st.zip),
        });
        if matches!(st.role, RoleState::Citizen(_)) {
            st.refresh(true).await;
        }
        // Handled: the socket task may take frames from now on (`SessionHandle::casts`).
        st.handled += 1;
        Ok(())
    }

    // `handle` is one boxed future. ractor keeps each actor's processing loop, which
    // embeds what `handle` returns, for the actor's whole life: inline, it would be sized
    // for the largest future awaited while handling (the store calls of `respond` /
    // `request_connection`, the region reads of `refresh`), ~7 KB for every idle session
    // (massif, session 3). Boxed, that is allocated only while a message is handled.
    fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        cell: &mut SessionCell,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        Box::pin(async move {
            cell.shared.lock().await.handle(myself, msg).await;
            Ok(())
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        cell: &mut SessionCell,
    ) -> Result<(), ActorProcessingErr> {
        cell.shared.lock().await.leave_everything();
        Ok(())
    }
}

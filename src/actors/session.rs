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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::directory::RegionError;
use super::outbox::{Outbox, close};
use super::region::{OfficerData, Watch};
use crate::context::{Context, SessionEntry};
use crate::geo::index::OfficerKey;
use crate::geo::index::merge_nearest;
use crate::geo::{LatLon, ZipId};
use crate::protocol::{Command, NearbyOfficer, Role, ServerMsg};

/// How a region tells a citizen session that its answer may have changed: a flag that is
/// raised once (one message) until the session consumes it, so a busy region costs a
/// watcher at most one message per push.
#[derive(Debug)]
pub struct PushSignal {
    dirty: AtomicBool,
    session: ActorRef<SessionMsg>,
}

impl PushSignal {
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
}

/// Messages of a session.
pub enum SessionMsg {
    /// A validated frame from the socket.
    Command(Command),
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

/// Start-up arguments of a session.
pub struct SessionArgs {
    /// Shared context.
    pub ctx: Arc<Context>,
    /// Session id.
    pub session_id: u64,
    /// Account id (token `sub`).
    pub account: Arc<str>,
    /// Display name.
    pub display_name: Arc<str>,
    /// Role.
    pub role: Role,
    /// First position.
    pub pos: LatLon,
    /// Its region.
    pub zip: ZipId,
    /// Distance to the region's centroid.
    pub d0: f64,
    /// Socket writer.
    pub out: Outbox,
}

struct Window {
    expires_at: DateTime<Utc>,
    timers: [JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>; 2],
}

/// Officer-only state.
#[derive(Default)]
struct OfficerState {
    window: Option<Window>,
    generation: u64,
}

/// Citizen-only state.
struct CitizenState {
    radius_m: f64,
    limit: usize,
    watched: Vec<ZipId>,
    signal: Arc<PushSignal>,
    last_push: Option<Instant>,
    push_pending: bool,
    last_sent: Vec<(OfficerKey, f64, f64)>,
    last_radius: f64,
    nearby: Vec<NearbyOfficer>,
    close_by: HashSet<OfficerKey>,
}

enum RoleState {
    Officer(OfficerState),
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
    role: RoleState,
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

    fn officer_data(&self, expires_at: DateTime<Utc>) -> OfficerData {
        OfficerData {
            display_name: self.name.clone(),
            expires_at,
            session_id: self.id,
            zip: self.zip,
        }
    }

    /// Publishes the officer's position to its region if available.
    async fn publish(&self) -> Result<(), RegionError> {
        if let RoleState::Officer(o) = &self.role
            && let Some(w) = &o.window
        {
            let data = self.officer_data(w.expires_at);
            return self
                .ctx
                .regions
                .upsert(self.zip, self.account.clone(), self.pos, data)
                .await;
        }
        Ok(())
    }

    fn withdraw(&self) {
        self.ctx
            .regions
            .remove(self.zip, self.account.clone(), self.id);
    }

    async fn on_location(&mut self, p: LatLon) {
        let max = self.ctx.settings.regions.max_distance_m;
        let (zip, d0) = match self.ctx.zips.locate(p, max) {
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
        c.signal.consume();
        c.push_pending = false;
        let started = Instant::now();
        let touching = self.ctx.zips.regions_touching(pos, zip, d0, c.radius_m);
        let watch = Watch {
            session_id: session,
            center: pos,
            radius_m: c.radius_m,
            signal: c.signal.clone(),
        };
        let calls = touching
            .iter()
            .map(|&z| regions.query(z, pos, c.radius_m, c.limit, Some(watch.clone())));
        let answers = join_all(calls).await;

        // Watched set: regions no longer touched forget this watcher.
        for &z in c.watched.iter().filter(|z| !touching.contains(z)) {
            regions.unwatch(z, session);
        }
        c.watched = touching.clone();

        let mut parts = Vec::with_capacity(answers.len());
        for a in answers {
            match a {
                Ok(found) => parts.push(found),
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
            }
        }
        let merged = merge_nearest(parts, c.limit);
        metrics::histogram!("nearby_query_seconds").record(started.elapsed().as_secs_f64());

        let key: Vec<(OfficerKey, f64, f64)> = merged
            .iter()
            .map(|n| (n.id.clone(), n.pos.lat, n.pos.lon))
            .collect();
        let changed = key != c.last_sent || c.radius_m != c.last_radius;
        let officers: Vec<NearbyOfficer> = merged
            .iter()
            .map(|n| NearbyOfficer {
                officer_id: n.id.to_string(),
                display_name: n.data.display_name.to_string(),
                lat: n.pos.lat,
                lon: n.pos.lon,
                distance_m: n.distance_m,
                zip: self.ctx.zips.get(n.data.zip).code.to_string(),
            })
            .collect();
        if reply || changed {
            self.out.send(&ServerMsg::Nearby {
                officers: officers.clone(),
                radius_m: c.radius_m,
            });
            c.last_sent = key;
            c.last_radius = c.radius_m;
            c.last_push = Some(Instant::now());
        }
        c.nearby = officers;

        // officer_nearby: once per entry into the proximity distance.
        let proximity = self.ctx.settings.citizen.proximity_m;
        let close_now: HashSet<OfficerKey> = merged
            .iter()
            .filter(|n| n.distance_m <= proximity)
            .map(|n| n.id.clone())
            .collect();
        for n in merged
            .iter()
            .filter(|n| close_now.contains(&n.id) && !c.close_by.contains(&n.id))
        {
            self.out.send(&ServerMsg::OfficerNearby {
                officer_id: n.id.to_string(),
                distance_m: n.distance_m,
            });
        }
        c.close_by = close_now;
    }

    /// Citizen: a watched region changed; push now or at the end of the interval.
    async fn schedule_push(&mut self, myself: &ActorRef<SessionMsg>) {
        let interval = Duration::from_millis(self.ctx.settings.citizen.push_interval_ms);
        let RoleState::Citizen(c) = &mut self.role else {
            return;
        };
        if c.push_pending {
            return;
        }
        let due = c
            .last_push
            .map(|t| t + interval)
            .unwrap_or_else(Instant::now);
        let now = Instant::now();
        if due <= now {
            self.refresh(false).await;
        } else {
            c.push_pending = true;
            myself.send_after(due - now, || SessionMsg::PushTick);
        }
    }

    fn leave_everything(&mut self) {
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
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let role = match a.role {
            Role::Officer => RoleState::Officer(OfficerState::default()),
            _ => {
                let cfg = &a.ctx.settings.citizen;
                RoleState::Citizen(Box::new(CitizenState {
                    radius_m: cfg.default_radius_m,
                    limit: cfg.default_limit,
                    watched: Vec::new(),
                    signal: Arc::new(PushSignal {
                        dirty: AtomicBool::new(false),
                        session: myself.clone(),
                    }),
                    last_push: None,
                    push_pending: false,
                    last_sent: Vec::new(),
                    last_radius: cfg.default_radius_m,
                    nearby: Vec::new(),
                    close_by: HashSet::new(),
                }))
            }
        };
        let entry = SessionEntry {
            session_id: a.session_id,
            role: a.role,
            actor: myself.clone(),
        };
        if let Some(old) = a.ctx.sessions.register(a.account.clone(), entry) {
            // The replaced session may already be stopping; then its socket closes anyway.
            let _ = old.actor.cast(SessionMsg::Close {
                code: close::REPLACED,
                error: Some("session_replaced"),
                reason: "a newer session of this account opened".into(),
            });
        }
        metrics::gauge!("ws_sessions", "role" => a.role.as_str()).increment(1.0);
        Ok(SessionState {
            ctx: a.ctx,
            id: a.session_id,
            account: a.account,
            name: a.display_name,
            pos: a.pos,
            zip: a.zip,
            d0: a.d0,
            out: a.out,
            role,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        st.out.send(&ServerMsg::Welcome {
            session_id: st.id.to_string(),
            role: st.role(),
            account_id: st.account.to_string(),
            zip: st.code(st.zip),
        });
        if matches!(st.role, RoleState::Citizen(_)) {
            st.refresh(true).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Command(cmd) => {
                metrics::counter!("ws_messages_in_total", "type" => cmd.type_name()).increment(1);
                match cmd {
                    Command::Ping => {
                        st.out.accepted();
                        st.out.send(&ServerMsg::Pong);
                    }
                    Command::Location(p) => st.on_location(p).await,
                    Command::Available(w) => {
                        st.out.accepted();
                        st.on_available(&myself, w).await;
                    }
                    Command::Unavailable => {
                        st.out.accepted();
                        st.end_window();
                        st.out.send(&ServerMsg::Availability {
                            available: false,
                            expires_at: None,
                        });
                    }
                    Command::Watch { radius_m, limit } => {
                        st.out.accepted();
                        if let RoleState::Citizen(c) = &mut st.role {
                            c.radius_m = radius_m.unwrap_or(c.radius_m);
                            c.limit = limit.unwrap_or(c.limit);
                        }
                        st.schedule_push(&myself).await;
                    }
                    Command::Respond { .. } | Command::RequestConnection { .. } => {
                        st.refuse(
                            "not_implemented",
                            "connections are not available on this server yet",
                            Some(cmd.type_name()),
                        );
                    }
                }
            }
            SessionMsg::Changed => st.schedule_push(&myself).await,
            SessionMsg::PushTick => {
                if let RoleState::Citizen(c) = &st.role
                    && c.push_pending
                {
                    st.refresh(false).await;
                }
            }
            SessionMsg::WindowTick {
                generation,
                expired,
            } => st.on_window_tick(generation, expired),
            SessionMsg::Resync(zip) => match st.role {
                RoleState::Officer(_) if zip == st.zip => {
                    if let Err(e) = st.publish().await {
                        tracing::warn!(session = st.id, "resync failed: {e}");
                    }
                }
                RoleState::Citizen(_) => st.refresh(false).await,
                _ => {}
            },
            SessionMsg::Close {
                code,
                error,
                reason,
            } => {
                st.leave_everything();
                if let Some(e) = error {
                    st.out.send(&ServerMsg::error(e, reason.clone(), None));
                }
                st.out.close(code, &reason);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        st.leave_everything();
        metrics::gauge!("ws_sessions", "role" => st.role().as_str()).decrement(1.0);
        Ok(())
    }
}

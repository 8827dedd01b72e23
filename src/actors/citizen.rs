//! A citizen's session: its search circle, the regions it watches, the last answer it was
//! sent, and the one connection request it may have open.
//!
//! Invariants:
//! * it watches exactly the regions its circle can touch (as of its last read), and the
//!   circle shared with them is the one of that read (see [`super::region_index`]);
//! * `nearby` goes out at once after each `location`, and otherwise at most once per push
//!   interval, only when the answer changed;
//! * `officer_nearby` is sent once per entry of an officer into the proximity distance;
//! * at most one request is open; it ends when the officer's side decides, or a little
//!   after the officer's own timeout should the officer's session vanish without a word.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use smallvec::SmallVec;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::mailbox::SendError;
use super::region::OfficerData;
use super::region_index::{PushSignal, Watch};
use super::session::{
    Common, Moved, OfferedRequest, Outcome, RoleSession, SessionHandle, SessionMsg, rfc3339, tell,
};
use crate::config::CitizenSettings;
use crate::geo::index::OfficerKey;
use crate::geo::{Nearby, ZipId};
use crate::protocol::{Command, Mode, NearbyOfficerRef, NearbyRef, Role, ServerMsg};

/// Most officers announced by `officer_nearby` from one answer.
const MAX_CLOSE: usize = 64;

/// A request being offered: to whom, its id, how far the officer is, and how.
#[derive(Clone, Copy)]
struct Ask<'a> {
    officer_id: &'a str,
    request_id: &'a str,
    distance_m: f64,
    mode: Mode,
}

/// The request a citizen has open.
struct Open {
    request_id: String,
    officer: SessionHandle,
    /// Safety net: should the officer's session end without answering, the request still
    /// ends (as `expired`) a little after the officer's own timeout.
    give_up: Instant,
}

/// A citizen session's own state.
pub struct Citizen {
    radius_m: f64,
    limit: usize,
    watched: Vec<ZipId>,
    /// This session's push signal, as the regions it watches hold it (it also carries the
    /// session's mailbox, where officers answer).
    watch: Watch,
    last_push: Option<Instant>,
    /// When a watched region first signalled a change not yet answered (push latency).
    changed_at: Option<Instant>,
    /// When the next coalesced push is due, if one waits.
    push_due: Option<Instant>,
    /// The officers of the last answer. A push is due when ids or positions change;
    /// requests may ask any of them.
    last: Vec<Nearby<OfficerData>>,
    last_radius: f64,
    close_by: HashSet<OfficerKey>,
    pending: Option<Open>,
    /// The zip this session is counted in (the admin map's citizens per zip).
    counted_in: Option<ZipId>,
}

impl Citizen {
    /// A citizen with the default search, whose mailbox is `me`.
    pub fn new(cfg: &CitizenSettings, me: SessionHandle) -> Self {
        Self {
            radius_m: cfg.default_radius_m,
            limit: cfg.default_limit,
            watched: Vec::new(),
            watch: Watch::new(Arc::new(PushSignal::new(me))),
            last_push: None,
            changed_at: None,
            push_due: None,
            last: Vec::new(),
            last_radius: cfg.default_radius_m,
            close_by: HashSet::new(),
            pending: None,
            counted_in: None,
        }
    }

    /// Recomputes the answer over every region the circle touches, updates the watched
    /// set, and sends `nearby` when `reply` (the answer to a location) or when it changed.
    async fn refresh(&mut self, c: &Common, reply: bool) {
        let regions = &c.ctx.regions;
        self.watch.signal.consume();
        let changed_at = self.changed_at.take();
        let started = std::time::Instant::now();
        let answer = regions
            .nearby(
                c.pos,
                c.zip,
                c.d0,
                self.radius_m,
                self.limit,
                Some((&self.watch, &self.watched)),
            )
            .await;
        let (merged, touching) = match answer {
            Ok((merged, touching, _)) => (merged, touching),
            Err(e) => {
                let reference = if reply { "location" } else { "nearby" };
                let msg = "nearby officers are unavailable; try again shortly";
                return c.unavailable(reference, msg, &e);
            }
        };
        // Regions no longer touched forget this watcher.
        for &z in self.watched.iter().filter(|z| !touching.contains(z)) {
            regions.unwatch(z, &self.watch);
        }
        self.watched = touching;
        crate::telemetry::nearby_query_seconds().record(started.elapsed().as_secs_f64());

        let changed = self.radius_m != self.last_radius
            || merged.len() != self.last.len()
            || merged
                .iter()
                .zip(&self.last)
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
                radius_m: self.radius_m,
            };
            // One buffer sized for the frame, no regrowth.
            let mut text = Vec::with_capacity(frame.size_hint());
            frame.write_json(&mut text);
            c.out.send_json("nearby", text);
            self.last_radius = self.radius_m;
            self.last_push = Some(Instant::now());
            if let (false, Some(t)) = (reply, changed_at) {
                // From the region's change signal to the push leaving: coalescing included.
                metrics::histogram!("nearby_push_latency_seconds")
                    .record(t.elapsed().as_secs_f64());
            }
        }
        self.announce_close(c, &merged).await;
        // Kept whether sent or not. Moved, not cloned; an empty answer keeps no buffer (it
        // was made for `limit` officers).
        self.last = if merged.is_empty() {
            Vec::new()
        } else {
            merged
        };
    }

    /// `officer_nearby` for every officer newly within the proximity distance. When the
    /// `limit` nearest are all that close, more may be: the same read path answers for the
    /// proximity circle.
    async fn announce_close(&mut self, c: &Common, merged: &[Nearby<OfficerData>]) {
        let proximity = c.ctx.settings.citizen.proximity_m;
        let mut close: Vec<(OfficerKey, f64)> = merged
            .iter()
            .filter(|n| n.distance_m <= proximity)
            .map(|n| (n.id.clone(), n.distance_m))
            .collect();
        if close.len() == self.limit && self.limit > 0 {
            let near = c
                .ctx
                .regions
                .nearby(c.pos, c.zip, c.d0, proximity, MAX_CLOSE, None)
                .await;
            if let Ok((all, _, _)) = near {
                close = all.into_iter().map(|n| (n.id, n.distance_m)).collect();
            }
        }
        for (id, d) in close.iter().filter(|(id, _)| !self.close_by.contains(id)) {
            c.out.send(&ServerMsg::OfficerNearby {
                officer_id: id.to_string(),
                distance_m: *d,
            });
        }
        self.close_by = close.into_iter().map(|(id, _)| id).collect();
    }

    /// A watched region changed: push now, or when the interval since the last push ends.
    async fn schedule_push(&mut self, c: &Common) {
        self.changed_at.get_or_insert_with(Instant::now);
        if self.push_due.is_none() {
            self.push_or_arm(c).await;
        }
    }

    /// A change is unsent and no push is due: push now if the last `nearby` went out an
    /// interval ago, else set the push for when it is due. A reply to a location carries
    /// every change before it, so a change it covered is not pushed.
    async fn push_or_arm(&mut self, c: &Common) {
        let interval = Duration::from_millis(c.ctx.settings.citizen.push_interval_ms);
        let now = Instant::now();
        let due = self.last_push.map_or(now, |t| t + interval);
        if due <= now {
            self.refresh(c, false).await;
        } else {
            self.push_due = Some(due);
        }
    }

    /// Counts this session in its current zip (and out of the one it was counted in).
    fn count_in(&mut self, c: &Common) {
        if let Some(z) = self.counted_in.replace(c.zip) {
            c.ctx.regions.citizen_in(z, false);
        }
        c.ctx.regions.citizen_in(c.zip, true);
    }

    /// Asks an officer of the current `nearby` set for a connection.
    async fn request_connection(&mut self, c: &Common, officer_id: String, mode: Mode) {
        let cfg = &c.ctx.settings.connections;
        let refuse = |code, msg: &str| c.refuse(code, msg, Some("request_connection"));
        if self.pending.is_some() {
            return refuse("request_pending", "you already have a pending request");
        }
        let Some(distance_m) = self
            .last
            .iter()
            .find(|n| *n.id == *officer_id)
            .map(|n| n.distance_m)
        else {
            return refuse(
                "officer_unavailable",
                "that officer is not among your nearby available officers",
            );
        };
        if mode == Mode::InPerson && distance_m > cfg.in_person_m {
            let msg = format!("in-person connections need {} m or less", cfg.in_person_m);
            return refuse("too_far", &msg);
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let ask = Ask {
            officer_id: &officer_id,
            request_id: &request_id,
            distance_m,
            mode,
        };
        let officer = match self.offer(c, &ask).await {
            Ok(h) => h,
            Err(code) => {
                let msg = match code {
                    "officer_busy" => "that officer is answering another request",
                    _ => "that officer is not available",
                };
                return refuse(code, msg);
            }
        };
        c.out.accepted();
        let expires_at = Utc::now() + chrono::Duration::seconds(cfg.request_timeout_s as i64);
        self.pending = Some(Open {
            request_id: request_id.clone(),
            officer,
            give_up: Instant::now() + Duration::from_secs(cfg.request_timeout_s + 5),
        });
        metrics::counter!("connection_requests_total").increment(1);
        c.out.send(&ServerMsg::ConnectionPending {
            request_id,
            officer_id,
            expires_at: rfc3339(expires_at),
        });
    }

    /// Offers the request to the officer's session — here, or in a cluster on the node
    /// that serves the officer's region — and waits for it to take or refuse it. On `Ok`,
    /// the handle reaches the officer's session (for a cancel).
    async fn offer(&self, c: &Common, ask: &Ask<'_>) -> Result<SessionHandle, &'static str> {
        let local = c
            .ctx
            .sessions
            .get(ask.officer_id)
            .filter(|e| e.role == Role::Officer);
        let Some(officer) = local else {
            return self.offer_remote(c, ask).await;
        };
        let offer = OfferedRequest {
            request_id: ask.request_id.to_owned(),
            citizen_id: c.account.clone(),
            citizen_name: c.name.clone(),
            citizen: self.watch.signal.session().clone(),
            distance_m: ask.distance_m,
            mode: ask.mode,
        };
        let (tx, rx) = oneshot::channel();
        match officer.handle.send(SessionMsg::Offer(offer, tx)) {
            Ok(()) => {}
            Err(SendError::Full(_)) => {
                metrics::counter!("session_mailbox_full_total", "msg" => "offer").increment(1);
                return Err("officer_busy");
            }
            Err(SendError::Closed(_)) => return Err("officer_unavailable"),
        }
        let timeout = Duration::from_millis(c.ctx.settings.regions.call_timeout_ms);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r.map(|()| officer.handle),
            _ => Err("officer_unavailable"),
        }
    }

    /// [`Citizen::offer`] to an officer on another node of the cluster: the node serving
    /// the officer's region (as the `nearby` answer placed it).
    async fn offer_remote(&self, c: &Common, ask: &Ask<'_>) -> Result<SessionHandle, &'static str> {
        let Ask {
            officer_id,
            request_id,
            distance_m,
            mode,
        } = *ask;
        let cluster = c.ctx.cluster.as_ref().ok_or("officer_unavailable")?;
        let zip = self
            .last
            .iter()
            .find(|n| *n.id == *officer_id)
            .and_then(|n| c.ctx.zips.by_code(n.data.card.zip()))
            .ok_or("officer_unavailable")?;
        let node = cluster.owner_of(zip).ok_or("officer_unavailable")?;
        let req = crate::cluster::wire::OfferRequest {
            request_id: request_id.to_owned(),
            officer_id: officer_id.to_owned(),
            citizen_id: c.account.to_string(),
            citizen_name: c.name.to_string(),
            distance_m,
            mode,
            citizen_node: cluster.node_id().to_owned(),
        };
        super::relay::offer(&c.ctx, cluster, &node.record.node_id, req).await
    }

    /// The officer's side decided.
    fn decided(&mut self, c: &Common, id: String, outcome: Outcome) {
        if self.pending.take_if(|p| p.request_id == id).is_none() {
            return;
        }
        match outcome {
            Outcome::Status(status) => {
                c.out.send(&ServerMsg::ConnectionResponse {
                    request_id: id,
                    status: status.to_owned(),
                });
            }
            Outcome::Established(e) => {
                c.out.send(&ServerMsg::ConnectionResponse {
                    request_id: id,
                    status: "accepted".to_owned(),
                });
                c.out.send(&ServerMsg::ConnectionEstablished {
                    connection_id: e.connection_id,
                    officer_id: e.officer_id,
                    citizen_id: c.account.to_string(),
                    mode: e.mode,
                    points_awarded: e.points_awarded,
                    balance: e.balance,
                });
            }
        }
    }
}

impl RoleSession for Citizen {
    const ROLE: Role = Role::Citizen;

    fn start<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()> {
        // The orchestrator's position is the first: its answer follows `welcome`.
        self.count_in(c);
        Box::pin(self.refresh(c, true))
    }

    fn command<'a>(&'a mut self, c: &'a mut Common, cmd: Command) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match cmd {
                Command::Location(p) => {
                    let moved = c.relocate(p);
                    if matches!(moved, Moved::From(_)) {
                        self.count_in(c);
                    }
                    if !matches!(moved, Moved::Refused) {
                        self.refresh(c, true).await;
                    }
                }
                Command::Watch { radius_m, limit } => {
                    c.out.accepted();
                    self.radius_m = radius_m.unwrap_or(self.radius_m);
                    self.limit = limit.unwrap_or(self.limit);
                    self.schedule_push(c).await;
                }
                Command::RequestConnection { officer_id, mode } => {
                    self.request_connection(c, officer_id, mode).await
                }
                // Refused by the decoder for this role.
                Command::Ping
                | Command::Available(_)
                | Command::Unavailable
                | Command::Respond { .. } => {}
            }
        })
    }

    fn message<'a>(&'a mut self, c: &'a mut Common, msg: SessionMsg) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match msg {
                SessionMsg::Changed => self.schedule_push(c).await,
                SessionMsg::Decided(id, outcome) => self.decided(c, id, outcome),
                SessionMsg::Resync(zip) => {
                    // The restarted region has forgotten this watcher: register it anew.
                    self.watched.retain(|&z| z != zip);
                    self.refresh(c, false).await
                }
                _ => {}
            }
        })
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.push_due, self.pending.as_ref().map(|p| p.give_up)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_deadline<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let now = Instant::now();
            if let Some(p) = self.pending.as_ref().filter(|p| p.give_up <= now) {
                let id = p.request_id.clone();
                self.decided(c, id, Outcome::Status("expired"));
            }
            if self.push_due.is_some_and(|t| t <= now) {
                self.push_due = None;
                if self.changed_at.is_some() {
                    self.push_or_arm(c).await;
                }
            }
        })
    }

    fn leave(&mut self, c: &mut Common) {
        if let Some(z) = self.counted_in.take() {
            c.ctx.regions.citizen_in(z, false);
        }
        if let Some(p) = self.pending.take() {
            // An officer that left has nothing to cancel.
            tell(
                &p.officer,
                SessionMsg::CancelRequest(p.request_id),
                "connection",
            );
        }
        for z in std::mem::take(&mut self.watched) {
            c.ctx.regions.unwatch(z, &self.watch);
        }
    }
}

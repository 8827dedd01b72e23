//! An officer's session: the availability window, the officer's entry in its region's
//! index, and the one connection request it may hold.
//!
//! Invariants:
//! * while a window runs and the position is known, the officer is in exactly one region
//!   index (the one holding its position), and in none otherwise; it leaves at once on
//!   `unavailable`, expiry, close or panic;
//! * at most one request is pending; it ends by `respond`, timeout, or the citizen leaving,
//!   and the citizen is told how (except when it cancelled itself);
//! * an accepted connection is recorded by the store exactly once (keyed by request id);
//!   a repeated `respond` gets the same answer and records nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::directory::RegionError;
use super::region::OfficerData;
use super::session::{
    Common, Established, Moved, OfferedRequest, Outcome, RoleSession, SessionHandle, SessionMsg,
    rfc3339, tell,
};
use super::windows::Window as StoredWindow;
use crate::context::Counted;
use crate::geo::ZipId;
use crate::protocol::{CitizenRef, Command, Mode, Role, ServerMsg};
use crate::store::NewConnection;

struct Window {
    _counted: Counted,
    expires_at: DateTime<Utc>,
    /// When `window_expiring` is due (cleared once sent).
    warn_at: Option<Instant>,
    end_at: Instant,
}

/// The request an officer holds.
struct Pending {
    _counted: Counted,
    request_id: String,
    citizen_id: std::sync::Arc<str>,
    citizen: SessionHandle,
    mode: Mode,
    expires: Instant,
}

/// An officer session's own state.
#[derive(Default)]
pub struct Officer {
    window: Option<Window>,
    pending: Option<Pending>,
    /// The last accepted request and the frame sent for it, so a duplicated `respond`
    /// gets the same answer and records nothing new.
    last_accepted: Option<(String, ServerMsg)>,
    /// What the officer's region entry carries, and the zip it was made for.
    data: Option<(ZipId, OfficerData)>,
}

impl Officer {
    /// Publishes the position to the region if available.
    async fn publish(&mut self, c: &Common) -> Result<(), RegionError> {
        let Some(w) = &self.window else {
            return Ok(());
        };
        let expires_at = w.expires_at;
        // The entry changes only with the zip and the window: made (and its card escaped)
        // once per region and window, not once per move.
        let data = match &self.data {
            Some((z, d)) if *z == c.zip && d.expires_at == expires_at => d.clone(),
            _ => {
                let code = &c.ctx.zips.get(c.zip).code;
                let d = OfficerData::new(&c.account, c.name.clone(), expires_at, c.id, code);
                self.data = Some((c.zip, d.clone()));
                d
            }
        };
        c.ctx
            .regions
            .upsert(c.zip, c.account.clone(), c.pos, data)
            .await
    }

    /// Publishes after a frame of type `reference`; a region that cannot take it is the
    /// client's `unavailable` error. False then.
    async fn publish_for(&mut self, c: &Common, reference: &str) -> bool {
        match self.publish(c).await {
            Ok(()) => true,
            Err(e) => {
                c.unavailable(reference, "try again shortly", &e);
                false
            }
        }
    }

    fn withdraw(c: &Common, zip: ZipId) {
        c.ctx.regions.remove(zip, c.account.clone(), c.id);
    }

    /// Starts (or restarts) the window at now + `window_s`.
    async fn available(&mut self, c: &Common, window_s: u64) {
        let expires_at = Utc::now() + chrono::Duration::seconds(window_s as i64);
        self.open_window(c, expires_at, window_s);
        if !self.publish_for(c, "available").await {
            return;
        }
        // Told only once the window is kept: a reconnect through any node resumes it.
        c.ctx
            .windows
            .set(
                &c.account,
                StoredWindow {
                    until: expires_at,
                    window_s,
                },
            )
            .await;
        c.out.send(&ServerMsg::Availability {
            available: true,
            expires_at: Some(rfc3339(expires_at)),
        });
    }

    /// Runs a window of `window_s` that ends at `expires_at` (now, or resumed after a
    /// reconnect: the end never moves). `window_expiring` is due 60 s before the end, or
    /// at half-time for windows under 120 s; if that time passed, it is not sent again.
    fn open_window(&mut self, c: &Common, expires_at: DateTime<Utc>, window_s: u64) {
        let now = Instant::now();
        let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
        let warn_before_end = if window_s >= 120 {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(window_s) / 2
        };
        self.window = Some(Window {
            // A running window is restarted: its count is kept by the new one.
            _counted: match self.window.take() {
                Some(w) => w._counted,
                None => c.ctx.sessions.count_available(),
            },
            expires_at,
            warn_at: left.checked_sub(warn_before_end).map(|d| now + d),
            end_at: now + left,
        });
    }

    /// Ends the window: the officer leaves its region; and, unless `keep` (the socket
    /// closed: a reconnect resumes the window), the window is forgotten.
    fn end_window(&mut self, c: &Common, keep: bool) {
        if self.window.take().is_some() {
            Self::withdraw(c, c.zip);
            if !keep {
                c.ctx.windows.clear(&c.account);
            }
        }
    }

    fn take_offer(&mut self, c: &Common, req: OfferedRequest) -> Result<(), &'static str> {
        if self.window.is_none() {
            return Err("officer_unavailable");
        }
        if self.pending.is_some() {
            return Err("officer_busy");
        }
        let timeout_s = c.ctx.settings.connections.request_timeout_s;
        let expires_at = Utc::now() + chrono::Duration::seconds(timeout_s as i64);
        c.out.send(&ServerMsg::ConnectionRequested {
            request_id: req.request_id.clone(),
            citizen: CitizenRef {
                citizen_id: req.citizen_id.to_string(),
                display_name: req.citizen_name.to_string(),
            },
            distance_m: req.distance_m,
            mode: req.mode,
            expires_at: rfc3339(expires_at),
        });
        self.pending = Some(Pending {
            _counted: c.ctx.sessions.count_pending(),
            request_id: req.request_id,
            citizen_id: req.citizen_id,
            citizen: req.citizen,
            mode: req.mode,
            expires: Instant::now() + Duration::from_secs(timeout_s),
        });
        Ok(())
    }

    /// Accepts or declines the pending request.
    async fn respond(&mut self, c: &Common, request_id: String, accept: bool) {
        if let Some((id, frame)) = &self.last_accepted
            && *id == request_id
        {
            // A duplicated respond: the same answer, nothing recorded again.
            c.out.accepted();
            c.out.send(frame);
            return;
        }
        let Some(p) = self.pending.as_ref().filter(|p| p.request_id == request_id) else {
            return c.refuse(
                "unknown_request",
                "no pending request with that id",
                Some("respond"),
            );
        };
        c.out.accepted();
        if !accept {
            return self.end_pending(c, &request_id, "declined", false);
        }
        let new = NewConnection {
            request_id: request_id.clone(),
            officer_id: c.account.to_string(),
            citizen_id: p.citizen_id.to_string(),
            mode: p.mode.as_str().to_owned(),
            zip: c.code(c.zip),
            per_connection: c.ctx.settings.points.per_connection,
            pair_cooldown: Duration::from_secs(c.ctx.settings.points.pair_cooldown_s),
            at: Utc::now(),
        };
        let rec = match c.ctx.store.record_accepted(&new).await {
            Ok(r) => r,
            // Nothing was recorded; the request stays pending and may be answered again.
            Err(e) => {
                return c.unavailable("respond", "could not record the connection; try again", &e);
            }
        };
        if !rec.replayed {
            c.ctx.events_wake.notify_one();
        }
        // Still ours: nothing else runs on this session while the store answered.
        let Some(p) = self.pending.take() else { return };
        metrics::counter!("connections_established_total").increment(1);
        let officer_frame = ServerMsg::ConnectionEstablished {
            connection_id: rec.connection_id.clone(),
            officer_id: c.account.to_string(),
            citizen_id: p.citizen_id.to_string(),
            mode: p.mode,
            points_awarded: rec.points_awarded,
            balance: rec.officer_balance,
        };
        c.out.send(&officer_frame);
        self.last_accepted = Some((request_id.clone(), officer_frame));
        let outcome = Outcome::Established(Established {
            connection_id: rec.connection_id,
            officer_id: c.account.to_string(),
            mode: p.mode,
            points_awarded: rec.points_awarded,
            balance: rec.citizen_balance,
        });
        // A citizen who left meanwhile still has its points; it sees them in its profile.
        let decided = SessionMsg::Decided(request_id, outcome);
        tell(&p.citizen, decided, "connection");
    }

    /// Ends the pending request `id` with `status`, telling the citizen (unless it
    /// cancelled itself), and the officer too when `tell_officer` (a decline needs no echo).
    fn end_pending(&mut self, c: &Common, id: &str, status: &'static str, tell_officer: bool) {
        let Some(p) = self.pending.take_if(|p| p.request_id == id) else {
            return;
        };
        if tell_officer {
            c.out.send(&ServerMsg::ConnectionResponse {
                request_id: id.to_owned(),
                status: status.to_owned(),
            });
        }
        if status != "cancelled" {
            let decided = SessionMsg::Decided(id.to_owned(), Outcome::Status(status));
            tell(&p.citizen, decided, "connection");
        }
        metrics::counter!("connection_requests_ended_total", "status" => status).increment(1);
    }
}

impl RoleSession for Officer {
    const ROLE: Role = Role::Officer;

    fn resume<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, Option<DateTime<Utc>>> {
        Box::pin(async move {
            let w = c.ctx.windows.get(&c.account).await?;
            self.open_window(c, w.until, w.window_s);
            metrics::counter!("windows_resumed_total").increment(1);
            Some(w.until)
        })
    }

    fn start<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()> {
        // Visible once it sends `available`, or at once with a resumed window.
        Box::pin(async move {
            if self.window.is_some() {
                self.publish_for(c, "available").await;
            }
        })
    }

    fn command<'a>(&'a mut self, c: &'a mut Common, cmd: Command) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match cmd {
                Command::Location(p) => match c.relocate(p) {
                    Moved::Refused => {}
                    Moved::Stayed => {
                        self.publish_for(c, "location").await;
                    }
                    Moved::From(old) => {
                        if self.window.is_some() {
                            Self::withdraw(c, old);
                        }
                        self.publish_for(c, "location").await;
                    }
                },
                Command::Available(w) => {
                    c.out.accepted();
                    self.available(c, w).await;
                }
                Command::Unavailable => {
                    c.out.accepted();
                    self.end_window(c, false);
                    c.out.send(&ServerMsg::Availability {
                        available: false,
                        expires_at: None,
                    });
                }
                Command::Respond { request_id, accept } => {
                    self.respond(c, request_id, accept).await
                }
                // Refused by the decoder for this role.
                Command::Ping | Command::Watch { .. } | Command::RequestConnection { .. } => {}
            }
        })
    }

    fn message<'a>(&'a mut self, c: &'a mut Common, msg: SessionMsg) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match msg {
                SessionMsg::Offer(req, reply) => {
                    let r = self.take_offer(c, req);
                    // The citizen may have given up waiting; it then cancels on its side.
                    let _ = reply.send(r);
                }
                SessionMsg::CancelRequest(id) => self.end_pending(c, &id, "cancelled", true),
                SessionMsg::Resync(zip) if zip == c.zip => {
                    if let Err(e) = self.publish(c).await {
                        tracing::warn!(session = c.id, "resync failed: {e}");
                    }
                }
                _ => {}
            }
        })
    }

    fn deadline(&self) -> Option<Instant> {
        let w = self.window.as_ref();
        [
            w.and_then(|w| w.warn_at),
            w.map(|w| w.end_at),
            self.pending.as_ref().map(|p| p.expires),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_deadline<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let now = Instant::now();
            if let Some(p) = self.pending.as_ref().filter(|p| p.expires <= now) {
                let id = p.request_id.clone();
                self.end_pending(c, &id, "expired", true);
            }
            let Some(w) = &mut self.window else { return };
            if w.warn_at.is_some_and(|t| t <= now) {
                w.warn_at = None;
                c.out.send(&ServerMsg::WindowExpiring {
                    expires_at: rfc3339(w.expires_at),
                });
            }
            if w.end_at <= now {
                self.end_window(c, false);
                c.out.send(&ServerMsg::WindowExpired);
                c.out.close(super::outbox::close::NORMAL, "window expired");
            }
        })
    }

    fn leave(&mut self, c: &mut Common) {
        if let Some(p) = self.pending.take() {
            let decided = SessionMsg::Decided(p.request_id, Outcome::Status("cancelled"));
            tell(&p.citizen, decided, "connection");
        }
        self.end_window(c, true);
    }
}

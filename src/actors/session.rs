//! A session: one task per connected app that is its actor. The task owns the socket, the
//! session's state, its mailbox and its timers, and handles everything in order in one
//! loop — a frame from the socket, a message from elsewhere (region change signal,
//! connection messages, replacement, kick, resync), or a timer that fell due. Nothing else
//! touches the state, so there is no lock around it; other tasks hold only a
//! [`SessionHandle`] (the mailbox's sending side).
//!
//! Officers ([`super::officer`]) and citizens ([`super::citizen`]) are separate types over
//! the small part here: the loop, the [`Common`] state (who, where, the outbox), refusals
//! and the rate limit.
//!
//! Invariants:
//! * frames are answered in the order they arrive; `welcome` (and a citizen's first
//!   `nearby`) before anything else;
//! * every session is in the node's registry while its task runs, so a restarted region can
//!   ask each to resend what it derived from it (each checks whether the zip is its own);
//! * handlers never fail: errors go to the client as `error` frames and to the log. A
//!   handler that panics closes its socket with 1011 (`session_panics_total`); the session
//!   still leaves its regions and its pending request, and the server lives on;
//! * however the task ends, the session leaves every index, watch and registry entry.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use governor::{Quota, RateLimiter};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::Instrument as _;

use super::citizen::Citizen;
use super::mailbox::{self, Receiver};
use super::officer::Officer;
use super::outbox::{Outbox, close};
use super::socket::{Beat, Event, Heartbeat, Timer, Writer, arm};
use crate::context::{Context, SessionEntry};
use crate::geo::{LatLon, ZipId};
use crate::http::auth::Ticket;
use crate::protocol::{Command, DecodeLimits, Role, ServerMsg, WireError, decode};

/// The sending side of a session's mailbox: all that other tasks hold of a session.
pub type SessionHandle = mailbox::Sender<SessionMsg>;

/// Messages to a session from elsewhere in the node.
#[derive(Debug)]
pub enum SessionMsg {
    /// A watched region changed (raised once until the citizen reads again).
    Changed,
    /// A region restarted: resend what it derived from this session.
    Resync(ZipId),
    /// Officer: a citizen's request, to take or refuse (`Err` carries the error code).
    Offer(OfferedRequest, oneshot::Sender<Result<(), &'static str>>),
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
    /// Cluster: a session of this account opened on another node.
    OpenedElsewhere,
    /// Cluster: this node gave up regions; hand off if this session's is one of them.
    CheckOwner,
    /// A frame for the phone that changes nothing here (a trophy awarded).
    Notify(Box<ServerMsg>),
    /// Fault injection: the handler panics (tests prove the 1011 path with it).
    Crash,
}

pub use super::offer::{Established, OfferedRequest, Outcome};

/// What both roles keep: who the session is, where it is, and its outbox.
pub struct Common {
    /// The node's shared handles.
    pub ctx: Arc<Context>,
    /// Session id.
    pub id: u64,
    /// Account id.
    pub account: Arc<str>,
    /// Display name.
    pub name: Arc<str>,
    /// Last position.
    pub pos: LatLon,
    /// Its region.
    pub zip: ZipId,
    /// Distance from the position to the region's centroid.
    pub d0: f64,
    /// The socket's outbound queue.
    pub out: Outbox,
    /// The session's own mailbox (for timers it leaves behind).
    pub me: SessionHandle,
    /// Cluster: the node this session was handed off to, once told.
    pub handed_to: Option<String>,
}

/// Where a `location` took the session.
pub enum Moved {
    /// Outside the service area: refused, nothing changed.
    Refused,
    /// Same region as before.
    Stayed,
    /// Into another region (`zip_changed` sent); the old one is given.
    From(ZipId),
}

impl Common {
    /// A zip's code.
    pub fn code(&self, zip: ZipId) -> String {
        self.ctx.zips.get(zip).code.to_string()
    }

    /// An error frame for a refused command; closes with 1008 at the error limit.
    pub fn refuse(&self, code: &str, message: &str, reference: Option<&str>) {
        if self.out.refuse(code, message, reference) {
            self.out.close(close::POLICY, "too many errors");
        }
    }

    /// An `unavailable` error frame for a failure that is the server's, not the client's.
    pub fn unavailable(&self, reference: &str, message: &str, cause: &dyn std::fmt::Display) {
        tracing::warn!(session = self.id, "{reference}: {cause}");
        metrics::counter!("ws_errors_total", "code" => "unavailable").increment(1);
        self.out
            .send(&ServerMsg::error("unavailable", message, Some(reference)));
    }

    /// Takes a new position: finds its region, and tells the client when it changed.
    pub fn relocate(&mut self, p: LatLon) -> Moved {
        let max = self.ctx.settings.regions.max_distance_m;
        let (zip, d0) = match self.ctx.zips.locate_from(p, self.zip, max) {
            Ok(v) => v,
            Err(e) => {
                self.refuse("outside_service_area", &e.to_string(), Some("location"));
                return Moved::Refused;
            }
        };
        self.out.accepted();
        let old = self.zip;
        self.pos = p;
        self.d0 = d0;
        if zip == old {
            return Moved::Stayed;
        }
        self.zip = zip;
        self.out.send(&ServerMsg::ZipChanged {
            zip: self.code(zip),
        });
        Moved::From(old)
    }
}

/// Sends a message that the receiver may no longer want: a session that ended has nobody
/// to tell; a full mailbox (a stuck task) is counted under `what` and logged. True when the
/// message was queued.
pub fn tell(to: &SessionHandle, msg: SessionMsg, what: &'static str) -> bool {
    match to.send(msg) {
        Ok(()) => true,
        Err(mailbox::SendError::Closed(_)) => false,
        Err(mailbox::SendError::Full(_)) => {
            metrics::counter!("session_mailbox_full_total", "msg" => what).increment(1);
            tracing::warn!(
                msg = what,
                "a session's mailbox is full: message not queued"
            );
            false
        }
    }
}

/// A time on the wire (RFC 3339, whole seconds, UTC).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What an officer or a citizen session does with what reaches it. Each handler returns one
/// boxed future, allocated only while it runs: inline, the loop's state (kept for the whole
/// life of every socket) would be sized for the largest of them (a store call, a read of a
/// dozen regions).
pub trait RoleSession: Send + Sized + 'static {
    /// The role this type serves.
    const ROLE: Role;
    /// Before `welcome`: state that outlived an earlier socket of the account (an officer's
    /// running window, whose end is returned for `welcome`).
    fn resume<'a>(&'a mut self, _c: &'a mut Common) -> BoxFuture<'a, Option<DateTime<Utc>>> {
        Box::pin(async { None })
    }
    /// Right after `welcome`, before any frame.
    fn start<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()>;
    /// A validated frame of this role (`ping` is answered by the loop).
    fn command<'a>(&'a mut self, c: &'a mut Common, cmd: Command) -> BoxFuture<'a, ()>;
    /// A message from elsewhere (`Close` and `Crash` are handled by the loop).
    fn message<'a>(&'a mut self, c: &'a mut Common, msg: SessionMsg) -> BoxFuture<'a, ()>;
    /// The earliest timer of the session, if any runs.
    fn deadline(&self) -> Option<Instant>;
    /// The earliest timer fell due (others may have too).
    fn on_deadline<'a>(&'a mut self, c: &'a mut Common) -> BoxFuture<'a, ()>;
    /// Leaves every region, watch and pending request. Runs when the session ends (also
    /// after a panic), and on `Close`; a second call finds nothing left to do.
    fn leave(&mut self, c: &mut Common);
}

/// Releases the socket slot, unlists the outbox and the registry entry, and moves the
/// sessions gauge however the task ends.
struct Registered {
    ctx: Arc<Context>,
    id: u64,
    account: Arc<str>,
    role: Role,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let s = &self.ctx.sessions;
        s.unregister(&self.account, self.id);
        s.detach(self.id);
        s.close_socket();
        metrics::gauge!("ws_sessions", "role" => self.role.as_str()).decrement(1.0);
    }
}

/// Runs the session of `socket` granted by ticket `t` until it ends. The caller reserved
/// a socket slot ([`crate::context::Sessions::try_open_socket`]); it is released here.
pub async fn run(ctx: Arc<Context>, t: Ticket, socket: WebSocket) {
    let id = ctx.next_session_id();
    let lim = &ctx.settings.limits;
    let out = Outbox::new(lim.outbound_queue, lim.max_consecutive_errors);
    let (handle, inbox) = mailbox::mailbox(lim.session_mailbox);
    metrics::gauge!("ws_sessions", "role" => t.role.as_str()).increment(1.0);
    let _registered = Registered {
        ctx: ctx.clone(),
        id,
        account: t.account.clone(),
        role: t.role,
    };
    // Listed for shutdown, which closes the socket through its outbox (1001).
    ctx.sessions.attach(id, out.clone());
    let entry = SessionEntry {
        session_id: id,
        role: t.role,
        handle: handle.clone(),
    };
    if let Some(old) = ctx.sessions.register(t.account.clone(), entry) {
        // A replaced session that is ending already closes its socket anyway.
        let close = SessionMsg::Close {
            code: close::REPLACED,
            error: Some("session_replaced"),
            reason: "a newer session of this account opened".into(),
        };
        tell(&old.handle, close, "replace");
    }
    if let Some(cl) = &ctx.cluster {
        cl.session_opened(&t.account);
    }
    tracing::debug!(session = id, account = %t.account, role = t.role.as_str(), "session open");
    let c = Common {
        ctx: ctx.clone(),
        id,
        account: t.account.clone(),
        name: t.display_name.clone(),
        pos: t.pos,
        zip: t.zip,
        d0: t.d0,
        out,
        me: handle.clone(),
        handed_to: None,
    };
    // Every line logged while the session runs names it (`log.format = "json"`: the
    // span's fields on each line).
    let span =
        tracing::info_span!("session", session = id, account = %t.account, role = t.role.as_str());
    match t.role {
        Role::Officer => {
            drive(Officer::default(), c, inbox, socket)
                .instrument(span)
                .await
        }
        _ => {
            let citizen = Citizen::new(&ctx.settings.citizen, handle);
            drive(citizen, c, inbox, socket).instrument(span).await
        }
    }
    tracing::debug!(session = id, "session closed");
}

/// Awaits a handler; a panic is caught, counted and logged, and closes the socket with
/// 1011. Returns false after a panic.
async fn guarded(out: &Outbox, id: u64, f: BoxFuture<'_, ()>) -> bool {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(()) => true,
        Err(_) => {
            metrics::counter!("session_panics_total").increment(1);
            tracing::error!(
                session = id,
                "a session handler panicked; closing its socket"
            );
            out.abort(close::INTERNAL, "internal error");
            false
        }
    }
}

/// What the loop turns up next.
enum Step {
    Frame(Option<Result<Message, axum::Error>>),
    Msg(SessionMsg),
    Due,
}

async fn drive<R: RoleSession>(
    mut role: R,
    mut c: Common,
    mut inbox: Receiver<SessionMsg>,
    mut socket: WebSocket,
) {
    let kind = R::ROLE;
    let ctx = c.ctx.clone();
    let lim = &ctx.settings.limits;
    let grace = Duration::from_millis(ctx.settings.server.shutdown_grace_ms);
    let out = c.out.clone();
    let mut writer = Writer::new(out.clone());
    let per_s = NonZeroU32::new(lim.messages_per_s.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(lim.messages_burst.max(1)).expect("max(1) is non-zero");
    let limiter = RateLimiter::direct(Quota::per_second(per_s).allow_burst(burst));
    let dl = ctx.settings.decode_limits();
    // Once the socket is closing it has `grace` to finish: boxed, as most sockets never
    // close this way.
    let mut closing: Option<Pin<Box<Sleep>>> = None;
    let mut timer = Timer::default();
    // How the socket ends when the client broke the protocol or went silent (else 1000).
    let mut ending = None;
    let mut heartbeat = Heartbeat::new(
        Duration::from_secs(lim.ws_ping_interval_s),
        Duration::from_secs(lim.ws_pong_timeout_s),
    );

    let resumed = role.resume(&mut c).await;
    out.send(&ServerMsg::Welcome {
        session_id: c.id.to_string(),
        role: kind,
        account_id: c.account.to_string(),
        zip: c.code(c.zip),
        available: resumed.map(|_| true),
        expires_at: resumed.map(rfc3339),
    });
    let mut alive = guarded(&out, c.id, role.start(&mut c)).await;
    // A region that moved between the ticket and the socket: on to its node.
    c.hand_off_if_elsewhere(kind).await;

    // Everything that ends a socket reaches it through its outbox (the session's own
    // closes, shutdown's `Sessions::close_all`, a panic's 1011), so the loop polls the
    // outbox, the socket, the mailbox and one timer, nothing else.
    while alive {
        timer.set(Some(
            role.deadline()
                .map_or(heartbeat.next, |d| d.min(heartbeat.next)),
        ));
        let step = tokio::select! {
            biased;
            _ = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => break,
            e = std::future::poll_fn(|cx| writer.poll_event(cx, &mut socket)) => match e {
                // The close frame is out (or the socket failed). Reads go on until the
                // client's close or the grace period: shut down now, and what the client
                // still sends would reset the connection and could destroy the close frame
                // and the last errors before it reads them.
                Event::WriterDone => {
                    arm(&mut closing, grace);
                    continue;
                }
                Event::Closing => {
                    // A closing session is no longer the account's live one.
                    ctx.sessions.unregister(&c.account, c.id);
                    arm(&mut closing, grace);
                    continue;
                }
                Event::Frame(f) => Step::Frame(f),
            },
            m = inbox.recv() => Step::Msg(m),
            _ = timer.fired() => Step::Due,
        };
        if let Step::Frame(Some(Ok(_))) = step {
            heartbeat.heard();
        }
        alive = match step {
            Step::Frame(Some(Err(e))) => {
                ending = super::socket::close_for(e);
                break;
            }
            Step::Frame(None | Some(Ok(Message::Close(_)))) => break,
            Step::Frame(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => true,
            Step::Frame(Some(Ok(_))) if out.is_closing() => {
                // The session is closing after the replies it still owes: frames are read,
                // not answered.
                metrics::counter!("ws_frames_ignored_total").increment(1);
                true
            }
            Step::Frame(Some(Ok(frame))) => {
                match input(frame, kind, &dl, limiter.check().is_ok()) {
                    Err(e) => {
                        c.refuse(e.code, &e.message, e.reference.as_deref());
                        true
                    }
                    Ok(Command::Ping) => {
                        out.accepted();
                        out.send(&ServerMsg::Pong);
                        true
                    }
                    Ok(cmd) => {
                        let was = c.zip;
                        let ok = guarded(&out, c.id, role.command(&mut c, cmd)).await;
                        if ok && c.zip != was {
                            c.hand_off_if_elsewhere(kind).await;
                        }
                        ok
                    }
                }
            }
            Step::Msg(SessionMsg::Close {
                code,
                error,
                reason,
            }) => {
                role.leave(&mut c);
                if let Some(e) = error {
                    out.send(&ServerMsg::error(e, reason.clone(), None));
                }
                out.close(code, &reason);
                true
            }
            Step::Msg(SessionMsg::OpenedElsewhere) => {
                // Handed off: the phone reached the other node. Otherwise a newer session
                // of the account opened there: one session per account in the cluster.
                let (code, error, reason) = if c.handed_to.is_some() {
                    (close::HANDOFF, None, "handed off to another node")
                } else {
                    (
                        close::REPLACED,
                        Some("session_replaced"),
                        "a newer session of this account opened",
                    )
                };
                role.leave(&mut c);
                if let Some(e) = error {
                    out.send(&ServerMsg::error(e, reason, None));
                }
                out.close(code, reason);
                true
            }
            Step::Msg(SessionMsg::Notify(frame)) => {
                out.send(&frame);
                true
            }
            Step::Msg(SessionMsg::CheckOwner) => {
                c.hand_off_if_elsewhere(kind).await;
                true
            }
            Step::Msg(SessionMsg::Crash) => {
                let id = c.id;
                guarded(
                    &out,
                    id,
                    Box::pin(async move { panic!("injected failure in session {id}") }),
                )
                .await
            }
            Step::Msg(m) => guarded(&out, c.id, role.message(&mut c, m)).await,
            Step::Due => {
                let now = Instant::now();
                match heartbeat.due(now) {
                    Some(Beat::Ping) => out.ping(),
                    Some(Beat::Dead) => {
                        metrics::counter!("ws_pong_timeouts_total").increment(1);
                        ending = Some((close::GOING_AWAY, "no answer to ping"));
                        break;
                    }
                    Some(Beat::Quiet) | None => {}
                }
                if role.deadline().is_some_and(|d| d <= now) {
                    guarded(&out, c.id, role.on_deadline(&mut c)).await
                } else {
                    true
                }
            }
        };
    }

    // The session is over: nothing more is queued (an abort still closes the socket), it
    // leaves everything it published, and its mailbox closes (senders see it gone).
    out.retire();
    let left = std::panic::catch_unwind(AssertUnwindSafe(|| role.leave(&mut c)));
    if left.is_err() {
        metrics::counter!("session_panics_total").increment(1);
        tracing::error!(session = c.id, "leaving a session panicked");
    }
    drop(inbox);
    // Close the socket if nobody has (the client went first: this flushes the reply to
    // its close frame); a client that does not read gets the grace period.
    if !writer.done {
        let (code, reason) = ending.unwrap_or((close::NORMAL, "bye"));
        out.abort(code, reason);
        let _ = tokio::time::timeout(grace, writer.finish_on(&mut socket)).await;
    }
    let _ = tokio::time::timeout(grace, futures_util::SinkExt::flush(&mut socket)).await;
}

/// Turns a frame into a command of `role`, or the refusal to answer it with.
fn input(
    frame: Message,
    role: Role,
    dl: &DecodeLimits,
    within_rate: bool,
) -> Result<Command, WireError> {
    if !within_rate {
        metrics::counter!("ws_rate_limited_total").increment(1);
        return Err(WireError::new("rate_limited", "too many messages", None));
    }
    let Message::Text(text) = frame else {
        return Err(WireError::new(
            "unsupported_frame",
            "binary frames are not supported; send JSON text",
            None,
        ));
    };
    let cmd = decode(text.as_str(), role, dl)?;
    crate::telemetry::count("ws_messages_in_total", "type", cmd.type_name());
    crate::telemetry::message_in();
    Ok(cmd)
}

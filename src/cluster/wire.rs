//! What nodes say to each other over NATS: member and owner records in the KV buckets, and
//! the bodies of cross-node requests. JSON, so an operator can read them with the `nats` CLI.

use serde::{Deserialize, Serialize};

use super::placement::Unit;
use crate::protocol::Role;

/// A member's record in the members bucket, rewritten at every renewal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    /// The member id.
    pub node_id: String,
    /// Where phones and nodes reach it.
    pub advertise_url: String,
    /// The node's live counts at the renewal.
    pub counts: NodeCounts,
    /// Units owned at the renewal.
    pub units_owned: usize,
    /// Regions (zips) in the units owned.
    pub regions_owned: usize,
    /// Units whose ownership this node still has to take or give up to match the
    /// placement over the live members (0 once it converged).
    pub units_moving: usize,
    /// Wall-clock time of the renewal (ms since the epoch): a node that starts watching
    /// judges the age of records written before it looked.
    pub renewed_at_ms: i64,
    /// Random per process start: a restarted node with the same id is a fresh member.
    pub incarnation: u64,
}

/// One node's live counts, summed over the members for the cluster-wide admin stats.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeCounts {
    /// WebSockets open.
    pub sessions: usize,
    /// Officers with a running availability window.
    pub officers_available: usize,
    /// Officer sessions open.
    pub officers_online: usize,
    /// Citizen sessions open.
    pub citizens_online: usize,
    /// Region actors alive.
    pub regions_active: usize,
    /// Connection requests waiting for an officer's answer.
    pub pending_requests: usize,
    /// WebSocket messages received since the process started.
    #[serde(default)]
    pub messages_in: u64,
}

/// A unit's record in the owners bucket. The entry's revision is the unit's epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerRecord {
    /// The owning member.
    pub node_id: String,
    /// The owner's incarnation when it took the unit.
    pub incarnation: u64,
}

/// A read of the officers within a circle in some regions of the receiver.
#[derive(Debug, Serialize, Deserialize)]
pub struct NearbyRequest {
    /// Latitude of the centre.
    pub lat: f64,
    /// Longitude of the centre.
    pub lon: f64,
    /// Radius in metres.
    pub radius_m: f64,
    /// Most officers wanted.
    pub k: usize,
    /// The regions to read, by zip code.
    pub zips: Vec<String>,
    /// The epochs the asker saw for the units of those regions; an owner whose epoch for a
    /// unit differs answers `stale` (ownership moved since the asker looked).
    pub epochs: Vec<(Unit, u64)>,
}

/// One officer of a [`NearbyReply`].
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteOfficer {
    /// Account id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Distance from the centre, as the owner measured it (the same function on the same
    /// floats: the asker's merge orders it exactly like a local answer).
    pub distance_m: f64,
    /// End of the availability window (RFC 3339).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The officer's region.
    pub zip: String,
}

/// The answer to a [`NearbyRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum NearbyReply {
    /// The nearest officers in the regions asked, nearest first.
    Ok {
        /// At most `k`.
        officers: Vec<RemoteOfficer>,
    },
    /// The receiver does not own (all) the units at the epochs asked: look again.
    Stale,
}

/// A change of a region, published by its owner on the unit's subject for the nodes whose
/// sessions watch it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeMsg {
    /// The owner's epoch for the unit.
    pub epoch: u64,
    /// Per unit and epoch, from 1 without gaps: a receiver that sees a gap reads again.
    pub seq: u64,
    /// The region's zip code.
    pub zip: String,
    /// The positions that changed (an officer's old and new one), `[lat, lon]`.
    pub points: Vec<[f64; 2]>,
}

/// Asks the owner of a region for a ticket for a session there.
#[derive(Debug, Serialize, Deserialize)]
pub struct TicketRequest {
    /// Account id.
    pub account: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Latitude of the first position.
    pub lat: f64,
    /// Longitude of the first position.
    pub lon: f64,
    /// Its region's zip code.
    pub zip: String,
    /// Distance from the position to the region's centroid.
    pub d0: f64,
}

/// The owner's answer: the ticket id, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub struct TicketReply {
    /// The ticket, when issued.
    pub ticket: Option<String>,
    /// Why not, otherwise.
    pub error: Option<String>,
    /// The error code of a refusal the client should see as it is (`node_full`,
    /// `too_many_tickets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A session opened on `node`: any other node holding a session of the account closes it
/// (4003 after a handoff, else 4001: one session per account in the cluster).
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionOpened {
    /// Account id.
    pub account: String,
    /// The node it opened on.
    pub node: String,
}

/// A citizen on another node asks an officer of this node for a connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct OfferRequest {
    /// Request id.
    pub request_id: String,
    /// The officer asked.
    pub officer_id: String,
    /// The citizen.
    pub citizen_id: String,
    /// Its display name.
    pub citizen_name: String,
    /// Distance when asked.
    pub distance_m: f64,
    /// Mode.
    pub mode: crate::protocol::Mode,
    /// The node of the citizen's session (answers go there).
    pub citizen_node: String,
}

/// The officer's session took the request, or the error code it refused it with.
#[derive(Debug, Serialize, Deserialize)]
pub struct OfferReply {
    /// `None`: taken.
    pub refused: Option<String>,
}

/// A connection message for a session on the receiving node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RelayMsg {
    /// The citizen withdrew its request (it disconnected).
    Cancel {
        /// The officer's account.
        officer_id: String,
        /// Request id.
        request_id: String,
    },
    /// How the citizen's request ended.
    Decided {
        /// The citizen's account.
        citizen_id: String,
        /// Request id.
        request_id: String,
        /// declined, expired, cancelled, or accepted (then `established`).
        status: String,
        /// The citizen's side of an accepted connection.
        established: Option<crate::actors::session::Established>,
    },
}

/// An administrator ends an account's session, wherever it is.
#[derive(Debug, Serialize, Deserialize)]
pub struct KickRequest {
    /// The account.
    pub account: String,
}

/// From the node holding the session: its role (told to close), or `None` when it takes
/// no messages now.
#[derive(Debug, Serialize, Deserialize)]
pub struct KickReply {
    /// The session's role.
    pub role: Option<Role>,
}

/// A trophy to tell an account's live session, wherever it is (every node hears it; the
/// one holding the session delivers it).
#[derive(Debug, Serialize, Deserialize)]
pub struct TrophyNotice {
    /// The account.
    pub account: String,
    /// The trophy's id.
    pub trophy_id: String,
    /// Its name.
    pub name: String,
}

/// A page of the officers and citizen counts a node serves, for the admin map.
#[derive(Debug, Serialize, Deserialize)]
pub struct MapRequest {
    /// Where the page starts: a zip index and how many of its officers came before.
    pub cursor: (u32, usize),
    /// Most officers in the page.
    pub limit: usize,
}

/// The answer to a [`MapRequest`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MapReply {
    /// The officers of the page.
    pub officers: Vec<crate::actors::directory::AvailableOfficer>,
    /// Citizen sessions per zip on the node (the first page only).
    pub citizens: Vec<(String, u32)>,
    /// The cursor of the next page, if there is more.
    pub next: Option<(u32, usize)>,
}

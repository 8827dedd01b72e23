//! What officer and citizen sessions say to each other about a connection request: the
//! offer an officer's session receives, and how the request ended for the citizen.

use std::sync::Arc;

use super::session::SessionHandle;
use crate::protocol::Mode;

/// A connection request as the officer's session receives it.
#[derive(Debug)]
pub struct OfferedRequest {
    /// Request id.
    pub request_id: String,
    /// The citizen.
    pub citizen_id: Arc<str>,
    /// Its display name.
    pub citizen_name: Arc<str>,
    /// Its session, for the answer.
    pub citizen: SessionHandle,
    /// Distance when asked.
    pub distance_m: f64,
    /// Mode.
    pub mode: Mode,
}

/// How a request ended, for the citizen.
#[derive(Debug)]
pub enum Outcome {
    /// Declined, expired or cancelled (the wire status).
    Status(&'static str),
    /// Accepted and recorded.
    Established(Established),
}

/// The citizen's side of an accepted connection (also what a cluster relays to the
/// citizen's node).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Established {
    /// The connection.
    pub connection_id: String,
    /// The officer.
    pub officer_id: String,
    /// Mode.
    pub mode: Mode,
    /// Points the citizen earned.
    pub points_awarded: i64,
    /// The citizen's balance.
    pub balance: i64,
}

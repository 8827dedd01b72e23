//! The wire: JSON frames of docs/protocol.md as serde enums, shared by the server, the tests and
//! the load generator. [`decode`] parses and validates a text frame once; actors only ever
//! see the typed [`Command`] it returns.

use serde::{Deserialize, Serialize};

use crate::geo::LatLon;

/// Session role on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A police officer.
    Officer,
    /// A member of the public.
    Citizen,
    /// An operator (HTTP only).
    Admin,
    /// A partner retailer, `sub` = its retailer id (HTTP only: redeems its vouchers).
    Retailer,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Officer => "officer",
            Role::Citizen => "citizen",
            Role::Admin => "admin",
            Role::Retailer => "retailer",
        }
    }
}

/// How a connection happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Face to face.
    InPerson,
    /// Call or chat.
    Virtual,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// New position.
    Location {
        /// Latitude.
        lat: f64,
        /// Longitude.
        lon: f64,
        /// Reported accuracy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy_m: Option<f64>,
        /// Heading in degrees.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heading: Option<f64>,
        /// Speed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speed_mps: Option<f64>,
    },
    /// Liveness check.
    Ping,
    /// Officer: start or restart an availability window.
    Available {
        /// Window length in seconds.
        window_s: u64,
    },
    /// Officer: end the window now.
    Unavailable,
    /// Officer: answer a connection request.
    Respond {
        /// The request.
        request_id: String,
        /// Accept or decline.
        accept: bool,
    },
    /// Citizen: set the search.
    Watch {
        /// Search radius.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        radius_m: Option<f64>,
        /// Result count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Citizen: ask an officer for a connection.
    RequestConnection {
        /// The officer.
        officer_id: String,
        /// In person or virtual.
        mode: Mode,
    },
}

/// The wire names of [`ClientMsg`] variants, for `unknown_type` detection.
pub const CLIENT_TYPES: &[&str] = &[
    "location",
    "ping",
    "available",
    "unavailable",
    "respond",
    "watch",
    "request_connection",
];

impl ClientMsg {
    /// The wire type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Location { .. } => "location",
            ClientMsg::Ping => "ping",
            ClientMsg::Available { .. } => "available",
            ClientMsg::Unavailable => "unavailable",
            ClientMsg::Respond { .. } => "respond",
            ClientMsg::Watch { .. } => "watch",
            ClientMsg::RequestConnection { .. } => "request_connection",
        }
    }
}

/// One officer in a `nearby` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearbyOfficer {
    /// Account id.
    pub officer_id: String,
    /// Display name.
    pub display_name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Haversine distance from the citizen.
    pub distance_m: f64,
    /// The officer's region.
    pub zip: String,
}

/// The constant part of an officer's entry in a `nearby` frame, escaped once when the
/// officer publishes instead of once per citizen answered: the text before the numbers,
/// `{"officer_id":…,"display_name":…,"lat":`, and after them, `,"zip":…}`.
#[derive(Debug, Clone)]
pub struct OfficerCard {
    text: std::sync::Arc<str>,
    split: usize,
}

impl OfficerCard {
    /// The card of an officer with this id and name, in the region with this code.
    pub fn new(officer_id: &str, display_name: &str, zip: &str) -> Self {
        // serde_json's own escaping, so the frame is what it would write for the struct.
        let s = |v: &str| serde_json::to_string(v).expect("a str serialises");
        let head = format!(
            r#"{{"officer_id":{},"display_name":{},"lat":"#,
            s(officer_id),
            s(display_name)
        );
        Self {
            split: head.len(),
            text: format!(r#"{head},"zip":{}}}"#, s(zip)).into(),
        }
    }

    fn head(&self) -> &str {
        &self.text[..self.split]
    }

    /// The zip code of the card (zip codes are digits: no escapes in the JSON string).
    pub fn zip(&self) -> &str {
        let tail = self.tail();
        tail.strip_prefix(r#","zip":""#)
            .and_then(|t| t.strip_suffix(r#""}"#))
            .unwrap_or("")
    }

    fn tail(&self) -> &str {
        &self.text[self.split..]
    }
}

/// One officer of a `nearby` frame: its card and the numbers of this answer. Written by
/// [`NearbyRef::write_json`] exactly as [`NearbyOfficer`] serialises.
#[derive(Debug, Clone, Copy)]
pub struct NearbyOfficerRef<'a> {
    /// Id, name and region, escaped.
    pub card: &'a OfficerCard,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Haversine distance from the citizen.
    pub distance_m: f64,
}

/// A `nearby` frame over the region answer's cards (the hot path of every citizen's
/// location): no string is copied or escaped per answer.
#[derive(Debug, Clone, Copy)]
pub struct NearbyRef<'a> {
    /// Nearest first.
    pub officers: &'a [NearbyOfficerRef<'a>],
    /// The search radius.
    pub radius_m: f64,
}

impl NearbyRef<'_> {
    /// A buffer size that holds the frame without growing (about 150 bytes an officer).
    pub fn size_hint(&self) -> usize {
        64 + 160 * self.officers.len()
    }

    /// Appends the frame: byte for byte what serde_json writes for the same
    /// [`ServerMsg::Nearby`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":"nearby","officers":["#);
        for (i, o) in self.officers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(o.card.head().as_bytes());
            write_f64(out, o.lat);
            out.extend_from_slice(br#","lon":"#);
            write_f64(out, o.lon);
            out.extend_from_slice(br#","distance_m":"#);
            write_f64(out, o.distance_m);
            out.extend_from_slice(o.card.tail().as_bytes());
        }
        out.extend_from_slice(br#"],"radius_m":"#);
        write_f64(out, self.radius_m);
        out.push(b'}');
    }
}

/// A number as serde_json writes it (shortest round trip; `null` when not finite).
fn write_f64(out: &mut Vec<u8>, x: f64) {
    // Writing into a Vec cannot fail.
    let _ = x.serialize(&mut serde_json::Serializer::new(out));
}

/// The citizen in a `connection_requested` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitizenRef {
    /// Account id.
    pub citizen_id: String,
    /// Display name.
    pub display_name: String,
}

impl Mode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::InPerson => "in_person",
            Mode::Virtual => "virtual",
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First frame of every session.
    Welcome {
        /// This socket's session.
        session_id: String,
        /// officer or citizen.
        role: Role,
        /// The token's `sub`.
        account_id: String,
        /// The session's region.
        zip: String,
        /// Officer whose window outlived an earlier socket: `true` (visible at once).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        available: Option<bool>,
        /// The resumed window's end (unchanged by the reconnect).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        expires_at: Option<String>,
    },
    /// Answer to `ping`.
    Pong,
    /// The only error shape.
    Error {
        /// Machine-readable code.
        code: String,
        /// Human text.
        message: String,
        /// Type of the offending frame, if known.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The session moved to another region.
    ZipChanged {
        /// The new region.
        zip: String,
    },
    /// Cluster: the session's region is served by another node; connect there (this
    /// socket is served until then, or `cluster.handoff_grace_s`, then closed with 4003).
    Handoff {
        /// The other node's WebSocket URL, with a fresh ticket.
        ws_url: String,
        /// The other node's id.
        node: String,
    },
    /// Officer availability changed.
    Availability {
        /// Whether visible to citizens.
        available: bool,
        /// End of the window, when available.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// The window ends soon.
    WindowExpiring {
        /// End of the window.
        expires_at: String,
    },
    /// The window ended; the socket closes next.
    WindowExpired,
    /// The nearest available officers.
    Nearby {
        /// Nearest first.
        officers: Vec<NearbyOfficer>,
        /// The search radius.
        radius_m: f64,
    },
    /// Officer: a citizen asks for a connection.
    ConnectionRequested {
        /// The request.
        request_id: String,
        /// Who asks.
        citizen: CitizenRef,
        /// Haversine distance between them when asked.
        distance_m: f64,
        /// In person or virtual.
        mode: Mode,
        /// When the request expires.
        expires_at: String,
    },
    /// Citizen: the request was delivered to the officer.
    ConnectionPending {
        /// The request.
        request_id: String,
        /// The officer asked.
        officer_id: String,
        /// When it expires.
        expires_at: String,
    },
    /// How a request ended: accepted, declined, expired or cancelled.
    ConnectionResponse {
        /// The request.
        request_id: String,
        /// `accepted`, `declined`, `expired` or `cancelled`.
        status: String,
    },
    /// Both sides: the connection is recorded (each side its own points and balance).
    ConnectionEstablished {
        /// The connection.
        connection_id: String,
        /// Officer account.
        officer_id: String,
        /// Citizen account.
        citizen_id: String,
        /// In person or virtual.
        mode: Mode,
        /// Points this side earned (0 within the pair cooldown).
        points_awarded: i64,
        /// This side's balance after it.
        balance: i64,
    },
    /// An available officer came within the proximity distance.
    OfficerNearby {
        /// Account id.
        officer_id: String,
        /// Haversine distance.
        distance_m: f64,
    },
    /// The account earned a trophy (also in `GET /v1/me`'s `trophies`).
    TrophyAwarded {
        /// The trophy's id.
        trophy_id: String,
        /// Its name.
        name: String,
    },
}

impl ServerMsg {
    /// The wire type name (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Welcome { .. } => "welcome",
            ServerMsg::Pong => "pong",
            ServerMsg::Error { .. } => "error",
            ServerMsg::ZipChanged { .. } => "zip_changed",
            ServerMsg::Handoff { .. } => "handoff",
            ServerMsg::Availability { .. } => "availability",
            ServerMsg::WindowExpiring { .. } => "window_expiring",
            ServerMsg::WindowExpired => "window_expired",
            ServerMsg::Nearby { .. } => "nearby",
            ServerMsg::OfficerNearby { .. } => "officer_nearby",
            ServerMsg::ConnectionRequested { .. } => "connection_requested",
            ServerMsg::ConnectionPending { .. } => "connection_pending",
            ServerMsg::ConnectionResponse { .. } => "connection_response",
            ServerMsg::ConnectionEstablished { .. } => "connection_established",
            ServerMsg::TrophyAwarded { .. } => "trophy_awarded",
        }
    }

    /// An error frame.
    pub fn error(code: &str, message: impl Into<String>, reference: Option<&str>) -> Self {
        ServerMsg::Error {
            code: code.to_owned(),
            message: message.into(),
            reference: reference.map(str::to_owned),
        }
    }
}

/// A frame that is refused: the `error` frame's code, text and reference.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    /// Error code.
    pub code: &'static str,
    /// Human text.
    pub message: String,
    /// The offending frame's type, when it was readable.
    pub reference: Option<String>,
}

impl WireError {
    /// A refusal with this code and text.
    pub fn new(code: &'static str, message: impl Into<String>, reference: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: reference.map(str::to_owned),
        }
    }

    /// The `error` frame for this refusal.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::error(self.code, self.message.clone(), self.reference.as_deref())
    }
}

/// Range limits applied while decoding (from config).
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Largest frame in bytes.
    pub max_frame_bytes: usize,
    /// Longest availability window.
    pub max_window_s: u64,
    /// Smallest watch radius.
    pub min_radius_m: f64,
    /// Largest watch radius.
    pub max_radius_m: f64,
    /// Largest watch limit.
    pub max_limit: usize,
}

/// A validated command for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// New position (validated).
    Location(LatLon),
    /// Liveness check.
    Ping,
    /// Officer window of this many seconds (validated).
    Available(u64),
    /// Officer leaves.
    Unavailable,
    /// Officer answers a request.
    Respond {
        /// The request.
        request_id: String,
        /// Accept or decline.
        accept: bool,
    },
    /// Citizen sets the search; `None` keeps the current value.
    Watch {
        /// Radius, validated.
        radius_m: Option<f64>,
        /// Limit, validated.
        limit: Option<usize>,
    },
    /// Citizen asks for a connection.
    RequestConnection {
        /// The officer.
        officer_id: String,
        /// Mode.
        mode: Mode,
    },
}

impl Command {
    /// Whether `role` may send this command.
    pub fn allowed_for(&self, role: Role) -> bool {
        match self {
            Command::Location(_) | Command::Ping => true,
            Command::Available(_) | Command::Unavailable | Command::Respond { .. } => {
                role == Role::Officer
            }
            Command::Watch { .. } | Command::RequestConnection { .. } => role == Role::Citizen,
        }
    }

    /// The wire type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::Location(_) => "location",
            Command::Ping => "ping",
            Command::Available(_) => "available",
            Command::Unavailable => "unavailable",
            Command::Respond { .. } => "respond",
            Command::Watch { .. } => "watch",
            Command::RequestConnection { .. } => "request_connection",
        }
    }
}

/// Parses and validates one text frame for a session of `role`.
pub fn decode(text: &str, role: Role, lim: &DecodeLimits) -> Result<Command, WireError> {
    if text.len() > lim.max_frame_bytes {
        return Err(WireError::new(
            "frame_too_large",
            format!("frames are limited to {} bytes", lim.max_frame_bytes),
            None,
        ));
    }
    // A well-formed frame deserialises straight from the text (a location, most frames,
    // without serde's buffering of a tagged enum); any other is read again as a tree, to
    // say precisely what is wrong with it.
    let (msg, ty) = match decode_location(text) {
        Some(msg) => (msg, "location"),
        None => match serde_json::from_str::<ClientMsg>(text) {
            Ok(msg) => {
                let ty = msg.type_name();
                (msg, ty)
            }
            Err(_) => decode_slow(text)?,
        },
    };
    let r = Some(ty);
    let cmd = match msg {
        ClientMsg::Location { lat, lon, .. } => {
            Command::Location(LatLon::new(lat, lon).ok_or_else(|| {
                WireError::new(
                    "invalid_coordinates",
                    "lat must be in [-90, 90] and lon in [-180, 180]",
                    r,
                )
            })?)
        }
        ClientMsg::Ping => Command::Ping,
        ClientMsg::Available { window_s } => {
            if window_s == 0 || window_s > lim.max_window_s {
                return Err(WireError::new(
                    "invalid_value",
                    format!("window_s must be 1..={}", lim.max_window_s),
                    r,
                ));
            }
            Command::Available(window_s)
        }
        ClientMsg::Unavailable => Command::Unavailable,
        ClientMsg::Respond { request_id, accept } => {
            if request_id.is_empty() || request_id.len() > 128 {
                return Err(WireError::new(
                    "invalid_value",
                    "request_id must be 1..=128 bytes",
                    r,
                ));
            }
            Command::Respond { request_id, accept }
        }
        ClientMsg::Watch { radius_m, limit } => {
            if let Some(rad) = radius_m
                && !(rad.is_finite() && rad >= lim.min_radius_m && rad <= lim.max_radius_m)
            {
                return Err(WireError::new(
                    "invalid_value",
                    format!(
                        "radius_m must be {}..={}",
                        lim.min_radius_m, lim.max_radius_m
                    ),
                    r,
                ));
            }
            if let Some(l) = limit
                && !(1..=lim.max_limit).contains(&l)
            {
                return Err(WireError::new(
                    "invalid_value",
                    format!("limit must be 1..={}", lim.max_limit),
                    r,
                ));
            }
            Command::Watch { radius_m, limit }
        }
        ClientMsg::RequestConnection { officer_id, mode } => {
            if officer_id.is_empty() || officer_id.len() > 128 {
                return Err(WireError::new(
                    "invalid_value",
                    "officer_id must be 1..=128 bytes",
                    r,
                ));
            }
            Command::RequestConnection { officer_id, mode }
        }
    };
    if !cmd.allowed_for(role) {
        return Err(WireError::new(
            "forbidden_for_role",
            format!("`{ty}` is not allowed for role {}", role.as_str()),
            r,
        ));
    }
    Ok(cmd)
}

/// The fields of a `location` frame, read flat: a [`ClientMsg`] is internally tagged, so
/// serde buffers each of its frames as a tree of `Content` before reading the variant.
#[derive(Deserialize)]
struct LocationFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    lat: f64,
    lon: f64,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default)]
    heading: Option<f64>,
    #[serde(default)]
    speed_mps: Option<f64>,
}

/// A well-formed `location` frame, as [`ClientMsg`] would read it; `None` for any other
/// frame (which then takes the general path).
fn decode_location(text: &str) -> Option<ClientMsg> {
    let f: LocationFrame<'_> = serde_json::from_str(text).ok()?;
    (f.ty == "location").then_some(ClientMsg::Location {
        lat: f.lat,
        lon: f.lon,
        accuracy_m: f.accuracy_m,
        heading: f.heading,
        speed_mps: f.speed_mps,
    })
}

/// A frame that did not deserialise as a [`ClientMsg`]: which rule it breaks.
fn decode_slow(text: &str) -> Result<(ClientMsg, &'static str), WireError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WireError::new("invalid_json", format!("invalid JSON: {e}"), None))?;
    let Some(obj) = value.as_object() else {
        return Err(WireError::new(
            "invalid_message",
            "a frame is a JSON object",
            None,
        ));
    };
    let ty = match obj.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(WireError::new(
                "invalid_message",
                "`type` must be a string",
                None,
            ));
        }
        None => {
            return Err(WireError::new(
                "invalid_message",
                "missing field `type`",
                None,
            ));
        }
    };
    let Some(ty) = CLIENT_TYPES.iter().copied().find(|t| *t == ty) else {
        return Err(WireError::new(
            "unknown_type",
            format!("unknown message type `{ty}`"),
            Some(&ty),
        ));
    };
    let msg: ClientMsg = serde_json::from_value(value)
        .map_err(|e| WireError::new("invalid_message", e.to_string(), Some(ty)))?;
    Ok((msg, ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> DecodeLimits {
        DecodeLimits {
            max_frame_bytes: 4096,
            max_window_s: 900,
            min_radius_m: 50.0,
            max_radius_m: 10_000.0,
            max_limit: 20,
        }
    }

    fn code(text: &str, role: Role) -> &'static str {
        decode(text, role, &lim()).unwrap_err().code
    }

    #[test]
    fn decodes_valid_frames() {
        let c = decode(
            r#"{"type":"location","lat":40.7,"lon":-73.9,"speed_mps":1.2}"#,
            Role::Citizen,
            &lim(),
        );
        assert_eq!(
            c.unwrap(),
            Command::Location(LatLon {
                lat: 40.7,
                lon: -73.9
            })
        );
        assert_eq!(
            decode(
                r#"{"type":"available","window_s":900}"#,
                Role::Officer,
                &lim()
            )
            .unwrap(),
            Command::Available(900)
        );
        assert_eq!(
            decode(
                r#"{"type":"watch","radius_m":500,"limit":3}"#,
                Role::Citizen,
                &lim()
            )
            .unwrap(),
            Command::Watch {
                radius_m: Some(500.0),
                limit: Some(3)
            }
        );
    }

    #[test]
    fn fast_and_tree_decoding_agree() {
        for text in [
            r#"{"type":"location","lat":40.7,"lon":-73.9,"speed_mps":1.2,"extra":[1,{"a":2}]}"#,
            r#"{"lon":-73.9,"lat":40.7,"type":"location"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"respond","request_id":"r\u00e9","accept":false}"#,
            r#"{"type":"watch"}"#,
            r#"{"type":"request_connection","officer_id":"o1","mode":"virtual"}"#,
        ] {
            let fast: ClientMsg = serde_json::from_str(text).unwrap();
            let (slow, ty) = decode_slow(text).unwrap();
            assert_eq!(fast, slow, "{text}");
            assert_eq!(fast.type_name(), ty);
            // The flat location reader takes exactly the locations, and reads them alike.
            let flat = decode_location(text);
            assert_eq!(flat.is_some(), ty == "location", "{text}");
            assert!(flat.is_none_or(|m| m == fast), "{text}");
        }
        // Frames it must leave to the general path (which refuses them or reads another
        // type): an escaped type name is still the name; a duplicate field is refused.
        let escaped = r#"{"type":"loc\u0061tion","lat":1,"lon":2,"heading":null}"#;
        assert_eq!(decode_location(escaped), serde_json::from_str(escaped).ok());
        for text in [
            r#"{"type":"location","lat":1,"lat":2,"lon":3}"#,
            r#"{"type":"location","type":"ping","lat":1,"lon":2}"#,
            r#"{"type":"ping","lat":1,"lon":2}"#,
            r#"{"type":"location","lat":"1","lon":2}"#,
        ] {
            assert_eq!(decode_location(text), None, "{text}");
        }
        // A refusal after the fast path still names the frame's type.
        let e = decode(
            r#"{"type":"location","lat":91,"lon":2}"#,
            Role::Citizen,
            &lim(),
        );
        assert_eq!(e.unwrap_err().reference.as_deref(), Some("location"));
    }

    #[test]
    fn nearby_ref_writes_what_serde_writes_for_the_owned_frame() {
        let people = [
            (
                "o1",
                "Officer \"Ray\" Núñez \\ 警 \u{1}",
                "10001",
                40.75,
                -73.99,
                12.345678,
            ),
            ("o\"2", "", "00501", -0.5, 1e-7, 1999.9999999),
            ("o3", "Lee", "94103", 37.0, -122.0, f64::NAN),
        ];
        let cards: Vec<_> = people
            .iter()
            .map(|(id, name, zip, ..)| OfficerCard::new(id, name, zip))
            .collect();
        let refs: Vec<_> = people
            .iter()
            .zip(&cards)
            .map(|(&(.., lat, lon, d), card)| NearbyOfficerRef {
                card,
                lat,
                lon,
                distance_m: d,
            })
            .collect();
        for n in [0, 1, 2, 3] {
            let frame = NearbyRef {
                officers: &refs[..n],
                radius_m: 2000.5,
            };
            let mut written = Vec::new();
            frame.write_json(&mut written);
            let msg = ServerMsg::Nearby {
                officers: people[..n]
                    .iter()
                    .map(|&(id, name, zip, lat, lon, d)| NearbyOfficer {
                        officer_id: id.into(),
                        display_name: name.into(),
                        lat,
                        lon,
                        distance_m: d,
                        zip: zip.into(),
                    })
                    .collect(),
                radius_m: 2000.5,
            };
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&msg).unwrap()
            );
            assert!(frame.size_hint() >= 64);
        }
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        assert_eq!(code("{", Role::Citizen), "invalid_json");
        assert_eq!(code("[1]", Role::Citizen), "invalid_message");
        assert_eq!(code(r#"{"lat":1}"#, Role::Citizen), "invalid_message");
        assert_eq!(code(r#"{"type":"dance"}"#, Role::Citizen), "unknown_type");
        assert_eq!(
            code(r#"{"type":"location","lat":1}"#, Role::Citizen),
            "invalid_message"
        );
        assert_eq!(
            code(r#"{"type":"location","lat":"x","lon":2}"#, Role::Citizen),
            "invalid_message"
        );
        assert_eq!(
            code(r#"{"type":"location","lat":91,"lon":2}"#, Role::Citizen),
            "invalid_coordinates"
        );
        assert_eq!(
            code(r#"{"type":"available","window_s":0}"#, Role::Officer),
            "invalid_value"
        );
        assert_eq!(
            code(r#"{"type":"available","window_s":901}"#, Role::Officer),
            "invalid_value"
        );
        assert_eq!(
            code(r#"{"type":"available","window_s":60}"#, Role::Citizen),
            "forbidden_for_role"
        );
        assert_eq!(
            code(r#"{"type":"watch","radius_m":10}"#, Role::Citizen),
            "invalid_value"
        );
        assert_eq!(
            code(r#"{"type":"watch","limit":21}"#, Role::Citizen),
            "invalid_value"
        );
        assert_eq!(
            code(r#"{"type":"watch","limit":2}"#, Role::Officer),
            "forbidden_for_role"
        );
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000));
        assert_eq!(code(&big, Role::Citizen), "frame_too_large");
    }

    #[test]
    fn error_frame_uses_ref() {
        let e = ServerMsg::error("unknown_type", "nope", Some("dance"));
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"type":"error","code":"unknown_type","message":"nope","ref":"dance"}"#
        );
    }
}

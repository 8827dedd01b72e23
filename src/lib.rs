//! Hey Blue! server: officers and citizens, live, by zip region.
//!
//! Crate map — what each module owns, and what it must not do:
//! - [`config`]: typed settings (embedded defaults, overlay file, environment); no I/O after start.
//! - [`geo`]: pure geometry (zip table, cells, distances, officer index); never awaits.
//! - [`protocol`]: the wire enums and the one decoder; no state.
//! - [`actors`]: the region directory and region actors, and one task per session (officer or
//!   citizen) that owns its socket; they own the live state.
//! - [`cluster`]: membership, region ownership and cross-node reads over NATS; idle alone.
//! - [`context`]: the handles shared by a node's routes and sessions; no state of its own.
//! - [`http`]: routes, auth, orchestrator and the WebSocket bridge; never holds domain state.
//! - [`server`]: start-up and the one shutdown sequence.
//! - [`telemetry`]: handles of the metrics counted per frame, kept instead of looked up.
//! - [`events`]: the event bus and the outbox publisher; publishes only what committed.
//! - [`import`]: parsing and validating bulk imports (CSV / JSON); pure, no I/O.
//! - [`store`]: the durable store (sea-orm, SQLite or PostgreSQL); the only module that sees SQL.
#![warn(missing_docs)]

pub mod actors;
pub mod cluster;
pub mod config;
pub mod context;
pub mod events;
pub mod geo;
pub mod http;
pub mod import;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhooks;

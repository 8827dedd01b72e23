//! The actors: one per zip region (supervised by the region directory), and one task per
//! session (officer or citizen) that owns its socket.

pub mod citizen;
pub mod directory;
pub mod handoff;
pub mod mailbox;
pub mod notify;
pub mod offer;
pub mod officer;
pub mod outbox;
pub mod region;
pub mod region_index;
pub mod relay;
pub mod session;
pub mod socket;
pub mod supervisor;
pub mod windows;

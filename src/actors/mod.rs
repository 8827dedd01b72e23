//! The actors: one per zip region (under the region directory) and one per session.

pub mod directory;
pub mod outbox;
pub mod region;
pub mod session;

//! sea-orm entities; they never leave `store`.

pub mod connection;
pub mod ledger;

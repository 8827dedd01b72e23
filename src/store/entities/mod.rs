//! sea-orm entities; they never leave `store`.

pub mod account;
pub mod connection;
pub mod ledger;

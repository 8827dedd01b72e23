//! sea-orm entities; they never leave `store`.

pub mod account;
pub mod charity;
pub mod connection;
pub mod donation;
pub mod idempotency;
pub mod ledger;
pub mod offer;
pub mod retailer;
pub mod voucher;

//! Hey Blue! server: officers and citizens, live, by zip region.
//!
//! Crate map — what each module owns, and what it must not do:
//! - [`geo`]: pure geometry (zip table, cells, distances, officer index); never awaits.
#![warn(missing_docs)]

pub mod geo;

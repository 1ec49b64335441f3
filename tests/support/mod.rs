//! support

pub mod fleet;

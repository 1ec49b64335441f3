//! The list-scheduling simulator.

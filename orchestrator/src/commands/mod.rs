//! One file per subcommand; each parses nothing itself (clap did) and prints for people.

pub mod bench;
pub mod coarsen;
pub mod plan;

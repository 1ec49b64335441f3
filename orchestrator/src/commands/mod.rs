//! One file per subcommand; each parses nothing itself (clap did) and prints for people.

pub mod bench;
pub mod bench_fleet;
pub mod coarsen;
pub mod demo;
pub mod infer;
pub mod plan;
pub mod rollout;
pub mod run;
pub mod serve;

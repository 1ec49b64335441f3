//! One file per subcommand that has options of its own: clap parses them here, the work is
//! the library's.

pub mod connect;

//! Support for the workspace integration tests.
//!
//! - [`fleet`]: child processes (orchestrator, agents, mosquitto) with their output lines,
//!   free ports and scratch directories.
//! - [`pki`]: a throwaway CA and server certificates (rcgen) for the TLS tests.
//! - [`secured`]: mosquitto from the repository's TLS/ACL templates, and MQTT clients with
//!   TLS and credentials.

pub mod fleet;
pub mod pki;
pub mod secured;

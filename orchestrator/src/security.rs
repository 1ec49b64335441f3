//! The embedded broker's side of TLS and logins.
//!
//! - [`DeviceTable`]: the embedded broker's credentials, one `name:password` line per
//!   device; the broker accepts a client only when its password matches and its client id is
//!   its username, so a device can only take the name its credentials give it.
//! - [`ServerTls`]: the embedded broker's certificate and key files.
//! - [`ServeSecurity`]: how `moirai serve` sets both up, and its own client's login.
//!
//! A client's TLS trust and login ([`ClientSecurity`]) are `moirai-link`'s, shared with the
//! agents. What this protects and what it does not is written in the README's security
//! section.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moirai_link::tls::{ClientSecurity, Credentials, TlsError};
use thiserror::Error;

/// Why security settings could not be loaded.
#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(transparent)]
    Client(#[from] TlsError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path}, line {line}: {reason}")]
    Table {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("--tls-cert, --tls-key and --credentials configure the embedded broker; with --broker, configure the external broker itself (see firmware-configs/mosquitto/)")]
    EmbeddedOnly,
    #[error("--ca-file, --username and --password-file are the orchestrator's login to an external broker (--broker); the embedded broker takes --tls-cert, --tls-key and --credentials")]
    ExternalOnly,
    #[error("{path} does not exist ({what})")]
    Missing { what: &'static str, path: PathBuf },
}

/// An MQTT client's TLS trust and login, as files (`moirai serve --broker`, `moirai rollout`).
#[derive(Clone, Debug, Default)]
pub struct ClientLogin {
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    /// File whose first line is the MQTT password.
    pub password_file: Option<PathBuf>,
}

impl ClientLogin {
    /// Loads the CA and the password; `default_username` is used when a password file is
    /// given without `--username`.
    pub fn load(&self, default_username: Option<&str>) -> Result<ClientSecurity, SecurityError> {
        Ok(ClientSecurity::load(
            self.ca_file.as_deref(),
            self.username.as_deref(),
            self.password_file.as_deref(),
            default_username,
        )?)
    }
}

/// The embedded broker's certificate chain and private key (PEM files).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ServerTls {
    /// Checks that both files exist (rumqttd reads them itself, later, on its own thread,
    /// where a missing file would only be logged).
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<Self, SecurityError> {
        for (what, p) in [("TLS certificate", &cert_file), ("TLS key", &key_file)] {
            if !p.is_file() {
                return Err(SecurityError::Missing {
                    what,
                    path: p.clone(),
                });
            }
        }
        Ok(Self {
            cert_file,
            key_file,
        })
    }
}

/// The embedded broker's TLS listener and device table; the default is plain TCP and no
/// login (anyone who reaches the port may connect).
#[derive(Clone, Debug, Default)]
pub struct BrokerSecurity {
    pub tls: Option<ServerTls>,
    pub devices: Option<DeviceTable>,
}

/// `moirai serve`'s security: the embedded broker's TLS and credentials, and the
/// orchestrator's own client (needed for an external broker).
#[derive(Clone, Debug, Default)]
pub struct ServeSecurity {
    /// Embedded broker: serve MQTT over TLS with this certificate chain and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Embedded broker: admit only the devices in this file (`name:password` per line); a
    /// device must use its name as client id and username.
    pub credentials: Option<PathBuf>,
    /// External broker: the orchestrator's own TLS trust and login.
    pub client: ClientLogin,
}

/// Username of the orchestrator's own clients on its embedded broker when devices must log
/// in; its password is drawn at each start and never leaves the process.
pub const ORCHESTRATOR_USER: &str = "moirai-orchestrator";

impl ServeSecurity {
    /// The embedded broker's settings and the orchestrator's client settings for it. With a
    /// device table, the orchestrator logs in as [`ORCHESTRATOR_USER`] with a fresh random
    /// password. Its client stays on plain MQTT over the loopback listener the broker keeps
    /// for it (see [`crate::broker::start_secured`]).
    pub fn embedded(&self) -> Result<(BrokerSecurity, ClientSecurity), SecurityError> {
        self.check_embedded()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(ServerTls::new(c.clone(), k.clone())?),
            _ => None,
        };
        let mut client = ClientSecurity::default();
        let devices = match &self.credentials {
            Some(path) => {
                let mut table = DeviceTable::load(path)?;
                let password = random_password();
                table.insert(ORCHESTRATOR_USER, &password);
                table.allow_any_client_id(ORCHESTRATOR_USER);
                client.credentials = Some(Credentials {
                    username: ORCHESTRATOR_USER.to_string(),
                    password,
                });
                Some(table)
            }
            None => None,
        };
        Ok((BrokerSecurity { tls, devices }, client))
    }

    /// The orchestrator's client settings for an external broker.
    pub fn external(&self) -> Result<ClientSecurity, SecurityError> {
        if self.tls_cert.is_some() || self.credentials.is_some() {
            return Err(SecurityError::EmbeddedOnly);
        }
        self.client.load(None)
    }

    /// Settings for the embedded broker that configure a client instead: refused, so a
    /// misplaced flag is not silently ignored.
    pub fn check_embedded(&self) -> Result<(), SecurityError> {
        if self.client.ca_file.is_some() || self.client.password_file.is_some() {
            return Err(SecurityError::ExternalOnly);
        }
        Ok(())
    }
}

/// 32 hex digits that nobody outside this process can predict: SipHash under the std
/// hasher's secret keys (seeded from the OS's randomness once per thread) of the time and
/// process id.
fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Who may connect to the embedded broker: one `name:password` line per device and one for
/// the orchestrator; `#` starts a comment.
#[derive(Clone, Default)]
pub struct DeviceTable {
    passwords: HashMap<String, String>,
    /// Usernames allowed to connect under any client id (the orchestrator's own clients,
    /// which use per-process ids).
    any_client_id: Vec<String>,
}

impl std::fmt::Debug for DeviceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.passwords.keys().collect();
        names.sort();
        f.debug_struct("DeviceTable")
            .field("users", &names)
            .field("any_client_id", &self.any_client_id)
            .finish()
    }
}

impl DeviceTable {
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            what: "credentials file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, SecurityError> {
        let mut table = DeviceTable::default();
        for (i, raw) in text.lines().enumerate() {
            let bad = |reason| SecurityError::Table {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, password) = line
                .split_once(':')
                .ok_or_else(|| bad("expected name:password"))?;
            if name.is_empty() || password.is_empty() {
                return Err(bad("empty name or password"));
            }
            if table
                .passwords
                .insert(name.to_string(), password.to_string())
                .is_some()
            {
                return Err(bad("name given twice"));
            }
        }
        Ok(table)
    }

    /// Adds or replaces one user.
    pub fn insert(&mut self, name: &str, password: &str) {
        self.passwords
            .insert(name.to_string(), password.to_string());
    }

    /// Lets `name` connect under any client id (for the orchestrator's own clients).
    pub fn allow_any_client_id(&mut self, name: &str) {
        self.any_client_id.push(name.to_string());
    }

    pub fn len(&self) -> usize {
        self.passwords.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passwords.is_empty()
    }

    /// The broker's verdict on a CONNECT: known user, right password, and the client id is
    /// the username (unless the user may use any id).
    pub fn admits(&self, client_id: &str, username: &str, password: &str) -> bool {
        let Some(stored) = self.passwords.get(username) else {
            return false;
        };
        if !constant_time_eq(stored.as_bytes(), password.as_bytes()) {
            return false;
        }
        client_id == username || self.any_client_id.iter().any(|u| u == username)
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DeviceTable {
        let mut t = DeviceTable::parse(
            "# devices\npi-1:one\n\njetson-2:two\norchestrator:boss\n",
            Path::new("creds"),
        )
        .unwrap();
        t.allow_any_client_id("orchestrator");
        t
    }

    #[test]
    fn a_device_is_admitted_with_its_password_under_its_own_name_only() {
        let t = table();
        assert_eq!(t.len(), 3);
        assert!(t.admits("pi-1", "pi-1", "one"));
        assert!(!t.admits("pi-1", "pi-1", "two"), "wrong password");
        assert!(!t.admits("pi-1", "pi-1", ""), "no password");
        assert!(!t.admits("pi-1", "nobody", "one"), "unknown user");
        assert!(
            !t.admits("jetson-2", "pi-1", "one"),
            "someone else's name as client id"
        );
        assert!(t.admits("moirai-fleet-77", "orchestrator", "boss"));
        assert!(!t.admits("moirai-fleet-77", "orchestrator", "one"));
    }

    #[test]
    fn malformed_tables_name_the_line() {
        for (text, line) in [
            ("a:b\nnocolon\n", 2),
            (":x\n", 1),
            ("a:\n", 1),
            ("a:b\na:c\n", 2),
        ] {
            match DeviceTable::parse(text, Path::new("f")) {
                Err(SecurityError::Table { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}

//! TLS and a login for one MQTT client ([`ClientSecurity`]): what the orchestrator's client,
//! the agents and the tests add to their [`MqttOptions`]. TLS is rustls with the ring
//! provider, trusting the CA certificates of one PEM file; the password is read from a file
//! so it stays out of the command line and the process list.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a client's TLS or login could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("TLS client configuration: {0}")]
    Rustls(String),
    #[error("password file {path} is empty")]
    EmptyPassword { path: PathBuf },
    #[error("a password file needs a username (--username)")]
    NoUsername,
}

/// A username and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// `username` with the password on the first line of `path` (trailing newline ignored).
    pub fn from_password_file(username: &str, path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            what: "password file",
            path: path.to_path_buf(),
            source,
        })?;
        let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if password.is_empty() {
            return Err(TlsError::EmptyPassword {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            username: username.to_string(),
            password: password.to_string(),
        })
    }
}

/// TLS and credentials of one MQTT client, loaded and ready. The default is plain TCP
/// without login.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// `Some` turns TLS on, trusting the CA the configuration was loaded from.
    pub tls: Option<TlsConfiguration>,
    pub credentials: Option<Credentials>,
}

impl ClientSecurity {
    /// Loads the CA (`ca_file`) and the password (`password_file`, for `username`, else
    /// `default_username`: an agent logs in under its name).
    pub fn load(
        ca_file: Option<&Path>,
        username: Option<&str>,
        password_file: Option<&Path>,
        default_username: Option<&str>,
    ) -> Result<ClientSecurity, TlsError> {
        let tls = ca_file.map(client_tls).transpose()?;
        let credentials = match (password_file, username.or(default_username)) {
            (Some(file), Some(user)) => Some(Credentials::from_password_file(user, file)?),
            (Some(_), None) => return Err(TlsError::NoUsername),
            (None, _) => None,
        };
        Ok(ClientSecurity { tls, credentials })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Adds TLS and the login to `opts`.
    pub fn apply(&self, opts: &mut MqttOptions) {
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(tls.clone()));
        }
        if let Some(c) = &self.credentials {
            opts.set_credentials(c.username.clone(), c.password.clone());
        }
    }
}

/// A rustls client configuration (ring provider) trusting the certificates in `ca_file`.
pub fn client_tls(ca_file: &Path) -> Result<TlsConfiguration, TlsError> {
    let ca_err = |reason: String| TlsError::Ca {
        path: ca_file.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(ca_file).map_err(|source| TlsError::Read {
        what: "CA file",
        path: ca_file.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| ca_err(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate in the file".into()));
    }
    // The provider is named here rather than installed process-wide, so it does not matter
    // which rustls providers other crates switched on.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Rustls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Splits `mqtts://host[:port]` into (true, `host:port`) with 8883 as the default port;
/// other URLs come back unchanged with `false`.
pub fn split_tls_scheme(url: &str) -> (bool, String) {
    match url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        Some(rest) => {
            let rest = rest.trim_end_matches('/');
            // A port is a `:` after the host; an IPv6 host is in brackets.
            let host_end = rest.rfind(']').map_or(0, |i| i + 1);
            if rest[host_end..].contains(':') {
                (true, rest.to_string())
            } else {
                (true, format!("{rest}:8883"))
            }
        }
        None => (false, url.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtts_urls_get_the_default_port_and_others_stay() {
        assert_eq!(split_tls_scheme("mqtts://h"), (true, "h:8883".into()));
        assert_eq!(split_tls_scheme("mqtts://h:1"), (true, "h:1".into()));
        assert_eq!(
            split_tls_scheme("mqtts://[::1]"),
            (true, "[::1]:8883".into())
        );
        assert_eq!(
            split_tls_scheme("mqtt://h:1883"),
            (false, "mqtt://h:1883".into())
        );
    }

    #[test]
    fn a_password_without_a_username_is_refused() {
        let p = std::env::temp_dir().join(format!("moirai-pw-{}", std::process::id()));
        std::fs::write(&p, "secret\n").unwrap();
        assert!(matches!(
            ClientSecurity::load(None, None, Some(&p), None),
            Err(TlsError::NoUsername)
        ));
        let s = ClientSecurity::load(None, None, Some(&p), Some("pi-1")).unwrap();
        assert_eq!(s.credentials.unwrap().username, "pi-1");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn password_files_keep_only_the_first_line_and_refuse_empty_ones() {
        let dir = std::env::temp_dir().join(format!("moirai-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\r\nignored\n").unwrap();
        let c = Credentials::from_password_file("pi-1", &p).unwrap();
        assert_eq!(c.password, "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug leaks the password"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            Credentials::from_password_file("pi-1", &p),
            Err(TlsError::EmptyPassword { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("moirai-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        assert!(matches!(client_tls(&p), Err(TlsError::Ca { .. })));
        assert!(matches!(
            client_tls(&dir.join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}

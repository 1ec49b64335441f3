//! A throwaway certificate authority for the TLS tests: a CA, a server certificate for
//! `localhost`/`127.0.0.1`, and one from a CA nobody trusts, generated with rcgen (pure
//! Rust, no openssl) and written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Why the test PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM files of one certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a test PKI.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA certificate: what clients trust.
    pub ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`, signed by the CA.
    pub server: CertFiles,
    /// A certificate signed by another CA nobody trusts (for "wrong CA" tests).
    pub rogue_server: CertFiles,
}

fn generate(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate(name))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(generate(name))?;
    CertifiedIssuer::self_signed(params, key).map_err(generate(name))
}

/// Signs a server certificate for `localhost` and `127.0.0.1`.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate(name))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(generate(name))?),
        SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(generate(name))?;
    let cert = params.signed_by(&key, issuer).map_err(generate(name))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Generates a CA, a server certificate and a rogue one, and writes them into `dir`
    /// (`ca.pem`, `server.pem`, `server.key`, `rogue.pem`, `rogue.key`).
    pub fn generate(dir: &Path) -> Result<TestPki, PkiError> {
        let ca_issuer = ca("moirai test CA")?;
        let rogue_issuer = ca("rogue CA")?;
        let ca_path = dir.join("ca.pem");
        write(&ca_path, &ca_issuer.pem())?;
        let (cert, key) = leaf(&ca_issuer, "localhost")?;
        let server = CertFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        write(&server.cert, &cert)?;
        write(&server.key, &key)?;
        let (cert, key) = leaf(&rogue_issuer, "localhost")?;
        let rogue_server = CertFiles {
            cert: dir.join("rogue.pem"),
            key: dir.join("rogue.key"),
        };
        write(&rogue_server.cert, &cert)?;
        write(&rogue_server.key, &key)?;
        Ok(TestPki {
            ca: ca_path,
            server,
            rogue_server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_pem_certificates_and_keys() {
        let dir = crate::fleet::scratch("pki");
        let pki = TestPki::generate(&dir).unwrap();
        for p in [&pki.ca, &pki.server.cert, &pki.rogue_server.cert] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(
                text.starts_with("-----BEGIN CERTIFICATE-----"),
                "{}",
                p.display()
            );
        }
        let key = std::fs::read_to_string(&pki.server.key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert_ne!(
            std::fs::read_to_string(&pki.server.cert).unwrap(),
            std::fs::read_to_string(&pki.rogue_server.cert).unwrap()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

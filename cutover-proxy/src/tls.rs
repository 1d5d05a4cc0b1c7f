//! TLS towards clients: the certificate and key the plan names.

use std::path::Path;
use std::sync::Arc;

/// A rustls server configuration from PEM files; the error is one line that names the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| {
            format!(
                "cannot read {}: {e}; fix proxy.tls_cert / proxy.tls_key",
                p.display()
            )
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{} holds no PEM private key", key.display())
        }
        e => format!("{}: {e}", key.display()),
    })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// The rustls client settings for the admin API beyond loopback: its certificate checked
/// against `ca` (PEM) when given, else the system's trusted roots. The error is one line.
pub fn admin_client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}; fix proxy.admin_ca", path.display()))?;
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{} holds no PEM certificate; fix proxy.admin_ca",
                    path.display()
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("the system has no trusted roots to check the admin API's certificate with; set proxy.admin_ca".into());
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_key_load_and_a_missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, empty) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("empty.pem"),
        );
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        std::fs::write(&empty, "not a key\n").unwrap();
        assert!(server_config(&cert, &key).is_ok());
        assert_eq!(
            server_config(&cert, &empty).unwrap_err(),
            format!("{} holds no PEM private key", empty.display())
        );
        assert_eq!(
            server_config(&empty, &key).unwrap_err(),
            format!("{} holds no PEM certificate", empty.display())
        );
    }
}

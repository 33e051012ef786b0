//! TLS identities: a self-signed certificate and its private key, with PEM save/load.

use crate::{Pin, TransportError, pin_of};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;

/// A DER certificate and its PKCS#8 DER private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The DER certificate.
    pub cert_der: Vec<u8>,
    /// The PKCS#8 DER private key.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pin", &self.pin())
            .field("key_der", &"<secret>")
            .finish()
    }
}

/// A fresh self-signed ECDSA P-256 certificate for `common_name` (also its DNS name).
pub fn generate_identity(common_name: &str) -> Result<Identity, TransportError> {
    let err = |e: rcgen::Error| TransportError::CertGen(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![common_name.to_string()]).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Identity {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

impl Identity {
    /// The pin of this identity's certificate.
    pub fn pin(&self) -> Pin {
        pin_of(&self.cert_der)
    }

    pub(crate) fn rustls_parts(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The private key as PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_der)
    }

    /// Writes the certificate and key as PEM; the key file is created with mode 0600 on Unix.
    pub fn save_pem(&self, cert_path: &Path, key_path: &Path) -> Result<(), TransportError> {
        std::fs::write(cert_path, self.cert_pem())?;
        write_secret(key_path, self.key_pem().as_bytes())?;
        Ok(())
    }

    /// Reads a certificate and a PKCS#8 key from PEM files.
    pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Identity, TransportError> {
        let pem_err = |p: &Path, e: rustls::pki_types::pem::Error| TransportError::Pem {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let cert = CertificateDer::from_pem_file(cert_path).map_err(|e| pem_err(cert_path, e))?;
        let key = PrivatePkcs8KeyDer::from_pem_file(key_path).map_err(|e| pem_err(key_path, e))?;
        Ok(Identity {
            cert_der: cert.to_vec(),
            key_der: key.secret_pkcs8_der().to_vec(),
        })
    }
}

/// Writes `bytes` to `path`, readable by the owner only (mode 0600 on Unix), and fsyncs it.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

//! TLS for Selvage's QUIC connections (the origin ↔ edge link and client QUIC), on rustls with
//! the ring provider and TLS 1.3 only.
//!
//! Servers run with a configured certificate chain and key (PEM) or, in development, with a
//! self-signed certificate made at start. A client trusts either a CA bundle (PEM) or exactly
//! one certificate, pinned by its fingerprint: the lower-case hex SHA-256 of the certificate's
//! DER, which the server prints at start (`sha256:` prefixes and `:` separators are accepted
//! when parsing, so fingerprints pasted from `openssl x509 -fingerprint -sha256` work too).

use std::{path::Path, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};

/// Why a TLS setting could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A fingerprint is not 64 hex digits.
    #[error("bad certificate fingerprint {0:?}: expected the 64-hex-digit SHA-256 of the certificate")]
    Fingerprint(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let pem_err = |path: &Path, reason: String| TlsError::Pem { path: path.display().to_string(), reason };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
        Ok(Identity { chain, key })
    }

    /// A fresh self-signed certificate for `names` (DNS names or IP addresses).
    pub fn self_signed(names: &[String]) -> Result<Identity, TlsError> {
        let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
        Ok(Identity { chain: vec![made.cert.der().clone()], key })
    }

    /// A self-signed certificate kept in `dir` as `{stem}-cert.pem` and `{stem}-key.pem`:
    /// made and written on first use, read back afterwards, so the fingerprint peers pin
    /// survives restarts. The key file is readable by its owner only.
    pub fn self_signed_in(dir: &Path, stem: &str, names: &[String]) -> Result<Identity, TlsError> {
        let cert = dir.join(format!("{stem}-cert.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        if cert.exists() && key.exists() {
            return Identity::from_pem_files(&cert, &key);
        }
        let io_err =
            |path: &Path, e: std::io::Error| TlsError::Pem { path: path.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
        write_private(&key, made.key_pair.serialize_pem().as_bytes()).map_err(|e| io_err(&key, e))?;
        std::fs::write(&cert, made.cert.pem()).map_err(|e| io_err(&cert, e))?;
        Identity::from_pem_files(&cert, &key)
    }

    /// The leaf certificate's fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex(&Sha256::digest(cert.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses a fingerprint as printed by Selvage or by openssl into 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let trimmed = s.trim();
    let body = trimmed.strip_prefix("sha256:").or_else(|| trimmed.strip_prefix("SHA256:")).unwrap_or(trimmed);
    let digits: Vec<u8> = body.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(TlsError::Fingerprint(s.to_owned()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(|| TlsError::Fingerprint(s.to_owned()))?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(|| TlsError::Fingerprint(s.to_owned()))?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A TLS 1.3 server configuration offering `alpn`.
pub fn server_config(identity: Identity, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// Which servers a client trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Exactly the certificate with this fingerprint (any name, no expiry check): development
    /// and self-signed deployments.
    Pinned(String),
    /// Any certificate with one of these fingerprints: while a pinned certificate is being
    /// replaced, the old one and the new one.
    PinnedAny(Vec<String>),
    /// Certificates chaining to the CAs in this PEM file, for the name dialled.
    CaFile(std::path::PathBuf),
}

/// A TLS 1.3 client configuration offering `alpn` and trusting `trust`.
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match trust {
        Trust::Pinned(fp) => {
            let verifier = PinnedVerifier { fingerprints: vec![parse_fingerprint(fp)?], provider: provider() };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        Trust::PinnedAny(fps) => {
            let fingerprints = fps.iter().map(|fp| parse_fingerprint(fp)).collect::<Result<Vec<_>, _>>()?;
            let verifier = PinnedVerifier { fingerprints, provider: provider() };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let pem_err = |reason: String| TlsError::Pem { path: path.display().to_string(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_err(e.to_string()))? {
                roots.add(cert.map_err(|e| pem_err(e.to_string()))?)?;
            }
            if roots.is_empty() {
                return Err(pem_err("no CA certificate in the file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// Accepts exactly the certificates with these SHA-256s (one, or two during a rotation);
/// handshake signatures are still verified.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprints: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.fingerprints.contains(&seen) {
            Ok(ServerCertVerified::assertion())
        } else {
            let pinned: Vec<String> = self.fingerprints.iter().map(|fp| hex(fp)).collect();
            Err(rustls::Error::General(format!(
                "server certificate {} is not the pinned one {}",
                hex(&seen),
                pinned.join(" or ")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_both_spellings() {
        let id = Identity::self_signed(&["localhost".into()]).unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 64);
        let colons =
            fp.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap().to_uppercase()).collect::<Vec<_>>();
        let openssl = format!("sha256:{}", colons.join(":"));
        assert_eq!(parse_fingerprint(&fp).unwrap(), parse_fingerprint(&openssl).unwrap());
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"z".repeat(64)).is_err());
    }

    #[test]
    fn a_kept_certificate_keeps_its_fingerprint() {
        let dir = std::env::temp_dir().join(format!("selvage-tls-{}", std::process::id()));
        let first = Identity::self_signed_in(&dir, "link", &["localhost".into()]).unwrap();
        let again = Identity::self_signed_in(&dir, "link", &["localhost".into()]).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn configs_build() {
        let id = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let fp = id.fingerprint();
        let server = server_config(id, &[b"x/1"]).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"x/1".to_vec()]);
        let client = client_config(&Trust::Pinned(fp), &[b"x/1"]).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"x/1".to_vec()]);
        assert!(client_config(&Trust::CaFile("/nonexistent.pem".into()), &[]).is_err());
    }
}

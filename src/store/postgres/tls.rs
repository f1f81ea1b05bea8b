//! TLS to PostgreSQL with rustls, in libpq's `sslmode` terms.
//!
//! | mode | TLS | certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` | when the server offers it | not checked, or its chain when a CA file is given |
//! | `require` | always | not checked, or its chain when a CA file is given (as libpq) |
//! | `verify-ca` | always | its chain, against the CA file |
//! | `verify-full` | always | its chain and the URL's host name |
//!
//! Without a CA file, `prefer` and `require` encrypt but do not know whom they talk to:
//! `verify-full` is what keeps a password and the grains from a man in the middle.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SettingError;

/// libpq's `sslmode` words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain TCP (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with the server's certificate chain checked against the CA file.
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq word.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates; verification is the connector's.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The connector for `mode` with the CA certificates of `root_cert` (a PEM file), or
/// why the two settings do not go together.
pub fn connector(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<MakeRustlsConnect, SettingError> {
    // Explicit, so that it does not matter which providers other crates enable.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = root_cert.map(load_roots).transpose()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::Disable, Some(_)) => {
            return Err(SettingError {
                setting: "sslrootcert",
                reason: "is set, but postgres_sslmode = \"disable\" makes no use of it".into(),
            });
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(SettingError {
                setting: "sslrootcert",
                reason: format!(
                    "required with postgres_sslmode = \"{mode}\": the PEM file of the CA \
                     certificates that the server's certificate leads to"
                ),
            });
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => Arc::new(Unchecked {
            algorithms: provider.signature_verification_algorithms,
        }),
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| SettingError {
                    setting: "sslrootcert",
                    reason: format!("unusable CA certificates: {e}"),
                })?
        }
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            Arc::new(ChainOnly {
                roots,
                algorithms: provider.signature_verification_algorithms,
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError {
            setting: "sslmode",
            reason: format!("no TLS version available: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file as trust anchors.
fn load_roots(path: &Path) -> Result<RootCertStore, SettingError> {
    let refused = |reason: String| SettingError {
        setting: "sslrootcert",
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| refused(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("{} is not a PEM file: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(refused(format!("no certificate in {}", path.display())));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| {
            refused(format!(
                "{} holds a certificate that cannot be a CA: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// `verify-ca` (and `prefer`/`require` with a CA file): the chain must lead to one of
/// the roots, whatever host name the certificate carries.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `prefer` and `require` without a CA file, as libpq: any certificate is accepted
/// (the handshake's signatures are still checked, so the session is the one keyed by
/// that certificate).
#[derive(Debug)]
struct Unchecked {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the connection string `url` sets one of libpq's `keys` (`sslmode`, ...).
pub fn url_sets(url: &str, key: &str) -> bool {
    let url = url.trim();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        url.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|pair| pair.split('=').next().is_some_and(|k| k == key))
        })
    } else {
        url.split_whitespace()
            .any(|pair| pair.split('=').next().is_some_and(|k| k.trim() == key))
    }
}

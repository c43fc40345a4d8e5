//! Server-side TLS (SPEC §2.4): rustls on the ring provider, TLS 1.2 and 1.3
//! only (TRN-14: rustls implements nothing older, so a client offering only
//! TLS 1.0/1.1 fails the handshake).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the PEM input")]
    NoCertificate,
    #[error("reading PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// An acceptor serving `chain` (leaf first) with `key`.
pub fn acceptor(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<TlsAcceptor, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor from PEM text: a certificate chain (leaf first) and a private
/// key (PKCS#8, PKCS#1 or SEC1), as the reference server reads them from files.
pub fn acceptor_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    acceptor(chain, key)
}

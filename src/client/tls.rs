//! Client-side TLS: rustls on the ring provider, trusting the roots the caller
//! gives, or (for development against self-signed certificates) any
//! certificate while still checking the handshake signatures.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{ClientError, ClientOptions};

/// The rustls configuration `options` ask for.
pub(super) fn client_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    if let Some(config) = &options.tls_config {
        return Ok(Arc::clone(config));
    }
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let config = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        if options.tls_roots.is_empty() {
            return Err(ClientError::Tls(
                "no trust roots: set ClientOptions::tls_roots, tls_config or insecure_skip_verify".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for cert in &options.tls_roots {
            roots.add(cert.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: a DNS name or an IP address.
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| ClientError::Tls(format!("server name {host:?}: {e}")))
}

/// Accepts any certificate chain. The handshake signatures are still checked
/// with the provider's algorithms: it skips authentication of the server,
/// not the integrity of the TLS session.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

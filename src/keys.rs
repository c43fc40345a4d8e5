//! Key material at the edge: reading JWT keys from files, generating development
//! keys and self-signed TLS certificates.
//!
//! [`crate::core::auth`] works with parsed keys and never touches the file system;
//! this module is where files, permissions and randomness live. Keys are checked
//! when loaded, so a wrong file fails at startup, naming the path, instead of
//! making every token fail later with `token_signature`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::core::auth::{Algorithm, Claims, Signer, Verifier};

/// Private key file of the development key pair, in [`ensure_dev_keys`]'s directory.
pub const DEV_PRIVATE_KEY: &str = "dev-ed25519.pem";
/// Public key file of the development key pair.
pub const DEV_PUBLIC_KEY: &str = "dev-ed25519.pub.pem";
/// The backend API's bearer secret, created in the data directory on first start when the settings name none.
pub const ADMIN_SECRET: &str = "admin-secret";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} and {} are not a key pair", private.display(), public.display())]
    Mismatch { private: PathBuf, public: PathBuf },
    #[error("generating a key or certificate: {0}")]
    Generate(String),
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A verifier for `alg` from the key file at `path`.
///
/// RS256: a public key PEM (SPKI "PUBLIC KEY" or PKCS#1 "RSA PUBLIC KEY"), or a
/// private key PEM (PKCS#8 or PKCS#1) whose public half is used. EdDSA: an
/// Ed25519 public key PEM, or a PKCS#8 private key PEM. HS256: the file's bytes
/// are the secret, trailing newlines trimmed.
pub fn load_verifier(alg: Algorithm, path: &Path) -> Result<Verifier, KeyError> {
    let bytes = read(path)?;
    let key = match alg {
        Algorithm::Hs256 => DecodingKey::from_secret(&secret(path, &bytes)?),
        Algorithm::Rs256 | Algorithm::EdDsa => public_key(alg, path, pem_text(path, &bytes)?)?,
    };
    Ok(Verifier::new(alg, key))
}

/// A signer for `alg` from the key file at `path`: a private key PEM (RS256:
/// PKCS#8 or PKCS#1; EdDSA: PKCS#8) or, for HS256, the secret file.
pub fn load_signer(alg: Algorithm, path: &Path) -> Result<Signer, KeyError> {
    let bytes = read(path)?;
    let key = match alg {
        Algorithm::Hs256 => EncodingKey::from_secret(&secret(path, &bytes)?),
        Algorithm::Rs256 | Algorithm::EdDsa => private_key(alg, path, pem_text(path, &bytes)?)?,
    };
    // jsonwebtoken takes some unusable keys (a public key as RSA private key,
    // for one) without complaint and only fails when signing.
    jsonwebtoken::crypto::sign(b"probe", &key, alg.jwt())
        .map_err(|e| invalid(path, format!("cannot sign {alg} with this key: {e}")))?;
    Ok(Signer::new(alg, key))
}

/// Development defaults: if `dir`/dev-ed25519.pem (PKCS#8 private) and dev-ed25519.pub.pem are missing, create them
/// (Ed25519, via rcgen, file mode 0600 for the private key); return (Verifier, Signer). Idempotent: second call
/// loads the same key.
pub fn ensure_dev_keys(dir: &Path) -> Result<(Verifier, Signer), KeyError> {
    fs::create_dir_all(dir).map_err(|error| KeyError::Io {
        action: "creating",
        path: dir.to_owned(),
        error,
    })?;
    let private = dir.join(DEV_PRIVATE_KEY);
    let public = dir.join(DEV_PUBLIC_KEY);
    if !exists(&private)? {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| KeyError::Generate(e.to_string()))?;
        write_new(&private, &pair.serialize_pem(), 0o600)?;
    }
    if !exists(&public)? {
        let pem = pem_text(&private, &read(&private)?)?.to_owned();
        let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| invalid(&private, format!("not a private key: {e}")))?;
        write_new(&public, &pair.public_key_pem(), 0o644)?;
    }
    let signer = load_signer(Algorithm::EdDsa, &private)?;
    let verifier = load_verifier(Algorithm::EdDsa, &public)?;
    // Someone may have replaced one of the two files.
    let probe = Claims {
        eid: "probe@localhost".into(),
        device_id: "probe".into(),
        jti: "probe".into(),
        ..Claims::default()
    };
    let token = signer.mint(&probe).map_err(|e| invalid(&private, e.to_string()))?;
    verifier
        .verify_ignoring_time(&token)
        .map_err(|_| KeyError::Mismatch { private, public })?;
    Ok((verifier, signer))
}

/// The backend API's bearer secret in `path` (its first line), created as 32 random bytes in hex (mode 0600) when
/// `create` is set and the file does not exist.
pub fn admin_secret(path: &Path, create: bool) -> Result<String, KeyError> {
    if create && !exists(path)? {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|error| KeyError::Io {
                action: "creating",
                path: dir.to_owned(),
                error,
            })?;
        }
        let secret: [u8; 32] = rand::random();
        write_new(path, &format!("{}\n", hex::encode(secret)), 0o600)?;
    }
    let text = String::from_utf8(read(path)?).map_err(|_| invalid(path, "not UTF-8"))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.len() < 16 {
        return Err(invalid(
            path,
            "an admin secret needs at least 16 characters on its first line",
        ));
    }
    Ok(secret.to_string())
}

/// Self-signed TLS certificate + key for `names` (e.g. ["localhost", "127.0.0.1"]) as PEM strings, for development
/// and tests. Names that parse as IP addresses become IP SANs, the others DNS SANs. Returns (certificate, key).
pub fn self_signed_tls(names: &[String]) -> Result<(String, String), KeyError> {
    if names.is_empty() {
        return Err(KeyError::Generate("a certificate needs at least one name".into()));
    }
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok((cert.pem(), signing_key.serialize_pem()))
}

fn public_key(alg: Algorithm, path: &Path, pem: &str) -> Result<DecodingKey, KeyError> {
    let key = match (alg, pem_label(pem)) {
        (Algorithm::Rs256, Some("PUBLIC KEY" | "RSA PUBLIC KEY")) => {
            DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())
        }
        // jsonwebtoken would take a private RSA PEM as a public key and fail
        // every verification, so the public half is derived explicitly.
        (Algorithm::Rs256, Some("PRIVATE KEY" | "RSA PRIVATE KEY")) => EncodingKey::from_rsa_pem(pem.as_bytes())
            .and_then(|key| Jwk::from_encoding_key(&key, alg.jwt()))
            .and_then(|jwk| DecodingKey::from_jwk(&jwk))
            .map_err(|e| e.to_string()),
        (Algorithm::EdDsa, Some("PUBLIC KEY")) => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string()),
        // rcgen (ring) reads both PKCS#8 versions; rcgen itself writes v2, which
        // jsonwebtoken's own derivation does not accept.
        (Algorithm::EdDsa, Some("PRIVATE KEY")) => match rcgen::KeyPair::from_pem(pem) {
            Ok(pair) if pair.is_compatible(&rcgen::PKCS_ED25519) => Ok(DecodingKey::from_ed_der(pair.public_key_raw())),
            Ok(_) => Err("not an Ed25519 key".to_owned()),
            Err(e) => Err(e.to_string()),
        },
        (_, label) => {
            return Err(invalid(
                path,
                format!("expected an {alg} key PEM, found {}", describe(label)),
            ));
        }
    }
    .map_err(|e| invalid(path, format!("not a usable {alg} key: {e}")))?;
    // Parses the key as the verifier will (RSA modulus, Ed25519 length).
    Jwk::from_decoding_key(&key, Some(alg.jwt()))
        .map_err(|e| invalid(path, format!("not a usable {alg} public key: {e}")))?;
    Ok(key)
}

fn private_key(alg: Algorithm, path: &Path, pem: &str) -> Result<EncodingKey, KeyError> {
    let key = match (alg, pem_label(pem)) {
        (Algorithm::Rs256, Some("PRIVATE KEY" | "RSA PRIVATE KEY")) => EncodingKey::from_rsa_pem(pem.as_bytes()),
        (Algorithm::EdDsa, Some("PRIVATE KEY")) => EncodingKey::from_ed_pem(pem.as_bytes()),
        (_, Some(label)) if label.contains("PUBLIC KEY") => {
            return Err(invalid(path, "holds a public key; signing needs the private key"));
        }
        (_, label) => {
            return Err(invalid(
                path,
                format!("expected an {alg} private key PEM, found {}", describe(label)),
            ));
        }
    };
    key.map_err(|e| invalid(path, format!("not a usable {alg} private key: {e}")))
}

/// The label of the first PEM block, e.g. "PUBLIC KEY".
fn pem_label(pem: &str) -> Option<&str> {
    let after = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(&after[..after.find("-----")?])
}

fn describe(label: Option<&str>) -> String {
    label.map_or_else(|| "no PEM block".to_owned(), |label| format!("a {label:?} PEM block"))
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|error| KeyError::Io {
        action: "reading",
        path: path.to_owned(),
        error,
    })
}

fn pem_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, KeyError> {
    std::str::from_utf8(bytes).map_err(|_| invalid(path, "not a PEM file (not UTF-8 text)"))
}

/// An HS256 secret file: its bytes without the trailing newline editors add.
fn secret(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(invalid(path, "empty HS256 secret"));
    }
    Ok(bytes[..end].to_vec())
}

fn exists(path: &Path) -> Result<bool, KeyError> {
    path.try_exists().map_err(|error| KeyError::Io {
        action: "checking",
        path: path.to_owned(),
        error,
    })
}

/// Writes a file that must not exist yet. If it appeared meanwhile (another
/// process setting up the same directory), theirs is kept.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), KeyError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let io_error = |error| KeyError::Io {
        action: "writing",
        path: path.to_owned(),
        error,
    };
    match options.open(path) {
        Ok(mut file) => file
            .write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ErrorKind;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    fn claims() -> Claims {
        Claims {
            eid: "alice@example.com".into(),
            device_id: "phone-1".into(),
            jti: "jti-1".into(),
            iat: 1_700_000_000,
            exp: 1_700_003_600,
            ..Claims::default()
        }
    }

    const NOW_MS: i64 = 1_700_000_001_000;

    fn round_trip(signer: &Signer, verifier: &Verifier) -> Result<(), ErrorKind> {
        let token = signer.mint(&claims()).unwrap();
        verifier.verify(&token, NOW_MS).map(|_| ())
    }

    #[test]
    fn fixture_keys_load_and_pair_up() {
        let cases = [
            (Algorithm::Rs256, "rs256-test.pem", "rs256-test.pub.pem"),
            (Algorithm::Rs256, "rs256-test.pkcs1.pem", "rs256-test.pkcs1.pub.pem"),
            (Algorithm::Rs256, "rs256-test.pem", "rs256-test.pkcs1.pub.pem"),
            (Algorithm::EdDsa, "eddsa-test.pem", "eddsa-test.pub.pem"),
            (Algorithm::Hs256, "hs256-test.secret", "hs256-test.secret"),
        ];
        for (alg, private, public) in cases {
            let signer = load_signer(alg, &fixture(private)).unwrap();
            let verifier = load_verifier(alg, &fixture(public)).unwrap();
            assert_eq!((signer.algorithm(), verifier.algorithm()), (alg, alg));
            assert_eq!(round_trip(&signer, &verifier), Ok(()), "{alg} {private} {public}");
        }
    }

    #[test]
    fn verifier_from_a_private_key_uses_its_public_half() {
        for (alg, private) in [
            (Algorithm::Rs256, "rs256-test.pem"),
            (Algorithm::Rs256, "rs256-test.pkcs1.pem"),
            (Algorithm::EdDsa, "eddsa-test.pem"),
        ] {
            let verifier = load_verifier(alg, &fixture(private)).unwrap();
            let signer = load_signer(alg, &fixture(private)).unwrap();
            assert_eq!(round_trip(&signer, &verifier), Ok(()), "{private}");
        }
    }

    #[test]
    fn hs256_secret_is_the_file_without_its_newline() {
        let text = fs::read_to_string(fixture("hs256-test.secret")).unwrap();
        assert!(text.ends_with('\n'));
        let from_file = load_signer(Algorithm::Hs256, &fixture("hs256-test.secret")).unwrap();
        let trimmed = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(text.trim_end().as_bytes()));
        assert_eq!(round_trip(&from_file, &trimmed), Ok(()));
        let untrimmed = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(text.as_bytes()));
        assert_eq!(round_trip(&from_file, &untrimmed), Err(ErrorKind::TokenSignature));
    }

    #[test]
    fn wrong_files_are_rejected_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.secret");
        fs::write(&empty, "\r\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (Algorithm::Rs256, fixture("eddsa-test.pub.pem")),
            (Algorithm::EdDsa, fixture("rs256-test.pub.pem")),
            (Algorithm::EdDsa, fixture("rs256-test.pem")),
            (Algorithm::EdDsa, fixture("rs256-test.pkcs1.pub.pem")),
            (Algorithm::Rs256, fixture("hs256-test.secret")),
            (Algorithm::Rs256, fixture("README.md")),
            (Algorithm::Rs256, garbage.clone()),
            (Algorithm::EdDsa, garbage.clone()),
            (Algorithm::Hs256, empty.clone()),
            (Algorithm::Rs256, missing.clone()),
        ];
        for (alg, path) in &cases {
            let error = load_verifier(*alg, path)
                .err()
                .unwrap_or_else(|| panic!("{alg} {}", path.display()));
            assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        }
        let signer_cases = [
            (Algorithm::Rs256, fixture("rs256-test.pub.pem")),
            (Algorithm::Rs256, fixture("rs256-test.pkcs1.pub.pem")),
            (Algorithm::EdDsa, fixture("eddsa-test.pub.pem")),
            (Algorithm::Rs256, fixture("eddsa-test.pem")),
            (Algorithm::EdDsa, fixture("rs256-test.pem")),
            (Algorithm::Hs256, empty),
            (Algorithm::EdDsa, missing),
        ];
        for (alg, path) in &signer_cases {
            let error = load_signer(*alg, path)
                .err()
                .unwrap_or_else(|| panic!("{alg} {}", path.display()));
            assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        }
    }

    #[test]
    fn dev_keys_are_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("state/keys");
        let (verifier, signer) = ensure_dev_keys(&keys).unwrap();
        assert_eq!(
            (verifier.algorithm(), signer.algorithm()),
            (Algorithm::EdDsa, Algorithm::EdDsa)
        );
        assert_eq!(round_trip(&signer, &verifier), Ok(()));
        let private_pem = fs::read_to_string(keys.join(DEV_PRIVATE_KEY)).unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys.join(DEV_PRIVATE_KEY)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // The second call loads the same pair: tokens cross between the two.
        let (verifier2, signer2) = ensure_dev_keys(&keys).unwrap();
        assert_eq!(fs::read_to_string(keys.join(DEV_PRIVATE_KEY)).unwrap(), private_pem);
        assert_eq!(round_trip(&signer, &verifier2), Ok(()));
        assert_eq!(round_trip(&signer2, &verifier), Ok(()));
        // The files are ordinary key files.
        let loaded = load_verifier(Algorithm::EdDsa, &keys.join(DEV_PRIVATE_KEY)).unwrap();
        assert_eq!(round_trip(&signer, &loaded), Ok(()));

        // A lost public key is derived again from the private one.
        fs::remove_file(keys.join(DEV_PUBLIC_KEY)).unwrap();
        let (verifier3, _) = ensure_dev_keys(&keys).unwrap();
        assert_eq!(round_trip(&signer, &verifier3), Ok(()));
    }

    #[test]
    fn dev_keys_that_do_not_match_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_keys(dir.path()).unwrap();
        fs::copy(fixture("eddsa-test.pub.pem"), dir.path().join(DEV_PUBLIC_KEY)).unwrap();
        assert!(matches!(ensure_dev_keys(dir.path()), Err(KeyError::Mismatch { .. })));
    }

    #[test]
    fn self_signed_tls_is_usable_by_rustls() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use std::sync::Arc;

        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (cert_pem, key_pem) = self_signed_tls(&names).unwrap();
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (server, client) = (Arc::new(server), Arc::new(client));

        // A full in-memory handshake, so the client checks the certificate
        // against each name (DNS and IP SANs).
        for name in names.iter().chain([&"example.com".to_owned()]) {
            let server_name = ServerName::try_from(name.clone()).unwrap();
            let mut client = rustls::ClientConnection::new(client.clone(), server_name).unwrap();
            let mut server = rustls::ServerConnection::new(server.clone()).unwrap();
            let result = loop {
                if !client.is_handshaking() && !server.is_handshaking() {
                    break Ok(());
                }
                let mut buffer = Vec::new();
                client.write_tls(&mut buffer).unwrap();
                server.read_tls(&mut buffer.as_slice()).unwrap();
                if let Err(error) = server.process_new_packets() {
                    break Err(error);
                }
                buffer.clear();
                server.write_tls(&mut buffer).unwrap();
                client.read_tls(&mut buffer.as_slice()).unwrap();
                if let Err(error) = client.process_new_packets() {
                    break Err(error);
                }
            };
            assert_eq!(result.is_ok(), name != "example.com", "{name}: {result:?}");
        }

        assert!(matches!(self_signed_tls(&[]), Err(KeyError::Generate(_))));
    }
}

//! The built-in reference server for network runs: `bimip-conform` with no
//! target starts it on loopback (WebSocket and native TCP, a fresh data
//! directory, RS256 with the kit's test key, short timers so the timing
//! cases take seconds), and the conformance test smoke-tests the network
//! driver against it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::driver::{Credentials, TargetInfo};
use super::lifecycle::{Restart, ServerControl};
use super::network::{Control, NetworkTarget};
use crate::core::Config;
use crate::core::auth::Algorithm;
use crate::faults::Faults;
use crate::server::{JwtSettings, Running, Settings, StartError, TlsSettings};
use crate::variants::{Variant, Variants};

/// The kit's RS256 test key: the server verifies RS256 (SPEC AUTH-1's MUST).
const RS256_KEY: &str = include_str!("../tests/fixtures/keys/rs256-test.pem");

#[derive(Debug, thiserror::Error)]
pub enum BuiltInError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// The reference server on its own runtime, for as long as this lives.
pub struct BuiltIn {
    server: Arc<Server>,
    data_dir: PathBuf,
    limits: Config,
    tls: bool,
}

/// The server process's stand-in: its settings (with the ports it bound) and the running instance, which a
/// restart replaces ([`ServerControl`]).
struct Server {
    settings: Mutex<Settings>,
    current: Mutex<Option<Instance>>,
}

/// One start of the server: its own runtime, so that a kill can drop every task at once.
struct Instance {
    runtime: tokio::runtime::Runtime,
    running: Running,
}

impl Server {
    fn start(settings: &Settings) -> Result<Instance, BuiltInError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| BuiltInError::Io {
                what: "starting a runtime".into(),
                source,
            })?;
        let running = runtime.block_on(settings.start())?;
        Ok(Instance { runtime, running })
    }

    fn stop(&self, how: Restart) {
        let Some(Instance { runtime, running }) = lock(&self.current).take() else {
            return;
        };
        match how {
            Restart::Graceful => {
                let _ =
                    runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), running.shutdown()).await });
            }
            // As `kill -9`: every task dropped where it stands, sockets closed by their drop, nothing flushed.
            Restart::Kill => drop(running),
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServerControl for Server {
    fn unavailable(&self, _: Restart) -> Option<String> {
        None
    }

    fn restart(&self, how: Restart) -> Result<(), String> {
        self.stop(how);
        let instance =
            Server::start(&lock(&self.settings)).map_err(|e| format!("restarting the built-in server: {e}"))?;
        *lock(&self.current) = Some(instance);
        Ok(())
    }
}

impl BuiltIn {
    /// The limits the built-in server runs with: SPEC's defaults but for
    /// timers short enough for real time and a queue limit one can reach.
    pub fn limits() -> Config {
        Config {
            ping_interval_ms: 1_000,
            auth_deadline_ms: 2_000,
            queue_max_items: 20,
            ..Config::default()
        }
    }

    pub fn start() -> Result<BuiltIn, BuiltInError> {
        Self::start_with(Faults::none(), Variants::default(), false)
    }

    /// The same server, breaking SPEC on purpose with `faults` (the
    /// self-check: the suite must catch each).
    pub fn start_with_faults(faults: Faults) -> Result<BuiltIn, BuiltInError> {
        Self::start_with(faults, Variants::default(), false)
    }

    /// The same server using behaviours SPEC allows but it does not choose
    /// (the mirror self-check: the suite must pass it).
    pub fn start_with_variants(variants: Variants) -> Result<BuiltIn, BuiltInError> {
        Self::start_with(Faults::none(), variants, false)
    }

    /// With `tls`, both listeners speak TLS (wss://, tls://) with a fresh
    /// self-signed certificate for localhost and 127.0.0.1; the target
    /// accepts it (`insecure`).
    pub fn start_with(faults: Faults, variants: Variants, tls: bool) -> Result<BuiltIn, BuiltInError> {
        let mut limits = Self::limits();
        limits.revoke_notice |= variants.has(Variant::RevokeNotice);
        let io = |what: String| move |source| BuiltInError::Io { what, source };
        // A directory of its own even for servers started in the same millisecond (the proxy check starts several).
        let data_dir = tempfile::Builder::new()
            .prefix("bimip-conform-server-")
            .tempdir()
            .map_err(io("creating a data directory".into()))?
            .keep();
        let key = data_dir.join("rs256.pem");
        std::fs::write(&key, RS256_KEY).map_err(io(format!("writing {}", key.display())))?;
        let tls = if tls {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let certified = rcgen::generate_simple_self_signed(names).map_err(|e| BuiltInError::Io {
                what: "making a self-signed certificate".into(),
                source: std::io::Error::other(e),
            })?;
            let cert = data_dir.join("tls-cert.pem");
            let cert_key = data_dir.join("tls-key.pem");
            std::fs::write(&cert, certified.cert.pem()).map_err(io(format!("writing {}", cert.display())))?;
            std::fs::write(&cert_key, certified.signing_key.serialize_pem())
                .map_err(io(format!("writing {}", cert_key.display())))?;
            Some(TlsSettings { cert, key: cert_key })
        } else {
            None
        };
        let settings = Settings {
            ws: Some(([127, 0, 0, 1], 0).into()),
            tcp: Some(([127, 0, 0, 1], 0).into()),
            admin: None,
            grpc: None,
            data_dir: data_dir.clone(),
            jwt: Some(JwtSettings {
                alg: "RS256".into(),
                key: key.clone(),
                signing_key: Some(key),
                issuer: None,
                audience: None,
                leeway_s: if variants.has(Variant::TokenLeeway) {
                    crate::variants::TOKEN_LEEWAY_S
                } else {
                    0
                },
            }),
            tls: tls.clone(),
            limits: limits.clone(),
            chat_store: Default::default(),
            shards: None,
            faults,
            variants,
            ..Settings::default()
        };
        let mut settings = settings;
        let instance = Server::start(&settings)?;
        // A restart binds the same ports: the target's URLs stay.
        settings.ws = instance.running.net.ws_addr().or(settings.ws);
        settings.tcp = instance.running.net.tcp_addr().or(settings.tcp);
        Ok(BuiltIn {
            server: Arc::new(Server {
                settings: Mutex::new(settings),
                current: Mutex::new(Some(instance)),
            }),
            data_dir,
            limits,
            tls: tls.is_some(),
        })
    }

    /// Kills the server when called, from any thread, and leaves it down: a target that goes away part-way.
    pub fn killer(&self) -> impl FnOnce() + Send + 'static {
        let server = Arc::clone(&self.server);
        move || server.stop(Restart::Kill)
    }

    /// The target the network driver checks, with tokens the suite mints.
    pub fn target(&self) -> Result<NetworkTarget, BuiltInError> {
        let missing = |what: &str| BuiltInError::Io {
            what: what.to_string(),
            source: std::io::Error::other("no listener"),
        };
        let (ws, tcp) = {
            let settings = lock(&self.server.settings);
            (settings.ws, settings.tcp)
        };
        let ws = ws.ok_or_else(|| missing("the WebSocket listener"))?;
        let tcp = tcp.ok_or_else(|| missing("the TCP listener"))?;
        let signer = crate::keys::load_signer(Algorithm::Rs256, &self.data_dir.join("rs256.pem"))?;
        let ms = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        let (ws_scheme, tcp_scheme) = if self.tls { ("wss", "tls") } else { ("ws", "tcp") };
        Ok(NetworkTarget {
            ws: Some(format!("{ws_scheme}://{ws}/ws")),
            tcp: Some(format!("{tcp_scheme}://{tcp}")),
            more_ws: Vec::new(),
            more_tcp: Vec::new(),
            credentials: Credentials::Key(Arc::new(signer)),
            info: TargetInfo {
                ping_interval: ms(self.limits.ping_interval_ms),
                auth_deadline: ms(self.limits.auth_deadline_ms),
                queue_max_items: Some(self.limits.queue_max_items),
                quiet: Duration::from_millis(200),
                clock_tolerance_ms: 2_000,
                // Its timers are short (1 s pings) and it shares the machine
                // with the suite: a loaded 2-core CI box delays a tick by 400 ms.
                timer_tolerance_ms: 600,
                ..TargetInfo::default()
            },
            // The built-in certificate is self-signed.
            insecure: self.tls,
            control: Some(Control(Arc::clone(&self.server) as Arc<dyn ServerControl>)),
        })
    }
}

impl Drop for BuiltIn {
    fn drop(&mut self) {
        self.server.stop(Restart::Graceful);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

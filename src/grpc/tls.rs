//! TLS on the gRPC ports (rustls): the server certificate and key come from files and are
//! reloaded when the files change (cert-manager rotates them before they expire), without a
//! restart and without touching open connections: a handshake uses the certificate current at
//! that moment, an established connection keeps the one it was made with. With a client CA
//! bundle, clients must present a certificate it signed (mTLS).
//!
//! Handshakes run beside the accept loop, each with a deadline, so a client that opens a
//! socket and never speaks TLS (or speaks plaintext HTTP/2) holds up nobody.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at most; past it new connections wait for accepting.
const HANDSHAKES_IN_FLIGHT: usize = 256;
/// How long accepting pauses after an accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{field}: {path} holds no usable {what} (PEM expected)")]
    Pem { field: &'static str, path: String, what: &'static str },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// The server certificate as last loaded, with the files' modification times it came from.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// `server.tls` or `server.admin_tls`, for messages.
    section: &'static str,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert").field("cert_file", &self.cert_file).finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.display().to_string(), source })
}

fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem = read("cert_file", cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::Pem { field: "cert_file", path: cert_file.display().to_string(), what: "certificate" });
    }
    let key_pem = read("key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        field: "key_file",
        path: key_file.display().to_string(),
        what: "private key",
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| TlsError::Invalid { field: "key_file", message: format!("does not match cert_file: {e}") })?;
    Ok(Arc::new(certified))
}

impl ReloadingCert {
    fn load(section: &'static str, cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let key = load_certified_key(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            section,
            current: RwLock::new((key, modified(cert_file), modified(key_file))),
        })
    }

    /// Loads the files again if either changed. A pair that does not load (a rotation caught
    /// between its two writes, a bad file) leaves the current certificate in use; the next
    /// look tries again.
    pub fn reload_if_changed(&self) -> bool {
        let (cert_m, key_m) = (modified(&self.cert_file), modified(&self.key_file));
        {
            let current = self.current.read();
            if current.1 == cert_m && current.2 == key_m {
                return false;
            }
        }
        match load_certified_key(&self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.current.write() = (key, cert_m, key_m);
                info!(section = self.section, cert_file = %self.cert_file.display(), "TLS certificate reloaded; new connections use it");
                true
            }
            Err(error) => {
                warn!(section = self.section, %error, "TLS certificate files changed but do not load; keeping the current one");
                false
            }
        }
    }

    /// Looks at the files every `every` until the process ends.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// A port's TLS: the acceptor, and the certificate it serves (to follow its files).
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
    pub reload_every: Duration,
}

/// Builds a port's TLS from its config section (`section` names it in errors). `http1` marks
/// the admin port: HTTP/1.1 is offered too (/metrics and the probes), and a client certificate
/// is verified when presented rather than required.
pub fn server_tls(section: &'static str, config: &TlsConfig, http1: bool) -> Result<ServerTls, TlsError> {
    let cert = Arc::new(ReloadingCert::load(section, Path::new(&config.cert_file), Path::new(&config.key_file))?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid { field: "cert_file", message: e.to_string() })?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let pem = read("client_ca_file", Path::new(ca_file))?;
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
                roots.add(der).map_err(|e| TlsError::Invalid { field: "client_ca_file", message: e.to_string() })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem { field: "client_ca_file", path: ca_file.clone(), what: "CA certificate" });
            }
            // The Subscribe port requires a certificate (mTLS). The admin port verifies one
            // when presented (an operator identity) but also serves clients without one: the
            // kubelet's probes, Prometheus, and operators who use the token.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if http1 { verifier.allow_unauthenticated() } else { verifier };
            let verifier =
                verifier.build().map_err(|e| TlsError::Invalid { field: "client_ca_file", message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(cert.clone());
    server.alpn_protocols = if http1 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"h2".to_vec()] };
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        cert,
        reload_every: Duration::from_millis(config.reload_interval_ms),
    })
}

/// The TLS connections of a stream of plain ones: each handshake runs on its own (bounded in
/// number and time); failed ones are dropped with a debug line.
pub fn incoming<S, IO>(plain: S, acceptor: TlsAcceptor) -> impl Stream<Item = io::Result<TlsStream<IO>>>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    plain
        .filter_map(|conn| async move {
            match conn {
                Ok(conn) => Some(conn),
                Err(error) => {
                    // Out of file descriptors, say: pause rather than spin on the error.
                    warn!(%error, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    None
                }
            }
        })
        .map(move |conn| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => Some(Ok(tls)),
                    Ok(Err(error)) => {
                        debug!(%error, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        debug!("TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(HANDSHAKES_IN_FLIGHT)
        .filter_map(|tls| async move { tls })
}

//! Kafka over TLS for tests: librdkafka's mock cluster has no TLS listener, so a
//! TLS-terminating proxy (rustls) stands in front of each mock broker, and the brokers'
//! advertised addresses are rewritten to the proxies' in the responses that carry them
//! (Metadata, FindCoordinator), so a client that bootstraps through a proxy stays on TLS for
//! every broker. The rewrite is length-preserving: a broker's address is the host
//! `127.0.0.1` followed by its port as a 32-bit big-endian integer in every version of those
//! responses, and only the port changes.
//!
//! The certificates come from [`super::pki`]: a CA, and a broker certificate for `127.0.0.1`
//! and `localhost` signed by it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A CA and a certificate it signed, as PEM.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA, and a server certificate for 127.0.0.1 / localhost signed by it.
pub fn pki(name: &str) -> Pki {
    let ca = super::pki::TestCa::new(name);
    let leaf = ca.server();
    Pki { ca_pem: ca.pem.clone(), cert_pem: leaf.cert_pem, key_pem: leaf.key_pem }
}

/// TLS proxies in front of a mock cluster's brokers.
pub struct TlsKafka {
    /// The proxies' addresses: what a TLS client bootstraps from.
    pub bootstrap: String,
    /// The CA that signed the proxies' certificate, as a file for `ssl.ca.location`.
    pub ca_file: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one TLS proxy per broker of `mock_bootstrap` (`127.0.0.1:port,...`), with the
/// certificate of `pki`; the CA goes to a file in `dir`.
pub async fn tls_front(mock_bootstrap: &str, pki: &Pki, dir: &Path) -> TlsKafka {
    let ca_file = dir.join("kafka-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("ca file");
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes()).map(|c| c.expect("cert pem")).collect();
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    let broker_ports: Vec<u16> =
        mock_bootstrap.split(',').map(|a| a.rsplit_once(':').expect("host:port").1.parse().expect("port")).collect();
    let mut listeners = Vec::new();
    for _ in &broker_ports {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("proxy port"));
    }
    let map: Arc<Vec<(u16, u16)>> = Arc::new(
        broker_ports.iter().zip(&listeners).map(|(b, l)| (*b, l.local_addr().expect("addr").port())).collect(),
    );
    let bootstrap = map.iter().map(|(_, p)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let mut tasks = Vec::new();
    for (listener, broker) in listeners.into_iter().zip(broker_ports) {
        let (acceptor, map) = (acceptor.clone(), map.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, map) = (acceptor.clone(), map.clone());
                tokio::spawn(async move {
                    // A client that fails the handshake (a wrong CA) just goes away.
                    let Ok(tls) = acceptor.accept(socket).await else { return };
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", broker)).await else { return };
                    relay(tls, upstream, map).await;
                });
            }
        }));
    }
    TlsKafka { bootstrap, ca_file, tasks }
}

/// Requests go up as they are; responses come down frame by frame with broker ports
/// rewritten.
async fn relay(tls: tokio_rustls::server::TlsStream<TcpStream>, upstream: TcpStream, map: Arc<Vec<(u16, u16)>>) {
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut broker_read, mut broker_write) = upstream.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
        let _ = broker_write.shutdown().await;
    };
    let down = async move {
        loop {
            let mut size = [0u8; 4];
            if broker_read.read_exact(&mut size).await.is_err() {
                break;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
            if broker_read.read_exact(&mut frame).await.is_err() {
                break;
            }
            rewrite_ports(&mut frame, &map);
            if client_write.write_all(&size).await.is_err() || client_write.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Replaces, in a response, every `127.0.0.1` followed by a broker's port with the same host
/// followed by its proxy's port.
pub fn rewrite_ports(frame: &mut [u8], map: &[(u16, u16)]) {
    const HOST: &[u8] = b"127.0.0.1";
    let mut at = 0;
    while let Some(found) = frame[at..].windows(HOST.len()).position(|w| w == HOST) {
        let port_at = at + found + HOST.len();
        if port_at + 4 > frame.len() {
            break;
        }
        let port = i32::from_be_bytes(frame[port_at..port_at + 4].try_into().expect("4 bytes"));
        if let Some((_, proxy)) = map.iter().find(|(broker, _)| i32::from(*broker) == port) {
            frame[port_at..port_at + 4].copy_from_slice(&i32::from(*proxy).to_be_bytes());
        }
        at = port_at;
    }
}

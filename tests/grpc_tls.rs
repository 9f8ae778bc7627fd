//! TLS on the gateway's gRPC ports, with certificates made in the test: a plaintext client is
//! refused and one that trusts the CA streams; with mTLS a client without a certificate is
//! refused; rotating the certificate files switches new connections to the new certificate
//! while an open stream keeps flowing; the admin port serves its probes over TLS too.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fanout_client::stream::{self, ClientTls, Subscription};
use fanout_gateway::config::{Config, TlsConfig};
use fanout_gateway::gateway::{self, GatewayHandle};
use support::pki::{Leaf, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A directory with the gateway's CA (`ca.crt`) and a server certificate it signed
/// (`tls.crt`, `tls.key`).
struct Certs {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("gateway");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (cert, key) = ca.server().write(dir.path(), "tls");
    Certs { dir, ca, ca_file, cert, key }
}

fn tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsConfig {
    TlsConfig {
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        client_ca_file: client_ca.map(|p| p.display().to_string()),
        reload_interval_ms: 100,
    }
}

fn https(gw: &GatewayHandle) -> String {
    format!("https://{}", gw.addr())
}

fn trusting(ca: &Path) -> ClientTls {
    ClientTls { ca_file: Some(ca.display().to_string()), domain: Some("localhost".into()), ..ClientTls::default() }
}

/// The end-entity certificate a fresh TLS connection to `addr` is served (DER), and the
/// protocol it agreed on; `alpn` is what the client offers.
async fn served(addr: std::net::SocketAddr, ca_pem: &str, alpn: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let tls = handshake(addr, ca_pem, alpn).await;
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().expect("a certificate")[0].to_vec();
    (cert, session.alpn_protocol().map(<[u8]>::to_vec))
}

/// A TLS connection to `addr` that trusts `ca_pem`, offering `alpn`.
async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

fn der_of(leaf: &Leaf) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("pem").to_vec()
}

async fn start(bootstrap: &str, group: &str, subscribe: TlsConfig, admin: Option<TlsConfig>) -> GatewayHandle {
    let mut config: Config = config(bootstrap, group);
    config.server.tls = Some(subscribe);
    config.server.admin_tls = admin;
    start_gateway(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_and_a_client_that_trusts_the_ca_streams() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let Certs { dir, ca, ca_file, cert, key } = certs();
    let gw = start(&bootstrap, &unique_group("tls"), tls(&cert, &key, None), Some(tls(&cert, &key, None))).await;

    let plain = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "plain", 10)).await;
    assert!(plain.is_err(), "a plaintext client gets no stream");
    let other = TestCa::new("other");
    let other_file = other.write(dir.path(), "other.crt");
    let distrust =
        Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "distrust", 10), &trusting(&other_file)).await;
    assert!(distrust.is_err(), "a client that does not trust the gateway's CA gets no stream");

    let mut sub = Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "trusting", 100), &trusting(&ca_file))
        .await
        .expect("a client that trusts the CA subscribes");
    let mut sent = produce(&bootstrap, 100, 10).await;
    sent.sort();
    assert_eq!(receive_and_ack(&mut sub, 100).await, sent, "deliveries over TLS");

    // The admin port: probes over HTTPS/1.1, gRPC over h2.
    let (_, protocol) = served(gw.admin_addr(), &ca.pem, b"http/1.1").await;
    assert_eq!(protocol.as_deref(), Some(&b"http/1.1"[..]), "the admin port offers HTTP/1.1 for the probes");
    let (_, protocol) = served(gw.addr(), &ca.pem, b"h2").await;
    assert_eq!(protocol.as_deref(), Some(&b"h2"[..]));
    let admin = stream::channel(&format!("https://{}", gw.admin_addr()), Some(&trusting(&ca_file)))
        .await
        .expect("admin over TLS");
    let mut health = tonic_health::pb::health_client::HealthClient::new(admin);
    let ask = tonic_health::pb::HealthCheckRequest { service: "fanout.admin.v1.Admin".into() };
    assert_eq!(health.check(ask).await.expect("health").into_inner().status, 1, "SERVING over TLS");
    assert_eq!(https_get(gw.admin_addr(), &ca.pem, "/healthz").await, "ok\n");

    // fanoutctl over TLS; without the CA it says what to fix.
    let admin = gw.admin_addr().to_string();
    let ca_arg = ca_file.display().to_string();
    let (code, out, err) =
        fanoutctl(&["--gateway", &admin, "--tls-ca", &ca_arg, "--tls-domain", "localhost", "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CONFIG GENERATION") && out.contains("reachable"), "{out}");
    let (code, _, err) = fanoutctl(&["--gateway", &admin, "status"]).await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("--tls-ca"), "says what to fix: {err}");
    gw.shutdown().await;
}

/// `GET path` over HTTPS/1.1 to the admin port; the body.
async fn https_get(addr: std::net::SocketAddr, ca_pem: &str, path: &str) -> String {
    let mut tls = handshake(addr, ca_pem, b"http/1.1").await;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_a_client_without_a_certificate_is_refused() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let Certs { dir, ca: _, ca_file, cert, key } = certs();
    let clients = TestCa::new("subscribers");
    let clients_file = clients.write(dir.path(), "clients.crt");
    let gw = start(&bootstrap, &unique_group("mtls"), tls(&cert, &key, Some(&clients_file)), None).await;

    let anonymous =
        Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "anonymous", 10), &trusting(&ca_file)).await;
    assert!(anonymous.is_err(), "no client certificate, no stream");
    let stranger = TestCa::new("stranger").client("orders-0");
    let (stranger_cert, stranger_key) = stranger.write(dir.path(), "stranger");
    let foreign = ClientTls {
        cert_file: Some(stranger_cert.display().to_string()),
        key_file: Some(stranger_key.display().to_string()),
        ..trusting(&ca_file)
    };
    assert!(
        Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "stranger", 10), &foreign).await.is_err(),
        "a certificate from another CA is refused"
    );

    let (client_cert, client_key) = clients.client("orders-0").write(dir.path(), "client");
    let identified = ClientTls {
        cert_file: Some(client_cert.display().to_string()),
        key_file: Some(client_key.display().to_string()),
        ..trusting(&ca_file)
    };
    let mut sub = Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "orders-0", 100), &identified)
        .await
        .expect("a client with a certificate the CA signed subscribes");
    let mut sent = produce(&bootstrap, 50, 5).await;
    sent.sort();
    assert_eq!(receive_and_ack(&mut sub, 50).await, sent);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_while_an_open_stream_flows() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let Certs { dir, ca, ca_file, .. } = certs();
    let (first, second) = (ca.server(), ca.server());
    let (cert, key) = first.write(dir.path(), "tls");
    let gw = start(&bootstrap, &unique_group("rotate"), tls(&cert, &key, None), None).await;

    let mut open = Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "open", 100), &trusting(&ca_file))
        .await
        .expect("subscribes");
    produce(&bootstrap, 20, 5).await;
    receive_and_ack(&mut open, 20).await;
    assert_eq!(served(gw.addr(), &ca.pem, b"h2").await.0, der_of(&first));

    // cert-manager renews: both files replaced.
    second.write(dir.path(), "tls");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served(gw.addr(), &ca.pem, b"h2").await.0 != der_of(&second) {
        assert!(tokio::time::Instant::now() < deadline, "new connections get the renewed certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream opened before the rotation keeps its connection and keeps flowing.
    let mut after = produce(&bootstrap, 30, 5).await;
    after.sort();
    assert_eq!(receive_and_ack(&mut open, 30).await, after, "the open stream flows on");
    // And a new subscriber connects with the new certificate.
    let fresh = Subscription::connect_tls(&https(&gw), stream::hello(ROUTE, "fresh", 100), &trusting(&ca_file)).await;
    assert!(fresh.is_ok(), "a new subscriber connects after the rotation");
    drop(fresh);

    // A rotation caught half-written (a key that does not match) keeps the current one.
    std::fs::write(&key, ca.server().key_pem).expect("mismatched key");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(gw.addr(), &ca.pem, b"h2").await.0, der_of(&second), "a pair that does not load is not used");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_load_stops_the_start_naming_the_field() {
    let cluster = mock_cluster(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.crt");
    let mut config = config(&cluster.bootstrap_servers(), &unique_group("badtls"));
    config.server.tls = Some(tls(&missing, &missing, None));
    let err = gateway::start(config).await.err().expect("refused").to_string();
    assert!(err.starts_with("server.tls.cert_file: cannot read"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_on_the_allow_list_stands_for_the_admin_token() {
    init_logs();
    let cluster = mock_cluster(1);
    let Certs { dir, ca, ca_file, cert, key } = certs();
    let operators = TestCa::new("operators");
    let operators_file = operators.write(dir.path(), "operators.crt");
    let mut config = config(&cluster.bootstrap_servers(), &unique_group("admin-mtls"));
    config.routes[0].split_label = Some("track".into());
    config.routes[0].weights = [("blue".to_string(), 50), ("green".to_string(), 50)].into_iter().collect();
    config.server.admin_tls = Some(tls(&cert, &key, Some(&operators_file)));
    config.server.admin_allowed_identities = vec!["ops.fanoutctl".into()];
    let gw = start_gateway(config).await;

    let admin = gw.admin_addr().to_string();
    let ca_arg = ca_file.display().to_string();
    let as_identity = |name: &str| {
        let (c, k) = operators.client(name).write(dir.path(), name);
        (c.display().to_string(), k.display().to_string())
    };
    let (ops_cert, ops_key) = as_identity("ops.fanoutctl");
    let base = ["--gateway", &admin, "--tls-ca", &ca_arg, "--tls-domain", "localhost"];
    // No subscriber here: the change is forced past the guard (what is tested is who may make it).
    let set = ["weights", "set", ROUTE, "blue=100", "green=0", "--force"];
    let with = |cert: &str, key: &str| {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        args.extend(["--tls-cert".to_string(), cert.to_string(), "--tls-key".to_string(), key.to_string()]);
        args.extend(set.iter().map(|s| s.to_string()));
        args
    };
    let args = with(&ops_cert, &ops_key);
    let (code, out, err) = fanoutctl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "the allowed operator changes weights without a token: {err}");
    assert!(out.contains("weights set to blue=100 green=0"), "{out}");

    // Clients without a certificate still reach the port: the kubelet's probes, Prometheus.
    assert_eq!(https_get(gw.admin_addr(), &ca.pem, "/healthz").await, "ok\n");

    let (other_cert, other_key) = as_identity("orders-0.shop");
    let args = with(&other_cert, &other_key);
    let (code, _, err) = fanoutctl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_ne!(code, 0);
    assert!(err.contains("UNAUTHENTICATED") && err.contains("token"), "another identity needs the token: {err}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_subscriber_streams_over_tls() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let Certs { dir: _dir, ca: _, ca_file, cert, key } = certs();
    let gw = start(&bootstrap, &unique_group("python-tls"), tls(&cert, &key, None), None).await;
    produce(&bootstrap, 60, 6).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new(python())
        .arg(format!("{root}/tests/python/tls_subscriber.py"))
        .args(["--target", &gw.addr().to_string(), "--ca", &ca_file.display().to_string()])
        .args(["--proto", &format!("{root}/proto"), "--route", ROUTE, "--expect", "60"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} runs (.ci/run installs grpcio in target/ci-venv): {e}", python()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python subscriber failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "received=60", "{stderr}");
    let stats = gw.stats();
    eventually(Duration::from_secs(10), "its acks settled every message", || {
        fanout_gateway::stats::Stats::get(&stats.acked) >= 60
    })
    .await;
    gw.shutdown().await;
}

/// The subscriber library over mTLS, finding the replica through a DNS name: it dials the
/// resolved address and verifies the certificate, which names only the Service, against the
/// name (no `domain` given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_library_streams_over_mtls_to_replicas_found_by_name() {
    use fanout_client::{Delivery, Nack, Replicas, Resolver, Subscriber};
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    const SERVICE: &str = "fanout-gateway-headless.test.svc";
    let Certs { dir, ca, ca_file, .. } = certs();
    let (cert, key) = ca.server_named(SERVICE).write(dir.path(), "named");
    let clients = TestCa::new("subscribers");
    let clients_file = clients.write(dir.path(), "clients.crt");
    let gw = start(&bootstrap, &unique_group("library-mtls"), tls(&cert, &key, Some(&clients_file)), None).await;
    let (client_cert, client_key) = clients.client("orders-0").write(dir.path(), "client");
    let addr = gw.addr();
    let resolver = Resolver::new(move |_| async move { Ok(vec![addr]) });
    let subscriber = Subscriber::builder(ROUTE)
        .replicas(Replicas::Dns { name: format!("{SERVICE}:{}", addr.port()), every: Duration::from_secs(1), resolver })
        .tls(ClientTls {
            ca_file: Some(ca_file.display().to_string()),
            cert_file: Some(client_cert.display().to_string()),
            key_file: Some(client_key.display().to_string()),
            domain: None,
        })
        .name("orders-0")
        .build()
        .expect("valid settings");
    let stats = subscriber.stats();
    let mut sent = produce(&bootstrap, 50, 5).await;
    sent.sort();
    let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler = {
        let got = got.clone();
        move |d: Delivery| {
            got.lock().push(stream::id_of(&d));
            async { Ok::<(), Nack>(()) }
        }
    };
    let done = {
        let got = got.clone();
        async move {
            while got.lock().len() < 50 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), subscriber.run(handler, done))
        .await
        .expect("in time")
        .expect("streams over mTLS and drains");
    let mut got = got.lock().clone();
    got.sort();
    assert_eq!(got, sent);
    assert_eq!(stats.snapshot().acked, 50);
    gw.shutdown().await;
}

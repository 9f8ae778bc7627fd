//! The gateway's Kafka client as managed Kafka needs it: topics written with every codec
//! (zstd, lz4, snappy, gzip) read through the gateway, and SASL secrets that never reach the
//! log, whatever librdkafka says about the broker it cannot reach.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;
use tokio::io::AsyncReadExt;

/// A gateway process whose stderr is collected as it comes.
struct Logged {
    child: tokio::process::Child,
    log: std::sync::Arc<parking_lot::Mutex<String>>,
}

impl Logged {
    fn spawn(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
            .args(["serve", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Self { child, log }
    }

    /// Waits until the log holds a line for which `check` is true; the whole log.
    async fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let log = self.log.lock().clone();
            if log.lines().any(&check) {
                return log;
            }
            assert!(tokio::time::Instant::now() < deadline, "no line {what} within {limit:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

const CODECS: [&str; 4] = ["zstd", "lz4", "snappy", "gzip"];
const PER_CODEC: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_written_with_every_codec_read_through_the_gateway() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let mut sent = BTreeSet::new();
    for codec in CODECS {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.type", codec)
            // Batches, so the codec has something to compress.
            .set("linger.ms", "20")
            .create()
            .unwrap_or_else(|e| panic!("a producer with compression.type={codec}: {e}"));
        let sends: Vec<_> = (0..PER_CODEC)
            .map(|i| {
                let value = format!("{codec} message {i} {}", "compressible ".repeat(8));
                let key = format!("{codec}-{}", i % 20);
                sent.insert(value.clone());
                let producer = producer.clone();
                async move {
                    producer
                        .send(FutureRecord::to(TOPIC).key(&key).payload(&value), Duration::from_secs(10))
                        .await
                        .map_err(|(e, _)| e)
                }
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            result.unwrap_or_else(|e| panic!("produced with {codec}: {e}"));
        }
    }

    let gw = start_gateway(config(&bootstrap, &unique_group("codecs"))).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "codecs", 500)).await.expect("subscribes");
    let mut got = BTreeSet::new();
    while got.len() < sent.len() {
        let batch = next_batch(&mut sub).await;
        let ids: Vec<String> = batch.iter().map(stream::id_of).collect();
        for d in &batch {
            got.insert(String::from_utf8(d.value.clone().unwrap_or_default().to_vec()).expect("utf-8"));
        }
        sub.ack(ids).await.expect("acks");
    }
    assert_eq!(got, sent, "every message of every codec arrived as it was written");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_file = "pw-from-a-mounted-secret-7f3a";
    let from_env = "keystore-password-from-env-91c2";
    let inline = "inline-key-password-55e1";
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{from_file}\n")).expect("secret file");
    // A broker that is not there: librdkafka logs every failed connection, with security
    // debugging on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[kafka]
bootstrap_servers = "{closed}"
group_id = "secrets-test"
[kafka.properties]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanisms" = "SCRAM-SHA-256"
"sasl.username" = "gateway"
"ssl.key.password" = "{inline}"
"debug" = "security,broker,conf,generic"
[kafka.secrets]
"sasl.password" = "file:{}"
"ssl.keystore.password" = "env:TEST_KEYSTORE_PASSWORD"

[[routes]]
name = "orders"
topics = ["orders"]
"#,
        password_file.display()
    );
    let path = dir.path().join("fanout.toml");
    std::fs::write(&path, config).expect("config");
    let mut gw = Logged::spawn(&path, &[("RUST_LOG", "debug"), ("TEST_KEYSTORE_PASSWORD", from_env)]);
    let closed_addr = closed.to_string();
    gw.wait_for("about the broker it cannot reach", Duration::from_secs(40), |l| l.contains(&closed_addr)).await;
    // Some more seconds of librdkafka retrying, with security debugging on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(gw.child.try_wait().expect("status").is_none(), "a broker it cannot reach is retried, not fatal");
    gw.child.start_kill().expect("stopped");
    let _ = gw.child.wait().await;
    let log = gw.log.lock().clone();
    assert!(log.contains("sasl.username") || log.contains("SCRAM"), "librdkafka's security debugging is in the log");
    for secret in [from_file, from_env, inline] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }

    // A secret that cannot be read stops the start, naming its field.
    std::fs::remove_file(&password_file).expect("removed");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("TEST_KEYSTORE_PASSWORD", from_env)
        .output()
        .await
        .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains(r#"kafka.secrets."sasl.password""#) && said.contains("cannot read"), "{said}");
}

/// The managed-Kafka examples in `examples/kafka/` load, and librdkafka accepts their security
/// settings (SASL_SSL with PLAIN, SCRAM and OIDC only load when it was built with OpenSSL and
/// libcurl): a client is created from each.
#[test]
fn the_managed_kafka_examples_load_and_librdkafka_accepts_them() {
    use fanout_gateway::config::Config;
    use rdkafka::consumer::BaseConsumer;
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["api-secret", "password"] {
        std::fs::write(dir.path().join(name), "example-secret\n").expect("secret");
    }
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kafka");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/kafka") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("example");
        let text = text.replace("file:/etc/fanout/kafka/", &format!("file:{}/", dir.path().display()));
        let mut config = Config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config
            .resolve_secrets(|name| (name == "KAFKA_OIDC_CLIENT_SECRET").then(|| "example-oidc-secret".to_string()))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut client = fanout_gateway::kafka::consumer::client_config(&config, &config.routes[0]);
        // Certificate files of the mTLS example do not exist here; the rest of it is checked.
        for key in ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location"] {
            client.remove(key);
        }
        let created: Result<BaseConsumer, _> = client.create();
        if let Err(e) = created {
            panic!("{}: librdkafka refused the settings: {e}", path.display());
        }
        seen += 1;
    }
    assert_eq!(seen, 4);
}

fn tls_config(bootstrap: &str, group: &str, ca_file: &std::path::Path) -> fanout_gateway::config::Config {
    let mut c = config(bootstrap, group);
    c.kafka.properties.insert("security.protocol".into(), "SSL".into());
    c.kafka.properties.insert("ssl.ca.location".into(), ca_file.display().to_string());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_consumes_and_commits_through_a_tls_listener() {
    init_logs();
    let cluster = mock_cluster(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls =
        support::tls_kafka::tls_front(&cluster.bootstrap_servers(), &support::tls_kafka::pki("kafka"), dir.path())
            .await;
    let sent = produce(&cluster.bootstrap_servers(), 300, 30).await;
    let group = unique_group("tls");
    let gw = start_gateway(tls_config(&tls.bootstrap, &group, &tls.ca_file)).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "tls", 500)).await.expect("subscribes");
    let mut got = receive_and_ack(&mut sub, sent.len()).await;
    got.dedup();
    let mut sent = sent;
    sent.sort();
    assert_eq!(got, sent, "every message, read over TLS");
    // Commits went through the proxies too.
    eventually(Duration::from_secs(20), "committed over TLS", || {
        fully_committed(&cluster.bootstrap_servers(), &group, 2)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_one_clear_line_naming_ssl_ca_location_retried_without_a_panic() {
    let cluster = mock_cluster(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls =
        support::tls_kafka::tls_front(&cluster.bootstrap_servers(), &support::tls_kafka::pki("kafka"), dir.path())
            .await;
    // A CA that did not sign the brokers' certificate.
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, support::tls_kafka::pki("other").ca_pem).expect("ca");
    let path = dir.path().join("fanout.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "{}"
group_id = "wrong-ca"
[kafka.properties]
"security.protocol" = "SSL"
"ssl.ca.location" = "{}"
[[routes]]
name = "orders"
topics = ["orders"]
"#,
            tls.bootstrap,
            wrong_ca.display()
        ),
    )
    .expect("config");
    let mut gw = Logged::spawn(&path, &[("RUST_LOG", "info")]);
    gw.wait_for("naming ssl.ca.location", Duration::from_secs(40), |l| l.contains("ssl.ca.location")).await;
    // Retried: still running some seconds later, and it said so again at most every few seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(gw.child.try_wait().expect("status").is_none(), "still running: a TLS failure is retried, not fatal");
    gw.child.start_kill().expect("stopped");
    let _ = gw.child.wait().await;
    let log = gw.log.lock().clone();
    let naming: Vec<&str> = log.lines().filter(|l| l.contains("ssl.ca.location")).collect();
    assert!(!naming.is_empty(), "a line names ssl.ca.location:\n{log}");
    assert!(
        naming.iter().all(|l| l.contains("TLS with kafka") && l.contains("certificate verify failed")),
        "each says what failed and what to check:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // Retried all along, but said once every few seconds, not once per broker and attempt.
    assert!(naming.len() <= 3, "{} lines name ssl.ca.location:\n{log}", naming.len());
}

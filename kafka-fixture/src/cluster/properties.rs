//! A node's server.properties: listeners, KRaft quorum, replication as the cluster's size
//! allows, and the settings that keep a test or a benchmark quick. A pure function of its
//! inputs.

use std::path::Path;

use super::TlsListeners;

/// A node's loopback ports.
pub(super) struct Ports {
    pub plaintext: u16,
    pub controller: u16,
    pub sasl_ssl: u16,
    pub ssl: u16,
}

/// Node `id` of `count`, broker and controller, with the cluster's `voters`; replication as
/// the cluster's size allows (1, or 3 with `min.insync.replicas` 2), small internal topics
/// (the share coordinator's state topic among them: its default replication factor of 3 would
/// keep share groups from starting on one node), quick group joins (KIP-848 groups heartbeat
/// every 500 ms, so an assignment moves within a second) and a quick log cleaner (compacted
/// topics in tests). A plaintext listener, and with `tls` a SASL_SSL one (SCRAM over TLS) and
/// an SSL one requiring a client certificate from the CA.
///
/// Share groups (KIP-932) need nothing here: since Kafka 4.2 they are on when the cluster's
/// `share.version` feature is at least 1, and the storage tool of Kafka 4.4 formats a new
/// cluster at its latest production metadata version (4.4-IV2) with `share.version=2`.
/// `group.share.enable` (the early-access switch) no longer exists, and the share RPCs are
/// stable since 4.1 (no `unstable.api.versions.enable`).
pub(super) fn server_properties(
    id: usize,
    data: &Path,
    ports: &Ports,
    voters: &str,
    count: usize,
    tls: Option<&TlsListeners>,
) -> String {
    let Ports { plaintext, controller, sasl_ssl, ssl } = ports;
    let replicas = count.min(3);
    let min_isr = if replicas >= 3 { 2 } else { 1 };
    let (listeners, advertised, protocols, sasl) = match tls {
        Some(TlsListeners { keystore, ca }) => {
            let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
            (
                format!(
                    "PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller},\
                     SASL_SSL://127.0.0.1:{sasl_ssl},SSL://127.0.0.1:{ssl}"
                ),
                format!("PLAINTEXT://127.0.0.1:{plaintext},SASL_SSL://127.0.0.1:{sasl_ssl},SSL://127.0.0.1:{ssl}"),
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
                format!(
                    "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location={keystore}
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required
",
                    keystore = keystore.display(),
                    ca = ca.display(),
                ),
            )
        }
        None => (
            format!("PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller}"),
            format!("PLAINTEXT://127.0.0.1:{plaintext}"),
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            String::new(),
        ),
    };
    format!(
        "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners={listeners}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
{sasl}log.dirs={data}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
log.cleaner.backoff.ms=200
log.retention.check.interval.ms=1000
",
        data = data.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports { plaintext: 10_001, controller: 10_002, sasl_ssl: 10_003, ssl: 10_004 }
    }

    #[test]
    fn a_plaintext_node_listens_on_plaintext_and_controller_only() {
        let text = server_properties(1, Path::new("/d"), &ports(), "1@127.0.0.1:10002", 1, None);
        assert!(text.contains("listeners=PLAINTEXT://127.0.0.1:10001,CONTROLLER://127.0.0.1:10002\n"), "{text}");
        assert!(!text.contains("SASL_SSL"), "{text}");
        assert!(text.contains("share.coordinator.state.topic.replication.factor=1\n"), "{text}");
    }

    #[test]
    fn three_nodes_replicate_three_times_with_two_in_sync() {
        let text = server_properties(2, Path::new("/d"), &ports(), "v", 3, None);
        assert!(text.contains("default.replication.factor=3\nmin.insync.replicas=2\n"), "{text}");
        assert!(text.contains("node.id=2\n"), "{text}");
    }

    #[test]
    fn tls_adds_sasl_ssl_and_mutual_tls_listeners() {
        let tls = TlsListeners { keystore: "/k.pem".into(), ca: "/ca.pem".into() };
        let text = server_properties(1, Path::new("/d"), &ports(), "v", 1, Some(&tls));
        assert!(text.contains("SASL_SSL://127.0.0.1:10003,SSL://127.0.0.1:10004"), "{text}");
        assert!(text.contains("listener.name.ssl.ssl.client.auth=required"), "{text}");
    }
}

//! A routed topic the gateway cannot read, on a real Apache Kafka broker: one that does not
//! exist yet is named in the log, `/readyz` and `fanoutctl status` while the other route flows,
//! and read without a restart once created. One the gateway may not read, on a broker that
//! enforces ACLs (one KRaft node with the StandardAuthorizer, see `support::real_kafka`): the gateway reads
//! through the SASL_SSL listener as an ordinary principal, allowed one topic and refused
//! another. The route over the refused topic is named, with the principal and what to grant
//! it, in the log, in `/readyz` and in `fanoutctl status`; the replica stays ready and its other
//! route delivers every record and commits to the end. Skipped with a note when the broker's
//! jars are missing (`.ci/setup` fetches them); in CI their absence fails.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fanout_client::stream::{self, Subscription};
use fanout_gateway::config::{Config, RouteConfig};
use support::logs::Logs;
use support::real_kafka::{RealKafka, Resource, SCRAM_PASSWORD, SCRAM_USER};
use support::*;

/// The route over the topic the gateway's principal may not read.
const REFUSED_ROUTE: &str = "payroll";
/// The route whose topic the principal may read, but not its consumer group.
const NO_GROUP_ROUTE: &str = "audit";

/// Three routes through the SASL_SSL listener: `ROUTE` over `allowed` in group `group`,
/// [`REFUSED_ROUTE`] over `refused` in `<group>.payroll` and [`NO_GROUP_ROUTE`] over
/// `ungrouped` in `<group>.audit`; quick commits.
fn three_routes(kafka: &RealKafka, group: &str, topics: [&str; 3], password_file: &std::path::Path) -> Config {
    let [allowed, refused, ungrouped] = topics;
    let mut c = Config::single_route(kafka.sasl_ssl(), group, ROUTE, &[allowed]);
    c.kafka.commit_interval_ms = 100;
    c.server.shutdown_grace_ms = 5_000;
    c.routes.push(RouteConfig::new(REFUSED_ROUTE, &[refused]));
    c.routes.push(RouteConfig::new(NO_GROUP_ROUTE, &[ungrouped]));
    kafka.over_sasl_ssl(c, password_file)
}

/// Receives and acks until every id in `expected` has arrived; what arrived, each once per
/// arrival.
async fn receive_all(sub: &mut Subscription, expected: &HashSet<String>) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let ids: Vec<String> = next_batch(sub).await.iter().map(stream::id_of).collect();
        sub.ack(ids.clone()).await.expect("acks sent");
        seen.extend(ids.iter().cloned());
        got.extend(ids);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_or_group_the_gateway_may_not_use_is_named_with_what_to_grant_and_the_other_route_flows() {
    const MESSAGES: usize = 2_000;
    const PARTITIONS: i32 = 2;
    let logs = Logs::capture();
    if !support::real_kafka::available() {
        return;
    }
    // Built first (`cargo test --workspace --no-run`, a no-op when the suite is built, minutes
    // behind another build's lock otherwise): not part of the scenario's time.
    fanoutctl_bin();
    let Some(kafka) = RealKafka::with_acls() else { return };
    let started = Instant::now();
    let (allowed, refused, ungrouped) =
        (unique_group("acl-allowed"), unique_group("acl-refused"), unique_group("acl-ungrouped"));
    kafka.create_topic(&allowed, PARTITIONS, &[]).await;
    kafka.create_topic(&refused, 1, &[]).await;
    kafka.create_topic(&ungrouped, 1, &[]).await;
    let group = unique_group("real-acl");
    let (refused_group, no_group) = (format!("{group}.{REFUSED_ROUTE}"), format!("{group}.{NO_GROUP_ROUTE}"));
    // What a cluster's operator grants a consumer: its topics, and its groups (the routes'
    // and the shared one the upgrade check reads, which is `group`). Nothing on `refused`;
    // nothing on the audit route's group.
    let principal = format!("User:{SCRAM_USER}");
    kafka.allow(
        &principal,
        &[
            (Resource::Topic(&allowed), &["Describe", "Read"]),
            (Resource::Topic(&ungrouped), &["Describe", "Read"]),
            (Resource::Group(&group), &["Read"]),
            (Resource::Group(&refused_group), &["Read"]),
        ],
    );
    // Both written through the plaintext listener (a super user's).
    let produced = produce_to(kafka.bootstrap_servers(), &allowed, MESSAGES, 100).await;
    produce_to(kafka.bootstrap_servers(), &refused, 100, 10).await;
    let expected: HashSet<String> = produced.into_iter().collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, format!("{SCRAM_PASSWORD}\n")).expect("password file");
    let said = format!(
        "route {REFUSED_ROUTE} cannot read topic {refused}: the gateway may not read it (topic authorization \
         failed for {principal}): grant {principal} Describe and Read on topic {refused}, and Read on group \
         {refused_group}"
    );
    let said_of_group = format!(
        "route {NO_GROUP_ROUTE} cannot read topic {ungrouped}: the gateway may not use its consumer group {no_group} \
         (group authorization failed for {principal}): grant {principal} Read on group {no_group}"
    );

    let run = async {
        let gw = start_gateway(three_routes(&kafka, &group, [&allowed, &refused, &ungrouped], &password)).await;
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, &expected).await;
        let behind = poll_until(
            Duration::from_secs(30),
            || async { kafka.uncommitted(&group, &allowed, PARTITIONS) },
            Vec::is_empty,
        )
        .await;
        assert!(behind.is_empty(), "the allowed route commits to the end: (partition, committed, end) {behind:?}");

        // /readyz: ready (the other route serves, as with a missing topic), and says why the
        // refused route reads nothing and what to grant.
        let admin = gw.admin_addr();
        let (code, readyz) = poll_until(
            Duration::from_secs(30),
            || http_get(admin, "/readyz"),
            |(_, body)| body.contains(&said) && body.contains(&said_of_group),
        )
        .await;
        // The log: once each, at WARN, the same words.
        let warned = logs.lines_with("WARN", &[&said]);
        let warned_of_group = logs.lines_with("WARN", &[&format!("route {NO_GROUP_ROUTE}: the gateway may not use")]);
        let (ctl_code, status, ctl_err) = fanoutctl(&["--gateway", &admin.to_string(), "status"]).await;
        figure(format!(
            "ACLs on Kafka: {} of {MESSAGES} delivered on the allowed route in {:.1} s; /readyz {code} {readyz:?}; \
             log {warned:?} {warned_of_group:?}; fanoutctl status:\n{status}{ctl_err}",
            got.len(),
            started.elapsed().as_secs_f64()
        ));
        assert!(readyz.contains(&said), "/readyz names the topic, the principal and what to grant: {readyz}");
        assert_eq!(code, 200, "the replica stays ready for its other route: {readyz}");
        assert_eq!(warned.len(), 1, "said once at WARN: {warned:?}");
        assert!(readyz.contains(&said_of_group), "/readyz names the group and what to grant: {readyz}");
        assert_eq!(warned_of_group.len(), 1, "the group said once at WARN: {warned_of_group:?}");
        assert!(status.contains(&said_of_group), "fanoutctl status names the group: {status}");
        assert_eq!(ctl_code, 0, "fanoutctl status answers: {ctl_err}");
        assert!(status.contains(&said), "fanoutctl status names it under the routes table: {status}");

        // Nothing of the refused topic reached anyone, nor was committed for it.
        let mut refused_sub =
            Subscription::connect(&gw.endpoint(), stream::hello(REFUSED_ROUTE, "b", 100)).await.expect("subscribes");
        let leaked = tokio::time::timeout(Duration::from_secs(1), refused_sub.next()).await;
        assert!(leaked.is_err(), "the refused topic delivered nothing: {leaked:?}");
        assert!(kafka.committed(&refused_group, &refused, 1).is_empty(), "nothing committed for the refused topic");
        drop((sub, refused_sub));
        gw.shutdown().await;
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(90), run).await.expect("test finished in time");
    let lost = expected.iter().filter(|id| !got.contains(*id)).count();
    assert_eq!(lost, 0, "every record of the allowed topic was delivered");
}

/// The routed topic nobody has created yet: the route says so where an operator looks, the
/// replica stays ready and its other route delivers and commits; created, the topic is read
/// within the gateway's metadata refresh (10 s), without a restart, and the note goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_topic_that_does_not_exist_yet_is_named_and_read_once_created() {
    const MESSAGES: usize = 1_000;
    const AUDIT: &str = "audit";
    let logs = Logs::capture();
    if !support::real_kafka::available() {
        return;
    }
    fanoutctl_bin();
    let Some(kafka) = RealKafka::shared() else { return };
    let (existing, missing) = (unique_group("existing"), unique_group("not-yet"));
    kafka.create_topic(&existing, 2, &[]).await;
    let group = unique_group("real-missing");
    let mut config = Config::single_route(kafka.bootstrap_servers(), &group, ROUTE, &[&existing]);
    config.kafka.commit_interval_ms = 100;
    config.server.shutdown_grace_ms = 5_000;
    config.routes.push(RouteConfig::new(AUDIT, &[&missing]));
    let expected: HashSet<String> =
        produce_to(kafka.bootstrap_servers(), &existing, MESSAGES, 100).await.into_iter().collect();
    let said = format!("route {AUDIT} cannot read topic {missing}: it does not exist");

    let run = async {
        let gw = start_gateway(config).await;
        let admin = gw.admin_addr();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 500)).await.expect("subscribes");
        let got = receive_all(&mut sub, &expected).await;
        let behind =
            poll_until(Duration::from_secs(30), || async { kafka.uncommitted(&group, &existing, 2) }, Vec::is_empty)
                .await;
        assert!(behind.is_empty(), "the other route commits to the end: (partition, committed, end) {behind:?}");
        let (code, readyz) =
            poll_until(Duration::from_secs(30), || http_get(admin, "/readyz"), |(_, body)| body.contains(&said)).await;
        assert!(readyz.contains(&said), "/readyz names the route, the topic and why: {readyz}");
        assert_eq!(code, 200, "the replica stays ready for its other route: {readyz}");
        let warned = logs.lines_with("WARN", &[&said]);
        assert_eq!(warned.len(), 1, "said once at WARN: {warned:?}");
        let (ctl_code, status, ctl_err) = fanoutctl(&["--gateway", &admin.to_string(), "status"]).await;
        assert_eq!(ctl_code, 0, "fanoutctl status answers: {ctl_err}");
        assert!(status.contains(&said), "fanoutctl status names it: {status}");

        // Created: read without a restart, committed to the end, and no longer said.
        kafka.create_topic(&missing, 2, &[]).await;
        let created_at = Instant::now();
        let audit_ids: HashSet<String> =
            produce_to(kafka.bootstrap_servers(), &missing, 100, 10).await.into_iter().collect();
        let mut audit =
            Subscription::connect(&gw.endpoint(), stream::hello(AUDIT, "b", 100)).await.expect("subscribes");
        let audit_got = tokio::time::timeout(Duration::from_secs(40), receive_all(&mut audit, &audit_ids))
            .await
            .expect("the created topic's records arrived within 40 s");
        let read_after = created_at.elapsed();
        let audit_group = format!("{group}.{AUDIT}");
        let behind = poll_until(
            Duration::from_secs(30),
            || async { kafka.uncommitted(&audit_group, &missing, 2) },
            Vec::is_empty,
        )
        .await;
        assert!(behind.is_empty(), "the created topic is committed to its end: {behind:?}");
        let (_, cleared) =
            poll_until(Duration::from_secs(30), || http_get(admin, "/readyz"), |(_, body)| !body.contains(&said)).await;
        figure(format!(
            "missing topic on Kafka: the other route delivered {} of {MESSAGES}; /readyz {code} {readyz:?}; log {warned:?}; \
             once created, its {} records arrived {:.1} s later (duplicates {}); /readyz then {cleared:?}",
            got.len(),
            audit_got.len(),
            read_after.as_secs_f64(),
            audit_got.len() - audit_got.iter().collect::<HashSet<_>>().len(),
        ));
        assert!(!cleared.contains(&said), "the note goes once the topic is read: {cleared}");
        drop((sub, audit));
        gw.shutdown().await;
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(150), run).await.expect("test finished in time");
    assert_eq!(expected.iter().filter(|id| !got.contains(*id)).count(), 0, "lost nothing of the other route");
}

/// A dead-letter topic the gateway's principal may not write (on a broker that enforces ACLs):
/// the letters wait, their offsets uncommitted and nothing lost; the log (once) and `/readyz`
/// name the topic, the principal and what to grant, and the replica stays ready and alive.
/// Granted, the letters land, each once, and the route commits to the end. The principal may
/// write no topic at all here, so Kafka refuses the idempotent producer its id, which
/// librdkafka makes fatal for that producer: before the producer was renewed, every letter
/// failed with "Fatal error" forever, the grant changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn letters_for_a_dead_letter_topic_the_gateway_may_not_write_wait_until_it_is_granted() {
    use fanout_gateway::stats::Stats;
    const LETTERS: usize = 30;
    let logs = Logs::capture();
    if !support::real_kafka::available() {
        return;
    }
    let Some(kafka) = RealKafka::with_acls() else { return };
    let (topic, dlq) = (unique_group("acl-letters"), unique_group("acl-letters-dlq"));
    kafka.create_topic(&topic, 1, &[]).await;
    kafka.create_topic(&dlq, 1, &[]).await;
    let group = unique_group("real-acl-letters");
    let principal = format!("User:{SCRAM_USER}");
    kafka.allow(&principal, &[(Resource::Topic(&topic), &["Describe", "Read"]), (Resource::Group(&group), &["Read"])]);
    produce_to(kafka.bootstrap_servers(), &topic, LETTERS, 10).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, format!("{SCRAM_PASSWORD}\n")).expect("password file");
    let mut config = Config::single_route(kafka.sasl_ssl(), &group, ROUTE, &[&topic]);
    config.kafka.commit_interval_ms = 100;
    config.server.shutdown_grace_ms = 5_000;
    config.routes[0].dead_letter_topic = Some(dlq.clone());
    config.routes[0].retry.max_attempts = 1;
    let config = kafka.over_sasl_ssl(config, &password);
    let said = format!("cannot write letters to topic {dlq}");
    let grant = format!("grant {principal} Write and Describe on topic {dlq}");

    let run = async {
        let gw = start_gateway(config).await;
        let stats = gw.stats();
        let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "a", 100)).await.expect("subscribes");
        let mut nacked = 0;
        while nacked < LETTERS {
            for d in next_batch(&mut sub).await {
                sub.nack(stream::id_of(&d), "the service refuses it").await.expect("nack sent");
                nacked += 1;
            }
        }
        let admin = gw.admin_addr();
        let (code, readyz) = poll_until(
            Duration::from_secs(60),
            || http_get(admin, "/readyz"),
            |(_, body)| body.contains(&said) && body.contains(&grant),
        )
        .await;
        assert!(readyz.contains(&said) && readyz.contains(&grant), "/readyz names the topic and the grant: {readyz}");
        assert_eq!(code, 200, "the replica stays ready: {readyz}");
        assert!(!kafka.uncommitted(&group, &topic, 1).is_empty(), "waiting letters hold their offsets back");
        let (healthz, _) = http_get(admin, "/healthz").await;
        assert_eq!(healthz, 200, "nothing fatal: the letters wait for the grant");
        let failures = Stats::get(&stats.dead_letter_failures);

        kafka.allow(&principal, &[(Resource::Topic(&dlq), &["Describe", "Write"])]);
        let granted_at = Instant::now();
        let behind =
            poll_until(Duration::from_secs(60), || async { kafka.uncommitted(&group, &topic, 1) }, Vec::is_empty).await;
        let landed_after = granted_at.elapsed();
        assert!(behind.is_empty(), "once granted, the letters land and the route commits to the end: {behind:?}");
        // Written by an idempotent producer, no transactions: one offset per letter.
        let letters = kafka.end_offsets(&dlq, 1)[&0] as usize;
        let warned = logs.lines_with("WARN", &[&format!("cannot write dead letters to topic {dlq}: "), &grant]);
        figure(format!(
            "dead-letter topic refused by ACLs on Kafka: {failures} refused produce attempts; /readyz {code} {readyz:?}; \
             log {warned:?}; granted, {letters} letters landed and commits reached the end {:.1} s later",
            landed_after.as_secs_f64()
        ));
        assert_eq!(letters, LETTERS, "every letter landed, once");
        assert_eq!(warned.len(), 1, "said once at WARN: {warned:?}");
        drop(sub);
        gw.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(150), run).await.expect("test finished in time");
}

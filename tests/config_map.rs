//! Kubernetes mode with the config in a ConfigMap, read, patched and watched through
//! `kube::Client` against a fake apiserver (`support/configmap.rs`) shared by two replicas:
//! SetWeights on one replica patches the ConfigMap (again after a 409 Conflict) and both
//! replicas apply it within seconds; an edit made with kubectl reaches both; a broken edit is
//! refused by both and an invalid SetWeights never reaches the ConfigMap.

#[path = "support/configmap.rs"]
mod configmap_support;
#[path = "support/kube.rs"]
mod kube_support;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use configmap_support::FakeConfigMapApi;
use fanout_client::stream::{self, ClientError, Subscription};
use fanout_gateway::admin::ConfigSource;
use fanout_gateway::config::Config;
use fanout_gateway::gateway::{self, GatewayHandle};
use fanout_gateway::proto::admin::admin_client::AdminClient;
use fanout_gateway::proto::admin::{SetWeightsRequest, StatusRequest};
use fanout_gateway::proto::Hello;
use kube_support::{running_orders, NAMESPACE};
use support::*;
use tonic::transport::Channel;
use tonic::Code;

const CONFIG_MAP: &str = "fanout-gateway";
const KEY: &str = "fanout.toml";
const TOKEN: &str = "configmap-test-token";

fn config_text(bootstrap: &str, group: &str, token_file: &str, weights: &str) -> String {
    format!(
        r#"# the gateway's config, as k8s/configmap.yaml holds it
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{token_file}"
shutdown_grace_ms = 2000

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
commit_interval_ms = 100
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[discovery]
mode = "kube"
namespace = "{NAMESPACE}"
config_map = "{CONFIG_MAP}"

[[routes]]
name = "{ROUTE}"
topics = ["{TOPIC}"]
selector = "app=orders"
split_label = "track"
{weights}
"#
    )
}

struct Replica {
    gw: GatewayHandle,
    admin: AdminClient<Channel>,
    follow: tokio::task::JoinHandle<()>,
}

async fn replica(api: &FakeConfigMapApi) -> Replica {
    // What the kubelet mounts at start: the ConfigMap's text then.
    let config = Config::parse(&api.text()).expect("parses");
    config.validate().expect("valid");
    let client = api.client();
    let source = ConfigSource::for_file(&config, PathBuf::from("/etc/fanout/fanout.toml"), Some(&client));
    assert_eq!(source.to_string(), format!("configmap:{NAMESPACE}/{CONFIG_MAP}"));
    let gw = gateway::start_from(config, Some(client), source).await.expect("starts");
    let follow = tokio::spawn(gw.control().follow(Duration::from_secs(1)));
    let channel = Channel::from_shared(gw.admin_endpoint()).expect("endpoint").connect().await.expect("connects");
    Replica { gw, admin: AdminClient::new(channel), follow }
}

/// Subscribes as pod `pod` once the replica's pod watch has listed it.
async fn subscribe(gw: &GatewayHandle, pod: &str) -> Subscription {
    let hello = Hello {
        route: ROUTE.into(),
        pod_name: pod.into(),
        namespace: NAMESPACE.into(),
        max_in_flight: 500,
        ..Hello::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Subscription::connect(&gw.endpoint(), hello.clone()).await {
            Ok(s) => return s,
            Err(ClientError::Refused(status)) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{pod} cannot subscribe: {error}"),
        }
    }
}

/// Receives and acks `count` deliveries over the streams `(cohort, stream)`; how many went to
/// blue and to green.
async fn take(streams: &mut [(&str, Subscription)], count: usize) -> (usize, usize) {
    let (mut blue, mut green) = (0, 0);
    while blue + green < count {
        let (batch, i, _) = futures::future::select_all(streams.iter_mut().map(|(_, s)| Box::pin(s.next()))).await;
        let ids: Vec<String> = batch.expect("stream").expect("open").iter().map(stream::id_of).collect();
        if streams[i].0 == "blue" {
            blue += ids.len();
        } else {
            green += ids.len();
        }
        streams[i].1.ack(ids).await.expect("ack");
    }
    (blue, green)
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    request
}

/// Waits until every replica runs `generation`; returns their (weights, refused) as Status shows.
async fn all_at(replicas: &mut [Replica], generation: &str) -> Vec<(Vec<(String, u32)>, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = Vec::new();
        for r in replicas.iter_mut() {
            let status = r.admin.status(StatusRequest::default()).await.expect("status").into_inner();
            let replica = status.replica.expect("replica");
            let weights = status.routes[0].cohorts.iter().map(|c| (c.name.clone(), c.weight)).collect();
            seen.push((replica.config_generation, weights, replica.config_refused));
        }
        if seen.iter().all(|(g, _, _)| g == generation) {
            return seen.into_iter().map(|(_, w, r)| (w, r)).collect();
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas at {seen:?}, not all at {generation}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn weights(blue: u32, green: u32) -> Vec<(String, u32)> {
    vec![("blue".into(), blue), ("green".into(), green)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_weights_patches_the_config_map_and_both_replicas_apply_it() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("configmap");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let text =
        config_text(&bootstrap, &group, &token_file.display().to_string(), "weights = { blue = 100, green = 0 }");
    let pods = vec![running_orders("blue-0", "blue"), running_orders("green-0", "green")];
    let api = FakeConfigMapApi::start(CONFIG_MAP, KEY, &text, pods);
    let run = async {
        let mut replicas = vec![replica(&api).await, replica(&api).await];
        let mut streams = Vec::new();
        for r in &replicas {
            streams.push(("blue", subscribe(&r.gw, "blue-0").await));
            streams.push(("green", subscribe(&r.gw, "green-0").await));
        }
        produce(&bootstrap, 200, 50).await;
        assert_eq!(take(&mut streams, 200).await, (200, 0), "all to blue first");

        // An invalid change never reaches the ConfigMap.
        let zero = SetWeightsRequest {
            route: ROUTE.into(),
            weights: [("blue".into(), 0), ("green".into(), 0)].into(),
            ..Default::default()
        };
        let refused = replicas[0].admin.set_weights(with_token(zero)).await.expect_err("all zero");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("`routes[0].weights`"), "{}", refused.message());
        assert_eq!(api.text(), text);
        assert_eq!(api.patches(), (0, 0));

        // The cutover, racing another writer once: the patch is refused with 409, made again
        // on the new content, and lands.
        api.race_next_patches(1);
        let cutover = SetWeightsRequest {
            route: ROUTE.into(),
            weights: [("blue".into(), 0), ("green".into(), 100)].into(),
            ..Default::default()
        };
        let done = replicas[0].admin.set_weights(with_token(cutover)).await.expect("applied").into_inner();
        assert_eq!(done.config_source, format!("configmap:{NAMESPACE}/{CONFIG_MAP}"));
        assert_eq!(api.patches(), (2, 1), "one 409, then the patch that landed");
        assert!(api.text().contains("weights = { blue = 0, green = 100 }"), "{}", api.text());
        assert!(api.text().starts_with("# the gateway's config"), "comments stay");
        for (w, _) in all_at(&mut replicas, &done.config_generation).await {
            assert_eq!(w, weights(0, 100));
        }
        produce(&bootstrap, 200, 50).await;
        assert_eq!(take(&mut streams, 200).await, (0, 200), "all to green on both replicas");

        // kubectl edit: both replicas follow.
        let edited = text.replace("weights = { blue = 100, green = 0 }", "weights = { blue = 50, green = 50 }");
        api.edit(&edited);
        let generation = fanout_gateway::admin::generation_of(&Config::parse(&edited).expect("parses"));
        for (w, refused) in all_at(&mut replicas, &generation).await {
            assert_eq!((w, refused), (weights(50, 50), 0));
        }

        // A broken edit: refused by both, who keep running what they had.
        api.edit(&edited.replace("split_label", "split_lable"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = all_at(&mut replicas, &generation).await;
            if seen.iter().all(|(_, refused)| *refused == 1) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the broken edit was not refused by both: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        drop(streams);
        for r in replicas {
            r.follow.abort();
            r.gw.shutdown().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("in time");
}

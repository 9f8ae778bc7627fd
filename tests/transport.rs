//! The Subscribe port as generic gRPC tooling and hostile sockets meet it: health per the
//! gRPC spec, server reflection, idle connections closed, a connection limit.

mod support;

use std::time::Duration;

use fanout_client::stream::{self, Subscription};
use fanout_gateway::gateway;
use fanout_gateway::stats::Stats;
use futures::StreamExt;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_spec_and_an_open_watch_does_not_hold_up_the_stop() {
    let cluster = mock_cluster(1);
    let gw = start_gateway(config(&cluster.bootstrap_servers(), &unique_group("health"))).await;
    let stats = gw.stats();
    let mut health = HealthClient::new(channel(&gw.endpoint()).await);
    let ask = |service: &str| HealthCheckRequest { service: service.to_string() };

    let first = |m: Option<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>| {
        m.expect("a message").expect("ok").status
    };
    // The watch says the current status at once: NOT_SERVING until the replica is ready (Kafka
    // answers, the group has settled), then SERVING.
    let mut fanout = health.watch(ask("fanout.v1.Fanout")).await.expect("watch").into_inner();
    let mut status = first(fanout.next().await);
    while status != ServingStatus::Serving as i32 {
        assert_eq!(status, ServingStatus::NotServing as i32);
        status = first(tokio::time::timeout(Duration::from_secs(30), fanout.next()).await.expect("becomes ready"));
    }
    let serving = health.check(ask("fanout.v1.Fanout")).await.expect("check").into_inner().status;
    assert_eq!(serving, ServingStatus::Serving as i32);
    let unknown = health.check(ask("nope.v1.Nothing")).await.expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut nothing =
        health.watch(ask("nope.v1.Nothing")).await.expect("a watch of an unknown service opens").into_inner();
    assert_eq!(first(nothing.next().await), ServingStatus::ServiceUnknown as i32);
    // The unknown service's watch stays open: nothing more arrives, and it has not ended.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), nothing.next()).await.is_err(),
        "a watch of an unknown service stays open"
    );

    gw.shutdown().await;
    assert_eq!(first(fanout.next().await), ServingStatus::NotServing as i32, "the stop is announced");
    assert!(fanout.next().await.is_none(), "then the watch ends");
    assert!(nothing.next().await.is_none(), "every watch ends");
    assert_eq!(Stats::get(&stats.server_stop_overruns), 0, "open watches did not hold the server's stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_in_both_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let cluster = mock_cluster(1);
    let gw = start_gateway(config(&cluster.bootstrap_servers(), &unique_group("reflect"))).await;
    let ch = channel(&gw.endpoint()).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(ch.clone())
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.expect("an answer").expect("ok").message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["fanout.v1.Fanout", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "fanout.v1.Fanout".into(),
        )),
    };
    let mut answers = v1alpha::server_reflection_client::ServerReflectionClient::new(ch)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection (grpcurl 1.8)")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok").message_response;
    assert!(
        matches!(answer, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "the contract's descriptor: {answer:?}"
    );
    gw.shutdown().await;
}

/// Idle connections and the connection limit.
fn transport_config(bootstrap: &str, group: &str, max_connections: usize) -> fanout_gateway::config::Config {
    let mut c = config(bootstrap, group);
    c.server.keepalive_interval_ms = 500;
    c.server.keepalive_timeout_ms = 500;
    c.server.idle_timeout_ms = 2_000;
    c.server.max_connections = max_connections;
    c
}

/// Waits until the server closes `socket` (EOF or reset); false if it is still open at `limit`.
async fn closed_within(mut socket: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // whatever the server sends first (its HTTP/2 settings)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_closed_while_a_subscriber_is_served() {
    const IDLE: usize = 1_000;
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("idle");
    let gw = start_gateway(transport_config(&bootstrap, &group, 2_000)).await;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(gw.addr()).await.expect("connects"));
    }
    // Meanwhile a subscriber is served: its connection answers the server's pings.
    let ids = produce(&bootstrap, 50, 5).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 100)).await.expect("subscribes");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(receive_and_ack(&mut sub, ids.len()).await, expected);

    let closed = futures::future::join_all(idle.into_iter().map(|s| closed_within(s, Duration::from_secs(30)))).await;
    assert_eq!(closed.iter().filter(|c| **c).count(), IDLE, "every idle connection was closed");

    // The subscriber, idle itself for longer than the idle timeout, is still served.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = produce(&bootstrap, 10, 5).await;
    let mut expected = more.clone();
    expected.sort();
    assert_eq!(receive_and_ack(&mut sub, more.len()).await, expected, "served after idling");
    eventually(Duration::from_secs(20), "commits reach the high watermarks", || fully_committed(&bootstrap, &group, 2))
        .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_are_closed_until_places_free_up() {
    let cluster = mock_cluster(1);
    let gw = gateway::start(transport_config(&cluster.bootstrap_servers(), &unique_group("limit"), 3))
        .await
        .expect("starts");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(gw.addr()).await.expect("connects"));
    }
    let over = TcpStream::connect(gw.addr()).await.expect("the kernel accepts it");
    assert!(closed_within(over, Duration::from_secs(1)).await, "a fourth connection is closed at once");

    // The held ones send nothing: the idle timeout frees their places.
    let closed = futures::future::join_all(held.into_iter().map(|s| closed_within(s, Duration::from_secs(30)))).await;
    assert!(closed.iter().all(|c| *c));
    Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 10)).await.expect("served again");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stream_limit_a_subscribe_gets_resource_exhausted_until_one_ends() {
    let cluster = mock_cluster(1);
    let mut config = config(&cluster.bootstrap_servers(), &unique_group("streams"));
    config.server.max_streams = 2;
    let gw = start_gateway(config).await;
    let first = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-1", 10)).await.expect("first");
    let _second = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-2", 10)).await.expect("second");
    let err = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-3", 10)).await.err().expect("refused");
    let stream::ClientError::Refused(status) = err else { panic!("expected a status, got {err}") };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("server.max_streams"), "{}", status.message());
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        if let Ok(sub) = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "pod-3", 10)).await {
            third = Some(sub);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(third.is_some(), "the place the first stream left is taken");
    gw.shutdown().await;
}

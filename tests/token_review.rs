//! Workload identity through the real kube client path: a route with `identity = "token"`
//! admits a subscriber whose projected ServiceAccount token the API server's TokenReview (the
//! fake apiserver of tests/support/kube.rs) says belongs to a selected pod, whatever the
//! address its stream comes from; an invalid token, a token of a pod outside the selector, and
//! a missing token are refused with UNAUTHENTICATED / PERMISSION_DENIED naming the check.

#[path = "support/kube.rs"]
mod kube_support;
mod support;

use std::time::Duration;

use fanout_client::stream::{self, ClientError, Subscription};
use fanout_gateway::config::{Config, DiscoveryMode, IdentityMode};
use fanout_gateway::proto::fanout_client::FanoutClient;
use fanout_gateway::proto::Hello;
use kube_support::{pod, FakeApiServer, NAMESPACE};
use support::*;
use tonic::Code;

const AUDIENCE: &str = "fanout-gateway";

fn token_config(bootstrap: &str, group: &str) -> Config {
    let mut config = support::config(bootstrap, group);
    config.discovery.mode = DiscoveryMode::Kube;
    config.discovery.namespace = Some(NAMESPACE.into());
    config.discovery.token_audience = Some(AUDIENCE.into());
    config.routes[0].selector = "app=orders".into();
    config.routes[0].identity = IdentityMode::Token;
    config.validate().expect("a valid config");
    config
}

/// A Hello that names no pod: with a token, the review says which.
fn anonymous() -> Hello {
    Hello { route: ROUTE.into(), max_in_flight: 100, ..Hello::default() }
}

async fn subscribe(endpoint: &str, hello: Hello, token: Option<&str>) -> Result<Subscription, ClientError> {
    let mut fanout = FanoutClient::new(stream::channel(endpoint, None).await.expect("channel"));
    Subscription::open_with_token(&mut fanout, hello, token).await
}

fn refusal(result: Result<Subscription, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Refused(status)) => status,
        Err(other) => panic!("expected a status, got {other}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_token_names_the_pod_and_bad_or_missing_tokens_are_refused() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    // The pod's IP is not the address the test's stream comes from (as behind a mesh
    // sidecar): only the token can prove who it is.
    let orders = pod("orders-7d9f", &[("app", "orders")], "Running", Some("10.9.9.9"));
    let payments = pod("payments-1", &[("app", "payments")], "Running", Some("10.9.9.10"));
    let (client, api) = FakeApiServer::start(vec![orders, payments]);
    api.grant("token-of-orders", "orders-7d9f");
    api.grant("token-of-payments", "payments-1");
    let gw = start_gateway_with_kube(token_config(&bootstrap, &unique_group("token")), client).await;

    // Admitted once the gateway has listed the route's pods.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sub = loop {
        match subscribe(&gw.endpoint(), anonymous(), Some("token-of-orders")).await {
            Ok(sub) => break sub,
            Err(ClientError::Refused(s)) if s.code() == Code::PermissionDenied => {
                assert!(tokio::time::Instant::now() < deadline, "never admitted: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("refused: {other}"),
        }
    };
    let mut sent = produce(&bootstrap, 40, 4).await;
    sent.sort();
    assert_eq!(receive_and_ack(&mut sub, 40).await, sent, "the token's pod subscribes and receives");
    let reviews = api.reviews();
    assert!(reviews.iter().any(|(token, audiences)| token == "token-of-orders" && audiences == &[AUDIENCE]));

    let forged = refusal(subscribe(&gw.endpoint(), anonymous(), Some("forged")).await);
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");
    assert!(forged.message().contains("not authenticated") && forged.message().contains("invalid bearer token"));

    let outside = refusal(subscribe(&gw.endpoint(), anonymous(), Some("token-of-payments")).await);
    assert_eq!(outside.code(), Code::PermissionDenied, "{outside:?}");
    assert!(outside.message().contains("payments-1") && outside.message().contains("not selected"), "{outside:?}");

    let missing = refusal(subscribe(&gw.endpoint(), anonymous(), None).await);
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("authorization: Bearer"), "{missing:?}");

    let claimed = Hello { pod_name: "orders-other".into(), namespace: NAMESPACE.into(), ..anonymous() };
    let liar = refusal(subscribe(&gw.endpoint(), claimed, Some("token-of-orders")).await);
    assert_eq!(liar.code(), Code::PermissionDenied, "a Hello that names another pod: {liar:?}");
    drop(sub);
    gw.shutdown().await;
}

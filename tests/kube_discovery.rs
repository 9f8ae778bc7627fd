//! Kubernetes discovery over kube's real HTTP path: `watch_pods` drives a `kube::Client` whose
//! transport is a tower-test mock, and a scripted fake apiserver answers it with the JSON an
//! apiserver sends: a PodList for the LIST, newline-delimited WatchEvents for the WATCH
//! (ADDED, MODIFIED, DELETED, BOOKMARK, and a 410 ERROR that forces a relist).
//!
//! Time is paused: the watcher's backoff sleeps (0.8 s and up) pass instantly.

use std::time::Duration;

use fanout_gateway::discovery::kube::spawn_pod_watch;
use fanout_gateway::discovery::{PodEvent, PodInfo};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tower_test::mock;

const SELECTOR: &str = "app=orders";
/// `SELECTOR` as it appears in a query string.
const SELECTOR_IN_QUERY: &str = "app%3Dorders";
/// Far more than any test needs, virtual time included.
const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn pods_follow_the_watch_and_a_410_relists() {
    timeout(TEST_LIMIT, async {
        let (mut api, mut events, watch) = start(Some("default"));

        let (list, reply) = api.next_request().await;
        assert_eq!(list.uri().path(), "/api/v1/namespaces/default/pods");
        assert_eq!(param(&list, "watch"), None, "the first request is a LIST: {}", list.uri());
        assert_eq!(param(&list, "labelSelector"), Some(SELECTOR_IN_QUERY), "LIST {}", list.uri());
        reply.send_response(json_response(pod_list(
            "100",
            &[
                pod("orders-1", "90", "blue", "Running", Some("10.0.0.1")),
                pod("orders-2", "95", "blue", "Running", Some("10.0.0.2")),
            ],
        )));
        assert_eq!(
            next_event(&mut events).await,
            PodEvent::Resynced(vec![
                info("orders-1", "blue", true, Some("10.0.0.1")),
                info("orders-2", "blue", true, Some("10.0.0.2")),
            ])
        );

        let (watch_req, reply) = api.next_request().await;
        assert_eq!(watch_req.uri().path(), "/api/v1/namespaces/default/pods");
        assert_eq!(param(&watch_req, "watch"), Some("true"), "then a WATCH: {}", watch_req.uri());
        assert_eq!(param(&watch_req, "labelSelector"), Some(SELECTOR_IN_QUERY), "WATCH {}", watch_req.uri());
        assert_eq!(param(&watch_req, "resourceVersion"), Some("100"), "from the list's version");
        assert_eq!(param(&watch_req, "allowWatchBookmarks"), Some("true"));
        reply.send_response(watch_response(&[
            json!({"type": "ADDED", "object": pod("orders-3", "101", "blue", "Running", Some("10.0.0.3"))}),
            json!({"type": "MODIFIED", "object": pod("orders-1", "102", "green", "Running", Some("10.0.0.1"))}),
            json!({"type": "DELETED", "object": pod("orders-2", "103", "blue", "Running", Some("10.0.0.2"))}),
            bookmark("150"),
            gone(),
        ]));
        let watch_answered = Instant::now();
        assert_eq!(next_event(&mut events).await, PodEvent::Applied(info("orders-3", "blue", true, Some("10.0.0.3"))));
        assert_eq!(next_event(&mut events).await, PodEvent::Applied(info("orders-1", "green", true, Some("10.0.0.1"))));
        assert_eq!(
            next_event(&mut events).await,
            PodEvent::Deleted { namespace: "default".into(), name: "orders-2".into() }
        );

        // The 410 makes the watcher start over with a fresh LIST (not a WATCH from the bookmark).
        let (relist, reply) = api.next_request().await;
        assert_eq!(param(&relist, "watch"), None, "a 410 relists: {}", relist.uri());
        assert_eq!(param(&relist, "labelSelector"), Some(SELECTOR_IN_QUERY), "relist {}", relist.uri());
        assert_eq!(param(&relist, "resourceVersion"), None, "a relist reads the latest state: {}", relist.uri());
        let relist_after = watch_answered.elapsed();
        assert!(relist_after >= Duration::from_millis(800), "the relist waits for the backoff, was {relist_after:?}");
        reply.send_response(json_response(pod_list(
            "200",
            &[
                pod("orders-1", "102", "green", "Running", Some("10.0.0.1")),
                pod("orders-3", "101", "blue", "Running", Some("10.0.0.3")),
                pod("orders-4", "190", "green", "Pending", None),
            ],
        )));
        assert_eq!(
            next_event(&mut events).await,
            PodEvent::Resynced(vec![
                info("orders-1", "green", true, Some("10.0.0.1")),
                info("orders-3", "blue", true, Some("10.0.0.3")),
                info("orders-4", "green", false, None),
            ])
        );

        // Then it watches again from the relist's version; the watch stays open.
        let (rewatch, _open) = api.next_request().await;
        assert_eq!(param(&rewatch, "watch"), Some("true"), "{}", rewatch.uri());
        assert_eq!(param(&rewatch, "labelSelector"), Some(SELECTOR_IN_QUERY), "{}", rewatch.uri());
        assert_eq!(param(&rewatch, "resourceVersion"), Some("200"), "{}", rewatch.uri());
        assert!(events.try_recv().is_err(), "nothing else was sent (a bookmark is not an event)");

        // Dropping the receiver stops the watch, even while the apiserver is quiet.
        drop(events);
        watch.await.expect("the watch task ends cleanly");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_ends_resumes_from_the_last_bookmark_without_a_relist() {
    timeout(TEST_LIMIT, async {
        let (mut api, mut events, watch) = start(Some("default"));

        let (_list, reply) = api.next_request().await;
        reply.send_response(json_response(pod_list(
            "100",
            &[pod("orders-1", "90", "blue", "Running", Some("10.0.0.1"))],
        )));
        assert_eq!(
            next_event(&mut events).await,
            PodEvent::Resynced(vec![info("orders-1", "blue", true, Some("10.0.0.1"))])
        );

        let (_watch, reply) = api.next_request().await;
        // The apiserver ends a watch after its timeout; the last thing it said was a bookmark.
        reply.send_response(watch_response(&[
            json!({"type": "ADDED", "object": pod("orders-2", "101", "green", "Running", Some("10.0.0.2"))}),
            bookmark("180"),
        ]));
        assert_eq!(next_event(&mut events).await, PodEvent::Applied(info("orders-2", "green", true, Some("10.0.0.2"))));

        let (resumed, _open) = api.next_request().await;
        assert_eq!(param(&resumed, "watch"), Some("true"), "no relist: {}", resumed.uri());
        assert_eq!(param(&resumed, "resourceVersion"), Some("180"), "from the bookmark: {}", resumed.uri());
        assert_eq!(param(&resumed, "labelSelector"), Some(SELECTOR_IN_QUERY), "{}", resumed.uri());
        assert!(events.try_recv().is_err(), "no Resynced when a watch merely resumes");

        drop(events);
        watch.await.expect("the watch task ends cleanly");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(start_paused = true)]
async fn errors_are_retried_and_a_failed_watch_keeps_its_place() {
    timeout(TEST_LIMIT, async {
        // No namespace: every namespace's pods.
        let (mut api, mut events, watch) = start(None);

        let (list, reply) = api.next_request().await;
        assert_eq!(list.uri().path(), "/api/v1/pods");
        assert_eq!(param(&list, "labelSelector"), Some(SELECTOR_IN_QUERY), "{}", list.uri());
        reply.send_response(status_response(StatusCode::FORBIDDEN, "Forbidden", "pods is forbidden"));

        let (list, reply) = api.next_request().await;
        assert_eq!(param(&list, "watch"), None, "the LIST is retried: {}", list.uri());
        reply.send_response(json_response(pod_list(
            "100",
            &[pod("orders-1", "90", "blue", "Running", Some("10.0.0.1"))],
        )));
        assert_eq!(
            next_event(&mut events).await,
            PodEvent::Resynced(vec![info("orders-1", "blue", true, Some("10.0.0.1"))])
        );

        let (_watch, reply) = api.next_request().await;
        reply.send_response(status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd is sad"));

        let (watch_again, reply) = api.next_request().await;
        assert_eq!(param(&watch_again, "watch"), Some("true"), "the WATCH is retried: {}", watch_again.uri());
        assert_eq!(param(&watch_again, "resourceVersion"), Some("100"), "{}", watch_again.uri());
        reply.send_response(watch_response(&[
            json!({"type": "ADDED", "object": pod("orders-2", "101", "green", "Running", Some("10.0.0.2"))}),
        ]));
        assert_eq!(next_event(&mut events).await, PodEvent::Applied(info("orders-2", "green", true, Some("10.0.0.2"))));

        drop(events);
        watch.await.expect("the watch task ends cleanly");
    })
    .await
    .expect("test finished in time");
}

// === the fake apiserver ===

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

/// The apiserver's end of the client's transport.
struct FakeApiServer {
    handle: Handle,
}

impl FakeApiServer {
    async fn next_request(&mut self) -> (Request<Body>, Reply) {
        self.handle.next_request().await.expect("the client is still there")
    }
}

/// `watch_pods` (on its own task) on `SELECTOR` over a client whose requests go to the returned fake apiserver.
fn start(namespace: Option<&str>) -> (FakeApiServer, mpsc::Receiver<PodEvent>, JoinHandle<()>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (tx, rx) = mpsc::channel(16);
    let watch = spawn_pod_watch(client, namespace.map(str::to_string), SELECTOR.to_string(), tx);
    (FakeApiServer { handle }, rx, watch)
}

async fn next_event(events: &mut mpsc::Receiver<PodEvent>) -> PodEvent {
    events.recv().await.expect("the watch is still running")
}

/// A query parameter's raw (still percent-encoded) value.
fn param<'r>(request: &'r Request<Body>, key: &str) -> Option<&'r str> {
    request.uri().query()?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn pod(name: &str, resource_version: &str, track: &str, phase: &str, ip: Option<&str>) -> Value {
    let mut status = json!({"phase": phase});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": resource_version,
            "uid": format!("uid-{name}"),
            "labels": {"app": "orders", "track": track},
        },
        "spec": {"containers": [{"name": "orders", "image": "orders:1"}]},
        "status": status,
    })
}

fn info(name: &str, track: &str, live: bool, ip: Option<&str>) -> PodInfo {
    PodInfo {
        namespace: "default".into(),
        name: name.into(),
        ip: ip.map(|ip| ip.parse().expect("test IP")),
        labels: [("app", "orders"), ("track", track)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        live,
    }
}

fn pod_list(resource_version: &str, pods: &[Value]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": resource_version},
        "items": pods,
    })
}

fn bookmark(resource_version: &str) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": resource_version},
    }})
}

/// What an apiserver says when a watch's resourceVersion has left its window.
fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 100 (140)", "reason": "Expired", "code": 410,
    }})
}

fn json_response(body: Value) -> Response<Body> {
    Response::new(Body::from(body.to_string().into_bytes()))
}

/// A watch response: one JSON event per line. The body ends after the last one, as when the
/// apiserver closes the watch.
fn watch_response(events: &[Value]) -> Response<Body> {
    let lines: String = events.iter().map(|event| format!("{event}\n")).collect();
    Response::new(Body::from(lines.into_bytes()))
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut response = Response::new(Body::from(status.to_string().into_bytes()));
    *response.status_mut() = code;
    response
}

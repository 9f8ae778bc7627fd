//! A scripted fake Kubernetes apiserver for a whole gateway: a `kube::Client` whose transport is
//! a tower-test mock, answered by a task that holds the namespace's pods. It serves every LIST
//! with the current pods its `labelSelector` picks, holds each WATCH open until the test changes
//! a pod, and then answers it with that change as a WatchEvent line (ADDED, MODIFIED, DELETED),
//! as scripted: a test that takes a pod's labels away may send MODIFIED (the gateway checks the
//! selector itself too) or DELETED (what an apiserver sends on a label-selector watch).
//!
//! Why a held watch rather than a streaming body: `kube::Client::new` wants an `http_body::Body`
//! response, and a body that streams from a channel has to implement that trait (naming
//! `http_body::Frame`), but `http-body` is not a dependency of this crate, and `kube::client::Body`
//! can only be built from whole bytes. So each change ends the watch it was sent on, as an
//! apiserver ends watches after their timeout, and kube-runtime's watcher at once watches again
//! from the last resourceVersion (no relist, no backoff). The gateway sees the same events, in
//! the same order, when the test chooses; the resourceVersion each re-watch asks for is checked.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use fanout_gateway::selector::Selector;
use http::{Request, Response, Uri};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower_test::mock;

/// The namespace the gateway watches and the subscribers' pods live in.
pub const NAMESPACE: &str = "shop";
/// The address the tests' subscribers connect from: their pods' IP.
pub const LOCAL_IP: &str = "127.0.0.1";
/// `resourceVersion` of the first LIST; every change counts up from it.
const FIRST_VERSION: u64 = 100;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

/// One request the fake apiserver answered (or holds).
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: Uri,
    pub watch: bool,
    /// The resourceVersion of the last thing sent before it came in (a LIST or a watch
    /// event): where a WATCH should resume.
    pub last_sent_version: String,
}

/// The test's side of the fake apiserver.
pub struct FakeApiServer {
    changes: mpsc::UnboundedSender<(&'static str, Value)>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tokens: Tokens,
    syncs: AtomicU32,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// A client for namespace `shop` and the apiserver task that answers it, listing `pods`.
    pub fn start(pods: Vec<Value>) -> (kube::Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, NAMESPACE);
        let (changes, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tokens = Tokens::default();
        let pods = pods.into_iter().map(|p| (pod_name(&p), p)).collect();
        let task = tokio::spawn(serve(handle, pods, rx, seen.clone(), tokens.clone()));
        (client, Self { changes, seen, tokens, syncs: AtomicU32::new(0), task })
    }

    /// A projected ServiceAccount token of pod `pod` (in `shop`): TokenReview authenticates it
    /// and names the pod.
    pub fn grant(&self, token: &str, pod: &str) {
        self.tokens.valid.lock().insert(token.to_string(), pod.to_string());
    }

    /// The TokenReviews asked for so far: (token, audiences).
    pub fn reviews(&self) -> Vec<Review> {
        self.tokens.reviews.lock().clone()
    }

    pub fn added(&self, pod: Value) {
        self.change("ADDED", pod);
    }

    pub fn modified(&self, pod: Value) {
        self.change("MODIFIED", pod);
    }

    pub fn deleted(&self, pod: Value) {
        self.change("DELETED", pod);
    }

    fn change(&self, kind: &'static str, pod: Value) {
        self.changes.send((kind, pod)).expect("the fake apiserver is running");
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// A fresh name for a marker pod (see `kube_routing::watch_applied`).
    pub fn next_marker(&self) -> String {
        format!("marker-{}", self.syncs.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tokens the fake TokenReview knows, and the reviews it answered.
#[derive(Clone, Default)]
struct Tokens {
    valid: Arc<Mutex<BTreeMap<String, String>>>,
    reviews: Arc<Mutex<Vec<Review>>>,
}

/// A review asked for: the token and the audiences.
type Review = (String, Vec<String>);

impl Tokens {
    /// The TokenReview answer for a review request's body.
    fn review(&self, body: &[u8]) -> Value {
        let request: Value = serde_json::from_slice(body).expect("a TokenReview");
        let token = request["spec"]["token"].as_str().unwrap_or_default().to_string();
        let audiences: Vec<String> = serde_json::from_value(request["spec"]["audiences"].clone()).unwrap_or_default();
        self.reviews.lock().push((token.clone(), audiences.clone()));
        let status = match self.valid.lock().get(&token) {
            Some(pod) => json!({
                "authenticated": true,
                "audiences": audiences,
                "user": {
                    "username": format!("system:serviceaccount:{NAMESPACE}:orders"),
                    "uid": "sa-uid",
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}")],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": [pod],
                        "authentication.kubernetes.io/pod-uid": [format!("uid-{pod}")],
                    },
                },
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": request["spec"],
            "status": status,
        })
    }
}

async fn serve(
    mut handle: Handle,
    mut pods: BTreeMap<String, Value>,
    mut changes: mpsc::UnboundedReceiver<(&'static str, Value)>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tokens: Tokens,
) {
    let mut version = FIRST_VERSION;
    let mut sent = FIRST_VERSION;
    // A WATCH waiting for the next change, and changes waiting for the next WATCH.
    let mut held: Option<Reply> = None;
    let mut queued: Vec<Value> = Vec::new();
    loop {
        tokio::select! {
            request = handle.next_request() => {
                let Some((request, reply)) = request else { return };
                if request.method() == http::Method::POST && request.uri().path().ends_with("/tokenreviews") {
                    let body = request.into_body().collect_bytes().await.expect("a body");
                    reply.send_response(json_response(&tokens.review(&body)));
                    continue;
                }
                let watch = query_param(request.uri(), "watch") == Some("true");
                seen.lock().push(Seen { uri: request.uri().clone(), watch, last_sent_version: sent.to_string() });
                if !watch {
                    let selector = selector_of(request.uri());
                    let picked = pods.values().filter(|p| selector.matches(&labels_of(p)));
                    reply.send_response(json_response(&pod_list(&version.to_string(), picked)));
                    sent = version;
                } else if queued.is_empty() {
                    held = Some(reply);
                } else {
                    reply.send_response(watch_response(&std::mem::take(&mut queued)));
                    sent = version;
                }
            }
            change = changes.recv() => {
                let Some((kind, mut pod)) = change else { return };
                version += 1;
                pod["metadata"]["resourceVersion"] = json!(version.to_string());
                let name = pod_name(&pod);
                if kind == "DELETED" {
                    pods.remove(&name);
                } else {
                    pods.insert(name, pod.clone());
                }
                queued.push(json!({"type": kind, "object": pod}));
                if let Some(reply) = held.take() {
                    reply.send_response(watch_response(&std::mem::take(&mut queued)));
                    sent = version;
                }
            }
        }
    }
}

/// The request's `labelSelector`, parsed (none: everything).
fn selector_of(uri: &Uri) -> Selector {
    let text = query_param(uri, "labelSelector").map(percent_decode).unwrap_or_default();
    text.parse().unwrap_or_else(|error| panic!("the gateway sent an invalid labelSelector {text:?}: {error}"))
}

/// Decodes a query value (`+` is a space, `%XX` a byte).
fn percent_decode(raw: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad escape %{hex} in {raw}")));
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| panic!("{raw} is not UTF-8"))
}

fn labels_of(pod: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default()
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().expect("test pods have names").to_string()
}

/// A query parameter's raw (still percent-encoded) value.
pub fn query_param<'u>(uri: &'u Uri, key: &str) -> Option<&'u str> {
    uri.query()?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// A pod in `shop` as the apiserver shows it.
pub fn pod(name: &str, labels: &[(&str, &str)], phase: &str, ip: Option<&str>) -> Value {
    let mut status = json!({"phase": phase});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "resourceVersion": FIRST_VERSION.to_string(),
            "uid": format!("uid-{name}"),
            "labels": labels,
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": status,
    })
}

/// A running pod of the `orders` app at the tests' own address, in cohort `track`.
pub fn running_orders(name: &str, track: &str) -> Value {
    pod(name, &[("app", "orders"), ("track", track)], "Running", Some(LOCAL_IP))
}

fn pod_list<'p>(resource_version: &str, pods: impl Iterator<Item = &'p Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": resource_version},
        "items": pods.collect::<Vec<_>>(),
    })
}

fn json_response(body: &Value) -> Response<Body> {
    Response::new(Body::from(body.to_string().into_bytes()))
}

/// A watch response: one JSON event per line; the body ends after the last one.
fn watch_response(events: &[Value]) -> Response<Body> {
    let lines: String = events.iter().map(|event| format!("{event}\n")).collect();
    Response::new(Body::from(lines.into_bytes()))
}

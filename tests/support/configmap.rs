//! A fake apiserver for gateways whose config is a ConfigMap (kube mode with
//! `discovery.config_map`): it answers several `kube::Client`s (one per replica) from one
//! shared state, as one apiserver answers many pods. Each client's transport is a tower-test
//! mock served by a task of its own.
//!
//! - ConfigMap `shop/<name>`: GET, PATCH (a JSON merge patch; a `metadata.resourceVersion`
//!   that is not the current one is answered 409 Conflict, as an apiserver does), and LIST and
//!   WATCH with `fieldSelector=metadata.name=<name>`. A WATCH is held until the ConfigMap
//!   changes past the version it asked for, then answered with a MODIFIED event and ended (as
//!   tests/support/kube.rs explains, a body cannot stream here); kube-runtime's watcher then
//!   watches again from there.
//! - Pods in `shop`: LIST answers the pods given at start; a WATCH is held open for good.
#![allow(dead_code)]

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_test::mock;

use crate::kube_support::{query_param, NAMESPACE};

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

struct State {
    name: String,
    key: String,
    text: String,
    version: u64,
    pods: Vec<Value>,
    /// PATCHes answered so far, and how many of them with 409.
    patches: u32,
    conflicts: u32,
    /// The next PATCHes lose a race: someone else changes the ConfigMap just before each.
    races: u32,
}

/// The test's side of the fake apiserver.
pub struct FakeConfigMapApi {
    state: Arc<Mutex<State>>,
    version: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FakeConfigMapApi {
    /// ConfigMap `shop/<name>` holding `text` under `key`, and `pods` in `shop`.
    pub fn start(name: &str, key: &str, text: &str, pods: Vec<Value>) -> Self {
        let state = State {
            name: name.to_string(),
            key: key.to_string(),
            text: text.to_string(),
            version: 500,
            pods,
            patches: 0,
            conflicts: 0,
            races: 0,
        };
        let (version, _) = watch::channel(500);
        Self { state: Arc::new(Mutex::new(state)), version, tasks: Mutex::new(Vec::new()) }
    }

    /// A client of this apiserver (one per replica).
    pub fn client(&self) -> kube::Client {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(serve(handle, self.state.clone(), self.version.clone()));
        self.tasks.lock().push(task);
        kube::Client::new(service, NAMESPACE)
    }

    /// The config text as the apiserver holds it.
    pub fn text(&self) -> String {
        self.state.lock().text.clone()
    }

    /// Changes the config text, as `kubectl edit` would.
    pub fn edit(&self, text: &str) {
        let version = {
            let mut s = self.state.lock();
            s.text = text.to_string();
            s.version += 1;
            s.version
        };
        self.version.send_replace(version);
    }

    /// Makes the next `n` PATCHes lose a race with another writer.
    pub fn race_next_patches(&self, n: u32) {
        self.state.lock().races = n;
    }

    /// (PATCHes answered, of which 409 Conflict).
    pub fn patches(&self) -> (u32, u32) {
        let s = self.state.lock();
        (s.patches, s.conflicts)
    }
}

impl Drop for FakeConfigMapApi {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

fn config_map(s: &State) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": s.name, "namespace": NAMESPACE, "resourceVersion": s.version.to_string(), "uid": "uid-cm"},
        "data": {s.key.as_str(): s.text},
    })
}

fn respond(reply: Reply, status: StatusCode, body: &Value) {
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = status;
    reply.send_response(response);
}

async fn serve(mut handle: Handle, state: Arc<Mutex<State>>, version: watch::Sender<u64>) {
    let mut changes = version.subscribe();
    // ConfigMap watches waiting for a version above theirs; pod watches, held for good.
    let mut held: Vec<(u64, Reply)> = Vec::new();
    let mut pod_watches: Vec<Reply> = Vec::new();
    loop {
        tokio::select! {
            request = handle.next_request() => {
                let Some((request, reply)) = request else { return };
                let path = request.uri().path().to_string();
                let watching = query_param(request.uri(), "watch") == Some("true");
                let configmaps = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
                let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
                if path == pods {
                    if watching {
                        pod_watches.push(reply);
                    } else {
                        let s = state.lock();
                        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": s.pods});
                        respond(reply, StatusCode::OK, &list);
                    }
                } else if path == configmaps {
                    let s = state.lock();
                    if watching {
                        let since = query_param(request.uri(), "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                        if s.version > since {
                            respond_event(reply, &s);
                        } else {
                            held.push((since, reply));
                        }
                    } else {
                        let list = json!({
                            "apiVersion": "v1", "kind": "ConfigMapList",
                            "metadata": {"resourceVersion": s.version.to_string()},
                            "items": [config_map(&s)],
                        });
                        respond(reply, StatusCode::OK, &list);
                    }
                } else if path == format!("{configmaps}/{}", state.lock().name) {
                    if request.method() == Method::GET {
                        let body = config_map(&state.lock());
                        respond(reply, StatusCode::OK, &body);
                    } else if request.method() == Method::PATCH {
                        let bytes = request.into_body().collect_bytes().await.expect("patch body");
                        let patch: Value = serde_json::from_slice(&bytes).expect("a JSON merge patch");
                        let changed = {
                            let mut s = state.lock();
                            s.patches += 1;
                            if s.races > 0 {
                                s.races -= 1;
                                s.version += 1;
                            }
                            let expected = patch["metadata"]["resourceVersion"].as_str().map(str::to_string);
                            if expected.is_some_and(|v| v != s.version.to_string()) {
                                s.conflicts += 1;
                                drop(s);
                                respond(reply, StatusCode::CONFLICT, &json!({
                                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": "Operation cannot be fulfilled on configmaps: the object has been modified",
                                    "reason": "Conflict", "code": 409,
                                }));
                                None
                            } else {
                                let key = s.key.clone();
                                if let Some(text) = patch["data"][key.as_str()].as_str() {
                                    s.text = text.to_string();
                                }
                                s.version += 1;
                                let body = config_map(&s);
                                let version = s.version;
                                drop(s);
                                respond(reply, StatusCode::OK, &body);
                                Some(version)
                            }
                        };
                        if let Some(v) = changed {
                            version.send_replace(v);
                        }
                    } else {
                        respond(reply, StatusCode::METHOD_NOT_ALLOWED, &json!({"kind": "Status", "code": 405}));
                    }
                } else {
                    respond(reply, StatusCode::NOT_FOUND, &json!({"kind": "Status", "code": 404, "message": path}));
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let s = state.lock();
                let (ready, waiting): (Vec<_>, Vec<_>) = held.drain(..).partition(|(since, _)| s.version > *since);
                held = waiting;
                for (_, reply) in ready {
                    respond_event(reply, &s);
                }
            }
        }
    }
}

/// Answers a watch with the ConfigMap's current state as one MODIFIED event; the body ends.
fn respond_event(reply: Reply, s: &State) {
    let event = json!({"type": "MODIFIED", "object": config_map(s)});
    reply.send_response(Response::new(Body::from(format!("{event}\n").into_bytes())));
}

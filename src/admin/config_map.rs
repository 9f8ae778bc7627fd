//! The config as a Kubernetes ConfigMap, read, patched and watched through the API: the source
//! of truth in Kubernetes mode. A patch carries the resourceVersion it edited, so two operators
//! changing weights at once cannot overwrite each other (the apiserver answers 409 Conflict and
//! the change is made again on the new content). Every replica watches the ConfigMap, so a
//! change reaches all of them within seconds, not when the kubelet refreshes the mounted file.
//!
//! RBAC: get, list, watch and patch on this one ConfigMap (k8s/rbac.yaml).

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::watcher::{self, watcher};
use ::kube::runtime::WatchStreamExt;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;
use tracing::{info, warn};

/// Where the config lives in the cluster.
#[derive(Clone)]
pub struct ConfigMapRef {
    pub client: ::kube::Client,
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// Why a read or a patch of the ConfigMap failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("the ConfigMap changed since it was read (409 Conflict)")]
    Conflict,
    #[error("ConfigMap {0} has no key `{1}`")]
    NoKey(String, String),
    #[error("ConfigMap {at}: {source}")]
    Api {
        at: String,
        #[source]
        source: ::kube::Error,
    },
}

impl std::fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configmap:{}/{}", self.namespace, self.name)
    }
}

impl ConfigMapRef {
    fn api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn at(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The config text and the resourceVersion it was read at.
    pub async fn read(&self) -> Result<(String, String), ConfigMapError> {
        let cm = self.api().get(&self.name).await.map_err(|source| ConfigMapError::Api { at: self.at(), source })?;
        let version = cm.metadata.resource_version.clone().unwrap_or_default();
        let text = self.text_of(&cm)?;
        Ok((text, version))
    }

    fn text_of(&self, cm: &ConfigMap) -> Result<String, ConfigMapError> {
        cm.data
            .as_ref()
            .and_then(|d| d.get(&self.key))
            .cloned()
            .ok_or_else(|| ConfigMapError::NoKey(self.at(), self.key.clone()))
    }

    /// Replaces the config text, if the ConfigMap is still at `version`.
    pub async fn replace(&self, text: &str, version: &str) -> Result<(), ConfigMapError> {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "data": {self.key.as_str(): text},
        });
        let params = PatchParams { field_manager: Some("fanout-gateway".into()), ..PatchParams::default() };
        match self.api().patch(&self.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(::kube::Error::Api(status)) if status.code == 409 => Err(ConfigMapError::Conflict),
            Err(source) => Err(ConfigMapError::Api { at: self.at(), source }),
        }
    }

    /// Follows the ConfigMap, handing each version of the config text to `apply` (the current
    /// one first). Errors are logged and retried with backoff; never returns.
    pub async fn watch<F, Fut>(self, mut apply: F)
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut stream = std::pin::pin!(watcher(self.api(), config).default_backoff());
        info!(configmap = %self.at(), key = self.key, "following the config through the Kubernetes API");
        while let Some(event) = stream.next().await {
            let cm = match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
                Ok(watcher::Event::Delete(_)) => {
                    warn!(configmap = %self.at(), "the config's ConfigMap was deleted; the running routes stay as they are");
                    continue;
                }
                Ok(_) => continue,
                Err(error) => {
                    warn!(configmap = %self.at(), %error, "config watch failed; retrying with backoff (RBAC: get, list, watch on this ConfigMap)");
                    continue;
                }
            };
            match self.text_of(&cm) {
                Ok(text) => apply(text).await,
                Err(error) => warn!(%error, "config change ignored"),
            }
        }
    }
}

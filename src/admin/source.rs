//! Where the gateway's route settings live, its source of truth: the config file, a ConfigMap,
//! or (demo and tests) only the running config. An operator's weight change is written there,
//! not into one replica's memory, so what runs always matches what a restart loads.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Problem};

use super::config_map::{ConfigMapError, ConfigMapRef};
use super::{weights, AdminError};

/// How often a weight change is tried again when someone else changed the ConfigMap between
/// its read and its patch.
const CONFLICT_RETRIES: usize = 5;

/// Where the gateway's route settings live.
#[derive(Clone)]
pub enum ConfigSource {
    /// The config file the gateway was started with: reloads read it, weight changes
    /// rewrite it.
    File(PathBuf),
    /// A ConfigMap, watched and patched through the Kubernetes API (kube mode with
    /// `discovery.config_map`).
    ConfigMap(ConfigMapRef),
    /// Only the running config (embedded demo, tests): changes last until the process ends.
    Memory,
}

impl ConfigSource {
    /// The source for a gateway started from the file at `path`: its ConfigMap when it names
    /// one (and a Kubernetes client is at hand), else the file.
    pub fn for_file(config: &Config, path: PathBuf, kube: Option<&::kube::Client>) -> Self {
        match (&config.discovery.config_map, kube) {
            (Some(name), Some(client)) => {
                let namespace = config
                    .discovery
                    .namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| client.default_namespace().to_string());
                Self::ConfigMap(ConfigMapRef {
                    client: client.clone(),
                    namespace,
                    name: name.clone(),
                    key: config.discovery.config_map_key.clone(),
                })
            }
            _ => Self::File(path),
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::ConfigMap(cm) => cm.fmt(f),
            Self::Memory => f.write_str("memory"),
        }
    }
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ConfigSource {
    /// Writes route `route`'s `weights` into the source of truth and returns the config it now
    /// holds, validated as a whole (None for [`ConfigSource::Memory`]: nothing is written).
    /// Rewrites route `route`'s entries with `edit` (see [`weights::set_weights`],
    /// [`weights::set_rate_limit`]) in the source of truth; the config it now holds (None: the
    /// source is memory, the caller's candidate is the config).
    pub(super) async fn write_route(
        &self,
        route: &str,
        edit: impl Fn(&str) -> Result<String, weights::EditError>,
    ) -> Result<Option<Config>, AdminError> {
        let config = match self {
            Self::File(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| AdminError::ReadFile { path: shown.clone(), source })?;
                let edited = edit(&text).map_err(|e| match e {
                    weights::EditError::NoRoute(_) => {
                        AdminError::RouteGone { route: route.to_string(), source_of_truth: shown.clone() }
                    }
                    source => AdminError::Edit { source_of_truth: shown.clone(), source },
                })?;
                let config = load_text(&edited)?;
                write_atomically(path, &edited).map_err(|source| AdminError::WriteFile { path: shown, source })?;
                config
            }
            Self::ConfigMap(cm) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let (text, version) = cm.read().await?;
                    let edited =
                        edit(&text).map_err(|source| AdminError::Edit { source_of_truth: cm.to_string(), source })?;
                    let config = load_text(&edited)?;
                    match cm.replace(&edited, &version).await {
                        Ok(()) => break config,
                        Err(ConfigMapError::Conflict) if attempt < CONFLICT_RETRIES => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Self::Memory => return Ok(None),
        };
        Ok(Some(config))
    }
}

pub(super) fn invalid(error: ConfigError) -> AdminError {
    match error {
        ConfigError::Invalid(problems) => AdminError::Invalid(problems),
        ConfigError::Parse { path, message } => AdminError::Invalid(vec![Problem { field: path, message }]),
        ConfigError::Read { path, source } => AdminError::ReadFile { path, source },
    }
}

/// Parses, applies the environment's overrides and validates, as a load of the file would.
pub(super) fn load_text(text: &str) -> Result<Config, AdminError> {
    let mut config = Config::parse(text).map_err(invalid)?;
    config.apply_env(|name| std::env::var(name).ok());
    config.resolve_secrets(|name| std::env::var(name).ok()).map_err(invalid)?;
    config.validate().map_err(invalid)?;
    Ok(config)
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`: a reader (a
/// reload, another tool) sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fanout.toml");
        std::fs::write(&path, "old").expect("write");
        write_atomically(&path, "new").expect("rewrites");
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), "new");
        assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 1, "no temporary file left behind");
    }
}

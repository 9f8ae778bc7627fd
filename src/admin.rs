//! The operator's control surface behind the admin API (`grpc::admin`): what a replica runs
//! (status of its routes, cohorts, subscribers and partitions), the changes an operator makes
//! (weights, drains, replays, dead-letter redrives) and hot reload of the source of truth.
//!
//! Weights change the source of truth, not one replica's memory: the config file (rewritten
//! atomically, comments kept; [`weights`]) or, in the embedded demo and tests, the running
//! config itself. Every change is validated as a whole config first, so a change that would not
//! load is refused with the field at fault, and what runs always matches what a restart loads.

pub mod config_map;
pub mod dead_letters;
mod error;
pub mod http;
pub mod replay;
pub mod rollouts;
pub mod source;
pub mod weights;

pub use error::AdminError;
pub use source::ConfigSource;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use tracing::{error, info, warn};

use crate::config::rate_limit::RateLimit;
use crate::config::{Config, RouteConfig};
use crate::dispatcher::RouteHandle;
use crate::pipeline::Routes;
use crate::stats::Stats;
use crate::subscriptions::SessionId;
use source::{invalid, load_text};

/// How an operator's weight change is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightChange {
    /// Make it even when [`weights::guard`] refuses it.
    pub force: bool,
    /// Check it (the guard and validation) and change nothing.
    pub dry_run: bool,
}

/// This replica, for Status.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub version: &'static str,
    pub name: String,
    pub config_generation: String,
    pub config_source: String,
    pub config_reloads: u64,
    pub config_refused: u64,
    pub kafka_reachable: bool,
    pub last_kafka_error: Option<String>,
    pub started_at: SystemTime,
    pub groups: Vec<String>,
    pub readiness: crate::readiness::Readiness,
}

pub use crate::dispatcher::status::{PartitionStatus, RouteStatus};

/// The config this replica runs and the generation that names it.
struct Applied {
    config: Config,
    generation: String,
}

/// The control surface of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Routes,
    stats: Arc<Stats>,
    source: ConfigSource,
    applied: RwLock<Applied>,
    /// One change at a time: a change reads, edits and writes the source.
    changing: tokio::sync::Mutex<()>,
    /// One redrive at a time on this replica (each reads the ledger, then extends it).
    redriving: tokio::sync::Mutex<()>,
    replays: replay::Replays,
    /// The latest look at each rollout on this replica.
    looks: rollouts::Looks,
    started_at: SystemTime,
    name: String,
}

/// Names a config's route settings: the same settings give the same generation on every
/// replica, whatever the file's comments or layout.
pub fn generation_of(config: &Config) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{:?}", config.routes).as_bytes()))
}

impl Control {
    pub fn new(config: Config, routes: Routes, stats: Arc<Stats>, source: ConfigSource) -> Self {
        let name = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        let generation = generation_of(&config);
        Self {
            inner: Arc::new(Inner {
                routes,
                stats,
                source,
                applied: RwLock::new(Applied { config, generation }),
                changing: tokio::sync::Mutex::new(()),
                redriving: tokio::sync::Mutex::new(()),
                replays: replay::Replays::default(),
                looks: rollouts::Looks::default(),
                started_at: SystemTime::now(),
                name,
            }),
        }
    }

    pub fn replica(&self) -> ReplicaStatus {
        let readiness = self.readiness();
        let groups = self.replica_groups();
        let inner = &self.inner;
        let applied = inner.applied.read();
        ReplicaStatus {
            version: env!("CARGO_PKG_VERSION"),
            name: inner.name.clone(),
            config_generation: applied.generation.clone(),
            config_source: inner.source.to_string(),
            config_reloads: Stats::get(&inner.stats.config_reloads),
            config_refused: Stats::get(&inner.stats.config_refused),
            kafka_reachable: inner.stats.kafka_reachable.load(std::sync::atomic::Ordering::Relaxed),
            last_kafka_error: inner.stats.last_kafka_error.read().clone(),
            started_at: inner.started_at,
            groups,
            readiness,
        }
    }

    /// Whether this replica should get traffic (see [`crate::readiness`]).
    pub fn readiness(&self) -> crate::readiness::Readiness {
        let stats = &self.inner.stats;
        let (unreadable, blind) = self.unreadable_topics();
        // A route that can read none of its topics has no partitions to settle on (librdkafka
        // does not join its group); it is said, not waited for.
        let groups: Vec<String> = self.replica_groups().into_iter().filter(|g| !blind.contains(g)).collect();
        let states = stats.groups.read();
        let fatal = self.liveness().err();
        // The last error is read (and copied) only when it is what readiness says.
        let reachable = stats.kafka_reachable.load(std::sync::atomic::Ordering::Relaxed);
        let last_error = if reachable { None } else { stats.last_kafka_error.read().clone() };
        let kafka = match reachable {
            true => crate::readiness::Reach::Yes,
            false => crate::readiness::Reach::No { last_error: last_error.as_deref() },
        };
        crate::readiness::assess(
            stats.stopping.load(std::sync::atomic::Ordering::Relaxed),
            fatal.as_deref(),
            kafka,
            &groups,
            &states,
            &unreadable,
        )
    }

    /// "route R cannot read topic T: why", for each routed topic a route's consumer found it
    /// cannot read, and "route R cannot write letters to topic T: why" for each dead-letter or
    /// retry topic refusing them; and the groups of the routes that can read none of theirs.
    fn unreadable_topics(&self) -> (Vec<String>, Vec<String>) {
        let mut said: Vec<String> = self
            .inner
            .stats
            .unwritable_topics
            .read()
            .iter()
            .flat_map(|(route, topics)| {
                topics.iter().map(move |(t, why)| format!("route {route} cannot write letters to topic {t}: {why}"))
            })
            .collect();
        let stats = &self.inner.stats;
        if stats.unreadable_topics.read().is_empty() && stats.refused_groups.read().is_empty() {
            return (said, Vec::new());
        }
        let applied = self.inner.applied.read();
        let kafka = &applied.config.kafka;
        let mut blind = Vec::new();
        for route in &applied.config.routes {
            let group = route.group(kafka);
            let consumed = route.consumed_topics();
            let topics = stats.unreadable_of(&group, &consumed);
            said.extend(topics.iter().map(|(t, why)| format!("route {} cannot read topic {t}: {why}", route.name)));
            if !topics.is_empty() && consumed.iter().all(|t| topics.contains_key(t)) {
                blind.push(group);
            }
        }
        (said, blind)
    }

    /// Whether this replica should be restarted: Err with what was said of each Kafka client
    /// that hit a fatal error (a fenced route consumer delivers nothing until a new process
    /// joins its group again).
    pub fn liveness(&self) -> Result<(), String> {
        let fatal = self.inner.stats.fatal_errors.read();
        if fatal.is_empty() {
            Ok(())
        } else {
            Err(fatal.values().cloned().collect::<Vec<_>>().join("; "))
        }
    }

    /// The consumer groups of the routes this replica runs.
    fn replica_groups(&self) -> Vec<String> {
        let applied = self.inner.applied.read();
        applied.config.routes.iter().map(|r| r.group(&applied.config.kafka)).collect()
    }

    /// The Prometheus exposition of this replica, now.
    pub async fn metrics(&self) -> String {
        // A route stopping meanwhile leaves the scrape without it rather than failing it.
        let mut routes = Vec::new();
        for name in self.inner.routes.names() {
            if let Ok(mut status) = self.routes_status(Some(&name)).await {
                routes.append(&mut status);
            }
        }
        let looks = self.inner.looks.verdict_counts();
        crate::metrics::render(&self.inner.stats, routes, self.readiness().ready, looks)
    }

    /// Every route (or only `only`) as it runs now.
    pub async fn routes_status(&self, only: Option<&str>) -> Result<Vec<RouteStatus>, AdminError> {
        let names: Vec<String> = match only {
            Some(route) => {
                self.route(route)?;
                vec![route.to_string()]
            }
            None => self.inner.routes.names(),
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let snapshot = self.route(&name)?.status().await.map_err(|_| AdminError::Stopping(name.clone()))?;
            let group = snapshot.config.group(&self.inner.applied.read().config.kafka);
            let partitions = snapshot
                .partitions
                .iter()
                .map(|p| {
                    // The statistics are up to a second old: a partition's end is at least
                    // what the group has committed.
                    let ends = self.inner.stats.ends_of(&group, &p.tp.topic, p.tp.partition);
                    let at_least = |end: i64| end.max(p.committed.unwrap_or(0));
                    let high_watermark = ends.map(|e| at_least(e.high_watermark));
                    let last_stable_offset = ends.map(|e| at_least(e.readable));
                    PartitionStatus {
                        snapshot: p.clone(),
                        high_watermark,
                        last_stable_offset,
                        lag: lag(last_stable_offset, p.committed),
                    }
                })
                .collect();
            let unreadable_topics = self.inner.stats.unreadable_of(&group, &snapshot.config.consumed_topics());
            out.push(RouteStatus { group, snapshot, partitions, unreadable_topics });
        }
        Ok(out)
    }

    /// What this replica knows of route `route` that a weight change is judged against.
    async fn weights_view(&self, route: &str) -> Result<weights::RouteView, AdminError> {
        let status = self.routes_status(Some(route)).await?.into_iter().next();
        let snapshot = status.map(|s| s.snapshot).ok_or_else(|| AdminError::Stopping(route.to_string()))?;
        let config = &snapshot.config;
        Ok(weights::RouteView {
            route: route.to_string(),
            replica: self.replica().name,
            split_label: config.split_label.clone(),
            holds: config.empty_cohort == crate::config::EmptyCohort::Hold,
            weights: config.weights.clone(),
            subscribers: snapshot
                .cohorts
                .iter()
                .filter(|c| c.subscribers > 0)
                .map(|c| (c.name.clone(), c.subscribers))
                .collect(),
            seen: snapshot.counts.keys().filter(|c| !c.is_empty()).cloned().chain(snapshot.pod_cohorts).collect(),
        })
    }

    /// Replaces route `route`'s weights in the source of truth and applies them here.
    /// Returns the new config generation (with `dry_run`, the current one: the change was
    /// checked, the same way, and not made). Unless forced, a change that would strand
    /// messages is refused ([`weights::guard`]).
    pub async fn set_weights(
        &self,
        route: &str,
        weights: BTreeMap<String, u32>,
        change: WeightChange,
    ) -> Result<String, AdminError> {
        self.route(route)?;
        // One change at a time, from the config as it is then, the guard included: two changes
        // judged against the same view could each pass where the pair would not, and a change
        // built on a config another change replaced meanwhile would undo it.
        let _one_at_a_time = self.inner.changing.lock().await;
        // A change that does not validate is refused naming the field, before the guard
        // judges what it would do.
        let mut candidate = self.inner.applied.read().config.clone();
        if let Some(r) = candidate.routes.iter_mut().find(|r| r.name == route) {
            r.weights = weights.clone();
        }
        candidate.validate().map_err(invalid)?;
        if !change.force {
            weights::guard(&self.weights_view(route).await?, &weights)?;
        }
        if change.dry_run {
            return Ok(self.inner.applied.read().generation.clone());
        }
        // Memory holds only what runs: the candidate, validated above, is the new config.
        let edit = |text: &str| weights::set_weights(text, route, &weights);
        let config = match self.inner.source.write_route(route, edit).await? {
            Some(config) => config,
            None => candidate,
        };
        let shown: Vec<String> = weights.iter().map(|(c, w)| format!("{c}={w}")).collect();
        info!(route, weights = %shown.join(" "), source = %self.inner.source, "weights changed by an operator");
        self.apply(config).await;
        Ok(self.inner.applied.read().generation.clone())
    }

    /// Sets (or with None removes) route `route`'s `rate_limit` in the source of truth and
    /// applies it here: the route's deliveries follow the new limit from the next refill, and
    /// other replicas when they see the change. Returns the new config generation (with
    /// `dry_run`, the current one: the change was checked and not made). A limit that does not
    /// validate is refused naming the field.
    pub async fn set_rate_limit(
        &self,
        route: &str,
        limit: Option<RateLimit>,
        dry_run: bool,
    ) -> Result<String, AdminError> {
        self.route(route)?;
        // One change at a time, from the config as it is then (see `set_weights`).
        let _one_at_a_time = self.inner.changing.lock().await;
        let mut candidate = self.inner.applied.read().config.clone();
        if let Some(r) = candidate.routes.iter_mut().find(|r| r.name == route) {
            r.rate_limit = limit;
        }
        candidate.validate().map_err(invalid)?;
        if dry_run {
            return Ok(self.inner.applied.read().generation.clone());
        }
        let edit = |text: &str| weights::set_rate_limit(text, route, limit.as_ref());
        let config = match self.inner.source.write_route(route, edit).await? {
            Some(config) => config,
            None => candidate,
        };
        let shown = limit.map_or_else(|| "none".to_string(), |l| l.to_string());
        info!(route, rate_limit = %shown, source = %self.inner.source, "rate limit changed by an operator");
        self.apply(config).await;
        Ok(self.inner.applied.read().generation.clone())
    }

    /// Drains the streams of subscriber `who` (name or session number) on route `route`.
    pub async fn drain(&self, route: &str, who: &str) -> Result<Vec<(SessionId, usize)>, AdminError> {
        let sessions =
            self.route(route)?.drain_subscriber(who).await.map_err(|_| AdminError::Stopping(route.to_string()))?;
        if sessions.is_empty() {
            return Err(AdminError::NoSubscriber { route: route.to_string(), who: who.to_string() });
        }
        Ok(sessions)
    }

    /// The letters in route `route`'s dead-letter topic, at most `limit`.
    pub async fn dead_letters(&self, route: &str, limit: usize) -> Result<dead_letters::Listing, AdminError> {
        let (config, route_config) = self.route_config(route)?;
        let listing = tokio::task::spawn_blocking(move || dead_letters::list(&config, &route_config, limit))
            .await
            .map_err(|source| AdminError::Task { what: "listing dead letters", source })??;
        Ok(listing)
    }

    /// Redrives route `route`'s selected letters to their origin topics; `progress` hears
    /// (done, total) as Kafka acknowledges them. Returns how many were redriven.
    pub async fn redrive(
        &self,
        route: &str,
        selection: dead_letters::Selection,
        progress: tokio::sync::mpsc::Sender<(u64, u64)>,
    ) -> Result<u64, AdminError> {
        let (config, route_config) = self.route_config(route)?;
        let _one_at_a_time = self.inner.redriving.lock().await;
        let name = route.to_string();
        let redriven = tokio::task::spawn_blocking(move || {
            dead_letters::redrive(&config, &route_config, selection, |done, total| {
                let _ = progress.blocking_send((done, total));
            })
        })
        .await
        .map_err(|source| AdminError::Task { what: "redrive", source })??;
        info!(route = name, redriven, "dead letters redriven by an operator");
        Ok(redriven)
    }

    /// Starts a replay of route `route`'s `topics` (all of them when empty) from `from` to
    /// `to`, delivered to the route's subscribers on this replica.
    pub async fn start_replay(
        &self,
        route: &str,
        topics: Vec<String>,
        from: crate::kafka::replay::Bound,
        to: crate::kafka::replay::Bound,
    ) -> Result<replay::ReplayProgress, AdminError> {
        let (config, route_config) = self.route_config(route)?;
        if route_config.delivery == crate::config::DeliveryMode::AtMostOnce {
            return Err(AdminError::AtMostOnceReplay(route.to_string()));
        }
        if let Some(t) = topics.iter().find(|t| !route_config.topics.contains(t)) {
            return Err(AdminError::BadRequest(format!(
                "topics: `{t}` is not a topic of route `{route}` (its topics: {})",
                route_config.topics.join(", ")
            )));
        }
        replay::check_bounds(&from, &to, crate::subscriptions::now_ms()).map_err(AdminError::BadRequest)?;
        let topics = if topics.is_empty() { route_config.topics.clone() } else { topics };
        let handle = self.route(route)?.clone();
        let (c, r) = (config.clone(), route_config.clone());
        let ranges = tokio::task::spawn_blocking(move || crate::kafka::replay::resolve(&c, &r, &topics, &from, &to))
            .await
            .map_err(|source| AdminError::Task { what: "resolving the replay's range", source })??;
        Ok(self.inner.replays.start(config, route_config, ranges, handle))
    }

    pub fn replay(&self, id: u64) -> Result<replay::ReplayProgress, AdminError> {
        self.inner.replays.get(id).ok_or(AdminError::NoReplay(id))
    }

    pub fn replays(&self) -> Vec<replay::ReplayProgress> {
        self.inner.replays.list()
    }

    pub fn cancel_replay(&self, id: u64) -> Result<replay::ReplayProgress, AdminError> {
        let progress = self.inner.replays.cancel(id).ok_or(AdminError::NoReplay(id))?;
        info!(replay = id, "replay cancelled by an operator");
        Ok(progress)
    }

    /// The applied config and route `route`'s settings in it.
    fn route_config(&self, route: &str) -> Result<(Config, RouteConfig), AdminError> {
        self.route(route)?;
        let config = self.inner.applied.read().config.clone();
        let route_config = config.routes.iter().find(|r| r.name == route).cloned().ok_or_else(|| {
            AdminError::UnknownRoute { route: route.to_string(), known: self.inner.routes.names().join(", ") }
        })?;
        Ok((config, route_config))
    }

    /// Applies a validated config's route settings to the running routes and makes it the
    /// applied one. Returns the routes the running gateway does not know (adding a route needs
    /// a restart).
    pub async fn apply(&self, config: Config) -> Vec<String> {
        let unknown = self.inner.routes.update(config.routes.clone()).await;
        let generation = generation_of(&config);
        *self.inner.applied.write() = Applied { config, generation };
        Stats::bump(&self.inner.stats.config_reloads, 1);
        unknown
    }

    /// Applies new settings for some routes (tools and tests that change routes in memory).
    pub async fn apply_routes(&self, routes: Vec<RouteConfig>) -> Vec<String> {
        let mut config = self.inner.applied.read().config.clone();
        for route in routes {
            match config.routes.iter_mut().find(|r| r.name == route.name) {
                Some(r) => *r = route,
                None => config.routes.push(route),
            }
        }
        self.apply(config).await
    }

    /// Follows the source of truth until the process ends: the file (polled every `every`),
    /// or the ConfigMap (watched). Returns at once for an in-memory config.
    pub async fn follow(self, every: Duration) {
        match self.inner.source.clone() {
            ConfigSource::File(path) => self.watch_file(path, every).await,
            ConfigSource::ConfigMap(cm) => {
                let origin = cm.to_string();
                cm.watch(|text| {
                    let control = self.clone();
                    let origin = origin.clone();
                    async move { control.apply_text(&text, &origin).await }
                })
                .await
            }
            ConfigSource::Memory => {}
        }
    }

    /// Follows the config file: when it changes, it is applied as [`Self::apply_text`] says.
    /// Polls the modification time (works on ConfigMap volumes, where the file is swapped
    /// through a symlink and inotify events are unreliable).
    async fn watch_file(self, path: PathBuf, every: Duration) {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen = stamp(&path);
        let mut tick = tokio::time::interval(every);
        let origin = format!("file:{}", path.display());
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match std::fs::read_to_string(&path) {
                Ok(text) => self.apply_text(&text, &origin).await,
                Err(e) => {
                    Stats::bump(&self.inner.stats.config_refused, 1);
                    error!(%origin, error = %e, "cannot read the changed config; the running routes stay as they are")
                }
            }
        }
    }

    /// Applies a new version of the config text when its route settings differ from what runs;
    /// text that does not load is refused with an error log, and the running routes stay as
    /// they are.
    async fn apply_text(&self, text: &str, origin: &str) {
        let _one_at_a_time = self.inner.changing.lock().await;
        match load_text(text) {
            Ok(config) if generation_of(&config) == self.inner.applied.read().generation => {}
            Ok(config) => {
                info!(origin, "config changed; applying route settings");
                let unknown = self.apply(config).await;
                if !unknown.is_empty() {
                    warn!(
                        unknown = %unknown.join(", "),
                        "routes not known to the running gateway were ignored; adding routes needs a restart"
                    );
                }
            }
            Err(e) => {
                Stats::bump(&self.inner.stats.config_refused, 1);
                error!(origin, error = %e, "config change refused; the running routes stay as they are")
            }
        }
    }

    /// The dispatcher of route `route` on this replica.
    fn route(&self, route: &str) -> Result<&RouteHandle, AdminError> {
        self.inner.routes.find(route).map_err(|_| AdminError::UnknownRoute {
            route: route.to_string(),
            known: self.inner.routes.names().join(", "),
        })
    }
}

/// How far the group's commits are behind where its consumer can read up to.
fn lag(readable_end: Option<i64>, committed: Option<i64>) -> Option<i64> {
    let end = readable_end?;
    Some((end - committed.unwrap_or(0)).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_what_the_group_has_not_committed() {
        assert_eq!(lag(Some(100), Some(40)), Some(60));
        assert_eq!(lag(Some(100), None), Some(100), "nothing committed: all of it");
        assert_eq!(lag(None, Some(40)), None, "no watermark seen yet: unknown");
        assert_eq!(lag(Some(10), Some(12)), Some(0), "a stale watermark never makes lag negative");
    }

    #[test]
    fn the_generation_follows_route_settings_not_layout() {
        let text = "[kafka]\nbootstrap_servers = \"k:9092\"\n[[routes]]\nname = \"r\"\ntopics = [\"t\"]\n";
        let a = Config::parse(text).expect("parses");
        let b = Config::parse(&format!("# a comment\n{text}")).expect("parses");
        assert_eq!(generation_of(&a), generation_of(&b));
        let c = Config::parse(&text.replace("[\"t\"]", "[\"u\"]")).expect("parses");
        assert_ne!(generation_of(&a), generation_of(&c));
    }
}

//! The `fanout.admin.v1.Admin` service on the admin port: turns the control surface's answers
//! ([`crate::admin::Control`]) into the admin contract's messages and its errors into statuses.
//! Auth is not here: [`super::auth`] guards the port as a tower layer.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::admin::dead_letters::{DeadLetterError, Letter, Selection};
use crate::admin::replay::ReplayProgress;
use crate::admin::{AdminError, Control, ReplicaStatus, RouteStatus, WeightChange};
use crate::config::rate_limit::RateLimit;
use crate::config::DeliveryMode;
use crate::kafka::replay::{Bound, ReplayError};
use crate::proto::admin::admin_server::Admin;
use crate::proto::admin::dead_letters_server::DeadLetters;
use crate::proto::admin::{self as pb};

/// The admin service of one gateway.
#[derive(Clone)]
pub struct AdminService {
    control: Control,
}

impl AdminService {
    pub fn new(control: Control) -> Self {
        Self { control }
    }
}

fn status_of(error: AdminError) -> Status {
    let message = super::bounded(error.to_string());
    match error {
        AdminError::UnknownRoute { .. } | AdminError::NoSubscriber { .. } => Status::not_found(message),
        AdminError::Invalid(_) => Status::invalid_argument(message),
        // The source of truth cannot take the change as things stand: an operator fixes that.
        AdminError::ReadFile { .. }
        | AdminError::WriteFile { .. }
        | AdminError::RouteGone { .. }
        | AdminError::Edit { .. }
        | AdminError::ConfigMap(_)
        | AdminError::AtMostOnceReplay(_) => Status::failed_precondition(message),
        AdminError::Task { .. } => Status::internal(message),
        AdminError::Stopping(_) => Status::unavailable(message),
        AdminError::BadRequest(_) => Status::invalid_argument(message),
        AdminError::NoReplay(_) => Status::not_found(message),
        AdminError::Refused(_) | AdminError::Rollout(_) => Status::failed_precondition(message),
        AdminError::NoRollout(_) => Status::not_found(message),
        AdminError::Replay(e) => match e {
            ReplayError::Kafka(_) | ReplayError::Stalled { .. } => Status::unavailable(message),
            _ => Status::invalid_argument(message),
        },
        AdminError::DeadLetters(e) => match e {
            DeadLetterError::NoTopic(_) | DeadLetterError::AlreadyRedriven(_) | DeadLetterError::ValueOmitted(_) => {
                Status::failed_precondition(message)
            }
            DeadLetterError::NoSuchLetter(_) => Status::not_found(message),
            DeadLetterError::Kafka(_)
            | DeadLetterError::MissingTopic(_)
            | DeadLetterError::ReadTimeout { .. }
            | DeadLetterError::Produce { .. } => Status::unavailable(message),
            DeadLetterError::Superseded(_) => Status::aborted(message),
        },
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn replica(r: ReplicaStatus) -> pb::Replica {
    pb::Replica {
        version: r.version.to_string(),
        name: r.name,
        config_generation: r.config_generation,
        config_source: r.config_source,
        config_reloads: r.config_reloads,
        config_refused: r.config_refused,
        kafka_reachable: r.kafka_reachable,
        last_kafka_error: r.last_kafka_error.unwrap_or_default(),
        started_at_unix_ms: unix_ms(r.started_at),
        groups: r.groups,
        ready: r.readiness.ready,
        not_ready_reason: if r.readiness.ready { String::new() } else { r.readiness.body() },
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Bytes of subscriber entries one Status reply carries at most. Subscribers choose their
/// names and labels (bounded per Hello); ten thousand streams of them must not make a reply
/// that no client accepts (gRPC's default limit is 4 MiB), which would blind `fanoutctl`. Half
/// the limit: cohort rows (one per split-label value in use), partitions and the replica's
/// own fields take the rest.
const STATUS_SUBSCRIBER_BUDGET: usize = 2 * 1024 * 1024;

fn route(r: RouteStatus, budget: &mut usize) -> pb::RouteStatus {
    let s = r.snapshot;
    let weight_total: u64 = s.cohorts.iter().map(|c| u64::from(c.weight)).sum();
    let delivered_total: u64 = s.delivered_last_minute.values().sum();
    let cohorts = s
        .cohorts
        .iter()
        .map(|c| {
            let recent = s.delivered_last_minute.get(&c.name).copied().unwrap_or(0);
            pb::Cohort {
                name: c.name.clone(),
                weight: c.weight,
                weight_share: share(u64::from(c.weight), weight_total),
                subscribers: c.subscribers,
                delivered_last_minute: recent,
                observed_share: share(recent, delivered_total),
                held: c.held as u64,
            }
        })
        .collect();
    let mut subscribers_omitted = 0u32;
    let subscribers = s
        .subscribers
        .into_iter()
        .map(|sub| pb::Subscriber {
            session: sub.session.0,
            name: sub.name,
            cohort: sub.cohort.unwrap_or_default(),
            labels: sub.labels,
            window: sub.window,
            in_flight: sub.in_flight,
            delivered: sub.delivered,
            acked: sub.acked,
            connected_at_unix_ms: unix_ms(sub.connected_at),
            draining: sub.draining,
            rate_limit: sub.rate_limit.map(rate_limit_out),
        })
        .filter(|sub| {
            let size = sub.encoded_len();
            if size > *budget {
                subscribers_omitted += 1;
                return false;
            }
            *budget -= size;
            true
        })
        .collect();
    let partitions = r
        .partitions
        .into_iter()
        .map(|p| pb::Partition {
            topic: p.snapshot.tp.topic.to_string(),
            partition: p.snapshot.tp.partition,
            committed: p.snapshot.committed,
            high_watermark: p.high_watermark,
            last_stable_offset: p.last_stable_offset,
            lag: p.lag,
            paused: p.snapshot.paused,
            buffered: p.snapshot.buffered as u64,
            head_of_line_moved: p.snapshot.head_of_line_moved,
        })
        .collect();
    let config = s.config;
    pb::RouteStatus {
        name: config.name,
        group: r.group,
        topics: config.topics,
        delivery: match config.delivery {
            DeliveryMode::AtLeastOnce => "at-least-once",
            DeliveryMode::AtMostOnce => "at-most-once",
            DeliveryMode::EffectivelyOnce => "effectively-once",
        }
        .to_string(),
        selector: config.selector,
        split_label: config.split_label.unwrap_or_default(),
        cohorts,
        subscribers,
        partitions,
        held: s.held as u64,
        retrying: s.retrying as u64,
        delivered: s.delivered,
        subscribers_omitted,
        rate_limit: config.rate_limit.map(rate_limit_out),
        throttled_seconds: s.throttled.as_secs_f64(),
        unreadable_topics: r
            .unreadable_topics
            .into_iter()
            .map(|(topic, reason)| pb::UnreadableTopic { topic, reason })
            .collect(),
    }
}

fn replay_status(p: ReplayProgress) -> pb::ReplayStatus {
    pb::ReplayStatus {
        id: p.id,
        route: p.route,
        state: p.state.as_str().to_string(),
        total: p.total,
        sent: p.sent,
        settled: p.settled,
        error: p.error.unwrap_or_default(),
        started_at_unix_ms: unix_ms(p.started_at),
        ranges: p
            .ranges
            .into_iter()
            .map(|r| pb::ReplayRange {
                topic: r.tp.topic.to_string(),
                partition: r.tp.partition,
                start: r.start,
                end: r.end,
            })
            .collect(),
    }
}

/// A replay bound from a time or offsets; `field` names it in the refusal.
fn bound(field: &str, unix_ms: Option<i64>, offsets: Vec<pb::PartitionOffset>, open: Bound) -> Result<Bound, Status> {
    match (unix_ms, offsets.is_empty()) {
        (None, true) => Ok(open),
        (Some(ms), true) if ms >= 0 => Ok(Bound::Time(ms)),
        (Some(ms), true) => {
            Err(Status::invalid_argument(format!("{field}_unix_ms must be a time from 1970 on, not {ms}")))
        }
        (None, false) => {
            let mut map = std::collections::BTreeMap::new();
            for o in offsets {
                if o.topic.trim().is_empty() || o.partition < 0 || o.offset < 0 {
                    return Err(Status::invalid_argument(format!(
                        "{field}_offsets: {}/{}@{} is not a topic, partition and offset",
                        o.topic, o.partition, o.offset
                    )));
                }
                map.insert((o.topic, o.partition), o.offset);
            }
            Ok(Bound::Offsets(map))
        }
        _ => Err(Status::invalid_argument(format!("give {field}_unix_ms or {field}_offsets, not both"))),
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty: name it")));
    }
    Ok(value)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let only = request.into_inner().route;
        let only = Some(only.trim()).filter(|r| !r.is_empty());
        let routes = self.control.routes_status(only).await.map_err(status_of)?;
        Ok(Response::new(pb::StatusResponse {
            replica: Some(replica(self.control.replica())),
            routes: {
                let mut budget = STATUS_SUBSCRIBER_BUDGET;
                routes.into_iter().map(|r| route(r, &mut budget)).collect()
            },
        }))
    }

    async fn set_weights(
        &self,
        request: Request<pb::SetWeightsRequest>,
    ) -> Result<Response<pb::SetWeightsResponse>, Status> {
        let pb::SetWeightsRequest { route, weights, force, dry_run } = request.into_inner();
        let route = required("route", &route)?;
        let weights: BTreeMap<String, u32> = weights;
        let change = WeightChange { force, dry_run };
        let generation = self.control.set_weights(route, weights.clone(), change).await.map_err(status_of)?;
        Ok(Response::new(pb::SetWeightsResponse {
            config_generation: generation,
            config_source: self.control.replica().config_source,
            weights,
        }))
    }

    async fn set_rate_limit(
        &self,
        request: Request<pb::SetRateLimitRequest>,
    ) -> Result<Response<pb::SetRateLimitResponse>, Status> {
        let pb::SetRateLimitRequest { route, rate_limit, dry_run } = request.into_inner();
        let route = required("route", &route)?;
        let limit = rate_limit.map(|l| RateLimit {
            messages_per_s: l.messages_per_s,
            bytes_per_s: l.bytes_per_s,
            burst: l.burst,
        });
        let generation = self.control.set_rate_limit(route, limit, dry_run).await.map_err(status_of)?;
        Ok(Response::new(pb::SetRateLimitResponse {
            config_generation: generation,
            config_source: self.control.replica().config_source,
            rate_limit: limit.map(rate_limit_out),
        }))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let pb::DrainRequest { route, subscriber } = request.into_inner();
        let route = required("route", &route)?;
        let subscriber = required("subscriber", &subscriber)?;
        let sessions = self.control.drain(route, subscriber).await.map_err(status_of)?;
        Ok(Response::new(pb::DrainResponse {
            in_flight: sessions.iter().map(|(_, n)| *n as u32).sum(),
            sessions: sessions.into_iter().map(|(id, _)| id.0).collect(),
        }))
    }

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Result<Response<pb::ReplayStatus>, Status> {
        let r = request.into_inner();
        let route = required("route", &r.route)?;
        let from = bound("from", r.from_unix_ms, r.from_offsets, Bound::Latest)?;
        if matches!(from, Bound::Latest) {
            return Err(Status::invalid_argument("say where the replay starts: from_unix_ms or from_offsets"));
        }
        let to = bound("to", r.to_unix_ms, r.to_offsets, Bound::Latest)?;
        let progress = self.control.start_replay(route, r.topics, from, to).await.map_err(status_of)?;
        Ok(Response::new(replay_status(progress)))
    }

    async fn get_replay(&self, request: Request<pb::GetReplayRequest>) -> Result<Response<pb::ReplayStatus>, Status> {
        let progress = self.control.replay(request.into_inner().id).map_err(status_of)?;
        Ok(Response::new(replay_status(progress)))
    }

    async fn list_replays(
        &self,
        _request: Request<pb::ListReplaysRequest>,
    ) -> Result<Response<pb::ListReplaysResponse>, Status> {
        let replays = self.control.replays().into_iter().map(replay_status).collect();
        Ok(Response::new(pb::ListReplaysResponse { replays }))
    }

    async fn cancel_replay(
        &self,
        request: Request<pb::CancelReplayRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        let progress = self.control.cancel_replay(request.into_inner().id).map_err(status_of)?;
        Ok(Response::new(replay_status(progress)))
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let request = request.into_inner();
        let route = required("route", &request.route)?;
        let (plan, analysis) = super::rollouts::plan_of(&request);
        self.control.start_rollout(route, plan, analysis).await.map_err(status_of)?;
        self.rollout_status(route)
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let request = request.into_inner();
        self.rollout_status(required("route", &request.route)?)
    }

    async fn steer_rollout(
        &self,
        request: Request<pb::SteerRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let request = request.into_inner();
        let route = required("route", &request.route)?;
        let input = super::rollouts::input_of(request.action)?;
        self.control.steer_rollout(route, input).await.map_err(status_of)?;
        self.rollout_status(route)
    }
}

impl AdminService {
    /// Route `route`'s rollout as this replica has it now.
    fn rollout_status(&self, route: &str) -> Result<Response<pb::RolloutStatus>, Status> {
        let view = self.control.rollout(route).map_err(status_of)?;
        let Some(rollout) = view.rollout.clone() else {
            return Err(status_of(AdminError::NoRollout(route.to_string())));
        };
        let replica = self.control.replica();
        let status = super::rollouts::status_of(view, &rollout, replica.name, replica.config_generation);
        Ok(Response::new(status))
    }
}

/// The `fanout.admin.v1.DeadLetters` service: listing and redriving a route's dead letters.
#[derive(Clone)]
pub struct DeadLettersService {
    control: Control,
}

impl DeadLettersService {
    pub fn new(control: Control) -> Self {
        Self { control }
    }
}

/// Letters a List shows when the request leaves the limit at 0.
const DEFAULT_LIST_LIMIT: usize = 100;

fn letter(l: Letter) -> pb::DeadLetter {
    pb::DeadLetter {
        partition: l.partition,
        offset: l.offset,
        origin_topic: l.origin_topic,
        origin_partition: l.origin_partition.unwrap_or(-1),
        origin_offset: l.origin_offset.unwrap_or(-1),
        attempts: l.attempts,
        reason: l.reason,
        timestamp_unix_ms: l.timestamp_ms.unwrap_or(0),
        key: l.key.map(|k| String::from_utf8_lossy(&k).into_owned()).unwrap_or_default(),
        value_bytes: l.value.map_or(0, |v| v.len() as u64),
        redriven: l.redriven,
    }
}

type ProgressStream = tokio_stream::wrappers::ReceiverStream<Result<pb::RedriveProgress, Status>>;

#[tonic::async_trait]
impl DeadLetters for DeadLettersService {
    async fn list(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let pb::ListDeadLettersRequest { route, limit } = request.into_inner();
        let route = required("route", &route)?;
        let limit = if limit == 0 { DEFAULT_LIST_LIMIT } else { limit as usize };
        let listing = self.control.dead_letters(route, limit).await.map_err(status_of)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            topic: listing.topic,
            letters: listing.letters.into_iter().map(letter).collect(),
            total: listing.total,
            redriven: listing.redriven,
        }))
    }

    type RedriveStream = ProgressStream;

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<Response<Self::RedriveStream>, Status> {
        let pb::RedriveRequest { route, letters, all } = request.into_inner();
        let route = required("route", &route)?.to_string();
        let selection = match (all, letters.is_empty()) {
            (true, true) => Selection::All,
            (false, false) => Selection::Letters(letters.iter().map(|l| (l.partition, l.offset)).collect()),
            (true, false) => return Err(Status::invalid_argument("name letters or set `all`, not both")),
            (false, true) => return Err(Status::invalid_argument("no letters selected: name letters or set `all`")),
        };
        let (out, stream) = tokio::sync::mpsc::channel(16);
        let control = self.control.clone();
        // The redrive runs to its end even if the caller goes away.
        tokio::spawn(async move {
            let (progress, mut heard) = tokio::sync::mpsc::channel::<(u64, u64)>(16);
            let forward = {
                let out = out.clone();
                async move {
                    while let Some((done, total)) = heard.recv().await {
                        let _ = out.send(Ok(pb::RedriveProgress { done, total, finished: false })).await;
                    }
                }
            };
            let (result, ()) = tokio::join!(control.redrive(&route, selection, progress), forward);
            let last = match result {
                Ok(n) => Ok(pb::RedriveProgress { done: n, total: n, finished: true }),
                Err(e) => Err(status_of(e)),
            };
            let _ = out.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(stream)))
    }
}

/// A rate limit in the admin contract's form.
fn rate_limit_out(l: RateLimit) -> pb::RateLimit {
    pb::RateLimit { messages_per_s: l.messages_per_s, bytes_per_s: l.bytes_per_s, burst: l.burst }
}

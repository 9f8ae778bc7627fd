//! Prometheus exposition (`/metrics` on the admin port), through the `prometheus-client`
//! crate: OpenMetrics text, which Prometheus scrapes and `promtool check metrics` accepts.
//!
//! Nothing here counts on its own. At each scrape the gateway's [`Stats`] and a fresh
//! snapshot of every route (taken by each route's dispatcher, the one owner of that state) are
//! turned into series, so a subscriber or a partition that went away leaves no stale series
//! behind. Only the two latency histograms are observed as things happen ([`crate::stats::Histograms`]).
//!
//! Labels are bounded by configuration and by what is live: route, cohort (the split label's
//! values), subscriber (connected pods only), topic and partition (assigned ones only). No
//! offsets, keys or delivery ids are ever labels.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::dispatcher::status::{PartitionStatus, RouteStatus};
use crate::stats::Stats;
use crate::subscriptions::CohortCounts;

/// The content type of the OpenMetrics exposition, for scrapers that ask for it (Prometheus
/// does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text exposition, for everyone else (curl, `promtool check
/// metrics`, older scrapers).
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which of a cohort's totals a series shows.
type PickCount = fn(&CohortCounts) -> u64;

pub use crate::stats::label_value;

/// Whether a scraper's `Accept` header asks for OpenMetrics (as Prometheus does) rather than
/// the classic text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The classic text format (0.0.4) of an OpenMetrics exposition, as client_golang serves to
/// scrapers that do not ask for OpenMetrics: a counter family is named with its `_total`
/// suffix in HELP and TYPE, and the UNIT and EOF lines go. Samples are the same in both.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE: held until TYPE says whether the name takes `_total`.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            if let Some((_, text)) = help.take() {
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The exposition of one scrape: the gateway's counters, `routes` as they are now, and whether
/// the replica is `ready`.
pub fn render(stats: &Arc<Stats>, routes: Vec<RouteStatus>, ready: bool, looks: RolloutLooks) -> String {
    let mut registry = Registry::with_prefix("fanout");
    registry.register(
        "commit_latency_seconds",
        "Time a commit of a route's consumer group took, successful or not",
        stats.histograms.commit.clone(),
    );
    registry.register(
        "delivery_latency_seconds",
        "Time from a record's arrival from Kafka to its subscriber's ack (replays excluded)",
        stats.histograms.delivery.clone(),
    );
    registry.register(
        "cohort_ack_latency_seconds",
        "Time from a delivery's send to its subscriber's ack, per cohort (replays excluded): what a canary is judged on",
        stats.histograms.ack.clone(),
    );
    registry.register_collector(Box::new(Scrape { stats: stats.clone(), routes, ready, looks }));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label, not input.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# encoding stopped: {error}");
    }
    out
}

/// Looks this replica's rollout judge took, per (route, verdict).
pub type RolloutLooks = BTreeMap<(String, &'static str), u64>;

/// What one scrape encodes besides the histograms.
#[derive(Debug)]
struct Scrape {
    stats: Arc<Stats>,
    routes: Vec<RouteStatus>,
    ready: bool,
    looks: RolloutLooks,
}

impl Scrape {
    /// Each route's rollout (from the record in its settings) and the judge's looks.
    fn rollout_families(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        const PHASES: [&str; 4] = ["running", "paused", "promoted", "aborted"];
        let rollouts = || {
            self.routes.iter().filter_map(|r| r.snapshot.config.rollout.as_ref().map(|o| (&r.snapshot.config.name, o)))
        };
        family(
            e,
            "rollout_phase",
            "1 for the phase the route's rollout is in (running, paused, promoted, aborted), 0 for the others",
            MetricType::Gauge,
            rollouts().flat_map(|(route, o)| {
                let now = o.progress.phase.name();
                PHASES.into_iter().map(move |phase| {
                    let labels = [
                        ("route", label_value(route)),
                        ("candidate", label_value(&o.plan.candidate)),
                        ("phase", phase.to_string()),
                    ];
                    (labels, i64::from(phase == now))
                })
            }),
        )?;
        family(
            e,
            "rollout_step",
            "The step the route's rollout stands at, from 0",
            MetricType::Gauge,
            rollouts().map(|(route, o)| ([("route", label_value(route))], o.step() as i64)),
        )?;
        family(
            e,
            "rollout_candidate_weight",
            "The rollout candidate's share of the route, in percent",
            MetricType::Gauge,
            rollouts().map(|(route, o)| ([("route", label_value(route))], i64::from(o.candidate_weight()))),
        )?;
        family(
            e,
            "rollout_looks",
            "Looks this replica's judge took at a rollout's step, by verdict (pass, fail, inconclusive)",
            MetricType::Counter,
            self.looks.iter().map(|((route, verdict), n)| {
                ([("route", label_value(route)), ("verdict", verdict.to_string())], *n as i64)
            }),
        )
    }
}

/// Gateway-wide counters straight from [`Stats`]: name (without `_total`), help, counter.
fn gateway_counters(s: &Stats) -> [(&'static str, &'static str, &AtomicU64); 30] {
    [
        ("received", "Records received from Kafka", &s.received),
        ("unknown_acks", "Acks of ids not in flight on their stream (ignored)", &s.unknown_acks),
        ("lease_extensions", "Deliveries whose ack deadline a subscriber extended", &s.lease_extensions),
        ("unknown_extensions", "Extensions of ids not in flight on their stream (ignored)", &s.unknown_extensions),
        ("retries_scheduled", "Failed deliveries scheduled for another attempt after a backoff", &s.retries_scheduled),
        ("retried_via_topic", "Failed messages produced to their route's retry topic", &s.retried_via_topic),
        (
            "head_of_line_moved",
            "Messages moved to the retry or dead-letter topic because they held their partition's commits back",
            &s.head_of_line_moved,
        ),
        (
            "dead_letter_failures",
            "Dead-letter and retry-topic produces Kafka refused (each retried)",
            &s.dead_letter_failures,
        ),
        (
            "exhausted_without_dlq",
            "Messages out of attempts on a route without a dead-letter topic",
            &s.exhausted_without_dlq,
        ),
        ("dedup_hits", "Records acked without delivery as duplicates of an earlier idempotency key", &s.dedup_hits),
        ("dedup_errors", "Claim batches the dedup store failed (delivered unchecked)", &s.dedup_errors),
        (
            "dedup_evictions",
            "Keys the in-memory dedup store forgot early to stay within its capacity",
            &s.dedup_evictions,
        ),
        ("dropped_at_most_once", "At-most-once messages committed but never acked", &s.dropped_at_most_once),
        ("refetched", "Records dropped unseen because their partition's buffer was full (fetched again)", &s.refetched),
        (
            "skipped_already_acked",
            "Records skipped because a previous owner's commit metadata says they were acked",
            &s.skipped_already_acked,
        ),
        ("stale_records", "Records Kafka sent again at or below an offset already received", &s.stale_records),
        (
            "revoke_abandoned",
            "Deliveries in flight when a revoked partition's drain deadline passed",
            &s.revoke_abandoned,
        ),
        (
            "shutdown_abandoned",
            "Deliveries in flight when a graceful stop's grace period ran out",
            &s.shutdown_abandoned,
        ),
        (
            "revoke_commits_refused",
            "Commits of revoked partitions the group coordinator refused",
            &s.revoke_commits_refused,
        ),
        (
            "assignments_lost",
            "Partitions the group took away without a revoke (the member's session ended)",
            &s.assignments_lost,
        ),
        (
            "partition_restarts",
            "Partitions whose log went back below the route's commits (topic recreated, log truncated)",
            &s.partition_restarts,
        ),
        (
            "retries_in_place",
            "Retries the retry topic refused as too large for it, retried in place instead",
            &s.retries_in_place,
        ),
        ("commits", "Offset commits that succeeded", &s.commits),
        ("commit_failures", "Offset commits that failed (the next one covers them)", &s.commit_failures),
        ("rebalances", "Partition assignments and revocations seen by the route consumers", &s.rebalances),
        ("partition_pauses", "Times a partition was paused because its buffer was full", &s.partition_pauses),
        ("partition_resumes", "Times a paused partition was resumed", &s.partition_resumes),
        ("kafka_errors", "Errors the Kafka client reported", &s.kafka_errors),
        ("sessions_opened", "Subscriber streams accepted", &s.sessions_opened),
        ("sessions_closed", "Subscriber streams ended, whatever the reason", &s.sessions_closed),
    ]
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

/// One family: a descriptor, then one sample per label set.
fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value.max(0) as u64).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// A counter family of seconds: one sample per label set.
fn seconds_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &*self.stats;
        for (name, help, value) in gateway_counters(s) {
            counter(&mut e, name, help, Stats::get(value))?;
        }
        family(
            &mut e,
            "config_reloads",
            "Config changes (file, ConfigMap or admin API) applied (result=ok) or refused (result=refused)",
            MetricType::Counter,
            [
                ([("result", "ok")], Stats::get(&s.config_reloads) as i64),
                ([("result", "refused")], Stats::get(&s.config_refused) as i64),
            ],
        )?;
        gauge(&mut e, "sessions", "Subscriber streams open now", Stats::get(&s.sessions) as i64)?;
        gauge(&mut e, "buffered_records", "Records held un-committed, all routes", Stats::get(&s.buffered) as i64)?;
        gauge(
            &mut e,
            "kafka_reachable",
            "1 while Kafka answers",
            i64::from(s.kafka_reachable.load(Ordering::Relaxed)),
        )?;
        gauge(&mut e, "ready", "1 while the replica is ready (/readyz)", i64::from(self.ready))?;
        family(
            &mut e,
            "build_info",
            "The gateway's version (always 1)",
            MetricType::Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        family(
            &mut e,
            "group_settled",
            "1 while the route's consumer is a settled member of its group",
            MetricType::Gauge,
            self.routes.iter().map(|r| {
                let settled = s.groups.read().get(r.group.as_str()).is_some_and(|g| g.settled);
                ([("route", label_value(&r.snapshot.config.name))], i64::from(settled))
            }),
        )?;

        // Per route and cohort.
        let per_cohort = |pick: PickCount| {
            self.routes
                .iter()
                .flat_map(move |r| {
                    r.snapshot.counts.iter().map(move |(cohort, c)| {
                        (
                            [("route", label_value(&r.snapshot.config.name)), ("cohort", label_value(cohort))],
                            pick(c) as i64,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        let cohort_counters: [(&str, &str, PickCount); 6] = [
            ("delivered", "Deliveries sent, redeliveries included", |c| c.delivered),
            ("redelivered", "Deliveries sent as a second or later attempt", |c| c.redelivered),
            ("acked", "Deliveries acked by subscribers", |c| c.acked),
            ("nacked", "Deliveries nacked by subscribers", |c| c.nacked),
            ("expired", "Deliveries whose ack deadline passed", |c| c.expired),
            ("dead_lettered", "Messages sent to the dead-letter topic after their last failed attempt", |c| {
                c.dead_lettered
            }),
        ];
        for (name, help, pick) in cohort_counters {
            family(&mut e, name, help, MetricType::Counter, per_cohort(pick))?;
        }
        family(
            &mut e,
            "route_weight",
            "The route's configured weight per cohort",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| {
                r.snapshot.cohorts.iter().map(|c| {
                    (
                        [("route", label_value(&r.snapshot.config.name)), ("cohort", label_value(&c.name))],
                        i64::from(c.weight),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "route_subscribers",
            "Subscriber streams per cohort",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| {
                r.snapshot.cohorts.iter().map(|c| {
                    (
                        [("route", label_value(&r.snapshot.config.name)), ("cohort", label_value(&c.name))],
                        i64::from(c.subscribers),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "route_held_messages",
            "Messages the route holds because no subscriber may take them (empty cohort)",
            MetricType::Gauge,
            self.routes.iter().map(|r| ([("route", label_value(&r.snapshot.config.name))], r.snapshot.held as i64)),
        )?;
        family(
            &mut e,
            "cohort_held_messages",
            "Messages of a cohort held because it has no subscriber on this replica (empty_cohort = hold)",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| {
                r.snapshot.cohorts.iter().map(|c| {
                    ([("route", label_value(&r.snapshot.config.name)), ("cohort", label_value(&c.name))], c.held as i64)
                })
            }),
        )?;
        family(
            &mut e,
            "route_retrying_messages",
            "Failed messages waiting out their backoff",
            MetricType::Gauge,
            self.routes.iter().map(|r| ([("route", label_value(&r.snapshot.config.name))], r.snapshot.retrying as i64)),
        )?;

        family(
            &mut e,
            "route_rate_limit",
            "The route's rate_limit per second, by unit (messages, bytes); routes without one have no series",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| {
                let limit = r.snapshot.config.rate_limit.unwrap_or_default();
                [("messages", limit.messages_per_s), ("bytes", limit.bytes_per_s)]
                    .into_iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(unit, v)| {
                        ([("route", label_value(&r.snapshot.config.name)), ("unit", unit.to_string())], v as i64)
                    })
            }),
        )?;
        self.rollout_families(&mut e)?;
        seconds_family(
            &mut e,
            "route_throttled_seconds",
            "Time messages of the route waited for its rate_limit",
            self.routes
                .iter()
                .filter(|r| r.snapshot.config.rate_limit.is_some())
                .map(|r| ([("route", label_value(&r.snapshot.config.name))], r.snapshot.throttled.as_secs_f64())),
        )?;

        // Per subscriber (connected ones only). Two streams may carry one name (two processes
        // with the same pod name, or a pod with two streams here): their values are added up,
        // since one label set twice makes Prometheus refuse the whole scrape.
        let subscriber_series = |pick: fn(&crate::subscriptions::SubscriberSnapshot) -> i64| {
            let mut series: BTreeMap<[(&str, String); 3], i64> = BTreeMap::new();
            for r in &self.routes {
                for sub in &r.snapshot.subscribers {
                    let labels = [
                        ("route", label_value(&r.snapshot.config.name)),
                        ("cohort", label_value(sub.cohort.as_deref().unwrap_or_default())),
                        ("subscriber", label_value(&sub.name)),
                    ];
                    *series.entry(labels).or_default() += pick(sub);
                }
            }
            series
        };
        family(
            &mut e,
            "subscriber_in_flight",
            "Deliveries out to the subscriber and not yet settled",
            MetricType::Gauge,
            subscriber_series(|s| i64::from(s.in_flight)),
        )?;
        family(
            &mut e,
            "subscriber_window",
            "The subscriber's in-flight window",
            MetricType::Gauge,
            subscriber_series(|s| i64::from(s.window)),
        )?;
        family(
            &mut e,
            "subscriber_rate_limit_messages",
            "Messages per second the subscriber's own rate limit lets through (Hello.rate_limit capped by the \
             route's; 0: no message rate of its own)",
            MetricType::Gauge,
            subscriber_series(|s| s.rate_limit.map_or(0, |l| l.messages_per_s as i64)),
        )?;

        // Per assigned partition.
        let partition_series = |pick: fn(&PartitionStatus) -> Option<i64>| {
            self.routes
                .iter()
                .flat_map(move |r| {
                    r.partitions.iter().filter_map(move |p| {
                        pick(p).map(|value| {
                            (
                                [
                                    ("route", label_value(&r.snapshot.config.name)),
                                    ("topic", label_value(&p.snapshot.tp.topic)),
                                    ("partition", p.snapshot.tp.partition.to_string()),
                                ],
                                value,
                            )
                        })
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "partition_lag",
            "Records of the partition the route's group has not committed of what it can read \
             (last stable offset - committed; an open transaction's records are not counted)",
            MetricType::Gauge,
            partition_series(|p| p.lag),
        )?;
        family(
            &mut e,
            "partition_paused",
            "1 while the partition is paused because its buffer is full",
            MetricType::Gauge,
            partition_series(|p| Some(i64::from(p.snapshot.paused))),
        )?;
        family(
            &mut e,
            "partition_buffered_records",
            "Records of the partition held un-committed",
            MetricType::Gauge,
            partition_series(|p| Some(p.snapshot.buffered as i64)),
        )?;
        family(
            &mut e,
            "partition_committed_offset",
            "The group's committed offset of the partition",
            MetricType::Gauge,
            partition_series(|p| p.snapshot.committed),
        )?;
        family(
            &mut e,
            "partition_high_watermark",
            "The partition's high watermark, from the consumer's statistics (up to a second old)",
            MetricType::Gauge,
            partition_series(|p| p.high_watermark),
        )?;
        family(
            &mut e,
            "partition_last_stable_offset",
            "Where the route's consumer can read the partition up to: below the first record of a \
             transaction still open under isolation.level=read_committed, else the high watermark",
            MetricType::Gauge,
            partition_series(|p| p.last_stable_offset),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_their_suffix() {
        let open = "# HELP fanout_acked Deliveries acked.\n# TYPE fanout_acked counter\n\
                    fanout_acked_total{route=\"r\"} 3\n# HELP fanout_ready 1 while ready.\n\
                    # TYPE fanout_ready gauge\nfanout_ready 1\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\n\
                    # UNIT x_seconds seconds\nx_seconds_count 0\n# EOF\n";
        let classic = to_classic(open);
        assert_eq!(
            classic,
            "# HELP fanout_acked_total Deliveries acked.\n# TYPE fanout_acked_total counter\n\
             fanout_acked_total{route=\"r\"} 3\n# HELP fanout_ready 1 while ready.\n# TYPE fanout_ready gauge\n\
             fanout_ready 1\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\nx_seconds_count 0\n"
        );
        assert!(wants_openmetrics(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(label_value("blue"), "blue");
        let forged = "x\"} 1\nfanout_ready 0\n# \\";
        let escaped = label_value(forged);
        assert_eq!(escaped, "x\\\"} 1\\nfanout_ready 0\\n# \\\\");
        assert!(!escaped.contains('\n'));
        // Every quote left in it is escaped.
        assert!(escaped.match_indices('"').all(|(i, _)| escaped[..i].ends_with('\\')));
    }

    #[test]
    fn series_carry_bounded_labels_only() {
        let stats = Arc::new(Stats::default());
        stats.histograms.delivery("r").observe(0.01);
        let text = render(&stats, Vec::new(), true, RolloutLooks::new());
        assert!(text.contains("fanout_ready 1\n"), "{text}");
        assert!(text.contains("fanout_delivery_latency_seconds_count{route=\"r\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let labels = line.split_once('{').map_or("", |(_, rest)| rest);
            for forbidden in ["offset=", "key=", "id="] {
                assert!(!labels.contains(forbidden), "unbounded label in {line}");
            }
        }
    }
}

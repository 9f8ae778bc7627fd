//! What fanoutctl prints: a table per view (replicas, routes, subscribers, partitions,
//! replays, dead letters), each showing every replica that answered and marking those that
//! did not, and JSON or YAML of the same answers.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::args::Output;
use crate::reach::Missing;
use crate::{table, CtlError, ReplicaStatus};
use fanout_proto::admin::{ListDeadLettersResponse, ReplayStatus, RouteStatus};

pub(crate) fn replays_table(replays: &[ReplayStatus]) -> String {
    let now = now_unix_ms();
    let rows: Vec<Vec<String>> = replays
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.route.clone(),
                r.state.clone(),
                format!("{}/{}", r.settled, r.total),
                r.ranges.len().to_string(),
                table::age((now - r.started_at_unix_ms) / 1000),
                if r.error.is_empty() { "-".into() } else { r.error.replace('\n', " ") },
            ]
        })
        .collect();
    table::render(&["ID", "ROUTE", "STATE", "SETTLED/TOTAL", "PARTITIONS", "AGE", "ERROR"], &rows)
}

/// A progress bar on stderr when it is a terminal; nothing otherwise (logs and pipes get the
/// outcome only).
pub(crate) struct ProgressBar {
    label: &'static str,
    tty: bool,
    drawn: bool,
}

impl ProgressBar {
    pub(crate) fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Self { label, tty: std::io::stderr().is_terminal(), drawn: false }
    }

    pub(crate) fn show(&mut self, done: u64, total: u64) {
        if !self.tty || total == 0 {
            return;
        }
        const WIDTH: u64 = 30;
        let filled = (done.min(total) * WIDTH / total) as usize;
        eprint!("\r{} [{}{}] {done}/{total}", self.label, "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        self.drawn = true;
    }

    pub(crate) fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

pub(crate) fn letters_table(listing: &ListDeadLettersResponse) -> String {
    let now = now_unix_ms();
    let rows: Vec<Vec<String>> = listing
        .letters
        .iter()
        .map(|l| {
            vec![
                l.partition.to_string(),
                l.offset.to_string(),
                format!("{}/{}/{}", l.origin_topic, l.origin_partition, l.origin_offset),
                l.attempts.to_string(),
                table::age((now - l.timestamp_unix_ms) / 1000),
                if l.redriven { "yes".into() } else { "no".into() },
                l.reason.replace('\n', " "),
            ]
        })
        .collect();
    let mut out = table::render(&["PARTITION", "OFFSET", "ORIGIN", "ATTEMPTS", "AGE", "REDRIVEN", "REASON"], &rows);
    out.push_str(&format!(
        "{}: {} letter(s), {} redriven, {} shown\n",
        listing.topic,
        listing.total,
        listing.redriven,
        listing.letters.len()
    ));
    out
}

pub(crate) fn render_changes<T: Serialize>(
    output: Output,
    answers: &[(String, T)],
    line: impl Fn(&str, &T) -> String,
) -> Result<String, CtlError> {
    #[derive(Serialize)]
    struct Answer<'a, T> {
        address: &'a str,
        #[serde(flatten)]
        answer: &'a T,
    }
    let all: Vec<Answer<'_, T>> = answers.iter().map(|(address, answer)| Answer { address, answer }).collect();
    match output {
        Output::Json => json(&all),
        Output::Yaml => yaml(&all),
        Output::Table => Ok(answers.iter().map(|(a, t)| line(a, t) + "\n").collect()),
    }
}

pub(crate) fn json<T: Serialize>(value: &T) -> Result<String, CtlError> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| CtlError(format!("cannot print JSON: {e}")))
}

pub(crate) fn yaml<T: Serialize>(value: &T) -> Result<String, CtlError> {
    serde_saphyr::to_string(value).map_err(|e| CtlError(format!("cannot print YAML: {e}")))
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Lines under a table for the replicas that did not answer, so a reader knows the counts
/// above leave them out.
pub(crate) fn missing_notes(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("no answer from {} ({}): not in the table above\n", m.address, m.failure.marker()))
        .collect()
}

pub(crate) fn replicas_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            let replica = r.status.replica.clone().unwrap_or_default();
            let subscribers: usize = r.status.routes.iter().map(|x| x.subscribers.len()).sum();
            vec![
                replica.name,
                r.address.clone(),
                replica.version,
                replica.config_generation,
                if replica.kafka_reachable { "reachable".into() } else { "unreachable".into() },
                if replica.ready { "yes".into() } else { "no".into() },
                r.status.routes.len().to_string(),
                subscribers.to_string(),
                table::age((now_unix_ms() - replica.started_at_unix_ms) / 1000),
                replica.config_source,
            ]
        })
        .collect();
    // A replica that did not answer has no name: its address and why, where its version would be.
    let marked: Vec<Vec<String>> =
        missing.iter().map(|m| vec!["-".to_string(), m.address.clone(), m.failure.marker()]).collect();
    table::render_marked(
        &[
            "REPLICA",
            "ADDRESS",
            "VERSION",
            "CONFIG GENERATION",
            "KAFKA",
            "READY",
            "ROUTES",
            "SUBSCRIBERS",
            "AGE",
            "SOURCE",
        ],
        &rows,
        &marked,
    )
}

/// A cohort in the routes table: its weight against its observed share and, when messages
/// wait for it (no subscriber on a route that holds), how many, so an operator sees which
/// cohort strands them.
pub(crate) fn cohort_cell(name: &str, weight_share: f64, observed_share: f64, held: u64) -> String {
    let held = if held == 0 { String::new() } else { format!(" held={held}") };
    format!("{name}={}/{}{held}", table::percent(weight_share), table::percent(observed_share))
}

/// Routes across replicas: each replica serves its own subscribers and partitions, so counts
/// add up; weights are the first replica's (the generations show whether all agree).
pub(crate) fn routes_table(all: &[ReplicaStatus]) -> String {
    let mut by_route: BTreeMap<&str, Vec<&RouteStatus>> = BTreeMap::new();
    for r in all {
        for route in &r.status.routes {
            by_route.entry(&route.name).or_default().push(route);
        }
    }
    let rows: Vec<Vec<String>> = by_route
        .iter()
        .map(|(name, parts)| {
            let first = parts[0];
            let recent_total: u64 = parts.iter().flat_map(|p| &p.cohorts).map(|c| c.delivered_last_minute).sum();
            let cohorts: Vec<String> = first
                .cohorts
                .iter()
                .map(|c| {
                    let alike = || parts.iter().flat_map(|p| &p.cohorts).filter(|x| x.name == c.name);
                    let recent: u64 = alike().map(|x| x.delivered_last_minute).sum();
                    let observed = if recent_total == 0 { 0.0 } else { recent as f64 / recent_total as f64 };
                    cohort_cell(&c.name, c.weight_share, observed, alike().map(|x| x.held).sum())
                })
                .collect();
            let lag: Option<i64> = parts.iter().flat_map(|p| &p.partitions).map(|p| p.lag).sum();
            vec![
                name.to_string(),
                first.group.clone(),
                first.delivery.clone(),
                if cohorts.is_empty() { "-".into() } else { cohorts.join(" ") },
                parts.iter().map(|p| p.subscribers.len()).sum::<usize>().to_string(),
                parts.iter().map(|p| p.partitions.len()).sum::<usize>().to_string(),
                table::or_dash(lag),
                parts.iter().map(|p| p.held).sum::<u64>().to_string(),
                parts.iter().map(|p| p.retrying).sum::<u64>().to_string(),
            ]
        })
        .collect();
    let table = table::render(
        &[
            "ROUTE",
            "GROUP",
            "DELIVERY",
            "COHORTS (WEIGHT/OBSERVED 1M)",
            "SUBSCRIBERS",
            "PARTITIONS",
            "LAG",
            "HELD",
            "RETRYING",
        ],
        &rows,
    );
    // Under the table, as the replicas found them (each asks on its own; said once).
    let unreadable: std::collections::BTreeSet<String> = by_route
        .iter()
        .flat_map(|(name, parts)| {
            parts
                .iter()
                .flat_map(|p| &p.unreadable_topics)
                .map(move |u| format!("route {name} cannot read topic {}: {}", u.topic, u.reason))
        })
        .collect();
    if unreadable.is_empty() {
        return table;
    }
    let lines: Vec<String> = unreadable.into_iter().collect();
    format!("{table}\n{}\n", lines.join("\n"))
}

/// Marked rows for tables whose first column is the replica: its address, and why it has no
/// rows.
pub(crate) fn missing_rows(missing: &[Missing]) -> Vec<Vec<String>> {
    missing.iter().map(|m| vec![m.address.clone(), m.failure.marker()]).collect()
}

pub(crate) fn subscribers_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let now = now_unix_ms();
    let mut rows = Vec::new();
    for r in all {
        let replica = r.status.replica.as_ref().map_or(r.address.clone(), |x| x.name.clone());
        for route in &r.status.routes {
            for s in &route.subscribers {
                rows.push(vec![
                    replica.clone(),
                    s.session.to_string(),
                    s.name.clone(),
                    if s.cohort.is_empty() { "-".into() } else { s.cohort.clone() },
                    s.window.to_string(),
                    s.in_flight.to_string(),
                    s.delivered.to_string(),
                    s.acked.to_string(),
                    table::age((now - s.connected_at_unix_ms) / 1000),
                    if s.draining { "draining".into() } else { "active".into() },
                ]);
            }
        }
    }
    let mut out = table::render_marked(
        &["REPLICA", "SESSION", "NAME", "COHORT", "WINDOW", "IN-FLIGHT", "DELIVERED", "ACKED", "CONNECTED", "STATE"],
        &rows,
        &missing_rows(missing),
    );
    out.push_str(&omitted_lines(all));
    out
}

/// A line per route and replica whose reply left subscribers out (its size bound), so a
/// cut-off list never passes for the whole one.
pub(crate) fn omitted_lines(all: &[ReplicaStatus]) -> String {
    let mut out = String::new();
    for r in all {
        for route in r.status.routes.iter().filter(|route| route.subscribers_omitted > 0) {
            out.push_str(&format!(
                "{}: {} more subscriber(s) of route {} not shown (the reply's size bound)\n",
                r.address, route.subscribers_omitted, route.name
            ));
        }
    }
    out
}

pub(crate) fn partitions_table(all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let mut rows = Vec::new();
    for r in all {
        let replica = r.status.replica.as_ref().map_or(r.address.clone(), |x| x.name.clone());
        for route in &r.status.routes {
            for p in &route.partitions {
                rows.push(vec![
                    replica.clone(),
                    route.name.clone(),
                    p.topic.clone(),
                    p.partition.to_string(),
                    table::or_dash(p.committed),
                    table::or_dash(p.high_watermark),
                    table::or_dash(p.last_stable_offset),
                    table::or_dash(p.lag),
                    if p.paused { "yes".into() } else { "no".into() },
                    p.buffered.to_string(),
                    p.head_of_line_moved.to_string(),
                ]);
            }
        }
    }
    table::render_marked(
        &[
            "REPLICA",
            "ROUTE",
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "HIGH-WATERMARK",
            "LAST-STABLE",
            "LAG",
            "PAUSED",
            "BUFFERED",
            "MOVED",
        ],
        &rows,
        &missing_rows(missing),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers_as;
    use crate::reach::Failure;
    use fanout_proto::admin::{Cohort, Replica as ReplicaInfo, StatusResponse};

    fn refused(address: &str) -> Missing {
        Missing { address: address.into(), failure: Failure::Unreachable("connection refused".into()) }
    }

    fn answered(address: &str, held: u64) -> ReplicaStatus {
        let cohorts = vec![
            Cohort { name: "blue".into(), weight: 0, weight_share: 0.0, ..Cohort::default() },
            Cohort { name: "green".into(), weight: 100, weight_share: 1.0, held, ..Cohort::default() },
        ];
        ReplicaStatus {
            address: address.into(),
            status: StatusResponse {
                replica: Some(ReplicaInfo { name: "gw-0".into(), version: "1.2.0".into(), ..ReplicaInfo::default() }),
                routes: vec![RouteStatus { name: "orders".into(), cohorts, ..RouteStatus::default() }],
            },
        }
    }

    #[test]
    fn subscribers_a_reply_left_out_are_counted_under_the_table() {
        let mut cut = answered("a:9090", 0);
        cut.status.routes[0].subscribers_omitted = 7;
        let out = subscribers_table(&[cut, answered("b:9090", 0)], &[]);
        assert!(
            out.ends_with("a:9090: 7 more subscriber(s) of route orders not shown (the reply's size bound)\n"),
            "{out}"
        );
        assert_eq!(out.matches("not shown").count(), 1, "{out}");
    }

    #[test]
    fn a_replica_that_did_not_answer_is_a_marked_row_and_a_note() {
        let out = replicas_table(&[answered("a:9090", 0)], &[refused("b:9090")]);
        let last = out.lines().last().expect("rows");
        assert_eq!(
            last.split_whitespace().collect::<Vec<_>>(),
            ["-", "b:9090", "UNREACHABLE:", "connection", "refused"]
        );
        assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("gw-0 ")), "{out}");
        assert_eq!(
            missing_notes(&[refused("b:9090")]),
            "no answer from b:9090 (UNREACHABLE: connection refused): not in the table above\n"
        );
        let subscribers = subscribers_table(&[answered("a:9090", 0)], &[refused("b:9090")]);
        assert!(subscribers.ends_with("b:9090    UNREACHABLE: connection refused\n"), "{subscribers}");
    }

    #[test]
    fn a_cohort_shows_what_it_holds_only_when_it_holds_something() {
        assert_eq!(cohort_cell("green", 1.0, 0.0, 3000), "green=100%/0% held=3000");
        assert_eq!(cohort_cell("blue", 0.5, 0.5, 0), "blue=50%/50%");
        let routes = routes_table(&[answered("a:9090", 1000), answered("b:9090", 2000)]);
        assert!(routes.contains("blue=0%/0% green=100%/0% held=3000"), "held adds up across replicas: {routes}");
    }

    #[test]
    fn an_unreadable_topic_is_said_once_under_the_routes_table() {
        let unreadable = || {
            let mut r = answered("a:9090", 0);
            r.status.routes[0].unreadable_topics = vec![fanout_proto::admin::UnreadableTopic {
                topic: "orders-v2".into(),
                reason: "it does not exist: create it".into(),
            }];
            r
        };
        let out = routes_table(&[unreadable(), unreadable()]);
        assert!(out.ends_with("\nroute orders cannot read topic orders-v2: it does not exist: create it\n"), "{out}");
        assert_eq!(out.matches("cannot read").count(), 1, "both replicas found it; said once: {out}");
        assert!(!routes_table(&[answered("a:9090", 0)]).contains("cannot read"));
    }

    #[test]
    fn json_lists_a_missing_replica_with_its_error() {
        let all = [answered("a:9090", 0)];
        let text = answers_as(Output::Json, &all, &[refused("b:9090")]).expect("serializes");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value[0]["address"], "a:9090");
        assert_eq!(value[0]["routes"][0]["name"], "orders");
        assert_eq!(value[1], serde_json::json!({"address": "b:9090", "error": "UNREACHABLE: connection refused"}));
    }
}

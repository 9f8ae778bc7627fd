//! `weights set` and `weights get`. A set is checked on every replica first (a dry run) and
//! made only when all of them accept it, so a typo'd cohort or a share for a cohort with no
//! subscriber (which would strand messages) is refused everywhere before it changes anywhere.
//! A get shows, per cohort, its weight and on each replica its subscribers and held messages.

use std::collections::BTreeMap;

use serde::Serialize;

use super::args::Output;
use super::change::{everywhere, Change};
use super::reach::{ask_all, authorized, Missing, Replica};
use super::{table, CtlError, Outcome, ReplicaStatus};
use fanout_proto::admin::{Cohort, SetWeightsRequest, SetWeightsResponse};

/// What `weights set` adds to a refusal that `--force` would override.
const FORCE_HINT: &str = "(add --force to change the weights anyway)";

/// `weights set`: a dry run on every replica, then, when all accept, the change on every one.
pub(super) async fn set(
    cli: &super::Cli,
    replicas: &[Replica],
    flag: &str,
    route: &str,
    weights: &[(String, u32)],
    force: bool,
) -> Result<Outcome, CtlError> {
    let weights: BTreeMap<String, u32> = weights.iter().cloned().collect();
    let token = cli.authorization()?;
    // References, so the `move` closure below (one request per replica) copies them only.
    let weights = &weights;
    let token = token.as_ref();
    let ask = |dry_run: bool| {
        ask_all(replicas, move |mut client| {
            let request = SetWeightsRequest { route: route.to_string(), weights: weights.clone(), force, dry_run };
            let request = authorized(request, token);
            async move { client.set_weights(request).await }
        })
    };
    let shown: Vec<String> = weights.iter().map(|(c, w)| format!("{c}={w}")).collect();
    let line = |address: &str, a: &SetWeightsResponse| {
        format!(
            "{address}: route {route} weights set to {} (config generation {}, {})",
            shown.join(" "),
            a.config_generation,
            a.config_source
        )
    };
    let change = Change { what: "weights", force_hint: Some(FORCE_HINT) };
    everywhere(cli.output, flag, change, ask, line).await
}

/// One replica's weights of a route, as `weights get -o json|yaml` prints them.
#[derive(Serialize)]
struct ReplicaWeights<'a> {
    address: &'a str,
    replica: &'a str,
    config_generation: &'a str,
    cohorts: &'a [Cohort],
}

/// `weights get`'s output, from each replica's Status of the route.
pub(super) fn show(
    output: Output,
    route: &str,
    all: &[ReplicaStatus],
    missing: &[Missing],
) -> Result<String, CtlError> {
    if !all.iter().any(|r| r.status.routes.iter().any(|x| x.name == route)) {
        return Err(super::no_such_route(route));
    }
    match output {
        Output::Table => Ok(weights_table(route, all, missing)),
        Output::Json | Output::Yaml => {
            let answered = all.iter().map(|r| {
                let replica = r.status.replica.as_ref();
                ReplicaWeights {
                    address: &r.address,
                    replica: replica.map_or("", |x| x.name.as_str()),
                    config_generation: replica.map_or("", |x| x.config_generation.as_str()),
                    cohorts: r.status.routes.iter().find(|x| x.name == route).map_or(&[], |x| &x.cohorts),
                }
            });
            super::answers_as(output, answered, missing)
        }
    }
}

/// A row per cohort and replica, cohorts together: its weight and share there, and there its
/// subscribers and the messages held for it (a positive weight with no subscriber strands them
/// on a route that holds). Under the table, the replicas that disagree and those that did not
/// answer.
fn weights_table(route: &str, all: &[ReplicaStatus], missing: &[Missing]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for cohort in all.iter().flat_map(|r| cohorts_of(r, route)) {
        if !names.contains(&cohort.name.as_str()) {
            names.push(&cohort.name);
        }
    }
    let mut rows = Vec::new();
    for name in names {
        for r in all {
            let Some(c) = cohorts_of(r, route).iter().find(|c| c.name == name) else { continue };
            rows.push(vec![
                c.name.clone(),
                c.weight.to_string(),
                table::percent(c.weight_share),
                r.status.replica.as_ref().map_or_else(|| "-".to_string(), |x| x.name.clone()),
                r.address.clone(),
                c.subscribers.to_string(),
                c.held.to_string(),
            ]);
        }
    }
    let mut out = table::render(&["COHORT", "WEIGHT", "SHARE", "REPLICA", "ADDRESS", "SUBSCRIBERS", "HELD"], &rows);
    if let Some(line) = disagreement(route, all) {
        out.push_str(&line);
    }
    out.push_str(&super::missing_notes(missing));
    out
}

fn cohorts_of<'a>(r: &'a ReplicaStatus, route: &str) -> &'a [Cohort] {
    r.status.routes.iter().find(|x| x.name == route).map_or(&[], |x| &x.cohorts)
}

/// A line when the replicas do not run the same weights (a change reached some of them only).
fn disagreement(route: &str, all: &[ReplicaStatus]) -> Option<String> {
    let each: Vec<(&str, String)> = all
        .iter()
        .filter(|r| r.status.routes.iter().any(|x| x.name == route))
        .map(|r| {
            let weights: Vec<String> =
                cohorts_of(r, route).iter().map(|c| format!("{}={}", c.name, c.weight)).collect();
            (r.address.as_str(), weights.join(" "))
        })
        .collect();
    if each.windows(2).all(|w| w[0].1 == w[1].1) {
        return None;
    }
    let shown: Vec<String> = each.iter().map(|(address, weights)| format!("{address}: {weights}")).collect();
    Some(format!(
        "the replicas disagree on the weights of {route} ({}): set them again so all agree\n",
        shown.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::Failure;
    use fanout_proto::admin::{Replica as ReplicaInfo, RouteStatus, StatusResponse};

    fn cohort(name: &str, weight: u32, subscribers: u32, held: u64) -> Cohort {
        Cohort { name: name.into(), weight, weight_share: 0.5, subscribers, held, ..Cohort::default() }
    }

    fn replica(address: &str, cohorts: Vec<Cohort>) -> ReplicaStatus {
        ReplicaStatus {
            address: address.into(),
            status: StatusResponse {
                replica: Some(ReplicaInfo { name: format!("gw-{}", &address[..1]), ..ReplicaInfo::default() }),
                routes: vec![RouteStatus { name: "orders".into(), cohorts, ..RouteStatus::default() }],
            },
        }
    }

    #[test]
    fn the_weights_table_shows_subscribers_and_held_per_cohort_and_replica() {
        let all = [
            replica("a:9090", vec![cohort("blue", 50, 1, 0), cohort("green", 50, 0, 3000)]),
            replica("b:9090", vec![cohort("blue", 50, 2, 0), cohort("green", 50, 1, 0)]),
        ];
        let missing =
            [Missing { address: "c:9090".into(), failure: Failure::Unreachable("connection refused".into()) }];
        let out = weights_table("orders", &all, &missing);
        let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["COHORT", "WEIGHT", "SHARE", "REPLICA", "ADDRESS", "SUBSCRIBERS", "HELD"]);
        assert_eq!(rows[1], ["blue", "50", "50%", "gw-a", "a:9090", "1", "0"]);
        assert_eq!(rows[2], ["blue", "50", "50%", "gw-b", "b:9090", "2", "0"]);
        assert_eq!(rows[3], ["green", "50", "50%", "gw-a", "a:9090", "0", "3000"]);
        assert_eq!(rows[4], ["green", "50", "50%", "gw-b", "b:9090", "1", "0"]);
        assert!(out.lines().nth(5).is_some_and(|l| l.contains("c:9090") && l.contains("UNREACHABLE")), "{out}");
        assert!(!out.contains("disagree"), "{out}");
    }

    #[test]
    fn replicas_running_different_weights_are_pointed_out() {
        let all = [
            replica("a:9090", vec![cohort("blue", 0, 1, 0), cohort("green", 100, 1, 0)]),
            replica("b:9090", vec![cohort("blue", 50, 1, 0), cohort("green", 50, 1, 0)]),
        ];
        let line = disagreement("orders", &all).expect("they disagree");
        assert!(line.contains("a:9090: blue=0 green=100; b:9090: blue=50 green=50"), "{line}");
    }
}

//! `rate-limit set`, `rate-limit clear` and `rate-limit get`: a route's `rate_limit`, changed
//! on every replica or none (as weights are), and shown per replica with how long it has held
//! the route's messages back there.

use serde::Serialize;

use super::args::Output;
use super::change::{everywhere, Change};
use super::reach::{ask_all, authorized, Missing, Replica};
use super::{table, CtlError, Outcome, ReplicaStatus};
use fanout_proto::admin::{RateLimit, SetRateLimitRequest, SetRateLimitResponse};

/// `rate-limit set` (a limit) or `rate-limit clear` (None): a dry run on every replica, then,
/// when all accept, the change on every one.
pub(super) async fn set(
    cli: &super::Cli,
    replicas: &[Replica],
    flag: &str,
    route: &str,
    limit: Option<RateLimit>,
) -> Result<Outcome, CtlError> {
    let token = cli.authorization()?;
    let token = token.as_ref();
    let ask = |dry_run: bool| {
        ask_all(replicas, move |mut client| {
            let request = SetRateLimitRequest { route: route.to_string(), rate_limit: limit, dry_run };
            let request = authorized(request, token);
            async move { client.set_rate_limit(request).await }
        })
    };
    let shown = limit.map_or_else(|| "removed".to_string(), |l| format!("set to {}", describe(Some(&l))));
    let line = |address: &str, a: &SetRateLimitResponse| {
        format!(
            "{address}: route {route} rate limit {shown} (config generation {}, {})",
            a.config_generation, a.config_source
        )
    };
    everywhere(cli.output, flag, Change { what: "rate limit", force_hint: None }, ask, line).await
}

/// A limit as a person reads it: `1000 msg/s, 1048576 B/s, burst 100`, or `none`.
pub(super) fn describe(limit: Option<&RateLimit>) -> String {
    let Some(l) = limit else { return "none".into() };
    let parts: Vec<String> = [(l.messages_per_s, " msg/s"), (l.bytes_per_s, " B/s")]
        .into_iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, unit)| format!("{v}{unit}"))
        .chain((l.burst > 0).then(|| format!("burst {}", l.burst)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// One replica's limit of a route, as `rate-limit get -o json|yaml` prints it.
#[derive(Serialize)]
struct ReplicaLimit<'a> {
    address: &'a str,
    replica: &'a str,
    config_generation: &'a str,
    rate_limit: Option<&'a RateLimit>,
    throttled_seconds: f64,
}

/// `rate-limit get`'s output, from each replica's Status of the route: per replica, the
/// limit and the time it has held the route's messages back.
pub(super) fn show(
    output: Output,
    route: &str,
    all: &[ReplicaStatus],
    missing: &[Missing],
) -> Result<String, CtlError> {
    let routes: Vec<(&ReplicaStatus, &fanout_proto::admin::RouteStatus)> =
        all.iter().filter_map(|r| r.status.routes.iter().find(|x| x.name == route).map(|x| (r, x))).collect();
    if routes.is_empty() {
        return Err(super::no_such_route(route));
    }
    fn replica(r: &ReplicaStatus) -> Option<&fanout_proto::admin::Replica> {
        r.status.replica.as_ref()
    }
    match output {
        Output::Table => {
            let rows: Vec<Vec<String>> = routes
                .iter()
                .map(|(r, x)| {
                    vec![
                        replica(r).map_or_else(|| "-".to_string(), |i| i.name.clone()),
                        r.address.clone(),
                        describe(x.rate_limit.as_ref()),
                        format!("{:.1}", x.throttled_seconds),
                    ]
                })
                .collect();
            let mut out = table::render(&["REPLICA", "ADDRESS", "RATE LIMIT", "THROTTLED (S)"], &rows);
            out.push_str(&super::missing_notes(missing));
            Ok(out)
        }
        Output::Json | Output::Yaml => {
            let answered = routes.iter().map(|(r, x)| ReplicaLimit {
                address: &r.address,
                replica: replica(r).map_or("", |i| i.name.as_str()),
                config_generation: replica(r).map_or("", |i| i.config_generation.as_str()),
                rate_limit: x.rate_limit.as_ref(),
                throttled_seconds: x.throttled_seconds,
            });
            super::answers_as(output, answered, missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_reads_as_its_set_parts() {
        let l = RateLimit { messages_per_s: 1_000, bytes_per_s: 0, burst: 50 };
        assert_eq!(describe(Some(&l)), "1000 msg/s, burst 50");
        assert_eq!(describe(Some(&RateLimit { bytes_per_s: 2_048, ..RateLimit::default() })), "2048 B/s");
        assert_eq!(describe(None), "none");
    }
}

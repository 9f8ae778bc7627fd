//! An operator's weight change: whether it would strand messages ([`guard`]), and rewriting
//! a route's weights (or its rate limit) in the config file's text, where only that entry of
//! the route changes and every comment and every other line stays as the operator wrote it.

use std::collections::{BTreeMap, BTreeSet};

use toml_edit::{DocumentMut, InlineTable, Item, Table, Value};

use crate::config::rate_limit::RateLimit;
use crate::rollout::Rollout;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the config file does not parse as TOML: {0}")]
    Parse(String),
    #[error("route `{0}` is not in the config file")]
    NoRoute(String),
    /// A rollout's move was decided from a record that has changed since (another replica or
    /// an operator moved it first).
    #[error("route `{0}`'s rollout changed meanwhile; look again")]
    RolloutMoved(String),
}

/// What this replica knows of a route when a weight change comes.
#[derive(Debug, Clone, Default)]
pub struct RouteView {
    pub route: String,
    /// This replica's name, for the refusal (another replica may have subscribers).
    pub replica: String,
    pub split_label: Option<String>,
    /// `empty_cohort = "hold"`: a cohort's share waits for a subscriber of its own.
    pub holds: bool,
    /// The weights now.
    pub weights: BTreeMap<String, u32>,
    /// Open, non-draining subscribers per cohort on this replica.
    pub subscribers: BTreeMap<String, u32>,
    /// Cohorts the route has seen otherwise: delivered to since start, or the split label's
    /// values among the route's pods.
    pub seen: BTreeSet<String>,
}

/// Why a weight change was refused: each would strand messages, and each is what an operator
/// types by mistake during a cutover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "cohort `{cohort}` is not one route `{route}` has seen: its weights name {known} and no subscriber or pod \
         has {label}={cohort}; check the spelling (the other cohorts' weights would be removed), or force the change"
    )]
    UnknownCohort { route: String, cohort: String, label: String, known: String },
    #[error(
        "cohort `{cohort}` would get {percent}% of route `{route}`'s messages but has no subscriber on replica \
         {replica}: they would be held (empty_cohort = \"hold\") until one subscribes; start {label}={cohort} \
         subscribers first, or force the change"
    )]
    EmptyCohort { route: String, cohort: String, label: String, percent: String, replica: String },
}

/// Refuses a change to `new` weights that names a cohort the route has never seen (a typo
/// replaces every weight), or that gives a share to a cohort with no subscriber here on a
/// route that holds (the share would wait, and the partitions with it). A pure decision on
/// what the replica sees; `force` skips it.
pub fn guard(view: &RouteView, new: &BTreeMap<String, u32>) -> Result<(), Refusal> {
    let label = view.split_label.clone().unwrap_or_else(|| "<split_label>".into());
    let known = |cohort: &String| {
        view.weights.contains_key(cohort) || view.subscribers.contains_key(cohort) || view.seen.contains(cohort)
    };
    if let Some(cohort) = new.keys().find(|c| !known(c)) {
        let names: Vec<&str> = view.weights.keys().map(String::as_str).collect();
        return Err(Refusal::UnknownCohort {
            route: view.route.clone(),
            cohort: cohort.clone(),
            label,
            known: if names.is_empty() { "no cohort".into() } else { names.join(", ") },
        });
    }
    let total: u64 = new.values().map(|w| u64::from(*w)).sum();
    if !view.holds || total == 0 {
        return Ok(());
    }
    let empty = new.iter().find(|(c, w)| **w > 0 && view.subscribers.get(*c).copied().unwrap_or(0) == 0);
    if let Some((cohort, weight)) = empty {
        let percent = u64::from(*weight) as f64 * 100.0 / total as f64;
        return Err(Refusal::EmptyCohort {
            route: view.route.clone(),
            cohort: cohort.clone(),
            label,
            percent: format!("{percent:.0}"),
            replica: view.replica.clone(),
        });
    }
    Ok(())
}

/// `text` with route `route`'s weights replaced by `weights` (as an inline table).
pub fn set_weights(text: &str, route: &str, weights: &BTreeMap<String, u32>) -> Result<String, EditError> {
    let mut table = InlineTable::new();
    for (cohort, weight) in weights {
        table.insert(cohort, Value::from(i64::from(*weight)));
    }
    set_entry(text, route, "weights", Some(table), None)
}

/// `text` with route `route`'s `rate_limit` replaced by `limit` (as an inline table of the
/// fields that are set), or removed when `limit` is None.
pub fn set_rate_limit(text: &str, route: &str, limit: Option<&RateLimit>) -> Result<String, EditError> {
    let table = limit.map(|l| {
        let mut table = InlineTable::new();
        for (field, value) in [("messages_per_s", l.messages_per_s), ("bytes_per_s", l.bytes_per_s), ("burst", l.burst)]
        {
            if value > 0 {
                // Limits are validated to at most 2^40, well inside TOML's integers.
                table.insert(field, Value::from(i64::try_from(value).unwrap_or(i64::MAX)));
            }
        }
        table
    });
    set_entry(text, route, "rate_limit", table, None)
}

/// `text` with route `route`'s rollout record replaced by `rollout` and its weights by
/// `weights`, in one edit, provided the record there is still `expected` (a move decided from
/// a record another replica or an operator has changed since is refused, not applied twice).
pub fn set_rollout(
    text: &str,
    route: &str,
    expected: Option<&Rollout>,
    rollout: &Rollout,
    weights: &BTreeMap<String, u32>,
) -> Result<String, EditError> {
    if rollout_in(text, route)?.as_ref() != expected {
        return Err(EditError::RolloutMoved(route.to_string()));
    }
    let text = set_weights(text, route, weights)?;
    let value = toml::Value::try_from(rollout).map_err(|e| EditError::Parse(e.to_string()))?;
    let (Value::InlineTable(one_line), Some(fields)) = (inline(&value), value.as_table()) else {
        return Err(EditError::Parse("a rollout record is a table".into()));
    };
    // Under a `[[routes]]` table, a `[routes.rollout]` table of its own, its history one
    // event a line, for the operator who reads the file.
    let mut table = Table::new();
    for (key, field) in fields {
        match (key.as_str(), field.as_table()) {
            ("progress", Some(progress)) => {
                let mut sub = Table::new();
                for (k, v) in progress {
                    let mut v = inline(v);
                    if let Value::Array(events) = &mut v {
                        for event in events.iter_mut() {
                            event.decor_mut().set_prefix("\n  ");
                        }
                        events.set_trailing("\n");
                        events.set_trailing_comma(true);
                    }
                    sub.insert(k, Item::Value(v));
                }
                table.insert(key, Item::Table(sub));
            }
            _ => {
                table.insert(key, Item::Value(inline(field)));
            }
        }
    }
    set_entry(&text, route, "rollout", Some(one_line), Some(table))
}

/// Route `route`'s rollout record in `text`, if any.
fn rollout_in(text: &str, route: &str) -> Result<Option<Rollout>, EditError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| EditError::Parse(e.to_string()))?;
    let routes = doc.get("routes").and_then(toml::Value::as_array).ok_or_else(|| EditError::NoRoute(route.into()))?;
    let found = routes
        .iter()
        .find(|r| r.get("name").and_then(toml::Value::as_str) == Some(route))
        .ok_or_else(|| EditError::NoRoute(route.into()))?;
    match found.get("rollout") {
        None => Ok(None),
        Some(value) => value.clone().try_into().map(Some).map_err(|e: toml::de::Error| EditError::Parse(e.to_string())),
    }
}

/// A TOML value as an inline value of the editable document (tables inline).
fn inline(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(inline).collect()),
        toml::Value::Table(t) => {
            let mut table = InlineTable::new();
            for (k, v) in t {
                table.insert(k, inline(v));
            }
            Value::InlineTable(table)
        }
    }
}

/// `text` with entry `key` of route `route` replaced by `table`, or removed. Routes are
/// `[[routes]]` tables or an inline `routes = [{ ... }]` array.
fn set_entry(
    text: &str,
    route: &str,
    key: &str,
    table: Option<InlineTable>,
    as_table: Option<Table>,
) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.to_string()))?;
    let named = |name: Option<&str>| name == Some(route);
    let routes = doc.get_mut("routes").ok_or_else(|| EditError::NoRoute(route.to_string()))?;
    if let Some(tables) = routes.as_array_of_tables_mut() {
        let found = tables.iter_mut().find(|t| named(t.get("name").and_then(Item::as_str)));
        let t = found.ok_or_else(|| EditError::NoRoute(route.to_string()))?;
        match (table, as_table) {
            (_, Some(as_table)) => t.insert(key, Item::Table(as_table)),
            (Some(table), None) => t.insert(key, Item::Value(Value::InlineTable(table))),
            (None, None) => t.remove(key),
        };
    } else if let Some(array) = routes.as_array_mut() {
        let found = array
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .find(|t| named(t.get("name").and_then(Value::as_str)));
        let t = found.ok_or_else(|| EditError::NoRoute(route.to_string()))?;
        match table {
            Some(table) => t.insert(key, Value::InlineTable(table)),
            None => t.remove(key),
        };
    } else {
        return Err(EditError::NoRoute(route.to_string()));
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    const FILE: &str = r#"# the gateway
[kafka]
bootstrap_servers = "k:9092" # brokers

[[routes]]
name = "audit"
topics = ["orders"]

[[routes]]
name = "orders"
topics = ["orders"]
split_label = "track"
weights = { blue = 100, green = 0 } # before the cutover
"#;

    #[test]
    fn only_the_routes_weights_change_and_comments_stay() {
        let out = set_weights(FILE, "orders", &weights(&[("blue", 0), ("green", 100)])).expect("edits");
        assert!(out.contains("weights = { blue = 0, green = 100 }"), "{out}");
        assert!(out.contains("# the gateway") && out.contains("# brokers"), "{out}");
        assert_eq!(out.replace("blue = 0, green = 100", "blue = 100, green = 0").lines().count(), FILE.lines().count());
        let audit = out.split("[[routes]]").nth(1).expect("audit table");
        assert!(!audit.contains("weights"), "the other route is untouched: {audit}");
    }

    #[test]
    fn a_weights_sub_table_and_inline_routes_are_rewritten_too() {
        let sub = "[kafka]\nbootstrap_servers = \"k\"\n[[routes]]\nname = \"r\"\ntopics = [\"t\"]\nsplit_label = \"track\"\n[routes.weights]\nblue = 1\n";
        let out = set_weights(sub, "r", &weights(&[("green", 5)])).expect("edits");
        let parsed: toml::Table = toml::from_str(&out).expect("still TOML");
        let w = &parsed["routes"].as_array().expect("routes")[0]["weights"];
        assert_eq!(w.as_table().map(|t| t.len()), Some(1), "{out}");
        assert_eq!(w["green"].as_integer(), Some(5), "{out}");

        let inline = "routes = [{ name = \"r\", topics = [\"t\"] }]\n[kafka]\nbootstrap_servers = \"k\"\n";
        let out = set_weights(inline, "r", &weights(&[("a", 1)])).expect("edits");
        assert!(out.contains("weights = { a = 1 }"), "{out}");
    }

    #[test]
    fn a_rate_limit_is_set_replaced_and_removed_with_comments_kept() {
        let limit = RateLimit { messages_per_s: 1_000, bytes_per_s: 0, burst: 50 };
        let out = set_rate_limit(FILE, "orders", Some(&limit)).expect("edits");
        assert!(out.contains("rate_limit = { messages_per_s = 1000, burst = 50 }"), "{out}");
        assert!(out.contains("# before the cutover"), "{out}");
        let sub =
            out.replace("rate_limit = { messages_per_s = 1000, burst = 50 }", "[routes.rate_limit]\nbytes_per_s = 9");
        let out = set_rate_limit(&sub, "orders", None).expect("edits");
        assert!(!out.contains("rate_limit") && !out.contains("bytes_per_s"), "{out}");
        assert_eq!(out.lines().count(), FILE.lines().count(), "{out}");
        assert_eq!(set_rate_limit(FILE, "gone", None), Err(EditError::NoRoute("gone".into())));
    }

    #[test]
    fn a_rollout_is_written_with_its_weights_and_only_over_the_record_it_was_decided_from() {
        use crate::rollout::steps::{Input, Plan, Step};
        let plan = Plan {
            stable: "blue".into(),
            candidate: "green".into(),
            steps: vec![Step { weight: 10, hold: std::time::Duration::from_secs(60), min_deliveries: 0 }],
        };
        let (started, _) = Rollout::start(plan, crate::rollout::Analysis::default(), 1_000);
        let w = weights(&[("blue", 90), ("green", 10)]);
        let out = set_rollout(FILE, "orders", None, &started, &w).expect("edits");
        assert!(out.contains("weights = { blue = 90, green = 10 }"), "{out}");
        assert!(out.contains("# the gateway") && out.contains("# brokers"), "{out}");
        assert_eq!(rollout_in(&out, "orders"), Ok(Some(started.clone())), "reads back as written");
        assert_eq!(rollout_in(&out, "audit"), Ok(None));
        // Written again from a record that is not there any more: refused.
        assert_eq!(set_rollout(&out, "orders", None, &started, &w), Err(EditError::RolloutMoved("orders".into())));
        let mut paused = started.clone();
        paused.decide(Input::Pause, 2_000);
        let out = set_rollout(&out, "orders", Some(&started), &paused, &w).expect("edits");
        assert_eq!(rollout_in(&out, "orders"), Ok(Some(paused)));
        let config = crate::config::Config::parse(&out).expect("the whole file still loads");
        assert!(config.routes[1].rollout.is_some());
    }

    fn view() -> RouteView {
        RouteView {
            route: "orders".into(),
            replica: "gw-0".into(),
            split_label: Some("track".into()),
            holds: true,
            weights: weights(&[("blue", 100), ("green", 0)]),
            subscribers: [("blue".to_string(), 2)].into(),
            seen: BTreeSet::new(),
        }
    }

    #[test]
    fn a_cohort_the_route_never_saw_is_refused_naming_the_known_ones() {
        let refusal = guard(&view(), &weights(&[("purple", 10)])).expect_err("typo");
        assert_eq!(
            refusal.to_string(),
            "cohort `purple` is not one route `orders` has seen: its weights name blue, green and no subscriber or \
             pod has track=purple; check the spelling (the other cohorts' weights would be removed), or force the change"
        );
        // Known from a pod or an earlier subscriber: not a typo.
        let seen = RouteView { seen: ["canary".to_string()].into(), ..view() };
        assert_eq!(guard(&seen, &weights(&[("blue", 90), ("canary", 0)])), Ok(()));
    }

    #[test]
    fn a_share_for_a_cohort_without_subscribers_is_refused_on_a_route_that_holds() {
        let refusal = guard(&view(), &weights(&[("blue", 0), ("green", 100)])).expect_err("no green subscriber");
        assert!(
            matches!(&refusal, Refusal::EmptyCohort { cohort, percent, .. } if cohort == "green" && percent == "100")
        );
        assert!(refusal.to_string().contains("no subscriber on replica gw-0"), "{refusal}");
        // A weight of 0 for it strands nothing; a spilling route sends its share elsewhere.
        assert_eq!(guard(&view(), &weights(&[("blue", 100), ("green", 0)])), Ok(()));
        assert_eq!(guard(&RouteView { holds: false, ..view() }, &weights(&[("green", 100)])), Ok(()));
        // With a green subscriber the cutover goes.
        let ready = RouteView { subscribers: [("blue".to_string(), 2), ("green".to_string(), 1)].into(), ..view() };
        assert_eq!(guard(&ready, &weights(&[("blue", 0), ("green", 100)])), Ok(()));
    }

    #[test]
    fn an_unknown_route_or_broken_text_is_an_error() {
        assert_eq!(set_weights(FILE, "billing", &weights(&[])), Err(EditError::NoRoute("billing".into())));
        assert!(matches!(set_weights("routes = [", "r", &weights(&[])), Err(EditError::Parse(_))));
    }
}

//! Rewriting a route's weights in the config file's text: only the route's `weights` entry
//! changes, every comment and every other line stays as the operator wrote it.

use std::collections::BTreeMap;

use toml_edit::{DocumentMut, InlineTable, Item, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the config file does not parse as TOML: {0}")]
    Parse(String),
    #[error("route `{0}` is not in the config file")]
    NoRoute(String),
}

/// `text` with route `route`'s weights replaced by `weights` (as an inline table). Routes are
/// `[[routes]]` tables or an inline `routes = [{ ... }]` array.
pub fn set_weights(text: &str, route: &str, weights: &BTreeMap<String, u32>) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.to_string()))?;
    let mut table = InlineTable::new();
    for (cohort, weight) in weights {
        table.insert(cohort, Value::from(i64::from(*weight)));
    }
    let named = |name: Option<&str>| name == Some(route);
    let routes = doc.get_mut("routes").ok_or_else(|| EditError::NoRoute(route.to_string()))?;
    if let Some(tables) = routes.as_array_of_tables_mut() {
        let found = tables.iter_mut().find(|t| named(t.get("name").and_then(Item::as_str)));
        let t = found.ok_or_else(|| EditError::NoRoute(route.to_string()))?;
        t.insert("weights", Item::Value(Value::InlineTable(table)));
    } else if let Some(array) = routes.as_array_mut() {
        let found = array
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .find(|t| named(t.get("name").and_then(Value::as_str)));
        let t = found.ok_or_else(|| EditError::NoRoute(route.to_string()))?;
        t.insert("weights", Value::InlineTable(table));
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
    fn an_unknown_route_or_broken_text_is_an_error() {
        assert_eq!(set_weights(FILE, "billing", &weights(&[])), Err(EditError::NoRoute("billing".into())));
        assert!(matches!(set_weights("routes = [", "r", &weights(&[])), Err(EditError::Parse(_))));
    }
}

//! Plain words for config problems: serde's and the TOML parser's messages rewritten for an
//! operator ("expected a whole number from 0 to 4294967295", not "expected u32"), the
//! did-you-mean suggestion for a misspelt field or value, and ordinals that say which
//! `[[routes]]` table `routes[1]` is. Pure functions; [`super::diagnose`] places the results.

/// A problem in plain words, with a hint when one helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plain {
    pub message: String,
    pub help: Option<String>,
}

impl Plain {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), help: None }
    }
}

/// What serde said about one field, sorted by what the diagnosis does next with the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Complaint {
    /// A key the table does not know; `allowed` are the table's fields as serde lists them.
    UnknownField { name: String, allowed: Vec<String> },
    /// A required key that is absent.
    MissingField { name: String },
    /// Anything else: a wrong type, a value out of range, an unknown enum value.
    BadValue(Plain),
}

/// Sorts serde's message for one field into a [`Complaint`], rewording it on the way. The
/// allowed names come from serde's own message, so the suggestions can never drift from the
/// structs (no second list of field names to keep in step).
pub(crate) fn complaint(raw: &str) -> Complaint {
    if let Some(rest) = raw.strip_prefix("unknown field ") {
        let (name, allowed) = split_listing(rest);
        return Complaint::UnknownField { name, allowed };
    }
    if let Some(rest) = raw.strip_prefix("missing field ") {
        return Complaint::MissingField { name: rest.trim_matches('`').to_string() };
    }
    Complaint::BadValue(value_message(raw))
}

/// The message for a key the table does not know, and the hint: the near miss, else the list.
pub(crate) fn unknown_field(name: &str, allowed: &[String]) -> Plain {
    let help = match suggest(name, allowed.iter().map(String::as_str)) {
        Some(near) => format!("did you mean `{near}`?"),
        None if allowed.is_empty() => "this table takes no fields".to_string(),
        None => format!("the fields allowed here are {}", backticked(allowed)),
    };
    Plain { message: format!("unknown field `{name}`"), help: Some(help) }
}

/// Rewrites a value error (`invalid type: string "lots", expected u32`, `unknown variant ...`).
fn value_message(raw: &str) -> Plain {
    if let Some(rest) = raw.strip_prefix("unknown variant ") {
        let (value, allowed) = split_listing(rest);
        let quoted: Vec<String> = allowed.iter().map(|v| format!("\"{v}\"")).collect();
        return Plain {
            message: format!("\"{value}\" is not one of the allowed values: {}", quoted.join(", ")),
            help: suggest(&value, allowed.iter().map(String::as_str)).map(|near| format!("did you mean \"{near}\"?")),
        };
    }
    // toml's message for an enum given a number, a list or a table.
    if raw == "wanted string or table" {
        return Plain::new("expected one of the allowed values, as a string in quotes");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = raw.strip_prefix(prefix).and_then(|rest| rest.rsplit_once(", expected ")) {
            return Plain::new(format!("expected {}, found {}", expected_in_words(expected), found_in_words(found)));
        }
    }
    Plain::new(raw)
}

/// A syntax error's message, without the parser's own rendering of the position (the report
/// places it).
pub(crate) fn syntax(raw: &str) -> Plain {
    let message = raw.trim_end_matches('\n');
    let help = match message {
        m if m.starts_with("duplicate key") => Some("each key may appear once per table".to_string()),
        m if m.starts_with("invalid basic string") || m.contains("expected `\"`") => {
            Some("a string needs its closing quote on the same line (or use \"\"\" for several lines)".to_string())
        }
        _ => None,
    };
    Plain { message: format!("TOML syntax: {message}"), help }
}

/// serde's name of the type it wanted, in words.
fn expected_in_words(expected: &str) -> String {
    match expected {
        "u8" => range_of(u8::MAX.into()),
        "u16" => range_of(u16::MAX.into()),
        "u32" => range_of(u32::MAX.into()),
        "u64" | "usize" | "u128" => "a whole number, 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a string" => "a string in quotes".to_string(),
        "a boolean" => "true or false".to_string(),
        "a character" => "a single character in quotes".to_string(),
        "a sequence" => "a list, like [\"a\", \"b\"]".to_string(),
        "a map" => "a table, like { key = \"value\" }".to_string(),
        e if e.starts_with("struct ") => "a table".to_string(),
        e if e.starts_with("enum ") => "one of the allowed values, as a string in quotes".to_string(),
        other => other.to_string(),
    }
}

fn range_of(max: u64) -> String {
    format!("a whole number from 0 to {max}")
}

/// serde's description of the value it got (`string "lots"`, ``integer `5` ``), in words.
fn found_in_words(found: &str) -> String {
    let literal = |prefix: &str| found.strip_prefix(prefix).map(|v| v.trim_matches('`').to_string());
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(v) = literal("integer ").or_else(|| literal("floating point ")) {
        return format!("the number {v}");
    }
    if let Some(v) = literal("boolean ") {
        return v;
    }
    match found {
        "map" => "a table".to_string(),
        "sequence" => "a list".to_string(),
        "unit value" => "nothing".to_string(),
        other => other.to_string(),
    }
}

/// Splits serde's "`x`, expected one of `a`, `b`, `c`" (or "expected `a` or `b`", or
/// "there are no fields") into the name and the allowed names.
fn split_listing(rest: &str) -> (String, Vec<String>) {
    // The name is quoted in backticks and may itself hold ", ".
    let body = rest.strip_prefix('`').unwrap_or(rest);
    let (name, listing) = body.split_once("`, ").unwrap_or((body.trim_end_matches('`'), ""));
    let name = name.to_string();
    let allowed = listing.split('`').skip(1).step_by(2).map(str::to_string).collect();
    (name, allowed)
}

fn backticked(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The candidate closest to `word`, when close enough to be what was meant: within a third of
/// the word's length in edits (at least one; rustc's rule for names), or equal but for case,
/// `-` and `_`.
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normal = |s: &str| s.to_lowercase().replace('-', "_");
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (if normal(c) == normal(word) { 0 } else { distance(word, c) }, c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`: the
/// optimal string alignment distance, so `kafak` is one edit from `kafka`.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// "first", "second", ... for a 0-based index (`routes[1]` is the second `[[routes]]` table).
pub(crate) fn ordinal(index: usize) -> String {
    const WORDS: [&str; 10] =
        ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"];
    if let Some(word) = WORDS.get(index) {
        return word.to_string();
    }
    let n = index + 1;
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_a_swap_as_one() {
        assert_eq!(distance("max_inflight", "max_in_flight"), 1);
        assert_eq!(distance("kafak", "kafka"), 1, "neighbours swapped");
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(distance("newest", "latest"), 3);
    }

    #[test]
    fn near_misses_are_suggested_and_far_ones_are_not() {
        let fields = ["name", "topics", "max_in_flight", "default_in_flight"];
        assert_eq!(suggest("max_inflight", fields), Some("max_in_flight"));
        assert_eq!(suggest("topic", fields), Some("topics"));
        assert_eq!(suggest("Max-In-Flight", fields), Some("max_in_flight"), "case and dashes");
        assert_eq!(suggest("colour", fields), None);
        assert_eq!(suggest("newest", ["earliest", "latest", "error"]), None, "three edits in six letters");
        assert_eq!(suggest("lates", ["earliest", "latest", "error"]), Some("latest"));
        assert_eq!(suggest("x", ["y", "xy"]), Some("y"), "the nearest wins; one edit is always allowed");
    }

    #[test]
    fn serde_type_errors_read_as_plain_words() {
        let bad = |raw| match complaint(raw) {
            Complaint::BadValue(plain) => plain.message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad("invalid type: string \"lots\", expected u32"),
            "expected a whole number from 0 to 4294967295, found the string \"lots\""
        );
        assert_eq!(
            bad("invalid value: integer `-1`, expected u32"),
            "expected a whole number from 0 to 4294967295, found the number -1"
        );
        assert_eq!(
            bad("invalid type: integer `3`, expected a string"),
            "expected a string in quotes, found the number 3"
        );
        assert_eq!(
            bad("invalid type: string \"a\", expected a sequence"),
            "expected a list, like [\"a\", \"b\"], found the string \"a\""
        );
        assert_eq!(
            bad("invalid type: string \"yes\", expected a boolean"),
            "expected true or false, found the string \"yes\""
        );
        assert_eq!(
            bad("invalid type: integer `3`, expected struct KafkaConfig"),
            "expected a table, found the number 3"
        );
        assert_eq!(bad("something new"), "something new", "unknown wording passes through");
    }

    #[test]
    fn unknown_enum_values_list_the_allowed_ones_and_the_near_miss() {
        let Complaint::BadValue(plain) =
            complaint("unknown variant `lates`, expected one of `earliest`, `latest`, `error`")
        else {
            panic!("a value error")
        };
        assert_eq!(plain.message, "\"lates\" is not one of the allowed values: \"earliest\", \"latest\", \"error\"");
        assert_eq!(plain.help.as_deref(), Some("did you mean \"latest\"?"));
        let Complaint::BadValue(plain) = complaint("unknown variant `blue`, expected `hold` or `spill`") else {
            panic!("a value error")
        };
        assert_eq!(plain.message, "\"blue\" is not one of the allowed values: \"hold\", \"spill\"");
        assert_eq!(plain.help, None);
    }

    #[test]
    fn unknown_fields_carry_the_allowed_names_from_serde() {
        let complaint = complaint("unknown field `kafak`, expected `server`, `kafka` or `routes`");
        assert_eq!(
            complaint,
            Complaint::UnknownField {
                name: "kafak".into(),
                allowed: vec!["server".into(), "kafka".into(), "routes".into()]
            }
        );
        let Complaint::UnknownField { name, allowed } = complaint else { unreachable!() };
        assert_eq!(unknown_field(&name, &allowed).help.as_deref(), Some("did you mean `kafka`?"));
        assert_eq!(
            unknown_field("colour", &allowed).help.as_deref(),
            Some("the fields allowed here are `server`, `kafka`, `routes`")
        );
        assert_eq!(super::complaint("missing field `topics`"), Complaint::MissingField { name: "topics".into() });
    }

    #[test]
    fn ordinals_name_the_table() {
        assert_eq!(ordinal(0), "first");
        assert_eq!(ordinal(1), "second");
        assert_eq!(ordinal(9), "tenth");
        assert_eq!(ordinal(10), "11th");
        assert_eq!(ordinal(20), "21st");
        assert_eq!(ordinal(111), "112th");
    }
}

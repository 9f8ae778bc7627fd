//! Every problem of a config text in one pass, each placed in the file: the TOML syntax,
//! then the structure (unknown fields, wrong types, missing fields), then validation. The
//! [`Report`] goes to the operator (`serve`, `check-config`); [`parse`] gives
//! [`Config::parse`] the same problems as a [`ConfigError`] for reloads and the admin API.
//!
//! How several structural problems are found, when serde stops at the first: the text is
//! deserialized into [`Config`] itself, and after each error the key at fault is taken out of
//! a working copy of the document (toml_edit) and deserialization runs again, until it
//! succeeds. A required key taken out, or missing from the start, gets a stand-in value of
//! whichever simple type the struct accepts, so the rest of the file is still read. This
//! keeps the serde structs the only description of the schema: the allowed names for "did you
//! mean" come out of serde's own message, and a field added to a struct needs nothing here (a
//! walk over the document against lists of field names per table would need those lists
//! kept in step by hand). Positions come from the original text, looked up by the error's
//! path, so edits to the working copy never shift them.

use std::ops::Range;

use toml_edit::{DocumentMut, InlineTable, Item, Table, TableLike, Value};

use super::report::{Diagnostic, Location, Report};
use super::spans::{self, display_path, parse_path, Segment};
use super::wording::{self, Complaint, Plain};
use super::{Config, ConfigError, Problem};

/// How a check treats `kafka.secrets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read them, as the running gateway must.
    Read,
    /// Check only that each says where it is read from: `check-config` runs in CI or on a
    /// laptop, where the mounted files and the environment of the pod are not.
    FormOnly,
}

/// Rounds of the structural pass at most: one per problem found or stand-in tried. A file
/// with more problems than this is reported as far as that.
const MAX_ROUNDS: usize = 200;

/// A problem before placement: its field path and the span to point at.
#[derive(Debug, Clone)]
struct Found {
    field: Option<Vec<Segment>>,
    plain: Plain,
    span: Option<Range<usize>>,
}

/// The text as a [`Config`], environment overrides applied (through `lookup`), secrets as
/// `secrets` says, and validated; or every problem, placed.
pub(crate) fn check_text(
    file: &str,
    text: &str,
    secrets: Secrets,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, Report> {
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(error) => {
            let found = Found { field: None, plain: wording::syntax(error.message()), span: error.span() };
            return Err(report(file, text, None, vec![found]));
        }
    };
    let Structure { config, mut found, skipped } = structure(&doc);
    if let Some(mut config) = config {
        config.apply_env(&lookup);
        let mut problems = match secrets {
            Secrets::Read => config.resolve_secrets(&lookup).err().map(problems_of).unwrap_or_default(),
            Secrets::FormOnly => config.secret_form_problems(),
        };
        problems.extend(config.validate().err().map(problems_of).unwrap_or_default());
        for problem in problems {
            let path = parse_path(&problem.field);
            // A key taken out for a structural problem is reported already; what validation
            // says about its stand-in or default is a consequence.
            if skipped.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let place = spans::locate(doc.as_item(), &path);
            let (message, span) = pinpoint(text, problem.message, place.value);
            found.push(Found { field: Some(path), plain: Plain { message, help: None }, span });
        }
        if found.is_empty() {
            return Ok(config);
        }
    }
    Err(report(file, text, Some(doc.as_item()), found))
}

/// A message that says where in the field's string the fault is (a selector's "at 14: ..."
/// counts characters): the caret goes to that character instead, and the count, which a
/// reader would have to do by hand, leaves the message.
fn pinpoint(text: &str, message: String, span: Option<Range<usize>>) -> (String, Option<Range<usize>>) {
    let counted = message
        .strip_prefix("at ")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)));
    match (counted, &span) {
        (Some((n, rest)), Some(value)) => match spans::char_in_string(text, value, n) {
            Some(at) => (rest.to_string(), Some(at)),
            None => (message, span),
        },
        _ => (message, span),
    }
}

/// [`Config::parse`]: syntax and structure, no environment and no validation; every
/// structural problem, its position in the message.
pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    let doc = toml_edit::Document::parse(text).map_err(|error| {
        let at = error.span().map(|s| position(text, s.start)).unwrap_or_default();
        ConfigError::Parse {
            path: "<document>".to_string(),
            message: format!("{}{at}", wording::syntax(error.message()).message),
        }
    })?;
    let Structure { config, mut found, .. } = structure(&doc);
    found.sort_by_key(|f| f.span.as_ref().map_or(usize::MAX, |s| s.start));
    match config {
        Some(config) if found.is_empty() => Ok(config),
        None if found.is_empty() => Err(ConfigError::Parse {
            path: "<document>".to_string(),
            message: "cannot be read as a config".to_string(),
        }),
        _ => Err(ConfigError::Invalid(
            found
                .into_iter()
                .map(|f| {
                    let help = f.plain.help.map(|h| format!("; {h}")).unwrap_or_default();
                    let at = f.span.map(|s| position(text, s.start)).unwrap_or_default();
                    Problem {
                        field: f.field.map(|p| display_path(&p)).unwrap_or_else(|| "<document>".to_string()),
                        message: format!("{}{help}{at}", f.plain.message),
                    }
                })
                .collect(),
        )),
    }
}

/// " (line 3, column 7)".
fn position(text: &str, offset: usize) -> String {
    let (line, column) = spans::line_col(text, offset);
    format!(" (line {line}, column {column})")
}

fn problems_of(error: ConfigError) -> Vec<Problem> {
    match error {
        ConfigError::Invalid(problems) => problems,
        ConfigError::Parse { path, message } => vec![Problem { field: path, message }],
        ConfigError::Read { path, source } => vec![Problem { field: path, message: source.to_string() }],
    }
}

/// What the structural pass learnt.
struct Structure {
    /// The config, when the working copy deserialized in the end.
    config: Option<Config>,
    found: Vec<Found>,
    /// Paths of keys taken out or stood in for.
    skipped: Vec<Vec<Segment>>,
}

/// Values tried, in order, for a required key that is missing: the first its type accepts.
fn stand_ins() -> [Value; 5] {
    [
        Value::from(""),
        Value::from(0i64),
        Value::from(false),
        Value::Array(Default::default()),
        Value::InlineTable(InlineTable::new()),
    ]
}

/// Deserializes `doc`, taking out each key at fault and retrying, so every structural
/// problem is found (see the module's comment for why this way).
fn structure(doc: &toml_edit::Document<&str>) -> Structure {
    let root = doc.as_item();
    let mut work: DocumentMut = doc.clone().into_mut();
    let mut found = Vec::new();
    let mut skipped: Vec<Vec<Segment>> = Vec::new();
    // Stand-ins in the working copy, with the index of the value tried.
    let mut stand_in: Vec<(Vec<Segment>, usize)> = Vec::new();
    // Unknown keys whose near miss was `(table, name)`: that name missing is the same mistake.
    let mut meant: Vec<(Vec<Segment>, String)> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let rendered = work.to_string();
        let Ok(de) = toml::Deserializer::parse(&rendered) else { break };
        let error = match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(config) => return Structure { config: Some(config), found, skipped },
            Err(error) => error,
        };
        let path = path_of(error.path());
        let complaint = wording::complaint(error.into_inner().message());

        // Trouble with a stand-in of ours: try the next kind of value, or fill it in.
        if let Some(at) = stand_in.iter().position(|(p, _)| path.starts_with(p)) {
            let progressed = match complaint {
                Complaint::MissingField { name } => {
                    let full = child(&path, &name);
                    stand_in.push((full.clone(), 0));
                    set(&mut work, &full, stand_ins()[0].clone())
                }
                _ if stand_in[at].0 == path => {
                    stand_in[at].1 += 1;
                    match stand_ins().get(stand_in[at].1) {
                        Some(value) => set(&mut work, &path, value.clone()),
                        None => false,
                    }
                }
                _ => false,
            };
            if progressed {
                continue;
            }
            break;
        }

        let progressed = match complaint {
            Complaint::UnknownField { name, allowed } => {
                let plain = wording::unknown_field(&name, &allowed);
                if let Some(near) = wording::suggest(&name, allowed.iter().map(String::as_str)) {
                    meant.push((parent(&path).to_vec(), near.to_string()));
                }
                let place = spans::locate(root, &path);
                found.push(Found { field: Some(path.clone()), plain, span: place.key.or(place.value) });
                skipped.push(path.clone());
                remove(&mut work, &path)
            }
            Complaint::MissingField { name } => {
                let full = child(&path, &name);
                // Taken out for a problem of its own, or the near miss of an unknown key:
                // reported already.
                let already = skipped.contains(&full) || meant.iter().any(|(table, n)| *table == path && *n == name);
                if !already {
                    let place = spans::locate(root, &path);
                    let plain = Plain { message: "is required but missing".to_string(), help: None };
                    found.push(Found { field: Some(full.clone()), plain, span: place.value });
                }
                if !skipped.contains(&full) {
                    skipped.push(full.clone());
                }
                stand_in.push((full.clone(), 0));
                set(&mut work, &full, stand_ins()[0].clone())
            }
            Complaint::BadValue(plain) => {
                let place = spans::locate(root, &path);
                found.push(Found { field: Some(path.clone()), plain, span: place.value.or(place.key) });
                // A bad element of a list takes the whole list out: taking the element alone
                // would shift the indices of the rest away from the original's.
                let key = up_to_last_key(&path);
                skipped.push(key.to_vec());
                !key.is_empty() && remove(&mut work, key)
            }
        };
        if !progressed {
            break;
        }
    }
    Structure { config: None, found, skipped }
}

fn path_of(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    let mut segments = Vec::new();
    for segment in path.iter() {
        match segment {
            S::Seq { index } => segments.push(Segment::Index(*index)),
            S::Map { key } => segments.push(Segment::Key(key.clone())),
            S::Enum { variant } => segments.push(Segment::Key(variant.clone())),
            // serde_path_to_error lost track below here: what is known is the place.
            S::Unknown => break,
        }
    }
    segments
}

fn child(path: &[Segment], name: &str) -> Vec<Segment> {
    let mut full = path.to_vec();
    full.push(Segment::Key(name.to_string()));
    full
}

fn parent(path: &[Segment]) -> &[Segment] {
    &path[..path.len().saturating_sub(1)]
}

/// `path` without trailing list indices: the key holding the list.
fn up_to_last_key(path: &[Segment]) -> &[Segment] {
    let end = path.iter().rposition(|s| matches!(s, Segment::Key(_))).map_or(0, |i| i + 1);
    &path[..end]
}

/// A node of the working copy, walked mutably (see [`spans`] for why not just [`Item`]).
enum NodeMut<'a> {
    Item(&'a mut Item),
    Table(&'a mut Table),
    Value(&'a mut Value),
}

impl<'a> NodeMut<'a> {
    fn table_like(self) -> Option<&'a mut dyn TableLike> {
        match self {
            NodeMut::Item(item) => item.as_table_like_mut(),
            NodeMut::Table(table) => Some(table),
            NodeMut::Value(value) => value.as_inline_table_mut().map(|t| t as &mut dyn TableLike),
        }
    }

    fn step(self, segment: &Segment) -> Option<NodeMut<'a>> {
        match (self, segment) {
            (node, Segment::Key(key)) => node.table_like()?.get_mut(key).map(NodeMut::Item),
            (NodeMut::Item(Item::ArrayOfTables(tables)), Segment::Index(i)) => tables.get_mut(*i).map(NodeMut::Table),
            (NodeMut::Item(Item::Value(value)) | NodeMut::Value(value), Segment::Index(i)) => {
                value.as_array_mut()?.get_mut(*i).map(NodeMut::Value)
            }
            _ => None,
        }
    }
}

/// The table holding the last key of `path`, and that key.
fn holder<'a>(work: &'a mut DocumentMut, path: &'a [Segment]) -> Option<(&'a mut dyn TableLike, &'a str)> {
    let (Segment::Key(key), table_path) = path.split_last()? else { return None };
    let mut node = NodeMut::Item(work.as_item_mut());
    for segment in table_path {
        node = node.step(segment)?;
    }
    Some((node.table_like()?, key.as_str()))
}

/// Takes the key at `path` out of the working copy; false when it is not there.
fn remove(work: &mut DocumentMut, path: &[Segment]) -> bool {
    holder(work, path).and_then(|(table, key)| table.remove(key)).is_some()
}

/// Sets the key at `path` in the working copy; false when its table is not there.
fn set(work: &mut DocumentMut, path: &[Segment], value: Value) -> bool {
    match holder(work, path) {
        Some((table, key)) => {
            table.insert(key, Item::Value(value));
            true
        }
        None => false,
    }
}

/// Places every problem: line, column, the quoted line; sorted by position, unplaced last.
fn report(file: &str, text: &str, root: Option<&Item>, mut found: Vec<Found>) -> Report {
    found.sort_by_key(|f| f.span.as_ref().map_or(usize::MAX, |s| s.start));
    let diagnostics = found
        .into_iter()
        .map(|f| {
            let location = f.span.map(|span| {
                let (line, column) = spans::line_col(text, span.start);
                let secret = f.field.as_deref().is_some_and(holds_secret);
                Location {
                    line,
                    column,
                    source_line: (!secret).then(|| spans::line_at(text, span.start).to_string()),
                    width: spans::width_on_first_line(text, &span),
                }
            });
            Diagnostic {
                note: f.field.as_deref().and_then(|p| route_note(root, p)),
                field: f.field.map(|p| display_path(&p)),
                message: f.plain.message,
                help: f.plain.help,
                location,
            }
        })
        .collect();
    Report { file: file.to_string(), diagnostics }
}

/// Whether the field is a Kafka property whose value is a secret: its line is not quoted.
fn holds_secret(path: &[Segment]) -> bool {
    matches!(path, [Segment::Key(k), Segment::Key(p), Segment::Key(property), ..]
        if k == "kafka" && p == "properties" && crate::redact::is_sensitive(property))
}

/// "routes[1] is the second [[routes]] table (name = "payments")", for a path in a route.
fn route_note(root: Option<&Item>, path: &[Segment]) -> Option<String> {
    let [Segment::Key(routes), Segment::Index(i), ..] = path else { return None };
    if routes != "routes" {
        return None;
    }
    let name = root
        .and_then(|r| r.get("routes"))
        .and_then(|routes| match routes {
            Item::ArrayOfTables(tables) => tables.get(*i).and_then(|t| t.get("name")).and_then(Item::as_str),
            Item::Value(v) => v.as_array()?.get(*i)?.as_inline_table()?.get("name")?.as_str(),
            _ => None,
        })
        .map(|name| format!(" (name = {name:?})"))
        .unwrap_or_default();
    Some(format!("routes[{i}] is the {} [[routes]] table{name}", wording::ordinal(*i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[kafka]\nbootstrap_servers = \"k:9092\"\n\n[[routes]]\nname = \"orders\"\ntopics = [\"orders\"]\n";

    fn check(text: &str) -> Report {
        check_text("f.toml", text, Secrets::FormOnly, |_| None).expect_err("problems")
    }

    fn fields(report: &Report) -> Vec<String> {
        report.diagnostics.iter().map(|d| d.field.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn a_good_config_checks_clean() {
        let config = check_text("f.toml", GOOD, Secrets::FormOnly, |_| None).expect("valid");
        assert_eq!(config.routes.len(), 1);
    }

    #[test]
    fn unknown_fields_wrong_types_and_validation_all_come_out_in_file_order() {
        let text = GOOD.replace("[kafka]", "[kafka]\ncommit_interval_ms = \"soon\"")
            + "max_inflight = 5\n\n[[routes]]\nname = \"audit\"\ntopics = [\"a\"]\nsplit_label = \"track\"\nweights = { blue = 0 }\n";
        let report = check(&text);
        assert_eq!(fields(&report), vec!["kafka.commit_interval_ms", "routes[0].max_inflight", "routes[1].weights"]);
        let [wrong_type, unknown, invalid] = &report.diagnostics[..] else { panic!("{report}") };
        assert_eq!(wrong_type.message, "expected a whole number, 0 or more, found the string \"soon\"");
        assert_eq!(wrong_type.location.as_ref().map(|l| (l.line, l.column)), Some((2, 22)));
        assert_eq!(unknown.help.as_deref(), Some("did you mean `max_in_flight`?"));
        assert_eq!(unknown.location.as_ref().map(|l| (l.line, l.column, l.width)), Some((8, 1, 12)));
        assert_eq!(unknown.note.as_deref(), Some("routes[0] is the first [[routes]] table (name = \"orders\")"));
        assert_eq!(invalid.message, "at least one cohort needs a weight above 0");
        assert_eq!(invalid.location.as_ref().map(|l| (l.line, l.column)), Some((14, 11)));
        assert_eq!(invalid.note.as_deref(), Some("routes[1] is the second [[routes]] table (name = \"audit\")"));
    }

    #[test]
    fn a_bad_required_field_and_a_missing_one_do_not_hide_later_problems() {
        let text = "[kafka]\n\n[[routes]]\nname = 7\ntopics = [\"t\"]\n\n[[routes]]\nname = \"b\"\ntopics = [\"t\", 3]\nordering = \"keys\"\n";
        let report = check(text);
        assert_eq!(
            fields(&report),
            vec!["kafka.bootstrap_servers", "routes[0].name", "routes[1].topics[1]", "routes[1].ordering"],
            "{report}"
        );
        assert_eq!(report.diagnostics[0].message, "is required but missing");
        assert_eq!(report.diagnostics[0].location.as_ref().map(|l| l.line), Some(1), "placed at [kafka]");
        assert_eq!(report.diagnostics[3].help.as_deref(), Some("did you mean \"key\"?"));
        // The stand-in name and the taken-out list bring no validation noise of their own.
        assert!(!report.to_string().contains("must not be empty"), "{report}");
    }

    #[test]
    fn a_selector_fault_is_pointed_at_in_the_string() {
        let text = GOOD.replace("topics = [\"orders\"]", "topics = [\"orders\"]\nselector = \"app in (orders\"");
        let report = check(&text);
        let [selector] = &report.diagnostics[..] else { panic!("{report}") };
        assert_eq!(selector.message, "expected ',' or ')' to close the value list, found end of selector");
        let at = selector.location.as_ref().expect("placed");
        assert_eq!((at.line, at.column, at.width), (7, 27, 1), "the closing quote, where the list should close");
    }

    #[test]
    fn a_misspelt_section_is_one_problem_not_two() {
        let report = check(&GOOD.replace("[kafka]", "[kafak]"));
        assert_eq!(fields(&report), vec!["kafak"], "{report}");
        assert_eq!(report.diagnostics[0].help.as_deref(), Some("did you mean `kafka`?"));
    }

    #[test]
    fn a_section_left_out_is_named_without_a_position() {
        let report = check("[[routes]]\nname = \"a\"\ntopics = [\"t\"]\n");
        assert_eq!(fields(&report), vec!["kafka"], "{report}");
        assert_eq!(report.diagnostics[0].location, None);
    }

    #[test]
    fn a_syntax_error_has_a_line_and_column() {
        let report = check(&GOOD.replace("name = \"orders\"", "name = \"orders"));
        let [syntax] = &report.diagnostics[..] else { panic!("{report}") };
        assert!(syntax.message.starts_with("TOML syntax: invalid basic string"), "{report}");
        assert_eq!(syntax.location.as_ref().map(|l| l.line), Some(5));
    }

    #[test]
    fn secrets_are_checked_for_form_only_when_asked() {
        let text = GOOD.replace(
            "bootstrap_servers = \"k:9092\"",
            "bootstrap_servers = \"k:9092\"\n[kafka.secrets]\n\"sasl.password\" = \"file:/nowhere/password\"",
        );
        check_text("f.toml", &text, Secrets::FormOnly, |_| None).expect("the file is not read");
        let report = check_text("f.toml", &text, Secrets::Read, |_| None).expect_err("the file is read");
        assert_eq!(fields(&report), vec!["kafka.secrets.\"sasl.password\""]);
        assert_eq!(report.diagnostics[0].location.as_ref().map(|l| l.line), Some(4));
        let report = check(&text.replace("file:/nowhere/password", "/nowhere/password"));
        assert!(report.diagnostics[0].message.contains("file:/path"), "{report}");
    }

    #[test]
    fn parse_gives_every_structural_problem_with_its_position() {
        let text = GOOD.replace("topics", "topic") + "max_in_flight = -1\n";
        let Err(ConfigError::Invalid(problems)) = parse(&text) else { panic!("problems expected") };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["routes[0].topic", "routes[0].max_in_flight"]);
        assert!(
            problems[0].message.contains("did you mean `topics`?")
                && problems[0].message.ends_with("(line 6, column 1)")
        );
        let Err(ConfigError::Parse { message, .. }) = parse("a = \"x\n") else { panic!("syntax error expected") };
        assert!(message.ends_with("(line 1, column 7)"), "{message}");
    }
}

//! A config file's problems as a compiler reports them: each with file, line and column, the
//! offending line quoted under a caret, and a hint where one helps; as text for a terminal or
//! as one JSON object per problem for a log collector. `fanout-gateway serve` and
//! `check-config` print it; [`super::diagnose`] fills it.

use std::fmt;

/// Every problem of one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The file as the operator named it.
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The field at fault (`routes[1].weights`); none for a syntax error or an unreadable file.
    pub field: Option<String>,
    pub message: String,
    /// A suggestion (`did you mean ...?`) or the allowed names.
    pub help: Option<String>,
    /// Which `[[routes]]` table a `routes[i]` path is, for a reader counting tables.
    pub note: Option<String>,
    /// Where in the file; none when the field is nowhere in it (a required section left out).
    pub location: Option<Location>,
}

/// A place in the file, with what a reader needs to see it without opening the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The line quoted under the position; left out for a line holding a secret.
    pub source_line: Option<String>,
    /// How many characters the caret underlines.
    pub width: usize,
}

impl std::error::Error for Report {}

impl Report {
    /// A file that could not be read: one problem, naming the path once.
    pub fn unreadable(file: &str, error: &std::io::Error) -> Self {
        Self {
            file: file.to_string(),
            diagnostics: vec![Diagnostic {
                field: None,
                message: format!("cannot read the config file: {error}"),
                help: None,
                note: None,
                location: None,
            }],
        }
    }

    /// One JSON object per problem, one per line: `file`, `line`, `column`, `field`,
    /// `message` (null where unknown), and `help` when there is a hint.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            let mut object = serde_json::json!({
                "level": "ERROR",
                "file": self.file,
                "line": d.location.as_ref().map(|l| l.line),
                "column": d.location.as_ref().map(|l| l.column),
                "field": d.field,
                "message": d.message,
            });
            if let (Some(help), Some(map)) = (&d.help, object.as_object_mut()) {
                map.insert("help".to_string(), help.clone().into());
            }
            out.push_str(&object.to_string());
            out.push('\n');
        }
        out
    }
}

/// The text form, rustc's layout:
///
/// ```text
/// error: routes[0].max_inflight: unknown field `max_inflight`
///   --> fanout.toml:16:1
///    |
/// 16 | max_inflight = 500
///    | ^^^^^^^^^^^^
///    = help: did you mean `max_in_flight`?
///    = note: routes[0] is the first [[routes]] table (name = "orders")
/// ```
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gutter = self
            .diagnostics
            .iter()
            .filter_map(|d| d.location.as_ref())
            .map(|l| l.line.to_string().len())
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(gutter);
        for (n, d) in self.diagnostics.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            match (&d.field, &d.location) {
                (Some(field), _) => writeln!(f, "error: {field}: {}", d.message)?,
                (None, Some(_)) => writeln!(f, "error: {}", d.message)?,
                // Nothing to point at: the file is named in the headline, once.
                (None, None) => writeln!(f, "error: {}: {}", self.file, d.message)?,
            }
            match &d.location {
                Some(at) => {
                    writeln!(f, "{pad}--> {}:{}:{}", self.file, at.line, at.column)?;
                    if let Some(line) = &at.source_line {
                        writeln!(f, "{pad} |")?;
                        writeln!(f, "{:>gutter$} | {line}", at.line)?;
                        let indent: String =
                            line.chars().take(at.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                        writeln!(f, "{pad} | {indent}{}", "^".repeat(at.width))?;
                    }
                }
                None if d.field.is_some() => writeln!(f, "{pad}--> {}", self.file)?,
                None => {}
            }
            if let Some(help) = &d.help {
                writeln!(f, "{pad} = help: {help}")?;
            }
            if let Some(note) = &d.note {
                writeln!(f, "{pad} = note: {note}")?;
            }
        }
        if self.diagnostics.len() > 1 {
            writeln!(f, "\nerror: {} problems in {}", self.diagnostics.len(), self.file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize, source_line: &str, width: usize) -> Option<Location> {
        Some(Location { line, column, source_line: Some(source_line.to_string()), width })
    }

    #[test]
    fn text_quotes_the_line_with_a_caret_under_the_fault() {
        let report = Report {
            file: "fanout.toml".into(),
            diagnostics: vec![
                Diagnostic {
                    field: Some("routes[0].max_inflight".into()),
                    message: "unknown field `max_inflight`".into(),
                    help: Some("did you mean `max_in_flight`?".into()),
                    note: Some("routes[0] is the first [[routes]] table".into()),
                    location: at(9, 1, "max_inflight = 500", 12),
                },
                Diagnostic {
                    field: Some("routes[1].weights".into()),
                    message: "at least one cohort needs a weight above 0".into(),
                    help: None,
                    note: None,
                    location: at(14, 11, "weights = { blue = 0 }", 12),
                },
                Diagnostic {
                    field: Some("kafka".into()),
                    message: "is required but missing".into(),
                    help: None,
                    note: None,
                    location: None,
                },
            ],
        };
        let expected = "\
error: routes[0].max_inflight: unknown field `max_inflight`
  --> fanout.toml:9:1
   |
 9 | max_inflight = 500
   | ^^^^^^^^^^^^
   = help: did you mean `max_in_flight`?
   = note: routes[0] is the first [[routes]] table

error: routes[1].weights: at least one cohort needs a weight above 0
  --> fanout.toml:14:11
   |
14 | weights = { blue = 0 }
   |           ^^^^^^^^^^^^

error: kafka: is required but missing
  --> fanout.toml

error: 3 problems in fanout.toml
";
        assert_eq!(report.to_string(), expected);
    }

    #[test]
    fn an_unreadable_file_is_one_line_naming_it_once() {
        let error = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let text = Report::unreadable("nope.toml", &error).to_string();
        assert_eq!(text, "error: nope.toml: cannot read the config file: No such file or directory (os error 2)\n");
    }

    #[test]
    fn json_has_one_object_per_problem() {
        let report = Report {
            file: "f.toml".into(),
            diagnostics: vec![
                Diagnostic {
                    field: Some("routes[0].name".into()),
                    message: "must not be empty".into(),
                    help: None,
                    note: None,
                    location: at(3, 8, "name = \"\"", 2),
                },
                Diagnostic {
                    field: None,
                    message: "cannot read".into(),
                    help: Some("h".into()),
                    note: None,
                    location: None,
                },
            ],
        };
        let lines: Vec<serde_json::Value> = report
            .to_json_lines()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["file"], "f.toml");
        assert_eq!(lines[0]["line"], 3);
        assert_eq!(lines[0]["column"], 8);
        assert_eq!(lines[0]["field"], "routes[0].name");
        assert_eq!(lines[0]["message"], "must not be empty");
        assert!(lines[0].get("help").is_none());
        assert!(lines[1]["line"].is_null() && lines[1]["field"].is_null());
        assert_eq!(lines[1]["help"], "h");
    }
}

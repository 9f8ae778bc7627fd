//! Where a field lives in the config text. A field path as problems name it
//! (`routes[1].weights`, `kafka.properties."enable.auto.commit"`) is split into segments and
//! looked up in toml_edit's spanned parse of the original text; byte offsets become a line and
//! a column. Pure: [`super::diagnose`] uses it to place every problem, validation ones included.

use std::ops::Range;

use toml_edit::{Item, Table, TableLike, Value};

/// One step of a field path: a table key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// Splits a field path: `a.b[2]."c.d"` is `a`, `b`, `2`, `c.d`. A bare key holding a dot
/// (a cohort `v1.2` in `weights.v1.2`) comes out as two keys; [`locate`] joins them again.
pub(crate) fn parse_path(path: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut chars = path.chars().peekable();
    let mut bare = String::new();
    let flush = |bare: &mut String, segments: &mut Vec<Segment>| {
        if !bare.is_empty() {
            segments.push(Segment::Key(std::mem::take(bare)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush(&mut bare, &mut segments),
            '"' => {
                flush(&mut bare, &mut segments);
                let mut key = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => key.extend(chars.next()),
                        '"' => break,
                        c => key.push(c),
                    }
                }
                segments.push(Segment::Key(key));
            }
            '[' => {
                flush(&mut bare, &mut segments);
                let inside: String = chars.by_ref().take_while(|c| *c != ']').collect();
                match inside.parse() {
                    Ok(index) => segments.push(Segment::Index(index)),
                    Err(_) => segments.push(Segment::Key(inside)),
                }
            }
            c => bare.push(c),
        }
    }
    flush(&mut bare, &mut segments);
    segments
}

/// Writes segments back as a field path, the way validation names fields.
pub(crate) fn display_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(key);
                } else {
                    out.push_str(&format!("{key:?}"));
                }
            }
        }
    }
    out
}

/// Where a path was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Place {
    /// The key's own span, when the whole path was found and ends in a key.
    pub key: Option<Range<usize>>,
    /// The value's span (a table's header), or the nearest enclosing one found when the path
    /// is not in the document (a field left out is placed at its table).
    pub value: Option<Range<usize>>,
    /// Whether the whole path was found.
    pub exact: bool,
}

/// A node of the document as the lookup walks it: tables of `[[routes]]` and values inside
/// arrays are not [`Item`]s in toml_edit.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            // An array of tables spans every table in it; its first header is the place.
            Node::Item(Item::ArrayOfTables(tables)) => tables.get(0).and_then(Table::span),
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
            Node::Value(value) => value.span(),
        }
    }

    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(tables)) => tables.get(i).map(Node::Table),
            Node::Item(Item::Value(value)) | Node::Value(value) => value.as_array()?.get(i).map(Node::Value),
            _ => None,
        }
    }
}

/// Finds `path` under `root`: the key's and the value's spans, or the nearest enclosing span.
pub(crate) fn locate(root: &Item, path: &[Segment]) -> Place {
    let mut node = Node::Item(root);
    let mut place = Place::default();
    let mut rest = path;
    while let Some(first) = rest.first() {
        let found = match first {
            Segment::Index(i) => node.index(*i).map(|child| (child, None, 1)),
            Segment::Key(_) => node.table_like().and_then(|table| key_in(table, rest)),
        };
        let Some((child, key, used)) = found else {
            return place;
        };
        node = child;
        rest = &rest[used..];
        place.key = key;
        // Implicit tables (`server` of `[server.tls]`) have no span of their own; the key's
        // is as good a place.
        place.value = node.span().or_else(|| place.key.clone()).or(place.value);
    }
    place.exact = true;
    place
}

/// The key of `table` that the leading keys of `path` name: the first key, or, for a bare
/// key holding dots, the first keys joined (shortest first). Returns the child, its key's
/// span and how many segments it took.
fn key_in<'a>(table: &'a dyn TableLike, path: &[Segment]) -> Option<(Node<'a>, Option<Range<usize>>, usize)> {
    let mut joined = String::new();
    for (n, segment) in path.iter().enumerate() {
        let Segment::Key(key) = segment else { break };
        if n > 0 {
            joined.push('.');
        }
        joined.push_str(key);
        if let Some((key, item)) = table.get_key_value(&joined) {
            return Some((Node::Item(item), key.span(), n + 1));
        }
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

/// The whole line holding byte `offset`, without its line break.
pub(crate) fn line_at(text: &str, offset: usize) -> &str {
    let offset = floor_char_boundary(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[start..end].trim_end_matches('\r')
}

/// How many characters of `span` lie on its first line (at least one, so a caret shows
/// where the parser stopped at an empty span or the end of a line).
pub(crate) fn width_on_first_line(text: &str, span: &Range<usize>) -> usize {
    let start = floor_char_boundary(text, span.start);
    let end = floor_char_boundary(text, span.end.max(start));
    let first_line = text[start..end].split('\n').next().unwrap_or("");
    first_line.trim_end_matches('\r').chars().count().max(1)
}

/// The span of character `n` inside the one-line string literal at `span` (`"app in (x"`),
/// or of its closing quote when `n` is the string's length: where a message that counts
/// characters in the value ("at 8: ...") points. None when the literal has escapes, which
/// would make the count differ from the text.
pub(crate) fn char_in_string(text: &str, span: &Range<usize>, n: usize) -> Option<Range<usize>> {
    let literal = text.get(span.clone())?;
    let quote = literal.chars().next().filter(|q| matches!(q, '"' | '\''))?;
    let inner = literal.strip_prefix(quote)?.strip_suffix(quote)?;
    if inner.contains(['\\', '\n', quote]) {
        return None;
    }
    let start = span.start + quote.len_utf8();
    match inner.char_indices().nth(n) {
        Some((at, c)) => Some(start + at..start + at + c.len_utf8()),
        None if n == inner.chars().count() => Some(start + inner.len()..span.end),
        None => None,
    }
}

/// `offset`, moved back to a character boundary and into the text (a span from the parser
/// can point just past the end).
fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_string())
    }

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(parse_path("routes[1].weights"), vec![key("routes"), Segment::Index(1), key("weights")]);
        assert_eq!(
            parse_path("kafka.properties.\"enable.auto.commit\""),
            vec![key("kafka"), key("properties"), key("enable.auto.commit")]
        );
        assert_eq!(
            parse_path("routes[0].topics[2]"),
            vec![key("routes"), Segment::Index(0), key("topics"), Segment::Index(2)]
        );
        assert_eq!(parse_path(""), vec![]);
        for path in ["routes[1].weights", "kafka.properties.\"enable.auto.commit\"", "server.tls.reload_interval_ms"] {
            assert_eq!(display_path(&parse_path(path)), path, "round trip");
        }
    }

    const TEXT: &str = "[server]\nlisten = \"x\"\n\n[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n\n\
                        [[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nweights = { blue = 0, \"v1.2\" = 0 }\n\
                        [routes.retry]\nmax_attempts = 0\n";

    fn spanned<'t>(place: &Option<Range<usize>>, text: &'t str) -> &'t str {
        place.clone().map_or("<none>", |r| &text[r])
    }

    #[test]
    fn a_field_path_finds_its_key_and_value() {
        let doc = toml_edit::Document::parse(TEXT).expect("parses");
        let at = |path: &str| locate(doc.as_item(), &parse_path(path));

        let weights = at("routes[1].weights");
        assert!(weights.exact);
        assert_eq!(spanned(&weights.key, TEXT), "weights");
        assert_eq!(spanned(&weights.value, TEXT), "{ blue = 0, \"v1.2\" = 0 }");
        assert_eq!(spanned(&at("routes[1].weights.blue").value, TEXT), "0");
        assert_eq!(spanned(&at("routes[1].weights.v1.2").key, TEXT), "\"v1.2\"", "a dotted bare key is joined again");
        assert_eq!(spanned(&at("kafka.properties.\"enable.auto.commit\"").key, TEXT), "\"enable.auto.commit\"");
        assert_eq!(spanned(&at("routes[1].retry.max_attempts").value, TEXT), "0");
        assert_eq!(spanned(&at("routes[1]").value, TEXT), "[[routes]]");
        assert_eq!(line_col(TEXT, at("routes[1]").value.expect("found").start), (10, 1), "the second [[routes]]");
    }

    #[test]
    fn a_missing_field_is_placed_at_its_table() {
        let doc = toml_edit::Document::parse(TEXT).expect("parses");
        let place = locate(doc.as_item(), &parse_path("routes[0].topics"));
        assert!(!place.exact);
        assert_eq!(spanned(&place.value, TEXT), "[[routes]]");
        assert_eq!(line_col(TEXT, place.value.expect("found").start), (7, 1), "the first [[routes]]");
        let nowhere = locate(doc.as_item(), &parse_path("discovery.namespace"));
        assert_eq!(nowhere, Place::default(), "nothing of it in the file");
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 5), "columns count characters, not bytes");
        assert_eq!(line_col(text, 999), (3, 1), "past the end: the end");
        assert_eq!(line_at(text, 8), "bé = \"x\"");
        assert_eq!(width_on_first_line(text, &(11..14)), 3);
        assert_eq!(width_on_first_line(text, &(5..5)), 1, "an empty span still gets a caret");
        assert_eq!(width_on_first_line("[1,\n2]", &(0..6)), 3, "first line only");
    }

    #[test]
    fn a_character_count_points_into_the_string() {
        let text = "selector = \"app in (x\"";
        let span = 11..text.len();
        assert_eq!(char_in_string(text, &span, 4).map(|r| &text[r]), Some("i"));
        assert_eq!(char_in_string(text, &span, 9).map(|r| &text[r]), Some("\""), "the end: the closing quote");
        assert_eq!(char_in_string(text, &span, 10), None);
        assert_eq!(char_in_string("s = 'é x'", &(4..10), 2).map(|r| r.start), Some(8), "characters, not bytes");
        let escaped = "s = \"a\\tb\"";
        assert_eq!(char_in_string(escaped, &(4..escaped.len()), 2), None, "escapes make the count unreliable");
        assert_eq!(char_in_string("s = 5", &(4..5), 0), None, "not a string");
    }
}

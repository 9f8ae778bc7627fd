//! Kubernetes label selectors: parsing, validation, matching and the canonical string.
//!
//! Pure code, no I/O. A route's `selector` is parsed here once at config load; subscriptions
//! match subscribers' labels with [`Selector::matches`], and Kubernetes discovery sends the
//! selector's [`Display`](fmt::Display) form as the `labelSelector` of its list and watch calls, so
//! the gateway and the API server select exactly the same pods.
//!
//! The syntax and semantics follow `k8s.io/apimachinery/pkg/labels` (`Parse`):
//!
//! ```text
//! app=orders,tier!=batch,track in (blue,green),env notin (dev),canary,!legacy
//! ```
//!
//! Two deliberate differences, both in what is refused, never in what a selector means:
//! `k in ()` is an error here (Kubernetes reads it as `k in ("")`, which is almost never what
//! was meant; write `k=` for the empty value), and the integer comparisons `k>1` / `k<1` are
//! refused as unsupported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Longest name part of a key, and longest value (Kubernetes' `validation.LabelValueMaxLength`).
const MAX_NAME_LEN: usize = 63;
/// Longest key prefix (a DNS-1123 subdomain, `validation.DNS1123SubdomainMaxLength`).
const MAX_PREFIX_LEN: usize = 253;

/// Why a selector string was refused. Messages say where (`at N` counts characters from 0)
/// and what to write instead; config validation shows them with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The tokens are not in an order the grammar allows.
    #[error("at {pos}: expected {expected}, found {found}")]
    Syntax {
        /// Character index of the offending token (the selector's length for its end).
        pos: usize,
        expected: &'static str,
        /// The offending token, quoted, or `end of selector`.
        found: String,
    },
    /// `k > 1` and `k < 1` parse in Kubernetes but have no use for routing subscribers.
    #[error("at {pos}: operator '{op}' is not supported; use =, ==, !=, in, notin, key or !key")]
    UnsupportedOperator { pos: usize, op: &'static str },
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid label value {value:?} for key {key:?}: {reason}")]
    InvalidValue { key: String, value: String, reason: String },
    /// `k in ()` or `k notin ()`.
    #[error("empty value set for key {key:?}: write \"{key} {op} (blue,green)\"")]
    EmptyValueSet { key: String, op: &'static str },
}

/// A parsed label selector: every requirement must hold. The empty selector matches every
/// label set.
///
/// Requirements are kept sorted (by key, then operator) and without duplicates, so two
/// selectors that differ only in the order they were written compare equal and print the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One comma-separated part of a selector: a key and what its value must be.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    key: String,
    op: Operator,
}

/// What a [`Requirement`] asks of its key's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `k=v` or `k==v`: present with this value.
    Equals(String),
    /// `k!=v`: absent, or present with another value.
    NotEquals(String),
    /// `k in (a,b)`: present with one of the values.
    In(BTreeSet<String>),
    /// `k notin (a,b)`: absent, or present with none of the values.
    NotIn(BTreeSet<String>),
    /// `k`: present, whatever the value.
    Exists,
    /// `!k`: absent.
    DoesNotExist,
}

// === impl Selector ===

impl Selector {
    /// A selector of these requirements (all must hold); order and duplicates do not matter.
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Self {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        requirements.sort();
        requirements.dedup();
        Self { requirements }
    }

    /// Whether `labels` satisfy every requirement. True for the empty selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when there are no requirements: the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The keys the selector looks at, each once, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let mut previous: Option<&str> = None;
        self.requirements.iter().filter_map(move |r| {
            let key = r.key.as_str();
            (previous.replace(key) != Some(key)).then_some(key)
        })
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Parser { tokens: lex(s), at: 0 }.parse().map(Selector::new)
    }
}

/// The canonical Kubernetes form (`a=1,b!=2,c in (x,y)`), sorted by key; the empty selector
/// prints as the empty string. Parsing it gives back an equal selector, and the API server
/// accepts it as `labelSelector`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// === impl Requirement ===

impl Requirement {
    /// A requirement after checking the key and every value as the parser would.
    pub fn new(key: impl Into<String>, op: Operator) -> Result<Self, SelectorError> {
        let key = key.into();
        validate_key(&key)?;
        match &op {
            Operator::Equals(v) | Operator::NotEquals(v) => validate_value(&key, v)?,
            Operator::In(vs) | Operator::NotIn(vs) => {
                if vs.is_empty() {
                    let op = if matches!(op, Operator::In(_)) { "in" } else { "notin" };
                    return Err(SelectorError::EmptyValueSet { key, op });
                }
                for v in vs {
                    validate_value(&key, v)?;
                }
            }
            Operator::Exists | Operator::DoesNotExist => {}
        }
        Ok(Self { key, op })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// Kubernetes semantics: the negative operators (`!=`, `notin`, `!k`) hold for a missing key.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::Equals(v) => value == Some(v),
            Operator::NotEquals(v) => value != Some(v),
            Operator::In(vs) => value.is_some_and(|x| vs.contains(x)),
            Operator::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            Operator::Equals(v) => write!(f, "{key}={v}"),
            Operator::NotEquals(v) => write!(f, "{key}!={v}"),
            Operator::In(vs) => write!(f, "{key} in ({})", ValueList(vs)),
            Operator::NotIn(vs) => write!(f, "{key} notin ({})", ValueList(vs)),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A value set as it goes between the parentheses. The set holding only the empty value is
/// written `,` because `()` is refused (see the module doc); Kubernetes reads `(,)` as that set.
struct ValueList<'a>(&'a BTreeSet<String>);

impl fmt::Display for ValueList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() == 1 && self.0.contains("") {
            return f.write_str(",");
        }
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(v)?;
        }
        Ok(())
    }
}

// === lexer ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A run of anything but whitespace and the symbols below: keys, values, `in`, `notin`.
    /// Whether `in` is an operator or a key depends on where it stands, as in Kubernetes.
    Ident(String),
    Bang,
    NotEquals,
    Equals,
    DoubleEquals,
    Open,
    Close,
    Comma,
    Greater,
    Less,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Character index where the token starts.
    pos: usize,
}

impl Kind {
    /// How an error message names the token.
    fn found(&self) -> String {
        let symbol = match self {
            Kind::Ident(s) => return format!("'{s}'"),
            Kind::End => return "end of selector".to_owned(),
            Kind::Bang => "!",
            Kind::NotEquals => "!=",
            Kind::Equals => "=",
            Kind::DoubleEquals => "==",
            Kind::Open => "(",
            Kind::Close => ")",
            Kind::Comma => ",",
            Kind::Greater => ">",
            Kind::Less => "<",
        };
        format!("'{symbol}'")
    }
}

/// Whitespace as Kubernetes' lexer knows it.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_symbol(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits a selector into tokens, always ending with [`Kind::End`]. Never fails: anything
/// that is not a symbol is part of an identifier, and validation judges identifiers later.
fn lex(input: &str) -> Vec<Token> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i;
        let next = chars.get(i + 1).copied();
        let (kind, len) = match c {
            c if is_whitespace(c) => {
                i += 1;
                continue;
            }
            '!' if next == Some('=') => (Kind::NotEquals, 2),
            '!' => (Kind::Bang, 1),
            '=' if next == Some('=') => (Kind::DoubleEquals, 2),
            '=' => (Kind::Equals, 1),
            '(' => (Kind::Open, 1),
            ')' => (Kind::Close, 1),
            ',' => (Kind::Comma, 1),
            '>' => (Kind::Greater, 1),
            '<' => (Kind::Less, 1),
            _ => {
                let end =
                    chars[i..].iter().position(|&c| is_whitespace(c) || is_symbol(c)).map_or(chars.len(), |n| i + n);
                (Kind::Ident(chars[i..end].iter().collect()), end - i)
            }
        };
        tokens.push(Token { kind, pos });
        i += len;
    }
    tokens.push(Token { kind: Kind::End, pos: chars.len() });
    tokens
}

// === parser ===

/// Recursive descent over the tokens, one requirement at a time.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends with `End` and `next` never moves past it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Kind::End {
            self.at += 1;
        }
        token
    }

    fn syntax<T>(token: &Token, expected: &'static str) -> Result<T, SelectorError> {
        Err(SelectorError::Syntax { pos: token.pos, expected, found: token.kind.found() })
    }

    fn at_requirement_end(&self) -> bool {
        matches!(self.peek().kind, Kind::Comma | Kind::End)
    }

    fn parse(mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().kind == Kind::End {
            return Ok(requirements);
        }
        let mut expected = "a label key or '!'";
        loop {
            let start = self.peek().clone();
            if !matches!(start.kind, Kind::Ident(_) | Kind::Bang) {
                return Self::syntax(&start, expected);
            }
            requirements.push(self.requirement()?);
            let after = self.next();
            match after.kind {
                Kind::End => return Ok(requirements),
                Kind::Comma => expected = "a requirement after ','",
                _ => return Self::syntax(&after, "',' or end of selector"),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let first = self.next();
        if first.kind == Kind::Bang {
            let token = self.next();
            let Kind::Ident(key) = token.kind else {
                return Self::syntax(&token, "a label key after '!'");
            };
            validate_key(&key)?;
            if !self.at_requirement_end() {
                return Self::syntax(
                    self.peek(),
                    "',' or end of selector after \"!key\" (to exclude one value write key!=value)",
                );
            }
            return Ok(Requirement { key, op: Operator::DoesNotExist });
        }
        let Kind::Ident(key) = first.kind else {
            return Self::syntax(&first, "a label key or '!'");
        };
        validate_key(&key)?;
        if self.at_requirement_end() {
            return Ok(Requirement { key, op: Operator::Exists });
        }
        let op_token = self.next();
        let op = match &op_token.kind {
            Kind::Equals | Kind::DoubleEquals => Operator::Equals(self.exact_value(&key)?),
            Kind::NotEquals => Operator::NotEquals(self.exact_value(&key)?),
            Kind::Ident(word) if word == "in" => Operator::In(self.value_set(&key, "in")?),
            Kind::Ident(word) if word == "notin" => Operator::NotIn(self.value_set(&key, "notin")?),
            Kind::Greater => return Err(SelectorError::UnsupportedOperator { pos: op_token.pos, op: ">" }),
            Kind::Less => return Err(SelectorError::UnsupportedOperator { pos: op_token.pos, op: "<" }),
            _ => return Self::syntax(&op_token, "an operator (=, ==, !=, in, notin), ',' or end of selector"),
        };
        Ok(Requirement { key, op })
    }

    /// The value after `=`, `==` or `!=`; nothing before `,` or the end is the empty value.
    fn exact_value(&mut self, key: &str) -> Result<String, SelectorError> {
        if self.at_requirement_end() {
            return Ok(String::new());
        }
        let token = self.next();
        let Kind::Ident(value) = token.kind else {
            return Self::syntax(&token, "a value after the operator (for several values write key in (a,b))");
        };
        validate_value(key, &value)?;
        Ok(value)
    }

    /// `( item (, item)* )` where an item may be empty (the empty value), as in Kubernetes:
    /// `(a,)` is {"", "a"}. Only `()` is refused.
    fn value_set(&mut self, key: &str, op: &'static str) -> Result<BTreeSet<String>, SelectorError> {
        let open = self.next();
        if open.kind != Kind::Open {
            return Self::syntax(&open, "'(' to open the value list, as in key in (a,b)");
        }
        if self.peek().kind == Kind::Close {
            return Err(SelectorError::EmptyValueSet { key: key.to_owned(), op });
        }
        let mut values = BTreeSet::new();
        loop {
            let had_value = if let Kind::Ident(value) = &self.peek().kind {
                validate_value(key, value)?;
                values.insert(value.clone());
                self.next();
                true
            } else {
                values.insert(String::new());
                false
            };
            let token = self.next();
            match token.kind {
                Kind::Comma => {}
                Kind::Close => return Ok(values),
                _ if had_value => return Self::syntax(&token, "',' or ')' to close the value list"),
                _ => return Self::syntax(&token, "a value, ',' or ')'"),
            }
        }
    }
}

// === validation ===

/// A label key: `name` or `prefix/name`, where the prefix is a DNS-1123 subdomain
/// (`validation.IsQualifiedName`).
fn validate_key(key: &str) -> Result<(), SelectorError> {
    let fail = |reason: String| Err(SelectorError::InvalidKey { key: key.to_owned(), reason });
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return fail(
                    "the prefix before '/' is empty; write prefix/name (e.g. example.com/tier) or drop the '/'".into(),
                );
            }
            if name.contains('/') {
                return fail("more than one '/'; a key is name or prefix/name".into());
            }
            if let Err(reason) = check_dns_subdomain(prefix) {
                return fail(format!("prefix {prefix:?} {reason}"));
            }
            if name.is_empty() {
                return fail("the name after '/' is empty".into());
            }
            name
        }
    };
    match check_name(name) {
        Ok(()) => Ok(()),
        Err(reason) if name.len() == key.len() => fail(reason),
        Err(reason) => fail(format!("name {name:?} {reason}")),
    }
}

/// A label value: empty, or 63 characters or fewer with the same rule as a key's name.
fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| SelectorError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    })
}

/// The rule shared by key names and non-empty values: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`,
/// at most 63 characters. The reason names the first thing to fix.
fn check_name(s: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"));
    }
    // All ASCII from here, so bytes are characters.
    if s.len() > MAX_NAME_LEN {
        return Err(format!("is {} characters long; at most {MAX_NAME_LEN} are allowed", s.len()));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must begin with a letter or digit".into());
    }
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must end with a letter or digit".into());
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`, at most 253 characters.
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    const RULE: &str = "must be a lowercase DNS subdomain such as example.com";
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))) {
        return Err(format!("{RULE}: contains {c:?}; only a-z, 0-9, '-' and '.' are allowed"));
    }
    if s.len() > MAX_PREFIX_LEN {
        return Err(format!("{RULE}: is {} characters long; at most {MAX_PREFIX_LEN} are allowed", s.len()));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    for part in s.split('.') {
        if part.is_empty() {
            return Err(format!("{RULE}: has an empty part between dots"));
        }
        if !part.starts_with(alnum) || !part.ends_with(alnum) {
            return Err(format!("{RULE}: each dot-separated part must begin and end with a-z or 0-9"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<Selector>() {
            Ok(parsed) => panic!("{s:?} should be refused, parsed as {parsed}"),
            Err(e) => e.to_string(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_matches_present_key_with_that_value() {
        for s in ["app=orders", "app==orders", " app = orders "] {
            let s = sel(s);
            assert!(s.matches(&labels(&[("app", "orders")])));
            assert!(!s.matches(&labels(&[("app", "billing")])));
            assert!(!s.matches(&labels(&[])));
        }
    }

    #[test]
    fn not_equals_matches_other_value_and_absent_key() {
        let s = sel("tier!=batch");
        assert!(!s.matches(&labels(&[("tier", "batch")])));
        assert!(s.matches(&labels(&[("tier", "web")])));
        assert!(s.matches(&labels(&[])), "absent key satisfies !=");
    }

    #[test]
    fn in_needs_the_key_present_with_one_of_the_values() {
        let s = sel("track in (blue,green)");
        assert!(s.matches(&labels(&[("track", "blue")])));
        assert!(s.matches(&labels(&[("track", "green")])));
        assert!(!s.matches(&labels(&[("track", "canary")])));
        assert!(!s.matches(&labels(&[])), "absent key fails in");
    }

    #[test]
    fn notin_matches_other_values_and_absent_key() {
        let s = sel("env notin (dev,test)");
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[])), "absent key satisfies notin");
    }

    #[test]
    fn existence_and_absence() {
        let has = sel("canary");
        let lacks = sel("!canary");
        let with = labels(&[("canary", "")]);
        let without = labels(&[("app", "x")]);
        assert!(has.matches(&with) && !has.matches(&without));
        assert!(!lacks.matches(&with) && lacks.matches(&without));
    }

    #[test]
    fn all_requirements_must_hold() {
        let s = sel("app=orders,tier!=batch,track in (blue,green)");
        assert!(s.matches(&labels(&[("app", "orders"), ("track", "blue")])));
        assert!(!s.matches(&labels(&[("app", "orders"), ("track", "blue"), ("tier", "batch")])));
        assert!(!s.matches(&labels(&[("app", "orders")])));
    }

    #[test]
    fn empty_or_blank_selector_matches_everything() {
        for s in ["", "   ", "\t\n"] {
            let s = sel(s);
            assert!(s.is_empty());
            assert!(s.matches(&labels(&[])));
            assert!(s.matches(&labels(&[("any", "thing")])));
            assert_eq!(s.to_string(), "");
        }
    }

    #[test]
    fn whitespace_around_tokens_is_ignored() {
        assert_eq!(
            sel("  app = orders ,tier!= batch,  track in(blue , green ) , ! legacy "),
            sel("app=orders,tier!=batch,track in (blue,green),!legacy"),
        );
    }

    #[test]
    fn empty_values_follow_kubernetes() {
        let s = sel("a=,b!=");
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("a", "x")])));
        assert_eq!(sel("k in (a,)"), sel("k in (,a)"));
        assert!(sel("k in (,)").matches(&labels(&[("k", "")])));
    }

    #[test]
    fn display_is_canonical_and_sorted() {
        let s = sel("track in (green, blue),tier != batch , app==orders");
        assert_eq!(s.to_string(), "app=orders,tier!=batch,track in (blue,green)");
        assert_eq!(sel("!b,a,c notin (y,x)").to_string(), "a,!b,c notin (x,y)");
        assert_eq!(sel("k in (,)").to_string(), "k in (,)");
        assert_eq!(sel("b=1,a=1"), sel("a=1,a=1,b=1"), "order and duplicates do not matter");
    }

    #[test]
    fn display_parses_back_to_the_same_selector() {
        for s in [
            "app=orders,tier!=batch,track in (blue,green)",
            "example.com/team=core,!legacy,env notin (dev,test),canary",
            "a=,b!=,k in (,x)",
            "in=in,notin notin (in,notin),!in",
        ] {
            let parsed = sel(s);
            assert_eq!(sel(&parsed.to_string()), parsed, "{s}");
        }
    }

    #[test]
    fn keys_lists_each_key_once() {
        let s = sel("b!=1,a=1,b!=2,!c");
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn keywords_are_keys_and_values_where_they_stand() {
        let s = sel("in in (notin)");
        assert!(s.matches(&labels(&[("in", "notin")])));
    }

    #[test]
    fn unclosed_paren_is_refused() {
        assert_eq!(
            err("track in (blue,green"),
            "at 20: expected ',' or ')' to close the value list, found end of selector"
        );
        assert_eq!(err("track in (blue,"), "at 15: expected a value, ',' or ')', found end of selector");
    }

    #[test]
    fn missing_value_list_is_refused() {
        assert_eq!(err("track in blue"), "at 9: expected '(' to open the value list, as in key in (a,b), found 'blue'");
        assert_eq!(
            err("track notin"),
            "at 11: expected '(' to open the value list, as in key in (a,b), found end of selector"
        );
        assert_eq!(err("track in ()"), r#"empty value set for key "track": write "track in (blue,green)""#);
        assert_eq!(err("track notin ( )"), r#"empty value set for key "track": write "track notin (blue,green)""#);
    }

    #[test]
    fn trailing_or_doubled_comma_is_refused() {
        assert_eq!(err("app=orders,"), "at 11: expected a requirement after ',', found end of selector");
        assert_eq!(err("a,,b"), "at 2: expected a requirement after ',', found ','");
        assert_eq!(err(",a"), "at 0: expected a label key or '!', found ','");
    }

    #[test]
    fn misplaced_tokens_say_what_was_expected() {
        assert_eq!(err("app=orders (x)"), "at 11: expected ',' or end of selector, found '('");
        assert_eq!(
            err("track blue"),
            "at 6: expected an operator (=, ==, !=, in, notin), ',' or end of selector, found 'blue'"
        );
        assert_eq!(
            err("app=(x)"),
            "at 4: expected a value after the operator (for several values write key in (a,b)), found '('"
        );
        assert!(err("!app=orders").contains("to exclude one value write key!=value"));
        assert_eq!(err("!"), "at 1: expected a label key after '!', found end of selector");
        assert_eq!(err("a=b=c"), "at 3: expected ',' or end of selector, found '='");
        assert_eq!(err("a in (x y)"), "at 8: expected ',' or ')' to close the value list, found 'y'");
    }

    #[test]
    fn integer_comparisons_are_refused_as_unsupported() {
        assert_eq!(err("replicas > 3"), "at 9: operator '>' is not supported; use =, ==, !=, in, notin, key or !key");
        assert!(err("replicas<3").contains("operator '<' is not supported"));
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        assert_eq!(err("-app=x"), r#"invalid label key "-app": must begin with a letter or digit"#);
        assert!(err("app_=x").contains("must end with a letter or digit"));
        assert!(err("ap:p=x").contains(r#"invalid label key "ap:p": contains ':'"#));
        assert!(err(&format!("{}=x", "k".repeat(64))).contains("is 64 characters long; at most 63"));
        assert!(err("Example.com/app=x").contains(r#"prefix "Example.com" must be a lowercase DNS subdomain"#));
        assert!(err("/app=x").contains("the prefix before '/' is empty"));
        assert!(err("example.com/=x").contains("the name after '/' is empty"));
        assert!(err("a/b/c").contains("more than one '/'"));
        assert!(err("a..b/c").contains("empty part between dots"));
        assert!(err("example.com/-x").contains(r#"name "-x" must begin with a letter or digit"#));
        assert!(err(&format!("{}/x", "a".repeat(254))).contains("at most 253"));
        // A 253-character prefix and a 63-character name are fine.
        sel(&format!("{}.{}/{}", "a".repeat(126), "b".repeat(126), "n".repeat(63)));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        assert_eq!(err("app=orders!"), "at 10: expected ',' or end of selector, found '!'");
        assert_eq!(
            err("app=-orders"),
            r#"invalid label value "-orders" for key "app": must begin with a letter or digit"#
        );
        let slash = err("track in (blue,gr/een)");
        assert!(slash.contains(r#"invalid label value "gr/een" for key "track": contains '/'"#), "{slash}");
        assert!(err(&format!("a={}", "v".repeat(64))).contains("is 64 characters long"));
    }

    #[test]
    fn requirements_built_in_code_are_validated() {
        assert!(Requirement::new("Bad Key", Operator::Exists).is_err());
        assert!(Requirement::new("app", Operator::In(BTreeSet::new())).is_err());
        let r = Requirement::new("app", Operator::Equals("orders".into())).expect("valid");
        assert_eq!(Selector::new([r.clone(), r]).to_string(), "app=orders");
    }

    // --- properties ---

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?",
            1 => Just("in".to_owned()),
            1 => Just("notin".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        (proptest::option::of("[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}"), name())
            .prop_map(|(prefix, name)| prefix.map_or(name.clone(), |p| format!("{p}/{name}")))
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![1 => Just(String::new()), 6 => name()]
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let set = || proptest::collection::btree_set(value(), 1..4);
        let op = prop_oneof![
            value().prop_map(Operator::Equals),
            value().prop_map(Operator::NotEquals),
            set().prop_map(Operator::In),
            set().prop_map(Operator::NotIn),
            Just(Operator::Exists),
            Just(Operator::DoesNotExist),
        ];
        (key(), op).prop_map(|(key, op)| Requirement::new(key, op).expect("strategy makes valid requirements"))
    }

    proptest! {
        /// What Display prints, the parser reads back as the same selector, so the string the
        /// gateway sends as `labelSelector` means what the gateway itself matches.
        #[test]
        fn display_round_trips(reqs in proptest::collection::vec(requirement(), 0..6)) {
            let selector = Selector::new(reqs);
            let text = selector.to_string();
            let parsed: Selector = text.parse().map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(parsed, selector);
        }

        /// Any string either fails with an error or parses to a selector that round-trips.
        #[test]
        fn arbitrary_input_never_panics(s in "[a-z !=(),<>/.-]{0,24}|in|notin|\\PC{0,12}") {
            if let Ok(parsed) = s.parse::<Selector>() {
                prop_assert_eq!(parsed.to_string().parse::<Selector>(), Ok(parsed));
            }
        }

        /// Matching agrees with the operators' meaning on random label sets.
        #[test]
        fn matches_follows_each_requirement(r in requirement(), v in proptest::option::of(value())) {
            let mut l = BTreeMap::new();
            if let Some(v) = &v {
                l.insert(r.key().to_owned(), v.clone());
            }
            let expected = match (r.operator(), &v) {
                (Operator::Equals(x), Some(v)) => x == v,
                (Operator::In(xs), Some(v)) => xs.contains(v),
                (Operator::NotEquals(x), Some(v)) => x != v,
                (Operator::NotIn(xs), Some(v)) => !xs.contains(v),
                (Operator::Exists, Some(_)) => true,
                (Operator::DoesNotExist, Some(_)) => false,
                (Operator::Equals(_) | Operator::In(_) | Operator::Exists, None) => false,
                (Operator::NotEquals(_) | Operator::NotIn(_) | Operator::DoesNotExist, None) => true,
            };
            prop_assert_eq!(Selector::new([r]).matches(&l), expected);
        }
    }
}

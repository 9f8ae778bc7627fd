//! The selector grammar: a lexer, a recursive-descent parser and the Kubernetes rules for
//! label keys and values. Errors say where (`at N`, in characters) and what to write instead.

use std::collections::BTreeSet;

use super::{Operator, Requirement, SelectorError};

/// Longest name part of a key, and longest value (Kubernetes' `validation.LabelValueMaxLength`).
const MAX_NAME_LEN: usize = 63;
/// Longest key prefix (a DNS-1123 subdomain, `validation.DNS1123SubdomainMaxLength`).
const MAX_PREFIX_LEN: usize = 253;

/// The requirements of a selector string, each validated; the empty string gives none.
pub(super) fn parse(input: &str) -> Result<Vec<Requirement>, SelectorError> {
    Parser { tokens: lex(input), at: 0 }.parse()
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
pub(super) fn validate_key(key: &str) -> Result<(), SelectorError> {
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
pub(super) fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
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
pub(super) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    check_dns(s, "a lowercase DNS subdomain such as example.com", MAX_PREFIX_LEN, true)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (a namespace's name).
pub(super) fn check_dns_label(s: &str) -> Result<(), String> {
    check_dns(s, "a DNS label such as shop", MAX_NAME_LEN, false)
}

fn check_dns(s: &str, what: &str, max: usize, dots: bool) -> Result<(), String> {
    let rule = format!("must be {what}");
    let allowed = if dots { "a-z, 0-9, '-' and '.'" } else { "a-z, 0-9 and '-'" };
    if let Some(c) =
        s.chars().find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.')))
    {
        return Err(format!("{rule}: contains {c:?}; only {allowed} are allowed"));
    }
    if s.len() > max {
        return Err(format!("{rule}: is {} characters long; at most {max} are allowed", s.len()));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    for part in s.split('.') {
        if part.is_empty() {
            return Err(format!("{rule}: has an empty part between dots"));
        }
        if !part.starts_with(alnum) || !part.ends_with(alnum) {
            return Err(format!("{rule}: each dot-separated part must begin and end with a-z or 0-9"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{Operator, Requirement, Selector};

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<Selector>() {
            Ok(parsed) => panic!("{s:?} should be refused, parsed as {parsed}"),
            Err(e) => e.to_string(),
        }
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
}

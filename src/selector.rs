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

mod parse;

use parse::{validate_key, validate_value};

/// Checks `value` as a value of label `key` (Kubernetes' rule: empty, or up to 63 letters,
/// digits, '-', '_' and '.', beginning and ending with a letter or digit).
pub fn validate_label_value(key: &str, value: &str) -> Result<(), SelectorError> {
    validate_value(key, value)
}

/// Checks `key` as a label key (Kubernetes' rule: `name` or `prefix/name`, the prefix a DNS
/// subdomain of at most 253 characters, the name as a value's rule but not empty).
pub fn validate_label_key(key: &str) -> Result<(), SelectorError> {
    validate_key(key)
}

/// Checks `name` as a Kubernetes object name of the DNS-subdomain kind (a pod's name): at most
/// 253 lowercase letters, digits, '-' and '.', each dot-separated part beginning and ending
/// with a letter or digit. The error says what to fix.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    parse::check_dns_subdomain(name)
}

/// Checks `name` as a Kubernetes DNS label (a namespace's name): at most 63 lowercase
/// letters, digits and '-', beginning and ending with a letter or digit.
pub fn validate_dns_label(name: &str) -> Result<(), String> {
    parse::check_dns_label(name)
}

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
        parse::parse(s).map(Selector::new)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
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

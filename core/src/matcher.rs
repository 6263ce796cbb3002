//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus's semantics.
//!
//! Regular expressions are fully anchored, as in Prometheus: `a.*` must match the whole value,
//! so it is compiled as `^(?:a.*)$`. A missing label has the value `""`, so `{x=""}` matches
//! series without `x` and `{x!~".+"}` too. Compiled regexes are size-limited so a hostile
//! pattern costs a clear error rather than memory.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// Bytes of compiled program one regex may use (the `regex` crate's size limit).
pub const REGEX_COMPILED_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Length of a regex pattern in bytes.
pub const REGEX_PATTERN_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

impl MatchOp {
    pub fn symbol(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regular expression {pattern:?} for label {name:?}: {reason}")]
    InvalidRegex { name: String, pattern: String, reason: String },
    #[error("regular expression for label {name:?} is {bytes} bytes, more than the limit of {max} bytes")]
    RegexTooLong { name: String, bytes: usize, max: usize },
}

/// One matcher. The regex is compiled at construction, so matching never fails.
#[derive(Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    pub fn new(op: MatchOp, name: impl Into<String>, value: impl Into<String>) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let regex = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => {
                if value.len() > REGEX_PATTERN_BYTES_MAX {
                    return Err(MatcherError::RegexTooLong { name, bytes: value.len(), max: REGEX_PATTERN_BYTES_MAX });
                }
                let anchored = format!("^(?s:{value})$");
                let regex = regex::RegexBuilder::new(&anchored)
                    .size_limit(REGEX_COMPILED_BYTES_MAX)
                    .dfa_size_limit(REGEX_COMPILED_BYTES_MAX)
                    .build()
                    .map_err(|e| MatcherError::InvalidRegex { name: name.clone(), pattern: value.clone(), reason: e.to_string() })?;
                Some(regex)
            }
        };
        Ok(Matcher { name, op, value, regex })
    }

    /// `name="value"`; cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher { name: name.into(), op: MatchOp::Equal, value: value.into(), regex: None }
    }

    /// Does `value` (`""` for a missing label) satisfy this matcher?
    pub fn matches_value(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::RegexMatch => self.regex.as_ref().expect("compiled at construction").is_match(value),
            MatchOp::RegexNoMatch => !self.regex.as_ref().expect("compiled at construction").is_match(value),
        }
    }

    /// Does this matcher select a series with these labels?
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.name))
    }

    /// True when the matcher matches the empty string, i.e. also series without the label.
    pub fn matches_empty(&self) -> bool {
        self.matches_value("")
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}
impl Eq for Matcher {}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.symbol(), self.value)
    }
}

/// True when every matcher selects the series.
pub fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: Prometheus's matcher semantics: full anchoring, missing label = "", regex errors
    // typed. Method: a table of (matcher, value, expected).
    #[test]
    fn matcher_table() {
        let cases = [
            (MatchOp::Equal, "a", "a", true),
            (MatchOp::Equal, "a", "ab", false),
            (MatchOp::NotEqual, "a", "b", true),
            (MatchOp::RegexMatch, "a.*", "abc", true),
            (MatchOp::RegexMatch, "b", "abc", false),
            (MatchOp::RegexMatch, "a|b", "b", true),
            (MatchOp::RegexMatch, "a|b", "ab", false),
            (MatchOp::RegexMatch, ".*", "", true),
            (MatchOp::RegexMatch, ".+", "", false),
            (MatchOp::RegexNoMatch, ".+", "", true),
            (MatchOp::RegexMatch, "a.b", "a\nb", true),
        ];
        for (op, pattern, value, expected) in cases {
            let m = Matcher::new(op, "l", pattern).unwrap();
            assert_eq!(m.matches_value(value), expected, "{m} on {value:?}");
        }
        let labels = Labels::from_pairs(&[("__name__", "up")]);
        assert!(Matcher::equal("job", "").matches(&labels));
        assert!(!Matcher::equal("job", "x").matches(&labels));
        assert!(matches!(Matcher::new(MatchOp::RegexMatch, "l", "("), Err(MatcherError::InvalidRegex { .. })));
        let huge = "a".repeat(REGEX_PATTERN_BYTES_MAX + 1);
        assert!(matches!(Matcher::new(MatchOp::RegexMatch, "l", huge), Err(MatcherError::RegexTooLong { .. })));
    }
}

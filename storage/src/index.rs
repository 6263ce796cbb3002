//! The head's inverted index: for each tenant, label name → label value → sorted series refs.
//!
//! Selection follows Prometheus (`tsdb/querier.go`, `PostingsForMatchers`): matchers that do not
//! match the empty string narrow the candidates to the union of postings of the values they
//! match; matchers that do match the empty string (`!=`, `=""`, `=~".*"`, `!~"x"` …) subtract the
//! postings of the values they do not match, so series without the label are kept. With no
//! narrowing matcher the candidates start from every series of the tenant.

use std::collections::{BTreeMap, BTreeSet};

use sextant_core::labels::{Label, Labels};
use sextant_core::matcher::Matcher;

/// A series id local to one shard's head.
pub type SeriesRef = u64;

#[derive(Debug, Default)]
struct TenantPostings {
    /// name → value → refs (sorted, unique).
    by_label: BTreeMap<String, BTreeMap<String, Vec<SeriesRef>>>,
    all: BTreeSet<SeriesRef>,
}

/// Postings for every tenant of one shard.
#[derive(Debug, Default)]
pub struct Postings {
    tenants: BTreeMap<String, TenantPostings>,
    /// Bytes held by keys and lists: the memory account's measure.
    memory_bytes: usize,
}

/// Account bytes of one series ref in a posting list: 8 bytes, and lists grow by doubling, so
/// on average half as much again is allocated and unused.
pub const POSTING_REF_BYTES: usize = 12;
/// Account bytes of one series ref in a tenant's set of all series (a B-tree set).
pub const ALL_REF_BYTES: usize = crate::memory::btree_slot_bytes(8);

/// Account bytes of one label value's entry: its copies of the name and value, its slot in the
/// value map, and its posting list's first buffer (4 refs).
fn value_entry_bytes(label: &Label) -> usize {
    use crate::memory::{btree_slot_bytes, malloc_bytes};
    malloc_bytes(label.name.len()) + malloc_bytes(label.value.len()) + btree_slot_bytes(3 * 24) + malloc_bytes(4 * 8)
}

fn insert_sorted(list: &mut Vec<SeriesRef>, series_ref: SeriesRef) -> bool {
    match list.binary_search(&series_ref) {
        Ok(_) => false,
        Err(i) => {
            list.insert(i, series_ref);
            true
        }
    }
}

impl Postings {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    pub fn add(&mut self, tenant: &str, labels: &Labels, series_ref: SeriesRef) {
        let tenant_postings = self.tenants.entry(tenant.to_string()).or_default();
        if tenant_postings.all.insert(series_ref) {
            self.memory_bytes += ALL_REF_BYTES;
        }
        for label in labels.iter() {
            let values = tenant_postings.by_label.entry(label.name.clone()).or_default();
            let list = values.entry(label.value.clone()).or_insert_with(|| {
                self.memory_bytes += value_entry_bytes(label);
                Vec::new()
            });
            if insert_sorted(list, series_ref) {
                self.memory_bytes += POSTING_REF_BYTES;
            }
        }
    }

    pub fn remove(&mut self, tenant: &str, labels: &Labels, series_ref: SeriesRef) {
        let Some(tenant_postings) = self.tenants.get_mut(tenant) else { return };
        if tenant_postings.all.remove(&series_ref) {
            self.memory_bytes = self.memory_bytes.saturating_sub(ALL_REF_BYTES);
        }
        for label in labels.iter() {
            let Some(values) = tenant_postings.by_label.get_mut(&label.name) else { continue };
            let Some(list) = values.get_mut(&label.value) else { continue };
            if let Ok(i) = list.binary_search(&series_ref) {
                list.remove(i);
                self.memory_bytes = self.memory_bytes.saturating_sub(POSTING_REF_BYTES);
            }
            if list.is_empty() {
                values.remove(&label.value);
                self.memory_bytes = self.memory_bytes.saturating_sub(value_entry_bytes(label));
            }
            if values.is_empty() {
                tenant_postings.by_label.remove(&label.name);
            }
        }
        if tenant_postings.all.is_empty() {
            self.tenants.remove(tenant);
        }
    }

    /// Refs of the tenant's series selected by all matchers, ascending.
    pub fn select(&self, tenant: &str, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let Some(tenant_postings) = self.tenants.get(tenant) else { return Vec::new() };
        let empty = BTreeMap::new();
        let mut candidates: Option<BTreeSet<SeriesRef>> = None;
        // Narrowing matchers first: they shrink the set cheaply.
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            let values = tenant_postings.by_label.get(&matcher.name).unwrap_or(&empty);
            let mut union = BTreeSet::new();
            for (value, list) in values {
                if matcher.matches_value(value) {
                    union.extend(list.iter().copied());
                }
            }
            candidates = Some(match candidates {
                None => union,
                Some(current) => current.intersection(&union).copied().collect(),
            });
            if candidates.as_ref().is_some_and(|c| c.is_empty()) {
                return Vec::new();
            }
        }
        let mut candidates = candidates.unwrap_or_else(|| tenant_postings.all.clone());
        for matcher in matchers.iter().filter(|m| m.matches_empty()) {
            let Some(values) = tenant_postings.by_label.get(&matcher.name) else { continue };
            for (value, list) in values {
                if !matcher.matches_value(value) {
                    for series_ref in list {
                        candidates.remove(series_ref);
                    }
                }
            }
        }
        candidates.into_iter().collect()
    }

    /// Label names of the tenant's series, sorted.
    pub fn label_names(&self, tenant: &str) -> Vec<String> {
        self.tenants.get(tenant).map(|t| t.by_label.keys().cloned().collect()).unwrap_or_default()
    }

    /// Values of one label across the tenant's series, sorted.
    pub fn label_values(&self, tenant: &str, name: &str) -> Vec<String> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.by_label.get(name))
            .map(|values| values.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// For the cardinality report: (label name, number of distinct values, series with that
    /// label), sorted by name.
    pub fn label_stats(&self, tenant: &str) -> Vec<(String, usize, usize)> {
        let Some(t) = self.tenants.get(tenant) else { return Vec::new() };
        t.by_label
            .iter()
            .map(|(name, values)| (name.clone(), values.len(), values.values().map(Vec::len).sum()))
            .collect()
    }

    /// Series count per value of one label (e.g. `__name__` for series per metric), sorted by value.
    pub fn series_per_value(&self, tenant: &str, name: &str) -> Vec<(String, usize)> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.by_label.get(name))
            .map(|values| values.iter().map(|(v, list)| (v.clone(), list.len())).collect())
            .unwrap_or_default()
    }

    /// Number of the tenant's series carrying `name=value`.
    pub fn count(&self, tenant: &str, name: &str, value: &str) -> usize {
        self.tenants
            .get(tenant)
            .and_then(|t| t.by_label.get(name))
            .and_then(|values| values.get(value))
            .map(Vec::len)
            .unwrap_or(0)
    }

    /// Number of the tenant's series.
    pub fn tenant_series(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map(|t| t.all.len()).unwrap_or(0)
    }

    pub fn tenants(&self) -> Vec<String> {
        self.tenants.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_core::matcher::MatchOp;

    fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
        Matcher::new(op, name, value).unwrap()
    }

    // Goal: selection equals brute-force filtering for every matcher kind, including matchers
    // that match the empty string and so keep series without the label. Method: a small fixed
    // index and a table of matcher sets, each checked against `matches_all` over all series.
    #[test]
    fn select_equals_brute_force() {
        let series = [
            Labels::from_pairs(&[("__name__", "up"), ("job", "a")]),
            Labels::from_pairs(&[("__name__", "up"), ("job", "b"), ("env", "prod")]),
            Labels::from_pairs(&[("__name__", "up")]),
            Labels::from_pairs(&[("__name__", "cpu"), ("job", "a"), ("env", "dev")]),
        ];
        let mut postings = Postings::new();
        for (i, labels) in series.iter().enumerate() {
            postings.add("t", labels, i as SeriesRef);
        }
        postings.add("other", &series[0], 99);
        let cases: Vec<Vec<Matcher>> = vec![
            vec![m(MatchOp::Equal, "__name__", "up")],
            vec![m(MatchOp::Equal, "__name__", "up"), m(MatchOp::NotEqual, "job", "a")],
            vec![m(MatchOp::Equal, "job", "")],
            vec![m(MatchOp::RegexMatch, "job", "a|b")],
            vec![m(MatchOp::RegexMatch, "job", ".*")],
            vec![m(MatchOp::RegexNoMatch, "env", "prod")],
            vec![m(MatchOp::RegexMatch, "env", ".+"), m(MatchOp::Equal, "job", "a")],
            vec![m(MatchOp::Equal, "nope", "x")],
            vec![],
        ];
        for matchers in cases {
            let expected: Vec<SeriesRef> = series
                .iter()
                .enumerate()
                .filter(|(_, l)| sextant_core::matcher::matches_all(&matchers, l))
                .map(|(i, _)| i as SeriesRef)
                .collect();
            assert_eq!(postings.select("t", &matchers), expected, "{matchers:?}");
        }
        assert_eq!(postings.select("other", &[]), vec![99]);
        assert_eq!(postings.label_values("t", "job"), vec!["a", "b"]);
        assert_eq!(postings.count("t", "__name__", "up"), 3);
        postings.remove("t", &series[1], 1);
        assert_eq!(postings.label_values("t", "env"), vec!["dev"]);
        assert_eq!(postings.tenant_series("t"), 3);
    }
}

//! The limits each tenant gets, as the node applies them: from the metadata group's applied
//! state once the cluster is seeded, from this node's `serve` flags before that (and on nodes
//! that run without a cluster, as the simulator and most tests do).
//!
//! Resolution, field by field: a tenant's own entry (`PutTenantLimits`) wins where the field
//! is non-zero; a zero field, or a tenant without an entry, takes the cluster default
//! (`SeedCluster`). Blocked labels are the union of the cluster's and the tenant's. The
//! defaults keep the flags' meaning of 0 (ingest rate and query range: unlimited).
//!
//! Which applied index a [`LimitsView`] reflects is its `version`; the node exposes it as
//! `sextant_metadata_applied_index` and in its logs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sextant_raft::command::{ClusterDefaults, TenantLimits};
use sextant_raft::state::MetadataState;

use crate::config::ServeConfig;

/// The effective limits of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub series_per_metric_max: u64,
    pub series_per_tenant_max: u64,
    /// Samples/s; 0 = unlimited.
    pub ingest_rate_samples_per_s_max: u64,
    pub blocked_labels: BTreeSet<String>,
    pub query_samples_max: usize,
    pub query_series_max: usize,
    /// Longest `end - start` of a range query (and of the series/labels endpoints' window is
    /// not limited by it); 0 = unlimited.
    pub query_range_ms_max: i64,
    pub query_timeout_ms: i64,
}

/// Where the limits in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitsSource {
    /// This node's flags: no cluster, or the cluster is not seeded yet.
    Flags,
    /// The metadata group's applied state.
    Cluster,
}

/// Every tenant's limits at one applied index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsView {
    pub source: LimitsSource,
    /// The applied index of the metadata state this view was built from (0: none).
    pub version: u64,
    pub defaults: Arc<EffectiveLimits>,
    pub tenants: BTreeMap<String, Arc<EffectiveLimits>>,
    /// The default-limit settings where this node's flags differ from the cluster's values
    /// (`setting: flag X, cluster Y`), in a fixed order; empty under `Flags`.
    pub flag_differences: Vec<String>,
}

impl LimitsView {
    /// The limits of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Arc<EffectiveLimits> {
        self.tenants.get(tenant).unwrap_or(&self.defaults).clone()
    }

    /// The view of a node without (or before) cluster defaults: its own flags for everyone.
    pub fn from_flags(config: &ServeConfig) -> LimitsView {
        let defaults = flag_defaults(config);
        LimitsView { source: LimitsSource::Flags, version: 0, defaults: Arc::new(resolve(&defaults, None)), tenants: BTreeMap::new(), flag_differences: Vec::new() }
    }

    /// The view of a metadata state. Before the cluster is seeded this node's flags stand in
    /// for the defaults (tenant entries still apply over them).
    pub fn from_state(state: &MetadataState, config: &ServeConfig) -> LimitsView {
        let version = state.last_applied.map(|id| id.index).unwrap_or(0);
        let flags = flag_defaults(config);
        let (source, defaults, flag_differences) = match &state.defaults {
            Some(seeded) => (LimitsSource::Cluster, seeded.defaults.clone(), differences(&flags, &seeded.defaults)),
            None => (LimitsSource::Flags, flags, Vec::new()),
        };
        let tenants = state.tenants.iter().map(|(name, tenant)| (name.clone(), Arc::new(resolve(&defaults, Some((&tenant.limits, &tenant.blocked_labels)))))).collect();
        LimitsView { source, version, defaults: Arc::new(resolve(&defaults, None)), tenants, flag_differences }
    }

    /// True when the two views give every tenant the same limits (whatever their versions).
    pub fn same_limits(&self, other: &LimitsView) -> bool {
        self.source == other.source && self.defaults == other.defaults && self.tenants == other.tenants
    }
}

/// The cluster defaults this node's flags would seed.
pub fn flag_defaults(config: &ServeConfig) -> ClusterDefaults {
    let limits = &config.limits;
    ClusterDefaults {
        limits: TenantLimits {
            series_per_metric_max: limits.series_per_metric_max,
            series_per_tenant_max: limits.series_per_tenant_max,
            ingest_rate_samples_per_s_max: limits.ingest_rate_samples_per_s_max,
            query_samples_max: config.query.samples_max as u64,
            query_series_max: config.query.series_max as u64,
            // No flag: a range query's span is bounded only by its 11,000 steps.
            query_range_ms_max: 0,
            query_timeout_ms: config.query.timeout_ms,
        },
        blocked_labels: limits.blocked_label_names.clone(),
    }
}

fn pick_u64(own: u64, default: u64) -> u64 {
    if own != 0 {
        own
    } else {
        default
    }
}

fn pick_i64(own: i64, default: i64) -> i64 {
    if own != 0 {
        own
    } else {
        default
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn resolve(defaults: &ClusterDefaults, own: Option<(&TenantLimits, &BTreeSet<String>)>) -> EffectiveLimits {
    let base = &defaults.limits;
    let zero = TenantLimits::default();
    let empty = BTreeSet::new();
    let (own, own_blocked) = own.unwrap_or((&zero, &empty));
    EffectiveLimits {
        series_per_metric_max: pick_u64(own.series_per_metric_max, base.series_per_metric_max),
        series_per_tenant_max: pick_u64(own.series_per_tenant_max, base.series_per_tenant_max),
        ingest_rate_samples_per_s_max: pick_u64(own.ingest_rate_samples_per_s_max, base.ingest_rate_samples_per_s_max),
        blocked_labels: defaults.blocked_labels.union(own_blocked).cloned().collect(),
        query_samples_max: to_usize(pick_u64(own.query_samples_max, base.query_samples_max)),
        query_series_max: to_usize(pick_u64(own.query_series_max, base.query_series_max)),
        query_range_ms_max: pick_i64(own.query_range_ms_max, base.query_range_ms_max),
        query_timeout_ms: pick_i64(own.query_timeout_ms, base.query_timeout_ms),
    }
}

/// `setting: flag X, cluster Y` for every default where the two differ.
fn differences(flags: &ClusterDefaults, cluster: &ClusterDefaults) -> Vec<String> {
    let (f, c) = (&flags.limits, &cluster.limits);
    let mut out = Vec::new();
    let mut compare = |setting: &str, flag: String, cluster: String| {
        if flag != cluster {
            out.push(format!("{setting}: flag {flag}, cluster {cluster}"));
        }
    };
    compare("series-per-metric-max", f.series_per_metric_max.to_string(), c.series_per_metric_max.to_string());
    compare("series-per-tenant-max", f.series_per_tenant_max.to_string(), c.series_per_tenant_max.to_string());
    compare("ingest-rate-max", f.ingest_rate_samples_per_s_max.to_string(), c.ingest_rate_samples_per_s_max.to_string());
    compare("query-samples-max", f.query_samples_max.to_string(), c.query_samples_max.to_string());
    compare("query-series-max", f.query_series_max.to_string(), c.query_series_max.to_string());
    compare("query-range-max (ms)", f.query_range_ms_max.to_string(), c.query_range_ms_max.to_string());
    compare("query-timeout (ms)", f.query_timeout_ms.to_string(), c.query_timeout_ms.to_string());
    compare("blocked-label", format!("{:?}", flags.blocked_labels), format!("{:?}", cluster.blocked_labels));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_raft::state::{Tenant, VersionedDefaults};

    fn config(series_per_metric_max: u64) -> ServeConfig {
        let mut config = ServeConfig::default();
        config.limits.series_per_metric_max = series_per_metric_max;
        config
    }

    fn state(defaults: Option<ClusterDefaults>, tenants: &[(&str, TenantLimits, &[&str])]) -> MetadataState {
        let mut state = MetadataState { defaults: defaults.map(|defaults| VersionedDefaults { defaults, version: 3 }), ..MetadataState::default() };
        for (name, limits, blocked) in tenants {
            state.tenants.insert(name.to_string(), Tenant { limits: limits.clone(), blocked_labels: blocked.iter().map(|s| s.to_string()).collect(), version: 4 });
        }
        state
    }

    /// (series_per_metric_max, series_per_tenant_max, blocked labels) of `tenant`.
    fn check(view: &LimitsView, tenant: &str, expected: (u64, u64, &[&str])) {
        let limits = view.for_tenant(tenant);
        let blocked: Vec<&str> = limits.blocked_labels.iter().map(String::as_str).collect();
        assert_eq!((limits.series_per_metric_max, limits.series_per_tenant_max, blocked.as_slice()), expected, "tenant {tenant}");
    }

    // Goal: the resolution order — tenant field, else cluster default, else (unseeded) this
    // node's flags; blocked labels add up; flag differences are listed only when seeded.
    // Method: a table of states against one node's flags.
    #[test]
    fn tenant_then_cluster_then_flags() {
        let node = config(100);
        let flags_only = LimitsView::from_state(&state(None, &[("a", TenantLimits { series_per_metric_max: 2, ..TenantLimits::default() }, &["pod"])]), &node);
        assert_eq!(flags_only.source, LimitsSource::Flags);
        check(&flags_only, "a", (2, 1_000_000, &["pod"]));
        check(&flags_only, "other", (100, 1_000_000, &[]));
        assert!(flags_only.flag_differences.is_empty());

        let cluster = ClusterDefaults { limits: TenantLimits { series_per_metric_max: 7, series_per_tenant_max: 70, ..flag_defaults(&node).limits }, blocked_labels: ["session".to_string()].into() };
        let seeded = LimitsView::from_state(&state(Some(cluster), &[("a", TenantLimits { series_per_metric_max: 2, ..TenantLimits::default() }, &["pod"])]), &node);
        assert_eq!(seeded.source, LimitsSource::Cluster);
        check(&seeded, "a", (2, 70, &["pod", "session"]));
        check(&seeded, "other", (7, 70, &["session"]));
        assert_eq!(
            seeded.flag_differences,
            vec![
                "series-per-metric-max: flag 100, cluster 7".to_string(),
                "series-per-tenant-max: flag 1000000, cluster 70".to_string(),
                "blocked-label: flag {}, cluster {\"session\"}".to_string(),
            ]
        );
        assert!(!seeded.same_limits(&flags_only));
        assert!(LimitsView::from_flags(&node).same_limits(&LimitsView::from_state(&MetadataState::default(), &node)));
    }

    // Goal: the flags seed exactly what the node would enforce on its own.
    #[test]
    fn flag_defaults_match_the_flags() {
        let mut node = config(5);
        node.query.timeout_ms = 30_000;
        node.limits.blocked_label_names.insert("x".into());
        let view = LimitsView::from_flags(&node);
        let d = &view.defaults;
        assert_eq!((d.series_per_metric_max, d.query_timeout_ms, d.query_range_ms_max), (5, 30_000, 0));
        assert_eq!(d.query_samples_max, node.query.samples_max);
        assert!(d.blocked_labels.contains("x"));
    }
}

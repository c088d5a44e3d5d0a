//! The cluster as the planner sees it: objects cut down to the fields that matter, compared
//! with `PartialEq` so that no-op updates can be skipped.

pub mod gateway;
pub mod gateway_cache;
pub mod intern;
pub mod node;
pub mod pod;

use std::collections::BTreeMap;

pub use gateway::{Gateway, GatewaySpec, RecordedAssignment, SelectorProblem, SpecError};
pub use gateway_cache::GatewayCache;
pub use intern::{Sym, intern};
pub use node::{Ineligible, Node, NodeAddress, NodeAddressKind, NodeInterface};
pub use pod::{Pod, PodKey, PodLabels, PodName};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Everything the planner reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterIndex {
    pub gateways: BTreeMap<String, Gateway>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<PodKey, Pod>,
    /// Namespace name to its labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// The cluster's Service ranges (ServiceCIDR objects, and `--service-cidr`), sorted.
    pub service_cidrs: Vec<ipnetwork::IpNetwork>,
}

impl ClusterIndex {
    /// Labels of a namespace; an unknown namespace has none (it cannot match a non-empty
    /// selector, and its pods are not selected by `{}` until the namespace is seen).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace)
    }
}

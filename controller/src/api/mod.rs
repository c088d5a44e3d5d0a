//! The `EgressGateway` API: types, schema and the generated CRD.

pub mod crd;
pub mod gateway;
pub mod label_grammar;
pub mod schema;
pub mod selector;

pub use gateway::{
    EgressGateway, EgressGatewaySpec, EgressGatewayStatus, GROUP, IpAssignment, VERSION,
};
pub use selector::{LabelLookup, LabelSelector, LabelSelectorRequirement, SelectorOperator};

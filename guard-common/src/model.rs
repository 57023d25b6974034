//! The reference model of the datapath (placeholder: being written from docs/datapath.md).

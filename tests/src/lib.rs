//! Shared helpers of the privileged tests.
//!
//! - [`packet`]: a builder for the frames guard judges (also used by the attack generator);
//! - [`cases`]: the datapath case table (frames, policies, expected verdicts) and its runner,
//!   shared by the datapath tests and `guard-vmcheck`;
//! - [`datapath`]: runs guard's programs on frames with `BPF_PROG_TEST_RUN` against a policy
//!   given as a [`guard_common::model::Policy`], so the kernel and the reference model see the
//!   same input;
//! - [`lab`]: a libvirt-like host built from namespaces, bridges and veths, the attack
//!   generator and the legitimate flows (shared by the tests and `guard-lab demo`);
//! - [`bench`]: `guard-bench`, guard against the floor, xdp-filter and nftables;
//! - [`rng`]: the seedable generator of the randomised tests and synthetic policies;
//! - [`route_world`]: the network namespace whose routes the datapath tests' route checks
//!   consult, and its mirror for the reference model.

pub mod bench;
pub mod cases;
pub mod datapath;
pub mod lab;
pub mod packet;
pub mod rng;
pub mod route_world;

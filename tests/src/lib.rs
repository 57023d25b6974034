//! Shared helpers of the privileged tests.
//!
//! - [`packet`]: a builder for the frames guard judges (also used by the attack generator);
//! - [`datapath`]: runs guard's programs on frames with `BPF_PROG_TEST_RUN` against a policy
//!   given as a [`guard_common::model::Policy`], so the kernel and the reference model see the
//!   same input;
//! - [`lab`]: a libvirt-like host built from namespaces, bridges and veths, the attack
//!   generator and the legitimate flows (shared by the tests and `guard-lab demo`).

pub mod datapath;
pub mod lab;
pub mod packet;

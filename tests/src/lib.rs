//! Shared helpers of the privileged tests.
//!
//! - [`packet`]: a builder for the frames guard judges (also used by the attack generator);
//! - [`datapath`]: runs guard's programs on frames with `BPF_PROG_TEST_RUN` against a policy
//!   given as a [`guard_common::model::Policy`], so the kernel and the reference model see the
//!   same input.

pub mod datapath;
pub mod packet;

//! The thin layer over the kernel that attaching needs: capabilities, the aya program handles,
//! hooks (XDP, TCX and `cls_bpf`), the raw BPF syscalls aya 0.14 lacks, and kernel-version
//! facts. Decisions live elsewhere (`attach::port_plan`); this layer only carries them out.

pub mod bpf;
pub mod caps;
pub mod hook;
pub mod kernel;
pub mod programs;
pub mod xdp_peer;

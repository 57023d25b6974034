//! guard's userspace library.

/// The release build of the eBPF object (programs `guard_xdp`, `guard_tc`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

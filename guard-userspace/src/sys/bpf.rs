//! Raw BPF syscalls that aya 0.14 does not wrap.

use std::{fs, io};

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH` (`enum bpf_cmd`, include/uapi/linux/bpf.h); aya 0.14
/// wraps neither for a pinned link.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` now, then removes the pin. Best effort: the link may
/// be gone already, or defunct because its interface left.
///
/// Removing the pin alone releases the link, but not by the time `unlink` returns: bpffs
/// drops its reference when the inode is freed after an RCU grace period (`bpf_free_inode`),
/// and the last `bpf_link_put` defers the detach to a workqueue (`bpf_link_put_deferred`).
/// Until then the hook keeps judging frames, so `guardctl detach` returned while guard still
/// enforced (measured: frames sent right after a TCX detach were all still dropped).
/// `BPF_LINK_DETACH` (Linux 5.9; XDP and TCX links implement it) unhooks synchronously.
pub fn release_link_pin(path: &std::path::Path) {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    if let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
        let mut get = [0u64; 3];
        get[0] = cpath.as_ptr() as u64;
        // SAFETY: `get` is a valid, zero-padded bpf_attr of the size passed; `cpath` outlives
        // the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                get.as_mut_ptr(),
                size_of_val(&get),
            )
        };
        if let Ok(fd) = i32::try_from(fd)
            && fd >= 0
        {
            // SAFETY: a descriptor the kernel just gave us; the OwnedFd closes it.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // union bpf_attr for BPF_LINK_DETACH: link_fd.
            let mut detach = [0u32; 4];
            detach[0] = std::os::fd::AsRawFd::as_raw_fd(&fd).cast_unsigned();
            // SAFETY: a valid, zero-padded bpf_attr of the size passed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_LINK_DETACH,
                    detach.as_mut_ptr(),
                    size_of_val(&detach),
                )
            };
            if rc != 0 {
                log::debug!(
                    "BPF_LINK_DETACH {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                );
            }
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", path.display()),
    }
}

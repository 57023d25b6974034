//! The few `bpf(2)` commands the bench issues itself, with the attribute layouts of
//! `include/uapi/linux/bpf.h`.
//!
//! Why raw: the floor programs (`r0 = verdict; exit`) have no ELF object for aya to load, and
//! one `BPF_PROG_TEST_RUN` path for every program (aya-loaded or not) means the floor, the peer
//! and guard are timed by the very same code. Attaching goes through `BPF_LINK_CREATE`, so a
//! hook lives exactly as long as its link fd (no netlink state to clean up after a crash).

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// `enum bpf_attach_type` values.
pub const BPF_XDP: u32 = 37;
pub const BPF_TCX_INGRESS: u32 = 46;

/// `XDP_FLAGS_DRV_MODE`: native XDP (veth has it).
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames the program redirects (or `XDP_TX`s) are really sent.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_ACT_OK: u32 = 0;

/// Size of the attribute buffer passed to the kernel: every field the bench sets lies below
/// it, and the kernel accepts a shorter `bpf_attr` than its own (the tail reads as zero).
const ATTR_LEN: usize = 128;

/// A zeroed `union bpf_attr`, filled field by field at the uapi offsets.
#[repr(C, align(8))]
struct Attr([u8; ATTR_LEN]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_LEN])
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of ATTR_LEN bytes for the whole call, and every
    // pointer stored in it points at memory the caller keeps alive until we return.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            ATTR_LEN as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One BPF instruction, as `struct bpf_insn` lays it out (code, regs, off, imm).
const fn insn(code: u8, regs: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | ((regs as u64) << 8)
        | ((off.cast_unsigned() as u64) << 16)
        | ((imm.cast_unsigned() as u64) << 32)
}

/// `r0 = imm` (`BPF_ALU64 | BPF_MOV | BPF_K`).
const fn mov_r0(imm: u32) -> u64 {
    insn(0xb7, 0, 0, imm.cast_signed())
}
/// `exit` (`BPF_JMP | BPF_EXIT`).
const EXIT: u64 = insn(0x95, 0, 0, 0);

/// Loads `r0 = verdict; exit`: the least a program of `prog_type` can do. Two instructions,
/// compiled by the JIT to a handful of bytes: what any filter costs at minimum on that hook.
pub fn load_constant_program(prog_type: u32, verdict: u32, name: &str) -> Result<OwnedFd> {
    load_program(prog_type, &[mov_r0(verdict), EXIT], name)
}

/// An XDP program that reads the first byte of the frame (after the bounds check the
/// verifier wants) and drops it: the least any filter that looks at the frame pays, including
/// the first touch of the frame's cache line.
pub fn load_read_and_drop() -> Result<OwnedFd> {
    let insns = [
        insn(0x61, 0x12, 0, 0),  // r2 = *(u32 *)(r1 + 0)   xdp_md.data
        insn(0x61, 0x13, 4, 0),  // r3 = *(u32 *)(r1 + 4)   xdp_md.data_end
        insn(0xbf, 0x24, 0, 0),  // r4 = r2
        insn(0x07, 0x04, 0, 14), // r4 += 14
        insn(0x2d, 0x34, 1, 0),  // if r4 > r3 goto +1
        insn(0x71, 0x20, 0, 0),  // r0 = *(u8 *)(r2 + 0)
        mov_r0(XDP_DROP),
        EXIT,
    ];
    load_program(BPF_PROG_TYPE_XDP, &insns, "bench_read_drop")
}

/// `bpf_fib_lookup`'s helper id, and its flag `BPF_FIB_LOOKUP_SKIP_NEIGH` (Linux 6.3).
const BPF_FUNC_FIB_LOOKUP: i32 = 69;
pub const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;

/// An XDP program that does what any route check must: for an untagged IPv4 frame, zero a
/// `struct bpf_fib_lookup` on the stack, fill family, protocol, TOS, input interface `ifindex`
/// and both addresses from the frame, call `bpf_fib_lookup` with `flags`, and pass whatever
/// it says. Its time minus the empty program's is the helper's own cost on that frame: the
/// floor under guard's route check.
pub fn load_fib_lookup(ifindex: u32, flags: u32) -> Result<OwnedFd> {
    load_fib_program(ifindex, flags, false)
}

/// Like [`load_fib_lookup`], but the program returns the interface the helper left in the
/// parameters (the egress interface, or the input one where the kernel gave none): a probe of
/// what this kernel reports for a next hop without a neighbour entry.
pub fn load_fib_egress_probe(ifindex: u32) -> Result<OwnedFd> {
    load_fib_program(ifindex, 0, true)
}

fn load_fib_program(ifindex: u32, flags: u32, return_ifindex: bool) -> Result<OwnedFd> {
    // struct bpf_fib_lookup (64 bytes) at r10 - 64: family +0, l4_protocol +1, ifindex +8,
    // tos +12, ipv4_src +16, ipv4_dst +32. The probe's two extra instructions sit between
    // the call and `out`.
    let extra: i16 = if return_ifindex { 2 } else { 0 };
    let mut insns = vec![
        insn(0xbf, 0x16, 0, 0),          // r6 = r1                    ctx
        insn(0x61, 0x12, 0, 0),          // r2 = *(u32 *)(r1 + 0)     xdp_md.data
        insn(0x61, 0x13, 4, 0),          // r3 = *(u32 *)(r1 + 4)     xdp_md.data_end
        insn(0xbf, 0x24, 0, 0),          // r4 = r2
        insn(0x07, 0x04, 0, 34),         // r4 += 34                  Ethernet + IPv4 header
        insn(0x2d, 0x34, 26 + extra, 0), // if r4 > r3 goto out
        insn(0x69, 0x25, 12, 0),         // r5 = *(u16 *)(r2 + 12)    EtherType
        insn(0x55, 0x05, 24 + extra, 8), // if r5 != htons(0x0800) goto out
        insn(0x61, 0x27, 30, 0),         // r7 = *(u32 *)(r2 + 30)    destination
        insn(0x61, 0x28, 26, 0),         // r8 = *(u32 *)(r2 + 26)    source
        insn(0x71, 0x29, 23, 0),         // r9 = *(u8 *)(r2 + 23)     protocol
        insn(0x71, 0x25, 15, 0),         // r5 = *(u8 *)(r2 + 15)     TOS
    ];
    for k in 0..8i16 {
        insns.push(insn(0x7a, 0x0a, -64 + 8 * k, 0)); // *(u64 *)(r10 - 64 + 8k) = 0
    }
    insns.extend([
        insn(0x72, 0x0a, -64, 2),                     // family = AF_INET
        insn(0x73, 0x9a, -63, 0),                     // l4_protocol = r9
        insn(0x62, 0x0a, -56, ifindex.cast_signed()), // ifindex
        insn(0x73, 0x5a, -52, 0),                     // tos = r5
        insn(0x63, 0x8a, -48, 0),                     // ipv4_src = r8
        insn(0x63, 0x7a, -32, 0),                     // ipv4_dst = r7
        insn(0xbf, 0x61, 0, 0),                       // r1 = r6
        insn(0xbf, 0xa2, 0, 0),                       // r2 = r10
        insn(0x07, 0x02, 0, -64),                     // r2 += -64
        insn(0xb7, 0x03, 0, 64),                      // r3 = sizeof(struct bpf_fib_lookup)
        insn(0xb7, 0x04, 0, flags.cast_signed()),
        insn(0x85, 0, 0, BPF_FUNC_FIB_LOOKUP),
    ]);
    if return_ifindex {
        insns.extend([
            insn(0x61, 0xa0, -56, 0), // r0 = *(u32 *)(r10 - 56)   ifindex
            EXIT,
        ]);
    }
    // out:
    insns.extend([mov_r0(XDP_PASS), EXIT]);
    load_program(BPF_PROG_TYPE_XDP, &insns, "bench_fib_xdp")
}

fn load_program(prog_type: u32, insns: &[u64], name: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.u32(0, prog_type);
    attr.u32(4, insns.len() as u32);
    attr.u64(8, insns.as_ptr() as u64);
    attr.u64(16, license.as_ptr() as u64);
    // prog_name[16] at offset 48: shows up in `bpftool prog`.
    let n = name.len().min(15);
    attr.0[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    let fd = bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("BPF_PROG_LOAD of {name}"))?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    pub retval: u32,
    /// Kernel-measured average nanoseconds per run (`duration`).
    pub ns_per_run: u32,
}

/// Runs `prog` `repeat` times on `data` and returns the kernel's verdict and per-run average.
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd().cast_unsigned());
    attr.u32(8, data.len() as u32);
    attr.u64(16, data.as_ptr() as u64);
    attr.u32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRun {
        retval: attr.get_u32(4),
        ns_per_run: attr.get_u32(36),
    })
}

/// `struct xdp_md` as `ctx_in`: only `ingress_ifindex` (offset 12) and `rx_queue_index`
/// (16) may be set for a test run.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Live-frames mode (what xdp-trafficgen does): runs `prog` on `repeat` copies of `frame`
/// arriving on `ifindex` of the caller's network namespace, in batches of `batch`; frames the
/// program `XDP_TX`es are really transmitted out of that device. Returns the wall time the
/// kernel reports (ns per frame).
pub fn live_frames(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
    batch: u32,
) -> io::Result<u32> {
    let ctx = XdpMd {
        data: 0,
        data_end: frame.len() as u32,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd().cast_unsigned());
    attr.u32(8, frame.len() as u32);
    attr.u64(16, frame.as_ptr() as u64);
    attr.u32(32, repeat);
    attr.u32(40, size_of::<XdpMd>() as u32);
    attr.u64(48, (&raw const ctx) as u64);
    attr.u32(64, BPF_F_TEST_XDP_LIVE_FRAMES);
    attr.u32(72, batch);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.get_u32(36))
}

/// Attaches `prog` to `ifindex` of the caller's network namespace through a BPF link
/// (`attach_type` [`BPF_XDP`] with `flags` the XDP mode, or [`BPF_TCX_INGRESS`]). The hook goes
/// away when the returned fd is closed.
pub fn link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: u32,
    flags: u32,
) -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd().cast_unsigned());
    attr.u32(4, ifindex);
    attr.u32(8, attach_type);
    attr.u32(12, flags);
    let fd = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
        format!("BPF_LINK_CREATE (attach type {attach_type}) on ifindex {ifindex}")
    })?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Pins the calling thread to one CPU (so the receive work of the frames it sends, which runs
/// in its softirq context, is accounted on that CPU).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

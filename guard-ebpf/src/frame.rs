//! The thin context layer: what the classifier needs from an XDP or a TC context.
//! Parsing code sees only [`Frame`], so XDP and TC run the very same instructions
//! (Cilium's `ctx` abstraction over `xdp_md` and `__sk_buff`, in Rust).

use core::mem::size_of;

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    cty::c_void,
    helpers::{bpf_fib_lookup as fib_lookup_helper, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// `sizeof(struct bpf_fib_lookup)`, the length `bpf_fib_lookup` is given.
const FIB_PARAMS_LEN: i32 = 64;
const _: () = assert!(size_of::<bpf_fib_lookup>() == FIB_PARAMS_LEN as usize);

/// The parser could not finish: a header it needs is missing, cut short or invalid (rule 4 of the verdict order: fail closed when the frame is addressed to the host).
pub struct Malformed;

pub trait Frame {
    /// First byte of the frame (the destination MAC).
    fn start(&self) -> usize;
    /// One past the last byte the program may read directly.
    fn end(&self) -> usize;
    /// Length of the whole frame (`n` in docs/datapath.md).
    fn len(&self) -> u32;
    /// The interface the frame arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// VLAN tags the hook already took out of the bytes (0 or 1).
    fn tags_stripped(&self) -> u32;
    /// The TCI of the tag the hook took out (meaningful when `tags_stripped() == 1`).
    fn stripped_tci(&self) -> u16;
    /// Copies `len` bytes from `offset` of the frame to `dst` with the hook's load helper
    /// (which also reads non-linear data). Off the hot path only: the event path, and IPv4
    /// options (whose byte-by-byte walk the verifier cannot follow on packet pointers).
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes.
    unsafe fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
    /// `bpf_fib_lookup` in the network namespace of the device the program runs on.
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64;

    /// The `T` at `offset`, bounds-checked against the readable bytes. Only used with types of
    /// alignment 1 (byte arrays and network-types headers made of them), so the reference is
    /// valid at any offset.
    #[inline(always)]
    fn at<T>(&self, offset: usize) -> Result<&T, Malformed> {
        const { assert!(align_of::<T>() == 1) };
        // Wrapping adds: no overflow-check branch for the verifier to see in debug builds
        // (offsets are bounded far below usize::MAX by the callers).
        let start = self.start();
        if start.wrapping_add(offset).wrapping_add(size_of::<T>()) > self.end() {
            return Err(Malformed);
        }
        // SAFETY: the bytes `[start + offset, start + offset + size_of::<T>())` lie inside the
        // packet (checked above, which is also what the verifier checks), and `T` has
        // alignment 1 and no invalid bit patterns.
        Ok(unsafe { &*(start.wrapping_add(offset) as *const T) })
    }

    /// Does the frame (by its length, `n`) have `bytes` bytes from `offset` on?
    #[inline(always)]
    fn has(&self, offset: usize, bytes: usize) -> bool {
        offset.wrapping_add(bytes) <= self.len() as usize
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // The kernel guarantees data <= data_end, but both are plain scalars to the verifier:
        // a checked `-` keeps an overflow panic path that no debug build could load.
        self.data_end().wrapping_sub(self.data()) as u32
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `ctx` points at the kernel's `xdp_md` for this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn tags_stripped(&self) -> u32 {
        // XDP sees the frame as it came off the wire: tags are still in the bytes.
        0
    }
    #[inline(always)]
    fn stripped_tci(&self) -> u16 {
        0
    }
    #[inline(always)]
    unsafe fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: `ctx` is this run's `xdp_md`; the caller vouches for `dst`.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast::<c_void>(), len) == 0 }
    }
    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
        // SAFETY: `ctx` is this run's `xdp_md`; `params` is a live, full-size struct.
        unsafe { fib_lookup_helper(self.ctx.cast::<c_void>(), params, FIB_PARAMS_LEN, flags) }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.len()
    }
    #[inline(always)]
    #[expect(
        clippy::misnamed_getters,
        reason = "skb->ifindex is what XDP calls ingress_ifindex: the device the program runs on"
    )]
    fn ingress_ifindex(&self) -> u32 {
        // The device the program runs on (the port, or the bridge for the bridge hook), as
        // XDP's `ingress_ifindex` is.
        // SAFETY: `skb` points at the kernel's `__sk_buff` for this run.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn tags_stripped(&self) -> u32 {
        // On a live device the core moves the outer tag into skb metadata before TC ingress
        // (skb_vlan_untag / hardware offload); it no longer is in the bytes but still counts.
        // SAFETY: as above.
        u32::from(unsafe { (*self.skb.skb).vlan_present } != 0)
    }
    #[inline(always)]
    fn stripped_tci(&self) -> u16 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).vlan_tci as u16 }
    }
    #[inline(always)]
    unsafe fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: `skb` is this run's `__sk_buff`; the caller vouches for `dst`.
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast::<c_void>(),
                offset,
                dst.cast::<c_void>(),
                len,
            ) == 0
        }
    }
    #[inline(always)]
    fn fib_lookup(&self, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
        // SAFETY: `skb` is this run's `__sk_buff`; `params` is a live, full-size struct.
        unsafe { fib_lookup_helper(self.skb.skb.cast::<c_void>(), params, FIB_PARAMS_LEN, flags) }
    }
}

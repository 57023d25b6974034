//! The UDP ports the kernel's foo-over-UDP receivers listen on (`ip fou add port P ...`), over
//! generic netlink: they decapsulate what a guest sends to any host address on that port, like
//! a VXLAN device, but are no interface, so rtnetlink does not show them.
//!
//! Two requests on a `NETLINK_GENERIC` socket: the controller resolves the `fou` family's id
//! (`CTRL_CMD_GETFAMILY`), then `FOU_CMD_GET` with `NLM_F_DUMP` lists the receivers
//! (`include/uapi/linux/fou.h`). Without the fou module the family does not exist: no ports.
//! The messages are a few fixed fields, written and read here rather than through a generic
//! netlink crate for two attributes.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::error::{GuardError, Result};

const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const FOU_CMD_GET: u8 = 3;
const FOU_ATTR_PORT: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// The ports of every fou/gue receiver in the caller's network namespace.
pub fn ports() -> Result<Vec<u16>> {
    let sock = open().map_err(GuardError::NetlinkSocket)?;
    let Some(family) = family_id(&sock, "fou").map_err(GuardError::NetlinkSocket)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    request(
        &sock,
        family,
        FOU_CMD_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        &[],
        |attrs| {
            if let Some(p) = attr(attrs, FOU_ATTR_PORT)
                && let Ok(b) = <[u8; 2]>::try_from(p)
            {
                out.push(u16::from_be_bytes(b));
            }
        },
    )
    .map_err(GuardError::NetlinkSocket)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_GENERIC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of the generic netlink family `name`, or `None` when the kernel has none.
fn family_id(sock: &OwnedFd, name: &str) -> io::Result<Option<u16>> {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    let mut id = None;
    let found = request(
        sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        &nla(CTRL_ATTR_FAMILY_NAME, &value),
        |attrs| {
            if let Some(v) = attr(attrs, CTRL_ATTR_FAMILY_ID)
                && let Ok(b) = <[u8; 2]>::try_from(v)
            {
                id = Some(u16::from_ne_bytes(b));
            }
        },
    );
    match found {
        Ok(()) => Ok(id),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut v = Vec::with_capacity(len.next_multiple_of(4));
    v.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize(len.next_multiple_of(4), 0);
    v
}

/// The value of attribute `kind` in a run of attributes.
fn attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

/// Sends one request and hands the attributes of every answer to `each`, until the kernel
/// says it is done (an ack, `NLMSG_DONE`, or an error, returned as such).
fn request(
    sock: &OwnedFd,
    family: u16,
    cmd: u8,
    flags: u16,
    attrs: &[u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // genl: command, version, reserved
    msg.extend_from_slice(attrs);
    // SAFETY: `msg` is a valid buffer of its length; the kernel is the default destination
    // of an unbound netlink socket's send.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDRLEN {
            let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
            if mlen < NLMSG_HDRLEN || mlen > rest.len() {
                return Err(io::Error::other("truncated netlink message"));
            }
            let body = &rest[NLMSG_HDRLEN..mlen];
            match mtype {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                _ => {
                    if body.len() >= GENL_HDRLEN {
                        each(&body[GENL_HDRLEN..]);
                    }
                }
            }
            rest = &rest[mlen.next_multiple_of(4).min(rest.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut attrs = nla(7, &[1, 2, 3]);
        attrs.extend(nla(FOU_ATTR_PORT, &5555u16.to_be_bytes()));
        assert_eq!(attr(&attrs, 7), Some(&[1, 2, 3][..]));
        assert_eq!(attr(&attrs, FOU_ATTR_PORT), Some(&[0x15, 0xb3][..]));
        assert_eq!(attr(&attrs, 9), None);
        assert_eq!(attr(&attrs[..5], 7), None);
    }
}

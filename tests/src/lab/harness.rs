//! What the lab's integration tests share: one lab at a time, root or a failure (never a
//! skip), and no namespace of this process left behind.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    Lab, NAME_BASE,
    guardctl::{Guardctl, PinScope},
    install_signal_cleanup, namespaces_with_prefix,
};

/// The tests of one test binary run one lab at a time, so that "no namespace of ours is left"
/// can be asserted after each of them.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the one-lab-at-a-time lock (also after a test panicked while holding it).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fails with `message` unless running as root. Installs the Ctrl-C cleanup first, so that a
/// Ctrl-C during `cargo test` deletes the lab too (Drop does not run on a signal).
///
/// # Panics
/// When not root, or when the signal handler cannot be installed.
pub fn require_root(message: &str) {
    install_signal_cleanup().expect("install the Ctrl-C cleanup");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{message}");
}

/// [`require_root`], then [`Guardctl::locate`].
///
/// # Panics
/// When not root, or when `guardctl` is not built.
#[must_use]
pub fn require_root_and_guardctl(message: &str) -> Guardctl {
    require_root(message);
    Guardctl::locate().expect("locate guardctl")
}

/// The first part of the names of every namespace this process creates.
#[must_use]
pub fn own_prefix() -> String {
    format!("{NAME_BASE}-{}-", std::process::id())
}

/// # Panics
/// When a namespace of this process is left, or `/run/netns` cannot be listed.
pub fn assert_no_namespaces_left() {
    let left = namespaces_with_prefix(&own_prefix()).expect("list /run/netns");
    assert!(left.is_empty(), "lab namespaces left behind: {left:?}");
}

/// Ends a lab scenario: prints its report, removes its pins and then the lab (also when checks
/// failed: every problem was collected first), and fails with every problem found.
///
/// # Panics
/// When `problems` is not empty, the lab cannot be torn down, or a namespace is left.
pub fn finish(report: &str, pins: PinScope, lab: Lab, problems: &[String]) {
    eprintln!("{report}");
    drop(pins);
    lab.teardown().expect("tear the lab down");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_no_namespaces_left();
}

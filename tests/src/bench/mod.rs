//! `guard-bench`: guard against the physical floor, a real peer and nftables, in one run.
//!
//! - [`micro`]: `BPF_PROG_TEST_RUN` of guard's XDP, TC and bridge programs (with the route
//!   check, and with prefix rules only), an empty program of each type (the floor) and
//!   xdp-filter's own `xdpfilt_alw_ip.o` (the peer) on the same frames, in interleaved rounds
//!   in the routing world; reported as medians of per-round ratios, which cancel most of the
//!   noise of a shared machine;
//! - [`flood`]: the lab's bridge under a flood from a guest namespace, generated with
//!   `BPF_PROG_TEST_RUN` in live-frames mode, against every receive-side setup;
//! - [`control`]: attach time, policy load time, `stats --json` time and the agent's memory;
//! - [`report`]: the terminal table and the JSON file.
//!
//! Every measurement is compared with the targets of issues 11 and 13 in [`report`].

pub mod control;
pub mod flood;
pub mod micro;
pub mod report;
pub mod sys;
pub mod workload;

/// `x` as a float: counts, nanoseconds and ticks here stay far below 2^52.
#[must_use]
#[expect(
    clippy::cast_precision_loss,
    reason = "bench counts stay far below 2^52"
)]
pub fn float(x: u64) -> f64 {
    x as f64
}

/// Median, quartiles and extremes of one series of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// Summarises `samples` (unsorted; NaNs are not expected and sort last).
    #[must_use]
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let last = s.len() - 1;
        let q = |p: f64| {
            // Linear interpolation between the closest ranks `lo` and `lo + 1`.
            let pos = p * float(last as u64);
            let lo = (0..last)
                .rev()
                .find(|&i| float(i as u64) <= pos)
                .unwrap_or(0);
            let hi = (lo + 1).min(last);
            s[lo] + (s[hi] - s[lo]) * (pos - float(lo as u64))
        };
        Self {
            median: q(0.5),
            p25: q(0.25),
            p75: q(0.75),
            min: s[0],
            max: s[s.len() - 1],
            n: s.len(),
        }
    }

    /// Interquartile range relative to the median: the spread printed in the tables.
    #[must_use]
    pub fn rel_iqr(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.p75 - self.p25) / self.median
        }
    }

    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "median": self.median, "p25": self.p25, "p75": self.p75,
            "min": self.min, "max": self.max, "n": self.n,
        })
    }
}

/// How big a run is: `--quick` (the CI smoke run) or the full measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub quick: bool,
    /// Micro: interleaved rounds and `BPF_PROG_TEST_RUN` repeats per cell and round.
    pub rounds: usize,
    pub repeat: u32,
    /// Prefix counts of guard's policy.
    pub policy_sizes: &'static [usize],
    /// Macro: rounds over all setups, and flood time per setup and round.
    pub flood_rounds: usize,
    pub flood_secs: f64,
    /// Control plane: ports of the attach bridge, prefixes of the loaded policy.
    pub ports: usize,
    pub prefixes: usize,
}

impl Scale {
    /// The noise of a shared machine is met with more rounds (a slow stretch then spoils a
    /// few rounds' samples, and the median and IQR over many rounds show it), not with longer
    /// cells or looser targets.
    pub const FULL: Self = Self {
        quick: false,
        rounds: 31,
        repeat: 100_000,
        policy_sizes: &[10, 10_000, 100_000],
        flood_rounds: 5,
        flood_secs: 3.0,
        ports: 256,
        prefixes: 100_000,
    };
    pub const QUICK: Self = Self {
        quick: true,
        rounds: 3,
        repeat: 5_000,
        policy_sizes: &[10, 1_000],
        flood_rounds: 1,
        flood_secs: 0.3,
        ports: 16,
        prefixes: 1_000,
    };
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_quantiles() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        for (got, want) in [
            (s.min, 1.0),
            (s.p25, 2.0),
            (s.median, 3.0),
            (s.p75, 4.0),
            (s.max, 5.0),
        ] {
            assert!(close(got, want), "{got} != {want}");
        }
        let even = Summary::of(&[1.0, 2.0, 3.0, 4.0]);
        assert!(close(even.median, 2.5));
        assert!(close(Summary::of(&[7.0]).median, 7.0));
        assert_eq!(Summary::of(&[]).n, 0);
    }
}

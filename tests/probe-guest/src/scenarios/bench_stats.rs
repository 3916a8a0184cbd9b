//! Small statistics for the timed scenarios (`vfio-bench-*`): the median, minimum and
//! maximum of a set of samples, rates per second, and nanoseconds shown as microseconds to
//! a tenth. Integer arithmetic only (the probe has no floating point).

use core::fmt;

/// Nanoseconds per second.
pub const NS_PER_S: u64 = 1_000_000_000;
/// Nanoseconds per microsecond.
pub const NS_PER_US: u64 = 1_000;
/// Nanoseconds per tenth of a microsecond.
const NS_PER_TENTH_US: u64 = 100;

/// Median, minimum and maximum of some samples (nanoseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// The middle sample (the mean of the two middle ones for an even count).
    pub median: u64,
    /// The smallest sample.
    pub min: u64,
    /// The largest sample.
    pub max: u64,
}

impl Summary {
    /// Sorts `samples` in place and summarises them; all zero when there are none.
    pub fn of(samples: &mut [u32]) -> Summary {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return Summary::default();
        }
        let mid = u64::from(samples[n / 2]);
        let median = if n.is_multiple_of(2) {
            (u64::from(samples[n / 2 - 1]) + mid) / 2
        } else {
            mid
        };
        Summary {
            median,
            min: u64::from(samples[0]),
            max: u64::from(samples[n - 1]),
        }
    }
}

/// `count` events in `ns` nanoseconds, per second (0 when no time passed). Exact for
/// counts below about 1.8 * 10^10 (64-bit arithmetic: a freestanding build has no 128-bit
/// division); the scenarios count far fewer events.
pub fn per_second(count: u64, ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    count.saturating_mul(NS_PER_S) / ns
}

/// Display adaptor: nanoseconds as microseconds rounded to a tenth, `X.Y`.
pub struct Micros(pub u64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0 + NS_PER_TENTH_US / 2) / NS_PER_TENTH_US;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

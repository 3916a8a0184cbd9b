//! A small deterministic pseudo-random number generator (SplitMix64, Steele, Lea and Flood,
//! "Fast splittable pseudorandom number generators", 2014) for the `hostile` scenario: one
//! seed gives the same sequence of accesses on every run and every VMM, so a failure can be
//! replayed with `probe.seed=N`.
//!
//! Integer arithmetic only (the probe has no SSE).

/// The generator's increment (2^64 divided by the golden ratio, odd).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// First multiplier of the output mix.
const MIX_1: u64 = 0xbf58_476d_1ce4_e5b9;
/// Second multiplier of the output mix.
const MIX_2: u64 = 0x94d0_49bb_1331_11eb;
/// Percentages are out of this.
const PERCENT: u64 = 100;

/// A SplitMix64 generator.
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(MIX_1);
        z = (z ^ (z >> 27)).wrapping_mul(MIX_2);
        z ^ (z >> 31)
    }

    /// The next 32 random bits (the better-mixed upper half).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A number in `0..bound` (0 when `bound` is 0). The modulo bias is irrelevant here.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// A number in `start..end` (`start` when the range is empty).
    pub fn between(&mut self, start: u64, end: u64) -> u64 {
        start + self.below(end.saturating_sub(start))
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(PERCENT) < u64::from(percent)
    }

    /// One element of `items`, `None` when it is empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        let index = usize::try_from(self.below(items.len() as u64)).ok()?;
        items.get(index).copied()
    }
}

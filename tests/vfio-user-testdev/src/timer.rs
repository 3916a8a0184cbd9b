//! The periodic MSI-X timer behind TIMER_COUNT.

use std::time::{Duration, Instant};

/// A countdown of fires of one vector, one per period.
#[derive(Debug, Default)]
pub struct Timer {
    remaining: u32,
    vector: u32,
    period: Duration,
    next: Option<Instant>,
}

impl Timer {
    /// Schedules `count` fires of `vector`, the first one `period_us` after `now`.
    /// A count of 0 cancels the timer.
    pub fn start(&mut self, count: u32, vector: u32, period_us: u32, now: Instant) {
        self.remaining = count;
        self.vector = vector;
        self.period = Duration::from_micros(u64::from(period_us));
        self.next = (count > 0).then(|| now + self.period);
    }

    /// Fires still to come.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// When the next fire is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Takes one fire due at `now`, returning its vector. Late fires are all due at once, so
    /// the average rate holds.
    pub fn take_due(&mut self, now: Instant) -> Option<u32> {
        let due = self.next.filter(|next| *next <= now)?;
        self.remaining = self.remaining.saturating_sub(1);
        self.next = (self.remaining > 0).then(|| due + self.period);
        Some(self.vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_per_period() {
        let t0 = Instant::now();
        let mut t = Timer::default();
        assert_eq!(t.take_due(t0), None);
        t.start(2, 7, 100, t0);
        assert_eq!(t.take_due(t0), None);
        assert_eq!(t.take_due(t0 + Duration::from_micros(100)), Some(7));
        assert_eq!(t.remaining(), 1);
        assert_eq!(t.take_due(t0 + Duration::from_micros(150)), None);
        assert_eq!(t.take_due(t0 + Duration::from_micros(200)), Some(7));
        assert_eq!(t.remaining(), 0);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.take_due(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn zero_period_is_back_to_back_and_zero_count_cancels() {
        let t0 = Instant::now();
        let mut t = Timer::default();
        t.start(3, 1, 0, t0);
        assert_eq!(t.take_due(t0), Some(1));
        assert_eq!(t.take_due(t0), Some(1));
        t.start(0, 1, 0, t0);
        assert_eq!(t.take_due(t0), None);
        assert_eq!(t.next_deadline(), None);
    }
}

//! Report lists bounded by a capacity, never by the run's history.

/// The first `cap` items of a stream and how many there were in all: a
/// per-exit record (bounced traps, stray port writes) that a long or
/// misbehaving guest cannot grow without bound, with its exact count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capped<T> {
    kept: Vec<T>,
    total: u64,
    cap: usize,
}

impl<T> Default for Capped<T> {
    /// Empty, keeping at most [`Capped::DEFAULT_CAP`] items.
    fn default() -> Self {
        Capped::new(Self::DEFAULT_CAP)
    }
}

impl<T> Capped<T> {
    /// Items a [`Default`] list keeps.
    pub const DEFAULT_CAP: usize = 4096;

    /// Empty, keeping at most `cap` items.
    pub fn new(cap: usize) -> Self {
        Capped {
            kept: Vec::new(),
            total: 0,
            cap,
        }
    }

    /// Count one more item; keep it if there is room (`item` is only
    /// built then).
    pub fn push_with(&mut self, item: impl FnOnce() -> T) {
        self.total = self.total.saturating_add(1);
        if self.kept.len() < self.cap {
            self.kept.push(item());
        }
    }

    /// Count and (room permitting) keep `item`.
    pub fn push(&mut self, item: T) {
        self.push_with(|| item)
    }

    /// The items kept: the first [`cap`](Capped::cap).
    pub fn kept(&self) -> &[T] {
        &self.kept
    }

    /// Items pushed in all, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Items counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.total - self.kept.len() as u64
    }

    /// Nothing pushed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Most items kept.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::Capped;

    #[test]
    fn keeps_the_first_cap_and_counts_all() {
        let mut c = Capped::new(3);
        assert!(c.is_empty());
        let mut built = 0;
        for i in 0..10u32 {
            c.push_with(|| {
                built += 1;
                i
            });
        }
        assert_eq!(c.kept(), &[0, 1, 2]);
        assert_eq!((c.total(), c.dropped(), c.cap()), (10, 7, 3));
        assert_eq!(built, 3, "items past the cap are not built");
        let mut none = Capped::new(0);
        none.push('x');
        assert_eq!((none.kept().len(), none.total()), (0, 1));
    }
}

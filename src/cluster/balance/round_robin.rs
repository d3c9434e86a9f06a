//! Round robin: each endpoint in turn, skipping unusable ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Pick};

pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(len: usize) -> Self {
        RoundRobin {
            len,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        // Turns go round the usable endpoints only: an unusable one (a
        // backup, an unhealthy one) must not hand its turn to the endpoint
        // after it, which would then get twice its share.
        let usable = (0..self.len).filter(|&i| (ctx.usable)(i)).count();
        if usable == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % usable;
        (0..self.len).filter(|&i| (ctx.usable)(i)).nth(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_skips_unusable() {
        let rr = RoundRobin::new(3);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&Pick::simple(&all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let not_one = |i: usize| i != 1;
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&Pick::simple(&not_one)).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        // The skipped endpoint's turns are shared evenly, not handed to its neighbour.
        let not_two = |i: usize| i != 2;
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..30)
            .map(|_| rr.pick(&Pick::simple(&not_two)).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 15);
        let none = |_: usize| false;
        assert_eq!(rr.pick(&Pick::simple(&none)), None);
        assert_eq!(RoundRobin::new(0).pick(&Pick::simple(&all)), None);
    }
}

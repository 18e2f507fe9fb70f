//! The rotation sequences of `rr` and `wrr`: the data plane walks them with
//! one shared counter, so successive new connections follow the sequence
//! whatever CPU they arrive on.
use super::maglev::Entry;

/// `rr`: every backend of non-zero weight once, by address and port.
pub fn round_robin(entries: &[Entry]) -> Vec<u32> {
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    live.sort_by_key(|e| (e.address, e.port));
    live.iter().map(|e| e.id).collect()
}

/// `wrr`: nginx's smooth weighted round robin. Weights 3/1/1 give
/// A B A C A: each backend exactly its weight's share of every cycle,
/// interleaved rather than in bursts (IPVS `wrr` gives A A A B C).
///
/// Weights are first divided by their greatest common divisor; if they still
/// sum to more than `max_len` (the table size), they are scaled down in
/// proportion, each staying at least 1, so the cycle fits: very large,
/// uneven weights are then followed to within one slot per backend.
pub fn smooth_weighted(entries: &[Entry], max_len: usize) -> Vec<u32> {
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    live.sort_by_key(|e| (e.address, e.port));
    let divisor = live.iter().fold(0, |g, e| gcd(g, i64::from(e.weight))).max(1);
    let mut weights: Vec<i64> = live.iter().map(|e| i64::from(e.weight) / divisor).collect();
    let total: i64 = weights.iter().sum();
    let max = i64::try_from(max_len).unwrap_or(i64::MAX);
    if total > max {
        for w in &mut weights {
            *w = (*w * max / total).max(1);
        }
        // Rounding each up to 1 may overshoot: trim the largest.
        while weights.iter().sum::<i64>() > max {
            let largest = weights.iter().enumerate().max_by_key(|(_, w)| **w).map_or(0, |(i, _)| i);
            weights[largest] -= 1;
        }
    }
    let total: i64 = weights.iter().sum();
    let mut current = vec![0_i64; live.len()];
    let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w;
        }
        // The first of the largest wins ties, so the order is stable.
        let (pick, _) = current
            .iter()
            .enumerate()
            .fold((0, i64::MIN), |best, (i, &c)| if c > best.1 { (i, c) } else { best });
        current[pick] -= total;
        sequence.push(live[pick].id);
    }
    sequence
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::maglev::tests::entries;

    #[test]
    fn round_robin_visits_each_live_backend_once_in_address_order() {
        let mut e = entries(&[1, 0, 5]);
        e.reverse();
        assert_eq!(round_robin(&e), [0, 2]);
    }

    #[test]
    fn smooth_weighted_interleaves() {
        assert_eq!(smooth_weighted(&entries(&[3, 1, 1]), 65_537), [0, 1, 0, 2, 0]);
        assert_eq!(smooth_weighted(&entries(&[6, 2, 2]), 65_537), [0, 1, 0, 2, 0], "gcd reduced");
        assert_eq!(smooth_weighted(&entries(&[1, 1, 1]), 65_537), [0, 1, 2]);
        assert!(smooth_weighted(&entries(&[0, 0]), 65_537).is_empty());
    }

    #[test]
    fn every_window_of_a_cycle_keeps_the_ratio() {
        let seq = smooth_weighted(&entries(&[5, 3, 2]), 65_537);
        assert_eq!(seq.len(), 10);
        for (id, want) in [(0, 5), (1, 3), (2, 2)] {
            assert_eq!(seq.iter().filter(|&&x| x == id).count(), want);
        }
    }

    #[test]
    fn large_weights_are_scaled_to_fit_the_table() {
        let seq = smooth_weighted(&entries(&[65_535, 65_534, 1, 7]), 65_537);
        assert!(seq.len() <= 65_537, "{}", seq.len());
        let count = |id| seq.iter().filter(|&&x| x == id).count() as f64;
        assert!((count(0) / count(1) - 65_535.0 / 65_534.0).abs() < 0.001);
        assert!(count(2) >= 1.0 && count(3) >= 1.0, "small weights keep a slot");
    }
}

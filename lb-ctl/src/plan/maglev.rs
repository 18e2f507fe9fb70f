//! Weighted Maglev (Eisenbud et al., NSDI 2016, section 3.4): each backend
//! walks its own permutation of the table's slots and claims the first free
//! one, in turns. Weights change how often a backend gets a turn, so its share
//! of slots follows its share of the weight; removing a backend frees only
//! its slots plus a small disturbance elsewhere.
use std::net::IpAddr;

use lb_common::{abi::NO_BACKEND, hash::backend_hash};

const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

/// A backend as Maglev sees it: an identity to hash, a weight, and the id the
/// table will hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub id: u32,
}

/// Builds a table of `size` slots (a prime) holding backend ids. Backends of
/// weight 0 get no slot; with no weight at all every slot is `NO_BACKEND`.
/// Deterministic: the same backends give the same table, in any input order.
pub fn build(entries: &[Entry], size: u32) -> Vec<u32> {
    let mut table = vec![NO_BACKEND; size as usize];
    let mut backends: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if backends.is_empty() {
        return table;
    }
    backends.sort_by_key(|e| (e.address, e.port));
    let size64 = u64::from(size);
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|e| {
            let hash = |seed| match e.address {
                IpAddr::V4(a) => backend_hash(a.octets(), e.port, seed),
                IpAddr::V6(a) => backend_hash(a.octets(), e.port, seed),
            };
            (hash(OFFSET_SEED) % size64, hash(SKIP_SEED) % (size64 - 1) + 1)
        })
        .collect();
    let max_weight = u64::from(backends.iter().map(|e| e.weight).max().unwrap_or(1));
    // next[i]: how far backend i has walked its permutation.
    let mut next = vec![0_u64; backends.len()];
    // credit[i]: accumulated weight; a turn costs max_weight.
    let mut credit = vec![0_u64; backends.len()];
    let mut filled = 0_u32;
    'rounds: loop {
        for (i, backend) in backends.iter().enumerate() {
            credit[i] += u64::from(backend.weight);
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            loop {
                let slot = ((offset + next[i] * skip) % size64) as usize;
                next[i] += 1;
                if table[slot] == NO_BACKEND {
                    table[slot] = backend.id;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break 'rounds;
            }
        }
    }
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use std::net::Ipv4Addr;

    use lb_common::abi::MAGLEV_SIZE;

    use super::*;

    /// Backends 10.77.2.11, .12, ... on port 80 with these weights; ids 0, 1, ...
    pub(crate) fn entries(weights: &[u32]) -> Vec<Entry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Entry {
                address: Ipv4Addr::new(10, 77, 2, 11 + i as u8).into(),
                port: 80,
                weight,
                id: i as u32,
            })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        for weights in [&[1, 1, 1][..], &[3, 1, 1], &[5, 2, 1, 1, 7], &[1; 10], &[100, 1]] {
            let table = build(&entries(weights), MAGLEV_SIZE);
            let counts = shares(&table);
            let total: u32 = weights.iter().sum();
            for (id, &w) in weights.iter().enumerate() {
                let want = f64::from(w) / f64::from(total);
                let got = counts[&(id as u32)] as f64 / f64::from(MAGLEV_SIZE);
                assert!(
                    (got - want).abs() < 0.01,
                    "weights {weights:?}: backend {id} has {got:.4}, want {want:.4}"
                );
            }
        }
    }

    #[test]
    fn weight_zero_gets_no_slot_and_no_weight_means_no_backend() {
        let table = build(&entries(&[1, 0, 1]), MAGLEV_SIZE);
        assert!(!table.contains(&1));
        assert!(!table.contains(&NO_BACKEND));
        let empty = build(&entries(&[0, 0]), MAGLEV_SIZE);
        assert!(empty.iter().all(|&id| id == NO_BACKEND));
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let a = entries(&[1, 2, 3, 4]);
        let mut b = a.clone();
        b.reverse();
        assert_eq!(build(&a, MAGLEV_SIZE), build(&b, MAGLEV_SIZE));
        assert_eq!(build(&a, MAGLEV_SIZE), build(&a, MAGLEV_SIZE));
    }

    /// Removing one of N backends frees its own slots; of the slots that
    /// belonged to the others, only a small fraction moves (the paper's
    /// figure 12 shows a few percent for small N; 0.1-0.4% here).
    #[test]
    fn removing_a_backend_barely_moves_the_others() {
        for n in [3_usize, 5, 10, 20] {
            let all = entries(&vec![1; n]);
            let before = build(&all, MAGLEV_SIZE);
            let removed = (n / 2) as u32;
            let rest: Vec<Entry> = all.iter().copied().filter(|e| e.id != removed).collect();
            let after = build(&rest, MAGLEV_SIZE);
            let others = before.iter().filter(|&&id| id != removed).count();
            let moved = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
            let fraction = moved as f64 / others as f64;
            eprintln!(
                "n={n}: removing one backend moved {:.2}% of the others' slots",
                fraction * 100.0
            );
            assert!(fraction < 0.01, "n={n}: {fraction:.4} of the other backends' slots moved");
            assert!(!after.contains(&removed));
        }
    }
}

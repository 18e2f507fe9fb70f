//! The weight each backend is planned with: its own, unless its script
//! health check gave another (`dynamic_weight`). The services the
//! controller hands the reconciler are the desired ones with these
//! weights; the desired ones (the file, the API, the state file) keep the
//! operator's weights.
use std::collections::BTreeMap;

use crate::{
    desired::model::{Backend, Service},
    plan::ids::{BackendKey, backend_key},
};

/// The weight `backend` is planned with, given the one its check gave.
/// A weight of 0 is the operator's drain and stays so: a check cannot
/// bring a drained backend back.
pub const fn planned_weight(backend: &Backend, from_check: Option<u32>) -> u32 {
    match from_check {
        Some(w) if backend.weight > 0 => w,
        _ => backend.weight,
    }
}

/// `services` with each backend's planned weight.
pub fn planned(services: &[Service], from_checks: &BTreeMap<BackendKey, u32>) -> Vec<Service> {
    let mut planned = services.to_vec();
    if from_checks.is_empty() {
        return planned;
    }
    for s in &mut planned {
        let keys: Vec<BackendKey> =
            s.backends.iter().map(|b| backend_key(s, b.address, b.port)).collect();
        for (b, key) in s.backends.iter_mut().zip(keys) {
            b.weight = planned_weight(b, from_checks.get(&key).copied());
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::model::testing::service;

    #[test]
    fn a_checks_weight_replaces_the_backends_own_but_not_a_drain() {
        let web = service("web", 80, &[(11, 1), (12, 0), (13, 3)]);
        let key = |i: usize| backend_key(&web, web.backends[i].address, web.backends[i].port);
        let from_checks = BTreeMap::from([(key(0), 5), (key(1), 7)]);
        let planned = planned(std::slice::from_ref(&web), &from_checks);
        let weights: Vec<u32> = planned[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [5, 0, 3]);
        assert_eq!(web.backends[0].weight, 1, "the desired weight is kept");
    }
}

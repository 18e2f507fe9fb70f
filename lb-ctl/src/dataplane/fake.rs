//! In-memory maps: what the kernel would hold, for tests of the reconciler.
use std::sync::{Arc, Mutex};

use super::{DataplaneError, Maps};
use crate::plan::{Image, Op};

/// Applies ops to an `Image`; `fail_after` makes the n-th op fail, to test
/// that a failed apply is retried correctly.
#[derive(Clone, Default)]
pub struct FakeMaps {
    pub state: Arc<Mutex<Image>>,
    pub fail_after: Arc<Mutex<Option<usize>>>,
    pub nexthop_epoch: Arc<Mutex<u64>>,
}

impl Maps for FakeMaps {
    fn advance_nexthop_epoch(&mut self) -> Result<(), DataplaneError> {
        *self.nexthop_epoch.lock().unwrap() += 1;
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        if let Some(n) = self.fail_after.lock().unwrap().as_mut() {
            if *n == 0 {
                return Err(DataplaneError::kernel("fake map write", "injected failure"));
            }
            *n -= 1;
        }
        let mut image = self.state.lock().unwrap();
        match op {
            Op::PutBackend(id, b) => {
                image.backends.insert(*id, *b);
            }
            Op::PutReal(k, r) => {
                image.reals.insert(*k, *r);
            }
            Op::PutMaglev(id, t) => {
                image.maglev.insert(*id, Arc::clone(t));
            }
            Op::PutVip(v, n) => {
                image.vips.insert(*v, *n);
            }
            Op::PutAddrFlags(slot, 0) => {
                image.addrs.remove(slot);
            }
            Op::PutAddrFlags(slot, flags) => {
                image.addrs.insert(*slot, *flags);
            }
            Op::PutRealSlot(slot, 0) => {
                image.real_slots.remove(slot);
            }
            Op::PutRealSlot(slot, value) => {
                image.real_slots.insert(*slot, *value);
            }
            Op::PutService(k, s) => {
                image.services.insert(*k, *s);
            }
            Op::DelService(k) => {
                image.services.remove(k);
            }
            Op::DelVip(v) => {
                image.vips.remove(v);
            }
            Op::ClearMaglev(id) => {
                image.maglev.remove(id);
            }
            Op::DelReal(k) => {
                image.reals.remove(k);
            }
            Op::ClearBackend(id) => {
                image.backends.remove(id);
            }
        }
        Ok(())
    }
}

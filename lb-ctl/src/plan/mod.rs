//! How the desired state is planned, in pure code: the services get stable
//! ids (`ids`), become the image the kernel maps should hold (`image`, with
//! each service's `maglev` or `rotation` table, and the data plane's own
//! `settings`), and the difference between two images becomes the ordered
//! writes that turn one into the other (`diff`). Nothing here touches the
//! kernel but for one question: the source address of the routes toward a
//! full-NAT service's backends, its pool's default (`snat`).
pub mod diff;
pub mod ids;
pub mod image;
pub mod maglev;
pub mod rotation;
pub mod settings;
pub mod snat;

/// What the planner's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeSet;

    use super::{
        ids::Ids,
        image::{Image, image},
    };
    use crate::desired::model::Service;

    /// The ids and the image of `services`, planned after `ids`.
    pub(crate) fn plan(ids: &Ids, services: &[Service]) -> (Ids, Image) {
        let ids = ids.assign(services).unwrap();
        let image = image(services, &ids, &BTreeSet::new());
        (ids, image)
    }
}

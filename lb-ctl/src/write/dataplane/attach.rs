//! Attaching the programs through links pinned under `pin_path`: a link
//! outlives the process, and a later controller swaps its program for its
//! own in one step (BPF_LINK_UPDATE), so no packet goes unprocessed.
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use aya_obj::generated::bpf_link_type;
use tracing::{info, warn};

use super::{
    DataplaneError,
    pins::{LinkPins, PinDir},
    sys,
};
use crate::desired::model::XdpMode;

/// XDP on every interface: the pinned link's program replaced, or a new
/// link attached and pinned. Links on interfaces no longer configured are
/// removed (which detaches them).
pub fn xdp(
    program: &mut Xdp,
    pins: &PinDir,
    interfaces: &[String],
    mode: XdpMode,
) -> Result<(), DataplaneError> {
    for name in interfaces {
        let pin = pins.link("xdp", name);
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            DataplaneError::kernel(format!("{what} XDP on {name}"), e.to_string())
        };
        if let Some(link) = pinned(&pin) {
            match XdpLink::try_from(link).map_err(|e| failed("adopting", &e)) {
                Ok(link) => match program.attach_to_link(link) {
                    Ok(id) => {
                        // The pin keeps the link; this process's handle can go.
                        drop(program.take_link(id).map_err(|e| failed("adopting", &e))?);
                        info!(interface = %name, "XDP link adopted, program replaced");
                        continue;
                    }
                    Err(e) => {
                        warn!(interface = %name, error = %e, "pinned XDP link unusable (interface recreated?); attaching anew");
                    }
                },
                Err(e) => {
                    warn!(interface = %name, error = %e, "pinned XDP link unusable; attaching anew");
                }
            }
            let _ = std::fs::remove_file(&pin);
        }
        let mut attach = |m| program.attach(name, m);
        let (id, used) = match mode {
            XdpMode::Driver => (attach(AyaXdpMode::Driver), "driver"),
            XdpMode::Skb => (attach(AyaXdpMode::Skb), "skb"),
            XdpMode::Auto => match attach(AyaXdpMode::Driver) {
                Ok(id) => (Ok(id), "driver"),
                Err(e) => {
                    warn!(interface = %name, error = %e, "driver mode XDP refused, using skb mode");
                    (attach(AyaXdpMode::Skb), "skb")
                }
            },
        };
        let id = id.map_err(|e| failed("attaching", &e))?;
        let link = program.take_link(id).map_err(|e| failed("attaching", &e))?;
        // Only a bpf_link can be pinned (aya falls back to netlink on old kernels).
        let link = FdLink::try_from(link).map_err(|e| failed("linking", &e))?;
        link.pin(&pin).map_err(|e| failed("pinning the link of", &e))?;
        info!(interface = %name, mode = used, "XDP attached");
    }
    unlink_unconfigured(pins, "xdp", interfaces);
    Ok(())
}

/// The tc ingress slow path (`lb_neigh`) on every interface, through tcx
/// links, adopted or attached as for XDP.
pub fn tc(
    program: &mut SchedClassifier,
    pins: &PinDir,
    interfaces: &[String],
) -> Result<(), DataplaneError> {
    for name in interfaces {
        let pin = pins.link("tc", name);
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            DataplaneError::kernel(format!("{what} tc ingress on {name}"), e.to_string())
        };
        if let Some(link) = pinned(&pin) {
            if let Ok(link) = SchedClassifierLink::try_from(link) {
                match program.attach_to_link(link) {
                    Ok(id) => {
                        drop(program.take_link(id).map_err(|e| failed("adopting", &e))?);
                        continue;
                    }
                    Err(e) => {
                        warn!(interface = %name, error = %e, "pinned tc link unusable; attaching anew");
                    }
                }
            }
            let _ = std::fs::remove_file(&pin);
        }
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = program
            .attach_with_options(name, TcAttachType::Ingress, options)
            .map_err(|e| failed("attaching", &e))?;
        let link = program.take_link(id).map_err(|e| failed("attaching", &e))?;
        let link = FdLink::try_from(link).map_err(|e| failed("linking", &e))?;
        link.pin(&pin).map_err(|e| failed("pinning the link of", &e))?;
    }
    unlink_unconfigured(pins, "tc", interfaces);
    Ok(())
}

/// The link pinned at `pin`, if there is one.
fn pinned(pin: &std::path::Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => Some(FdLink::from(link)),
        Err(e) => {
            warn!(pin = %pin.display(), error = %e, "cannot open the pinned link");
            None
        }
    }
}

/// Interfaces dropped from the config lose their link (and the program).
fn unlink_unconfigured(pins: &PinDir, kind: &str, interfaces: &[String]) {
    for name in pins.linked_interfaces(kind) {
        if !interfaces.contains(&name) {
            let _ = std::fs::remove_file(pins.link(kind, &name));
            info!(interface = %name, kind, "detached: no longer in dataplane.interfaces");
        }
    }
}

/// The links a data plane has on each interface: the pin's name and the
/// link's type.
const LINK_KINDS: [(&str, &str, bpf_link_type); 2] = [
    ("xdp", "XDP", bpf_link_type::BPF_LINK_TYPE_XDP),
    ("tc", "tcx (tc ingress)", bpf_link_type::BPF_LINK_TYPE_TCX),
];

/// What is wrong with the attachment of `interfaces`: one line per program
/// an interface no longer runs (its link gone or detached, the interface
/// removed or recreated). Empty when every interface runs both programs.
pub fn problems(pins: &LinkPins, interfaces: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in interfaces {
        let Some(index) = crate::write::netdev::ifindex(name) else {
            problems.push(format!("interface {name} does not exist"));
            continue;
        };
        for (kind, what, link_type) in LINK_KINDS {
            let pin = pins.link(kind, name);
            let problem = match link_ifindex(&pin, link_type) {
                Ok(attached) if attached == index => continue,
                Ok(0) => format!(
                    "the {what} link of {name} is detached (interface removed?); restart lb-ctl run to attach anew"
                ),
                Ok(_) => format!(
                    "the {what} link of {name} is on an interface since removed (recreated with the same name?); restart lb-ctl run to attach anew"
                ),
                Err(e) => format!("no {what} link for {name} at {}: {e}", pin.display()),
            };
            problems.push(problem);
        }
    }
    problems
}

/// The interface a pinned link of type `link_type` is attached to (0 once
/// the interface is gone).
fn link_ifindex(pin: &std::path::Path, link_type: bpf_link_type) -> std::io::Result<u32> {
    let link = sys::pinned_link(pin)?;
    let want = link_type as u32;
    match link.ifindex {
        Some(index) if link.link_type == want => Ok(index),
        _ => Err(std::io::Error::other(format!("a link of type {}, not {want}", link.link_type))),
    }
}

//! `snat_addresses` and `snat_ports`: a full-NAT service's source pool.
use std::net::IpAddr;

use lb_common::fullnat::SNAT_ADDRS_MAX;

use super::{
    model::{Forwarding, PortRange, Service, Snat},
    problem::Problems,
    validate::{family_name, parse_addr},
    written::RawService,
};

/// The pool of a service (`key`) with `forwarding` and `vip`, from its
/// written `addresses` and `ports`. Given for a service that is not full
/// NAT, they are refused rather than ignored: they say the operator
/// expects a translation that will not happen.
pub(super) fn parse_snat(
    key: &str,
    (forwarding, vip): (Forwarding, IpAddr),
    raw: &RawService,
    problems: &mut Problems,
) -> Snat {
    let (addresses, ports) = (&raw.snat_addresses, raw.snat_ports.as_deref());
    if forwarding != Forwarding::FullNat {
        let not_here = format!(
            "only a forwarding = \"fullnat\" service has a source pool (this one is {:?})",
            super::names::Named::name(forwarding)
        );
        if !addresses.is_empty() {
            problems.add(format!("{key}.snat_addresses"), not_here.clone());
        }
        if ports.is_some() {
            problems.add(format!("{key}.snat_ports"), not_here);
        }
        return Snat::default();
    }
    if addresses.len() > SNAT_ADDRS_MAX {
        problems.add(
            format!("{key}.snat_addresses"),
            format!("{} addresses; at most {SNAT_ADDRS_MAX} per service", addresses.len()),
        );
        return Snat::default();
    }
    let mut pool = Vec::with_capacity(addresses.len());
    for (i, text) in addresses.iter().enumerate() {
        let entry = format!("{key}.snat_addresses[{i}]");
        let addr = parse_addr(&entry, text, problems);
        if problems.0.iter().any(|p| p.key == entry) {
            continue;
        }
        if addr.is_ipv4() != vip.is_ipv4() {
            problems.add(
                entry,
                format!(
                    "{addr} is {} and the VIP {vip} is not: a service's pool is of its family",
                    family_name(addr)
                ),
            );
        } else if addr == vip {
            problems.add(
                entry,
                format!(
                    "{addr} is the service's VIP: replies to it would be taken for clients' packets"
                ),
            );
        } else if pool.contains(&addr) {
            problems.add(entry, format!("{addr} is already listed"));
        } else {
            pool.push(addr);
        }
    }
    let ports = match ports {
        None => PortRange::SNAT_DEFAULT,
        Some(text) => parse_port_range(text).unwrap_or_else(|message| {
            problems.add(format!("{key}.snat_ports"), format!("{text:?}: {message}"));
            PortRange::SNAT_DEFAULT
        }),
    };
    Snat { addresses: pool, ports }
}

/// `[dataplane]`'s `snat_addresses`: the pool of every full-NAT service
/// that names none, each taking the addresses of its VIP's family, so at
/// most `SNAT_ADDRS_MAX` of each family.
pub(super) fn parse_default_pool(addresses: &[String], problems: &mut Problems) -> Vec<IpAddr> {
    let mut pool: Vec<IpAddr> = Vec::with_capacity(addresses.len());
    for (i, text) in addresses.iter().enumerate() {
        let entry = format!("dataplane.snat_addresses[{i}]");
        let addr = parse_addr(&entry, text, problems);
        if problems.0.iter().any(|p| p.key == entry) {
            continue;
        }
        let of_family = pool.iter().filter(|a| a.is_ipv4() == addr.is_ipv4()).count();
        if pool.contains(&addr) {
            problems.add(entry, format!("{addr} is already listed"));
        } else if of_family == SNAT_ADDRS_MAX {
            problems.add(
                entry,
                format!(
                    "{addr}: more {} addresses than the {SNAT_ADDRS_MAX} a pool holds",
                    family_name(addr)
                ),
            );
        } else {
            pool.push(addr);
        }
    }
    pool
}

/// The addresses of `s`'s pool (`s` is full NAT): its own, else those of
/// `[dataplane]`'s (`default`) of its VIP's family; none means the load
/// balancer's own address toward each backend (`plan::snat`).
pub fn pool_addresses(s: &Service, default: &[IpAddr]) -> Vec<IpAddr> {
    if s.snat.addresses.is_empty() {
        default.iter().copied().filter(|a| a.is_ipv4() == s.vip.is_ipv4()).collect()
    } else {
        s.snat.addresses.clone()
    }
}

/// Where `[dataplane]`'s pool (`pool`) holds the VIP of a service of
/// `services`: (the service's index, the address's index). Such a VIP's
/// packets and the pool's replies could not be told apart.
pub fn vips_in_pool(services: &[Service], pool: &[IpAddr]) -> Vec<(usize, usize)> {
    services
        .iter()
        .enumerate()
        .filter_map(|(k, s)| Some((k, pool.iter().position(|a| *a == s.vip)?)))
        .collect()
}

/// `first-last` (or one port alone), 1 to 65535.
fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let port = |t: &str| match t.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{t:?} is not a port (1 to 65535)")),
        Ok(p) => Ok(p),
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(format!("the first port {first} is above the last {last}"));
    }
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        forwarding: Forwarding,
        addresses: &[&str],
        ports: Option<&str>,
    ) -> (Snat, Vec<String>) {
        let mut problems = Problems::default();
        let mut raw = serde_json::json!({
            "name": "web", "vip": "10.77.1.100", "port": 80, "snat_addresses": addresses,
        });
        if let Some(ports) = ports {
            raw["snat_ports"] = ports.into();
        }
        let raw: RawService = serde_json::from_value(raw).unwrap();
        let vip = "10.77.1.100".parse().unwrap();
        let snat = parse_snat("service[0]", (forwarding, vip), &raw, &mut problems);
        (snat, problems.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_pool_is_read_with_its_ports() {
        let (snat, problems) =
            parse(Forwarding::FullNat, &["10.77.2.1", "10.77.2.2"], Some("40000-40063"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(snat.addresses.len(), 2);
        assert_eq!(snat.ports, PortRange { first: 40_000, last: 40_063 });
        assert_eq!(snat.ports.count(), 64);
        let (snat, _) = parse(Forwarding::FullNat, &[], None);
        assert_eq!(snat, Snat::default(), "the defaults");
        let (snat, _) = parse(Forwarding::FullNat, &[], Some("65535"));
        assert_eq!(snat.ports.count(), 1, "one port");
    }

    #[test]
    fn each_wrong_entry_is_named() {
        let (_, p) = parse(
            Forwarding::FullNat,
            &["10.77.2.1", "fd77::1", "10.77.1.100", "10.77.2.1", "nonsense"],
            Some("2000-1000"),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("service[0].snat_addresses: 5 addresses; at most 4"), "{p:?}");
        let (_, p) = parse(
            Forwarding::FullNat,
            &["fd77::1", "10.77.1.100", "10.77.2.1", "10.77.2.1"],
            Some("2000-1000"),
        );
        assert!(p[0].starts_with("service[0].snat_addresses[0]: fd77::1 is IPv6"), "{p:?}");
        assert!(p[1].starts_with("service[0].snat_addresses[1]: 10.77.1.100 is the service's VIP"));
        assert!(p[2].starts_with("service[0].snat_addresses[3]: 10.77.2.1 is already listed"));
        assert!(
            p[3].contains("service[0].snat_ports: \"2000-1000\": the first port 2000"),
            "{p:?}"
        );
        for bad in ["0-10", "1-65536", "a-b", ""] {
            let (_, p) = parse(Forwarding::FullNat, &[], Some(bad));
            assert!(p.len() == 1 && p[0].starts_with("service[0].snat_ports"), "{bad}: {p:?}");
        }
    }

    #[test]
    fn a_pool_given_to_another_mode_is_refused() {
        let (snat, p) = parse(Forwarding::Nat, &["10.77.2.1"], Some("1000-2000"));
        assert_eq!(snat, Snat::default());
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("service[0].snat_addresses: only a forwarding = \"fullnat\""));
        assert!(p[1].starts_with("service[0].snat_ports: only"), "{p:?}");
    }
}

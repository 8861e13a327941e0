//! IOMMU groups: who is in them, what each member is, and whether the kernel will let a VM use
//! the group.
//!
//! VFIO hands out whole groups: a process opens `/dev/vfio/<group>`, and the kernel lets it attach
//! the group to a container only when the group is *viable*. Since Linux 5.19 a group is viable
//! when no bound driver has claimed kernel DMA ownership: vfio-pci (and its variant drivers),
//! pci-stub and pcieport do not claim it, a member with no driver does not, every other host
//! driver does. Before 5.19 each member had to be driver-less, on a vfio driver, on pci-stub, or a
//! bridge. [`viable`] encodes both rules as one pure function so it can be checked against the
//! kernel's own verdict (`VFIO_GROUP_GET_STATUS`) in the test guest.

use std::fmt;

use vfio_gate_protocol::{MemberKind, PciAddress};

use crate::view::DriverName;

/// The PCI base class of bridges (host, ISA/LPC, PCI-to-PCI, CardBus, …).
const CLASS_BRIDGE: u32 = 0x06;

/// What a group member is, from its class code and header type.
///
/// Everything in base class 06 is a non-endpoint: host bridges, PCI bridges, and the ISA/LPC
/// bridges that carry the platform's legacy devices. A non-normal header type (1 = PCI bridge,
/// 2 = CardBus) also makes a bridge whatever the class says.
pub fn classify(class: u32, header_type: Option<u8>) -> MemberKind {
    let base = (class >> 16) & 0xff;
    let sub = (class >> 8) & 0xff;
    match (base, sub) {
        (CLASS_BRIDGE, 0x00) => MemberKind::HostBridge,
        (CLASS_BRIDGE, 0x04 | 0x07 | 0x09) => MemberKind::Bridge,
        (CLASS_BRIDGE, _) => MemberKind::OtherBridge,
        _ if header_type.is_some_and(|h| h & 0x7f != 0) => MemberKind::Bridge,
        _ => MemberKind::Endpoint,
    }
}

/// Which definition of viability the running kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViabilityRule {
    /// Linux ≥ 5.19: DMA ownership.
    DmaOwnership,
    /// Older kernels: a fixed list of acceptable drivers, plus bridges.
    Legacy,
}

impl ViabilityRule {
    /// The rule of a kernel, from its release string (`6.1.0-56-amd64`). A release that does not
    /// parse gets the 5.19+ rule, which every kernel vfio-gate is tested on has.
    pub fn for_release(release: &str) -> Self {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if (major, minor) >= (5, 19) || major == 0 {
            ViabilityRule::DmaOwnership
        } else {
            ViabilityRule::Legacy
        }
    }
}

/// One member of a group as far as viability is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: PciAddress,
    pub kind: MemberKind,
    pub driver: Option<DriverName>,
}

/// Whether `driver` leaves kernel DMA ownership unclaimed (5.19+).
fn driver_keeps_group_viable(driver: &str) -> bool {
    // Variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, …) are vfio drivers too.
    matches!(driver, "vfio-pci" | "pci-stub" | "pcieport")
        || driver.ends_with("vfio_pci")
        || driver.ends_with("vfio-pci")
}

fn legacy_acceptable(m: &Member) -> bool {
    match &m.driver {
        None => true,
        Some(d) => {
            let d = d.as_str();
            d == "vfio-pci"
                || d == "pci-stub"
                || d.ends_with("vfio_pci")
                || m.kind != MemberKind::Endpoint
        }
    }
}

/// A member that keeps the group from being viable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub address: PciAddress,
    pub driver: DriverName,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is on the host driver {}",
            self.address.short(),
            self.driver
        )
    }
}

/// Whether a group with these members is viable; if not, the members that prevent it.
pub fn viable(members: &[Member], rule: ViabilityRule) -> Result<(), Vec<Blocker>> {
    let blockers: Vec<Blocker> = members
        .iter()
        .filter(|m| match rule {
            ViabilityRule::DmaOwnership => m
                .driver
                .as_ref()
                .is_some_and(|d| !driver_keeps_group_viable(d.as_str())),
            ViabilityRule::Legacy => !legacy_acceptable(m),
        })
        .filter_map(|m| {
            m.driver.clone().map(|driver| Blocker {
                address: m.address,
                driver,
            })
        })
        .collect();
    if blockers.is_empty() {
        Ok(())
    } else {
        Err(blockers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(addr: &str, kind: MemberKind, driver: Option<&str>) -> Member {
        Member {
            address: addr.parse().unwrap(),
            kind,
            driver: driver.map(|d| DriverName::new(d).unwrap()),
        }
    }

    #[test]
    fn classification() {
        use MemberKind::*;
        for (class, header, kind) in [
            (0x060000, Some(0), HostBridge),
            (0x060400, Some(1), Bridge),
            (0x060400, None, Bridge),
            (0x060100, Some(0x80), OtherBridge), // ICH9 LPC, multifunction bit set
            (0x060700, Some(2), Bridge),
            (0x020000, Some(0), Endpoint),
            (0x020000, Some(0x80), Endpoint),
            (0x00ff00, None, Endpoint),
            (0x0c0330, Some(1), Bridge), // a header type says bridge whatever the class
            (0x010802, Some(0), Endpoint),
        ] {
            assert_eq!(classify(class, header), kind, "{class:06x} {header:?}");
        }
    }

    #[test]
    fn kernel_releases() {
        for (rel, rule) in [
            ("6.1.0-56-amd64", ViabilityRule::DmaOwnership),
            ("6.12.57+deb13-amd64", ViabilityRule::DmaOwnership),
            ("5.19.0", ViabilityRule::DmaOwnership),
            ("5.18.19-arch1", ViabilityRule::Legacy),
            ("4.19.0-27-amd64", ViabilityRule::Legacy),
            ("10.0", ViabilityRule::DmaOwnership),
        ] {
            assert_eq!(ViabilityRule::for_release(rel), rule, "{rel}");
        }
    }

    /// The guest's group 11 in each state the issue names, under both rules.
    #[test]
    fn viability_table() {
        use MemberKind::*;
        use ViabilityRule::*;
        let bridge = |d| m("04:00.0", Bridge, d);
        let e1000 = |d| m("05:01.0", Endpoint, d);
        let edu = |d| m("05:02.0", Endpoint, d);
        type Case = (Vec<Member>, ViabilityRule, Result<(), Vec<&'static str>>);
        let table: Vec<Case> = vec![
            // edu on vfio-pci beside e1000 on its host driver: not viable (seen in the guest).
            (
                vec![bridge(None), e1000(Some("e1000")), edu(Some("vfio-pci"))],
                DmaOwnership,
                Err(vec!["05:01.0"]),
            ),
            // e1000 on pci-stub: viable (seen in the guest).
            (
                vec![bridge(None), e1000(Some("pci-stub")), edu(Some("vfio-pci"))],
                DmaOwnership,
                Ok(()),
            ),
            // Driver-less members and pcieport bridges do not claim DMA.
            (
                vec![bridge(Some("pcieport")), e1000(None), edu(Some("vfio-pci"))],
                DmaOwnership,
                Ok(()),
            ),
            // A bridge on some other driver does claim it.
            (
                vec![bridge(Some("shpchp")), e1000(None), edu(Some("vfio-pci"))],
                DmaOwnership,
                Err(vec!["04:00.0"]),
            ),
            // Legacy: any bridge is fine, a host driver on an endpoint is not.
            (
                vec![bridge(Some("shpchp")), e1000(None), edu(Some("vfio-pci"))],
                Legacy,
                Ok(()),
            ),
            (
                vec![bridge(None), e1000(Some("e1000")), edu(Some("vfio-pci"))],
                Legacy,
                Err(vec!["05:01.0"]),
            ),
            // Variant drivers count as vfio.
            (
                vec![m("01:00.0", Endpoint, Some("mlx5_vfio_pci"))],
                DmaOwnership,
                Ok(()),
            ),
            (
                vec![m("01:00.0", Endpoint, Some("mlx5_vfio_pci"))],
                Legacy,
                Ok(()),
            ),
            // An empty group (everything unplugged) has nothing claiming it.
            (vec![], DmaOwnership, Ok(())),
        ];
        for (members, rule, expected) in table {
            let got = viable(&members, rule)
                .map_err(|b| b.iter().map(|b| b.address.short()).collect::<Vec<_>>());
            let expected =
                expected.map_err(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
            assert_eq!(got, expected, "{members:?} {rule:?}");
        }
    }
}

//! Protections no policy can override.
//!
//! The policy says who may have which device; these say which devices nobody may have, because
//! the host itself depends on them or the kernel cannot hand them out safely. Each refusal names
//! the reason and what an admin can do about it.

use vfio_gate_protocol::{Guard, MemberKind, PciAddress};

use crate::view::{PciView, SysfsError};

/// Whether the host is using a device: mounted filesystems, swap, network interfaces with
/// addresses or routes below it. One line per use, for the refusal.
pub trait HostUse: Send + Sync {
    fn uses(&self, dev: PciAddress) -> Result<Vec<String>, String>;
}

/// A guard refused a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub device: PciAddress,
    pub guard: Guard,
    pub reason: String,
}

/// A guard could not tell: treated as a refusal by the caller (deny by default).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("cannot tell whether the host uses {dev}: {why}")]
    HostUse { dev: PciAddress, why: String },
}

/// Checks every guard for handing `dev` (of `kind`) to anyone. `named` is false for a companion
/// being moved to pci-stub: bridges are never moved anyway, so the endpoint check only matters
/// for what the caller named.
pub fn check(
    k: &dyn PciView,
    host: &dyn HostUse,
    dev: PciAddress,
    kind: MemberKind,
) -> Result<Option<Refusal>, GuardError> {
    let short = dev.short();
    let refuse = |guard, reason: String| {
        Ok(Some(Refusal {
            device: dev,
            guard,
            reason,
        }))
    };
    if k.iommu_group(dev)?.is_none() {
        return refuse(
            Guard::NoIommuGroup,
            format!(
                "{short} has no IOMMU group: the IOMMU is off. An admin can turn it on: on Intel, VT-d in the firmware and intel_iommu=on on the kernel command line; on AMD, AMD-Vi (IOMMU) in the firmware, with no kernel parameter (amd_iommu=on is not a valid option); then reboot. vfio-gate doctor checks it"
            ),
        );
    }
    if kind != MemberKind::Endpoint {
        return refuse(
            Guard::NotEndpoint,
            format!(
                "{short} is a {kind}: vfio-gate only hands out endpoints (bind the devices behind it instead)"
            ),
        );
    }
    if k.boot_vga(dev)? {
        return refuse(
            Guard::BootVga,
            format!(
                "{short} is the boot VGA device: the host console and firmware framebuffer use it. Use another GPU for VMs"
            ),
        );
    }
    let vfs = k.sriov_numvfs(dev)?;
    if vfs > 0 {
        return refuse(
            Guard::SriovEnabled,
            format!(
                "{short} is an SR-IOV physical function with {vfs} virtual functions enabled: bind a virtual function instead, or an admin disables them first (echo 0 > /sys/bus/pci/devices/{dev}/sriov_numvfs)"
            ),
        );
    }
    let uses = host
        .uses(dev)
        .map_err(|why| GuardError::HostUse { dev, why })?;
    if !uses.is_empty() {
        return refuse(
            Guard::HostInUse,
            format!(
                "the host is using {short}: {}. Stop that use first (umount, swapoff, ip link set … down) if it really should go to a VM",
                uses.join("; ")
            ),
        );
    }
    Ok(None)
}

impl HostUse for crate::usage::HostView {
    fn uses(&self, dev: PciAddress) -> Result<Vec<String>, String> {
        self.usage(dev)
            .map(|uses| uses.iter().map(ToString::to_string).collect())
            .map_err(|e| e.to_string())
    }
}

impl<T: HostUse + ?Sized> HostUse for std::sync::Arc<T> {
    fn uses(&self, dev: PciAddress) -> Result<Vec<String>, String> {
        (**self).uses(dev)
    }
}

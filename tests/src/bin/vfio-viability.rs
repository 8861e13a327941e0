//! `vfio-viability GROUP`: vfio-gate's verdict on an IOMMU group beside the kernel's.
//!
//! vfio-gate decides viability itself ([`vfio_gate_host::groups::viable`], from each member's kind and
//! driver as sysfs shows them, under the rule of the running kernel's release); the kernel answers
//! `VFIO_GROUP_GET_STATUS` on `/dev/vfio/GROUP`. Prints one line: `agree viable`,
//! `agree not-viable`, or `DISAGREE: vfio-gate says …, the kernel says …` (exit 1), then the
//! members and the blockers on stderr. Exit 1 also if either verdict cannot be had (the node
//! exists only while a member is on vfio-pci; root may open it only while nobody holds it).

// Shared with vfio-probe, which uses the rest of it.
#[allow(dead_code)]
#[path = "vfio-probe/vfio.rs"]
mod vfio;

use std::process::ExitCode;

use vfio_gate_host::groups::{Member, ViabilityRule, classify, viable};
use vfio_gate_host::{PciView, SysfsView};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group = match args.as_slice() {
        [g] => g.parse::<u32>().ok(),
        _ => None,
    };
    let Some(group) = group else {
        eprintln!("usage: vfio-viability GROUP");
        return ExitCode::from(2);
    };
    match compare(group) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vfio-viability: {e}");
            ExitCode::FAILURE
        }
    }
}

fn word(viable: bool) -> &'static str {
    if viable { "viable" } else { "not-viable" }
}

/// Prints the comparison; `Ok(true)` when both verdicts agree.
fn compare(group: u32) -> Result<bool, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading the kernel release: {e}"))?;
    let rule = ViabilityRule::for_release(release.trim());
    let sysfs = SysfsView::new("/sys");
    let addresses = sysfs
        .group_members(group)
        .map_err(|e| format!("members of group {group}: {e}"))?;
    if addresses.is_empty() {
        return Err(format!("group {group} has no members"));
    }
    let mut members = Vec::new();
    for address in addresses {
        let facts = sysfs.facts(address).map_err(|e| e.to_string())?;
        let header = sysfs.header_type(address).map_err(|e| e.to_string())?;
        let driver = sysfs.driver(address).map_err(|e| e.to_string())?;
        members.push(Member {
            address,
            kind: classify(facts.class, header),
            driver,
        });
    }
    let ours = viable(&members, rule);

    let kernel = vfio::Group::open(group)
        .and_then(|g| g.viable())
        .map_err(|e| format!("the kernel's verdict: {e}"))?;

    let agree = ours.is_ok() == kernel;
    if agree {
        println!("agree {}", word(kernel));
    } else {
        println!(
            "DISAGREE: vfio-gate says {}, the kernel says {}",
            word(ours.is_ok()),
            word(kernel)
        );
    }
    eprintln!("group {group}, kernel {} ({rule:?} rule):", release.trim());
    for m in &members {
        let driver = m.driver.as_ref().map_or("-", |d| d.as_str());
        eprintln!("  {} {:?} {driver}", m.address.short(), m.kind);
    }
    if let Err(blockers) = &ours {
        for b in blockers {
            eprintln!("  blocker: {b}");
        }
    }
    Ok(agree)
}

//! Capabilities: keep CAP_CHOWN, drop the rest for good.
//!
//! In order: lock the securebits so uid 0 cannot regain capabilities (no root fix-up on exec or
//! setuid, no ambient raise, keep-caps locked off); empty the bounding set but for CAP_CHOWN;
//! clear the ambient and inheritable sets; set permitted and effective to CAP_CHOWN; set
//! `no_new_privs`. Changing securebits and the bounding set needs CAP_SETPCAP: under systemd the
//! unit does both instead (`SecureBits=`, `CapabilityBoundingSet=CAP_CHOWN`), and this code
//! checks the result either way.

use caps::{CapSet, Capability, CapsHashSet};

/// The one capability the helper keeps.
pub const KEPT: Capability = Capability::CAP_CHOWN;

/// The securebits the helper requires, locked: no capability fix-up on setuid, and keep-caps
/// off for good. systemd's `SecureBits=` can set these.
///
/// `noroot` (exec as uid 0 gains nothing) is not required: it would make systemd hand CAP_CHOWN
/// over as an ambient capability, which is worse, and it protects only an exec — which the
/// helper never does, landlock forbids, and which could gain no more than the bounding set the
/// helper checks is CAP_CHOWN alone, under `no_new_privs`.
pub const SECUREBITS: u32 = (1 << 2) // SECBIT_NO_SETUID_FIXUP
    | (1 << 3) // SECBIT_NO_SETUID_FIXUP_LOCKED
    | (1 << 5); // SECBIT_KEEP_CAPS_LOCKED (with KEEP_CAPS off)

/// Also set when the helper can (it holds CAP_SETPCAP, as when started by hand or by a plain
/// activator): `noroot` and no ambient capabilities, ever, both locked.
pub const SECUREBITS_EXTRA: u32 = (1 << 0) // SECBIT_NOROOT
    | (1 << 1) // SECBIT_NOROOT_LOCKED
    | (1 << 6) // SECBIT_NO_CAP_AMBIENT_RAISE
    | (1 << 7); // SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED

/// Dropping privileges failed; the helper refuses to serve.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("reading the {set:?} capability set: {source}")]
    Read {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("changing the {set:?} capability set: {source}")]
    Change {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error(
        "the securebits are {have:#x} and locking them needs CAP_SETPCAP, which the helper does not have; under systemd set SecureBits=keep-caps-locked no-setuid-fixup no-setuid-fixup-locked in the unit (dist/vfio-gated.service does)"
    )]
    Securebits { have: u32 },
    #[error("setting the securebits: {0}")]
    SetSecurebits(#[source] std::io::Error),
    #[error(
        "the bounding set still holds {0} and dropping it needs CAP_SETPCAP; under systemd set CapabilityBoundingSet=CAP_CHOWN"
    )]
    Bounding(String),
    #[error(
        "the helper does not have CAP_CHOWN, which it needs to hand /dev/vfio nodes to users; run it as root (CapabilityBoundingSet=CAP_CHOWN)"
    )]
    MissingChown,
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
}

fn read(set: CapSet) -> Result<CapsHashSet, CapsError> {
    caps::read(None, set).map_err(|source| CapsError::Read { set, source })
}

/// Drops every capability but [`KEPT`], locks the securebits and sets `no_new_privs`.
pub fn drop_to_chown() -> Result<(), CapsError> {
    let effective = read(CapSet::Effective)?;
    let setpcap = effective.contains(&Capability::CAP_SETPCAP);
    if !read(CapSet::Permitted)?.contains(&KEPT) {
        return Err(CapsError::MissingChown);
    }

    let have = crate::sys::securebits().map_err(CapsError::SetSecurebits)?;
    if setpcap {
        let want = have | SECUREBITS | SECUREBITS_EXTRA;
        if want != have {
            crate::sys::set_securebits(want).map_err(CapsError::SetSecurebits)?;
        }
    } else if have & SECUREBITS != SECUREBITS {
        return Err(CapsError::Securebits { have });
    }

    let extra: Vec<Capability> = read(CapSet::Bounding)?
        .into_iter()
        .filter(|c| *c != KEPT)
        .collect();
    if !extra.is_empty() {
        if !setpcap {
            let names: Vec<String> = extra.iter().map(ToString::to_string).collect();
            return Err(CapsError::Bounding(names.join(", ")));
        }
        for cap in extra {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapsError::Change {
                set: CapSet::Bounding,
                source,
            })?;
        }
    }

    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|source| CapsError::Change { set, source })?;
    }
    let only: CapsHashSet = [KEPT].into_iter().collect();
    // Effective first: it must stay a subset of permitted at every step.
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &only).map_err(|source| CapsError::Change { set, source })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| CapsError::NoNewPrivs(e.into()))
}

/// What the process holds now, for the start log line.
pub fn summary() -> String {
    let show = |set| {
        caps::read(None, set)
            .map(|s| {
                let mut v: Vec<String> = s.iter().map(ToString::to_string).collect();
                v.sort();
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join("+")
                }
            })
            .unwrap_or_else(|e| format!("unreadable ({e})"))
    };
    format!(
        "effective={} permitted={} bounding={} inheritable={} ambient={} securebits={:#x} no_new_privs={}",
        show(CapSet::Effective),
        show(CapSet::Permitted),
        show(CapSet::Bounding),
        show(CapSet::Inheritable),
        show(CapSet::Ambient),
        crate::sys::securebits().unwrap_or(0),
        nix::sys::prctl::get_no_new_privs().unwrap_or(false),
    )
}

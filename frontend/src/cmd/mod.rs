//! The subcommands, a module each: the request it sends (or, offline, what it computes), its
//! text for people and its JSON for scripts. Each has a `run` that `main` calls with the
//! [`Context`] and the command's arguments; what they share is here, and the rendering they
//! share is in [`crate::render`].

pub mod bind;
pub mod boot_config;
pub mod doctor;
pub mod explain;
pub mod list;
pub mod policy_check;
pub mod policy_report;
pub mod release;
pub mod run;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use vfio_gate_protocol::{Request, Response, WireError};

use crate::client::{Client, response_name};
use crate::error::Error;
use crate::json::Document;
use crate::localtime;
use crate::pci_ids::{PciNames, Wanted};
use crate::render::write_json;
use crate::users::{ETC_ROOT, UserNames};

/// What every subcommand gets besides its own arguments.
#[derive(Debug)]
pub struct Context<'a> {
    pub client: Client,
    /// `--json`.
    pub json: bool,
    /// `--pci-ids`, else the distribution's database.
    pub pci_ids: Option<&'a Path>,
}

impl Context<'_> {
    /// Prints a command's answer on `out` and flushes it: under `--json` the document whose
    /// fields `json` gives (after `"schema"`, [`crate::json::Document`]), else the text `text`
    /// renders (so names are looked up only when they are shown). A write that fails is
    /// [`Error::Output`] (a closed stdout then exits quietly).
    pub fn print(
        &self,
        out: &mut impl Write,
        json: &impl Serialize,
        text: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        if self.json {
            write_json(out, &Document::new(json))
        } else {
            out.write_all(text().as_bytes())
        }
        .and_then(|()| out.flush())
        .map_err(Error::Output)
    }

    /// Vendor, device and class names for the `wanted` ids, from the PCI ID database.
    pub fn pci_names(&self, wanted: &Wanted) -> PciNames {
        PciNames::load(self.pci_ids, wanted)
    }
}

/// The helper answered `request` with something else than its answer.
fn unexpected(request: &Request, got: &Response) -> Error {
    Error::UnexpectedResponse {
        request: request.kind(),
        got: response_name(got),
    }
}

/// Adds what only this side knows to a helper's refusal for a group someone holds: the
/// holder's name and the time in words. Other errors are passed on as they are.
fn name_the_holder(err: Error) -> Error {
    match err {
        Error::Helper(WireError::Held { group, uid, since }) => {
            let users = UserNames::load(Path::new(ETC_ROOT), &BTreeSet::from([uid]));
            Error::Held {
                group,
                uid,
                user: users.display(uid),
                name: users.name(uid).map(str::to_owned),
                since,
                when: localtime::when(since, localtime::now_unix()),
            }
        }
        other => other,
    }
}

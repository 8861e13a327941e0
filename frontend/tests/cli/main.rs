//! The `vfio-gate` binary against a fake helper (and, for the offline commands, a fixture host):
//! what it sends, what it prints, how it exits. One test binary, a module per command or topic;
//! `util` is the harness, `fixtures` what several modules share.

mod fixtures;
mod util;

mod bind;
mod boot_config;
mod doctor;
mod errors;
mod explain;
mod json_docs;
mod list;
mod policy_check;
mod policy_report;
mod release;
mod retry;
mod run;

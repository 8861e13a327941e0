//! Fault injection for crash-consistency tests: stop the helper dead at a named step.
//!
//! Compiled in only with the `fault-injection` cargo feature, which release builds never enable:
//! without it [`point`] is an empty inline function. With it, a file named `fault-injection` in
//! the state directory holding a step name makes the helper remove that file (so the restarted
//! helper does not crash again at the same place) and SIGKILL itself when it reaches that step —
//! exactly like `kill -9` at the worst moment.

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

    pub fn arm(state_dir: &std::path::Path) {
        let _ = STATE_DIR.set(state_dir.to_owned());
    }

    pub fn point(step: &str) {
        let Some(dir) = STATE_DIR.get() else {
            return;
        };
        let file = dir.join("fault-injection");
        let Ok(wanted) = std::fs::read_to_string(&file) else {
            return;
        };
        if wanted.trim() == step {
            let _ = std::fs::remove_file(&file);
            crate::audit::Line::new("fault-injection")
                .field("step", step)
                .emit();
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub const COMPILED_IN: bool = true;
}

#[cfg(not(feature = "fault-injection"))]
mod enabled {
    #[inline(always)]
    pub fn arm(_state_dir: &std::path::Path) {}

    #[inline(always)]
    pub fn point(_step: &str) {}

    pub const COMPILED_IN: bool = false;
}

pub use enabled::{COMPILED_IN, arm, point};

/// Every step at which a fault can be injected, in the order a bind and a release reach them.
pub const STEPS: &[&str] = &[
    "bind:lease-written",
    "bind:override-set",
    "bind:unbound",
    "bind:probed",
    "bind:members-bound",
    "bind:node-handed-over",
    "bind:lease-applied",
    "release:lease-releasing",
    "release:override-restored",
    "release:unbound",
    "release:probed",
    "release:node-reset",
];

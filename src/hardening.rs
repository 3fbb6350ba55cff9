//! Process hardening done before any secret is loaded: no core dumps, and no ptrace
//! attach or /proc/PID/mem reads by other processes of the same user (Linux
//! "non-dumpable").
//!
//! Hybrid mode holds the one-time key K on the host, and on a token that pads PKCS#8 a
//! private key for microseconds; a core file would keep them.

use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};

/// Turns off core dumps for this process. Fails only if the kernel refuses.
pub fn no_core_dumps() -> Result<(), String> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("cannot disable core dumps (setrlimit RLIMIT_CORE): {e}"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot mark the process non-dumpable (prctl PR_SET_DUMPABLE): {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_can_be_disabled() {
        // Runs in the test process itself; harmless there.
        super::no_core_dumps().unwrap();
        let lim = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!(lim.current, Some(0));
    }
}

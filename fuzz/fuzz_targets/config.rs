//! The config parser: any text as a config file (paths are only resolved, never opened).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            hsm_bridge::config::Config::parse(text, std::path::Path::new("/fuzz/hsm-bridge.toml"));
    }
});

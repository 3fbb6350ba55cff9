#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after the other, with
# libFuzzer and AddressSanitizer. Needs cargo-fuzz (installed here if missing) and the
# system OpenSSL headers (./softhsm-setup.sh installs them). Findings land in
# fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/ (both git-ignored).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wrapping_key config oci_json signer)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
# cargo-fuzz passes -Z flags (sanitizers); the stable toolchain accepts them with this.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t for ${secs}s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1
done

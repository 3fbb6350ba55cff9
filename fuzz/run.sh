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
# Seeds, so that the fuzzer starts from inputs that get past the first checks.
seed() { # target name command...
    local t="$1" n="$2"
    shift 2
    mkdir -p "corpus/$t"
    [ -s "corpus/$t/seed-$n" ] || "$@" >"corpus/$t/seed-$n" 2>/dev/null || true
}
for bits in 2048 3072; do
    seed wrapping_key "spki-$bits" sh -c "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:$bits | openssl pkey -pubout"
    seed wrapping_key "pkcs1-$bits" sh -c "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:$bits | openssl rsa -RSAPublicKey_out"
done
seed wrapping_key e3 sh -c "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_pubexp:3 | openssl pkey -pubout"
seed wrapping_key ec sh -c "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout"
seed wrapping_key private openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048
for f in ../config/*.toml; do seed config "$(basename "$f")" cat "$f"; done
seed oci_json version echo '{"compartmentId":"ocid1.compartment.oc1..c","id":"ocid1.keyversion.oc1..v","keyId":"ocid1.key.oc1..k","timeCreated":"2018-04-03T21:10:29.600Z","vaultId":"ocid1.vault.oc1..v","lifecycleState":"CREATING","origin":"EXTERNAL","isPrimary":true}'
seed oci_json key echo '{"compartmentId":"c","currentKeyVersion":"v","displayName":"k","id":"k","keyShape":{"algorithm":"AES","length":32},"lifecycleState":"ENABLED","timeCreated":"2018-04-03T21:10:29.600Z","vaultId":"v","protectionMode":"HSM"}'
seed oci_json error echo '{"code":"NotAuthenticated","message":"The required information to complete authentication was not provided"}'
seed signer post printf '%s\n' POST https://kms.example.com/20180608/keys/import "Thu, 05 Jan 2014 21:31:40 GMT" 'Signature version="1",headers="date (request-target) host content-length content-type x-content-sha256",keyId="t/u/f",algorithm="rsa-sha256",signature="AAAA"' 'V9Z9...' '{"a":1}'
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t for ${secs}s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1
done

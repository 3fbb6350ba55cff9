#!/usr/bin/env bash
# Prepares a development machine for hsm-bridge (Debian 12, run as root or with sudo):
#   - installs what is missing: SoftHSM2, OpenSC (pkcs11-tool), OpenSSL, and the build
#     dependencies of the Rust crate (libssl-dev, pkg-config, a C compiler);
#   - creates the project-local SoftHSM2 token "hsm-bridge-dev" under .softhsm/ (git-ignored),
#     with random PINs in .softhsm/user-pin and .softhsm/so-pin (mode 0600);
#   - seeds the demo keys, generated inside the token (their values are never known outside it):
#       demo-aes-128, demo-aes-192, demo-aes-256, demo-rsa-2048, demo-rsa-3072, demo-rsa-4096
#         (extractable, sensitive), and demo-locked-aes-256 (not extractable);
#   - writes .softhsm/env with export lines for scripts and tests.
#
# Idempotent: a second run installs nothing, creates nothing, rewrites nothing, and exits 0.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$here/.softhsm"
token_label="hsm-bridge-dev"
module="/usr/lib/softhsm/libsofthsm2.so"

say() { printf 'softhsm-setup: %s\n' "$*"; }
die() { printf 'softhsm-setup: error: %s\n' "$*" >&2; exit 1; }

# --- packages -------------------------------------------------------------------------
packages=(softhsm2 opensc openssl libssl-dev pkg-config gcc libc6-dev ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
        sudo="sudo"
    fi
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -f "$module" ] || die "SoftHSM2 module not found at $module"

# --- token ----------------------------------------------------------------------------
umask 077
mkdir -p "$dir/tokens"
conf="$dir/softhsm2.conf"
conf_text="# Written by softhsm-setup.sh: the project-local SoftHSM2 token store.
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
"
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$(printf '%s' "$conf_text")" ]; then
    printf '%s' "$conf_text" >"$conf"
fi
export SOFTHSM2_CONF="$conf"

new_pin() { openssl rand -hex 12; }
for f in user-pin so-pin; do
    if [ ! -s "$dir/$f" ]; then
        new_pin >"$dir/$f"
    fi
    chmod 600 "$dir/$f"
done
user_pin="$(cat "$dir/user-pin")"
so_pin="$(cat "$dir/so-pin")"

if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$token_label[[:space:]]*$"; then
    say "creating token $token_label in $dir/tokens"
    softhsm2-util --init-token --free --label "$token_label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
fi

# --- demo keys ------------------------------------------------------------------------
p11() { pkcs11-tool --module "$module" --token-label "$token_label" --login --pin "$user_pin" "$@"; }
existing="$(p11 --list-objects 2>/dev/null | sed -n 's/^[[:space:]]*label:[[:space:]]*//p')"
have() { grep -qx "$1" <<<"$existing"; }

# label, CKA_ID, pkcs11-tool arguments
seed() {
    local label="$1" id="$2"
    shift 2
    if have "$label"; then
        return
    fi
    say "seeding $label"
    p11 --label "$label" --id "$id" "$@" >/dev/null 2>&1 || die "could not create $label"
}
seed demo-aes-128 0101 --keygen --key-type AES:16 --extractable --sensitive --usage-decrypt
seed demo-aes-192 0102 --keygen --key-type AES:24 --extractable --sensitive --usage-decrypt
seed demo-aes-256 0103 --keygen --key-type AES:32 --extractable --sensitive --usage-decrypt
seed demo-rsa-2048 0201 --keypairgen --key-type rsa:2048 --extractable --sensitive
seed demo-rsa-3072 0202 --keypairgen --key-type rsa:3072 --extractable --sensitive
seed demo-rsa-4096 0203 --keypairgen --key-type rsa:4096 --extractable --sensitive
seed demo-locked-aes-256 0301 --keygen --key-type AES:32 --sensitive --usage-decrypt

# --- environment for scripts and tests ------------------------------------------------
env_text="# Written by softhsm-setup.sh. Source it: . .softhsm/env
export SOFTHSM2_CONF=$conf
export HSM_BRIDGE_PKCS11_MODULE=$module
export HSM_BRIDGE_TOKEN_LABEL=$token_label
export HSM_BRIDGE_PIN_FILE=$dir/user-pin"
if [ ! -f "$dir/env" ] || [ "$(cat "$dir/env")" != "$env_text" ]; then
    printf '%s\n' "$env_text" >"$dir/env"
fi
say "ready: token $token_label, 7 demo keys, environment in .softhsm/env"

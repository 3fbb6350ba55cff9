#!/usr/bin/env bash
# Prepares a development machine for hsm-bridge (Debian 12, run as root or with sudo):
#   - installs what is missing: SoftHSM2, OpenSC (pkcs11-tool), OpenSSL, the build
#     dependencies of the Rust crate (libssl-dev, pkg-config, a C compiler), and protoc
#     (the tests check that the proto builds with the standard compiler too),
#     python3-venv (a test drives the OCI emulator with Oracle's Python SDK) and
#     hexdump (bsdextrautils; the benchmark runs OCI's documented openssl recipe);
#   - creates the project-local SoftHSM2 token "hsm-bridge-dev" under .softhsm/ (git-ignored),
#     with random PINs in .softhsm/user-pin and .softhsm/so-pin (mode 0600);
#   - seeds the demo keys, generated inside the token (their values are never known outside it):
#       demo-aes-128, demo-aes-192, demo-aes-256, demo-rsa-2048, demo-rsa-3072, demo-rsa-4096
#         (extractable, sensitive), and demo-locked-aes-256 (not extractable);
#   - creates the import journal's record key hsm-bridge-journal-mac in the token (a generic
#     secret for HMAC-SHA256, sensitive, never extractable);
#   - makes dev TLS material in .softhsm/tls/ (a CA, a server certificate for localhost and
#     127.0.0.1, client certificates; tests/make-test-certs.sh), remade when it nears expiry;
#   - makes a dev OCI API-key identity in .softhsm/oci/ for the local OCI KMS emulator;
#   - makes dev AWS credentials in .softhsm/aws/ for the local AWS KMS emulator (a random
#     secret access key in a file of mode 0600, and a credentials file with its profile);
#   - makes a dev Entra ID client secret in .softhsm/azure/ for the local Azure Key Vault
#     emulator (random, in a file of mode 0600);
#   - writes .softhsm/env with export lines for scripts and tests.
#
# With --with-kryoptic, also: builds the kryoptic PKCS#11 soft token (pinned version, from
# its published crate source via cargo, with its own lock file) once into .kryoptic/ (git-ignored), and
# creates a second dev token "hsm-bridge-kryoptic" with the same demo keys under
# .softhsm/kryoptic/. kryoptic does RSA-OAEP with SHA-256 and RFC 5649 inside the token, so
# the HSM-only wrap modes can be tested; SoftHSM2 2.6.1 cannot.
#
# With --with-postgres, also: installs Debian's PostgreSQL server (package postgresql), for
# the tests of the import journal on PostgreSQL; they start a throw-away server of their own
# under target/tmp/ (tests/common/postgres.rs) and use no other.
#
# With --with-promtool, also: takes promtool (Prometheus' checker of metrics expositions, a
# single binary) out of Debian's prometheus package into .tools/bin/ (git-ignored), without
# installing the package: no Prometheus server, no service. The metrics test runs it.
#
# Idempotent: a second run installs nothing, creates nothing, rewrites nothing, and exits 0.
set -euo pipefail

with_kryoptic=0
with_postgres=0
with_promtool=0
for arg in "$@"; do
    case "$arg" in
        --with-kryoptic) with_kryoptic=1 ;;
        --with-postgres) with_postgres=1 ;;
        --with-promtool) with_promtool=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) printf 'softhsm-setup: unknown argument %s (known: --with-kryoptic, --with-postgres, --with-promtool)\n' "$arg" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# HSM_BRIDGE_SETUP_DIR moves the state elsewhere (the test of this script uses a fresh one).
dir="${HSM_BRIDGE_SETUP_DIR:-$here/.softhsm}"
token_label="hsm-bridge-dev"
module="/usr/lib/softhsm/libsofthsm2.so"

say() { printf 'softhsm-setup: %s\n' "$*"; }
die() { printf 'softhsm-setup: error: %s\n' "$*" >&2; exit 1; }

# --- packages -------------------------------------------------------------------------
packages=(softhsm2 opensc openssl libssl-dev pkg-config gcc libc6-dev ca-certificates protobuf-compiler python3 python3-venv bsdextrautils)
if ((with_kryoptic)); then
    # bindgen needs libclang (not the whole clang); the sqlite token store needs libsqlite3.
    packages+=(libclang1-14 libclang-common-14-dev libsqlite3-dev)
fi
if ((with_postgres)); then
    packages+=(postgresql)
fi
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
# PINs never go on a command line (any local user can read /proc/PID/cmdline): pkcs11-tool
# reads them from the environment of its own process (`--pin env:NAME`), which only this
# user can read. softhsm2-util has no such way, so the SoftHSM token is initialised through
# pkcs11-tool as well.
# (A shell assignment before a command puts the value in that command's environment only;
# `env NAME=VALUE` would put it on env's own command line.)
# init_token MODULE SLOT_ID LABEL SO_PIN_FILE USER_PIN_FILE
init_token() {
    local module="$1" slot="$2" label="$3" so_file="$4" user_file="$5"
    HB_SO_PIN="$(cat "$so_file")" pkcs11-tool --module "$module" --slot "$slot" \
        --init-token --label "$label" --so-pin env:HB_SO_PIN >/dev/null 2>&1 \
        || die "init-token $label failed"
    HB_SO_PIN="$(cat "$so_file")" HB_USER_PIN="$(cat "$user_file")" pkcs11-tool \
        --module "$module" --token-label "$label" --login --login-type so --so-pin env:HB_SO_PIN \
        --init-pin --pin env:HB_USER_PIN >/dev/null 2>&1 || die "init-pin $label failed"
}

if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$token_label[[:space:]]*$"; then
    say "creating token $token_label in $dir/tokens"
    # SoftHSM always offers one uninitialised slot; its id is the one before that state line.
    free_slot="$(pkcs11-tool --module "$module" --list-token-slots 2>/dev/null \
        | awk '/^Slot [0-9]+ \(0x/ { id = $3; gsub(/[()]/, "", id) } /token state:[[:space:]]*uninitialized/ { print id; exit }')"
    [ -n "$free_slot" ] || die "SoftHSM offers no free slot"
    init_token "$module" "$free_slot" "$token_label" "$dir/so-pin" "$dir/user-pin"
fi

# --- demo keys ------------------------------------------------------------------------
# seed_demo_keys MODULE TOKEN PIN_FILE: creates the demo keys the token lacks, inside the token.
seed_demo_keys() {
    local module="$1" token="$2" pin_file="$3" existing
    p11() {
        HB_USER_PIN="$(cat "$pin_file")" pkcs11-tool --module "$module" --token-label "$token" \
            --login --pin env:HB_USER_PIN "$@"
    }
    existing="$(p11 --list-objects 2>/dev/null | sed -n 's/^[[:space:]]*label:[[:space:]]*//p')"
    # label, CKA_ID, pkcs11-tool arguments
    seed() {
        local label="$1" id="$2"
        shift 2
        if grep -qx "$label" <<<"$existing"; then
            return
        fi
        say "seeding $label in $token"
        p11 --label "$label" --id "$id" "$@" >/dev/null 2>&1 || die "could not create $label in $token"
    }
    seed demo-aes-128 0101 --keygen --key-type AES:16 --extractable --sensitive --usage-decrypt
    seed demo-aes-192 0102 --keygen --key-type AES:24 --extractable --sensitive --usage-decrypt
    seed demo-aes-256 0103 --keygen --key-type AES:32 --extractable --sensitive --usage-decrypt
    seed demo-rsa-2048 0201 --keypairgen --key-type rsa:2048 --extractable --sensitive
    seed demo-rsa-3072 0202 --keypairgen --key-type rsa:3072 --extractable --sensitive
    seed demo-rsa-4096 0203 --keypairgen --key-type rsa:4096 --extractable --sensitive
    seed demo-locked-aes-256 0301 --keygen --key-type AES:32 --sensitive --usage-decrypt
    # The import journal's record key: HMAC-SHA256 over every journal record, made in the
    # token and never extractable, so whoever can write the database cannot forge one.
    seed hsm-bridge-journal-mac 0f01 --keygen --key-type GENERIC:32 --sensitive --private --usage-sign
}
seed_demo_keys "$module" "$token_label" "$dir/user-pin"

# --- kryoptic (optional) --------------------------------------------------------------
kryoptic_version="1.5.4"
# Debian 12's OpenSSL 3.0 cannot build the default feature set (EdDSA needs 3.2);
# "minimal" has the sqlite store, AES, RSA, ECDSA and hashes, linked to the system libcrypto.
kryoptic_features="kryoptic-lib/minimal,kryoptic-lib/dynamic"
kryoptic_dir="$here/.kryoptic"
kryoptic_module="$kryoptic_dir/libkryoptic_pkcs11.so"
kryoptic_stamp="$kryoptic_dir/BUILT"
kryoptic_token="hsm-bridge-kryoptic"
kt="$dir/kryoptic"

build_kryoptic() {
    local want="kryoptic $kryoptic_version features $kryoptic_features"
    if [ -f "$kryoptic_module" ] && [ "$(cat "$kryoptic_stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    command -v cargo >/dev/null || die "cargo is needed to build kryoptic"
    say "building kryoptic $kryoptic_version from its published crate source (about a minute)"
    mkdir -p "$kryoptic_dir/fetch/src"
    # A throw-away crate whose only job is to make cargo download the pinned source.
    printf '[package]\nname = "kryoptic-fetch"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\nkryoptic = { version = "=%s", default-features = false }\n\n[workspace]\n' \
        "$kryoptic_version" >"$kryoptic_dir/fetch/Cargo.toml"
    : >"$kryoptic_dir/fetch/src/lib.rs"
    (cd "$kryoptic_dir/fetch" && cargo fetch -q) || die "could not fetch the kryoptic $kryoptic_version source"
    local crate
    crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"kryoptic-$kryoptic_version.crate" 2>/dev/null | head -n 1)"
    [ -n "$crate" ] || die "kryoptic-$kryoptic_version.crate is not in cargo's registry cache"
    rm -rf "$kryoptic_dir/src"
    mkdir -p "$kryoptic_dir/src"
    tar -xzf "$crate" -C "$kryoptic_dir/src" --strip-components=1
    (cd "$kryoptic_dir/src" && cargo build -q --release --locked --no-default-features \
        --features "$kryoptic_features" --target-dir "$kryoptic_dir/target") \
        || die "kryoptic build failed"
    cp "$kryoptic_dir/target/release/libkryoptic_pkcs11.so" "$kryoptic_module.tmp"
    mv "$kryoptic_module.tmp" "$kryoptic_module"
    printf '%s\n' "$want" >"$kryoptic_stamp"
}

setup_kryoptic_token() {
    mkdir -p "$kt"
    local kconf="$kt/kryoptic.conf" text
    text="# Written by softhsm-setup.sh: the kryoptic dev token.
[[slots]]
slot = 1
dbtype = \"sqlite\"
dbargs = \"$kt/token.sql\""
    if [ ! -f "$kconf" ] || [ "$(cat "$kconf")" != "$text" ]; then
        printf '%s\n' "$text" >"$kconf"
    fi
    for f in user-pin so-pin; do
        [ -s "$kt/$f" ] || new_pin >"$kt/$f"
        chmod 600 "$kt/$f"
    done
    if ! KRYOPTIC_CONF="$kconf" pkcs11-tool --module "$kryoptic_module" --list-token-slots 2>/dev/null \
        | grep -q "token label[[:space:]]*:[[:space:]]*$kryoptic_token[[:space:]]*$"; then
        say "creating token $kryoptic_token in $kt"
        KRYOPTIC_CONF="$kconf" init_token "$kryoptic_module" 1 "$kryoptic_token" "$kt/so-pin" "$kt/user-pin"
    fi
    KRYOPTIC_CONF="$kconf" seed_demo_keys "$kryoptic_module" "$kryoptic_token" "$kt/user-pin"
}

if ((with_kryoptic)); then
    build_kryoptic
    setup_kryoptic_token
fi

# --- promtool (optional) --------------------------------------------------------------
promtool="$here/.tools/bin/promtool"
if ((with_promtool)) && [ ! -x "$promtool" ]; then
    say "taking promtool out of Debian's prometheus package into .tools/bin/ (the package is not installed)"
    tmp="$(mktemp -d)"
    chmod 755 "$tmp" # apt's download user writes there
    if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || die "could not download Debian's prometheus package"
    fi
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool \
        || die "no promtool in Debian's prometheus package"
    mkdir -p "$(dirname "$promtool")"
    mv "$tmp/usr/bin/promtool" "$promtool.tmp"
    mv "$promtool.tmp" "$promtool"
    rm -rf "$tmp"
fi

# --- dev TLS material for `hsm-bridge serve --config config/hsm-bridge.toml` ----------
tls="$dir/tls"
if [ ! -f "$tls/server.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$tls/server.pem" >/dev/null 2>&1; then
    say "making dev TLS certificates in $tls"
    rm -rf "$tls"
    HSM_BRIDGE_CERT_DAYS=365 bash "$here/tests/make-test-certs.sh" "$tls" || die "could not make TLS certificates"
fi

# --- a dev wrapping key, pinned by the shipped config ---------------------------------
# Stands in for a vault's RSA wrapping key in the README's WrapKey and `wrap` examples: the
# shipped config pins it (policy.pinned_wrapping_key_files), so keys leave only for it; its
# private half, here, opens what they are wrapped into.
if [ ! -f "$dir/dev-wrapping-key.pem" ] || [ ! -f "$dir/dev-wrapping-key.pub.pem" ]; then
    say "making the dev wrapping key $dir/dev-wrapping-key.pem"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$dir/dev-wrapping-key.pem" 2>/dev/null \
        || die "could not make the dev wrapping key"
    openssl pkey -in "$dir/dev-wrapping-key.pem" -pubout -out "$dir/dev-wrapping-key.pub.pem" 2>/dev/null
fi

# --- a dev OCI API-key identity, for the local OCI KMS emulator -----------------------
# .softhsm/oci/config is an ~/.oci/config-style profile whose key the emulator accepts
# (oci-kms-emulator --api-key .softhsm/oci/api_key_public.pem). Not an Oracle account.
oci="$dir/oci"
if [ ! -f "$oci/config" ] || [ ! -f "$oci/api_key.pem" ] || [ ! -f "$oci/api_key_public.pem" ]; then
    say "making a dev OCI API-key identity in $oci"
    rm -rf "$oci"
    mkdir -p "$oci"
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$oci/api_key.pem" 2>/dev/null) ||
        die "could not make the dev OCI API key"
    openssl pkey -in "$oci/api_key.pem" -pubout -out "$oci/api_key_public.pem" 2>/dev/null
    fp=$(openssl pkey -in "$oci/api_key.pem" -pubout -outform DER 2>/dev/null | openssl md5 -c | awk '{print $NF}')
    cat >"$oci/config" <<EOC
# Dev identity made by softhsm-setup.sh for the local OCI KMS emulator; not an Oracle account.
[DEFAULT]
user=ocid1.user.oc1..hsmbridgedev
tenancy=ocid1.tenancy.oc1..hsmbridgedev
fingerprint=$fp
region=us-ashburn-1
key_file=api_key.pem
EOC
fi

# --- dev AWS credentials, for the local AWS KMS emulator -------------------------------
# .softhsm/aws/credentials is an AWS shared credentials file with profile [hsm-bridge];
# the emulator reads the same secret from .softhsm/aws/secret-access-key
# (aws-kms-emulator --secret-access-key-file). Not an AWS account.
aws="$dir/aws"
if [ ! -f "$aws/credentials" ] || [ ! -f "$aws/secret-access-key" ]; then
    say "making dev AWS credentials in $aws"
    rm -rf "$aws"
    mkdir -p "$aws"
    (umask 077 && openssl rand -hex 20 >"$aws/secret-access-key") ||
        die "could not make the dev AWS secret"
    (umask 077 && cat >"$aws/credentials" <<EOC
# Dev credentials made by softhsm-setup.sh for the local AWS KMS emulator; not an AWS account.
[hsm-bridge]
aws_access_key_id = AKIAHSMBRIDGEDEV0001
aws_secret_access_key = $(cat "$aws/secret-access-key")
EOC
    )
fi

# --- a dev Entra ID client secret, for the local Azure Key Vault emulator ---------------
# .softhsm/azure/client-secret is read by the emulator (azure-kv-emulator
# --client-secret-file) and by the destination azure-local of config/hsm-bridge.toml
# (client_secret_file). Not an Azure application.
azure="$dir/azure"
if [ ! -f "$azure/client-secret" ]; then
    say "making a dev Entra ID client secret in $azure"
    rm -rf "$azure"
    mkdir -p "$azure"
    (umask 077 && openssl rand -hex 24 >"$azure/client-secret") ||
        die "could not make the dev Azure client secret"
fi

# --- a dev Google service-account key, for the local Cloud KMS emulator ------------------
# .softhsm/gcp/service-account.json is trusted by the emulator (gcp-kms-emulator
# --service-account) and read by the destination gcp-local of config/hsm-bridge.toml
# (credentials_file). Not a Google service account.
gcp="$dir/gcp"
if [ ! -f "$gcp/service-account.json" ]; then
    say "making a dev Google service-account key in $gcp"
    rm -rf "$gcp"
    mkdir -p "$gcp"
    (
        umask 077
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$gcp/key.pem" 2>/dev/null &&
            python3 - "$gcp/key.pem" "$gcp/service-account.json" <<'EOP'
import json, secrets, sys
key = open(sys.argv[1]).read()
json.dump({
    "type": "service_account",
    "project_id": "hsm-bridge-dev",
    "private_key_id": secrets.token_hex(20),
    "private_key": key,
    "client_email": "hsm-bridge@hsm-bridge-dev.iam.gserviceaccount.com",
    "client_id": "100000000000000000001",
    "token_uri": "https://oauth2.googleapis.com/token",
}, open(sys.argv[2], "w"), indent=2)
EOP
        rm -f "$gcp/key.pem"
    ) || die "could not make the dev Google service-account key"
fi

# --- environment for scripts and tests ------------------------------------------------
env_text="# Written by softhsm-setup.sh. Source it: . .softhsm/env
export SOFTHSM2_CONF=$conf
export HSM_BRIDGE_PKCS11_MODULE=$module
export HSM_BRIDGE_TOKEN_LABEL=$token_label
export HSM_BRIDGE_PIN_FILE=$dir/user-pin"
# The kryoptic lines are there whenever its token is, so a plain run changes nothing.
if [ -f "$kryoptic_module" ] && [ -f "$kt/kryoptic.conf" ]; then
    env_text="$env_text
export KRYOPTIC_CONF=$kt/kryoptic.conf
export HSM_BRIDGE_KRYOPTIC_MODULE=$kryoptic_module
export HSM_BRIDGE_KRYOPTIC_TOKEN_LABEL=$kryoptic_token
export HSM_BRIDGE_KRYOPTIC_PIN_FILE=$kt/user-pin"
fi
if [ ! -f "$dir/env" ] || [ "$(cat "$dir/env")" != "$env_text" ]; then
    printf '%s\n' "$env_text" >"$dir/env"
fi
if ((with_kryoptic)); then
    say "ready: tokens $token_label and $kryoptic_token, 7 demo keys and the journal record key each, environment in .softhsm/env"
else
    say "ready: token $token_label, 7 demo keys and the journal record key, environment in .softhsm/env"
fi

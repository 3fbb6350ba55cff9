#!/usr/bin/env bash
# Installs hsm-bridge as a systemd service (README.md, "Running under systemd"), as root,
# from the repository after `cargo build --release`. It takes your files; nothing secret is
# made or printed here:
#
#   TLS_CERT, TLS_KEY    the daemon's certificate (chain) and its private key (PEM)
#   CLIENT_CA            the CA of the callers' client certificates (PEM)
#   OCI_CONFIG, OCI_KEY  an ~/.oci/config-style profile and its API private key (PEM); the
#                        profile's key_file must be /etc/hsm-bridge/oci/api_key.pem
#   PIN_FILE             a file holding the partition's PIN (its first line)
#
#   sudo TLS_CERT=... TLS_KEY=... CLIENT_CA=... OCI_CONFIG=... OCI_KEY=... PIN_FILE=... \
#       deploy/systemd/install.sh
#
# What the daemon's secret-file check accepts (src/hardening.rs): a regular file owned by
# the daemon's user or by root, readable by nobody else (0600, 0400), or 0440 owned by root
# with the daemon's own group. So: the key files 0440 root:hsm-bridge, the folders 0750
# root:hsm-bridge, the PIN root's alone (systemd reads it and hands it to the service as a
# credential). Before the first start, the Luna client must be installed (its library at
# /usr/safenet/lunaclient/lib/libCryptoki2_64.so, /etc/Chrystoki.conf and its certificates
# readable by the daemon's user: `usermod -aG hsmusers hsm-bridge`), and the partition must
# hold the journal's record key (README.md, "The import journal").
#
# ROOT (default: empty, the machine itself) installs under another root and starts nothing:
# tests/deploy.rs runs this script in a scratch root, then the daemon as an unprivileged
# user. DAEMON_USER (default hsm-bridge) names the user, BINARY (default
# target/release/hsm-bridge) the build to install.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROOT="${ROOT:-}"
user="${DAEMON_USER:-hsm-bridge}"
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run it as root (it creates a user and root-owned folders)"
for v in TLS_CERT TLS_KEY CLIENT_CA OCI_CONFIG OCI_KEY PIN_FILE; do
    [ -f "${!v:-}" ] || die "$v must name a file (see the top of this script)"
done
binary="${BINARY:-target/release/hsm-bridge}"
[ -x "$binary" ] || die "build it first: cargo build --release"
grep -q '^key_file=/etc/hsm-bridge/oci/api_key.pem' "$OCI_CONFIG" \
    || die "OCI_CONFIG: its key_file must be /etc/hsm-bridge/oci/api_key.pem (where this puts OCI_KEY)"

# The daemon's user and group.
id -u "$user" >/dev/null 2>&1 \
    || useradd --system --home-dir /var/lib/hsm-bridge --no-create-home --shell /usr/sbin/nologin "$user"

# The binary, and the unit.
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system"
install -m 0755 "$binary" "$ROOT/usr/local/bin/hsm-bridge"
install -m 0644 deploy/systemd/hsm-bridge.service "$ROOT/etc/systemd/system/hsm-bridge.service"

# The config and the files it names: the daemon's group reads them, nobody else.
install -d -m 0750 -o root -g "$user" "$ROOT/etc/hsm-bridge" "$ROOT/etc/hsm-bridge/tls" "$ROOT/etc/hsm-bridge/oci"
install -d -m 0700 -o root -g root "$ROOT/etc/hsm-bridge/credentials"
install -m 0640 -o root -g "$user" deploy/systemd/hsm-bridge.toml "$ROOT/etc/hsm-bridge/hsm-bridge.toml"
install -m 0644 -o root -g root "$TLS_CERT" "$ROOT/etc/hsm-bridge/tls/server.pem"
install -m 0440 -o root -g "$user" "$TLS_KEY" "$ROOT/etc/hsm-bridge/tls/server.key"
install -m 0644 -o root -g root "$CLIENT_CA" "$ROOT/etc/hsm-bridge/tls/clients-ca.pem"
install -m 0440 -o root -g "$user" "$OCI_CONFIG" "$ROOT/etc/hsm-bridge/oci/config"
install -m 0440 -o root -g "$user" "$OCI_KEY" "$ROOT/etc/hsm-bridge/oci/api_key.pem"
# The PIN: root's alone; LoadCredential= hands it to the service only.
install -m 0600 -o root -g root "$PIN_FILE" "$ROOT/etc/hsm-bridge/credentials/pin"

if [ -n "$ROOT" ]; then
    # What systemd would do at start: StateDirectory= and LogsDirectory=, the daemon's own.
    install -d -m 0700 -o "$user" -g "$user" "$ROOT/var/lib/hsm-bridge" "$ROOT/var/log/hsm-bridge"
    printf 'install.sh: installed under %s; nothing started\n' "$ROOT"
    exit 0
fi
systemctl daemon-reload
systemctl enable --now hsm-bridge
printf 'install.sh: hsm-bridge enabled and started (systemctl status hsm-bridge)\n'

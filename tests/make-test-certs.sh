#!/usr/bin/env bash
# Makes the TLS material for the daemon tests in DIR (default: ./test-certs):
#   ca.pem                      the client CA the daemon trusts (also signs the server cert)
#   server.pem, server.key      CN localhost, SAN DNS:localhost, IP:127.0.0.1
#   cckm.pem/.key               client CN cckm.example      (listed, every operation)
#   limited.pem/.key            client CN limited.example   (listed, list+wrap, test-aes-* only)
#   unlisted.pem/.key           client CN unlisted.example  (from the CA, not in server.clients)
#   rogue.pem/.key              client CN cckm.example, issued by another CA (rogue-ca.pem)
# Keys are EC P-256, mode 0600. Valid for HSM_BRIDGE_CERT_DAYS days (default 2). The tests
# make fresh material on every run; softhsm-setup.sh uses it for the dev daemon's TLS.
set -euo pipefail
dir="${1:-test-certs}"
days="${HSM_BRIDGE_CERT_DAYS:-2}"
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

ca() { # name subject
    key "$1"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days "$days" -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
}

leaf() { # name CN issuer extensions
    key "$1"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days "$days" \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

ca ca "hsm-bridge test CA"
ca rogue-ca "rogue test CA"
leaf server localhost ca "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf cckm cckm.example ca "$client_ext"
leaf limited limited.example ca "$client_ext"
leaf unlisted unlisted.example ca "$client_ext"
leaf rogue cckm.example rogue-ca "$client_ext"
chmod 600 ./*.key

"""Drives azure-kv-emulator with Azure's own Python SDK: azure-identity (MSAL underneath)
for the tokens, azure-keyvault-keys for the Key Vault calls: its challenge policy (the
first request goes out without a token and body), its serialisers (key_hsm as base64url),
its response models, its pager (following nextLink) and its exception types. The .byok
wrap is built with pyca/cryptography, not with anything of the emulator's. Run by
tests/azure_emulator.rs in a throw-away virtualenv; prints one JSON object of what the SDK
saw (key material only as SHA-256).

Environment (nothing on the command line):
  EMU_CA                          the CA file for connection_verify=
  EMU_KV_ENDPOINT                 https://localhost:PORT of the Key Vault instance
  EMU_KV_TENANT, EMU_KV_CLIENT_ID its tenant and client ids
  EMU_KV_SECRET_FILE              the client secret, in a file
  EMU_KV_CERT                     PEM with the client certificate and its private key
  EMU_KV_BAD_KEK                  the versioned kid of a KEK with key_ops import+wrapKey
  EMU_MHSM_ENDPOINT, EMU_MHSM_TENANT, EMU_MHSM_CLIENT_ID, EMU_MHSM_SECRET_FILE
                                  the same for the Managed HSM instance
"""
import base64
import hashlib
import json
import os

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.keys import JsonWebKey, KeyClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

ca = os.environ["EMU_CA"]
out = {}


def secret(path):
    with open(path) as f:
        return f.read().strip()


def credential(prefix, **extra):
    endpoint = os.environ[prefix + "_ENDPOINT"]
    return ClientSecretCredential(
        os.environ[prefix + "_TENANT"],
        os.environ[prefix + "_CLIENT_ID"],
        extra.pop("client_secret", None) or secret(os.environ[prefix + "_SECRET_FILE"]),
        authority=endpoint,
        disable_instance_discovery=True,
        connection_verify=ca,
        **extra,
    )


def key_client(prefix, cred):
    return KeyClient(
        os.environ[prefix + "_ENDPOINT"],
        cred,
        verify_challenge_resource=False,
        connection_verify=ca,
        retry_total=0,
    )


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def public_key(kvkey):
    n = int.from_bytes(kvkey.key.n, "big")
    e = int.from_bytes(kvkey.key.e, "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def byok(kek_kid, kek_public, target, oaep_hash=hashes.SHA1):
    """The .byok file: RSA-OAEP (SHA-1, MGF1-SHA-1) of a fresh AES-256 key, then the
    target under it by AES key wrap with padding."""
    aes = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(oaep_hash()), algorithm=oaep_hash(), label=None)
    ciphertext = kek_public.encrypt(aes, oaep) + aes_key_wrap_with_padding(aes, target)
    return json.dumps(
        {
            "schema_version": "1.0.0",
            "header": {"kid": kek_kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
            "ciphertext": b64url(ciphertext),
            "generator": "tests/azure_sdk/fidelity.py",
        }
    ).encode()


def pkcs8(key):
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def error(call, *args, **kwargs):
    """The exception type, HTTP status, error code and message of a call that must fail."""
    try:
        call(*args, **kwargs)
    except HttpResponseError as e:
        return [type(e).__name__, e.status_code, e.error.code if e.error else None, e.message]
    raise AssertionError(f"{call.__name__} succeeded")


def bundle(k):
    return {
        "id": k.id,
        "name": k.name,
        "version": k.properties.version,
        "kty": k.key_type,
        "key_ops": k.key_operations,
        "enabled": k.properties.enabled,
        "tags": k.properties.tags,
        "recovery_level": k.properties.recovery_level,
        "created_type": type(k.properties.created_on).__name__,
    }


# --- the Key Vault instance, with a client secret ---
kv = key_client("EMU_KV", credential("EMU_KV"))
kek = kv.create_key("kek", "RSA-HSM", size=3072, key_operations=["import"])
out["kek"] = bundle(kek)
out["kek_n_bits"] = int.from_bytes(kek.key.n, "big").bit_length()
out["kek_latest"] = kv.get_key("kek").id
out["kek_versioned"] = kv.get_key("kek", kek.properties.version).id
kek_public = public_key(kek)

target = rsa.generate_private_key(public_exponent=65537, key_size=3072)
target_der = pkcs8(target)
tags = {"source": "hsm-bridge", "hsm-key": "demo-rsa-3072"}
imported = []
for i in range(3):
    blob = byok(kek.id, kek_public, target_der)
    k = kv.import_key(
        "imported",
        JsonWebKey(kty="RSA-HSM", key_ops=["sign", "verify"], t=blob),
        hardware_protected=True,
        tags=dict(tags, round=str(i)),
    )
    imported.append(k)
out["imported"] = [bundle(k) for k in imported]
out["imported_n_matches"] = [
    int.from_bytes(k.key.n, "big") == target.public_key().public_numbers().n for k in imported
]
out["imported_sha256"] = sha256(target_der)
out["latest_after_imports"] = kv.get_key("imported").properties.version

pages = [list(page) for page in kv.list_properties_of_key_versions("imported", max_page_size=2).by_page()]
out["version_pages"] = [[p.version for p in page] for page in pages]
out["version_tags"] = [p.tags for page in pages for p in page]

# refusals, as the SDK's exceptions
out["not_found"] = error(kv.get_key, "no-such-key")
out["not_found_version"] = error(kv.get_key, "kek", "0" * 32)
out["sha256_oaep"] = error(
    kv.import_key,
    "refused",
    JsonWebKey(kty="RSA-HSM", t=byok(kek.id, kek_public, target_der, hashes.SHA256)),
)
unversioned = kek.id.rsplit("/", 1)[0]
out["kid_without_version"] = error(
    kv.import_key, "refused", JsonWebKey(kty="RSA-HSM", t=byok(unversioned, kek_public, target_der))
)
other_vault = kek.id.replace("https://localhost:", "https://other.vault.azure.net:")
out["kid_of_another_vault"] = error(
    kv.import_key, "refused", JsonWebKey(kty="RSA-HSM", t=byok(other_vault, kek_public, target_der))
)
bad_kek = os.environ["EMU_KV_BAD_KEK"]
bad_public = public_key(kv.get_key(bad_kek.split("/")[-2], bad_kek.split("/")[-1]))
out["kek_not_import_only"] = error(
    kv.import_key, "refused", JsonWebKey(kty="RSA-HSM", t=byok(bad_kek, bad_public, target_der))
)
ec_der = pkcs8(ec.generate_private_key(ec.SECP256R1()))
out["ec_as_rsa"] = error(
    kv.import_key, "refused", JsonWebKey(kty="RSA-HSM", t=byok(kek.id, kek_public, ec_der))
)
ec_key = kv.import_key(
    "imported-ec",
    JsonWebKey(kty="EC-HSM", crv="P-256", key_ops=["sign"], t=byok(kek.id, kek_public, ec_der)),
)
out["ec"] = {"kty": ec_key.key_type, "crv": ec_key.key.crv, "x_len": len(ec_key.key.x)}
out["ec_sha256"] = sha256(ec_der)
out["ec_version"] = ec_key.properties.version
aes = os.urandom(32)
out["oct_on_key_vault"] = error(
    kv.import_key, "refused", JsonWebKey(kty="oct-HSM", t=byok(kek.id, kek_public, aes))
)
out["create_import_and_wrap"] = error(
    kv.create_key, "kek2", "RSA-HSM", size=2048, key_operations=["import", "wrapKey"]
)
# a refused token request surfaces as the credential's error
try:
    key_client("EMU_KV", credential("EMU_KV", client_secret="not-the-secret")).get_key("kek")
    out["wrong_secret"] = None
except ClientAuthenticationError as e:
    out["wrong_secret"] = ["ClientAuthenticationError", "AADSTS7000215" in str(e)]

# --- the same vault with a certificate credential (a signed client assertion) ---
cert_cred = CertificateCredential(
    os.environ["EMU_KV_TENANT"],
    os.environ["EMU_KV_CLIENT_ID"],
    certificate_path=os.environ["EMU_KV_CERT"],
    authority=os.environ["EMU_KV_ENDPOINT"],
    disable_instance_discovery=True,
    connection_verify=ca,
)
out["by_certificate"] = key_client("EMU_KV", cert_cred).get_key("kek").id

# --- the Managed HSM instance: oct-HSM (AES) imports ---
mhsm = key_client("EMU_MHSM", credential("EMU_MHSM"))
mkek = mhsm.create_key("kek", "RSA-HSM", size=2048, key_operations=["import"])
aes_key = mhsm.import_key(
    "aes",
    JsonWebKey(kty="oct-HSM", key_ops=["wrapKey", "unwrapKey"], t=byok(mkek.id, public_key(mkek), aes)),
    tags={"source": "hsm-bridge"},
)
out["oct"] = bundle(aes_key)
out["oct_has_n"] = aes_key.key.n is not None
out["oct_sha256"] = sha256(aes)
out["oct_bad_size"] = error(
    mhsm.import_key,
    "aes-20",
    JsonWebKey(kty="oct-HSM", t=byok(mkek.id, public_key(mkek), os.urandom(20))),
)
# a key-exchange key of the Key Vault instance is not one of the Managed HSM's
out["kv_kek_on_mhsm"] = error(
    mhsm.import_key, "aes-x", JsonWebKey(kty="oct-HSM", t=byok(kek.id, kek_public, aes))
)

print(json.dumps(out))

"""Drives oci-kms-emulator with Oracle's own Python SDK (package `oci`): its request
signer, its HTTP stack and its model deserialisation. Run by tests/oci_import.rs inside a
throw-away virtualenv, with REQUESTS_CA_BUNDLE naming the test CA; prints one JSON object
with what the SDK saw (key material only as SHA-256).

usage: fidelity.py ENDPOINT TENANCY USER FINGERPRINT KEY_FILE KEY_OCID
"""
import base64
import hashlib
import json
import os
import sys

import oci
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

endpoint, tenancy, user, fingerprint, key_file, key_ocid = sys.argv[1:7]
config = {
    "tenancy": tenancy,
    "user": user,
    "fingerprint": fingerprint,
    "key_file": key_file,
    "region": "us-ashburn-1",
}
oci.config.validate_config(config)
client = oci.key_management.KmsManagementClient(config, service_endpoint=endpoint)
models = oci.key_management.models

out = {}

wk = client.get_wrapping_key()
assert isinstance(wk.data, models.WrappingKey), type(wk.data)
out["wrapping_key_id"] = wk.data.id
out["wrapping_key_state"] = wk.data.lifecycle_state
public = serialization.load_pem_public_key(wk.data.public_key.encode())
oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

# ImportKeyVersion: an AES-256 key, RSA_OAEP_SHA256, as OCI's documentation wraps it.
aes = os.urandom(32)
imported = client.import_key_version(
    key_ocid,
    models.ImportKeyVersionDetails(
        wrapped_import_key=models.WrappedImportKey(
            key_material=base64.b64encode(public.encrypt(aes, oaep)).decode(),
            wrapping_algorithm="RSA_OAEP_SHA256",
        )
    ),
    opc_retry_token="sdk-fidelity-0001",
)
assert isinstance(imported.data, models.KeyVersion), type(imported.data)
out["version_id"] = imported.data.id
out["version_state"] = imported.data.lifecycle_state
out["version_origin"] = imported.data.origin
out["opc_request_id"] = imported.headers.get("opc-request-id")
out["aes_sha256"] = hashlib.sha256(aes).hexdigest()

# GetKeyVersion until ENABLED, with the SDK's own waiter.
got = oci.wait_until(
    client,
    client.get_key_version(key_ocid, imported.data.id),
    "lifecycle_state",
    "ENABLED",
    max_wait_seconds=30,
    max_interval_seconds=1,
)
assert isinstance(got.data, models.KeyVersion), type(got.data)
out["enabled_state"] = got.data.lifecycle_state
out["time_created_type"] = type(got.data.time_created).__name__

# ImportKey: a new RSA-2048 key, RSA_OAEP_AES_SHA256 (OAEP of a one-time AES key + RFC 5649).
private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pkcs8 = private.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
kek = os.urandom(32)
material = public.encrypt(kek, oaep) + aes_key_wrap_with_padding(kek, pkcs8)
key = client.import_key(
    models.ImportKeyDetails(
        compartment_id="ocid1.compartment.oc1..sdk",
        display_name="sdk-fidelity",
        key_shape=models.KeyShape(algorithm="RSA", length=256),
        protection_mode="SOFTWARE",
        wrapped_import_key=models.WrappedImportKey(
            key_material=base64.b64encode(material).decode(),
            wrapping_algorithm="RSA_OAEP_AES_SHA256",
        ),
    )
)
assert isinstance(key.data, models.Key), type(key.data)
assert isinstance(key.data.key_shape, models.KeyShape)
out["new_key_id"] = key.data.id
out["new_key_shape"] = [key.data.key_shape.algorithm, key.data.key_shape.length]
out["new_key_version"] = key.data.current_key_version
out["rsa_pkcs8_sha256"] = hashlib.sha256(pkcs8).hexdigest()

# A request signed by a key the emulator does not know: the SDK raises ServiceError 401.
other = dict(config)
other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
other["key_content"] = other_key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
del other["key_file"]
bad = oci.key_management.KmsManagementClient(other, service_endpoint=endpoint)
try:
    bad.get_wrapping_key()
    out["unknown_key"] = "accepted"
except oci.exceptions.ServiceError as e:
    out["unknown_key"] = [e.status, e.code, e.request_id]

print(json.dumps(out))

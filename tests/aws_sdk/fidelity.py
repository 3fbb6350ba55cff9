"""Drives aws-kms-emulator with AWS's own Python SDK (boto3/botocore): its SigV4 signer,
its JSON 1.1 serialiser, its response parser and its paginator. The wrapping is done with
pyca/cryptography, not with anything of the emulator's. Run by tests/aws_emulator.rs in a
throw-away virtualenv; prints one JSON object of what the SDK saw (key material only as
SHA-256).

Environment (nothing on the command line):
  KMS_EMULATOR_ENDPOINT  https://localhost:PORT
  KMS_EMULATOR_CA        the CA file for verify=
  KMS_EMULATOR_REGION    the region to sign for
  AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE  the access key
"""
import datetime
import hashlib
import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

endpoint = os.environ["KMS_EMULATOR_ENDPOINT"]
ca = os.environ["KMS_EMULATOR_CA"]
region = os.environ["KMS_EMULATOR_REGION"]
session = boto3.Session()
config = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(**credentials):
    return session.client(
        "kms", endpoint_url=endpoint, verify=ca, region_name=region, config=config, **credentials
    )


kms = client()
out = {}


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def oaep(hash_cls):
    return padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=None)


def error(call, **kwargs):
    """The error code, HTTP status and message of a call that must fail."""
    try:
        call(**kwargs)
    except ClientError as e:
        return [
            e.response["Error"]["Code"],
            e.response["ResponseMetadata"]["HTTPStatusCode"],
            e.response["Error"]["Message"],
        ]
    raise AssertionError(f"{call.__name__} succeeded")


def parameters(key_id, algorithm, spec):
    p = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec
    )
    return p, serialization.load_der_public_key(p["PublicKey"])


def import_direct(key_id, material, algorithm="RSAES_OAEP_SHA_256", spec="RSA_4096", **extra):
    """ImportKeyMaterial with fresh parameters, the material under RSA-OAEP."""
    p, public = parameters(key_id, algorithm, spec)
    h = hashes.SHA256 if algorithm.endswith("256") else hashes.SHA1
    args = dict(
        KeyId=key_id,
        ImportToken=p["ImportToken"],
        EncryptedKeyMaterial=public.encrypt(material, oaep(h)),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    args.update(extra)
    return kms.import_key_material(**args)


def new_external(spec="SYMMETRIC_DEFAULT", usage="ENCRYPT_DECRYPT"):
    return kms.create_key(Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)["KeyMetadata"]


# CreateKey: an EXTERNAL symmetric key waits for its material.
meta = kms.create_key(
    Origin="EXTERNAL", KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT",
    Description="boto3 fidelity",
)["KeyMetadata"]
key_id = meta["KeyId"]
out["created"] = {
    "key_id": key_id,
    "arn": meta["Arn"],
    "state": meta["KeyState"],
    "enabled": meta["Enabled"],
    "origin": meta["Origin"],
    "creation_date_type": type(meta["CreationDate"]).__name__,
}

# GetParametersForImport: RSA_4096 with RSAES_OAEP_SHA_256.
p, public = parameters(key_id, "RSAES_OAEP_SHA_256", "RSA_4096")
now = datetime.datetime.now(datetime.timezone.utc)
out["parameters"] = {
    "key_id": p["KeyId"],
    "public_key_bits": public.key_size,
    "valid_hours": round((p["ParametersValidTo"] - now).total_seconds() / 3600),
    "token_bytes": len(p["ImportToken"]),
}
_, public_2048 = parameters(key_id, "RSAES_OAEP_SHA_1", "RSA_2048")
out["parameters"]["public_key_2048_bits"] = public_2048.key_size

# ImportKeyMaterial: 32 random bytes, not expiring.
first = os.urandom(32)
imported = kms.import_key_material(
    KeyId=key_id,
    ImportToken=p["ImportToken"],
    EncryptedKeyMaterial=public.encrypt(first, oaep(hashes.SHA256)),
    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
)
out["first"] = {
    "key_material_id": imported["KeyMaterialId"],
    "sha256": sha256(first),
    "request_id": imported["ResponseMetadata"]["RequestId"],
}
described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
out["after_import"] = {
    "state": described["KeyState"],
    "enabled": described["Enabled"],
    "current": described.get("CurrentKeyMaterialId"),
    "expiration_model": described.get("ExpirationModel"),
}

# The same bytes again, with fresh parameters (RSA_2048, RSAES_OAEP_SHA_1): accepted, same id.
again = import_direct(key_id, first, "RSAES_OAEP_SHA_1", "RSA_2048")
out["reimport_same"] = again["KeyMaterialId"]

# Other bytes: not this key's material.
out["reimport_other"] = error(import_direct, key_id=key_id, material=os.urandom(32))

# New material for a rotation, with a description.
second = os.urandom(32)
new = import_direct(
    key_id, second, ImportType="NEW_KEY_MATERIAL", KeyMaterialDescription="rotation 2"
)
out["second"] = {"key_material_id": new["KeyMaterialId"], "sha256": sha256(second)}
pending = kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
out["before_rotation"] = [
    [r["KeyMaterialId"], r["KeyMaterialState"], r["ImportState"], r.get("KeyMaterialDescription")]
    for r in pending["Rotations"]
]
out["rotations_only_before"] = len(kms.list_key_rotations(KeyId=key_id)["Rotations"])

# RotateKeyOnDemand: the new material becomes current.
out["rotate"] = kms.rotate_key_on_demand(KeyId=key_id)["KeyId"]
after = kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
out["after_rotation"] = [[r["KeyMaterialId"], r["KeyMaterialState"]] for r in after["Rotations"]]
rotated = kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ROTATIONS_ONLY")["Rotations"]
out["rotations_only_after"] = [
    [r["KeyMaterialId"], r["RotationType"], type(r["RotationDate"]).__name__] for r in rotated
]
out["current_after_rotation"] = kms.describe_key(KeyId=meta["Arn"])["KeyMetadata"][
    "CurrentKeyMaterialId"
]
pages = kms.get_paginator("list_key_rotations").paginate(
    KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL", PaginationConfig={"PageSize": 1}
)
out["paged"] = [r["KeyMaterialId"] for page in pages for r in page["Rotations"]]

# An RSA_3072 signing key: PKCS#8 under RSA_AES_KEY_WRAP_SHA_256.
signing = new_external("RSA_3072", "SIGN_VERIFY")
p, public = parameters(signing["KeyId"], "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
pkcs8 = private.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
transport = os.urandom(32)
blob = public.encrypt(transport, oaep(hashes.SHA256)) + aes_key_wrap_with_padding(transport, pkcs8)
rsa_import = kms.import_key_material(
    KeyId=signing["KeyId"],
    ImportToken=p["ImportToken"],
    EncryptedKeyMaterial=blob,
    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
)
rsa_meta = kms.describe_key(KeyId=signing["KeyId"])["KeyMetadata"]
out["rsa"] = {
    "key_id": signing["KeyId"],
    "key_material_id": rsa_import["KeyMaterialId"],
    "sha256": sha256(pkcs8),
    "state": rsa_meta["KeyState"],
    "key_spec": rsa_meta["KeySpec"],
    "signing_algorithms": rsa_meta.get("SigningAlgorithms"),
    # GetPublicKey: the imported key's public half, as DER SubjectPublicKeyInfo
    "public_key_matches": kms.get_public_key(KeyId=signing["KeyId"])["PublicKey"]
    == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
}
out["public_key_of_symmetric"] = error(kms.get_public_key, KeyId=key_id)
out["rsa_direct_oaep"] = error(
    kms.get_parameters_for_import,
    KeyId=signing["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_4096",
)

# A token for one key used for another.
other = new_external()
p, public = parameters(other["KeyId"], "RSAES_OAEP_SHA_256", "RSA_2048")
out["token_for_another_key"] = error(
    kms.import_key_material,
    KeyId=key_id,
    ImportToken=p["ImportToken"],
    EncryptedKeyMaterial=public.encrypt(first, oaep(hashes.SHA256)),
    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
)

# KEY_MATERIAL_EXPIRES (the default) without ValidTo; then with it.
out["expires_without_valid_to"] = error(
    kms.import_key_material,
    KeyId=other["KeyId"],
    ImportToken=p["ImportToken"],
    EncryptedKeyMaterial=public.encrypt(os.urandom(32), oaep(hashes.SHA256)),
)
valid_to = now + datetime.timedelta(days=30)
p, public = parameters(other["KeyId"], "RSAES_OAEP_SHA_256", "RSA_2048")
kms.import_key_material(
    KeyId=other["KeyId"],
    ImportToken=p["ImportToken"],
    EncryptedKeyMaterial=public.encrypt(os.urandom(32), oaep(hashes.SHA256)),
    ExpirationModel="KEY_MATERIAL_EXPIRES",
    ValidTo=valid_to,
)
expiring = kms.describe_key(KeyId=other["KeyId"])["KeyMetadata"]
out["expiring"] = {
    "expiration_model": expiring["ExpirationModel"],
    "valid_to_days": round((expiring["ValidTo"] - now).total_seconds() / 86400),
}

# Refusals the service makes, not the SDK.
out["pkcs1_refused"] = error(
    kms.get_parameters_for_import,
    KeyId=key_id, WrappingAlgorithm="RSAES_PKCS1_V1_5", WrappingKeySpec="RSA_2048",
)
out["unknown_key"] = error(kms.describe_key, KeyId="1234abcd-12ab-34cd-56ef-1234567890ab")

# A wrong secret key: the signature does not verify.
creds = session.get_credentials()
out["wrong_secret"] = error(
    client(aws_access_key_id=creds.access_key, aws_secret_access_key="x" * 40).describe_key,
    KeyId=key_id,
)
out["unknown_access_key"] = error(
    client(aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="x" * 40).describe_key,
    KeyId=key_id,
)

print(json.dumps(out))

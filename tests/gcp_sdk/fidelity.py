"""Drives gcp-kms-emulator with Google's own Python SDK: google-cloud-kms's
KeyManagementServiceClient over its REST transport (enums as numbers with
$alt=json;enum-encoding=int, its pagers, its exception types), google-auth's
service-account credentials (self-signed JWTs, as always_use_jwt_access makes them) and its
Compute Engine credentials against the emulator's metadata server. The wraps are built
with pyca/cryptography as Google documents them (RSA-OAEP-SHA256 of an AES-256 key, then
AES-KWP of the material), not with anything of the emulator's or hsm-bridge's. Run by
tests/gcp_emulator.rs in a throw-away virtualenv; prints one JSON object of what the SDK
saw (key material only as SHA-256).

Environment (nothing on the command line):
  EMU_ENDPOINT     https://localhost:PORT of the emulator (also its control API)
  EMU_CA           the CA file (REQUESTS_CA_BUNDLE is set to it too)
  EMU_SA_FILE      the service-account key file
  EMU_KEY_RING     the key ring made at start
  EMU_PROJECT      its project
  GCE_METADATA_HOST  127.0.0.1:PORT of the emulator's metadata server
"""
import hashlib
import json
import os
import time

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
import google.auth.credentials
from google.auth import compute_engine
from google.cloud import kms_v1
from google.oauth2 import service_account

endpoint = os.environ["EMU_ENDPOINT"]
ca = os.environ["EMU_CA"]
ring = os.environ["EMU_KEY_RING"]
project = os.environ["EMU_PROJECT"]
out = {}

ProtectionLevel = kms_v1.ProtectionLevel
ImportMethod = kms_v1.ImportJob.ImportMethod
Algorithm = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
Purpose = kms_v1.CryptoKey.CryptoKeyPurpose


def client(creds):
    return kms_v1.KeyManagementServiceClient(
        transport="rest",
        credentials=creds,
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def control(path, body):
    r = requests.post(f"{endpoint}/_emulator/{path}", json=body, verify=ca, timeout=30)
    r.raise_for_status()


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def refusal(fn):
    try:
        fn()
    except exceptions.GoogleAPICallError as e:
        try:
            status = e.response.json()["error"]["status"]
        except Exception:  # not a JSON error body
            status = None
        return [type(e).__name__, e.code, str(e.message), status]
    return None


def wait_job(c, name, want=kms_v1.ImportJob.ImportJobState.ACTIVE):
    for _ in range(100):
        job = c.get_import_job(name=name)
        if job.state == want:
            return job
        time.sleep(0.1)
    raise AssertionError(f"{name} never became {want.name}: {job.state.name}")


def wait_version(c, name):
    for _ in range(100):
        v = c.get_crypto_key_version(name=name)
        if v.state != State.PENDING_IMPORT:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{name} stayed PENDING_IMPORT")


def wrap(job, material):
    """Google's documented wrap: RSA-OAEP(SHA-256, MGF1-SHA-256) of a fresh AES-256 key,
    then AES-KWP (RFC 5649) of the material under it."""
    pub = serialization.load_pem_public_key(job.public_key.pem.encode())
    kek = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return pub.encrypt(kek, oaep) + aes_key_wrap_with_padding(kek, material)


def version_dict(v):
    return {
        "name": v.name,
        "state": v.state.name,
        "algorithm": v.algorithm.name,
        "protection_level": v.protection_level.name,
        "import_job": v.import_job,
        "import_failure_reason": v.import_failure_reason,
        "has_import_time": v.import_time is not None and v.import_time.timestamp() > 0,
    }


creds = service_account.Credentials.from_service_account_file(os.environ["EMU_SA_FILE"])
c = client(creds)

# key rings
made = c.create_key_ring(
    request={"parent": f"projects/{project}/locations/global", "key_ring_id": "sdk-ring", "key_ring": {}}
)
out["key_ring_created"] = made.name
out["key_ring"] = c.get_key_ring(name=ring).name
out["key_ring_duplicate"] = refusal(
    lambda: c.create_key_ring(
        request={"parent": f"projects/{project}/locations/global", "key_ring_id": "sdk-ring", "key_ring": {}}
    )
)

# an HSM import job, polled to ACTIVE
job = c.create_import_job(
    request={
        "parent": ring,
        "import_job_id": "job-hsm",
        "import_job": {
            "import_method": ImportMethod.RSA_OAEP_4096_SHA256_AES_256,
            "protection_level": ProtectionLevel.HSM,
        },
    }
)
out["job_created"] = {"name": job.name, "state": job.state.name, "has_pem": bool(job.public_key.pem)}
job = wait_job(c, job.name)
job_pub = serialization.load_pem_public_key(job.public_key.pem.encode())
out["job"] = {
    "name": job.name,
    "state": job.state.name,
    "import_method": job.import_method.name,
    "protection_level": job.protection_level.name,
    "key_bits": job_pub.key_size,
    "lifetime_s": round(job.expire_time.timestamp() - job.create_time.timestamp()),
}
out["jobs_listed"] = [j.name for j in c.list_import_jobs(request={"parent": ring})]

# import-only keys
def make_key(key_id, purpose, algorithm, protection=ProtectionLevel.HSM):
    return c.create_crypto_key(
        request={
            "parent": ring,
            "crypto_key_id": key_id,
            "crypto_key": {
                "purpose": purpose,
                "version_template": {"protection_level": protection, "algorithm": algorithm},
                "import_only": True,
                "labels": {"source": "hsm-bridge"},
            },
            "skip_initial_version_creation": True,
        }
    )


sym = make_key("sym", Purpose.ENCRYPT_DECRYPT, Algorithm.GOOGLE_SYMMETRIC_ENCRYPTION)
rsak = make_key("rsa", Purpose.ASYMMETRIC_SIGN, Algorithm.RSA_SIGN_PKCS1_3072_SHA256)
out["sym_key"] = {
    "name": sym.name,
    "purpose": sym.purpose.name,
    "import_only": sym.import_only,
    "labels": dict(sym.labels),
    "template": [sym.version_template.protection_level.name, sym.version_template.algorithm.name],
}
out["import_only_without_skip"] = refusal(
    lambda: c.create_crypto_key(
        request={
            "parent": ring,
            "crypto_key_id": "bad",
            "crypto_key": {"purpose": Purpose.ENCRYPT_DECRYPT, "import_only": True},
        }
    )
)

# imports: three AES-256 keys into sym, an RSA-3072 key into rsa
aes_keys = [bytes.fromhex(os.environ["EMU_AES_HEX"])] + [os.urandom(32) for _ in range(2)]
sym_versions = []
for k in aes_keys:
    v = c.import_crypto_key_version(
        request={
            "parent": sym.name,
            "algorithm": Algorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
            "import_job": job.name,
            "wrapped_key": wrap(job, k),
        }
    )
    out.setdefault("sym_first_answer", version_dict(v))
    sym_versions.append(version_dict(wait_version(c, v.name)))
out["sym_versions"] = sym_versions
out["sym_sha256"] = [sha256(k) for k in aes_keys]
out["sym_primary"] = c.get_crypto_key(name=sym.name).primary.name

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
der = rsa_key.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
v = c.import_crypto_key_version(
    request={
        "parent": rsak.name,
        "algorithm": Algorithm.RSA_SIGN_PKCS1_3072_SHA256,
        "import_job": job.name,
        "wrapped_key": wrap(job, der),
    }
)
rv = wait_version(c, v.name)
out["rsa_version"] = version_dict(rv)
out["rsa_sha256"] = sha256(der)
pk = c.get_public_key(name=rv.name)
got = serialization.load_pem_public_key(pk.pem.encode())
out["public_key_matches"] = got.public_numbers() == rsa_key.public_key().public_numbers()
out["public_key"] = {"name": pk.name, "algorithm": pk.algorithm.name, "protection_level": pk.protection_level.name,
                     "crc_present": pk.pem_crc32c is not None}
out["public_key_of_symmetric"] = refusal(lambda: c.get_public_key(name=sym_versions[0]["name"]))

# listing with paging, and a filter
pager = c.list_crypto_key_versions(request={"parent": sym.name, "page_size": 2})
pages = [[v.name for v in page.crypto_key_versions] for page in pager.pages]
out["list_pages"] = pages
out["list_total"] = c.list_crypto_key_versions(request={"parent": sym.name, "page_size": 2})._response.total_size
out["list_filtered"] = [
    v.name
    for v in c.list_crypto_key_versions(request={"parent": sym.name, "filter": f'importJob="{job.name}" AND state=ENABLED'})
]

# refusals: a job not ACTIVE, a protection level mismatch, material of the wrong size
control("job-faults", {"job_stays_pending": True})
pending = c.create_import_job(
    request={
        "parent": ring,
        "import_job_id": "job-pending",
        "import_job": {"import_method": ImportMethod.RSA_OAEP_4096_SHA256_AES_256, "protection_level": ProtectionLevel.HSM},
    }
)
time.sleep(0.5)
out["pending_state"] = c.get_import_job(name=pending.name).state.name
out["job_not_active"] = refusal(
    lambda: c.import_crypto_key_version(
        request={"parent": sym.name, "algorithm": Algorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
                 "import_job": pending.name, "wrapped_key": wrap(job, os.urandom(32))}
    )
)
soft = c.create_import_job(
    request={
        "parent": ring,
        "import_job_id": "job-soft",
        "import_job": {"import_method": ImportMethod.RSA_OAEP_3072_SHA256_AES_256, "protection_level": ProtectionLevel.SOFTWARE},
    }
)
soft = wait_job(c, soft.name)
out["protection_mismatch"] = refusal(
    lambda: c.import_crypto_key_version(
        request={"parent": sym.name, "algorithm": Algorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
                 "import_job": soft.name, "wrapped_key": wrap(soft, os.urandom(32))}
    )
)
out["purpose_mismatch"] = refusal(
    lambda: c.import_crypto_key_version(
        request={"parent": sym.name, "algorithm": Algorithm.RSA_SIGN_PKCS1_3072_SHA256,
                 "import_job": job.name, "wrapped_key": wrap(job, der)}
    )
)
v = c.import_crypto_key_version(
    request={"parent": sym.name, "algorithm": Algorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
             "import_job": job.name, "wrapped_key": wrap(job, os.urandom(16))}
)
out["wrong_size"] = version_dict(wait_version(c, v.name))

# tokens: none, a bogus one
class FixedToken(google.auth.credentials.Credentials):
    """Sends `token` as it is (no Authorization header for None), and "refreshes" to the
    same: the 401 then reaches the caller as the SDK's exception."""

    def __init__(self, token):
        super().__init__()
        self._fixed = token
        self.token = token

    def refresh(self, request):
        self.token = self._fixed

    def apply(self, headers, token=None):
        if self._fixed is not None:
            headers["authorization"] = "Bearer " + self._fixed


out["no_token"] = refusal(lambda: client(FixedToken(None)).get_key_ring(name=ring))
out["bad_token"] = refusal(lambda: client(FixedToken("ya29.bogus")).get_key_ring(name=ring))

# Compute Engine credentials from the metadata server
gce = compute_engine.Credentials()
out["gce_key_ring"] = client(gce).get_key_ring(name=ring).name
out["gce_email"] = gce.service_account_email

print(json.dumps(out))

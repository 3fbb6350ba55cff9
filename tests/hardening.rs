//! Where secrets live: OpenSSL's secure heap holds the OCI API key's private numbers once the
//! binary has started it (as `hsm-bridge` does first thing). Its own test process, since the
//! secure heap is process-wide.

use hsm_bridge::hardening::{openssl_secure_heap, openssl_secure_used};
use hsm_bridge::oci::RequestSigner;

#[test]
fn the_oci_signing_key_lives_in_openssls_secure_heap() {
    // Root (CI) may always lock; elsewhere RLIMIT_MEMLOCK decides. Either way the heap exists.
    openssl_secure_heap().expect("OpenSSL's secure heap starts");
    // A PEM made by the openssl command line, so this process parses it fresh.
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("api_key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(&pem_path).unwrap();

    let before = openssl_secure_used();
    let signer = RequestSigner::from_pem(
        "ocid1.tenancy.oc1..t",
        "ocid1.user.oc1..u",
        "aa:bb",
        &pem,
        None,
    )
    .expect("the key parses");
    let holding = openssl_secure_used();
    eprintln!("secure heap: {before} -> {holding} bytes");
    // d, p, q, dP, dQ and qInv of RSA-2048: at least 5 * 128 + 256 bytes.
    assert!(
        holding >= before + 896,
        "the private numbers are not in the secure heap: {before} -> {holding} bytes"
    );
    drop(signer);
    assert_eq!(
        openssl_secure_used(),
        before,
        "freed (and cleared) with the key"
    );
}

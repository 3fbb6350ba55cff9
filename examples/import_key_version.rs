//! One gRPC call that adds a version to an OCI key from a token key, as a caller would make
//! it: mutual TLS with the dev client certificate, `ImportKeyVersion`, wait for ENABLED.
//!
//! ```text
//! cargo run --release --example import_key_version -- LABEL KEY_OCID ENDPOINT [TIMES]
//! ```
//!
//! Talks to the daemon at `HSM_BRIDGE_ADDR` (default 127.0.0.1:50051) with the certificates
//! softhsm-setup.sh makes in `.softhsm/tls/`. Prints each answer and how long it took.

use std::time::{Duration, Instant};

use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use hsm_bridge::proto::{ImportKeyVersionRequest, KeyRef, OciTarget, WrappingAlgorithm, key_ref};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, key_ocid, endpoint, rest @ ..] = args.as_slice() else {
        return Err("usage: import_key_version LABEL KEY_OCID ENDPOINT [TIMES]".into());
    };
    let times: u32 = rest.first().map_or(Ok(1), |t| t.parse())?;
    let addr = std::env::var("HSM_BRIDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(".softhsm/tls/ca.pem")?))
        .identity(Identity::from_pem(
            std::fs::read(".softhsm/tls/cckm.pem")?,
            std::fs::read(".softhsm/tls/cckm.key")?,
        ))
        .domain_name("localhost");
    let daemon = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?;
    // The daemon may still be starting (as in the README, where it starts in the background).
    let started = Instant::now();
    let channel = loop {
        match daemon.connect().await {
            Ok(c) => break c,
            Err(e) if started.elapsed() > Duration::from_secs(20) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut client = KeySourceBridgeClient::new(channel);

    for _ in 0..times {
        let mut req = tonic::Request::new(ImportKeyVersionRequest {
            source_key: Some(KeyRef {
                key: Some(key_ref::Key::Label(label.clone())),
            }),
            oci_key_id: key_ocid.clone(),
            oci: Some(OciTarget {
                connection: "default".into(),
                management_endpoint: endpoint.clone(),
            }),
            algorithm: WrappingAlgorithm::RsaOaepAesSha256 as i32,
            idempotency_key: String::new(),
            wait_for_enabled: true,
        });
        req.set_timeout(Duration::from_secs(60));
        let started = Instant::now();
        let version = client
            .import_key_version(req)
            .await?
            .into_inner()
            .key_version
            .ok_or("no key_version in the answer")?;
        println!(
            "{} {} {} ({:.1} ms)",
            version.key_id,
            version.version_id,
            version.lifecycle_state,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

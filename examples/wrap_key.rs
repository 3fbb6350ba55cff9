//! One `WrapKey` call over mutual TLS, as a caller writes it: the daemon wraps a token key
//! for a wrapping public key and answers OCI's `keyMaterial` (before base64).
//!
//! ```text
//! cargo run --release --example wrap_key -- LABEL [WRAPPING_PUBLIC_KEY_PEM] [OUT]
//! ```
//!
//! Talks to the daemon at `HSM_BRIDGE_ADDR` (default 127.0.0.1:50051) with the certificates
//! softhsm-setup.sh makes in `.softhsm/tls/`; the wrapping key defaults to the dev one that
//! the shipped config pins (`.softhsm/dev-wrapping-key.pub.pem`). Prints the answer's shape,
//! mode and length, and writes the bytes to OUT if given.

use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use hsm_bridge::proto::{KeyRef, WrapKeyRequest, WrappingAlgorithm, key_ref};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(label) = args.first() else {
        return Err("usage: wrap_key LABEL [WRAPPING_PUBLIC_KEY_PEM] [OUT]".into());
    };
    let wrapping_pem = args
        .get(1)
        .map_or(".softhsm/dev-wrapping-key.pub.pem", String::as_str);
    let addr = std::env::var("HSM_BRIDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(".softhsm/tls/ca.pem")?))
        .identity(Identity::from_pem(
            std::fs::read(".softhsm/tls/cckm.pem")?,
            std::fs::read(".softhsm/tls/cckm.key")?,
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let wrapped = KeySourceBridgeClient::new(channel)
        .wrap_key(WrapKeyRequest {
            source_key: Some(KeyRef {
                key: Some(key_ref::Key::Label(label.clone())),
            }),
            wrapping_public_key_pem: std::fs::read_to_string(wrapping_pem)?,
            algorithm: WrappingAlgorithm::RsaOaepAesSha256 as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let shape = wrapped.shape.unwrap_or_default();
    println!(
        "{label}: {} bytes of RSA_OAEP_AES_SHA256 material for a {}-{} key, {} mode, wrapping key sha256 {}",
        wrapped.wrapped_key_material.len(),
        shape.algorithm,
        shape.length * 8,
        wrapped.mode,
        wrapped.wrapping_key_sha256
    );
    if let Some(out) = args.get(2) {
        std::fs::write(out, &wrapped.wrapped_key_material)?;
    }
    Ok(())
}

//! RSA-OAEP decryption for the emulators' unwraps, written here against the openssl crate
//! rather than taken from hsm-bridge's own `wrap::soft`: what the daemon wraps is opened by
//! code other than the code that wrapped it.

use hsm_bridge::wrap::soft::OaepHash;
use openssl::md::Md;
use openssl::pkey::{HasPrivate, PKeyRef};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use zeroize::Zeroizing;

/// RSA-OAEP decryption with `hash` as the label hash and the MGF1 hash (empty label).
/// Fails, with overwhelming probability, for a ciphertext made with other hashes.
pub(crate) fn oaep_decrypt<T: HasPrivate>(
    key: &PKeyRef<T>,
    hash: OaepHash,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let md = match hash {
        OaepHash::Sha1 => Md::sha1(),
        OaepHash::Sha256 => Md::sha256(),
    };
    let mut ctx = PkeyCtx::new(key)?;
    ctx.decrypt_init()?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(md)?;
    ctx.set_rsa_mgf1_md(md)?;
    let mut out = Zeroizing::new(vec![0u8; key.size()]);
    let n = ctx.decrypt(data, Some(&mut out[..]))?;
    out.truncate(n);
    Ok(out)
}

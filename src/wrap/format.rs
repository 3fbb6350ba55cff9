//! Each cloud's "bring your own key" format, as data: the name the cloud gives it, the layout
//! of the bytes (a one-time AES-256 key under RSA-OAEP followed by RFC 5649 of the key under
//! it, or the key itself under RSA-OAEP), the OAEP hash (MGF1 of the same hash, empty label),
//! the wrapping-key size a method fixes, the envelope around the bytes, and which keys the
//! cloud takes that way. The HSM work is the same for every cloud; only this table differs
//! (docs/ARCHITECTURE.md, "Formats").
//!
//! Every rule here is checked before the HSM does any work.

use serde::Serialize;

use super::WrapError;
use super::envelope::{Algorithm, KeyAlgorithm, KeyShape};
use super::soft::OaepHash;

/// A cloud that takes keys in one of the formats below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cloud {
    Oci,
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    /// The prefix of its formats' names: "oci", "aws", "gcp", "azure".
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cloud::Oci => "oci",
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }
}

/// How the wrapped bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// RSA-OAEP of a one-time AES-256 key K, then RFC 5649 of the target under K
    /// (`CKM_RSA_AES_KEY_WRAP`): any key the cloud takes.
    Hybrid,
    /// RSA-OAEP of the target itself: AES keys only, and only inside the token (the key
    /// itself must never reach the host).
    Direct,
}

/// What the wrapped bytes are handed over in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Envelope {
    /// The bytes themselves (the cloud's API base64-encodes them).
    Raw,
    /// Azure's `.byok` JSON file, which names the key-exchange key.
    AzureByok,
}

/// Which key shapes a format carries, and what to say of the others.
#[derive(Debug)]
struct Takes {
    /// AES key lengths taken, in bytes.
    aes: &'static [usize],
    /// RSA modulus lengths taken, in bytes.
    rsa: &'static [usize],
    /// Why an AES key of another length (or any, if `aes` is empty) is refused.
    aes_refused: &'static str,
    /// Why an RSA key of another size (or any, if `rsa` is empty) is refused.
    rsa_refused: &'static str,
}

/// One cloud's format.
#[derive(Debug)]
pub struct Format {
    /// `CLOUD:NAME`, with the cloud's own algorithm name.
    pub name: &'static str,
    pub(crate) cloud: Cloud,
    pub layout: Layout,
    /// The OAEP hash, for both the label hash and MGF1.
    pub hash: OaepHash,
    /// The wrapping key's size in bits, where the method fixes it.
    pub wrapping_bits: Option<u32>,
    pub(crate) envelope: Envelope,
    takes: Takes,
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Format {}

impl Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

const AES_ALL: &[usize] = &[16, 24, 32];
const RSA_ALL: &[usize] = &[256, 384, 512];
const SIZES: &str = "AES-128/192/256 and RSA-2048/3072/4096";

const OCI_HYBRID: Takes = Takes {
    aes: AES_ALL,
    rsa: RSA_ALL,
    aes_refused: "OCI imports AES-128/192/256 and RSA-2048/3072/4096",
    rsa_refused: "OCI imports AES-128/192/256 and RSA-2048/3072/4096",
};
const OCI_DIRECT: Takes = Takes {
    aes: AES_ALL,
    rsa: &[],
    aes_refused: "OCI imports AES-128/192/256 and RSA-2048/3072/4096",
    rsa_refused: "RSA_OAEP_SHA256 carries only AES keys; wrap RSA keys with RSA_OAEP_AES_SHA256",
};
const AWS_HYBRID: Takes = Takes {
    aes: &[],
    rsa: RSA_ALL,
    aes_refused: "AWS KMS takes AES keys only by direct OAEP: use aws:RSAES_OAEP_SHA_256 or aws:RSAES_OAEP_SHA_1",
    rsa_refused: "AWS KMS takes RSA-2048/3072/4096",
};
const AWS_DIRECT: Takes = Takes {
    aes: &[32],
    rsa: &[],
    aes_refused: "AWS KMS takes AES only as 256-bit keys (SYMMETRIC_DEFAULT)",
    rsa_refused: "AWS KMS takes RSA keys only by RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1",
};
const GCP_HYBRID: Takes = Takes {
    aes: &[16, 32],
    rsa: RSA_ALL,
    aes_refused: "Google Cloud KMS takes AES-128 and AES-256 keys",
    rsa_refused: "Google Cloud KMS takes RSA-2048/3072/4096",
};
const GCP_DIRECT: Takes = Takes {
    aes: &[16, 32],
    rsa: &[],
    aes_refused: "Google Cloud KMS takes AES-128 and AES-256 keys",
    rsa_refused: "a direct RSA-OAEP import method never carries RSA keys; use an _AES_256 method",
};
const AZURE: Takes = Takes {
    aes: AES_ALL,
    rsa: RSA_ALL,
    aes_refused: "Azure takes oct-HSM keys of 128, 192 or 256 bits (Managed HSM only)",
    rsa_refused: "Azure takes RSA-HSM keys of 2048, 3072 or 4096 bits",
};

const fn format(
    name: &'static str,
    cloud: Cloud,
    layout: Layout,
    hash: OaepHash,
    wrapping_bits: Option<u32>,
    takes: Takes,
) -> Format {
    Format {
        name,
        cloud,
        layout,
        hash,
        wrapping_bits,
        envelope: Envelope::Raw,
        takes,
    }
}

use Cloud::{Aws, Gcp, Oci};
use Layout::{Direct, Hybrid};
use OaepHash::{Sha1, Sha256};

/// Every format, in the order `--format` lists them.
pub static FORMATS: [Format; 13] = [
    format(
        "oci:RSA_OAEP_AES_SHA256",
        Oci,
        Hybrid,
        Sha256,
        None,
        OCI_HYBRID,
    ),
    format("oci:RSA_OAEP_SHA256", Oci, Direct, Sha256, None, OCI_DIRECT),
    format(
        "aws:RSA_AES_KEY_WRAP_SHA_256",
        Aws,
        Hybrid,
        Sha256,
        None,
        AWS_HYBRID,
    ),
    format(
        "aws:RSA_AES_KEY_WRAP_SHA_1",
        Aws,
        Hybrid,
        Sha1,
        None,
        AWS_HYBRID,
    ),
    format(
        "aws:RSAES_OAEP_SHA_256",
        Aws,
        Direct,
        Sha256,
        None,
        AWS_DIRECT,
    ),
    format("aws:RSAES_OAEP_SHA_1", Aws, Direct, Sha1, None, AWS_DIRECT),
    format(
        "gcp:RSA_OAEP_3072_SHA256_AES_256",
        Gcp,
        Hybrid,
        Sha256,
        Some(3072),
        GCP_HYBRID,
    ),
    format(
        "gcp:RSA_OAEP_4096_SHA256_AES_256",
        Gcp,
        Hybrid,
        Sha256,
        Some(4096),
        GCP_HYBRID,
    ),
    format(
        "gcp:RSA_OAEP_3072_SHA1_AES_256",
        Gcp,
        Hybrid,
        Sha1,
        Some(3072),
        GCP_HYBRID,
    ),
    format(
        "gcp:RSA_OAEP_4096_SHA1_AES_256",
        Gcp,
        Hybrid,
        Sha1,
        Some(4096),
        GCP_HYBRID,
    ),
    format(
        "gcp:RSA_OAEP_3072_SHA256",
        Gcp,
        Direct,
        Sha256,
        Some(3072),
        GCP_DIRECT,
    ),
    format(
        "gcp:RSA_OAEP_4096_SHA256",
        Gcp,
        Direct,
        Sha256,
        Some(4096),
        GCP_DIRECT,
    ),
    Format {
        name: "azure:byok",
        cloud: Cloud::Azure,
        layout: Hybrid,
        hash: Sha1,
        wrapping_bits: None,
        envelope: Envelope::AzureByok,
        takes: AZURE,
    },
];

/// What the `.byok` header says the ciphertext is.
const BYOK_ENC: &str = "CKM_RSA_AES_KEY_WRAP";

impl Format {
    /// The format `name` names, or an error that lists every known name.
    pub(crate) fn parse(name: &str) -> Result<&'static Format, WrapError> {
        FORMATS
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| WrapError::UnknownFormat(name.to_string()))
    }

    /// Every name, comma-separated, for messages and `--help`.
    pub(crate) fn names() -> String {
        FORMATS
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// OCI's format for its `wrappingAlgorithm`.
    pub fn oci(alg: Algorithm) -> &'static Format {
        match alg {
            Algorithm::RsaOaepAesSha256 => &FORMATS[0],
            Algorithm::RsaOaepSha256 => &FORMATS[1],
        }
    }

    /// The format a request names: `format` when given (then `algorithm`, OCI's name, must
    /// be absent or name the same format), else OCI's format for `algorithm`, else OCI's
    /// default, `oci:RSA_OAEP_AES_SHA256`.
    pub(crate) fn resolve(
        format: Option<&str>,
        algorithm: Option<Algorithm>,
    ) -> Result<&'static Format, WrapError> {
        let by_alg = Format::oci(algorithm.unwrap_or(Algorithm::RsaOaepAesSha256));
        let Some(name) = format else {
            return Ok(by_alg);
        };
        let f = Format::parse(name)?;
        match algorithm {
            Some(_) if f != by_alg => Err(WrapError::Format(format!(
                "the algorithm {} and the format {f} disagree: give one of them",
                by_alg.algorithm()
            ))),
            _ => Ok(f),
        }
    }

    /// The key-exchange key for this format from `id`: required for `azure:byok` (and
    /// checked), refused for every other format.
    pub(crate) fn kek(&self, id: Option<&str>) -> Result<Option<AzureKek>, WrapError> {
        match (self.envelope, id) {
            (Envelope::AzureByok, None) => Err(WrapError::Format(format!(
                "{self} needs the key-exchange key's versioned id (--azure-kek-id, or azure_kek_id over gRPC)"
            ))),
            (Envelope::AzureByok, Some(id)) => {
                AzureKek::parse(id).map(Some).map_err(WrapError::Format)
            }
            (Envelope::Raw, None) => Ok(None),
            (Envelope::Raw, Some(_)) => Err(WrapError::Format(format!(
                "a key-exchange key id is for azure:byok only, not {self}"
            ))),
        }
    }

    /// The format that takes every key any format takes (OCI's hybrid): what "exportable"
    /// means where no format is named, as in key listings.
    pub(crate) fn widest() -> &'static Format {
        &FORMATS[0]
    }

    /// A hybrid format with `hash` and no envelope, for the self-test's trials.
    pub fn hybrid(hash: OaepHash) -> &'static Format {
        match hash {
            OaepHash::Sha256 => &FORMATS[0],
            OaepHash::Sha1 => &FORMATS[3],
        }
    }

    /// OCI's `wrappingAlgorithm` for this format, if it is one of OCI's.
    pub(crate) fn oci_algorithm(&self) -> Option<Algorithm> {
        match (self.cloud, self.layout) {
            (Cloud::Oci, Layout::Hybrid) => Some(Algorithm::RsaOaepAesSha256),
            (Cloud::Oci, Layout::Direct) => Some(Algorithm::RsaOaepSha256),
            _ => None,
        }
    }

    /// The cloud's own name for it (after `CLOUD:`).
    pub(crate) fn algorithm(&self) -> &'static str {
        self.name
            .split_once(':')
            .map_or(self.name, |(_, algorithm)| algorithm)
    }

    /// Whether the cloud takes a key of `shape` in this format; the reason if not.
    pub(crate) fn takes(&self, shape: KeyShape) -> Result<(), String> {
        let (taken, why) = match shape.algorithm {
            KeyAlgorithm::Aes => (self.takes.aes, self.takes.aes_refused),
            KeyAlgorithm::Rsa => (self.takes.rsa, self.takes.rsa_refused),
        };
        if taken.contains(&shape.length) {
            Ok(())
        } else {
            Err(format!(
                "{} does not take {}: {why}",
                self.name,
                shape.describe()
            ))
        }
    }

    /// The message for a key that is neither AES nor RSA (`what` describes it).
    pub(crate) fn takes_no(&self, what: &str) -> String {
        match self.cloud {
            Cloud::Oci => format!("it is {what}; OCI imports only AES and RSA keys"),
            _ => format!(
                "it is {what}; hsm-bridge exports {SIZES} keys only, and {} takes it in no other way here",
                self.name
            ),
        }
    }

    /// What to use instead when this direct format cannot run (the token does not do OAEP
    /// with its hash, or the key is not AES).
    pub(crate) fn instead(&self) -> String {
        match (self.cloud, self.hash) {
            (Cloud::Oci, _) => "use RSA_OAEP_AES_SHA256".into(),
            (Cloud::Aws, OaepHash::Sha256) => {
                "AWS KMS takes AES keys only by direct OAEP; try aws:RSAES_OAEP_SHA_1 (hsm-bridge selftest lists the formats this token can do)".into()
            }
            (Cloud::Aws, OaepHash::Sha1) => {
                "AWS KMS takes AES keys only by direct OAEP; try aws:RSAES_OAEP_SHA_256 (hsm-bridge selftest lists the formats this token can do)".into()
            }
            (Cloud::Gcp, _) => format!(
                "use gcp:RSA_OAEP_{}_SHA256_AES_256",
                self.wrapping_bits.unwrap_or(3072)
            ),
            (Cloud::Azure, _) => "use azure:byok".into(),
        }
    }

    /// Whether a wrapping key of `bits` fits the method; the reason if not.
    pub(crate) fn fits_wrapping_key(&self, bits: u32) -> Result<(), String> {
        match self.wrapping_bits {
            Some(want) if want != bits => Err(format!(
                "{} wraps for an RSA-{want} key, and this wrapping key is RSA-{bits}",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// The bytes the cloud's API takes (before its own base64), from the token's output.
    /// For `azure:byok`, the `.byok` file naming `kek` (checked by [`AzureKek::parse`]);
    /// `generator` names this tool and the token.
    pub(crate) fn seal(
        &self,
        material: Vec<u8>,
        kek: Option<&AzureKek>,
        generator: &str,
    ) -> Result<Vec<u8>, WrapError> {
        match self.envelope {
            Envelope::Raw => Ok(material),
            Envelope::AzureByok => {
                let kek = kek.ok_or_else(|| {
                    WrapError::Format(format!("{} needs the key-exchange key's id", self.name))
                })?;
                Ok(byok(&material, kek, generator))
            }
        }
    }
}

/// The `.byok` file: `schema_version`, `header` {`kid`, `alg`, `enc`}, `ciphertext`
/// (base64url, unpadded), `generator`, in that order.
fn byok(ciphertext: &[u8], kek: &AzureKek, generator: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Header<'a> {
        kid: &'a str,
        alg: &'static str,
        enc: &'static str,
    }
    #[derive(Serialize)]
    struct Byok<'a> {
        schema_version: &'static str,
        header: Header<'a>,
        ciphertext: String,
        generator: &'a str,
    }
    let blob = Byok {
        schema_version: "1.0.0",
        header: Header {
            kid: &kek.0,
            alg: "dir",
            enc: BYOK_ENC,
        },
        ciphertext: base64url(ciphertext),
        generator,
    };
    serde_json::to_vec(&blob).expect("plain strings serialize")
}

/// Base64url without padding (RFC 4648 section 5).
pub(crate) fn base64url(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .chars()
        .filter_map(|c| match c {
            '+' => Some('-'),
            '/' => Some('_'),
            '=' => None,
            c => Some(c),
        })
        .collect()
}

/// An Azure key-exchange key's versioned id:
/// `https://VAULT.vault.azure.net/keys/NAME/VERSION` (or a Managed HSM's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureKek(String);

impl AzureKek {
    /// Checks that `id` is a versioned key id; the `.byok` file must name the exact version
    /// Azure made the key-exchange key as.
    pub(crate) fn parse(id: &str) -> Result<AzureKek, String> {
        let shown: String = id.chars().take(80).collect();
        let bad = |why: &str| {
            format!(
                "the key-exchange key id {shown:?} {why}; Azure needs the versioned id, https://VAULT.vault.azure.net/keys/NAME/VERSION"
            )
        };
        if id.len() > 512 {
            return Err(bad("is longer than 512 characters"));
        }
        let rest = id
            .strip_prefix("https://")
            .ok_or_else(|| bad("is not an https URL"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let named = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        };
        match parts.as_slice() {
            [host, "keys", name, version] if named(host) && named(name) && named(version) => {
                Ok(AzureKek(id.to_string()))
            }
            [_, "keys", _] | [_, "keys", _, ""] => Err(bad("has no version")),
            _ => Err(bad("is not a key id")),
        }
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(algorithm: KeyAlgorithm, bits: usize) -> KeyShape {
        KeyShape {
            algorithm,
            length: bits / 8,
        }
    }

    #[test]
    fn names_parse_and_are_unique() {
        for f in &FORMATS {
            assert_eq!(Format::parse(f.name).unwrap(), f);
            assert_eq!(format!("{}:{}", f.cloud.as_str(), f.algorithm()), f.name);
        }
        let e = Format::parse("aws:RSA_AES_KEY_WRAP_SHA_512").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("aws:RSA_AES_KEY_WRAP_SHA_512"), "{e}");
        assert!(
            e.contains("azure:byok") && e.contains("gcp:RSA_OAEP_4096_SHA256"),
            "{e}"
        );
        assert_eq!(
            Format::oci(Algorithm::RsaOaepSha256).name,
            "oci:RSA_OAEP_SHA256"
        );
        for a in [Algorithm::RsaOaepAesSha256, Algorithm::RsaOaepSha256] {
            assert_eq!(Format::oci(a).oci_algorithm(), Some(a));
        }
    }

    #[test]
    fn the_widest_format_takes_every_key_any_format_takes() {
        for f in &FORMATS {
            for (algorithm, lengths) in [
                (KeyAlgorithm::Aes, f.takes.aes),
                (KeyAlgorithm::Rsa, f.takes.rsa),
            ] {
                for &length in lengths {
                    let shape = KeyShape { algorithm, length };
                    assert!(
                        Format::widest().takes(shape).is_ok(),
                        "{f}: {}",
                        shape.describe()
                    );
                }
            }
        }
        for h in OaepHash::ALL {
            let f = Format::hybrid(h);
            assert_eq!(
                (f.layout, f.hash, f.envelope),
                (Layout::Hybrid, h, Envelope::Raw)
            );
        }
    }

    #[test]
    fn each_cloud_takes_its_own_keys() {
        let aws_hybrid = Format::parse("aws:RSA_AES_KEY_WRAP_SHA_256").unwrap();
        let e = aws_hybrid.takes(shape(KeyAlgorithm::Aes, 256)).unwrap_err();
        assert!(e.contains("direct OAEP"), "{e}");
        assert!(aws_hybrid.takes(shape(KeyAlgorithm::Rsa, 3072)).is_ok());
        let aws_direct = Format::parse("aws:RSAES_OAEP_SHA_1").unwrap();
        assert!(aws_direct.takes(shape(KeyAlgorithm::Aes, 256)).is_ok());
        let e = aws_direct.takes(shape(KeyAlgorithm::Aes, 128)).unwrap_err();
        assert!(e.contains("256-bit"), "{e}");
        assert!(aws_direct.takes(shape(KeyAlgorithm::Rsa, 2048)).is_err());
        let gcp_direct = Format::parse("gcp:RSA_OAEP_3072_SHA256").unwrap();
        let e = gcp_direct
            .takes(shape(KeyAlgorithm::Rsa, 3072))
            .unwrap_err();
        assert!(e.contains("never carries RSA keys"), "{e}");
        let gcp = Format::parse("gcp:RSA_OAEP_3072_SHA1_AES_256").unwrap();
        assert!(gcp.takes(shape(KeyAlgorithm::Aes, 192)).is_err());
        let e = gcp.fits_wrapping_key(4096).unwrap_err();
        assert!(e.contains("RSA-3072") && e.contains("RSA-4096"), "{e}");
        assert!(gcp.fits_wrapping_key(3072).is_ok());
        let oci = Format::oci(Algorithm::RsaOaepSha256);
        let e = oci.takes(shape(KeyAlgorithm::Rsa, 2048)).unwrap_err();
        assert!(
            e.contains("only AES keys") && e.contains("RSA_OAEP_AES_SHA256"),
            "{e}"
        );
        assert!(oci.fits_wrapping_key(2048).is_ok());
    }

    #[test]
    fn requests_name_formats_by_name_or_by_oci_algorithm() {
        let resolve = Format::resolve;
        assert_eq!(resolve(None, None).unwrap().name, "oci:RSA_OAEP_AES_SHA256");
        let direct = Some(Algorithm::RsaOaepSha256);
        assert_eq!(resolve(None, direct).unwrap().name, "oci:RSA_OAEP_SHA256");
        assert_eq!(
            resolve(Some("oci:RSA_OAEP_SHA256"), direct).unwrap().name,
            "oci:RSA_OAEP_SHA256"
        );
        assert_eq!(
            resolve(Some("azure:byok"), None).unwrap().name,
            "azure:byok"
        );
        let e = resolve(Some("azure:byok"), direct).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
        let e = resolve(Some("RSA_OAEP_SHA256"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown format") && e.contains("oci:RSA_OAEP_SHA256"),
            "{e}"
        );
        let azure = Format::parse("azure:byok").unwrap();
        assert!(
            azure
                .kek(None)
                .unwrap_err()
                .to_string()
                .contains("versioned id")
        );
        assert!(
            azure
                .kek(Some("https://v.vault.azure.net/keys/k/1"))
                .unwrap()
                .is_some()
        );
        let oci = Format::widest();
        assert!(oci.kek(None).unwrap().is_none());
        assert!(oci.kek(Some("https://v.vault.azure.net/keys/k/1")).is_err());
    }

    #[test]
    fn azure_kek_must_be_versioned() {
        let ok = "https://contoso.vault.azure.net/keys/byok-kek/0123abcd";
        assert_eq!(AzureKek::parse(ok).unwrap().as_str(), ok);
        let mhsm = "https://contoso.managedhsm.azure.net/keys/kek/0123abcd";
        assert!(AzureKek::parse(mhsm).is_ok());
        for (bad, why) in [
            (
                "https://contoso.vault.azure.net/keys/byok-kek",
                "no version",
            ),
            (
                "https://contoso.vault.azure.net/keys/byok-kek/",
                "no version",
            ),
            ("http://contoso.vault.azure.net/keys/k/v", "https"),
            (
                "https://contoso.vault.azure.net/secrets/k/v",
                "not a key id",
            ),
            ("https://contoso.vault.azure.net/keys/k/v/x", "not a key id"),
            ("https://contoso.vault.azure.net/keys/k\n/v", "not a key id"),
        ] {
            let e = AzureKek::parse(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("versioned id"), "{bad}: {e}");
        }
    }

    #[test]
    fn byok_file_has_azure_fields_in_order() {
        let kek = AzureKek::parse("https://v.vault.azure.net/keys/kek/1").unwrap();
        let f = Format::parse("azure:byok").unwrap();
        let out = f.seal(vec![0xfb, 0xff, 0x00], Some(&kek), "gen").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"schema_version":"1.0.0","header":{"kid":"https://v.vault.azure.net/keys/kek/1","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"-_8A","generator":"gen"}"#
        );
        assert!(f.seal(vec![1], None, "gen").is_err());
        assert_eq!(base64url(b"\xff\xfe"), "__4");
    }
}

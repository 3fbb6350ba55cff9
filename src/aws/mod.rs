//! AWS KMS, reached through the official SDK (`aws-sdk-kms`, credentials by `aws-config`):
//! one client per `[destinations.NAME]` with `cloud = "aws"` (src/config/destinations.rs),
//! pinned to the destination's checked endpoint and region, over rustls with ring and the
//! system's roots plus the destination's `ca_bundle`. The calls an import makes
//! (src/export/aws.rs), each failing as a [`KmsError`] with KMS's error name, message and
//! request id. Secrets never pass through here but inside the SDK's credential providers.

use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::{Blob, DateTime};
use aws_sdk_kms::types::{
    AlgorithmSpec, ExpirationModelType, ImportType, IncludeKeyMaterial, KeyMetadata, KeySpec,
    KeyUsageType, OriginType, RotationsListEntry, Tag, WrappingKeySpec,
};
use tokio::sync::OnceCell;

use crate::config::AwsDestination;
use crate::oci::kms::{Answer, KmsError, MAX_ERROR_TEXT, MAX_ID_TEXT, bounded};

/// The KMS operations this daemon calls (error messages name the service by them).
pub(crate) const OPERATIONS: [&str; 7] = [
    "DescribeKey",
    "GetPublicKey",
    "CreateKey",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "RotateKeyOnDemand",
    "ListKeyRotations",
];

impl Kms {
    /// The AWS destination `name` of the config (its client is made at first use: the
    /// credential chain may ask the network).
    pub(crate) fn new(name: &str, a: &AwsDestination) -> Kms {
        Kms {
            name: name.to_string(),
            endpoint: crate::oci::endpoint::check(&a.endpoint_url(), &a.allowed())
                .map(|e| e.base)
                .unwrap_or_default(),
            cfg: a.clone(),
            client: OnceCell::new(),
        }
    }
}

/// One AWS destination: its settings and its client.
pub(crate) struct Kms {
    pub name: String,
    /// The endpoint, normalised (`https://host[:port]`), checked against the allow-list
    /// when the config was loaded.
    pub endpoint: String,
    pub cfg: AwsDestination,
    client: OnceCell<Client>,
}

/// A KMS key ARN, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyArn {
    pub region: String,
    pub account: String,
    pub key_id: String,
}

impl KeyArn {
    /// `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<KeyArn> {
        let mut parts = s.splitn(6, ':');
        let (arn, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let key_id = resource.strip_prefix("key/")?;
        (arn == "arn"
            && matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
            && service == "kms"
            && region_ok(region)
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && key_id_ok(key_id))
        .then(|| KeyArn {
            region: region.to_string(),
            account: account.to_string(),
            key_id: key_id.to_string(),
        })
    }
}

/// An AWS region's name: 1 to 32 lower-case letters, digits and '-'.
pub(crate) fn region_ok(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A key id as KMS makes them for single-region keys: a UUID. (Multi-region keys, `mrk-`,
/// are not import targets here: their new material waits for every replica's import.)
pub(crate) fn key_id_ok(id: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g))
}

/// What GetParametersForImport hands out: the wrapping key (DER SubjectPublicKeyInfo) and
/// the import token bound to it, the key and the algorithm.
pub(crate) struct ImportParameters {
    pub public_key_der: Vec<u8>,
    pub import_token: Vec<u8>,
}

/// ImportKeyMaterial's request, as the journal records it (src/export/aws.rs).
pub(crate) struct ImportCall<'a> {
    pub key_id: &'a str,
    pub import_token: Vec<u8>,
    pub encrypted_key_material: Vec<u8>,
    /// Epoch seconds; `None`: the material does not expire.
    pub valid_to: Option<i64>,
    pub new_material: bool,
    pub description: Option<&'a str>,
}

impl Kms {
    /// The client, made once: the region and endpoint of the destination (never the
    /// environment's or the shared config's endpoint), its profile or the default chain.
    async fn client(&self) -> Result<&Client, KmsError> {
        self.client
            .get_or_try_init(|| async {
                let local = |why: String| KmsError::Local {
                    op: "DescribeKey",
                    why,
                };
                let mut trust = aws_smithy_http_client::tls::TrustStore::default();
                if let Some(ca) = &self.cfg.ca_bundle {
                    let pem = std::fs::read(ca)
                        .map_err(|e| local(format!("ca_bundle {}: {e}", ca.display())))?;
                    trust = trust.with_pem_certificate(pem);
                }
                let tls = aws_smithy_http_client::tls::TlsContext::builder()
                    .with_trust_store(trust)
                    .build()
                    .map_err(|e| local(format!("TLS settings: {e}")))?;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .tls_context(tls)
                    .build_https();
                let timeout = Duration::from_millis(self.cfg.timeout_ms);
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.cfg.region.clone()))
                    .http_client(http)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(timeout)
                            .operation_attempt_timeout(timeout)
                            .build(),
                    );
                if let Some(p) = &self.cfg.profile {
                    loader = loader.profile_name(p);
                }
                let shared = loader.load().await;
                let conf = aws_sdk_kms::config::Builder::from(&shared)
                    .endpoint_url(self.endpoint.clone())
                    .retry_config(RetryConfig::standard().with_max_attempts(3))
                    .build();
                Ok(Client::from_conf(conf))
            })
            .await
    }

    /// DescribeKey.
    pub(crate) async fn describe_key(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<KeyMetadata>, KmsError> {
        const OP: &str = "DescribeKey";
        let c = self.client().await?;
        let out = within(OP, deadline, c.describe_key().key_id(key_id).send()).await?;
        let rid = out.request_id().unwrap_or_default().to_string();
        let meta = out
            .key_metadata
            .ok_or_else(|| bad(OP, "KeyMetadata", &rid))?;
        Ok(answer(meta, rid))
    }

    /// GetPublicKey: an asymmetric key's public key (DER SubjectPublicKeyInfo).
    pub(crate) async fn public_key(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<Vec<u8>>, KmsError> {
        const OP: &str = "GetPublicKey";
        let c = self.client().await?;
        let out = within(OP, deadline, c.get_public_key().key_id(key_id).send()).await?;
        let rid = out.request_id().unwrap_or_default().to_string();
        let spki = out.public_key.ok_or_else(|| bad(OP, "PublicKey", &rid))?;
        Ok(answer(spki.into_inner(), rid))
    }

    /// CreateKey with `Origin = EXTERNAL`, tagged with `tag` (the journal token that made it).
    pub(crate) async fn create_key(
        &self,
        (spec, usage): (&str, &str),
        description: &str,
        tag: (&str, &str),
        deadline: Option<Instant>,
    ) -> Result<Answer<KeyMetadata>, KmsError> {
        const OP: &str = "CreateKey";
        let c = self.client().await?;
        let tag = Tag::builder()
            .tag_key(tag.0)
            .tag_value(tag.1)
            .build()
            .map_err(|e| KmsError::Local {
                op: OP,
                why: e.to_string(),
            })?;
        // Not retried by the SDK: a lost answer would leave a second, empty key.
        let out = within(
            OP,
            deadline,
            c.create_key()
                .origin(OriginType::External)
                .key_spec(KeySpec::from(spec))
                .key_usage(KeyUsageType::from(usage))
                .description(description)
                .tags(tag)
                .customize()
                .config_override(no_retries())
                .send(),
        )
        .await?;
        let rid = out.request_id().unwrap_or_default().to_string();
        let meta = out
            .key_metadata
            .ok_or_else(|| bad(OP, "KeyMetadata", &rid))?;
        Ok(answer(meta, rid))
    }

    /// GetParametersForImport for `key_id` and `algorithm`, with the destination's wrapping
    /// key size.
    pub(crate) async fn parameters(
        &self,
        key_id: &str,
        algorithm: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<ImportParameters>, KmsError> {
        const OP: &str = "GetParametersForImport";
        let c = self.client().await?;
        let out = within(
            OP,
            deadline,
            c.get_parameters_for_import()
                .key_id(key_id)
                .wrapping_algorithm(AlgorithmSpec::from(algorithm))
                .wrapping_key_spec(WrappingKeySpec::from(self.cfg.wrapping_key_spec.as_str()))
                .send(),
        )
        .await?;
        let rid = out.request_id().unwrap_or_default().to_string();
        let (Some(public_key), Some(token)) = (out.public_key, out.import_token) else {
            return Err(bad(OP, "PublicKey and ImportToken", &rid));
        };
        Ok(answer(
            ImportParameters {
                public_key_der: public_key.into_inner(),
                import_token: token.into_inner(),
            },
            rid,
        ))
    }

    /// ImportKeyMaterial; its KeyMaterialId. New material is not retried by the SDK (a
    /// second send of material that landed is refused; the caller looks for it instead).
    pub(crate) async fn import(
        &self,
        call: ImportCall<'_>,
        deadline: Option<Instant>,
    ) -> Result<Answer<String>, KmsError> {
        const OP: &str = "ImportKeyMaterial";
        let c = self.client().await?;
        let mut req = c
            .import_key_material()
            .key_id(call.key_id)
            .import_token(Blob::new(call.import_token))
            .encrypted_key_material(Blob::new(call.encrypted_key_material));
        req = match call.valid_to {
            Some(t) => req
                .expiration_model(ExpirationModelType::KeyMaterialExpires)
                .valid_to(DateTime::from_secs(t)),
            None => req.expiration_model(ExpirationModelType::KeyMaterialDoesNotExpire),
        };
        if let Some(d) = call.description {
            req = req.key_material_description(d);
        }
        let out = if call.new_material {
            req = req.import_type(ImportType::NewKeyMaterial);
            within(
                OP,
                deadline,
                req.customize().config_override(no_retries()).send(),
            )
            .await?
        } else {
            within(OP, deadline, req.send()).await?
        };
        let rid = out.request_id().unwrap_or_default().to_string();
        let id = out
            .key_material_id
            .ok_or_else(|| bad(OP, "KeyMaterialId", &rid))?;
        Ok(answer(id, rid))
    }

    /// RotateKeyOnDemand, sent once: never retried by the SDK.
    pub(crate) async fn rotate(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<()>, KmsError> {
        const OP: &str = "RotateKeyOnDemand";
        let c = self.client().await?;
        let out = within(
            OP,
            deadline,
            c.rotate_key_on_demand()
                .key_id(key_id)
                .customize()
                .config_override(no_retries())
                .send(),
        )
        .await?;
        Ok(answer((), out.request_id().unwrap_or_default().to_string()))
    }

    /// Every key material of `key_id` (ListKeyRotations with `ALL_KEY_MATERIAL`, all pages).
    pub(crate) async fn materials(
        &self,
        key_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<Vec<RotationsListEntry>>, KmsError> {
        const OP: &str = "ListKeyRotations";
        /// KMS allows at most 25 on-demand rotations and some automatic ones a year: a
        /// key with more pages than this is not one an import made sense for.
        const MAX_PAGES: usize = 100;
        let c = self.client().await?;
        let (mut all, mut marker, mut rid) = (Vec::new(), None::<String>, String::new());
        for _ in 0..MAX_PAGES {
            let out = within(
                OP,
                deadline,
                c.list_key_rotations()
                    .key_id(key_id)
                    .include_key_material(IncludeKeyMaterial::AllKeyMaterial)
                    .limit(1000)
                    .set_marker(marker.take())
                    .send(),
            )
            .await?;
            rid = out.request_id().unwrap_or_default().to_string();
            all.extend(out.rotations.unwrap_or_default());
            match (out.truncated, out.next_marker) {
                (true, Some(m)) => marker = Some(m),
                _ => return Ok(answer(all, rid)),
            }
        }
        Err(bad(OP, &format!("last page within {MAX_PAGES}"), &rid))
    }
}

/// An operation's override: no retries (a call that must reach KMS at most once).
fn no_retries() -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::config::Builder::new().retry_config(RetryConfig::disabled())
}

fn answer<T>(value: T, rid: String) -> Answer<T> {
    Answer {
        value,
        opc_request_id: rid,
        attempts: 1,
    }
}

fn bad(op: &'static str, expected: &str, rid: &str) -> KmsError {
    KmsError::BadResponse {
        op,
        status: 200,
        expected: "KMS answer",
        why: format!("{expected} missing"),
        opc_request_id: rid.to_string(),
    }
}

/// Runs a call until `deadline`; its failure as a [`KmsError`].
async fn within<T, E>(
    op: &'static str,
    deadline: Option<Instant>,
    call: impl std::future::Future<
        Output = Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
    >,
) -> Result<T, KmsError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let result = match deadline {
        None => call.await,
        Some(d) => match tokio::time::timeout_at(d.into(), call).await {
            Ok(r) => r,
            Err(_) => {
                return Err(KmsError::Deadline {
                    op,
                    attempts: 1,
                    last: String::new(),
                });
            }
        },
    };
    result.map_err(|e| sdk_error(op, e))
}

/// KMS's error as a [`KmsError`]: an answer is a `Service` error with KMS's error name and
/// message, and an HTTP-like status that says how the journal and the caller treat it
/// (src/export/journal.rs: 401/403/409/429/5xx are not final); no answer is `Transport`.
fn sdk_error<E>(
    op: &'static str,
    e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let rid = bounded(e.request_id().unwrap_or_default(), MAX_ID_TEXT);
    match &e {
        SdkError::ServiceError(se) => {
            let code = bounded(se.err().code().unwrap_or("Unknown"), MAX_ID_TEXT);
            let message = bounded(se.err().message().unwrap_or_default(), MAX_ERROR_TEXT);
            let http = se.raw().status().as_u16();
            KmsError::Service {
                op,
                status: status_for(&code, http),
                code,
                message,
                opc_request_id: rid,
                attempts: 1,
            }
        }
        _ => KmsError::Transport {
            op,
            endpoint: String::new(),
            why: bounded(&DisplayErrorContext(&e).to_string(), MAX_ERROR_TEXT),
            attempts: 1,
        },
    }
}

/// The status KMS's error `code` stands for: KMS answers 400 to most refusals, and the
/// name says whether one is final.
fn status_for(code: &str, http: u16) -> u16 {
    match code {
        "NotFoundException" => 404,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException" => 403,
        "ThrottlingException" | "LimitExceededException" => 429,
        "KMSInvalidStateException" | "ConflictException" => 409,
        "DependencyTimeoutException" | "KMSInternalException" => 503,
        _ => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_key_ids_are_checked() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(key_id_ok(id));
        for bad in [
            // a multi-Region key: not an import target here
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "",
            "alias/x",
            "1234abcd-12ab-34cd-56ef",
            "../x",
            &format!("{id}x"),
        ] {
            assert!(!key_id_ok(bad), "{bad:?}");
        }
        let arn = KeyArn::parse(&format!("arn:aws:kms:us-east-1:111122223333:key/{id}")).unwrap();
        assert_eq!(
            (
                arn.region.as_str(),
                arn.account.as_str(),
                arn.key_id.as_str()
            ),
            ("us-east-1", "111122223333", id)
        );
        for bad in [
            format!("arn:aws:kms:us-east-1:11112222333:key/{id}"),
            format!("arn:aws:s3:us-east-1:111122223333:key/{id}"),
            format!("arn:aws:kms:us-east-1:111122223333:alias/{id}"),
            format!("arn:aws:kms:us-east-1:111122223333:key/{id}/x"),
            format!("arn:awsx:kms:us-east-1:111122223333:key/{id}"),
            format!("arn:aws:kms:US EAST:111122223333:key/{id}"),
        ] {
            assert_eq!(KeyArn::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn kms_error_names_say_how_final_they_are() {
        assert_eq!(status_for("NotFoundException", 400), 404);
        assert_eq!(status_for("IncorrectKeyMaterialException", 400), 400);
        assert_eq!(status_for("KMSInvalidStateException", 400), 409);
        assert_eq!(status_for("ThrottlingException", 400), 429);
        assert_eq!(status_for("Whatever", 500), 500);
    }
}

//! AWS KMS as an import destination (src/export/destination.rs), over the KMS client
//! (src/aws/). An import names a KMS key (its ARN or id) or asks for a new one:
//!
//! - a key waiting for its first material (`PendingImport`): GetParametersForImport, the
//!   wrap, ImportKeyMaterial;
//! - a symmetric key that has material: the same with `ImportType = NEW_KEY_MATERIAL`, then
//!   RotateKeyOnDemand (AWS's new key version);
//! - a new key: CreateKey with `Origin = EXTERNAL` and the spec the source key's shape
//!   implies, then the first import.
//!
//! Exactly once: the body the journal records is the ImportKeyMaterial request (the
//! parameters are one set per import, valid 24 hours). KMS takes the same material again,
//! so a lost answer to a first import is re-sent; new material carries the journal token in
//! its `KeyMaterialDescription`, and a retry lists the key's materials before anything is
//! sent again: found and rotated, the import is answered; found pending, it is rotated (the
//! one RotateKeyOnDemand of the request); not found, the recorded bytes are sent. RSA
//! material carries no mark: a retry asks for the key's public key first, and the import
//! landed if it is the source key's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::types::{KeyMaterialState, KeyMetadata, RotationsListEntry};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::destination::{mark, modulus_hex, recorded, unbase64};
use super::journal::noted;
use super::{Caller, Destination, ExportError};
use crate::audit::{Progress, Record, bounded};
use crate::aws::{ImportCall, KeyArn, Kms, key_id_ok};
use crate::clouds::Clouds;
use crate::hsm::Wrapped;
use crate::journal::Journal;
use crate::oci::kms::{Answer, KmsError};
use crate::wrap::{Format, KeyAlgorithm, KeyShape, WrappingKey};

/// Longest wait for a key to be `Enabled` when the caller gave no deadline.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The tag a created key carries: the journal token of the import that made it.
const REQUEST_TAG: &str = "hsm-bridge-request";

/// The KMS key spec for a source key of `shape`, if KMS has one.
pub(crate) fn key_spec(shape: KeyShape) -> Option<&'static str> {
    match (shape.algorithm, shape.length) {
        (KeyAlgorithm::Aes, 32) => Some("SYMMETRIC_DEFAULT"),
        (KeyAlgorithm::Rsa, 256) => Some("RSA_2048"),
        (KeyAlgorithm::Rsa, 384) => Some("RSA_3072"),
        (KeyAlgorithm::Rsa, 512) => Some("RSA_4096"),
        _ => None,
    }
}

/// The format AWS takes a key of `shape` in unless the caller names another: AES by
/// direct OAEP, RSA by OAEP and RFC 5649 (KMS refuses the other way round).
pub(crate) fn default_format(shape: KeyShape) -> &'static Format {
    let name = match shape.algorithm {
        KeyAlgorithm::Aes => "aws:RSAES_OAEP_SHA_256",
        KeyAlgorithm::Rsa => "aws:RSA_AES_KEY_WRAP_SHA_256",
    };
    Format::parse(name).expect("a format of the table")
}

/// The key usage of a new key for a source key of `shape` unless the caller names one.
pub(crate) fn default_usage(shape: KeyShape) -> &'static str {
    match shape.algorithm {
        KeyAlgorithm::Aes => "ENCRYPT_DECRYPT",
        KeyAlgorithm::Rsa => "SIGN_VERIFY",
    }
}

/// What an import names at AWS.
pub(crate) enum Target {
    /// A key, by ARN or id.
    Key(String),
    /// A new key of the source key's shape, with this `KeyUsage`.
    New { usage: String },
}

/// One import into an AWS destination.
pub(crate) struct AwsImport {
    aws: Arc<Clouds>,
    kms: Arc<Kms>,
    target: Target,
    /// The KMS key spec of the source key.
    spec: &'static str,
    format: &'static Format,
    /// `ValidTo`, epoch seconds; `None`: the material does not expire.
    valid_to: Option<i64>,
    deadline: Option<Instant>,
    /// What [`Destination::wrapping_key`] learnt for [`Destination::body`].
    params: Mutex<Option<Params>>,
}

/// One import's parameters.
struct Params {
    key_arn: String,
    import_token: Zeroizing<Vec<u8>>,
    new_material: bool,
    description: Option<String>,
    created: bool,
}

/// The ImportKeyMaterial request as the journal records it, with what follows it.
#[derive(Serialize, Deserialize)]
struct Body {
    key_id: String,
    /// Base64.
    import_token: String,
    /// Base64.
    encrypted_key_material: String,
    valid_to: Option<i64>,
    /// `ImportType = NEW_KEY_MATERIAL`, then RotateKeyOnDemand.
    new_material: bool,
    /// `KeyMaterialDescription`: the mark a retry looks for.
    description: Option<String>,
    created_key: bool,
    /// An RSA source key's modulus (hex): what a retry compares KMS's public key with.
    #[serde(default)]
    modulus: Option<String>,
}

/// What an AWS import made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Imported {
    /// The key's ARN.
    pub key_arn: String,
    pub key_material_id: String,
    /// The key's state (`Enabled` once the material is in).
    pub key_state: String,
    /// The material's state (`CURRENT` once imported or rotated to).
    pub material_state: String,
    /// Whether this import created the key.
    pub created_key: bool,
    /// The key's creation date (RFC 3339).
    pub key_created: String,
}

/// A failure after KMS took the material (rotating, reading the key): not the import's
/// final answer. Recorded as unknown, so that a retry under the same idempotency key
/// finds the material and finishes (src/export/journal.rs).
fn unfinished(e: KmsError) -> KmsError {
    let op = match &e {
        KmsError::Service { op, .. }
        | KmsError::Transport { op, .. }
        | KmsError::Deadline { op, .. }
        | KmsError::BadResponse { op, .. }
        | KmsError::Local { op, .. } => *op,
        KmsError::WrappingKey { .. } => "ImportKeyMaterial",
    };
    KmsError::Transport {
        op,
        endpoint: String::new(),
        why: format!(
            "{e}; the material was imported: retry with the same idempotency_key to finish"
        ),
        attempts: e.attempts(),
    }
}

impl AwsImport {
    /// An import of a key of `shape` in `format` into `kms`'s destination, for a caller
    /// already [`granted`] it (`Exporter::import_to` checks that first, before the token is
    /// asked anything).
    pub(crate) fn new(
        aws: Arc<Clouds>,
        kms: Arc<Kms>,
        target: Target,
        (shape, format): (KeyShape, &'static Format),
        valid_to: Option<i64>,
        deadline: Option<Instant>,
    ) -> Result<AwsImport, ExportError> {
        let spec = key_spec(shape).ok_or_else(|| {
            ExportError::invalid(format!(
                "AWS KMS imports no {} key (AES-256 and RSA-2048/3072/4096); nothing was wrapped or sent",
                shape.describe()
            ))
        })?;
        format
            .takes(shape)
            .map_err(|why| ExportError::invalid(format!("{why}; nothing was wrapped or sent")))?;
        if let Target::New { usage } = &target {
            let ok = match shape.algorithm {
                KeyAlgorithm::Aes => usage == "ENCRYPT_DECRYPT",
                KeyAlgorithm::Rsa => usage == "ENCRYPT_DECRYPT" || usage == "SIGN_VERIFY",
            };
            if !ok {
                return Err(ExportError::invalid(format!(
                    "key usage {:?} does not fit a {spec} key (AES: ENCRYPT_DECRYPT; RSA: ENCRYPT_DECRYPT or SIGN_VERIFY)",
                    bounded(usage, 32)
                )));
            }
        }
        if let Some(t) = valid_to {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if t <= now || t > now + 365 * 86_400 {
                return Err(ExportError::invalid(
                    "valid_to must be in the future and at most 365 days ahead (AWS's limit)",
                ));
            }
        }
        Ok(AwsImport {
            aws,
            kms,
            target,
            spec,
            format,
            valid_to,
            deadline,
            params: Mutex::new(None),
        })
    }

    fn deny_outside(&self, what: &str, region: &str, account: &str) -> ExportError {
        ExportError::denied(format!(
            "{what} is in account {account}, region {region}; destination {} is account {}, region {}; nothing was sent",
            self.kms.name, self.kms.cfg.account, self.kms.cfg.region
        ))
    }

    /// The key KMS describes, if it is one an import may go to: in the destination's
    /// account and region, made for imported material, of the source key's spec.
    async fn checked_key(
        &self,
        key_id: &str,
        progress: &mut Progress,
    ) -> Result<KeyMetadata, ExportError> {
        let meta = self
            .kms
            .describe_key(key_id, self.deadline)
            .await
            .map_err(noted(progress))?
            .value;
        let arn = meta.arn().unwrap_or_default();
        match KeyArn::parse(arn) {
            Some(a) if a.account == self.kms.cfg.account && a.region == self.kms.cfg.region => {}
            Some(a) => {
                return Err(self.deny_outside(&format!("key {arn}"), &a.region, &a.account));
            }
            None => {
                return Err(ExportError::Oci(KmsError::BadResponse {
                    op: "DescribeKey",
                    status: 200,
                    expected: "key ARN",
                    why: "the key's Arn is missing or malformed".into(),
                    opc_request_id: String::new(),
                }));
            }
        }
        if meta.multi_region() == Some(true) {
            return Err(ExportError::invalid(format!(
                "key {arn} is a multi-Region key: its new material waits for every replica's import, which hsm-bridge does not do; nothing was wrapped or sent"
            )));
        }
        let origin = meta.origin().map_or("", |o| o.as_str());
        if origin != "EXTERNAL" {
            return Err(ExportError::invalid(format!(
                "key {arn} has origin {origin}: KMS imports material only into keys created with Origin EXTERNAL; nothing was wrapped or sent"
            )));
        }
        let spec = meta.key_spec().map_or("", |s| s.as_str());
        if spec != self.spec {
            return Err(ExportError::invalid(format!(
                "key {arn} is {spec}; the source key needs {}; nothing was wrapped or sent",
                self.spec
            )));
        }
        let state = meta.key_state().map_or("", |s| s.as_str());
        if !matches!(state, "Enabled" | "PendingImport") {
            return Err(ExportError::not_configured(format!(
                "key {arn} is {state}: it takes material only while Enabled or PendingImport; nothing was wrapped or sent"
            )));
        }
        Ok(meta)
    }

    /// The material of `key_arn` that carries `mark`, if any.
    async fn marked(
        &self,
        key_arn: &str,
        mark: &str,
    ) -> Result<Option<(RotationsListEntry, String)>, KmsError> {
        let all = self.kms.materials(key_arn, self.deadline).await?;
        let rid = all.opc_request_id;
        Ok(all
            .value
            .into_iter()
            .find(|m| m.key_material_description() == Some(mark))
            .map(|m| (m, rid)))
    }

    /// The answer for material `id` of `key_arn` in state `material_state`.
    async fn imported(
        &self,
        (key_arn, id, material_state): (&str, String, &str),
        created_key: bool,
        rid: String,
    ) -> Result<Answer<Imported>, KmsError> {
        let meta = self.kms.describe_key(key_arn, self.deadline).await?.value;
        Ok(Answer {
            value: Imported {
                key_arn: key_arn.to_string(),
                key_material_id: id,
                key_state: meta.key_state().map_or("", |s| s.as_str()).to_string(),
                material_state: material_state.to_string(),
                created_key,
                key_created: meta
                    .creation_date()
                    .and_then(|d| {
                        d.fmt(aws_sdk_kms::primitives::DateTimeFormat::DateTime)
                            .ok()
                    })
                    .unwrap_or_default(),
            },
            opc_request_id: rid,
            attempts: 1,
        })
    }

    /// The answer for marked material `id` of the import `b` in `state`: rotated to now if
    /// it is pending and the import asked for it (the one rotation of the request); a
    /// failure from here on is [`unfinished`].
    async fn finish(
        &self,
        b: &Body,
        mark: &str,
        (id, rid): (String, String),
        state: Option<&KeyMaterialState>,
    ) -> Result<Answer<Imported>, KmsError> {
        let state = match state {
            Some(KeyMaterialState::PendingRotation) if b.new_material => {
                self.rotate(&b.key_id, mark).await.map_err(unfinished)?;
                match self.marked(&b.key_id, mark).await.map_err(unfinished)? {
                    Some((m, _)) => m
                        .key_material_state()
                        .map_or("", |s| s.as_str())
                        .to_string(),
                    None => String::new(),
                }
            }
            Some(s @ (KeyMaterialState::Current | KeyMaterialState::NonCurrent)) => {
                s.as_str().to_string()
            }
            other => {
                return Err(unfinished(KmsError::Local {
                    op: "ListKeyRotations",
                    why: format!(
                        "material {id} of key {} is {}",
                        b.key_id,
                        other.map_or("in no state", |s| s.as_str())
                    ),
                }));
            }
        };
        self.imported((&b.key_id, id, &state), b.created_key, rid)
            .await
            .map_err(unfinished)
    }

    /// The import of an RSA key `b` whose answer was lost, found by KMS's public key for the
    /// key being the source key's (asymmetric material carries no mark); `None` while the
    /// key has no material, or another's (then the recorded bytes are sent, and KMS says
    /// what it says).
    async fn find_by_public_key(&self, b: &Body) -> Result<Option<Answer<Imported>>, KmsError> {
        let Some(modulus) = &b.modulus else {
            return Ok(None);
        };
        let spki = match self.kms.public_key(&b.key_id, self.deadline).await {
            Ok(a) => a,
            Err(KmsError::Service { code, .. }) if code == "KMSInvalidStateException" => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let theirs = openssl::pkey::PKey::public_key_from_der(&spki.value)
            .and_then(|k| k.rsa())
            .map(|r| modulus_hex(&r.n().to_vec()))
            .map_err(|_| KmsError::BadResponse {
                op: "GetPublicKey",
                status: 200,
                expected: "RSA SubjectPublicKeyInfo",
                why: "the key's PublicKey does not parse".into(),
                opc_request_id: spki.opc_request_id.clone(),
            })?;
        if theirs != *modulus {
            return Ok(None);
        }
        let meta = self.kms.describe_key(&b.key_id, self.deadline).await?.value;
        let id = meta
            .current_key_material_id()
            .unwrap_or_default()
            .to_string();
        self.imported(
            (&b.key_id, id, "CURRENT"),
            b.created_key,
            spki.opc_request_id,
        )
        .await
        .map(Some)
    }

    /// Rotates to the pending material `id` of `key_arn`: once. A rotation whose answer
    /// was lost is recognised by the material being current.
    async fn rotate(&self, key_arn: &str, mark: &str) -> Result<(), KmsError> {
        match self.kms.rotate(key_arn, self.deadline).await {
            Ok(_) => Ok(()),
            Err(e) => match self.marked(key_arn, mark).await {
                Ok(Some((m, _))) if m.key_material_state() == Some(&KeyMaterialState::Current) => {
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }
}

/// `caller` may import into the destination `name` (`server.clients[].destinations`); a
/// refusal names only the destinations the caller may use.
pub(crate) fn granted(caller: &Caller, name: &str) -> Result<(), ExportError> {
    if caller.may_use_destination(name) {
        return Ok(());
    }
    let mine = caller.destinations.as_deref().unwrap_or_default();
    Err(ExportError::denied(format!(
        "{} may not import into destination {:?} (its destinations in server.clients: {}); nothing was sent",
        caller.display,
        bounded(name, 64),
        if mine.is_empty() {
            "none".into()
        } else {
            mine.join(", ")
        }
    )))
}

impl Destination for AwsImport {
    type Answer = Imported;

    fn journal(&self) -> &Arc<Journal> {
        &self.aws.journal
    }

    fn endpoint(&self) -> &str {
        &self.kms.endpoint
    }

    fn target(&self) -> &str {
        match &self.target {
            Target::Key(k) => k,
            Target::New { .. } => "(new key)",
        }
    }

    /// The destination, the key spec and usage, and the expiry.
    fn details(&self) -> String {
        let usage = match &self.target {
            Target::Key(_) => "",
            Target::New { usage } => usage,
        };
        format!(
            "{} {} {usage} {:?}",
            self.kms.name, self.spec, self.valid_to
        )
    }

    /// A key named must be in the destination's account and region (an ARN that says
    /// otherwise is refused before anything is sent), made for imported material and of
    /// the source key's spec. (The caller's grant is checked before this import is made.)
    async fn admit(&self, _caller: &Caller, rec: &mut Record) -> Result<(), ExportError> {
        let Target::Key(key) = &self.target else {
            return Ok(());
        };
        if let Some(arn) = KeyArn::parse(key) {
            if arn.account != self.kms.cfg.account || arn.region != self.kms.cfg.region {
                return Err(self.deny_outside(&format!("key {key}"), &arn.region, &arn.account));
            }
            rec.cloud_key_id = Some(key.clone());
        } else if key_id_ok(key) {
            rec.cloud_key_id = Some(key.clone());
        } else {
            return Err(ExportError::invalid(
                "target is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) or key id",
            ));
        }
        let mut progress = Progress::default();
        let meta = self
            .checked_key(key, &mut progress)
            .await
            .inspect_err(|_| rec.export.merge(&progress))?;
        rec.cloud_key_id = meta.arn().map(str::to_string);
        Ok(())
    }

    /// The key's import parameters, after the key's state says which import this is (the
    /// first material, or new material to rotate to), or after the key is created.
    async fn wrapping_key(
        &self,
        token: &str,
        progress: &mut Progress,
    ) -> Result<Arc<WrappingKey>, ExportError> {
        let symmetric = self.spec == "SYMMETRIC_DEFAULT";
        let mark = symmetric.then(|| mark(token)).transpose()?;
        let (key_arn, new_material, created) = match &self.target {
            Target::Key(key) => {
                let meta = self.checked_key(key, progress).await?;
                let arn = meta.arn().unwrap_or_default().to_string();
                match meta.key_state().map_or("", |s| s.as_str()) {
                    "PendingImport" => (arn, false, false),
                    _ if symmetric => (arn, true, false),
                    _ => {
                        return Err(ExportError::invalid(format!(
                            "key {arn} already has its material, and KMS never changes the material of a {} key: import into a new key instead; nothing was wrapped or sent",
                            self.spec
                        )));
                    }
                }
            }
            Target::New { usage } => {
                let meta = self
                    .kms
                    .create_key(
                        (self.spec, usage),
                        &format!("imported by hsm-bridge ({})", self.format.name),
                        (REQUEST_TAG, token),
                        self.deadline,
                    )
                    .await
                    .map_err(noted(progress))?
                    .value;
                let arn = meta.arn().unwrap_or_default().to_string();
                // The credentials' account may not be the destination's: nothing is
                // imported into a key KMS made elsewhere (the empty key is named so that
                // an operator can delete it).
                match KeyArn::parse(&arn) {
                    Some(a)
                        if a.account == self.kms.cfg.account && a.region == self.kms.cfg.region => {
                    }
                    Some(a) => {
                        return Err(self.deny_outside(
                            &format!("the new key {arn} (the credentials' account)"),
                            &a.region,
                            &a.account,
                        ));
                    }
                    None => {
                        return Err(ExportError::Oci(KmsError::BadResponse {
                            op: "CreateKey",
                            status: 200,
                            expected: "key ARN",
                            why: "the new key's Arn is missing or malformed".into(),
                            opc_request_id: String::new(),
                        }));
                    }
                }
                (arn, false, true)
            }
        };
        let params = self
            .kms
            .parameters(&key_arn, self.format.algorithm(), self.deadline)
            .await
            .map_err(noted(progress))?;
        progress.opc_request_id = Some(params.opc_request_id.clone());
        let bad_key = |why: String| {
            ExportError::Oci(KmsError::WrappingKey {
                endpoint: self.kms.endpoint.clone(),
                why,
            })
        };
        let pem = openssl::pkey::PKey::public_key_from_der(&params.value.public_key_der)
            .and_then(|k| k.public_key_to_pem())
            .map_err(|_| bad_key("KMS's PublicKey is not a DER SubjectPublicKeyInfo".into()))?;
        let wk = WrappingKey::from_pem(&pem, self.aws.min_wrapping_bits)
            .map_err(|e| bad_key(e.to_string()))?;
        *self.params.lock().unwrap_or_else(|p| p.into_inner()) = Some(Params {
            key_arn,
            import_token: Zeroizing::new(params.value.import_token),
            new_material,
            description: mark,
            created,
        });
        Ok(Arc::new(wk))
    }

    fn body(&self, _token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError> {
        let guard = self.params.lock().unwrap_or_else(|p| p.into_inner());
        let p = guard
            .as_ref()
            .ok_or_else(|| ExportError::Body("no import parameters".into()))?;
        serde_json::to_vec(&Body {
            key_id: p.key_arn.clone(),
            import_token: openssl::base64::encode_block(&p.import_token),
            encrypted_key_material: openssl::base64::encode_block(&wrapped.material),
            valid_to: self.valid_to,
            new_material: p.new_material,
            description: p.description.clone(),
            created_key: p.created,
            modulus: wrapped.key.modulus.as_deref().map(modulus_hex),
        })
        .map_err(|e| ExportError::Body(e.to_string()))
    }

    /// Material carrying the import's mark: rotated to already (answered), or pending
    /// (rotated to now, the one rotation of this import). None found: the bytes are sent.
    async fn find_lost(
        &self,
        _token: &str,
        body: &[u8],
    ) -> Result<Option<Answer<Imported>>, KmsError> {
        let b: Body = recorded("ImportKeyMaterial", body)?;
        let Some(mark) = &b.description else {
            return self.find_by_public_key(&b).await;
        };
        let Some((m, rid)) = self.marked(&b.key_id, mark).await? else {
            return Ok(None);
        };
        let id = m.key_material_id().unwrap_or_default().to_string();
        self.finish(&b, mark, (id, rid), m.key_material_state())
            .await
            .map(Some)
    }

    /// ImportKeyMaterial, and for new material RotateKeyOnDemand. New material whose
    /// import failed without an answer is looked for before the rotation is given up.
    async fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        _token: String,
    ) -> Result<Answer<Imported>, KmsError> {
        const OP: &str = "ImportKeyMaterial";
        let b: Body = recorded(OP, &body)?;
        let call = ImportCall {
            key_id: &b.key_id,
            import_token: unbase64(OP, &b.import_token)?,
            encrypted_key_material: unbase64(OP, &b.encrypted_key_material)?,
            valid_to: b.valid_to,
            new_material: b.new_material,
            description: b.description.as_deref(),
        };
        let imported = self.kms.import(call, self.deadline).await;
        match (imported, &b.description) {
            (Ok(a), Some(mark)) if b.new_material => {
                let pending = KeyMaterialState::PendingRotation;
                self.finish(&b, mark, (a.value, a.opc_request_id), Some(&pending))
                    .await
            }
            (Ok(a), _) => self
                .imported(
                    (&b.key_id, a.value, "CURRENT"),
                    b.created_key,
                    a.opc_request_id,
                )
                .await
                .map_err(unfinished),
            (Err(e), Some(mark)) if b.new_material => match self.marked(&b.key_id, mark).await {
                Ok(Some((m, rid))) => {
                    let id = m.key_material_id().unwrap_or_default().to_string();
                    self.finish(&b, mark, (id, rid), m.key_material_state())
                        .await
                }
                _ => Err(e),
            },
            (Err(e), _) => Err(e),
        }
    }

    fn created_id(answer: &Imported) -> &str {
        &answer.key_material_id
    }

    /// The key made is the record's cloud key.
    fn record_made(&self, rec: &mut Record, _created: Option<&str>) {
        let guard = self.params.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = guard.as_ref() {
            rec.cloud_key_id = Some(p.key_arn.clone());
        }
    }

    /// Waits until the key is `Enabled` with this material imported: current, or (an
    /// answer replayed after later rotations) no longer current but still the key's.
    async fn poll(
        &self,
        imported: Imported,
        deadline: Option<Instant>,
    ) -> Result<Imported, ExportError> {
        let until = deadline.unwrap_or_else(|| Instant::now() + MAX_WAIT);
        loop {
            let meta = self
                .kms
                .describe_key(&imported.key_arn, Some(until))
                .await
                .map_err(ExportError::Oci)?
                .value;
            let state = meta.key_state().map_or("", |s| s.as_str()).to_string();
            let material = match meta.current_key_material_id() {
                _ if state != "Enabled" => None,
                Some(c) if c != imported.key_material_id => self
                    .kms
                    .materials(&imported.key_arn, Some(until))
                    .await
                    .map_err(ExportError::Oci)?
                    .value
                    .into_iter()
                    .find(|m| m.key_material_id() == Some(&imported.key_material_id))
                    .and_then(|m| m.key_material_state().cloned())
                    .filter(|s| *s != KeyMaterialState::PendingRotation)
                    .map(|s| s.as_str().to_string()),
                _ => Some("CURRENT".to_string()),
            };
            if let Some(material_state) = material {
                return Ok(Imported {
                    key_state: state,
                    material_state,
                    ..imported
                });
            }
            if Instant::now() + Duration::from_millis(250) >= until {
                return Err(ExportError::not_enabled(format!(
                    "key {} material {} was imported but the key is {state} without it at the deadline; call again with the same idempotency_key",
                    imported.key_arn, imported.key_material_id
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_map_to_specs_and_formats() {
        let aes = |n| KeyShape {
            algorithm: KeyAlgorithm::Aes,
            length: n,
        };
        let rsa = |n| KeyShape {
            algorithm: KeyAlgorithm::Rsa,
            length: n,
        };
        assert_eq!(key_spec(aes(32)), Some("SYMMETRIC_DEFAULT"));
        assert_eq!(key_spec(aes(16)), None);
        assert_eq!(key_spec(rsa(384)), Some("RSA_3072"));
        assert_eq!(default_format(aes(32)).name, "aws:RSAES_OAEP_SHA_256");
        assert_eq!(
            default_format(rsa(384)).name,
            "aws:RSA_AES_KEY_WRAP_SHA_256"
        );
        // The defaults take what they are the default for.
        assert!(default_format(aes(32)).takes(aes(32)).is_ok());
        assert!(default_format(rsa(384)).takes(rsa(384)).is_ok());
        assert!(default_format(aes(16)).takes(aes(16)).is_err());
    }
}

//! Key rings, import jobs, crypto keys and their versions, with Cloud KMS's rules for
//! creating them and importing into them. States that change with time (a job's
//! PENDING_GENERATION, ACTIVE, EXPIRED; a version's PENDING_IMPORT then ENABLED or
//! IMPORT_FAILED) are computed when read from the times fixed at creation, so nothing
//! runs in the background.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use openssl::pkey::{PKey, Private};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::import::{self, Method};
use super::protocol::{
    self, GcpError, IMPORT_METHOD, JOB_STATE, Material, PROTECTION_LEVEL, PURPOSE, VERSION_STATE,
    crc32c, read_algorithm, unb64, valid_id, valid_label, write_algorithm,
};
use super::{Ctx, GcpKms, MAX_KEY_RINGS, MAX_PER_RING, MAX_VERSIONS, PAGE_DEFAULT, PAGE_MAX};

fn rfc3339(t: SystemTime) -> String {
    hsm_bridge::time::rfc3339(t)
}

pub(crate) struct KeyRing {
    create: SystemTime,
    jobs: BTreeMap<String, Job>,
    keys: BTreeMap<String, CryptoKey>,
}

pub(crate) struct Job {
    method_name: &'static str,
    method: Method,
    protection: &'static str,
    create: SystemTime,
    /// When it becomes ACTIVE; never for a `job_stays_pending` fault.
    active_at: Option<SystemTime>,
    expire: SystemTime,
    key: PKey<Private>,
    pem: String,
}

impl Job {
    fn state(&self, now: SystemTime) -> &'static str {
        if now >= self.expire {
            "EXPIRED"
        } else if self.active_at.is_some_and(|a| now >= a) {
            "ACTIVE"
        } else {
            "PENDING_GENERATION"
        }
    }

    fn json(&self, name: &str, ctx: Ctx) -> Value {
        let state = self.state(ctx.now);
        let mut v = json!({
            "name": name,
            "importMethod": IMPORT_METHOD.write(self.method_name, ctx.ints),
            "protectionLevel": PROTECTION_LEVEL.write(self.protection, ctx.ints),
            "createTime": rfc3339(self.create),
            "expireTime": rfc3339(self.expire),
            "state": JOB_STATE.write(state, ctx.ints),
        });
        if state != "PENDING_GENERATION"
            && let Some(a) = self.active_at
        {
            v["generateTime"] = json!(rfc3339(a.min(self.expire)));
        }
        if state == "ACTIVE" {
            v["publicKey"] = json!({ "pem": self.pem });
        }
        if state == "EXPIRED" {
            v["expireEventTime"] = json!(rfc3339(self.expire));
        }
        v
    }
}

pub(crate) struct CryptoKey {
    purpose: &'static str,
    protection: &'static str,
    algorithm: &'static str,
    create: SystemTime,
    import_only: bool,
    labels: BTreeMap<String, String>,
    primary: Option<u32>,
    versions: Vec<Version>,
}

pub(crate) struct Version {
    number: u32,
    algorithm: &'static str,
    protection: &'static str,
    create: SystemTime,
    /// When the version can be seen (later than `create` under a `commit_after_ms` fault).
    appears: SystemTime,
    /// The import job, for an imported version.
    import_job: Option<String>,
    /// When PENDING_IMPORT (or PENDING_GENERATION) ends.
    ready: SystemTime,
    /// The material, or why the import failed.
    outcome: Result<Zeroizing<Vec<u8>>, String>,
    /// Material an earlier import of this version gave (a re-import must give it again).
    earlier: Option<Zeroizing<Vec<u8>>>,
}

impl Version {
    fn state(&self, now: SystemTime) -> &'static str {
        match (&self.outcome, now >= self.ready, self.import_job.is_some()) {
            (_, false, true) => "PENDING_IMPORT",
            (_, false, false) => "PENDING_GENERATION",
            (Ok(_), true, _) => "ENABLED",
            (Err(_), true, true) => "IMPORT_FAILED",
            (Err(_), true, false) => "GENERATION_FAILED",
        }
    }

    fn json(&self, key_name: &str, ctx: Ctx) -> Value {
        let state = self.state(ctx.now);
        let mut v = json!({
            "name": format!("{key_name}/cryptoKeyVersions/{}", self.number),
            "state": VERSION_STATE.write(state, ctx.ints),
            "protectionLevel": PROTECTION_LEVEL.write(self.protection, ctx.ints),
            "algorithm": write_algorithm(self.algorithm, ctx.ints),
            "createTime": rfc3339(self.create),
        });
        match &self.import_job {
            Some(job) => {
                v["importJob"] = json!(job);
                v["reimportEligible"] = json!(true);
                if state == "ENABLED" {
                    v["importTime"] = json!(rfc3339(self.ready));
                }
                if state == "IMPORT_FAILED"
                    && let Err(why) = &self.outcome
                {
                    v["importFailureReason"] = json!(why);
                }
            }
            None if state == "ENABLED" => v["generateTime"] = json!(rfc3339(self.ready)),
            None => {}
        }
        v
    }
}

impl CryptoKey {
    /// For ENCRYPT_DECRYPT, the first version to be ENABLED becomes primary when there is
    /// none.
    fn settle(&mut self, now: SystemTime) {
        if self.purpose != "ENCRYPT_DECRYPT" || self.primary.is_some() {
            return;
        }
        self.primary = self
            .versions
            .iter()
            .filter(|v| v.appears <= now && v.state(now) == "ENABLED")
            .min_by_key(|v| (v.ready, v.number))
            .map(|v| v.number);
    }

    fn json(&mut self, name: &str, ctx: Ctx) -> Value {
        self.settle(ctx.now);
        let mut v = json!({
            "name": name,
            "purpose": PURPOSE.write(self.purpose, ctx.ints),
            "createTime": rfc3339(self.create),
            "versionTemplate": {
                "protectionLevel": PROTECTION_LEVEL.write(self.protection, ctx.ints),
                "algorithm": write_algorithm(self.algorithm, ctx.ints),
            },
            "destroyScheduledDuration": "2592000s",
        });
        if self.import_only {
            v["importOnly"] = json!(true);
        }
        if !self.labels.is_empty() {
            v["labels"] = json!(self.labels);
        }
        if let Some(p) = self.primary
            && let Some(pv) = self.versions.iter().find(|x| x.number == p)
        {
            v["primary"] = pv.json(name, ctx);
        }
        v
    }
}

/// A listing's query.
pub(crate) struct ListQuery<'a> {
    pub(crate) page_size: Option<&'a str>,
    pub(crate) page_token: Option<&'a str>,
    pub(crate) filter: Option<&'a str>,
}

/// The window `[start, end)` of `total` items a page asks for, and the next page's token.
fn page(
    parent: &str,
    total: usize,
    size: Option<&str>,
    token: Option<&str>,
) -> Result<(usize, usize, Option<String>), GcpError> {
    let size = match size.filter(|s| !s.is_empty()) {
        None => PAGE_DEFAULT,
        Some(s) => match s.parse::<i64>() {
            Ok(0) => PAGE_DEFAULT,
            Ok(n) if n > 0 => (n as usize).min(PAGE_MAX),
            _ => {
                return Err(GcpError::invalid(format!(
                    "Invalid value at 'page_size' (TYPE_INT32), \"{s}\""
                )));
            }
        },
    };
    let start = match token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => crate::azure::protocol::b64url_decode(t)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (n, p) = s.strip_prefix("emu1:")?.split_once(':')?;
                (p == parent).then(|| n.parse::<usize>().ok()).flatten()
            })
            .ok_or_else(|| GcpError::invalid("The page token is invalid."))?,
    };
    let start = start.min(total);
    let end = (start + size).min(total);
    let next = (end < total)
        .then(|| crate::azure::protocol::b64url(format!("emu1:{end}:{parent}").as_bytes()));
    Ok((start, end, next))
}

/// A versions filter: `importJob="..."`, `state=ENABLED` (or a number), joined by `AND`.
struct Filter {
    import_job: Option<String>,
    state: Option<&'static str>,
}

impl Filter {
    fn parse(f: Option<&str>) -> Result<Filter, GcpError> {
        let mut out = Filter {
            import_job: None,
            state: None,
        };
        let Some(f) = f.map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(out);
        };
        for term in f.split(" AND ") {
            let (field, value) = term.split_once('=').ok_or_else(|| {
                GcpError::invalid(format!(
                    "Invalid filter term {term:?}: expected field=value"
                ))
            })?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            match field.trim() {
                "importJob" | "import_job" => out.import_job = Some(value.to_string()),
                "state" => {
                    let v = match value.parse::<i64>() {
                        Ok(n) => json!(n),
                        Err(_) => json!(value),
                    };
                    out.state = Some(VERSION_STATE.read(&v)?);
                }
                other => {
                    return Err(GcpError::invalid(format!(
                        "Invalid filter field {other:?}: the emulator filters versions on importJob and state only"
                    )));
                }
            }
        }
        Ok(out)
    }

    fn keeps(&self, v: &Version, now: SystemTime) -> bool {
        self.import_job
            .as_deref()
            .is_none_or(|j| v.import_job.as_deref() == Some(j))
            && self.state.is_none_or(|s| v.state(now) == s)
    }
}

/// `b[camel]`, or `b[snake]` (protobuf's JSON parsers take both names).
fn field<'a>(b: &'a Value, camel: &str, snake: &str) -> &'a Value {
    match &b[camel] {
        Value::Null => &b[snake],
        v => v,
    }
}

fn not_found_ring(ring: &str) -> GcpError {
    GcpError::not_found(format!("KeyRing {ring} not found."))
}

fn split_location(ring: &str) -> Option<(&str, &str)> {
    let (location, id) = ring.rsplit_once("/keyRings/")?;
    let segs: Vec<&str> = location.split('/').collect();
    match segs.as_slice() {
        ["projects", p, "locations", l] if !p.is_empty() && !l.is_empty() => Some((location, id)),
        _ => None,
    }
}

impl GcpKms {
    /// A key ring made at start (`--key-ring`).
    pub fn seed_key_ring(&self, name: &str) -> Result<(), GcpError> {
        let (location, id) = split_location(name).ok_or_else(|| {
            GcpError::invalid("expected projects/PROJECT/locations/LOCATION/keyRings/RING")
        })?;
        let ctx = Ctx {
            now: SystemTime::now(),
            ints: false,
            commit_after: Duration::ZERO,
        };
        match self.create_key_ring(location, Some(id), ctx) {
            Ok(_) => Ok(()),
            Err(e) if e.status == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn create_key_ring(
        &self,
        location: &str,
        id: Option<&str>,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let id = id.unwrap_or("");
        if !valid_id(id) {
            return Err(GcpError::invalid(format!(
                "Invalid key ring id {id:?}: it must match [a-zA-Z0-9_-]{{1,63}}."
            )));
        }
        let name = format!("{location}/keyRings/{id}");
        let mut inner = self.lock();
        if inner.rings.contains_key(&name) {
            return Err(GcpError::exists(format!("KeyRing {name} already exists.")));
        }
        if inner.rings.len() >= MAX_KEY_RINGS {
            return Err(GcpError::exhausted(
                "The emulator holds its most key rings.",
            ));
        }
        inner.rings.insert(
            name.clone(),
            KeyRing {
                create: ctx.now,
                jobs: BTreeMap::new(),
                keys: BTreeMap::new(),
            },
        );
        Ok(json!({"name": name, "createTime": rfc3339(ctx.now)}))
    }

    pub(super) fn get_key_ring(&self, ring: &str, _ctx: Ctx) -> Result<Value, GcpError> {
        let inner = self.lock();
        let r = inner.rings.get(ring).ok_or_else(|| not_found_ring(ring))?;
        Ok(json!({"name": ring, "createTime": rfc3339(r.create)}))
    }

    pub(super) fn create_import_job(
        &self,
        ring: &str,
        id: Option<&str>,
        body: &Value,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let id = id.unwrap_or("");
        if !valid_id(id) {
            return Err(GcpError::invalid(format!(
                "Invalid import job id {id:?}: it must match [a-zA-Z0-9_-]{{1,63}}."
            )));
        }
        let method_name = match field(body, "importMethod", "import_method") {
            Value::Null => return Err(GcpError::invalid("import_method is required.")),
            v => IMPORT_METHOD.read(v)?,
        };
        let method = Method::parse(method_name).ok_or_else(|| {
            GcpError::invalid(format!(
                "Import method {method_name} is not supported (the emulator serves RSA_OAEP_3072_SHA1_AES_256 to RSA_OAEP_4096_SHA256)."
            ))
        })?;
        let protection = match field(body, "protectionLevel", "protection_level") {
            Value::Null => return Err(GcpError::invalid("protection_level is required.")),
            v => PROTECTION_LEVEL.read(v)?,
        };
        if !matches!(protection, "SOFTWARE" | "HSM") {
            return Err(GcpError::invalid(format!(
                "ImportJob protection_level must be SOFTWARE or HSM, not {protection}."
            )));
        }
        let name = format!("{ring}/importJobs/{id}");
        let check = |inner: &super::Inner| -> Result<(), GcpError> {
            let r = inner.rings.get(ring).ok_or_else(|| not_found_ring(ring))?;
            if r.jobs.contains_key(id) {
                return Err(GcpError::exists(format!(
                    "ImportJob {name} already exists."
                )));
            }
            if r.jobs.len() >= MAX_PER_RING {
                return Err(GcpError::exhausted(
                    "The key ring holds its most import jobs.",
                ));
            }
            Ok(())
        };
        let faults = {
            let mut inner = self.lock();
            check(&inner)?;
            let f = &mut inner.job_faults;
            let taken = (f.job_stays_pending, f.job_key_bits, f.job_expired);
            f.job_stays_pending = false;
            f.job_key_bits = None;
            f.job_expired = false;
            taken
        };
        let (stays_pending, key_bits, expired) = faults;
        let bits = key_bits.unwrap_or(method.bits);
        let key = openssl::rsa::Rsa::generate(bits)
            .and_then(PKey::from_rsa)
            .map_err(|e| GcpError::internal(format!("RSA key generation: {e}")))?;
        let pem = key
            .public_key_to_pem()
            .ok()
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or_else(|| GcpError::internal("the job's public key"))?;
        let job = Job {
            method_name,
            method,
            protection,
            create: ctx.now,
            active_at: (!stays_pending).then_some(ctx.now + self.cfg.job_generation),
            expire: if expired {
                ctx.now
            } else {
                ctx.now + self.cfg.job_ttl
            },
            key,
            pem,
        };
        let mut inner = self.lock();
        check(&inner)?;
        let v = job.json(&name, ctx);
        if let Some(r) = inner.rings.get_mut(ring) {
            r.jobs.insert(id.to_string(), job);
        }
        Ok(v)
    }

    pub(super) fn get_import_job(
        &self,
        ring: &str,
        job: &str,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let inner = self.lock();
        let r = inner.rings.get(ring).ok_or_else(|| not_found_ring(ring))?;
        let name = format!("{ring}/importJobs/{job}");
        let j = r
            .jobs
            .get(job)
            .ok_or_else(|| GcpError::not_found(format!("ImportJob {name} not found.")))?;
        Ok(j.json(&name, ctx))
    }

    pub(super) fn list_import_jobs(
        &self,
        ring: &str,
        size: Option<&str>,
        token: Option<&str>,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let inner = self.lock();
        let r = inner.rings.get(ring).ok_or_else(|| not_found_ring(ring))?;
        let (start, end, next) = page(ring, r.jobs.len(), size, token)?;
        let jobs: Vec<Value> = r
            .jobs
            .iter()
            .skip(start)
            .take(end - start)
            .map(|(id, j)| j.json(&format!("{ring}/importJobs/{id}"), ctx))
            .collect();
        let mut v = json!({"totalSize": r.jobs.len()});
        if !jobs.is_empty() {
            v["importJobs"] = json!(jobs);
        }
        if let Some(t) = next {
            v["nextPageToken"] = json!(t);
        }
        Ok(v)
    }

    pub(super) fn create_crypto_key(
        &self,
        ring: &str,
        id: Option<&str>,
        skip: bool,
        body: &Value,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let id = id.unwrap_or("");
        if !valid_id(id) {
            return Err(GcpError::invalid(format!(
                "Invalid crypto key id {id:?}: it must match [a-zA-Z0-9_-]{{1,63}}."
            )));
        }
        let purpose = match &body["purpose"] {
            Value::Null => return Err(GcpError::invalid("crypto_key.purpose is required.")),
            v => PURPOSE.read(v)?,
        };
        if !matches!(
            purpose,
            "ENCRYPT_DECRYPT"
                | "ASYMMETRIC_SIGN"
                | "ASYMMETRIC_DECRYPT"
                | "RAW_ENCRYPT_DECRYPT"
                | "MAC"
        ) {
            return Err(GcpError::invalid(format!(
                "crypto_key.purpose {purpose} is not served by the emulator."
            )));
        }
        let template = field(body, "versionTemplate", "version_template");
        let protection = match field(template, "protectionLevel", "protection_level") {
            Value::Null => "SOFTWARE",
            v => match PROTECTION_LEVEL.read(v)? {
                "PROTECTION_LEVEL_UNSPECIFIED" => "SOFTWARE",
                p => p,
            },
        };
        if !matches!(protection, "SOFTWARE" | "HSM") {
            return Err(GcpError::invalid(format!(
                "The emulator serves SOFTWARE and HSM keys, not {protection}."
            )));
        }
        let algorithm = match (&template["algorithm"], purpose) {
            (Value::Null, "ENCRYPT_DECRYPT") => protocol::algorithm("GOOGLE_SYMMETRIC_ENCRYPTION"),
            (Value::Number(n), "ENCRYPT_DECRYPT") if n.as_i64() == Some(0) => {
                protocol::algorithm("GOOGLE_SYMMETRIC_ENCRYPTION")
            }
            (Value::String(s), "ENCRYPT_DECRYPT")
                if s == "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED" =>
            {
                protocol::algorithm("GOOGLE_SYMMETRIC_ENCRYPTION")
            }
            (v, _) => read_algorithm(v, "crypto_key.version_template.algorithm")?,
        };
        if algorithm.purpose != purpose {
            return Err(GcpError::invalid(format!(
                "Algorithm {} is not compatible with purpose {purpose}.",
                algorithm.name
            )));
        }
        let import_only = match field(body, "importOnly", "import_only") {
            Value::Null => false,
            Value::Bool(b) => *b,
            v => {
                return Err(GcpError::invalid(format!(
                    "Invalid value at 'crypto_key.import_only' (TYPE_BOOL), {v}"
                )));
            }
        };
        if import_only && !skip {
            return Err(GcpError::invalid(
                "crypto_key.import_only requires skip_initial_version_creation to be true.",
            ));
        }
        let mut labels = BTreeMap::new();
        match &body["labels"] {
            Value::Null => {}
            Value::Object(m) => {
                if m.len() > 64 {
                    return Err(GcpError::invalid("A crypto key has at most 64 labels."));
                }
                for (k, v) in m {
                    let v = v.as_str().unwrap_or("\u{0}");
                    if !valid_label(k, true) || !valid_label(v, false) {
                        return Err(GcpError::invalid(format!(
                            "Invalid label {k:?}: {v:?}: keys and values are lowercase letters, digits, '_' and '-', at most 63 characters, keys starting with a letter."
                        )));
                    }
                    labels.insert(k.clone(), v.to_string());
                }
            }
            v => {
                return Err(GcpError::invalid(format!(
                    "Invalid value at 'crypto_key.labels': {v}"
                )));
            }
        }
        let name = format!("{ring}/cryptoKeys/{id}");
        let check = |inner: &super::Inner| -> Result<(), GcpError> {
            let r = inner.rings.get(ring).ok_or_else(|| not_found_ring(ring))?;
            if r.keys.contains_key(id) {
                return Err(GcpError::exists(format!(
                    "CryptoKey {name} already exists."
                )));
            }
            if r.keys.len() >= MAX_PER_RING {
                return Err(GcpError::exhausted(
                    "The key ring holds its most crypto keys.",
                ));
            }
            Ok(())
        };
        check(&self.lock())?;
        let first = if skip {
            None
        } else {
            Some(import::generate(algorithm).map_err(GcpError::internal)?)
        };
        let mut key = CryptoKey {
            purpose,
            protection,
            algorithm: algorithm.name,
            create: ctx.now,
            import_only,
            labels,
            primary: None,
            versions: Vec::new(),
        };
        if let Some(material) = first {
            key.versions.push(Version {
                number: 1,
                algorithm: algorithm.name,
                protection,
                create: ctx.now,
                appears: ctx.now,
                import_job: None,
                ready: ctx.now,
                outcome: Ok(material),
                earlier: None,
            });
            if purpose == "ENCRYPT_DECRYPT" {
                key.primary = Some(1);
            }
        }
        let mut inner = self.lock();
        check(&inner)?;
        let v = key.json(&name, ctx);
        if let Some(r) = inner.rings.get_mut(ring) {
            r.keys.insert(id.to_string(), key);
        }
        Ok(v)
    }

    pub(super) fn get_crypto_key(
        &self,
        ring: &str,
        key: &str,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let mut inner = self.lock();
        let (k, name) = key_mut(&mut inner, ring, key)?;
        Ok(k.json(&name, ctx))
    }

    pub(super) fn import_version(
        &self,
        ring: &str,
        key: &str,
        body: &Value,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let key_name = format!("{ring}/cryptoKeys/{key}");
        let alg = read_algorithm(&body["algorithm"], "algorithm")?;
        let job_name = match field(body, "importJob", "import_job") {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Null => return Err(GcpError::invalid("import_job is required.")),
            Value::String(_) => return Err(GcpError::invalid("import_job is required.")),
            v => {
                return Err(GcpError::invalid(format!(
                    "Invalid value at 'import_job': {v}"
                )));
            }
        };
        let bytes = |camel: &str, snake: &str| -> Result<Option<Vec<u8>>, GcpError> {
            match field(body, camel, snake) {
                Value::Null => Ok(None),
                Value::String(s) if s.is_empty() => Ok(None),
                Value::String(s) => unb64(s).map(Some).ok_or_else(|| {
                    GcpError::invalid(format!(
                        "Invalid value at '{snake}' (TYPE_BYTES), base64 decoding failed"
                    ))
                }),
                v => Err(GcpError::invalid(format!(
                    "Invalid value at '{snake}' (TYPE_BYTES): {v}"
                ))),
            }
        };
        let wrapped = bytes("wrappedKey", "wrapped_key")?;
        let legacy = bytes("rsaAesWrappedKey", "rsa_aes_wrapped_key")?;
        let (wrapped, is_legacy) = match (wrapped, legacy) {
            (Some(w), None) => (w, false),
            (None, Some(w)) => (w, true),
            (None, None) => {
                return Err(GcpError::invalid(
                    "One of wrapped_key or rsa_aes_wrapped_key is required.",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(GcpError::invalid(
                    "Only one of wrapped_key and rsa_aes_wrapped_key may be set.",
                ));
            }
        };
        let target = match field(body, "cryptoKeyVersion", "crypto_key_version") {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            v => {
                return Err(GcpError::invalid(format!(
                    "Invalid value at 'crypto_key_version': {v}"
                )));
            }
        };
        let (job_ring, job_id) = job_name.split_once("/importJobs/").ok_or_else(|| {
            GcpError::invalid(format!(
                "Invalid import_job {job_name:?}: expected projects/*/locations/*/keyRings/*/importJobs/*."
            ))
        })?;
        if split_location(job_ring).is_none() || !valid_id(job_id) {
            return Err(GcpError::invalid(format!(
                "Invalid import_job {job_name:?}: expected projects/*/locations/*/keyRings/*/importJobs/*."
            )));
        }
        // the unwrap happens outside the lock; what it needs is read first
        let (job_key, method, job_protection) = {
            let mut inner = self.lock();
            let (k, _) = key_mut(&mut inner, ring, key)?;
            let key_protection = k.protection;
            let purpose = k.purpose;
            let r = inner
                .rings
                .get(job_ring)
                .ok_or_else(|| GcpError::not_found(format!("ImportJob {job_name} not found.")))?;
            let j = r
                .jobs
                .get(job_id)
                .ok_or_else(|| GcpError::not_found(format!("ImportJob {job_name} not found.")))?;
            if job_ring != ring {
                return Err(GcpError::invalid(format!(
                    "ImportJob {job_name} is not in the key ring of CryptoKey {key_name}."
                )));
            }
            let state = j.state(ctx.now);
            if state != "ACTIVE" {
                return Err(GcpError::precondition(format!(
                    "ImportJob {job_name} is not ACTIVE (it is {state})."
                )));
            }
            if j.protection != key_protection {
                return Err(GcpError::precondition(format!(
                    "ImportJob {job_name} has protection level {}, but CryptoKey {key_name} has protection level {key_protection}; they must be equal.",
                    j.protection
                )));
            }
            if alg.purpose != purpose {
                return Err(GcpError::invalid(format!(
                    "Algorithm {} is not compatible with the purpose {purpose} of CryptoKey {key_name}.",
                    alg.name
                )));
            }
            if is_legacy && !j.method.hybrid {
                return Err(GcpError::invalid(format!(
                    "rsa_aes_wrapped_key is for the RSA_OAEP_*_AES_256 import methods; ImportJob {job_name} uses {}.",
                    j.method_name
                )));
            }
            (j.key.clone(), j.method, j.protection)
        };
        let mut outcome = import::unwrap(&job_key, method, &wrapped).and_then(|m| {
            import::check_material(alg, &m)?;
            Ok(m)
        });
        let mut inner = self.lock();
        if let Some(reason) = inner.job_faults.import_fails.take() {
            outcome = Err(reason);
        }
        let delay = self.cfg.import_delay;
        let (k, _) = key_mut(&mut inner, ring, key)?;
        let version = match target {
            None => {
                if k.versions.len() >= MAX_VERSIONS {
                    return Err(GcpError::exhausted(
                        "The crypto key holds its most versions.",
                    ));
                }
                let number = k.versions.len() as u32 + 1;
                k.versions.push(Version {
                    number,
                    algorithm: alg.name,
                    protection: job_protection,
                    create: ctx.now,
                    appears: ctx.now + ctx.commit_after,
                    import_job: Some(job_name),
                    ready: ctx.now + delay,
                    outcome,
                    earlier: None,
                });
                k.versions.last()
            }
            Some(t) => {
                let n = t
                    .strip_prefix(&format!("{key_name}/cryptoKeyVersions/"))
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| {
                        GcpError::invalid(format!(
                            "crypto_key_version {t:?} is not a version of CryptoKey {key_name}."
                        ))
                    })?;
                let v = k
                    .versions
                    .iter_mut()
                    .find(|v| v.number == n && v.appears <= ctx.now)
                    .ok_or_else(|| {
                        GcpError::not_found(format!("CryptoKeyVersion {t} not found."))
                    })?;
                if v.import_job.is_none() {
                    return Err(GcpError::precondition(format!(
                        "CryptoKeyVersion {t} was not imported and cannot be reimported."
                    )));
                }
                let state = v.state(ctx.now);
                if !matches!(state, "DESTROYED" | "IMPORT_FAILED") {
                    return Err(GcpError::precondition(format!(
                        "CryptoKeyVersion {t} is {state}; only DESTROYED or IMPORT_FAILED versions can be reimported."
                    )));
                }
                if v.algorithm != alg.name {
                    return Err(GcpError::invalid(format!(
                        "The algorithm {} differs from CryptoKeyVersion {t}'s {}.",
                        alg.name, v.algorithm
                    )));
                }
                if let (Some(before), Ok(now)) = (&v.earlier, &outcome)
                    && !openssl::memcmp::eq(before, now)
                {
                    outcome = Err(format!(
                        "The key material differs from what CryptoKeyVersion {t} held before."
                    ));
                }
                v.import_job = Some(job_name);
                v.protection = job_protection;
                v.ready = ctx.now + delay;
                v.outcome = outcome;
                Some(&*v)
            }
        };
        match version {
            Some(v) => Ok(v.json(&key_name, ctx)),
            None => Err(GcpError::internal("the new version")),
        }
    }

    pub(super) fn list_versions(
        &self,
        ring: &str,
        key: &str,
        q: &ListQuery<'_>,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let filter = Filter::parse(q.filter)?;
        let mut inner = self.lock();
        let (k, name) = key_mut(&mut inner, ring, key)?;
        k.settle(ctx.now);
        let seen: Vec<&Version> = k
            .versions
            .iter()
            .filter(|v| v.appears <= ctx.now && filter.keeps(v, ctx.now))
            .collect();
        let (start, end, next) = page(&name, seen.len(), q.page_size, q.page_token)?;
        let list: Vec<Value> = seen[start..end]
            .iter()
            .map(|v| v.json(&name, ctx))
            .collect();
        let mut v = json!({"totalSize": seen.len()});
        if !list.is_empty() {
            v["cryptoKeyVersions"] = json!(list);
        }
        if let Some(t) = next {
            v["nextPageToken"] = json!(t);
        }
        Ok(v)
    }

    pub(super) fn get_version(
        &self,
        ring: &str,
        key: &str,
        version: &str,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let mut inner = self.lock();
        let (k, name) = key_mut(&mut inner, ring, key)?;
        k.settle(ctx.now);
        Ok(find_version(k, &name, version, ctx.now)?.json(&name, ctx))
    }

    pub(super) fn get_public_key(
        &self,
        ring: &str,
        key: &str,
        version: &str,
        ctx: Ctx,
    ) -> Result<Value, GcpError> {
        let mut inner = self.lock();
        let (k, name) = key_mut(&mut inner, ring, key)?;
        let v = find_version(k, &name, version, ctx.now)?;
        let vname = format!("{name}/cryptoKeyVersions/{version}");
        let alg = protocol::algorithm(v.algorithm);
        if matches!(alg.material, Material::Raw(_)) {
            return Err(GcpError::precondition(format!(
                "CryptoKeyVersion {vname} has algorithm {}, which has no public key.",
                alg.name
            )));
        }
        let state = v.state(ctx.now);
        let material = match (&v.outcome, state) {
            (Ok(m), "ENABLED") => m,
            _ => {
                return Err(GcpError::precondition(format!(
                    "CryptoKeyVersion {vname} is not enabled, current state is: {state}."
                )));
            }
        };
        let pem = import::public_pem(material)
            .ok_or_else(|| GcpError::internal("the version's public key"))?;
        Ok(json!({
            "pem": pem,
            "algorithm": write_algorithm(v.algorithm, ctx.ints),
            "pemCrc32c": crc32c(pem.as_bytes()).to_string(),
            "name": vname,
            "protectionLevel": PROTECTION_LEVEL.write(v.protection, ctx.ints),
        }))
    }

    /// What a version was imported as or generated with (the test oracle).
    pub(super) fn material(&self, version_name: &str) -> Option<Zeroizing<Vec<u8>>> {
        let (key_name, n) = version_name.split_once("/cryptoKeyVersions/")?;
        let (ring, key) = key_name.split_once("/cryptoKeys/")?;
        let inner = self.lock();
        let k = inner.rings.get(ring)?.keys.get(key)?;
        let v = k.versions.iter().find(|v| v.number.to_string() == n)?;
        v.outcome.as_ref().ok().cloned()
    }
}

fn key_mut<'a>(
    inner: &'a mut super::Inner,
    ring: &str,
    key: &str,
) -> Result<(&'a mut CryptoKey, String), GcpError> {
    let r = inner
        .rings
        .get_mut(ring)
        .ok_or_else(|| not_found_ring(ring))?;
    let name = format!("{ring}/cryptoKeys/{key}");
    match r.keys.get_mut(key) {
        Some(k) => Ok((k, name)),
        None => Err(GcpError::not_found(format!("CryptoKey {name} not found."))),
    }
}

fn find_version<'a>(
    k: &'a CryptoKey,
    key_name: &str,
    version: &str,
    now: SystemTime,
) -> Result<&'a Version, GcpError> {
    k.versions
        .iter()
        .find(|v| v.number.to_string() == version && v.appears <= now)
        .ok_or_else(|| {
            GcpError::not_found(format!(
                "CryptoKeyVersion {key_name}/cryptoKeyVersions/{version} not found."
            ))
        })
}

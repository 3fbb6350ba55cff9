//! OCI's paths and what each does to the vault: GetWrappingKey, ImportKeyVersion, ImportKey,
//! GetKey, GetKeyVersion, ListKeyVersions.

#[allow(unused_imports)]
use super::*;

impl Emulator {
    pub(super) fn route(&self, req: &HttpRequest<'_>, entry: &mut LogEntry) -> Reply {
        let key_id = match auth::authenticate(
            &self.api_keys,
            &auth::Incoming {
                method: req.method,
                target: req.target,
                header: req.header,
                body: req.body,
            },
            SystemTime::now(),
        ) {
            Ok(k) => k,
            Err(why) => {
                tracing::info!(path = %req.path, "401: {why}");
                return Reply::error(
                    401,
                    "NotAuthenticated",
                    &format!(
                        "The required information to complete authentication was not provided or was incorrect: {why}"
                    ),
                );
            }
        };
        entry.key_id = Some(key_id);
        let Some(path) = req.path.strip_prefix(API) else {
            return Reply::error(
                404,
                "NotAuthorizedOrNotFound",
                "unknown API version or path",
            );
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method, segs.as_slice()) {
            ("GET", ["wrappingKeys"]) => Reply::json(
                200,
                &json!({
                    "compartmentId": COMPARTMENT_ID,
                    "id": WRAPPING_KEY_ID,
                    "lifecycleState": "ENABLED",
                    "publicKey": self.wrapping_pem,
                    "timeCreated": rfc3339(self.wrapping_created),
                    "vaultId": VAULT_ID,
                }),
            ),
            ("POST", ["keys", "import"]) => self.idempotent(req, entry, |s| s.import_key(req.body)),
            ("POST", ["keys", key, "keyVersions", "import"]) => {
                self.idempotent(req, entry, |s| s.import_key_version(key, req.body))
            }
            ("GET", ["keys", key]) => {
                let inner = self.lock();
                match inner.keys.get(*key) {
                    Some(k) => Reply::json(200, &self.key_json(&inner, k)),
                    None => not_found(),
                }
            }
            ("GET", ["keys", key, "keyVersions"]) => self.list_versions(key, req.query),
            ("GET", ["keys", key, "keyVersions", version]) => {
                let inner = self.lock();
                match inner.versions.get(*version).filter(|v| v.key_id == *key) {
                    Some(v) => Reply::json(200, &self.version_json(v)),
                    None => not_found(),
                }
            }
            (_, ["keys", ..] | ["wrappingKeys"]) => Reply::error(
                405,
                "MethodNotAllowed",
                "method not allowed on this resource",
            ),
            _ => not_found(),
        }
    }

    pub(super) fn new_version(&self, key_id: &str, material: Zeroizing<Vec<u8>>) -> EmuVersion {
        EmuVersion {
            id: format!("ocid1.keyversion.oc1.emulator.{}", random_suffix()),
            key_id: key_id.to_string(),
            time_created: SystemTime::now(),
            enabled_at: Instant::now() + self.enable_after,
            origin: "EXTERNAL",
            material,
        }
    }

    pub(super) fn import_key_version(&self, key_id: &str, body: &[u8]) -> (Reply, Option<String>) {
        let details: ImportKeyVersionDetails = match parse_body(body) {
            Ok(d) => d,
            Err(r) => return (r, None),
        };
        let shape = {
            let inner = self.lock();
            let Some(k) = inner.keys.get(key_id) else {
                return (not_found(), None);
            };
            if self.key_state(&inner, k) != "ENABLED" {
                return (
                    Reply::error(
                        409,
                        "IncorrectState",
                        "the key must be ENABLED to be rotated",
                    ),
                    None,
                );
            }
            (k.algorithm.clone(), k.length)
        };
        let material = match self.material(&details.wrapped_import_key, (&shape.0, shape.1)) {
            Ok(m) => m,
            Err(r) => return (r, None),
        };
        let v = self.new_version(key_id, material);
        let reply = Reply::json(200, &self.version_json(&v));
        let id = v.id.clone();
        let mut inner = self.lock();
        if let Some(k) = inner.keys.get_mut(key_id) {
            k.versions.push(id.clone());
        }
        inner.versions.insert(id.clone(), v);
        (reply, Some(id))
    }

    pub(super) fn import_key(&self, body: &[u8]) -> (Reply, Option<String>) {
        let d: ImportKeyDetails = match parse_body(body) {
            Ok(d) => d,
            Err(r) => return (r, None),
        };
        let alg = d.key_shape.algorithm.as_str();
        if alg == "ECDSA" {
            return (
                Reply::error(400, "InvalidParameter", "ECDSA keys cannot be imported"),
                None,
            );
        }
        if !importable(alg, d.key_shape.length) {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "keyShape {alg}/{} cannot be imported: AES 16/24/32 or RSA 256/384/512 bytes",
                        d.key_shape.length
                    ),
                ),
                None,
            );
        }
        let protection_mode = d.protection_mode.unwrap_or_else(|| "HSM".into());
        if !matches!(protection_mode.as_str(), "HSM" | "SOFTWARE") {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    "protectionMode must be HSM or SOFTWARE for an import",
                ),
                None,
            );
        }
        if d.display_name.is_empty() || d.display_name.len() > 255 {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    "displayName must be 1 to 255 characters",
                ),
                None,
            );
        }
        if !d.compartment_id.starts_with("ocid1.") {
            return (
                Reply::error(400, "InvalidParameter", "compartmentId is not an OCID"),
                None,
            );
        }
        let material = match self.material(&d.wrapped_import_key, (alg, d.key_shape.length)) {
            Ok(m) => m,
            Err(r) => return (r, None),
        };
        let id = format!("ocid1.key.oc1.emulator.{}", random_suffix());
        let v = self.new_version(&id, material);
        let key = EmuKey {
            id: id.clone(),
            display_name: d.display_name,
            algorithm: alg.to_string(),
            length: d.key_shape.length,
            protection_mode,
            time_created: SystemTime::now(),
            freeform_tags: d.freeform_tags.unwrap_or_else(|| json!({})),
            defined_tags: d.defined_tags.unwrap_or_else(|| json!({})),
            versions: vec![v.id.clone()],
        };
        let mut inner = self.lock();
        inner.versions.insert(v.id.clone(), v);
        let reply = Reply::json(200, &self.key_json(&inner, &key));
        inner.keys.insert(id.clone(), key);
        (reply, Some(id))
    }

    pub(super) fn material(
        &self,
        w: &WrappedImportKey,
        shape: (&str, usize),
    ) -> Result<Zeroizing<Vec<u8>>, Reply> {
        let bytes = openssl::base64::decode_block(&w.key_material)
            .map(Zeroizing::new)
            .map_err(|_| Reply::error(400, "InvalidParameter", "keyMaterial is not base64"))?;
        unwrap_material(&self.wrapping, &w.wrapping_algorithm, &bytes, shape).map_err(|why| {
            Reply::error(
                400,
                "InvalidParameter",
                &format!("Invalid key material: {why}"),
            )
        })
    }

    pub(super) fn list_versions(&self, key_id: &str, query: &str) -> Reply {
        let inner = self.lock();
        let Some(k) = inner.keys.get(key_id) else {
            return not_found();
        };
        let mut limit = 100usize;
        let mut page = 0usize;
        let mut desc = false;
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            match name {
                "limit" => limit = value.parse().unwrap_or(100).clamp(1, 1000),
                "page" => page = value.parse().unwrap_or(0),
                "sortOrder" => desc = value == "DESC",
                _ => {}
            }
        }
        let mut ids: Vec<&String> = k.versions.iter().collect();
        if desc {
            ids.reverse();
        }
        let items: Vec<Value> = ids
            .iter()
            .skip(page)
            .take(limit)
            .filter_map(|id| inner.versions.get(*id))
            .map(|v| self.version_json(v))
            .collect();
        let mut reply = Reply::json(200, &Value::Array(items));
        if page + limit < ids.len() {
            reply
                .headers
                .push(("opc-next-page", (page + limit).to_string()));
        }
        reply
    }
}

//! What makes a journal record the daemon's own: HMAC-SHA256 over everything a replay or a
//! re-send relies on (the retry token and the request it was made for, the state, the body,
//! how the body was made, the recorded answer), made with a key the database never sees.
//! By default that key is a generic secret key on the token (`CKM_SHA256_HMAC`, found by
//! label, never extractable), so every replica sharing the token shares it; where the token
//! cannot hold one, a secret file. A record whose MAC does not match was written by someone
//! else (planted, edited, or copied under another token): it is never sent or replayed
//! (docs/ARCHITECTURE.md, "The import journal"; SECURITY.md says what a database writer can
//! still do).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use super::{Entry, Failure, JournalError, Made, Record, State};
use crate::hardening::Locked;
use crate::hsm::Hsm;

/// Fewest bytes of key a record key may have (the HMAC-SHA256 output length).
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// Most bytes read from `journal.mac_key_file`.
const MAX_FILE_BYTES: usize = 1024;

/// The key that authenticates journal records.
pub enum RecordKey {
    /// A generic secret key on the token, used through `CKM_SHA256_HMAC`. Weak: the journal
    /// must not keep the module open after the daemon has closed it.
    Token { hsm: Weak<Hsm>, label: String },
    /// A secret read once from `journal.mac_key_file`, in a locked page.
    File { secret: Locked, path: PathBuf },
}

impl RecordKey {
    /// The token's key labelled `label`; one MAC is made to prove it is there and usable.
    pub(crate) fn token(hsm: &Arc<Hsm>, label: &str) -> Result<RecordKey, JournalError> {
        let key = RecordKey::Token {
            hsm: Arc::downgrade(hsm),
            label: label.to_string(),
        };
        hsm.record_mac(label, PROBE).map_err(|e| {
            let hint = match e {
                crate::hsm::HsmError::KeyNotFound(_) => {
                    " (create it once per token: README, \"The import journal\"; or set journal.mac_key_file)"
                }
                _ => "",
            };
            JournalError::NoKey(format!("journal.mac_key_label {label:?}: {e}{hint}"))
        })?;
        Ok(key)
    }

    /// The secret in `path`: a private file (owner, mode checked on the descriptor) of at
    /// least [`MIN_KEY_BYTES`] bytes, all of which are the key.
    pub(crate) fn file(path: &Path) -> Result<RecordKey, JournalError> {
        use std::io::Read;
        let at = |e: &dyn std::fmt::Display| {
            JournalError::NoKey(format!("journal.mac_key_file {}: {e}", path.display()))
        };
        let mut f =
            crate::hardening::open_private(path, "journal.mac_key_file").map_err(|e| at(&e))?;
        let mut secret = Locked::new(MAX_FILE_BYTES + 1).map_err(|e| at(&e))?;
        let mut n = 0;
        loop {
            let buf = &mut secret.as_mut_slice()[n..];
            if buf.is_empty() {
                return Err(at(&format!("longer than {MAX_FILE_BYTES} bytes")));
            }
            match f.read(buf) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(at(&e)),
            }
        }
        if n < MIN_KEY_BYTES {
            return Err(at(&format!(
                "{n} bytes; at least {MIN_KEY_BYTES} random bytes are needed (e.g. head -c 32 /dev/urandom)"
            )));
        }
        let mut exact = Locked::new(n).map_err(|e| at(&e))?;
        exact
            .as_mut_slice()
            .copy_from_slice(&secret.as_slice()[..n]);
        Ok(RecordKey::File {
            secret: exact,
            path: path.to_path_buf(),
        })
    }

    /// Where the key is, for logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            RecordKey::Token { label, .. } => format!("the token's secret key {label:?}"),
            RecordKey::File { path, .. } => format!("the secret in {}", path.display()),
        }
    }

    /// HMAC-SHA256 of `data`.
    pub(crate) async fn mac(&self, data: Vec<u8>) -> Result<[u8; 32], JournalError> {
        match self {
            RecordKey::Token { hsm, label } => {
                let hsm = hsm.upgrade().ok_or_else(|| {
                    JournalError::Unavailable("the HSM module has been closed".into())
                })?;
                let label = label.clone();
                tokio::task::spawn_blocking(move || hsm.record_mac(&label, &data))
                    .await
                    .map_err(|e| JournalError::Unavailable(format!("record MAC: {e}")))?
                    .map_err(|e| {
                        JournalError::Unavailable(format!(
                            "the record MAC could not be made in the HSM: {e}"
                        ))
                    })
            }
            RecordKey::File { secret, .. } => {
                software_mac(secret.as_slice(), &data).map_err(JournalError::Unavailable)
            }
        }
    }
}

/// What a MAC is first made of at start, to prove the key works.
const PROBE: &[u8] = b"hsm-bridge journal record key probe";

/// HMAC-SHA256 by OpenSSL.
pub(crate) fn software_mac(key: &[u8], data: &[u8]) -> Result<[u8; 32], String> {
    let pkey = openssl::pkey::PKey::hmac(key).map_err(|e| format!("record MAC: {e}"))?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)
        .map_err(|e| format!("record MAC: {e}"))?;
    let mut out = [0u8; 32];
    signer
        .update(data)
        .and_then(|()| signer.sign(&mut out))
        .map_err(|e| format!("record MAC: {e}"))?;
    Ok(out)
}

/// A record's content as its MAC covers it: everything but the lease and the times.
pub(crate) struct Sealed<'a> {
    pub entry: &'a Entry,
    pub state: State,
    pub body: Option<&'a [u8]>,
    pub made: &'a Made,
    pub created_id: Option<&'a str>,
    pub answer: Option<&'a str>,
    pub opc_request_id: Option<&'a str>,
    pub failure: Option<&'a Failure>,
}

/// Versions the encoding below: a record sealed under another layout never verifies.
const DOMAIN: &[u8] = b"hsm-bridge journal record v1\0";

impl<'a> Sealed<'a> {
    /// A record with no answer recorded yet (claimed, prepared, or before an outcome).
    pub(crate) fn unanswered(
        entry: &'a Entry,
        state: State,
        body: Option<&'a [u8]>,
        made: &'a Made,
    ) -> Sealed<'a> {
        Sealed {
            entry,
            state,
            body,
            made,
            created_id: None,
            answer: None,
            opc_request_id: None,
            failure: None,
        }
    }

    /// The bytes the MAC is made over: a domain string, then each field as a presence byte
    /// and, when present, its length (4 bytes, big-endian) and bytes. No two different
    /// records encode alike.
    pub(crate) fn encode(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
            match v {
                None => out.push(0),
                Some(b) => {
                    out.push(1);
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        fn s(v: &Option<String>) -> Option<&[u8]> {
            v.as_deref().map(str::as_bytes)
        }
        let e = self.entry;
        let mut out = Vec::with_capacity(512 + self.body.map_or(0, <[u8]>::len));
        out.extend_from_slice(DOMAIN);
        for v in [
            Some(e.token.as_bytes()),
            Some(e.caller.as_bytes()),
            s(&e.idempotency_key),
            Some(e.operation.as_bytes()),
            Some(e.target.as_bytes()),
            Some(e.endpoint.as_bytes()),
            Some(e.algorithm.as_bytes()),
            Some(&e.digest[..]),
            Some(self.state.as_str().as_bytes()),
            self.body,
            s(&self.made.source_key_label),
            s(&self.made.source_key_id_hex),
            s(&self.made.mode),
            s(&self.made.wrapping_key_sha256),
            self.created_id.map(str::as_bytes),
            self.answer.map(str::as_bytes),
            self.opc_request_id.map(str::as_bytes),
        ] {
            field(&mut out, v);
        }
        match self.failure {
            None => field(&mut out, None),
            Some(f) => {
                field(&mut out, Some(&f.status.to_be_bytes()));
                field(&mut out, Some(f.code.as_bytes()));
                field(&mut out, Some(f.message.as_bytes()));
            }
        }
        out
    }
}

/// The request part of a stored record, as a claim would have written it.
pub(crate) fn entry_of(r: &Record) -> Result<Entry, JournalError> {
    Ok(Entry {
        token: r.token.clone(),
        caller: r.caller.clone(),
        idempotency_key: r.idempotency_key.clone(),
        operation: r.operation.clone(),
        target: r.target.clone(),
        endpoint: r.endpoint.clone(),
        algorithm: r.algorithm.clone(),
        // A digest of another length was never written by a claim: it cannot verify.
        digest: r
            .digest
            .as_slice()
            .try_into()
            .map_err(|_| JournalError::Forged {
                token: r.token.clone(),
                why: format!("its request digest is {} bytes, not 32", r.digest.len()),
            })?,
    })
}

/// What a stored record's MAC must be made over.
pub(crate) fn sealed_record<'a>(r: &'a Record, entry: &'a Entry) -> Sealed<'a> {
    Sealed {
        entry,
        state: r.state,
        body: r.body.as_deref().map(|b| b.as_slice()),
        made: &r.made,
        created_id: r.created_id.as_deref(),
        answer: r.answer.as_deref(),
        opc_request_id: r.opc_request_id.as_deref(),
        failure: r.failure.as_ref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        crate::journal::tests::entry("t", 7)
    }

    #[test]
    fn every_field_changes_the_encoding() {
        let e = entry();
        let made = Made::default();
        let f = Failure {
            status: 400,
            code: "c".into(),
            message: "m".into(),
        };
        let base = sealed(&e, &made, &f).encode();
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.clone());
        // Each variation of one field gives an encoding of its own.
        let made_l = Made {
            source_key_label: Some("x".into()),
            ..Made::default()
        };
        let mut e2 = e.clone();
        e2.idempotency_key = None;
        let mut e3 = e.clone();
        e3.digest = [8; 32];
        let f2 = Failure {
            status: 401,
            ..f.clone()
        };
        let encodings = [
            Sealed {
                state: State::Unknown,
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                body: Some(b"bodz"),
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                body: None,
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                made: &made_l,
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                created_id: Some(""),
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                answer: Some("{}"),
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                opc_request_id: None,
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                failure: Some(&f2),
                ..sealed(&e, &made, &f)
            }
            .encode(),
            Sealed {
                failure: None,
                ..sealed(&e, &made, &f)
            }
            .encode(),
            sealed(&e2, &made, &f).encode(),
            sealed(&e3, &made, &f).encode(),
        ];
        for enc in encodings {
            assert!(seen.insert(enc), "two records encode alike");
        }
        // A field's bytes cannot slide into its neighbour.
        let mut a = e.clone();
        a.caller = "ab".into();
        a.idempotency_key = Some("c".into());
        let mut b = e.clone();
        b.caller = "a".into();
        b.idempotency_key = Some("bc".into());
        assert_ne!(
            sealed(&a, &made, &f).encode(),
            sealed(&b, &made, &f).encode()
        );
    }

    fn sealed<'a>(e: &'a Entry, made: &'a Made, f: &'a Failure) -> Sealed<'a> {
        Sealed {
            entry: e,
            state: State::Failed,
            body: Some(b"body"),
            made,
            created_id: None,
            answer: None,
            opc_request_id: Some("r"),
            failure: Some(f),
        }
    }

    #[test]
    fn software_mac_is_hmac_sha256() {
        // RFC 4231, test case 2.
        let mac = software_mac(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            crate::wrap::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_key_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 16]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = RecordKey::file(&p).err().unwrap().to_string();
        assert!(e.contains("at least 32"), "{e}");
        std::fs::write(&p, [1u8; 32]).unwrap();
        assert!(RecordKey::file(&p).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RecordKey::file(&p).is_err());
    }
}

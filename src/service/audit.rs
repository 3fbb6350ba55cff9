//! The audit log: one JSON line per export attempt (WrapKey, ImportKeyVersion, ImportKey),
//! allowed or refused, written before the answer goes out. Never key material.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

enum Sink {
    File(File),
    Stderr,
}

pub struct Audit {
    sink: Mutex<Sink>,
}

/// One export attempt.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub time: String,
    pub request_id: String,
    /// The caller's configured name and certificate CN, or why it is unknown.
    pub caller: String,
    pub operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_id_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapping_key_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_key_id: Option<String>,
    /// The vault management endpoint the import went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_endpoint: Option<String>,
    /// OCI's id of the final answer, when OCI answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opc_request_id: Option<String>,
    /// HTTP attempts the import took (retries included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_attempts: Option<u32>,
    /// The key version (ImportKeyVersion) or key (ImportKey) OCI created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_created_id: Option<String>,
    /// The body sent was the one first sent for this idempotency key (no new wrap).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// "allowed" (material returned), "refused" or "failed".
    pub outcome: &'static str,
    /// The gRPC status code name.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Audit {
    /// Opens `path` for appending (created with mode 0600), or stderr for "-".
    pub fn open(path: &Path) -> Result<Audit, String> {
        let sink = if path == Path::new("-") {
            Sink::Stderr
        } else {
            Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("audit log {}: {e}", path.display()))?,
            )
        };
        Ok(Audit {
            sink: Mutex::new(sink),
        })
    }

    /// Writes one record as a JSON line and flushes it to the kernel. An error here must
    /// stop the export (fail closed).
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match &mut *self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::File(f) => {
                f.write_all(&line)?;
                f.flush()
            }
            Sink::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(&line)?;
                e.flush()
            }
        }
    }
}

pub use crate::time::now_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = Audit::open(&path).unwrap();
        let r = Record {
            request_id: "r1".into(),
            operation: "WrapKey",
            outcome: "refused",
            code: "PERMISSION_DENIED",
            ..Record::default()
        };
        a.write(&r).unwrap();
        a.write(&r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["code"], "PERMISSION_DENIED");
        assert!(v.get("wrapping_key_sha256").is_none());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

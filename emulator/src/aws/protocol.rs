//! AWS JSON 1.1 as KMS speaks it: answers with `x-amzn-RequestId`, errors as
//! `{"__type","message"}`, and request members read with the service's checks: a member of
//! the wrong JSON type is a `SerializationException`, a missing, out-of-range or unknown
//! enum value a `ValidationException` worded as AWS words it ("1 validation error
//! detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null").
//! Blobs travel as base64 strings and timestamps as epoch seconds (JSON numbers).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::state::Reply;

/// What KMS sends and expects as the content type.
pub(crate) const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A refused request: its HTTP status (400 unless a fault says otherwise), the `__type`
/// and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// A 400 with this `__type`.
    pub(crate) fn new(code: &str, message: impl Into<String>) -> AwsError {
        AwsError {
            status: 400,
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> AwsError {
        AwsError::new("ValidationException", message)
    }

    /// A 500 `KMSInternalException`: the emulator itself failed.
    pub(crate) fn internal(message: impl Into<String>) -> AwsError {
        AwsError {
            status: 500,
            ..AwsError::new("KMSInternalException", message)
        }
    }

    pub(crate) fn reply(&self) -> Reply {
        json_reply(
            self.status,
            &json!({ "__type": self.code, "message": self.message }),
        )
    }
}

pub(crate) fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: CONTENT_TYPE,
        headers: Vec::new(),
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// `t` as KMS sends timestamps: epoch seconds, with milliseconds.
pub(crate) fn epoch(t: SystemTime) -> Value {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64;
    json!(ms / 1000.0)
}

/// A random version-4 UUID (key ids, request ids; Azure's tenant and client ids in tests).
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hsm_bridge::wrap::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A request body's members, read one by one; constraint violations are collected and
/// reported together by [`Input::finish`], as AWS does.
pub(crate) struct Input<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<String>,
}

/// The member's name as AWS's validation messages spell it (`KeyId` -> `keyId`).
fn path(name: &str) -> String {
    let mut c = name.chars();
    c.next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn wrong_type(name: &str, expected: &str) -> AwsError {
    AwsError::new(
        "SerializationException",
        format!("{name}: expected {expected}"),
    )
}

impl<'a> Input<'a> {
    /// The body as a JSON object (an empty body is `{}`, as botocore sends for no members).
    pub(crate) fn parse(body: &[u8]) -> Result<Map<String, Value>, AwsError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(AwsError::new(
                "SerializationException",
                "Start of structure or map expected",
            )),
            Err(_) => Err(AwsError::new(
                "SerializationException",
                "the body is not valid JSON",
            )),
        }
    }

    pub(crate) fn new(body: &'a Map<String, Value>) -> Input<'a> {
        Input {
            body,
            errors: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.body.get(name).filter(|v| !v.is_null())
    }

    fn fail(&mut self, name: &str, value: &str, constraint: &str) {
        self.errors.push(format!(
            "Value {value} at '{}' failed to satisfy constraint: {constraint}",
            path(name)
        ));
    }

    fn missing(&mut self, name: &str, required: bool) {
        if required {
            self.fail(name, "null", "Member must not be null");
        }
    }

    /// A string member of `min..=max` characters.
    pub(crate) fn string(
        &mut self,
        name: &str,
        (min, max): (usize, usize),
        required: bool,
    ) -> Result<Option<&'a str>, AwsError> {
        let Some(v) = self.get(name) else {
            self.missing(name, required);
            return Ok(None);
        };
        let s = v.as_str().ok_or_else(|| wrong_type(name, "a string"))?;
        let n = s.chars().count();
        if n < min {
            self.fail(
                name,
                &format!("'{s}'"),
                &format!("Member must have length greater than or equal to {min}"),
            );
        } else if n > max {
            self.fail(
                name,
                &format!("'{s}'"),
                &format!("Member must have length less than or equal to {max}"),
            );
        }
        Ok(Some(s))
    }

    /// The `KeyId` member every key operation requires (a key id or key ARN).
    pub(crate) fn key_id(&mut self) -> Result<&'a str, AwsError> {
        Ok(self.string("KeyId", (1, 2048), true)?.unwrap_or_default())
    }

    /// A string member that must match `ok` (described by `pattern` in the message).
    pub(crate) fn pattern(
        &mut self,
        name: &str,
        value: Option<&str>,
        pattern: &str,
        ok: impl Fn(&str) -> bool,
    ) {
        if let Some(s) = value.filter(|s| !ok(s)) {
            self.fail(
                name,
                &format!("'{s}'"),
                &format!("Member must satisfy regular expression pattern: {pattern}"),
            );
        }
    }

    /// An enum member: one of `allowed` (the model's whole value set).
    pub(crate) fn one_of(
        &mut self,
        name: &str,
        allowed: &[&'static str],
        required: bool,
    ) -> Result<Option<&'static str>, AwsError> {
        let Some(v) = self.get(name) else {
            self.missing(name, required);
            return Ok(None);
        };
        let s = v.as_str().ok_or_else(|| wrong_type(name, "a string"))?;
        match allowed.iter().find(|a| **a == s) {
            Some(a) => Ok(Some(a)),
            None => {
                self.fail(
                    name,
                    &format!("'{s}'"),
                    &format!(
                        "Member must satisfy enum value set: [{}]",
                        allowed.join(", ")
                    ),
                );
                Ok(None)
            }
        }
    }

    /// A blob member (base64 in JSON) of `min..=max` bytes.
    pub(crate) fn blob(
        &mut self,
        name: &str,
        (min, max): (usize, usize),
        required: bool,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, AwsError> {
        let Some(v) = self.get(name) else {
            self.missing(name, required);
            return Ok(None);
        };
        let s = v
            .as_str()
            .ok_or_else(|| wrong_type(name, "a base64 string"))?;
        let bytes = if s.is_empty() {
            Vec::new()
        } else {
            openssl::base64::decode_block(s).map_err(|_| {
                AwsError::new(
                    "SerializationException",
                    format!("{name}: not valid base64"),
                )
            })?
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        if bytes.len() < min {
            self.fail(
                name,
                "java.nio.HeapByteBuffer",
                &format!("Member must have length greater than or equal to {min}"),
            );
        } else if bytes.len() > max {
            self.fail(
                name,
                "java.nio.HeapByteBuffer",
                &format!("Member must have length less than or equal to {max}"),
            );
        }
        Ok(Some(bytes))
    }

    /// A timestamp member: epoch seconds, integer or fractional.
    pub(crate) fn timestamp(&mut self, name: &str) -> Result<Option<SystemTime>, AwsError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let secs = v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
            .ok_or_else(|| wrong_type(name, "a timestamp in epoch seconds"))?;
        Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(secs)))
    }

    /// An integer member in `min..=max`.
    pub(crate) fn int(
        &mut self,
        name: &str,
        (min, max): (i64, i64),
    ) -> Result<Option<i64>, AwsError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let n = v.as_i64().ok_or_else(|| wrong_type(name, "an integer"))?;
        if n < min {
            self.fail(
                name,
                &n.to_string(),
                &format!("Member must have value greater than or equal to {min}"),
            );
        } else if n > max {
            self.fail(
                name,
                &n.to_string(),
                &format!("Member must have value less than or equal to {max}"),
            );
        }
        Ok(Some(n))
    }

    pub(crate) fn bool(&mut self, name: &str) -> Result<Option<bool>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "a boolean")),
        }
    }

    /// A list member of JSON objects, at most `max` long.
    pub(crate) fn objects(
        &mut self,
        name: &str,
        max: usize,
    ) -> Result<Vec<&'a Map<String, Value>>, AwsError> {
        let Some(v) = self.get(name) else {
            return Ok(Vec::new());
        };
        let list = v.as_array().ok_or_else(|| wrong_type(name, "a list"))?;
        if list.len() > max {
            self.fail(
                name,
                "[...]",
                &format!("Member must have length less than or equal to {max}"),
            );
        }
        list.iter()
            .map(|o| {
                o.as_object()
                    .ok_or_else(|| wrong_type(name, "a list of structures"))
            })
            .collect()
    }

    /// Merges the violations of a nested structure's members, under `prefix`.
    pub(crate) fn nested(&mut self, prefix: &str, inner: Input<'_>) {
        for e in inner.errors {
            self.errors
                .push(e.replacen(" at '", &format!(" at '{}.", path(prefix)), 1));
        }
    }

    /// The collected violations, as one `ValidationException`.
    pub(crate) fn finish(self) -> Result<(), AwsError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(AwsError::validation(format!(
                "1 validation error detected: {}",
                self.errors[0]
            ))),
            n => Err(AwsError::validation(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            ))),
        }
    }
}

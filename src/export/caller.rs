//! Who asks for an export, and what that caller may do: its operations, the keys it may
//! touch (label patterns), the endpoints and compartments its imports may reach. The daemon
//! identifies callers (service/auth.rs); the command line is the operator, who may do
//! everything the config allows.

use std::sync::Arc;

use crate::config::Operation;
use crate::hsm::{HsmError, KeyDenied, KeyInfo, KeyRef};
use crate::policy::{any_match, glob_match};

/// An identified caller and what it may do. Shared: the daemon's authenticator
/// (service/auth.rs) makes one per `[[server.clients]]` entry when the settings are loaded, so identifying the caller of a
/// call hands out a reference instead of copying its entry (BENCHMARKS.md, "The daemon's
/// own CPU per call").
#[derive(Debug, Clone)]
pub(crate) struct Caller(Arc<Identity>);

/// What a [`Caller`] is: its entry's name, how it was recognised, and its grants.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The `[[server.clients]]` name: what idempotency keys are scoped to.
    pub name: String,
    /// For audit: "name (CN=...)", "name (uid N)" or "name (loopback)".
    pub display: String,
    pub operations: Vec<Operation>,
    /// Label globs of keys this caller may touch.
    pub keys: Vec<String>,
    /// Endpoint globs this caller may import into (`None`: every allowed endpoint).
    pub endpoints: Option<Vec<String>>,
    /// Compartment OCID globs its imports may land in (`None`: any).
    pub compartments: Option<Vec<String>>,
    /// `[destinations.NAME]` names it may import into (`None`: every one).
    pub destinations: Option<Vec<String>>,
}

impl std::ops::Deref for Caller {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl Identity {
    pub(crate) fn may(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    pub(crate) fn may_touch(&self, label: &str) -> bool {
        any_match(&self.keys, label)
    }

    /// Whether the normalised endpoint `base` is one this caller may import into.
    pub(crate) fn may_send_to(&self, base: &str) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|p| crate::oci::endpoint::allowed_by(p, base))
    }

    pub(crate) fn may_use_compartment(&self, ocid: &str) -> bool {
        self.compartments
            .as_ref()
            .is_none_or(|p| p.iter().any(|p| glob_match(p, ocid)))
    }

    /// Whether this caller may import into the destination `name`.
    pub(crate) fn may_use_destination(&self, name: &str) -> bool {
        self.destinations
            .as_ref()
            .is_none_or(|d| d.iter().any(|d| d == name))
    }
}

impl Caller {
    pub(crate) fn new(identity: Identity) -> Caller {
        Caller(Arc::new(identity))
    }

    /// The operator at the command line, named `name` (idempotency keys are scoped to it):
    /// every operation, every key `policy.exportable` lets out, every configured endpoint
    /// and compartment.
    pub(crate) fn operator(name: &str) -> Caller {
        Caller::new(Identity {
            name: name.to_string(),
            display: name.to_string(),
            operations: vec![
                Operation::List,
                Operation::Wrap,
                Operation::Import,
                Operation::Rotate,
            ],
            keys: vec!["*".into()],
            endpoints: None,
            compartments: None,
            destinations: None,
        })
    }

    /// Whether this caller is granted the operation an export is (`server.clients`).
    pub(crate) fn may_export(&self, operation: crate::audit::Operation) -> bool {
        use crate::audit::Operation as Export;
        self.may(match operation {
            Export::WrapKey => Operation::Wrap,
            Export::ImportKeyVersion | Export::ImportKey | Export::Import => Operation::Import,
            Export::RotateKey => Operation::Rotate,
        })
    }

    /// Why this caller may not touch the key labelled `label`.
    pub(crate) fn may_not_touch(&self, label: &str) -> KeyDenied {
        KeyDenied {
            caller: self.display.clone(),
            label: label.to_string(),
            patterns: self.keys.clone(),
        }
    }

    /// The key found, if this caller's patterns allow it.
    pub(crate) fn permit(&self, info: &KeyInfo) -> Result<(), KeyDenied> {
        if self.may_touch(&info.label) {
            Ok(())
        } else {
            Err(self.may_not_touch(&info.label))
        }
    }
}

/// A key named by id only (no label) that is missing, or that the caller may not touch,
/// gets one answer that names no key: probing ids learns neither labels nor which ids
/// exist.
pub(crate) fn hide_by_id(key: &KeyRef, e: HsmError) -> HsmError {
    match (key.label_named(), key.id_named(), &e) {
        (None, Some(id), HsmError::KeyNotFound(_) | HsmError::Denied(_)) => {
            HsmError::NoKeyYouMayUse(format!("CKA_ID {}", crate::wrap::hex(id)))
        }
        _ => e,
    }
}

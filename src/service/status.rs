//! Errors of the lower layers as gRPC statuses: the one place that decides the code.

use cryptoki::error::RvError;
use tonic::{Code, Status};

use crate::hsm::{ExportRefusal, HsmError};
use crate::import::ImportError;
use crate::journal::JournalError;
use crate::oci::kms::KmsError;
use crate::wrap::WrapError;

/// The status code for an HSM-layer error.
pub fn code(e: &HsmError) -> Code {
    match e {
        HsmError::KeyNotFound(_) | HsmError::NoKeyYouMayUse(_) => Code::NotFound,
        HsmError::Ambiguous { .. } | HsmError::Unsupported(_) => Code::FailedPrecondition,
        HsmError::NotExportable {
            refusal: ExportRefusal::Policy,
            ..
        }
        | HsmError::Denied(_) => Code::PermissionDenied,
        HsmError::NotExportable { .. } => Code::FailedPrecondition,
        HsmError::Busy(_) => Code::ResourceExhausted,
        HsmError::DeadlineExceeded => Code::DeadlineExceeded,
        HsmError::Wrap(WrapError::WrappingKey(_) | WrapError::UnknownAlgorithm(_)) => {
            Code::InvalidArgument
        }
        HsmError::Wrap(WrapError::Crypto(_)) => Code::Internal,
        HsmError::WrapCall {
            rv:
                RvError::KeyNotWrappable | RvError::KeyUnextractable | RvError::KeyFunctionNotPermitted,
            ..
        } => Code::FailedPrecondition,
        HsmError::WrapCall { .. }
        | HsmError::Pkcs11 { .. }
        | HsmError::ModuleMissing(_)
        | HsmError::ModuleLoad { .. }
        | HsmError::TokenNotFound { .. }
        | HsmError::Login { .. }
        | HsmError::Pin(_)
        | HsmError::Down(_)
        | HsmError::Random(_)
        | HsmError::SelfTest(_)
        | HsmError::RecordKey(_) => Code::Unavailable,
    }
}

pub fn status(e: &HsmError) -> Status {
    if let Some(rv) = e.rv() {
        crate::metrics::get().hsm_error(&crate::hsm::ckr_name(rv));
    }
    Status::new(code(e), e.to_string())
}

/// An OCI failure as a gRPC status: OCI's status, code, message and opc-request-id in the text.
pub fn kms(e: &KmsError) -> Status {
    let msg = e.to_string();
    match e {
        KmsError::Service { status, .. } => match status {
            400 => Status::invalid_argument(msg),
            401 | 403 => Status::permission_denied(msg),
            404 => Status::not_found(msg),
            409 => Status::aborted(msg),
            412 => Status::failed_precondition(msg),
            429 | 500..=599 => Status::unavailable(msg),
            _ => Status::unknown(msg),
        },
        KmsError::Transport { .. } => Status::unavailable(msg),
        KmsError::Deadline { .. } => Status::deadline_exceeded(msg),
        KmsError::BadResponse { .. } => Status::unavailable(format!(
            "{msg}; the import may have happened: retry with the same idempotency_key"
        )),
        KmsError::WrappingKey { .. } => Status::failed_precondition(msg),
        KmsError::Local { .. } => Status::internal(msg),
    }
}

/// A caller's wrapping key the policy refuses.
pub fn refused_wrapping_key(e: &crate::policy::WrappingKeyRefused) -> Status {
    Status::permission_denied(e.to_string())
}

/// An import's refusal as a gRPC status.
pub fn import(e: &ImportError) -> Status {
    match e {
        ImportError::Invalid(m) => Status::invalid_argument(m.clone()),
        ImportError::Denied(m) => Status::permission_denied(m.clone()),
        ImportError::NotConfigured(m) => Status::failed_precondition(m.clone()),
        ImportError::InProgress(m) => Status::aborted(m.clone()),
        ImportError::NotEnabled(m) => Status::deadline_exceeded(m.clone()),
        ImportError::Oci(k) => kms(k),
        ImportError::Hsm(h) => status(h),
        ImportError::Body(m) => Status::internal(m.clone()),
        ImportError::Journal(JournalError::Unavailable(_)) => Status::unavailable(e.to_string()),
        ImportError::Journal(JournalError::LeaseLost) => Status::aborted(e.to_string()),
        ImportError::Journal(JournalError::NoKey(_)) => Status::unavailable(e.to_string()),
        // Not the caller's fault, and no retry mends it: an operator must look at the record.
        ImportError::Journal(JournalError::Forged { .. }) => Status::data_loss(e.to_string()),
    }
}

/// The code and message of an import's refusal, as an audit record and the CLI give them.
pub fn import_outcome(e: &ImportError) -> (Code, String) {
    let s = import(e);
    (s.code(), s.message().to_string())
}

impl From<ImportError> for Status {
    fn from(e: ImportError) -> Status {
        import(&e)
    }
}

/// The canonical upper-case name of a code, as audit records carry it.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code(&HsmError::KeyNotFound("x".into())), Code::NotFound);
        let policy = HsmError::NotExportable {
            key: "k".into(),
            why: "w".into(),
            refusal: ExportRefusal::Policy,
        };
        assert_eq!(code(&policy), Code::PermissionDenied);
        let token = HsmError::NotExportable {
            key: "k".into(),
            why: "w".into(),
            refusal: ExportRefusal::Token,
        };
        assert_eq!(code(&token), Code::FailedPrecondition);
        assert_eq!(code(&HsmError::DeadlineExceeded), Code::DeadlineExceeded);
        // An OS random-source failure is the daemon's, not a precondition of the request.
        assert_eq!(code(&HsmError::Random("x".into())), Code::Unavailable);
        assert_eq!(
            code(&HsmError::Wrap(WrapError::WrappingKey("x".into()))),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&HsmError::WrapCall {
                mechanism: "m".into(),
                rv: RvError::DeviceError
            }),
            Code::Unavailable
        );
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }

    #[test]
    fn oci_errors_map_to_grpc_codes_with_oci_details() {
        let service = |status: u16, code: &str| KmsError::Service {
            op: "ImportKeyVersion",
            status,
            code: code.into(),
            message: "m".into(),
            opc_request_id: "OPC1".into(),
            attempts: 2,
        };
        for (status, code, grpc) in [
            (400, "InvalidParameter", Code::InvalidArgument),
            (401, "NotAuthenticated", Code::PermissionDenied),
            (403, "NotAuthorized", Code::PermissionDenied),
            (404, "NotAuthorizedOrNotFound", Code::NotFound),
            (409, "Conflict", Code::Aborted),
            (429, "TooManyRequests", Code::Unavailable),
            (503, "ServiceUnavailable", Code::Unavailable),
        ] {
            let s = kms(&service(status, code));
            assert_eq!(s.code(), grpc, "{status}");
            assert!(
                s.message().contains(code) && s.message().contains("OPC1"),
                "{}",
                s.message()
            );
        }
        let t = KmsError::Transport {
            op: "GetWrappingKey",
            endpoint: "https://x".into(),
            why: "could not connect".into(),
            attempts: 5,
        };
        assert_eq!(kms(&t).code(), Code::Unavailable);
        let d = KmsError::Deadline {
            op: "ImportKey",
            attempts: 1,
            last: String::new(),
        };
        assert_eq!(kms(&d).code(), Code::DeadlineExceeded);
    }
}

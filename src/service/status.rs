//! Errors of the lower layers as gRPC statuses: the one place that decides the code.

use cryptoki::error::RvError;
use tonic::{Code, Status};

use crate::hsm::{ExportRefusal, HsmError};
use crate::wrap::WrapError;

/// The status code for an HSM-layer error.
pub fn code(e: &HsmError) -> Code {
    match e {
        HsmError::KeyNotFound(_) | HsmError::NoKeyYouMayUse(_) => Code::NotFound,
        HsmError::Ambiguous { .. } | HsmError::Refused(_) => Code::FailedPrecondition,
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
        | HsmError::SelfTest(_) => Code::Unavailable,
    }
}

pub fn status(e: &HsmError) -> Status {
    Status::new(code(e), e.to_string())
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
}

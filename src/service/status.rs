//! Errors of the lower layers as gRPC statuses. Each layer's error says its own code
//! (src/code.rs); here a code becomes tonic's, and nowhere else.

use tonic::Status;

use crate::code::Code;
use crate::export::ExportError;
use crate::hsm::HsmError;

/// tonic's code for a canonical code.
pub(crate) fn grpc(c: Code) -> tonic::Code {
    match c {
        Code::Ok => tonic::Code::Ok,
        Code::Cancelled => tonic::Code::Cancelled,
        Code::Unknown => tonic::Code::Unknown,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::Aborted => tonic::Code::Aborted,
        Code::OutOfRange => tonic::Code::OutOfRange,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Internal => tonic::Code::Internal,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::DataLoss => tonic::Code::DataLoss,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
    }
}

/// The canonical code for tonic's (the status a handler answered, for its audit record).
pub(crate) fn canonical(c: tonic::Code) -> Code {
    Code::ALL
        .into_iter()
        .find(|&x| grpc(x) == c)
        .unwrap_or(Code::Unknown)
}

/// An HSM-layer error as a status; its CKR code is counted.
pub(crate) fn status(e: &HsmError) -> Status {
    if let Some(rv) = e.rv() {
        crate::metrics::get().hsm_error(&crate::hsm::ckr_name(rv));
    }
    Status::new(grpc(e.code()), e.to_string())
}

/// A caller's wrapping key the policy refuses.
pub(crate) fn refused_wrapping_key(e: &crate::policy::WrappingKeyRefused) -> Status {
    Status::permission_denied(e.to_string())
}

/// An export's refusal as a status.
pub(crate) fn export(e: &ExportError) -> Status {
    match e {
        ExportError::Hsm(h) => status(h),
        other => Status::new(grpc(other.code()), other.message()),
    }
}

impl From<ExportError> for Status {
    fn from(e: ExportError) -> Status {
        export(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::ExportRefusal;
    use crate::oci::kms::KmsError;
    use crate::wrap::WrapError;
    use cryptoki::error::RvError;
    use tonic::Code as G;

    fn code_of(e: &HsmError) -> G {
        grpc(e.code())
    }

    #[test]
    fn codes() {
        assert_eq!(code_of(&HsmError::KeyNotFound("x".into())), G::NotFound);
        let policy = HsmError::NotExportable {
            key: "k".into(),
            why: "w".into(),
            refusal: ExportRefusal::Policy,
        };
        assert_eq!(code_of(&policy), G::PermissionDenied);
        let token = HsmError::NotExportable {
            key: "k".into(),
            why: "w".into(),
            refusal: ExportRefusal::Token,
        };
        assert_eq!(code_of(&token), G::FailedPrecondition);
        assert_eq!(code_of(&HsmError::DeadlineExceeded), G::DeadlineExceeded);
        // An OS random-source failure is the daemon's, not a precondition of the request.
        assert_eq!(code_of(&HsmError::Random("x".into())), G::Unavailable);
        assert_eq!(
            code_of(&HsmError::Wrap(WrapError::WrappingKey("x".into()))),
            G::InvalidArgument
        );
        assert_eq!(
            code_of(&HsmError::WrapCall {
                mechanism: "m".into(),
                rv: RvError::DeviceError
            }),
            G::Unavailable
        );
        for c in Code::ALL {
            assert_eq!(canonical(grpc(c)), c);
        }
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
            (400, "InvalidParameter", G::InvalidArgument),
            (401, "NotAuthenticated", G::PermissionDenied),
            (403, "NotAuthorized", G::PermissionDenied),
            (404, "NotAuthorizedOrNotFound", G::NotFound),
            (409, "Conflict", G::Aborted),
            (429, "TooManyRequests", G::Unavailable),
            (503, "ServiceUnavailable", G::Unavailable),
        ] {
            let s = export(&ExportError::Oci(service(status, code)));
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
        assert_eq!(export(&ExportError::Oci(t)).code(), G::Unavailable);
        let d = KmsError::Deadline {
            op: "ImportKey",
            attempts: 1,
            last: String::new(),
        };
        assert_eq!(export(&ExportError::Oci(d)).code(), G::DeadlineExceeded);
    }
}

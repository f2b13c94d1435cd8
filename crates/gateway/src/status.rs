//! gRPC status codes to HTTP statuses: google.rpc.Code's documented HTTP
//! mapping, except FAILED_PRECONDITION, which is 409 Conflict (RFC 9110: "a
//! conflict with the current state of the target resource"). So 400 always
//! means the request itself breaks the contract, and a request the OpenAPI
//! document allows is never a 400.

use tonic::Code;

/// The HTTP status a gRPC code answers with at the gateway.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_standard_statuses() {
        let expected = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 409),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, status) in expected {
            assert_eq!(http_status(code), status, "{code:?}");
        }
    }
}

//! The one error type for every AWS failure, and the classification behind it.
//!
//! Controllers act on the class, never on a service's own error type: `NotFound` drives
//! create-or-adopt, `Conflict` resumes an action already taken, `Throttled` and `Retryable`
//! back off and try again, `AccessDenied` and `Invalid` become a condition for people.
//! The class's [`reason`](ErrorClass::reason) is the stable word used in conditions, Events
//! and metric labels.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt::Debug;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What kind of failure an AWS error is, which is what a caller decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The thing asked about does not exist (or no longer does).
    NotFound,
    /// AWS is rate limiting this account.
    Throttled,
    /// A 5xx, a timeout, a reset or a request that never got an answer: trying again is the fix.
    Retryable,
    /// The credentials may not do this, or are not valid at all.
    AccessDenied,
    /// AWS refused the request as given: a condition for people, no hot retry.
    Invalid,
    /// It already exists, or is in a state that forbids this now.
    Conflict,
}

impl ErrorClass {
    /// The stable reason used in conditions, Events and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::NotFound => "AwsNotFound",
            ErrorClass::Throttled => "AwsThrottled",
            ErrorClass::Retryable => "AwsUnavailable",
            ErrorClass::AccessDenied => "AwsAccessDenied",
            ErrorClass::Invalid => "AwsInvalidRequest",
            ErrorClass::Conflict => "AwsConflict",
        }
    }

    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Throttled | ErrorClass::Retryable)
    }
}

/// One failed AWS operation, classified. Carries only what AWS said, never request
/// parameters, so it is safe to put in conditions and Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} ({service}): {code}: {message}")]
pub struct AwsError {
    pub class: ErrorClass,
    /// The lowercase service name, as in metric labels (`rds`, `s3`, …).
    pub service: &'static str,
    pub operation: &'static str,
    /// AWS's error code (`DBInstanceNotFound`), or the SDK's failure kind (`Timeout`,
    /// `DispatchFailure`, …) when no response was read.
    pub code: String,
    /// AWS's message, shortened to [`MAX_MESSAGE`] characters.
    pub message: String,
}

/// Conditions and Events show the message; AWS messages can be whole documents.
pub const MAX_MESSAGE: usize = 300;

impl AwsError {
    /// A request the operator could not even build (a value the SDK refused).
    pub fn invalid_request(
        service: &'static str,
        operation: &'static str,
        message: String,
    ) -> AwsError {
        AwsError {
            class: ErrorClass::Invalid,
            service,
            operation,
            code: "RequestNotBuilt".into(),
            message,
        }
    }

    /// Classifies a failure of `operation`: by AWS's error code and message when AWS
    /// answered, else by how the request failed.
    pub fn from_sdk<E, R>(
        service: &'static str,
        operation: &'static str,
        err: SdkError<E, R>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: Debug + 'static,
    {
        // Every SDK client answers with this response type; others have no status to read.
        let status = err
            .raw_response()
            .and_then(|raw| (raw as &dyn Any).downcast_ref::<HttpResponse>())
            .map(|raw| raw.status().as_u16());
        let (class, code, message) = if let SdkError::ServiceError(context) = &err {
            let e = context.err();
            let code = e.code().unwrap_or_default();
            // S3 answers HEAD requests with a status and no body to read a message from.
            let message = match (e.message(), status) {
                (Some(m), _) => m.to_string(),
                (None, Some(status)) => format!("HTTP {status} without a message"),
                (None, None) => "no message".to_string(),
            };
            let class = class_of_response(code, &message, status);
            let code = match (code, status) {
                ("", Some(status)) => format!("Http{status}"),
                ("", None) => "Unknown".to_string(),
                (code, _) => code.to_string(),
            };
            (class, code, message)
        } else if let Some(inner) = nested_aws_error(&err) {
            // A failure inside the request's own machinery that is an AwsError already:
            // the credentials of an assumed role (AssumeRole refused). Its class is the
            // truth (AccessDenied, Throttled…), not "the request was never sent".
            (
                inner.class,
                inner.code.clone(),
                format!("credentials: {inner}"),
            )
        } else {
            let (class, code) = match &err {
                SdkError::ConstructionFailure(_) => (ErrorClass::Invalid, "ConstructionFailure"),
                SdkError::TimeoutError(_) => (ErrorClass::Retryable, "Timeout"),
                // A user error (e.g. a malformed endpoint URL) fails the same way every time.
                SdkError::DispatchFailure(failure) if failure.is_user() => {
                    (ErrorClass::Invalid, "DispatchFailure")
                }
                SdkError::DispatchFailure(_) => (ErrorClass::Retryable, "DispatchFailure"),
                SdkError::ResponseError(_) => (ErrorClass::Retryable, "ResponseError"),
                _ => (ErrorClass::Retryable, "Unknown"),
            };
            (
                class,
                code.to_string(),
                DisplayErrorContext(&err).to_string(),
            )
        };
        AwsError {
            class,
            service,
            operation,
            code,
            message: shorten(&message),
        }
    }

    pub fn reason(&self) -> &'static str {
        self.class.reason()
    }

    pub fn is_not_found(&self) -> bool {
        self.class == ErrorClass::NotFound
    }

    pub fn is_conflict(&self) -> bool {
        self.class == ErrorClass::Conflict
    }

    /// The thing a create names exists already (a repeat after a crash), as opposed to
    /// the other conflicts, such as an instance in a state that refuses the call.
    /// The thing being created exists (a repeat of an earlier create). Not a token reused
    /// for another request (`TokenAlreadyExistsException`), which is a real conflict.
    pub fn already_exists(&self) -> bool {
        self.is_conflict()
            && self.code.contains("AlreadyExists")
            && !self.code.starts_with("TokenAlreadyExists")
    }

    pub fn is_transient(&self) -> bool {
        self.class.is_transient()
    }

    /// CloudFormation's answer to an update that changes nothing: an error on the wire,
    /// success for the caller.
    pub fn is_no_updates(&self) -> bool {
        is_no_updates(&self.code, &self.message)
    }
}

fn nested_aws_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a AwsError> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<AwsError>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

fn shorten(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        None => message.to_string(),
        Some((end, _)) => format!("{}…", &message[..end]),
    }
}

fn is_no_updates(code: &str, message: &str) -> bool {
    code == "ValidationError" && message.contains("No updates are to be performed")
}

/// Codes AWS services use for rate limiting (query/XML and JSON protocols).
pub(crate) const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
];

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "AuthFailure",
    "AuthorizationError",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
    "AllAccessDisabled",
    "AccountProblem",
    "OptInRequired",
    "RegionDisabledException",
    // RDS: the KMS key policy does not let RDS (or us) use the key.
    "KMSKeyNotAccessibleFault",
];

const CONFLICT_CODES: &[&str] = &[
    "BucketAlreadyOwnedByYou",
    // Someone else's bucket of that name: a conflict no retry resolves, but also not a
    // malformed request.
    "BucketAlreadyExists",
    "BucketNotEmpty",
    "OperationAborted",
    "InvalidObjectState",
    "PreconditionFailed",
    "ConflictException",
    "ConcurrentModificationException",
    "ResourceExistsException",
    // Secrets Manager: "not valid for the current state of the resource" (e.g. scheduled
    // for deletion).
    "InvalidRequestException",
    "InvalidChangeSetStatus",
    "InvalidChangeSetStatusException",
    "OperationInProgressException",
    "TokenAlreadyExistsException",
];

const NOT_FOUND_CODES: &[&str] = &[
    // S3 answers HEAD requests without a body; the SDK names the 404 this way.
    "NotFound",
    "ResourceNotFoundException",
];

const RETRYABLE_CODES: &[&str] = &[
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "InternalServiceError",
    "InternalServiceErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServiceFailure",
    "RequestTimeout",
    "RequestTimeoutException",
    "IDPCommunicationError",
    // Clock skew the SDK corrects on the next attempt.
    "RequestExpired",
    "RequestTimeTooSkewed",
];

/// The class of an error code, with the HTTP status as a fallback for codes not known here.
///
/// Codes win over statuses: S3's `SlowDown` is a 503 that means throttling, RDS answers
/// every fault with 400 or 404. Quota errors (`StorageQuotaExceeded`, `LimitExceededException`
/// of CloudFormation and Secrets Manager, …) are `Invalid`: the account's quota does not
/// grow by waiting, someone has to raise it or free capacity, and the SDK has already
/// retried what it considers throttling.
pub fn class_of(code: &str, http_status: Option<u16>) -> ErrorClass {
    if THROTTLING_CODES.contains(&code) {
        return ErrorClass::Throttled;
    }
    if ACCESS_DENIED_CODES.contains(&code) {
        return ErrorClass::AccessDenied;
    }
    if CONFLICT_CODES.contains(&code) || code.contains("AlreadyExists") || is_rds_state(code) {
        return ErrorClass::Conflict;
    }
    if NOT_FOUND_CODES.contains(&code)
        || code.starts_with("NoSuch")
        || ["NotFound", "NotFoundFault", "NotFoundException"]
            .iter()
            .any(|suffix| code.ends_with(suffix))
    {
        return ErrorClass::NotFound;
    }
    if RETRYABLE_CODES.contains(&code)
        // RDS has no capacity of that class in that zone right now.
        || (code.starts_with("Insufficient") && code.contains("Capacity"))
    {
        return ErrorClass::Retryable;
    }
    if code.contains("QuotaExceeded") || code.contains("LimitExceeded") {
        return ErrorClass::Invalid;
    }
    match http_status {
        Some(429) => ErrorClass::Throttled,
        Some(403) | Some(401) => ErrorClass::AccessDenied,
        Some(404) => ErrorClass::NotFound,
        Some(409) => ErrorClass::Conflict,
        Some(status) if status >= 500 => ErrorClass::Retryable,
        // Any other 4xx, and the unknown: AWS did not take it, and nothing says that
        // asking again changes that.
        _ => ErrorClass::Invalid,
    }
}

/// RDS's "the instance/snapshot/group is not in a state that allows this": `InvalidDBInstanceState`,
/// `InvalidDBSnapshotStateFault`, `InvalidDBClusterStateFault`, … It clears by itself.
fn is_rds_state(code: &str) -> bool {
    code.starts_with("InvalidDB") && code.contains("State")
}

/// [`class_of`], refined by the message for CloudFormation, which answers many different
/// things with one `ValidationError`.
pub fn class_of_response(code: &str, message: &str, http_status: Option<u16>) -> ErrorClass {
    if code == "ValidationError" {
        // "Stack with id X does not exist" (DescribeStacks), "Stack [X] does not exist".
        if message.contains("does not exist") {
            return ErrorClass::NotFound;
        }
        // "Stack:arn:… is in UPDATE_IN_PROGRESS state and can not be updated."
        if message.contains(" state and can not be ") {
            return ErrorClass::Conflict;
        }
    }
    class_of(code, http_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn only_an_existing_thing_is_a_repeat_among_conflicts() {
        let error = |code: &str| AwsError {
            class: class_of_response(code, "", Some(400)),
            service: "rds",
            operation: "CreateDBSnapshot",
            code: code.into(),
            message: String::new(),
        };
        assert!(error("DBSnapshotAlreadyExists").already_exists());
        assert!(error("DBInstanceAlreadyExists").already_exists());
        let busy = error("InvalidDBInstanceState");
        assert!(busy.is_conflict() && !busy.already_exists());
        assert!(error("AlreadyExistsException").already_exists());
        let token = error("TokenAlreadyExistsException");
        assert!(token.is_conflict() && !token.already_exists());
    }

    #[test]
    fn real_codes_of_each_service() {
        let table: &[(&str, Option<u16>, ErrorClass)] = &[
            // RDS (query protocol; faults are 400 or 404).
            ("DBInstanceNotFound", Some(404), NotFound),
            ("DBInstanceNotFoundFault", Some(404), NotFound),
            ("DBSnapshotNotFound", Some(404), NotFound),
            ("DBSnapshotNotFoundFault", Some(404), NotFound),
            ("DBSubnetGroupNotFoundFault", Some(404), NotFound),
            ("DBInstanceAlreadyExists", Some(400), Conflict),
            ("DBInstanceAlreadyExistsFault", Some(400), Conflict),
            ("DBSnapshotAlreadyExists", Some(400), Conflict),
            ("InvalidDBInstanceState", Some(400), Conflict),
            ("InvalidDBInstanceStateFault", Some(400), Conflict),
            ("InvalidDBSnapshotState", Some(400), Conflict),
            ("InvalidDBClusterStateFault", Some(400), Conflict),
            ("InvalidParameterValue", Some(400), Invalid),
            ("InvalidParameterCombination", Some(400), Invalid),
            ("StorageQuotaExceeded", Some(400), Invalid),
            ("InstanceQuotaExceeded", Some(400), Invalid),
            ("SnapshotQuotaExceeded", Some(400), Invalid),
            ("InvalidVPCNetworkStateFault", Some(400), Invalid),
            ("InsufficientDBInstanceCapacity", Some(400), Retryable),
            ("KMSKeyNotAccessibleFault", Some(400), AccessDenied),
            ("Throttling", Some(400), Throttled),
            // CloudFormation.
            ("AlreadyExistsException", Some(400), Conflict),
            ("TokenAlreadyExistsException", Some(400), Conflict),
            ("LimitExceededException", Some(400), Invalid),
            ("InsufficientCapabilitiesException", Some(400), Invalid),
            ("ChangeSetNotFound", Some(404), NotFound),
            ("ValidationError", Some(400), Invalid),
            // S3 (REST/XML).
            ("NoSuchBucket", Some(404), NotFound),
            ("NoSuchKey", Some(404), NotFound),
            ("NotFound", Some(404), NotFound),
            ("BucketAlreadyOwnedByYou", Some(409), Conflict),
            ("BucketAlreadyExists", Some(409), Conflict),
            ("BucketNotEmpty", Some(409), Conflict),
            ("SlowDown", Some(503), Throttled),
            ("AccessDenied", Some(403), AccessDenied),
            ("InternalError", Some(500), Retryable),
            ("ServiceUnavailable", Some(503), Retryable),
            // STS.
            ("ExpiredToken", Some(400), AccessDenied),
            ("ExpiredTokenException", Some(400), AccessDenied),
            ("RegionDisabledException", Some(403), AccessDenied),
            ("InvalidClientTokenId", Some(403), AccessDenied),
            // Secrets Manager (JSON protocol).
            ("ResourceNotFoundException", Some(400), NotFound),
            ("ResourceExistsException", Some(400), Conflict),
            ("InvalidRequestException", Some(400), Conflict),
            ("InvalidParameterException", Some(400), Invalid),
            ("AccessDeniedException", Some(400), AccessDenied),
            ("InternalServiceError", Some(500), Retryable),
            // Shared.
            ("UnauthorizedOperation", Some(403), AccessDenied),
            ("ThrottlingException", Some(400), Throttled),
            ("RequestLimitExceeded", Some(503), Throttled),
            ("TooManyRequestsException", Some(429), Throttled),
            ("InternalFailure", Some(500), Retryable),
            ("ServiceUnavailableException", Some(503), Retryable),
            ("RequestExpired", Some(400), Retryable),
            // Codes not known here: the status decides.
            ("SomethingNew", Some(500), Retryable),
            ("SomethingNew", Some(502), Retryable),
            ("SomethingNew", Some(404), NotFound),
            ("SomethingNew", Some(403), AccessDenied),
            ("SomethingNew", Some(409), Conflict),
            ("SomethingNew", Some(429), Throttled),
            ("SomethingNew", Some(400), Invalid),
            ("SomethingNew", Some(422), Invalid),
            ("SomethingNew", None, Invalid),
            ("", Some(404), NotFound),
            ("", Some(503), Retryable),
            // Unknown codes that follow AWS's naming.
            ("DBProxyNotFoundFault", Some(400), NotFound),
            ("DBProxyAlreadyExistsFault", Some(400), Conflict),
            ("NoSuchUpload", Some(404), NotFound),
        ];
        for (code, status, class) in table {
            assert_eq!(class_of(code, *status), *class, "{code} {status:?}");
        }
    }

    #[test]
    fn cloudformation_validation_errors_are_told_apart_by_message() {
        let class = |m: &str| class_of_response("ValidationError", m, Some(400));
        assert_eq!(
            class("Stack with id openemr-clinic does not exist"),
            NotFound
        );
        assert_eq!(class("Stack [openemr-clinic] does not exist"), NotFound);
        assert_eq!(
            class(
                "Stack:arn:aws:cloudformation:us-east-1:123456789012:stack/x/1 is in \
                 UPDATE_IN_PROGRESS state and can not be updated."
            ),
            Conflict
        );
        assert_eq!(class("Template format error: unsupported field"), Invalid);
        assert_eq!(class("No updates are to be performed."), Invalid);
        assert!(is_no_updates(
            "ValidationError",
            "No updates are to be performed."
        ));
        assert!(!is_no_updates("ValidationError", "Template format error"));
        // Other services' messages are not read.
        assert_eq!(
            class_of_response("InvalidParameterValue", "x does not exist", Some(400)),
            Invalid
        );
    }

    #[test]
    fn reasons_are_distinct_camel_case() {
        let all = [
            NotFound,
            Throttled,
            Retryable,
            AccessDenied,
            Invalid,
            Conflict,
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(|c| c.reason()).collect();
        assert_eq!(reasons.len(), all.len());
        for r in reasons {
            assert!(r.starts_with("Aws") && r.chars().all(|c| c.is_ascii_alphabetic()));
        }
    }

    #[test]
    fn long_messages_are_shortened_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_MESSAGE + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn display_names_operation_service_and_code() {
        let e = AwsError {
            class: NotFound,
            service: "rds",
            operation: "DescribeDBInstances",
            code: "DBInstanceNotFound".into(),
            message: "DBInstance clinic not found.".into(),
        };
        assert_eq!(
            e.to_string(),
            "DescribeDBInstances (rds): DBInstanceNotFound: DBInstance clinic not found."
        );
        assert_eq!(e.reason(), "AwsNotFound");
        assert!(e.is_not_found() && !e.is_transient());
    }
}

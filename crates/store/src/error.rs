//! Store errors. They never reach the wire: the domain logs them and answers with a safe code.

/// The `Conflict` texts callers tell apart (both backends use these, so a caller can match
/// on them).
pub mod conflict {
    /// A revoked key cannot change.
    pub const KEY_REVOKED: &str = "api key revoked";
    /// A key replaced by rotation keeps its grace end as its expiry.
    pub const KEY_ROTATED: &str = "api key rotated";
}

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record with the same id or unique value exists.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Stored data could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The caller passed data the store cannot hold (a bug in the caller).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// The backend could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

//! Portcullis protocol core: parse, canonicalise, sign and verify — nothing else.
//!
//! This crate is pure. It performs no IO, never reads the clock (every check takes `now`),
//! never makes randomness of its own (random bytes are passed in; the one exception is the
//! key material of new signing keys, which AWS-LC draws from its own OS-seeded generator,
//! see [`crypto::sign::SigningKey::generate`]), and has no async code.
//! Every scheme module follows the same shape:
//!
//! 1. `parse` reads a credential out of a request without trusting it (`Ok(None)`: the request
//!    carries no credential of this kind);
//! 2. the caller looks up the key material by the credential's id;
//! 3. `verify` checks the credential against that material and returns a [`Verified`] proof,
//!    the only value from which an [`Identity`] can be built.
//!
//! Errors are typed per concern and mapped to what goes on the wire by one table,
//! [`error::WireError::from`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api_key;
pub mod audit;
pub mod client_ip;
pub mod cors;
pub mod crypto;
pub mod dpop;
pub mod error;
pub mod hmac;
pub mod identity;
pub mod jose;
pub mod jwt;
pub mod oauth2;
pub mod ratelimit;
pub mod request;
pub mod secret;
pub mod text;
pub mod time;
pub mod verified;

pub use error::{AuthError, SignatureError, WireError};
pub use identity::{Identity, Scheme, ScopeSet};
pub use request::{ConnMemo, RequestParts};
pub use time::Timestamp;
pub use verified::Verified;

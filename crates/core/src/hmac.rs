//! HMAC request signing and signed webhooks, pure: each scheme parses what the caller sent,
//! the caller looks up the key material, and `verify` checks it and makes the
//! [`crate::Verified`] proof.
//!
//! - [`native`]: Portcullis's own scheme (`X-API-Key`, `X-Timestamp`, `X-Nonce`,
//!   `X-Signature`) and the legacy layouts and other gateways' wire formats a route may take.
//! - [`sigv4`]: AWS Signature Version 4 (headers and presigned URLs).
//! - [`http_sig`]: RFC 9421 HTTP Message Signatures, with RFC 9530 `Content-Digest`.
//! - [`webhook`]: signing and verifying webhooks in the Stripe, GitHub and Standard Webhooks
//!   conventions.

pub mod http_sig;
pub mod native;
pub mod sigv4;
pub mod webhook;

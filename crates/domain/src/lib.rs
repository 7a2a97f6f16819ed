//! Portcullis decisions: authenticators per scheme, per-route policies, rate limits, usage,
//! audit and the admin use cases. Depends on the pure core and on the store *traits*; never on
//! an HTTP framework or a database driver. Time is read only through [`clock::Clock`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod authn;
pub mod clock;
pub mod dpop;
pub mod gate;
pub mod hmac;
pub mod oauth;
pub mod policy;
pub mod ratelimit;
pub mod signing;
pub mod upstream_identity;
pub mod usage;
pub mod webhooks;

pub use authn::{Authenticated, Authenticator, CredentialLimits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use policy::{Policy, PolicyError, PolicyExpr};

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the OS generator fails, which on supported platforms only happens when the system is
/// unusable; continuing with weak randomness would be worse than stopping.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf
}

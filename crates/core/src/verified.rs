//! Proof that a verification took place.
//!
//! Following rustls's marker types: a [`Verified<S>`] can be made only inside this crate, by
//! a scheme's `verify` function right after its check succeeded. An [`crate::Identity`] can
//! only be built from one, so there is no path from "parsed" to "trusted" that skips `verify`.

use std::marker::PhantomData;

/// Marker for a verified API key (see [`crate::api_key::verify`]).
#[derive(Debug)]
pub struct ApiKey(());

/// Marker for a verified signed request (any of the [`crate::hmac`] schemes).
#[derive(Debug)]
pub struct Hmac(());

/// A zero-sized proof that the check of scheme `S` succeeded.
#[derive(Debug)]
pub struct Verified<S> {
    _scheme: PhantomData<S>,
}

impl<S> Verified<S> {
    /// Crate-private: only scheme `verify` functions call this, right after their check.
    pub(crate) fn assertion() -> Self {
        Self {
            _scheme: PhantomData,
        }
    }
}

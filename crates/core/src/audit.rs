//! The audit trail's hash chain: each stored event carries the hash of the one before.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ seq(n) as 8 big-endian bytes ‖ body(n))`, with 32 zero bytes
//! before the first event. Editing a body breaks its hash; removing or reordering events
//! breaks the `seq` sequence or a `prev_hash` link. Removing events from the *end* can only be
//! detected against a head (seq, hash) kept elsewhere, which is why the JSON-lines sink carries
//! both for every event.

use crate::crypto::{self, Sha256Digest};

/// The `prev_hash` of the first event.
pub const GENESIS: Sha256Digest = [0u8; 32];

/// The chain hash of event `seq` with canonical JSON `body`, following `prev`.
pub fn chain_hash(prev: &Sha256Digest, seq: i64, body: &[u8]) -> Sha256Digest {
    crypto::sha256_parts(&[prev, &seq.to_be_bytes(), body])
}

/// What is wrong with a chain, at the first event found broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An event's stored hash does not match its content: it was edited.
    #[error("event {seq}: content does not match its hash (edited)")]
    Edited {
        /// The event.
        seq: i64,
    },
    /// An event's `prev_hash` is not the hash of the event before it (reordered or replaced).
    #[error("event {seq}: does not follow the event before it (reordered or replaced)")]
    BrokenLink {
        /// The event.
        seq: i64,
    },
    /// Sequence numbers are not contiguous: events are missing.
    #[error("events {expected}..{found} are missing (removed)")]
    Gap {
        /// The seq that should have come next.
        expected: i64,
        /// The seq that came.
        found: i64,
    },
}

/// Incremental verifier: feed events in `seq` order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: i64,
    prev: Sha256Digest,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next event.
    pub fn check(
        &mut self,
        seq: i64,
        body: &[u8],
        prev_hash: &Sha256Digest,
        hash: &Sha256Digest,
    ) -> Result<(), ChainError> {
        if seq != self.next_seq {
            return Err(ChainError::Gap {
                expected: self.next_seq,
                found: seq,
            });
        }
        if prev_hash != &self.prev {
            return Err(ChainError::BrokenLink { seq });
        }
        if &chain_hash(prev_hash, seq, body) != hash {
            return Err(ChainError::Edited { seq });
        }
        self.prev = *hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Events checked so far.
    pub fn checked(&self) -> i64 {
        self.next_seq - 1
    }

    /// The hash of the last event checked.
    pub fn head(&self) -> Sha256Digest {
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(bodies: &[&str]) -> Vec<(i64, Vec<u8>, Sha256Digest, Sha256Digest)> {
        let mut prev = GENESIS;
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let seq = i as i64 + 1;
                let h = chain_hash(&prev, seq, b.as_bytes());
                let row = (seq, b.as_bytes().to_vec(), prev, h);
                prev = h;
                row
            })
            .collect()
    }

    fn verify(rows: &[(i64, Vec<u8>, Sha256Digest, Sha256Digest)]) -> Result<i64, ChainError> {
        let mut v = ChainVerifier::default();
        for (seq, body, prev, h) in rows {
            v.check(*seq, body, prev, h)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(&["a", "b", "c"])), Ok(3));
    }

    #[test]
    fn edit_removal_and_reorder_are_found() {
        let mut edited = chain(&["a", "b", "c"]);
        edited[1].1 = b"B".to_vec();
        assert_eq!(verify(&edited), Err(ChainError::Edited { seq: 2 }));

        let mut removed = chain(&["a", "b", "c"]);
        removed.remove(1);
        assert_eq!(
            verify(&removed),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );

        let mut reordered = chain(&["a", "b", "c"]);
        reordered.swap(1, 2);
        reordered[1].0 = 2;
        reordered[2].0 = 3;
        assert_eq!(verify(&reordered), Err(ChainError::BrokenLink { seq: 2 }));
    }
}

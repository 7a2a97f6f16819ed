//! HTTP/1.1 for the listener and the upstream connections: message heads and chunked bodies
//! (pure, IO-free: [`head`], [`chunked`]) and the connection handler ([`serve`]).
//!
//! # Why not hyper here
//!
//! hyper served the gateway until the load test showed where its time went: per request it
//! builds header maps on both sides, sends bodies through channels, runs a dispatcher per
//! connection on each side and a timer per request. A proxy whose job is to pass a head on with
//! a few fields changed can do it from the bytes it read. The same proxied requests through
//! this handler take half the user-space instructions (BENCHMARKS.md), which put the gateway
//! ahead of nginx in the load test. The admin API still runs on axum: requests for it are
//! handed over as `http::Request`s.

pub mod chunked;
pub mod head;
pub mod serve;

//! One integration-test binary: every test starts the real `portcullis` on an ephemeral
//! loopback port and talks to it over HTTP.
#![allow(clippy::unwrap_used)]

mod support;

mod admin;
mod audit;
mod balance;
mod client_ip;
mod config;
mod cors;
mod durability;
mod gateway;
mod hmac;
mod http1;
mod issuers;
mod oauth;
mod proxy;
mod ratelimit;
mod sign_cli;
mod signed_schemes;
mod signing;
mod webhooks;
mod websocket;

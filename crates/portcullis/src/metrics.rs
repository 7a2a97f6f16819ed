//! Prometheus metrics: requests by route, scheme and outcome; latency; rate-limit refusals;
//! configuration reloads; upstream targets' health.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route, scheme, outcome}`.
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`.
    pub latency: HistogramVec,
    /// `portcullis_rate_limited_total{route}`.
    pub rate_limited: IntCounterVec,
    /// `portcullis_config_reloads_total{outcome}` (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// `portcullis_upstream_target_up{upstream, target}`: 1 in rotation, 0 out.
    pub upstream_up: IntGaugeVec,
    /// `portcullis_upstream_target_transitions_total{upstream, target, to}` (`out`, `in`).
    pub upstream_transitions: IntCounterVec,
    /// `portcullis_upstream_retries_total{upstream}`: requests sent to another target after
    /// the first could not be reached.
    pub upstream_retries: IntCounterVec,
    /// `portcullis_issuer_key_fetches_total{issuer, outcome}` (`ok`, `error`): fetches of an
    /// external issuer's JWKS.
    pub issuer_fetches: IntCounterVec,
    /// `portcullis_issuer_keys{issuer}`: the usable keys held for an external issuer.
    pub issuer_keys: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Gateway requests by route, scheme and outcome",
            ),
            &["route", "scheme", "outcome"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request to response headers, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "portcullis_rate_limited_total",
                "Requests refused by a rate limit or quota, by route",
            ),
            &["route"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads (SIGHUP) by outcome: ok, or error (the routes in force stay)",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let upstream_up = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_target_up",
                "Whether an upstream group's target is in rotation (1) or out (0)",
            ),
            &["upstream", "target"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let upstream_transitions = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_target_transitions_total",
                "Upstream targets taken out of rotation (to=out) or put back (to=in)",
            ),
            &["upstream", "target", "to"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_retries_total",
                "Requests sent to another target of an upstream group after the first could not be reached",
            ),
            &["upstream"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let issuer_fetches = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_key_fetches_total",
                "Background fetches of an external token issuer's keys, by outcome (ok, error; on error the keys held stay)",
            ),
            &["issuer", "outcome"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        let issuer_keys = IntGaugeVec::new(
            Opts::new(
                "portcullis_issuer_keys",
                "Usable signing keys held for an external token issuer (0: none fetched yet)",
            ),
            &["issuer"],
        )
        .unwrap_or_else(|_| unreachable!("static metric definition"));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(rate_limited.clone()),
            Box::new(config_reloads.clone()),
            Box::new(upstream_up.clone()),
            Box::new(upstream_transitions.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(issuer_fetches.clone()),
            Box::new(issuer_keys.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            registry,
            requests,
            latency,
            rate_limited,
            config_reloads,
            upstream_up,
            upstream_transitions,
            upstream_retries,
            issuer_fetches,
            issuer_keys,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

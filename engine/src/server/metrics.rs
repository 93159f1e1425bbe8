//! `GET /metrics`: the scheduler's counters in the Prometheus text format (version 0.0.4).
//!
//! Counters only grow (rates come from Prometheus' `rate()`); gauges are the state now. The
//! throughput gauge is tokens per second of decode work since start, the cache hit rate the
//! share of admitted requests that reused a cached prefix.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::routes::AppState;
use super::scheduler::Metrics;

/// The exposition text for `m`.
pub fn render(m: &Metrics) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let generated = get(&m.generated_tokens);
    let decode_s = get(&m.decode_micros) as f64 / 1e6;
    let lookups = get(&m.cache_lookups);
    let hits = get(&m.cache_hits);
    let rows: [(&str, &str, &str, f64); 24] = [
        ("queue_depth", "gauge", "Requests waiting to join the batch", m.queued.load(Ordering::Relaxed) as f64),
        ("active_rows", "gauge", "Rows in the running batch", m.active_rows.load(Ordering::Relaxed) as f64),
        (
            "requests_in_flight",
            "gauge",
            "Requests admitted and not finished",
            m.in_system.load(Ordering::Relaxed) as f64,
        ),
        ("requests_total", "counter", "Generation requests submitted", get(&m.requests_total) as f64),
        ("rejected_total", "counter", "Requests refused with 503 (queue full)", get(&m.rejected_total) as f64),
        ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests", get(&m.prompt_tokens) as f64),
        (
            "cached_prompt_tokens_total",
            "counter",
            "Prompt tokens served from the prompt cache",
            get(&m.cached_tokens) as f64,
        ),
        ("generated_tokens_total", "counter", "Tokens generated", generated as f64),
        ("decode_seconds_total", "counter", "Seconds of batch steps that decoded", decode_s),
        (
            "decode_tokens_per_second",
            "gauge",
            "Generated tokens per second of decode steps since start",
            if decode_s > 0.0 { generated as f64 / decode_s } else { 0.0 },
        ),
        (
            "batched_steps_total",
            "counter",
            "Decode steps run as one batched forward pass",
            get(&m.batched_steps) as f64,
        ),
        ("batched_rows_total", "counter", "Rows carried by batched decode steps", get(&m.batched_rows) as f64),
        (
            "max_batch_rows",
            "gauge",
            "The most rows one batched decode step carried",
            m.max_batch_rows.load(Ordering::Relaxed) as f64,
        ),
        (
            "failed_batch_rows_total",
            "counter",
            "Rows of batched decode steps that failed (a plugin error or panic) and were retried alone",
            get(&m.failed_batch_rows) as f64,
        ),
        (
            "joint_prefill_passes_total",
            "counter",
            "Prefill passes shared by several joining rows",
            get(&m.joint_prefill_passes) as f64,
        ),
        (
            "joint_prefill_rows_total",
            "counter",
            "Rows carried by shared prefill passes",
            get(&m.joint_prefill_rows) as f64,
        ),
        (
            "speculative_rounds_total",
            "counter",
            "Draft-and-verify rounds of rows decoding alone with the draft model",
            get(&m.speculative_rounds) as f64,
        ),
        ("draft_tokens_total", "counter", "Tokens the draft model proposed", get(&m.draft_tokens) as f64),
        (
            "accepted_draft_tokens_total",
            "counter",
            "Proposed tokens the model agreed with (each one a forward pass saved)",
            get(&m.accepted_draft_tokens) as f64,
        ),
        ("mlx_active_bytes", "gauge", "Bytes in live MLX arrays", get(&m.mlx_active_bytes) as f64),
        ("mlx_cache_bytes", "gauge", "Freed bytes MLX keeps for reuse", get(&m.mlx_cache_bytes) as f64),
        ("prompt_cache_lookups_total", "counter", "Requests that looked up the prompt cache", lookups as f64),
        ("prompt_cache_hits_total", "counter", "Lookups that reused a cached prefix", hits as f64),
        (
            "prompt_cache_hit_rate",
            "gauge",
            "Share of lookups that reused a cached prefix",
            if lookups > 0 { hits as f64 / lookups as f64 } else { 0.0 },
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP mlx_engine_{name} {help}\n# TYPE mlx_engine_{name} {kind}\nmlx_engine_{name} {value}"
        );
    }
    out
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&s.scheduler.metrics)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_type() {
        let m = Metrics::default();
        m.generated_tokens.store(50, Ordering::Relaxed);
        m.decode_micros.store(2_000_000, Ordering::Relaxed);
        m.cache_lookups.store(4, Ordering::Relaxed);
        m.cache_hits.store(1, Ordering::Relaxed);
        let text = render(&m);
        assert!(text.contains("# TYPE mlx_engine_queue_depth gauge\nmlx_engine_queue_depth 0\n"), "{text}");
        assert!(text.contains("mlx_engine_decode_tokens_per_second 25\n"), "{text}");
        assert!(text.contains("mlx_engine_prompt_cache_hit_rate 0.25\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 24);
    }
}

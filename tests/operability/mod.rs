//! Operating the server: Prometheus metrics, request ids, the orchestrators' probes, and compression.

mod compression;
mod metrics;
mod probes;
mod request_ids;

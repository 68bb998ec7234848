//! Operating the server: Prometheus metrics, request ids, the orchestrators' probes, compression, and the fast
//! lane that answers the most frequent calls.

mod compression;
mod fast_lane;
mod metrics;
mod probes;
mod request_ids;

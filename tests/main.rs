//! The one integration-test binary: every module drives the real server through the generated SDK.

mod access;
mod agent_backends;
mod chat;
mod egress;
mod errors;
mod event_payloads;
mod fake_backend;
mod faults;
mod feeds;
mod history;
mod hygiene;
mod idempotency;
mod lifecycle;
mod messaging;
mod multi_instance;
mod operability;
mod pg;
mod restart;
mod robustness;
mod spec_agreement;
mod sqlite_wal;
mod store;
mod support;
mod timeouts;
mod webhooks;

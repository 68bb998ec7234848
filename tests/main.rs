//! The one integration-test binary: every module drives the real server through the generated SDK.

mod agent_backends;
mod errors;
mod history;
mod lifecycle;
mod messaging;
mod restart;
mod spec_agreement;
mod support;
mod timeouts;

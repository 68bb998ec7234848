//! The one integration-test binary: every module drives the real server.

mod spec_agreement;

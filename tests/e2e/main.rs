//! End-to-end tests: the real daemon on SoftHSM2 tokens and LocalStack's KMS.

mod access;
mod audit;
mod auth;
mod cli;
mod compat;
mod dsm;
mod external;
mod faults;
mod harness;
mod leases;
mod lost_answers;
mod manage;
mod metrics;
mod policy;
mod private;
mod proxy;
mod replicas;
mod rotate;
mod store_faults;
mod throttling;
mod token_faults;
mod token_keys;
mod transport;
mod upload;
mod validation;
mod vault;

//! End-to-end tests: the real daemon on SoftHSM2 tokens and LocalStack's KMS.

mod harness;
mod faults;
mod proxy;
mod upload;

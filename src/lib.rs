//! hsm-bridge: uploads keys into AWS KMS while their plaintext never leaves a PKCS#11 token.
#![recursion_limit = "256"]

pub mod audit;
pub mod background;
pub mod cckm;
pub mod client;
pub mod config;
pub mod error;
pub mod extcm;
pub mod http;
pub mod kmip;
pub mod kms;
pub mod metrics;
pub mod pkcs11;
pub mod probe;
pub mod secrets;
pub mod store;
pub mod tiers;
pub mod vault;
pub mod vocabulary;

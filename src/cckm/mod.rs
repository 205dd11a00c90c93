//! The CCKM domain: the upload request and its validation, key policies, policy templates,
//! the upload state machine, and the AWS key record.

pub mod actions;
pub mod jobs;
pub mod lease;
pub mod manage;
pub mod material;
pub mod policy;
pub mod record;
pub mod replicate;
pub mod request;
pub mod rotate;
pub mod schedule;
pub mod spec;
pub mod templates;
pub mod upload;

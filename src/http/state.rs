//! What every handler can reach.

use std::sync::Arc;

use crate::cckm::upload::Uploader;
use crate::http::auth::Authenticator;
use crate::kms::KmsRegistry;
use crate::pkcs11::TokenSet;
use crate::store::Store;
use crate::vault::Vault;

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub uploader: Arc<Uploader>,
    pub auditor: crate::audit::Auditor,
    pub keys: Arc<crate::cckm::manage::KeyManager>,
    pub sync: Arc<crate::background::sync::Synchronizer>,
    pub upload_jobs: Arc<crate::background::upload_jobs::JobRunner>,
    pub vault: Arc<Vault>,
    pub store: Store,
    pub kms: Arc<KmsRegistry>,
    pub tokens: Arc<TokenSet>,
    pub token_service: crate::http::auth_tokens::SharedTokens,
    pub export: Arc<crate::config::ExportPolicy>,
    pub detailed_errors: bool,
}

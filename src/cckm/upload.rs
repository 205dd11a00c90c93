//! The upload state machine: validate -> resolve KMS and source -> CreateKey ->
//! GetParametersForImport -> wrap in the token -> ImportKeyMaterial -> CreateAlias -> read back
//! -> persist. The attempt is recorded before CreateKey; any failure after it removes the
//! alias it made and schedules the half-made key for deletion (or leaves that to the cleaner
//! when AWS cannot be reached).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::Value;
use time::OffsetDateTime;

use super::policy;
use super::record::{self, Provenance};
use super::request::{
    Expiry, PolicyChoice, TEMPLATE_TAG, UPLOAD_TAG, UploadKeyBody, UploadRequest,
};
use super::spec::WrappingAlgorithm;
use crate::error::DomainError;
use crate::kms::{self, CreateKeyInput, KmsConn, KmsError, KmsErrorKind, SharedKms};
use crate::pkcs11::ops::{self, PrivateWrap};
use crate::pkcs11::profile::OaepHash;
use crate::pkcs11::{Token, TokenError};
use crate::store::attempts::{self, NewAttempt, state};
use crate::store::{Store, now_rfc3339};
use crate::tiers::{ResolvedSource, Tiers};

/// Attempt ids being worked on by this process; the cleaner leaves them alone.
#[derive(Default, Clone)]
pub struct LiveAttempts(Arc<Mutex<HashSet<String>>>);

impl LiveAttempts {
    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().map(|s| s.contains(id)).unwrap_or(true)
    }

    fn enter(&self, id: &str) -> LiveGuard {
        if let Ok(mut s) = self.0.lock() {
            s.insert(id.to_owned());
        }
        LiveGuard {
            set: self.clone(),
            id: id.to_owned(),
        }
    }
}

struct LiveGuard {
    set: LiveAttempts,
    id: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.0.lock() {
            s.remove(&self.id);
        }
    }
}

/// How the source key is wrapped for AWS, chosen from what its token proved.
#[derive(Debug, Clone, Copy)]
enum AwsWrap {
    /// A secret key: RSAES_OAEP_SHA_*.
    Secret(OaepHash),
    /// A private key: RSA_AES_KEY_WRAP_SHA_*.
    Private(PrivateWrap),
}

impl AwsWrap {
    fn choose(source: &ResolvedSource) -> Result<AwsWrap, DomainError> {
        let token = &source.token;
        let caps = token.capabilities().ok_or_else(|| {
            DomainError::Internal(format!("token {} has no self-test result", token.name))
        })?;
        match source.private {
            None => caps.best_oaep().map(AwsWrap::Secret).ok_or_else(|| {
                DomainError::Unprocessable(format!(
                    "token {} proved no RSA-OAEP wrap method",
                    token.name
                ))
            }),
            Some(kind) => caps
                .private_wrap(kind)
                .map(AwsWrap::Private)
                .map_err(|why| {
                    DomainError::Unprocessable(format!(
                        "token {} cannot export {kind} keys exactly, so it refuses to upload them \
                     (self-test: {why})",
                        token.name
                    ))
                }),
        }
    }

    fn algorithm(self) -> WrappingAlgorithm {
        match self {
            AwsWrap::Secret(OaepHash::Sha1) => WrappingAlgorithm::RsaesOaepSha1,
            AwsWrap::Secret(OaepHash::Sha256) => WrappingAlgorithm::RsaesOaepSha256,
            AwsWrap::Private(m) if m.hash() == OaepHash::Sha1 => {
                WrappingAlgorithm::RsaAesKeyWrapSha1
            }
            AwsWrap::Private(_) => WrappingAlgorithm::RsaAesKeyWrapSha256,
        }
    }

    fn wrapping_key_mechanism(self) -> MechanismType {
        match self {
            AwsWrap::Secret(_) => MechanismType::RSA_PKCS_OAEP,
            AwsWrap::Private(m) => m.wrapping_key_mechanism(),
        }
    }

    fn wrap(
        self,
        s: &Session,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>, TokenError> {
        match self {
            AwsWrap::Secret(hash) => ops::oaep_wrap(s, hash, wrapping, key),
            AwsWrap::Private(m) => ops::rsa_aes_wrap(s, m, wrapping, key),
        }
    }

    fn describe(self) -> String {
        match self {
            AwsWrap::Secret(hash) => format!("RSA-OAEP {hash}"),
            AwsWrap::Private(m) => m.describe(),
        }
    }
}

pub struct Uploader {
    pub kms: SharedKms,
    pub store: Store,
    pub tiers: Tiers,
    pub live: LiveAttempts,
    pub detailed_errors: bool,
}

struct Ctx<'a> {
    attempt: String,
    req: &'a UploadRequest,
    conn: &'a KmsConn,
    client: aws_sdk_kms::Client,
    key_id: String,
    arn: String,
}

impl Uploader {
    pub async fn upload(
        &self,
        body: UploadKeyBody,
        request_id: &str,
    ) -> Result<Value, DomainError> {
        let req = body
            .validate(OffsetDateTime::now_utc())
            .map_err(DomainError::Invalid)?;
        let conn = self
            .kms
            .find(&req.kms)
            .ok_or_else(|| {
                DomainError::NotFound(format!(
                    "kms: no KMS connection named (or with id) `{}`",
                    req.kms
                ))
            })?
            .clone();
        if !conn.has_region(&req.region) {
            return Err(DomainError::Invalid(format!(
                "region: `{}` is not a region of kms `{}` ({})",
                req.region,
                conn.cfg.name,
                conn.cfg.regions.join(", ")
            )));
        }
        let (policy_text, template_id) = self.policy_for(&req, &conn).await?;
        let source = self.tiers.resolve(req.tier, &req.source, req.spec).await?;
        let wrap = AwsWrap::choose(&source)?;
        let client = self.kms.client(&conn, &req.region).await;
        if let Some(a) = &req.alias
            && kms::alias_exists(&client, a.as_str()).await?
        {
            return Err(DomainError::Conflict(format!(
                "aws_param.Alias: {} already exists in {}",
                a.as_str(),
                req.region
            )));
        }

        let attempt = uuid::Uuid::new_v4().to_string();
        let _live = self.live.enter(&attempt);
        let new = NewAttempt {
            id: attempt.clone(),
            request_id: request_id.to_owned(),
            kms_id: conn.cfg.id.clone(),
            kms_name: conn.cfg.name.clone(),
            region: req.region.clone(),
            source_tier: req.tier.as_str().to_owned(),
            source_key: req.source.clone(),
            alias: req.alias.as_ref().map(|a| a.as_str().to_owned()),
        };
        self.store.call(move |c| attempts::begin(c, &new)).await?;

        let mut tags: Vec<(String, String)> = req
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
        tags.push((UPLOAD_TAG.to_owned(), attempt.clone()));
        if let Some(t) = &template_id {
            tags.push((TEMPLATE_TAG.to_owned(), t.clone()));
        }
        let created = kms::create_key(
            &client,
            CreateKeyInput {
                spec: req.spec,
                usage: req.usage,
                description: &req.description,
                policy: &policy_text,
                bypass_lockout: req.bypass_lockout,
                multi_region: req.multi_region,
                tags: &tags,
            },
        )
        .await;
        let meta = match created {
            Ok(m) => m,
            Err(e) => {
                // An answer from AWS means no key exists. A lost call may hide a created key:
                // the attempt stays `creating` and the cleaner looks for the key by its tag.
                let new_state = if e.answered() {
                    state::FAILED
                } else {
                    state::CREATING
                };
                let (id, msg) = (attempt.clone(), e.to_string());
                self.store
                    .call(move |c| attempts::finish(c, &id, new_state, Some(&msg)))
                    .await?;
                return Err(e.into());
            }
        };
        let ctx = Ctx {
            attempt: attempt.clone(),
            req: &req,
            conn: &conn,
            client,
            key_id: meta.key_id().to_owned(),
            arn: meta.arn().unwrap_or_default().to_owned(),
        };
        tracing::info!(attempt = %attempt, key_id = %ctx.key_id, "AWS key created");
        match self
            .complete(&ctx, source, wrap, template_id.as_deref())
            .await
        {
            Ok(record) => Ok(record),
            Err((stage, cause)) => Err(self.abandon(&ctx, stage, cause).await),
        }
    }

    async fn policy_for(
        &self,
        req: &UploadRequest,
        conn: &KmsConn,
    ) -> Result<(String, Option<String>), DomainError> {
        let account = &conn.cfg.account_id;
        Ok(match &req.policy {
            PolicyChoice::Default => (policy::default_policy(account).to_string(), None),
            PolicyChoice::Explicit(text) => (text.clone(), None),
            PolicyChoice::Lists(l) => (
                policy::from_lists(account, l, req.spec, req.usage).to_string(),
                None,
            ),
            PolicyChoice::Template(t) => {
                let tpl = super::templates::get(&self.store, t)
                    .await?
                    .ok_or_else(|| {
                        DomainError::NotFound(format!("policytemplate: no policy template `{t}`"))
                    })?;
                let tpl_kms = tpl["kms_id"].as_str().unwrap_or_default();
                if !tpl_kms.is_empty() && tpl_kms != conn.cfg.id {
                    return Err(DomainError::Invalid(format!(
                        "policytemplate: template `{t}` belongs to another kms"
                    )));
                }
                let text = super::templates::policy_text(&tpl, account, req.spec, req.usage)
                    .map_err(DomainError::Internal)?;
                (text, tpl["id"].as_str().map(str::to_owned))
            }
        })
    }

    async fn stage(
        &self,
        attempt: &str,
        stage: &'static str,
    ) -> Result<(), (&'static str, DomainError)> {
        let id = attempt.to_owned();
        self.store
            .call(move |c| attempts::stage(c, &id, stage))
            .await
            .map_err(|e| (stage, e.into()))
    }

    async fn complete(
        &self,
        ctx: &Ctx<'_>,
        source: ResolvedSource,
        wrap: AwsWrap,
        template_id: Option<&str>,
    ) -> Result<Value, (&'static str, DomainError)> {
        let req = ctx.req;
        let key_id = ctx.key_id.as_str();
        let wks = ctx.conn.cfg.wrapping_key_spec.clone();
        {
            let (id, k, a) = (ctx.attempt.clone(), ctx.key_id.clone(), ctx.arn.clone());
            self.store
                .call(move |c| attempts::key_created(c, &id, &k, &a))
                .await
                .map_err(|e| ("CreateKey", e.into()))?;
        }

        self.stage(&ctx.attempt, "GetParametersForImport").await?;
        let params = kms::get_parameters_for_import(&ctx.client, key_id, wrap.algorithm(), &wks)
            .await
            .map_err(|e| ("GetParametersForImport", e.into()))?;
        let bad_key = |why: String| {
            (
                "GetParametersForImport",
                DomainError::Kms(KmsError::upstream("GetParametersForImport", why)),
            )
        };
        let public = RsaPublicKey::from_public_key_der(&params.public_key_der)
            .map_err(|e| bad_key(format!("the wrapping key is not an RSA public key: {e}")))?;
        let want_bits: usize = wks.trim_start_matches("RSA_").parse().unwrap_or(0);
        if public.size() * 8 != want_bits {
            return Err(bad_key(format!(
                "a {}-bit wrapping key came back for {wks}",
                public.size() * 8
            )));
        }
        let modulus = public.n().to_bytes_be();
        let exponent = public.e().to_bytes_be();

        self.stage(&ctx.attempt, "Wrap").await?;
        let token: Arc<Token> = source.token.clone();
        let material = source.material.clone();
        let wrapped = token
            .run(move |s| {
                let key = material.materialize(s)?;
                let wrapping = ops::import_rsa_wrapping_key(
                    s,
                    &modulus,
                    &exponent,
                    wrap.wrapping_key_mechanism(),
                )?;
                wrap.wrap(s, wrapping.handle(), key.handle())
            })
            .await
            .map_err(|e| ("Wrap", DomainError::token(&token.name)(e)))?;

        self.stage(&ctx.attempt, "ImportKeyMaterial").await?;
        let valid_to = match req.expiry {
            Expiry::Never => None,
            Expiry::At(t) => Some(t),
        };
        let import = kms::MaterialImport {
            valid_to,
            description: req.material_description.as_deref(),
        };
        kms::import_key_material(&ctx.client, key_id, &params, wrapped, &import)
            .await
            .map_err(|e| ("ImportKeyMaterial", e.into()))?;

        if let Some(a) = &req.alias {
            self.stage(&ctx.attempt, "CreateAlias").await?;
            kms::create_alias(&ctx.client, a.as_str(), key_id)
                .await
                .map_err(|e| ("CreateAlias", e.into()))?;
        }

        self.stage(&ctx.attempt, "DescribeKey").await?;
        let st = kms::read_state(&ctx.client, key_id)
            .await
            .map_err(|e| ("DescribeKey", e.into()))?;

        self.stage(&ctx.attempt, "Persist").await?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_rfc3339();
        let ident = token.ident();
        let mut record = record::build(
            &id,
            &now,
            req,
            ctx.conn,
            &st,
            &Provenance {
                local_key_id: &source.local_key_id,
                local_key_name: &source.local_key_name,
                token: &token.name,
                token_serial: &ident.serial,
                wrapping_algorithm: wrap.algorithm().as_str(),
                wrap_method: &wrap.describe(),
                wrapping_key_spec: &wks,
                upload_id: &ctx.attempt,
                template_id,
            },
        );
        if let (Expiry::At(t), Value::Null) = (req.expiry, &record["aws_param"]["ValidTo"]) {
            // Some KMS implementations do not echo ValidTo: show the one that was imported.
            record["aws_param"]["ValidTo"] = Value::String(crate::store::format_time(t));
        }
        let stored = record.clone();
        let (kid, arn, kms_id, region, attempt) = (
            key_id.to_owned(),
            st.metadata.arn().unwrap_or_default().to_owned(),
            ctx.conn.cfg.id.clone(),
            req.region.clone(),
            ctx.attempt.clone(),
        );
        let aliases = st.aliases.clone();
        self.store
            .call(move |c| {
                let tx = c.transaction()?;
                crate::store::aws_keys::insert(
                    &tx,
                    &crate::store::aws_keys::AwsKeyRow {
                        id: &id,
                        key_id: &kid,
                        arn: &arn,
                        kms_id: &kms_id,
                        region: &region,
                        aliases: &aliases,
                        record: &stored,
                        created_at: &now,
                    },
                )?;
                if !attempts::complete(&tx, &attempt)? {
                    return Err(crate::store::StoreError::Corrupt(
                        "the upload attempt was taken over while it ran".into(),
                    ));
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| ("Persist", e.into()))?;
        tracing::info!(attempt = %ctx.attempt, key_id, alg = wrap.algorithm().as_str(), method = %wrap.describe(), token = %token.name, "upload complete");
        Ok(record)
    }

    /// After a failure past CreateKey: remove the alias it made and schedule the key for
    /// deletion now if AWS answers, record the outcome either way, and tell the caller what
    /// happened to the key.
    async fn abandon(&self, ctx: &Ctx<'_>, stage: &'static str, cause: DomainError) -> DomainError {
        let key_id = ctx.key_id.as_str();
        // AWS failing on a key it has just created is its fault, not the caller's, except for
        // an alias taken by someone else in the meantime.
        let cause = match cause {
            DomainError::Kms(k)
                if matches!(k.kind, KmsErrorKind::NotFound | KmsErrorKind::Conflict)
                    && stage != "CreateAlias" =>
            {
                DomainError::Kms(KmsError {
                    kind: KmsErrorKind::Upstream,
                    ..k
                })
            }
            DomainError::Kms(k) if k.kind == KmsErrorKind::BadRequest && stage != "CreateAlias" => {
                DomainError::Kms(KmsError {
                    kind: KmsErrorKind::Upstream,
                    ..k
                })
            }
            other => other,
        };
        let reason = cause.public_message();
        if self.detailed_errors {
            tracing::warn!(attempt = %ctx.attempt, key_id, stage, error = %cause, "upload failed after CreateKey");
        } else {
            tracing::warn!(attempt = %ctx.attempt, key_id, stage, error = %reason, "upload failed after CreateKey");
        }
        {
            let (id, k, a, msg) = (
                ctx.attempt.clone(),
                ctx.key_id.clone(),
                ctx.arn.clone(),
                format!("{stage}: {reason}"),
            );
            if let Err(e) = self
                .store
                .call(move |c| {
                    attempts::key_created(c, &id, &k, &a)?;
                    attempts::finish(c, &id, state::CLEANUP_PENDING, Some(&msg))
                })
                .await
            {
                tracing::error!(error = %e, "could not record the failed attempt");
            }
        }
        let mut outcome = Ok(());
        if let Some(alias) = &ctx.req.alias {
            outcome = kms::delete_alias_of(&ctx.client, alias.as_str(), key_id).await;
        }
        let scheduled = match outcome {
            Ok(()) => kms::schedule_deletion(&ctx.client, key_id).await,
            Err(e) => Err(e),
        };
        let ok = scheduled.is_ok();
        {
            let id = ctx.attempt.clone();
            let o: Result<Option<String>, String> = scheduled
                .as_ref()
                .map(|d| {
                    d.as_ref()
                        .and_then(|d| record::aws_time(Some(d)).as_str().map(str::to_owned))
                })
                .map_err(|e| e.to_string());
            if let Err(e) = self
                .store
                .call(move |c| {
                    attempts::cleanup_result(
                        c,
                        &id,
                        o.as_ref().map(|d| d.as_deref()).map_err(|e| e.as_str()),
                    )
                })
                .await
            {
                tracing::error!(error = %e, "could not record the cleanup outcome");
            }
        }
        let what = if ok {
            format!("AWS key {key_id} created for it has been scheduled for deletion (7 days)")
        } else {
            format!(
                "AWS key {key_id} created for it could not be scheduled for deletion yet; \
                 the bridge retries until AWS answers"
            )
        };
        DomainError::HalfMade {
            message: format!(
                "upload failed at {stage}: {reason}. The {what} (upload attempt {}).",
                ctx.attempt
            ),
            cause: Box::new(cause),
        }
    }
}

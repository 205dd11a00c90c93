//! The upload state machine: validate -> resolve KMS and source -> CreateKey ->
//! GetParametersForImport -> wrap in the token -> ImportKeyMaterial -> CreateAlias -> read back
//! -> persist. The attempt is recorded before CreateKey; any failure after it removes the
//! alias it made and schedules the half-made key for deletion (or leaves that to the cleaner
//! when AWS cannot be reached).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use time::OffsetDateTime;

use super::material::{self, AttemptStages, AwsWrap};
use super::policy;
use super::record::{self, Provenance};
use super::request::{
    Expiry, PolicyChoice, TEMPLATE_TAG, UPLOAD_TAG, UploadKeyBody, UploadRequest,
};
use super::spec::{KeySpec, KeyUsage};
use crate::error::DomainError;
use crate::kms::{self, CreateKeyInput, KmsConn, KmsError, KmsErrorKind, SharedKms};
use crate::metrics::Counted;
use crate::store::attempts::{self, NewAttempt, state};
use crate::store::audit::Event;
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

/// The AWS calls of a complete upload, in order (the alias check, a DescribeKey of the
/// alias, and CreateAlias only with an alias). What the bridge sent (policy, tags, alias) is
/// not read back: the periodic synchronization keeps the record true afterwards.
const UPLOAD_CALLS: &[&str] = &[
    "DescribeKey",
    "CreateKey",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "CreateAlias",
    "DescribeKey",
];

pub struct Uploader {
    pub kms: SharedKms,
    pub store: Store,
    pub tiers: Tiers,
    pub live: LiveAttempts,
    pub detailed_errors: bool,
    /// `schedules.allow_seconds`: leases in seconds (test configurations only).
    pub allow_seconds: bool,
    /// This bridge's name in the cluster: the owner recorded on its attempts.
    pub node_id: String,
    /// Turns to do an upload's work (`server.max_active_uploads`).
    pub active: tokio::sync::Semaphore,
}

/// An upload's turn; given back (and counted out) when dropped.
struct UploadTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _active: Counted,
}

struct Ctx<'a> {
    attempt: String,
    request_id: &'a str,
    actor: &'a str,
    req: &'a UploadRequest,
    conn: &'a KmsConn,
    client: aws_sdk_kms::Client,
    key_id: String,
    arn: String,
    /// What CreateKey was sent, which the record shows without reading it back.
    policy: &'a str,
    tags: &'a [(String, String)],
    /// The request's audit entry, committed with the record.
    entry: Option<Event>,
}

impl Uploader {
    /// Waits for a turn to do an upload's work; the request's own timeout bounds the wait.
    async fn turn(&self) -> Result<UploadTurn<'_>, DomainError> {
        let waiting = Counted::new(&crate::metrics::get().uploads_waiting);
        let permit = self.active.acquire().await;
        drop(waiting);
        let permit =
            permit.map_err(|_| DomainError::Unavailable("the bridge is stopping".into()))?;
        Ok(UploadTurn {
            _permit: permit,
            _active: Counted::new(&crate::metrics::get().uploads_active),
        })
    }

    pub async fn upload(
        &self,
        body: UploadKeyBody,
        request_id: &str,
        actor: &str,
    ) -> Result<Value, DomainError> {
        self.run(body, request_id, actor, None, None).await
    }

    /// The same, with the audit entry of the request committed in the transaction that
    /// completes the upload (not written if the upload fails).
    pub async fn upload_recorded(
        &self,
        body: UploadKeyBody,
        request_id: &str,
        actor: &str,
        entry: Event,
    ) -> Result<Value, DomainError> {
        self.run(body, request_id, actor, None, Some(entry)).await
    }

    /// The same, under an attempt id chosen (and recorded) by the caller beforehand, as an
    /// upload job does for each item: after a crash, the record an attempt made tells that the
    /// item was uploaded. A new id otherwise.
    pub async fn upload_as(
        &self,
        body: UploadKeyBody,
        request_id: &str,
        actor: &str,
        attempt: String,
    ) -> Result<Value, DomainError> {
        self.run(body, request_id, actor, Some(attempt), None).await
    }

    async fn run(
        &self,
        body: UploadKeyBody,
        request_id: &str,
        actor: &str,
        attempt: Option<String>,
        entry: Option<Event>,
    ) -> Result<Value, DomainError> {
        let now = OffsetDateTime::now_utc();
        let mut req = body.validate(now).map_err(DomainError::Invalid)?;
        if req.lease.is_some_and(|l| l.in_seconds) && !self.allow_seconds {
            return Err(DomainError::Invalid(
                "lease_secs: only in test configurations (schedules.allow_seconds); use lease_days"
                    .into(),
            ));
        }
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
        if let (None, Expiry::Never, Some(d)) = (req.lease, req.expiry, conn.cfg.lease_days) {
            let lease = super::request::Lease {
                secs: d * 86_400,
                in_seconds: false,
            };
            req.lease = Some(lease);
            req.expiry = Expiry::At(now + time::Duration::seconds(lease.secs as i64));
        }
        let req = req;
        if !conn.has_region(&req.region) {
            return Err(DomainError::Invalid(format!(
                "region: `{}` is not a region of kms `{}` ({})",
                req.region,
                conn.cfg.name,
                conn.cfg.regions.join(", ")
            )));
        }
        let _turn = self.turn().await?;
        // Boxed: an upload waiting for its turn holds only what it needed to get here, not the
        // state of every step after.
        Box::pin(self.work(req, conn, request_id, actor, attempt, entry)).await
    }

    /// An upload's work, once it has its turn.
    async fn work(
        &self,
        req: UploadRequest,
        conn: KmsConn,
        request_id: &str,
        actor: &str,
        attempt: Option<String>,
        entry: Option<Event>,
    ) -> Result<Value, DomainError> {
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

        let attempt = attempt.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
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
            node_id: Some(self.node_id.clone()),
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
            &self.kms.create_client(&conn, &req.region).await,
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
        let created = match created {
            // The answer was lost: AWS may have made the key. Never ask again (that would make
            // a second one): look for it by the attempt's tag.
            Err(e) if !e.answered() => match self.recover_created(&client, &attempt).await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => {
                    let (id, msg) = (attempt.clone(), e.to_string());
                    self.store
                        .call(move |c| attempts::finish(c, &id, state::FAILED, Some(&msg)))
                        .await?;
                    return Err(e.into());
                }
                Err(_) => Err(e),
            },
            other => other,
        };
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
            request_id,
            actor,
            req: &req,
            conn: &conn,
            client,
            key_id: meta.key_id().to_owned(),
            arn: meta.arn().unwrap_or_default().to_owned(),
            policy: &policy_text,
            tags: &tags,
            entry,
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

    /// After a lost CreateKey answer: the keys carrying the attempt's tag. The oldest is kept
    /// and the upload goes on with it; any other is scheduled for deletion. `Ok(None)`: AWS
    /// made no key. An error: AWS cannot be asked; the cleaner will look later.
    async fn recover_created(
        &self,
        client: &aws_sdk_kms::Client,
        attempt: &str,
    ) -> Result<Option<aws_sdk_kms::types::KeyMetadata>, KmsError> {
        let found = kms::find_keys_tagged(client, UPLOAD_TAG, attempt).await?;
        let mut metas = Vec::new();
        for k in &found {
            metas.push(kms::describe(client, k).await?);
        }
        metas.sort_by_key(|m| m.creation_date().map(|d| (d.secs(), d.subsec_nanos())));
        let mut metas = metas.into_iter();
        let Some(kept) = metas.next() else {
            return Ok(None);
        };
        let id = attempt.to_owned();
        if let Err(e) = self
            .store
            .call(move |c| attempts::mark_uncertain(c, &id))
            .await
        {
            tracing::error!(error = %e, "could not mark the attempt");
        }
        for extra in metas {
            tracing::warn!(
                attempt,
                key_id = extra.key_id(),
                "a second key carries this upload's tag: scheduling it for deletion"
            );
            if let Err(e) = kms::schedule_deletion(client, extra.key_id()).await {
                tracing::warn!(error = %e, "could not schedule the extra key yet; the cleaner will");
            }
        }
        tracing::info!(
            attempt,
            key_id = kept.key_id(),
            "CreateKey's answer was lost; the key it made was found by its tag"
        );
        Ok(Some(kept))
    }

    async fn policy_for(
        &self,
        req: &UploadRequest,
        conn: &KmsConn,
    ) -> Result<(String, Option<String>), DomainError> {
        self.policy_text(&req.policy, conn, req.spec, req.usage)
            .await
    }

    /// The policy document a choice makes for a key of `spec` and `usage` in `conn`'s
    /// account, and the template it came from.
    pub async fn policy_text(
        &self,
        choice: &PolicyChoice,
        conn: &KmsConn,
        spec: KeySpec,
        usage: KeyUsage,
    ) -> Result<(String, Option<String>), DomainError> {
        let account = &conn.cfg.account_id;
        Ok(match choice {
            PolicyChoice::Default => (policy::default_policy(account).to_string(), None),
            PolicyChoice::Explicit(text) => (text.clone(), None),
            PolicyChoice::Lists(l) => (
                policy::from_lists(account, l, spec, usage).to_string(),
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
                let text = super::templates::policy_text(&tpl, account, spec, usage)
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
            .call_relaxed(move |c| attempts::stage(c, &id, stage))
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
            // Survives a crash of the process without an fsync; should the host lose it, the
            // attempt still reads `creating` and the cleaner finds its key by the upload tag.
            self.store
                .call_relaxed(move |c| attempts::key_created(c, &id, &k, &a, material::FIRST_STAGE))
                .await
                .map_err(|e| ("CreateKey", e.into()))?;
        }

        let valid_to = match req.expiry {
            Expiry::Never => None,
            Expiry::At(t) => Some(t),
        };
        let import = kms::MaterialImport {
            valid_to,
            description: req.material_description.as_deref(),
            new_material: false,
        };
        let stages = AttemptStages {
            store: &self.store,
            attempt: &ctx.attempt,
            recorded: material::FIRST_STAGE,
        };
        // The record keeps the fingerprint of the key that was wrapped, taken in the same
        // session: what any later import must prove it carries again.
        let fingerprint = material::wrap_and_import(
            &ctx.client,
            key_id,
            &source,
            req.spec,
            wrap,
            &wks,
            &import,
            None,
            &stages,
        )
        .await?;
        let token = source.token.clone();

        if let Some(a) = &req.alias {
            self.stage(&ctx.attempt, "CreateAlias").await?;
            kms::create_alias(&ctx.client, a.as_str(), key_id)
                .await
                .map_err(|e| ("CreateAlias", e.into()))?;
        }

        self.stage(&ctx.attempt, "DescribeKey").await?;
        let sent = kms::Sent {
            policy: ctx.policy,
            aliases: req.alias.iter().map(|a| a.as_str().to_owned()).collect(),
            tags: ctx.tags,
        };
        let st = kms::read_new_state(&ctx.client, key_id, sent)
            .await
            .map_err(|e| ("DescribeKey", e.into()))?;

        // The last stage, Persist, is recorded by the transaction that completes the attempt.
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
                fingerprint: fingerprint.as_ref(),
            },
        );
        if let (Expiry::At(t), Value::Null) = (req.expiry, &record["aws_param"]["ValidTo"]) {
            // Some KMS implementations do not echo ValidTo: show the one that was imported.
            record["aws_param"]["ValidTo"] = Value::String(crate::store::format_time(t));
        }
        if let (Some(lease), Expiry::At(t)) = (req.lease, req.expiry) {
            record["lease"] = super::lease::fresh(lease, OffsetDateTime::now_utc(), t);
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
        let detail = serde_json::json!({
            "source_key_tier": req.tier.as_str(),
            "source_key_identifier": req.source,
            "wrapping_algorithm": wrap.algorithm().as_str(),
            "token": token.name,
            "upload_id": ctx.attempt,
            "ValidTo": record["aws_param"]["ValidTo"],
        });
        let entry = crate::store::history::Entry {
            record_id: id.clone(),
            key_id: kid.clone(),
            action: "upload-key",
            actor: ctx.actor.to_owned(),
            request_id: ctx.request_id.to_owned(),
            outcome: "success",
            aws_calls: UPLOAD_CALLS.to_vec(),
            detail,
        };
        let audit_entry = ctx.entry.clone();
        self.store
            .call(move |c| {
                let tx = c.transaction()?;
                crate::store::history::append(&tx, &entry)?;
                if let Some(e) = &audit_entry {
                    crate::store::audit::append_in(&tx, e)?;
                }
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
                    attempts::key_created(c, &id, &k, &a, stage)?;
                    attempts::finish(c, &id, state::CLEANUP_PENDING, Some(&msg))
                })
                .await
            {
                tracing::error!(error = %e, "could not record the failed attempt");
            }
        }
        // Deletion first: a refused DeleteAlias must not keep a half-made key enabled.
        let mut scheduled = kms::schedule_deletion(&ctx.client, key_id).await;
        let ok = scheduled.is_ok();
        let mut alias_left = false;
        if let Some(alias) = &ctx.req.alias
            && let Err(e) = kms::delete_alias_of(&ctx.client, alias.as_str(), key_id).await
        {
            tracing::warn!(attempt = %ctx.attempt, alias = alias.as_str(), error = %e, "the failed upload's alias could not be removed yet");
            alias_left = true;
            if scheduled.is_ok() {
                // The key is safe; the attempt stays pending so the cleaner removes the alias.
                scheduled = Err(e);
            }
        }
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
        let what = if ok && alias_left {
            format!(
                "AWS key {key_id} created for it has been scheduled for deletion (7 days); \
                 its alias is removed once AWS allows it"
            )
        } else if ok {
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

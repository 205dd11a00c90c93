//! Metrics in Prometheus text format (`GET /metrics`): uploads by tier, key spec and outcome,
//! upload latency, KMS calls by operation and outcome (counted by an interceptor on every SDK
//! client, so no call escapes it), throttles, the token session pools, the self-test state of
//! each token and the cleanup backlog.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub tier: String,
    pub key_spec: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsLabels {
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub token: String,
}

pub struct Metrics {
    pub uploads: Family<UploadLabels, Counter>,
    pub upload_seconds: Histogram,
    pub kms_calls: Family<KmsLabels, Counter>,
    pub kms_throttles: Family<OperationLabels, Counter>,
    pub limiter_wait_seconds: Family<OperationLabels, Histogram>,
    pub session_wait_seconds: Family<TokenLabels, Histogram>,
    pub sessions_in_use: Family<TokenLabels, Gauge>,
    pub token_ready: Family<TokenLabels, Gauge>,
    pub cleanup_backlog: Gauge,
    pub uploads_active: Gauge,
    pub uploads_waiting: Gauge,
    pub job_items_done: Family<StateLabels, Counter>,
    pub job_items_open: Family<StateLabels, Gauge>,
    registry: Registry,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

impl Metrics {
    fn new() -> Self {
        let uploads = Family::<UploadLabels, Counter>::default();
        let upload_seconds = Histogram::new(latency_buckets());
        let kms_calls = Family::<KmsLabels, Counter>::default();
        let kms_throttles = Family::<OperationLabels, Counter>::default();
        let limiter_wait_seconds =
            Family::<OperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            });
        let session_wait_seconds = Family::<TokenLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let sessions_in_use = Family::<TokenLabels, Gauge>::default();
        let token_ready = Family::<TokenLabels, Gauge>::default();
        let cleanup_backlog = Gauge::default();
        let uploads_active = Gauge::default();
        let uploads_waiting = Gauge::default();
        let job_items_done = Family::<StateLabels, Counter>::default();
        let job_items_open = Family::<StateLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("hsm_bridge");
        registry.register(
            "uploads",
            "Uploads by source tier, key spec and outcome",
            uploads.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Time from request to answer of uploads",
            upload_seconds.clone(),
        );
        registry.register(
            "kms_calls",
            "AWS KMS calls by operation and outcome (success, client_error, server_error, no_answer)",
            kms_calls.clone(),
        );
        registry.register(
            "kms_throttles",
            "AWS KMS calls answered with ThrottlingException (the limiter slows down and sends them again)",
            kms_throttles.clone(),
        );
        registry.register(
            "kms_limiter_wait_seconds",
            "Time KMS calls waited for the request-rate limiter",
            limiter_wait_seconds.clone(),
        );
        registry.register(
            "token_session_wait_seconds",
            "Time spent waiting for a token session",
            session_wait_seconds.clone(),
        );
        registry.register(
            "token_sessions_in_use",
            "Token sessions in use",
            sessions_in_use.clone(),
        );
        registry.register(
            "token_ready",
            "1 while the token is usable, 0 once it failed (a refused PIN)",
            token_ready.clone(),
        );
        registry.register(
            "uploads_active",
            "Uploads doing their work now (at most server.max_active_uploads)",
            uploads_active.clone(),
        );
        registry.register(
            "uploads_waiting",
            "Uploads checked and waiting for a turn (server.max_active_uploads)",
            uploads_waiting.clone(),
        );
        registry.register(
            "cleanup_backlog",
            "AWS keys of failed uploads still waiting to be scheduled for deletion",
            cleanup_backlog.clone(),
        );
        registry.register(
            "upload_job_items_done",
            "Items of upload jobs ended, by how (completed, failed, retried)",
            job_items_done.clone(),
        );
        registry.register(
            "upload_job_items",
            "Items of the open upload jobs, by state (pending, running, completed, failed, cancelled)",
            job_items_open.clone(),
        );
        Self {
            uploads,
            upload_seconds,
            kms_calls,
            kms_throttles,
            limiter_wait_seconds,
            session_wait_seconds,
            sessions_in_use,
            token_ready,
            cleanup_backlog,
            uploads_active,
            uploads_waiting,
            job_items_done,
            job_items_open,
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn upload_done(&self, tier: &str, key_spec: &str, ok: bool, took: Duration) {
        self.uploads
            .get_or_create(&UploadLabels {
                tier: tier.to_owned(),
                key_spec: key_spec.to_owned(),
                outcome: if ok { "success" } else { "failure" }.to_owned(),
            })
            .inc();
        self.upload_seconds.observe(took.as_secs_f64());
    }
}

/// One in a gauge for as long as it lives (also when the future holding it is dropped).
pub struct Counted(&'static Gauge);

impl Counted {
    pub fn new(g: &'static Gauge) -> Self {
        g.inc();
        Counted(g)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's metrics (one registry for every part).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Counts every attempt of every call of the SDK client it is installed on (a retry is a call
/// on the wire too), by operation and outcome.
#[derive(Debug, Default)]
pub struct KmsCallCounter;

impl Intercept for KmsCallCounter {
    fn name(&self) -> &'static str {
        "hsm-bridge KMS call counter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let outcome = match context.response().map(|r| r.status().as_u16()) {
            None => "no_answer",
            Some(200..=299) => "success",
            Some(400..=499) => "client_error",
            Some(_) => "server_error",
        };
        let labels = KmsLabels {
            operation,
            outcome: outcome.to_owned(),
        };
        get().kms_calls.get_or_create(&labels).inc();
        Ok(())
    }
}

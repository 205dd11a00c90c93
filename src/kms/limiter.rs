//! Pacing of every KMS call: a token bucket per (account, Region, operation) whose rate starts
//! at AWS's default request quota for the operation (configurable per connection), halves when
//! AWS answers `ThrottlingException` and creeps back after calls that pass. It sits in the SDK
//! client's HTTP connector, so no call escapes it, and a throttled call (which AWS did not
//! perform) is sent again after the limiter's wait until `throttle_deadline_secs` passes: no
//! upload fails because of throttling unless that deadline passes.
//!
//! The time a call waits here is not AWS's: `operation_timeout_secs` bounds each exchange with
//! AWS from after the limiter's wait, so a long queue (a bulk job, many uploads in flight) is
//! never mistaken for a KMS that does not answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;

/// AWS's default request quotas (requests per second, per account and Region), from the AWS KMS
/// Developer Guide's "Request quotas" table
/// (<https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html>).
/// Operations it does not list here get `DEFAULT_RATE`. (AWS counts a ReplicateKey as one call
/// in the primary's Region and two CreateKey in the replica's; the limiter counts calls.)
pub const AWS_DEFAULT_QUOTAS: &[(&str, f64)] = &[
    ("CancelKeyDeletion", 5.0),
    ("CreateAlias", 5.0),
    ("CreateKey", 5.0),
    ("DeleteAlias", 15.0),
    ("DeleteImportedKeyMaterial", 15.0),
    ("DescribeKey", 2000.0),
    ("DisableKey", 5.0),
    ("EnableKey", 5.0),
    ("GetKeyPolicy", 1000.0),
    ("GetKeyRotationStatus", 1000.0),
    ("GetParametersForImport", 1.0),
    ("ImportKeyMaterial", 15.0),
    ("ListAliases", 500.0),
    ("ListKeyRotations", 100.0),
    ("ListKeys", 500.0),
    ("ListResourceTags", 2000.0),
    ("PutKeyPolicy", 15.0),
    ("ReplicateKey", 5.0),
    ("RotateKeyOnDemand", 5.0),
    ("ScheduleKeyDeletion", 15.0),
    ("TagResource", 10.0),
    ("UntagResource", 5.0),
    ("UpdateAlias", 5.0),
    ("UpdateKeyDescription", 5.0),
];

/// The rate of operations the table does not name.
pub const DEFAULT_RATE: f64 = 5.0;

type Key = (String, String, String);

struct Bucket {
    /// The configured quota.
    base: f64,
    /// The rate in force: the quota, or less after throttling.
    rate: f64,
    /// Calls that may start now (negative: calls already promised a later start).
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(base: f64) -> Self {
        Self {
            base,
            rate: base,
            tokens: base.min(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let burst = self.rate.max(1.0);
        let dt = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(burst);
        self.last = now;
    }
}

pub struct Limiter {
    buckets: Mutex<HashMap<Key, Bucket>>,
    /// Per account: operation -> requests per second.
    quotas: HashMap<String, HashMap<String, f64>>,
    deadline: HashMap<String, Duration>,
}

impl Limiter {
    /// `connections`: per account, the quotas that replace AWS's defaults and the deadline.
    pub fn new(connections: &[(String, HashMap<String, f64>, Duration)]) -> Self {
        let mut quotas = HashMap::new();
        let mut deadline = HashMap::new();
        for (account, overrides, d) in connections {
            let mut table: HashMap<String, f64> = AWS_DEFAULT_QUOTAS
                .iter()
                .map(|(op, r)| ((*op).to_owned(), *r))
                .collect();
            table.extend(overrides.iter().map(|(k, v)| (k.clone(), *v)));
            quotas.insert(account.clone(), table);
            deadline.insert(account.clone(), *d);
        }
        Self {
            buckets: Mutex::new(HashMap::new()),
            quotas,
            deadline,
        }
    }

    fn base(&self, key: &Key) -> f64 {
        self.quotas
            .get(&key.0)
            .and_then(|t| t.get(&key.2))
            .copied()
            .unwrap_or(DEFAULT_RATE)
            .max(0.01)
    }

    fn deadline(&self, account: &str) -> Duration {
        self.deadline
            .get(account)
            .copied()
            .unwrap_or(Duration::from_secs(120))
    }

    /// Waits until a call of `key` may start; answers how long it waited.
    pub async fn admit(&self, key: &Key) -> Duration {
        let wait = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let base = self.base(key);
            let b = buckets
                .entry(key.clone())
                .or_insert_with(|| Bucket::new(base));
            let now = Instant::now();
            b.refill(now);
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        crate::metrics::get()
            .limiter_wait_seconds
            .get_or_create(&crate::metrics::OperationLabels {
                operation: key.2.clone(),
            })
            .observe(wait.as_secs_f64());
        wait
    }

    /// AWS throttled a call of `key`: halve the rate (not below a tenth of the quota).
    pub fn throttled(&self, key: &Key) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(key) {
            b.rate = (b.rate / 2.0).max(b.base / 10.0);
            b.tokens = b.tokens.min(0.0);
            tracing::warn!(operation = %key.2, region = %key.1, rate = b.rate, "AWS KMS throttled a call; slowing down");
        }
        crate::metrics::get()
            .kms_throttles
            .get_or_create(&crate::metrics::OperationLabels {
                operation: key.2.clone(),
            })
            .inc();
    }

    /// A call of `key` went through: recover a twentieth of the quota, up to the quota.
    pub fn passed(&self, key: &Key) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(key)
            && b.rate < b.base
        {
            b.rate = (b.rate + b.base / 20.0).min(b.base);
        }
    }
}

/// The SDK's HTTP client, with every call paced by the limiter.
#[derive(Clone)]
pub struct LimitedClient {
    pub inner: SharedHttpClient,
    pub limiter: Arc<Limiter>,
    pub account: String,
    pub region: String,
    /// How long one exchange with AWS may take, the limiter's wait not counted.
    pub exchange_timeout: Duration,
}

impl std::fmt::Debug for LimitedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitedClient")
    }
}

impl HttpClient for LimitedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(LimitedConnector {
            inner: self.inner.http_connector(settings, components),
            client: self.clone(),
        })
    }
}

#[derive(Debug)]
struct LimitedConnector {
    inner: SharedHttpConnector,
    client: LimitedClient,
}

fn is_throttle(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| s.contains("ThrottlingException"))
}

impl HttpConnector for LimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let c = self.client.clone();
        HttpConnectorFuture::new(async move {
            let op = request
                .headers()
                .get("x-amz-target")
                .and_then(|t| t.rsplit('.').next())
                .unwrap_or("unknown")
                .to_owned();
            let key = (c.account.clone(), c.region.clone(), op);
            let deadline = c.limiter.deadline(&c.account);
            let started = Instant::now();
            let mut request = request;
            // HTTP/1.1 keeps connections open by default; saying so keeps them open with
            // servers that close unless asked (LocalStack's gateway): a new connection per call
            // costs more than the call. Not signed, as hop-by-hop headers never are.
            if !request.headers().contains_key("connection") {
                request.headers_mut().insert("connection", "keep-alive");
            }
            loop {
                c.limiter.admit(&key).await;
                let again = request.try_clone();
                let mut response = tokio::time::timeout(c.exchange_timeout, inner.call(request))
                    .await
                    .map_err(|_| {
                        ConnectorError::timeout("AWS KMS did not answer in time".into())
                    })??;
                if response.status().as_u16() != 400 {
                    c.limiter.passed(&key);
                    return Ok(response);
                }
                let bytes = ByteStream::new(response.take_body())
                    .collect()
                    .await
                    .map(|b| b.into_bytes())
                    .unwrap_or_default();
                let throttled = is_throttle(&bytes);
                *response.body_mut() = SdkBody::from(bytes);
                match (throttled, again) {
                    (true, Some(next)) if started.elapsed() < deadline => {
                        c.limiter.throttled(&key);
                        request = next;
                    }
                    (true, _) => {
                        c.limiter.throttled(&key);
                        return Ok(response);
                    }
                    (false, _) => return Ok(response),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_to_the_quota_and_slows_after_throttling() {
        let mut o = HashMap::new();
        o.insert("GetParametersForImport".to_owned(), 2.0);
        let l = Limiter::new(&[("a".into(), o, Duration::from_secs(60))]);
        let key = (
            "a".to_owned(),
            "r".to_owned(),
            "GetParametersForImport".to_owned(),
        );
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            l.admit(&key).await;
        }
        // One at once, then one every half second.
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "{took}");
        l.throttled(&key);
        let start = tokio::time::Instant::now();
        l.admit(&key).await;
        l.admit(&key).await;
        assert!(
            start.elapsed().as_secs_f64() >= 1.9,
            "half the rate after a throttle"
        );
        // Unknown operations get the default rate.
        let other = ("a".to_owned(), "r".to_owned(), "Whatever".to_owned());
        assert_eq!(l.base(&other), DEFAULT_RATE);
    }
}

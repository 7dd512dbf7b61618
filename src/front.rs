//! The HTTP API's view of the gateway: authenticates SPs by API key, rate
//! limits them, reserves a request's payload in the byte budgets, makes
//! accepted messages durable (group commit: the payload row once, then one
//! small record per device) before answering 201, and forwards every call to
//! the push service. The 201 comes from the store writer once the commit is
//! durable (`submit_then`), so no handler thread waits for an fsync.
//!
//! Owns API keys and rate buckets. Must never track messages itself: the push
//! service owns their state; this only asks it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::api::{ApiError, Caller, Gateway, SubmitReply};
use crate::config::Config;
use crate::coordinator::CoordinatorGauges;
use crate::metrics::{self, MetricsSources};
use crate::outbound::url_policy::UrlPolicy;
use crate::push::PushIds;
use crate::push::budget::{OverBudget, PayloadBudget};
use crate::push::message::Message;
use crate::push::service::ServiceCounters;
use crate::push::service::{Request, ServiceError, unix_ms};
use crate::push::submit::{self, SubmitError};
use crate::push::{format_id, parse_id};
use crate::registry::Registry;
use crate::shard::admission::Admission;
use crate::store::StoreOp;
use crate::store::{GroupCommitter, StoreError};

/// Longest an API thread waits for the push service to answer a query.
const SERVICE_REPLY_TIMEOUT_MS: u64 = 5_000;
/// The SP name used when no API keys are configured.
pub const OPEN_SP: &str = "default";

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Sp {
    name: String,
    default_profile: Option<String>,
    rate_per_s: Option<f64>,
    /// May call `/v1/admin/...`.
    admin: bool,
    bucket: Mutex<Bucket>,
}

/// How the API reaches the push service.
pub struct ServiceHandle {
    pub requests: crossbeam_channel::Sender<Request>,
    pub committer: Arc<GroupCommitter>,
    pub counters: Arc<ServiceCounters>,
    /// The payload byte budgets (reserved here, released by the service).
    pub budget: Arc<PayloadBudget>,
    /// Where callbacks may go: checked (DNS and every address) at submission.
    pub url_policy: Arc<UrlPolicy>,
}

/// A request's messages, built, budgeted and rate-counted, waiting for the
/// commit that makes them durable.
struct Accepted {
    messages: Vec<Message>,
    multicast: bool,
    sp: String,
    payload_len_bytes: u64,
    budget: Arc<PayloadBudget>,
    counters: Arc<ServiceCounters>,
    requests: crossbeam_channel::Sender<Request>,
}

impl Accepted {
    /// The answer once the commit's `outcome` is known: 201's body, or 503
    /// with the payload's budget given back (the batch is atomic: nothing was
    /// kept, and the service never hears of it).
    fn settle(self, outcome: Result<(), StoreError>) -> Result<serde_json::Value, ApiError> {
        if let Err(e) = outcome {
            self.budget.release(&self.sp, self.payload_len_bytes);
            self.counters.store_errors_api.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Unavailable(format!("store: {e}")));
        }
        let ids: Vec<String> = self.messages.iter().map(|m| format_id(m.id)).collect();
        // Durable already: if the service is gone, recovery at the next start resumes them.
        let _ = self.requests.send(Request::Submit(self.messages));
        Ok(if self.multicast {
            serde_json::json!({ "ids": ids })
        } else {
            serde_json::json!({ "id": ids[0] })
        })
    }
}

/// What the API front reads and asks, and nothing more.
pub struct FrontEnv {
    pub cfg: Arc<Config>,
    pub registry: Arc<Registry>,
    pub push_ids: Arc<PushIds>,
    pub admission: Arc<Admission>,
    pub gauges: Arc<CoordinatorGauges>,
    pub service: ServiceHandle,
    pub metrics: MetricsSources,
}

pub struct ApiFront {
    env: FrontEnv,
    /// API key -> SP; empty = open API.
    keys: HashMap<String, Arc<Sp>>,
    by_name: HashMap<String, Arc<Sp>>,
    /// The operator's bearer key (`admin_key_file`); None: only admin SPs.
    admin_key: Option<String>,
    /// The key `/metrics` requires (`metrics_key_file`); None: open.
    metrics_key: Option<String>,
}

/// Shortest admin or metrics key accepted, in bytes.
const OPERATOR_KEY_BYTES_MIN: usize = 16;
/// Longest key file read, in bytes.
const OPERATOR_KEY_FILE_BYTES_MAX: u64 = 4096;

/// Reads an operator key file: one token, surrounding whitespace trimmed.
fn read_key_file(setting: &str, path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else { return Ok(None) };
    let why = |e: String| format!("{setting} {}: {e}", path.display());
    let len = std::fs::metadata(path).map_err(|e| why(e.to_string()))?.len();
    if len > OPERATOR_KEY_FILE_BYTES_MAX {
        return Err(why(format!("{len} bytes, at most {OPERATOR_KEY_FILE_BYTES_MAX}")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| why(e.to_string()))?;
    let key = text.trim();
    if key.len() < OPERATOR_KEY_BYTES_MIN || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(why(format!(
            "the key must be one token of at least {OPERATOR_KEY_BYTES_MIN} bytes without spaces"
        )));
    }
    Ok(Some(key.to_string()))
}

/// The bearer token of an `Authorization` header.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
}

/// Compares two keys in time that depends only on their lengths.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiFront {
    /// Builds the front; reads the operator key files (an unreadable or weak one is an error).
    pub fn new(env: FrontEnv) -> Result<ApiFront, String> {
        let admin_key = read_key_file("admin_key_file", env.cfg.admin_key_file.as_deref())?;
        let metrics_key = read_key_file("metrics_key_file", env.cfg.metrics_key_file.as_deref())?;
        let mut keys = HashMap::new();
        let mut by_name = HashMap::new();
        for sp in &env.cfg.sps {
            let entry = Arc::new(Sp {
                name: sp.name.clone(),
                default_profile: sp.default_profile.clone(),
                rate_per_s: sp.rate_per_s,
                admin: sp.admin,
                bucket: Mutex::new(Bucket {
                    tokens: sp.rate_per_s.unwrap_or(0.0),
                    at: Instant::now(),
                }),
            });
            keys.insert(sp.api_key.clone(), entry.clone());
            by_name.insert(sp.name.clone(), entry);
        }
        if admin_key.as_deref().is_some_and(|k| keys.contains_key(k)) {
            return Err("admin_key_file: the admin key is also an [[sps]] api_key".into());
        }
        Ok(ApiFront {
            env,
            keys,
            by_name,
            admin_key,
            metrics_key,
        })
    }

    /// Whether admin endpoints can be reached at all (an admin key or an admin SP).
    pub fn admin_reachable(&self) -> bool {
        self.admin_key.is_some() || self.by_name.values().any(|sp| sp.admin)
    }

    /// An SP endpoint refuses the operator's key: it names no SP.
    fn sp_only(caller: &Caller) -> Result<(), ApiError> {
        if caller.operator {
            return Err(ApiError::Forbidden(
                "the admin key is for /v1/admin/... only; use an SP's API key".into(),
            ));
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    fn service(&self) -> Result<&ServiceHandle, ApiError> {
        Ok(&self.env.service)
    }

    /// Token bucket of `rate_per_s`, holding at most one second (`burst`,
    /// at least 1). A request of `n` messages needs min(n, burst) tokens and is
    /// charged all `n`: a multicast larger than the burst is admitted once the
    /// bucket is full and leaves it in debt (negative), so the requests after
    /// it wait until the debt is paid off. The rate holds over time, and the
    /// `Retry-After` of a refusal is when min(n, burst) tokens will be there.
    fn take_tokens(&self, sp: &str, n: usize) -> Result<(), ApiError> {
        let Some(sp) = self.by_name.get(sp) else { return Ok(()) };
        let Some(rate) = sp.rate_per_s else { return Ok(()) };
        let mut b = sp.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = rate.max(1.0);
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        let needed = (n as f64).min(burst);
        if b.tokens >= needed {
            b.tokens -= n as f64;
            Ok(())
        } else {
            let wait_s = ((needed - b.tokens) / rate).ceil().max(1.0).min(u32::MAX as f64) as u32;
            Err(ApiError::RateLimited { retry_after_s: wait_s })
        }
    }

    /// Reserves the request's payload (stored once) in the byte budgets.
    fn reserve_payload(&self, sp: &str, bytes: u64) -> Result<(), ApiError> {
        let service = self.service()?;
        service.budget.try_reserve(sp, bytes).map_err(|over| {
            let why = over.to_string();
            match over {
                OverBudget::Total { .. } => {
                    service.counters.payload_budget_refusals.fetch_add(1, Ordering::Relaxed);
                    ApiError::InsufficientStorage(why)
                }
                OverBudget::Sp { .. } => {
                    service
                        .counters
                        .sp_payload_budget_refusals
                        .fetch_add(1, Ordering::Relaxed);
                    ApiError::SpOverBudget(why)
                }
            }
        })
    }

    /// Everything `POST /v1/messages` does before its commit: the committer,
    /// the ops that make the messages durable, and the messages.
    fn accept(&self, caller: &Caller, body: &[u8]) -> Result<(Arc<GroupCommitter>, Vec<StoreOp>, Accepted), ApiError> {
        Self::sp_only(caller)?;
        let service = self.service()?;
        let default_profile = self.by_name.get(&caller.sp).and_then(|s| s.default_profile.as_deref());
        let cfg = &self.env.cfg;
        let submit::Submission { messages, multicast } =
            submit::build(body, &caller.sp, default_profile, cfg, &self.env.push_ids, unix_ms()).map_err(
                |e| match e {
                    SubmitError::Bad(m) => ApiError::BadRequest(m),
                    SubmitError::PayloadTooLarge { max_bytes } => ApiError::PayloadTooLarge { max_bytes },
                },
            )?;
        // One URL for the whole request: refused here with the reason, never dropped later.
        if let Some(url) = messages.first().and_then(|m| m.callback_url.as_deref())
            && let Err(why) = service.url_policy.check(url)
        {
            return Err(ApiError::BadRequest(format!("callback_url refused: {why}")));
        }
        // Held messages are evicted oldest-first to make room; in-flight ones are not.
        let in_flight = service.counters.pending.load(Ordering::Relaxed)
            - service
                .counters
                .queued
                .load(Ordering::Relaxed)
                .min(service.counters.pending.load(Ordering::Relaxed));
        if in_flight + messages.len() as u64 > cfg.pending_messages_max as u64 {
            return Err(ApiError::Overloaded { retry_after_s: 1 });
        }
        // A profile that does not queue needs the device online now (or another mechanism).
        if cfg.mechanisms.is_empty() {
            for m in messages.iter().filter(|m| !m.profile.queue_if_offline) {
                if self.env.registry.lookup(&m.device).is_none() {
                    return Err(ApiError::DeviceOffline(m.device.clone()));
                }
            }
        }
        // build() makes at least one message, all sharing one payload.
        let Some(payload) = messages.first().map(|m| m.payload.clone()) else {
            return Err(ApiError::BadRequest("no messages".into()));
        };
        self.reserve_payload(&caller.sp, payload.len_bytes)?;
        let release = || service.budget.release(&caller.sp, payload.len_bytes);
        if let Err(e) = self.take_tokens(&caller.sp, messages.len()) {
            release();
            return Err(e);
        }
        let mut ops = Vec::with_capacity(messages.len() + 1);
        if let Some(id) = payload.stored_as {
            ops.push(StoreOp::PutPayload {
                id,
                value: payload.bytes.to_vec(),
            });
        }
        for m in &messages {
            match serde_json::to_vec(m) {
                Ok(value) => ops.push(StoreOp::Put { id: m.id, value }),
                Err(e) => {
                    release();
                    return Err(ApiError::Unavailable(e.to_string()));
                }
            }
        }
        let accepted = Accepted {
            messages,
            multicast,
            sp: caller.sp.clone(),
            payload_len_bytes: payload.len_bytes,
            budget: Arc::clone(&service.budget),
            counters: Arc::clone(&service.counters),
            requests: service.requests.clone(),
        };
        Ok((Arc::clone(&service.committer), ops, accepted))
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(crossbeam_channel::Sender<Result<T, ServiceError>>) -> Request,
    ) -> Result<T, ApiError> {
        let service = self.service()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        service.requests.send(make(tx)).map_err(|_| ApiError::ShuttingDown)?;
        match rx.recv_timeout(Duration::from_millis(SERVICE_REPLY_TIMEOUT_MS)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ServiceError::NotFound)) => Err(ApiError::NotFound("no such message".into())),
            Ok(Err(e @ ServiceError::Conflict { .. })) => Err(ApiError::Conflict(e.to_string())),
            Err(_) => Err(ApiError::Overloaded { retry_after_s: 1 }),
        }
    }

    fn id(text: &str) -> Result<u64, ApiError> {
        parse_id(text)
            .ok_or_else(|| ApiError::NotFound(format!("no message {}", text.chars().take(40).collect::<String>())))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    confirmed: bool,
}

impl Gateway for ApiFront {
    fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let token = bearer(authorization);
        if let (Some(t), Some(admin)) = (token, self.admin_key.as_deref())
            && same_key(t, admin)
        {
            return Ok(Caller {
                sp: "operator".into(),
                operator: true,
            });
        }
        if self.is_open() {
            return Ok(Caller::sp(OPEN_SP));
        }
        let token = token
            .ok_or_else(|| ApiError::Unauthorized("an Authorization: Bearer <api key> header is required".into()))?;
        match self.keys.get(token) {
            Some(sp) => Ok(Caller::sp(sp.name.clone())),
            None => Err(ApiError::Unauthorized("unknown API key".into())),
        }
    }

    fn authorize_metrics(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(key) = self.metrics_key.as_deref() else {
            return Ok(());
        };
        match bearer(authorization) {
            Some(t) if same_key(t, key) || self.admin_key.as_deref().is_some_and(|a| same_key(t, a)) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("unknown metrics key".into())),
            None => Err(ApiError::Unauthorized(
                "/metrics requires an Authorization: Bearer <metrics key> header".into(),
            )),
        }
    }

    // 201 means on disk: answered once the group commit holding the ops is durable.
    fn submit_then(&self, caller: &Caller, body: &[u8], reply: SubmitReply) {
        match self.accept(caller, body) {
            Err(e) => reply.send(Err(e)),
            // The store writer answers: no thread waits for the fsync.
            Ok((committer, ops, accepted)) => {
                committer.commit_then(ops, move |outcome| reply.send(accepted.settle(outcome)));
            }
        }
    }

    fn status(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        Self::sp_only(caller)?;
        let id = Self::id(id)?;
        let sp = caller.sp.clone();
        self.ask(|reply| Request::Status { sp, id, reply })
    }

    fn update(&self, caller: &Caller, id: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
        Self::sp_only(caller)?;
        let id = Self::id(id)?;
        // serde would also read a struct from a JSON array ([true]); only objects are valid.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::BadRequest("body must be a JSON object".into()));
        }
        let b: UpdateBody =
            serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        if !b.confirmed {
            return Err(ApiError::BadRequest("only {\"confirmed\": true} is supported".into()));
        }
        let sp = caller.sp.clone();
        self.ask(|reply| Request::Confirm { sp, id, reply })
    }

    fn cancel(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        Self::sp_only(caller)?;
        let id = Self::id(id)?;
        let sp = caller.sp.clone();
        self.ask(|reply| Request::Cancel { sp, id, reply })
    }

    fn heartbeat_limit(&self, caller: &Caller, update: Option<&[u8]>) -> Result<serde_json::Value, ApiError> {
        let admin = caller.operator || self.by_name.get(&caller.sp).is_some_and(|sp| sp.admin);
        if !admin {
            return Err(ApiError::Forbidden(if self.admin_reachable() {
                "operators only: the admin key (admin_key_file) or an [[sps]] entry with admin = true".into()
            } else {
                "admin endpoints are closed: configure admin_key_file (or an [[sps]] entry with admin = true)".into()
            }));
        }
        if let Some(body) = update {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Limit {
                max_heartbeats_per_s: Option<f64>,
            }
            let limit: Limit =
                serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
            let milli = match limit.max_heartbeats_per_s {
                None => 0,
                Some(v) if (0.001..=1e12).contains(&v) => (v * 1000.0).round() as u64,
                Some(v) => {
                    return Err(ApiError::BadRequest(format!(
                        "max_heartbeats_per_s must be a positive number or null, got {v}"
                    )));
                }
            };
            // No admission on the old budget: the coordinator recomputes it within a second.
            self.env.admission.set_threshold_milli(milli);
            eprintln!(
                "pulsegate: heartbeat-load threshold set to {} by {}",
                limit.max_heartbeats_per_s.map_or("none".into(), |v| format!("{v}/s")),
                caller.sp
            );
        }
        let g = &self.env.gauges;
        Ok(serde_json::json!({
            "max_heartbeats_per_s": self.env.admission.threshold_per_s(),
            "heartbeat_load_per_s": g.load_milli_per_s.load(Ordering::Relaxed) as f64 / 1000.0,
            "admission_closed": self.env.admission.closed.load(Ordering::Relaxed),
        }))
    }

    fn mechanisms(&self, caller: &Caller) -> Result<serde_json::Value, ApiError> {
        Self::sp_only(caller)?;
        let service = self.service()?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        service
            .requests
            .send(Request::Mechanisms { reply: tx })
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.recv_timeout(Duration::from_millis(SERVICE_REPLY_TIMEOUT_MS))
            .map_err(|_| ApiError::Overloaded { retry_after_s: 1 })
    }

    fn store_error(&self) -> Option<String> {
        self.env.service.committer.failure().map(|e| e.to_string())
    }

    fn metrics_text(&self) -> String {
        metrics::render(&self.env.metrics)
    }
}

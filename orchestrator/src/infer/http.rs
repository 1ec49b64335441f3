//! The orchestrator's HTTP endpoint for inference, HTTP/1.1 on plain tokio (one request per
//! connection; no framework for two routes):
//!
//! - `POST /v1/infer`: the body is a JSON `{"inputs": [{"name", "dims", "values"}],
//!   "timeout_ms"}` (values are numbers, taken as the element type the model gives the input:
//!   whole numbers for int64 token ids, 0/1 for bool) or, with `Content-Type:
//!   application/x-protobuf`, one ONNX TensorProto for the model's first input. The answer is JSON (`id`, `epoch`, `latency_ms`,
//!   `predicted_ms`, `reruns`, `outputs`) or, with `Accept: application/x-protobuf`, the first
//!   output as a TensorProto; the request id is also in `X-Request-Id`. Errors are JSON
//!   `{"error"}` with 400 (bad input), 503 (refused, no plan), 504 (timeout), 502 (an agent
//!   failed).
//! - `GET /v1/metrics`: Prometheus text: requests, re-runs, failures, measured latency
//!   quantiles next to the plan's predicted makespan, and their ratio.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use moirai_core::tensor::{Number, TensorValue};
use moirai_core::wire::data::TensorSpec;

use super::session::{InferEvent, Metrics, SessionHandle};
use super::InferError;
use moirai_core::stats::percentile;
use moirai_core::wire::BrokerAddr;
use moirai_model::loaded::LoadedModel;
use moirai_model::tensor_proto as tensor;
use moirai_model::tensor_proto::NamedTensor;
use tokio::sync::mpsc;

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
struct JsonTensor {
    name: String,
    dims: Vec<u64>,
    /// JSON numbers, read exactly (an int64 id does not go through an f64); a float that JSON
    /// cannot write is the string "NaN", "Infinity" or "-Infinity".
    values: Vec<serde_json::Value>,
}

impl JsonTensor {
    fn of(t: NamedTensor) -> JsonTensor {
        use serde_json::Value;
        let values = t
            .value
            .to_numbers()
            .into_iter()
            .map(|n| match n {
                Number::Int(i) => Value::from(i),
                Number::Float(f) if f.is_nan() => Value::from("NaN"),
                Number::Float(f) if f.is_infinite() => {
                    Value::from(if f > 0.0 { "Infinity" } else { "-Infinity" })
                }
                Number::Float(f) => Value::from(f),
            })
            .collect();
        JsonTensor {
            name: t.name,
            dims: t.value.dims,
            values,
        }
    }

    /// The tensor in the element type the model gives this input.
    fn into_tensor(self, specs: &[TensorSpec]) -> Result<NamedTensor, String> {
        use serde_json::Value;
        let spec = specs
            .iter()
            .find(|s| s.name == self.name)
            .ok_or_else(|| format!("the model has no input `{}`", self.name))?;
        let numbers = self
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Number(n) => Ok(match n.as_i64() {
                    Some(x) => Number::Int(x),
                    None => Number::Float(n.as_f64().unwrap_or(f64::NAN)),
                }),
                Value::String(s) if s == "NaN" => Ok(Number::Float(f64::NAN)),
                Value::String(s) if s == "Infinity" => Ok(Number::Float(f64::INFINITY)),
                Value::String(s) if s == "-Infinity" => Ok(Number::Float(f64::NEG_INFINITY)),
                other => Err(format!(
                    "input `{}`: element {i} ({other}) is not a number",
                    self.name
                )),
            })
            .collect::<Result<Vec<Number>, String>>()?;
        let value = TensorValue::from_numbers(spec.dtype, &self.dims, &numbers)
            .map_err(|e| format!("input `{}`: {e}", self.name))?;
        Ok(NamedTensor {
            name: self.name,
            value,
        })
    }
}

#[derive(Deserialize)]
struct InferBody {
    inputs: Vec<JsonTensor>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct InferReply {
    id: u64,
    epoch: u64,
    latency_ms: f64,
    predicted_ms: f64,
    reruns: u32,
    outputs: Vec<JsonTensor>,
}

/// Prometheus text of the session's metrics.
pub fn prometheus(m: &Metrics) -> String {
    let (measured, ratio) = m.sorted();
    let predicted = m.samples.last().map_or(0.0, |s| s.1);
    let mut out = String::new();
    fn metric(out: &mut String, name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    }
    metric(
        &mut out,
        "moirai_requests_completed_total",
        "counter",
        "Requests answered.",
        vec![(String::new(), m.completed as f64)],
    );
    metric(
        &mut out,
        "moirai_requests_failed_total",
        "counter",
        "Requests failed (refused, timed out, failed on an agent).",
        vec![(String::new(), m.failed as f64)],
    );
    metric(
        &mut out,
        "moirai_requests_rerun_total",
        "counter",
        "Re-runs of requests on a new plan after an agent died.",
        vec![(String::new(), m.reruns as f64)],
    );
    let q = |v: &[f64]| {
        [0.5, 0.9, 0.99]
            .iter()
            .map(|&p| {
                (
                    format!("{{quantile=\"{p}\"}}"),
                    if v.is_empty() {
                        f64::NAN
                    } else {
                        percentile(v, p * 100.0)
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    let mut lat = q(&measured);
    lat.push(("_sum".into(), measured.iter().sum()));
    lat.push(("_count".into(), measured.len() as f64));
    // `_sum`/`_count` are separate series of the summary.
    let (quantiles, totals): (Vec<_>, Vec<_>) =
        lat.into_iter().partition(|(l, _)| l.starts_with('{'));
    metric(
        &mut out,
        "moirai_request_latency_ms",
        "summary",
        "Measured latency from dispatch to the last output, per request.",
        quantiles,
    );
    for (suffix, v) in totals {
        out.push_str(&format!("moirai_request_latency_ms{suffix} {v}\n"));
    }
    metric(
        &mut out,
        "moirai_predicted_makespan_ms",
        "gauge",
        "The plan's predicted makespan (the plan that answered the last request).",
        vec![(String::new(), predicted)],
    );
    metric(
        &mut out,
        "moirai_latency_ratio",
        "summary",
        "Measured latency over predicted makespan, per request.",
        q(&ratio),
    );
    metric(
        &mut out,
        "moirai_plan_epoch",
        "gauge",
        "Plan epoch in force.",
        vec![(String::new(), m.epoch as f64)],
    );
    metric(
        &mut out,
        "moirai_plan_agents",
        "gauge",
        "Agents in the plan in force.",
        vec![(String::new(), m.agents as f64)],
    );
    out
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(s: &mut TcpStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 << 10 {
            return Err("headers too long".into());
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(format!(
            "body of {len} bytes is over the limit of {MAX_BODY}"
        ));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(1 << 20)];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("body cut short".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

async fn respond(
    s: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

fn error_json(msg: &str) -> Vec<u8> {
    serde_json::json!({ "error": msg }).to_string().into_bytes()
}

fn status_of(e: &InferError) -> u16 {
    match e {
        InferError::MissingInput(_) | InferError::Tensor(_) => 400,
        InferError::Timeout(_) => 504,
        InferError::AgentFailed { .. } => 502,
        _ => 503,
    }
}

async fn handle(mut s: TcpStream, session: SessionHandle, specs: Arc<Vec<TensorSpec>>) {
    let req = match read_request(&mut s).await {
        Ok(r) => r,
        Err(e) => {
            let _ = respond(&mut s, 400, "application/json", "", &error_json(&e)).await;
            return;
        }
    };
    debug!(method = %req.method, path = %req.path, "http request");
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", path @ ("/v1/plan" | "/v1/fleet")) => {
            let v = session.views();
            let body = if path == "/v1/plan" {
                serde_json::json!({ "in_force": v.in_force, "newest": v.newest })
            } else {
                serde_json::json!({ "agents": v.agents })
            };
            let _ = respond(
                &mut s,
                200,
                "application/json",
                "",
                body.to_string().as_bytes(),
            )
            .await;
        }
        ("GET", "/v1/metrics") => {
            let m = session
                .metrics
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            let _ = respond(
                &mut s,
                200,
                "text/plain; version=0.0.4",
                "",
                prometheus(&m).as_bytes(),
            )
            .await;
        }
        ("POST", "/v1/infer") => {
            let proto = req
                .header("content-type")
                .is_some_and(|c| c.contains("protobuf"));
            let (inputs, timeout) = if proto {
                match tensor::decode(&req.body, std::path::Path::new("request body")) {
                    Ok(mut t) => {
                        t.name = specs.first().map(|s| s.name.clone()).unwrap_or_default();
                        (vec![t], None)
                    }
                    Err(e) => {
                        let _ = respond(
                            &mut s,
                            400,
                            "application/json",
                            "",
                            &error_json(&e.to_string()),
                        )
                        .await;
                        return;
                    }
                }
            } else {
                match serde_json::from_slice::<InferBody>(&req.body) {
                    Ok(b) => {
                        let typed: Result<Vec<NamedTensor>, String> = b
                            .inputs
                            .into_iter()
                            .map(|t| t.into_tensor(&specs))
                            .collect();
                        match typed {
                            Ok(t) => (t, b.timeout_ms.map(Duration::from_millis)),
                            Err(msg) => {
                                let _ =
                                    respond(&mut s, 400, "application/json", "", &error_json(&msg))
                                        .await;
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("body is neither a TensorProto (Content-Type: application/x-protobuf) nor JSON {{\"inputs\": [{{\"name\", \"dims\", \"values\"}}]}}: {e}");
                        let _ =
                            respond(&mut s, 400, "application/json", "", &error_json(&msg)).await;
                        return;
                    }
                }
            };
            if let Err(e) = super::session::check_inputs(&specs, &inputs) {
                let _ = respond(
                    &mut s,
                    400,
                    "application/json",
                    "",
                    &error_json(&e.to_string()),
                )
                .await;
                return;
            }
            let fut = session.infer(inputs);
            let result = match timeout {
                Some(d) => tokio::time::timeout(d, fut)
                    .await
                    .unwrap_or(Err(InferError::Timeout(d))),
                None => fut.await,
            };
            match result {
                Ok(o) => {
                    let id = format!("X-Request-Id: {}\r\n", o.id);
                    let wants_proto = req.header("accept").is_some_and(|a| a.contains("protobuf"));
                    if wants_proto {
                        let body = o.outputs.first().map(tensor::encode).unwrap_or_default();
                        let _ = respond(&mut s, 200, "application/x-protobuf", &id, &body).await;
                    } else {
                        let reply = InferReply {
                            id: o.id,
                            epoch: o.epoch,
                            latency_ms: o.latency.as_secs_f64() * 1e3,
                            predicted_ms: o.predicted_ms,
                            reruns: o.reruns,
                            outputs: o.outputs.into_iter().map(JsonTensor::of).collect(),
                        };
                        let body = serde_json::to_vec(&reply).unwrap_or_default();
                        let _ = respond(&mut s, 200, "application/json", &id, &body).await;
                    }
                }
                Err(e) => {
                    let _ = respond(
                        &mut s,
                        status_of(&e),
                        "application/json",
                        "",
                        &error_json(&e.to_string()),
                    )
                    .await;
                }
            }
        }
        _ => {
            let _ = respond(
                &mut s,
                404,
                "application/json",
                "",
                &error_json("routes: POST /v1/infer, GET /v1/metrics"),
            )
            .await;
        }
    }
}

/// Serves HTTP on `listener` until the task is dropped.
/// Serves until the listener fails; `inputs` are the model's (their element types decide how
/// JSON numbers are read).
pub async fn serve(listener: TcpListener, session: SessionHandle, inputs: Vec<TensorSpec>) {
    let specs = Arc::new(inputs);
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(handle(s, session.clone(), specs.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A blocking HTTP client for `moirai infer`: posts a TensorProto, returns (status, headers,
/// body).
pub fn post(
    addr: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    call(addr, "POST", path, content_type, accept, body)
}

/// A blocking HTTP/1.1 request (one per connection); returns (status, headers, body).
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head, all[end + 4..].to_vec()))
}

/// A session serving HTTP: its handle, its events and where it listens.
pub struct ServedSession {
    pub handle: super::session::SessionHandle,
    pub events: mpsc::UnboundedReceiver<InferEvent>,
    pub addr: std::net::SocketAddr,
}

/// The session `moirai serve` attaches to its fleet loop: the Moirai placer with a 1 s
/// limit, no first plan before `min_agents` were born; HTTP on `listen` (port 0 picks one).
pub async fn serve_session(
    broker: BrokerAddr,
    prefix: String,
    security: moirai_link::tls::ClientSecurity,
    measured: tokio::sync::watch::Receiver<super::session::Measured>,
    model: Arc<LoadedModel>,
    listen: std::net::SocketAddr,
    min_agents: usize,
) -> Result<ServedSession, InferError> {
    let opts = super::session::SessionOptions {
        broker,
        prefix,
        placement: super::model::Placement::Moirai {
            time_limit: Duration::from_millis(1000),
        },
        min_agents,
        request_timeout: Duration::from_secs(60),
        debounce: Duration::from_millis(500),
        measured,
        security,
        announce: false,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| InferError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| InferError::Listen {
        addr: listen,
        source,
    })?;
    let (ev_tx, events) = mpsc::unbounded_channel();
    let (handle, _task) =
        super::session::start(opts, model.clone(), ev_tx, std::future::pending())?;
    tokio::spawn(serve(listener, handle.clone(), model.inputs().to_vec()));
    Ok(ServedSession {
        handle,
        events,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_show_measured_latency_next_to_the_prediction() {
        let m = Metrics {
            completed: 3,
            failed: 1,
            reruns: 2,
            samples: vec![(10.0, 8.0), (12.0, 8.0), (30.0, 8.0)],
            epoch: 4,
            agents: 3,
        };
        let text = prometheus(&m);
        assert!(
            text.contains("moirai_requests_completed_total 3\n"),
            "{text}"
        );
        assert!(text.contains("moirai_requests_rerun_total 2\n"));
        assert!(
            text.contains("moirai_request_latency_ms{quantile=\"0.5\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("moirai_request_latency_ms_count 3\n"));
        assert!(text.contains("moirai_predicted_makespan_ms 8\n"));
        assert!(
            text.contains("moirai_latency_ratio{quantile=\"0.5\"} 1.5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE moirai_plan_epoch gauge\nmoirai_plan_epoch 4\n"));
    }
}

//! `moirai infer --url HOST:PORT --input x.pb [--repeat N] [--out y.pb]`: requests against a
//! running orchestrator's HTTP endpoint (`moirai run --serve HOST:PORT`), one after the
//! other, printing each request id and latency.

use std::path::PathBuf;
use std::time::Instant;

use moirai_model::tensor_proto as tensor;
use moirai_orchestrator::infer::http::post;

/// `moirai infer` options.
#[derive(clap::Args, Clone, Debug)]
pub struct InferArgs {
    /// The orchestrator's HTTP address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub url: String,
    /// The input tensor (ONNX TensorProto) for the model's first input.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Where to write the output of the last request (TensorProto).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Why `moirai infer` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error("{url}: {source}")]
    Http { url: String, source: std::io::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// Runs the requests; prints one line each.
pub fn run(args: InferArgs) -> Result<(), ClientError> {
    let input = tensor::read(&args.input)?;
    let body = tensor::encode(&input);
    let url = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut last = None;
    for _ in 0..args.repeat.max(1) {
        let t0 = Instant::now();
        let (status, head, reply) = post(
            &url,
            "/v1/infer",
            "application/x-protobuf",
            "application/x-protobuf",
            &body,
        )
        .map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        if status != 200 {
            return Err(ClientError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&reply).to_string(),
            });
        }
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Request-Id: "))
            .unwrap_or("?")
            .to_string();
        let t = tensor::decode(&reply, std::path::Path::new("answer"))?;
        println!(
            "request {id}: {} {:?}{:?} in {:.1} ms",
            t.name,
            t.value.dtype(),
            t.value.dims,
            t0.elapsed().as_secs_f64() * 1e3
        );
        last = Some(t);
    }
    if let (Some(out), Some(t)) = (&args.out, &last) {
        tensor::write(out, t)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

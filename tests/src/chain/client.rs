//! The client side of the chain: the policy derived from the manifest (`chrysalis policy
//! from-manifest`), `chrysalis verify`, `chrysalis proxy` with its receipts ledger, and chat
//! completions sent through the proxy as any OpenAI SDK would send them.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrysalis_client::ReceiptRecord;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::process::{Guarded, check_interrupted, write_atomic};
use super::{ChainError, SimPlatform, http_agent};

/// Runs `chrysalis policy from-manifest --manifest M --platform tdx --vcpus 2 --memory 2048`
/// (plus `--dangerous-sim-root` when `sim_root`) and writes its output to `out` (temp file, then
/// rename). The one VM shape pinned is the sim profile's.
pub fn derive_policy(
    chrysalis: &Path,
    manifest: &Path,
    sim_root: bool,
    out: &Path,
) -> Result<(), ChainError> {
    derive_policy_for(chrysalis, manifest, SimPlatform::Tdx, sim_root, out)
}

/// As [`derive_policy`] for `platform`: `--platform tdx`, or `--platform snp --vcpu-type
/// EPYC-v4` (the vCPU model the sim-snp agent measures by default); `--dangerous-sim-root`
/// then names that platform's simulated root.
pub fn derive_policy_for(
    chrysalis: &Path,
    manifest: &Path,
    platform: SimPlatform,
    sim_root: bool,
    out: &Path,
) -> Result<(), ChainError> {
    let mut cmd = Command::new(chrysalis);
    cmd.args(["policy", "from-manifest", "--manifest"])
        .arg(manifest)
        .args(["--platform", platform.policy_platform()])
        .args(["--vcpus", "2", "--memory", "2048"]);
    if platform == SimPlatform::Snp {
        cmd.args(["--vcpu-type", "EPYC-v4"]);
    }
    if sim_root {
        cmd.arg("--dangerous-sim-root");
    }
    let policy = run_captured("chrysalis policy from-manifest", &mut cmd, &[0])?.stdout;
    write_atomic(out, policy.as_bytes())
}

/// What `chrysalis verify` printed and whether it accepted the node.
#[derive(Clone, Debug)]
pub struct Verification {
    /// Exit status 0: accepted.
    pub accepted: bool,
    /// The report (stdout).
    pub report: String,
}

/// `chrysalis verify https://ADDR --policy FILE`: one RA-TLS handshake, the verdict explained.
pub fn verify(chrysalis: &Path, addr: &str, policy: &Path) -> Result<Verification, ChainError> {
    let mut cmd = Command::new(chrysalis);
    cmd.arg("verify")
        .arg(format!("https://{addr}"))
        .arg("--policy")
        .arg(policy);
    let out = run_captured("chrysalis verify", &mut cmd, &[0, 1])?;
    Ok(Verification {
        accepted: out.code == 0,
        report: out.stdout,
    })
}

struct Captured {
    code: i32,
    stdout: String,
}

fn run_captured(what: &str, cmd: &mut Command, ok: &[i32]) -> Result<Captured, ChainError> {
    check_interrupted()?;
    let out = cmd.output().map_err(|source| ChainError::Spawn {
        what: what.to_owned(),
        source,
    })?;
    let code = out.status.code().unwrap_or(-1);
    if !ok.contains(&code) {
        return Err(ChainError::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(Captured {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// A running `chrysalis proxy` (plain HTTP on loopback, receipts ledger in its directory),
/// stopped with SIGINT (its clean stop) when dropped.
#[derive(Debug)]
pub struct Proxy {
    proc: Guarded,
    addr: String,
    ledger: PathBuf,
}

impl Proxy {
    /// Starts `chrysalis proxy --listen 127.0.0.1:0 --upstream U… --policy P --receipts
    /// <dir>/receipts.jsonl` and waits for its ready file. Log: `<dir>/proxy.log`.
    pub fn start(
        chrysalis: &Path,
        upstreams: &[&str],
        policy: &Path,
        dir: &Path,
    ) -> Result<Proxy, ChainError> {
        Self::start_on(chrysalis, "127.0.0.1:0", upstreams, policy, dir)
    }

    /// As [`start`](Self::start), listening on `listen` (`HOST:PORT`).
    pub fn start_on(
        chrysalis: &Path,
        listen: &str,
        upstreams: &[&str],
        policy: &Path,
        dir: &Path,
    ) -> Result<Proxy, ChainError> {
        std::fs::create_dir_all(dir).map_err(|source| ChainError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let ready = dir.join("proxy.addr");
        let _ = std::fs::remove_file(&ready);
        let ledger = dir.join("receipts.jsonl");
        let mut cmd = Command::new(chrysalis);
        cmd.args(["proxy", "--listen", listen, "--policy"])
            .arg(policy)
            .arg("--receipts")
            .arg(&ledger)
            .arg("--ready-file")
            .arg(&ready)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for u in upstreams {
            cmd.args(["--upstream", u]);
        }
        let mut proc = Guarded::spawn(
            "chrysalis proxy",
            cmd,
            &dir.join("proxy.log"),
            Signal::SIGINT,
            Duration::from_secs(10),
        )?;
        let start = Instant::now();
        let addr = loop {
            check_interrupted()?;
            if let Ok(a) = std::fs::read_to_string(&ready) {
                break a.trim().to_owned();
            }
            proc.check_running()?;
            if start.elapsed() > Duration::from_secs(60) {
                return Err(ChainError::Timeout {
                    what: "chrysalis proxy to listen".into(),
                    waited: Duration::from_secs(60),
                    logs: proc.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Proxy { proc, addr, ledger })
    }

    /// `HOST:PORT` the proxy listens on; OpenAI SDKs use `http://HOST:PORT/v1`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The OpenAI base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The receipts ledger.
    pub fn ledger_path(&self) -> &Path {
        &self.ledger
    }

    /// The proxy's log (its last lines).
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// `GET /v1/models`: the model ids.
    pub fn models(&self) -> Result<Vec<String>, ChainError> {
        let url = format!("{}/models", self.base_url());
        let reply = send(&url, None, Duration::from_secs(300))?;
        if reply.status != 200 {
            return Err(ChainError::BadResponse {
                what: format!("GET {url}"),
                detail: format!("status {}: {}", reply.status, reply.body),
            });
        }
        Ok(reply.body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// `POST /v1/chat/completions` (not streamed), answered whatever the status. `guard` bounds
    /// the whole exchange (a hang guard).
    pub fn chat(&self, req: &Chat, guard: Duration) -> Result<Reply, ChainError> {
        let url = format!("{}/chat/completions", self.base_url());
        send(&url, Some(req.body(false)), guard)
    }

    /// `POST /v1/chat/completions` with `stream: true`; the events are read with
    /// [`ChatStream::next_event`]. A non-200 answer is returned as `Err(reply)`.
    pub fn chat_stream(
        &self,
        req: &Chat,
        guard: Duration,
    ) -> Result<Result<ChatStream, Reply>, ChainError> {
        check_interrupted()?;
        let url = format!("{}/chat/completions", self.base_url());
        let start = Instant::now();
        let resp = http_agent(guard)
            .post(&url)
            .content_type("application/json")
            .send(req.body(true).to_string())
            .map_err(|e| ChainError::Http {
                what: format!("POST {url}"),
                source: Box::new(e),
            })?;
        let status = resp.status().as_u16();
        let mut reader = resp.into_body().into_reader();
        if status != 200 {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            return Ok(Err(Reply {
                status,
                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                elapsed: start.elapsed(),
            }));
        }
        Ok(Ok(ChatStream {
            reader: BufReader::new(Box::new(reader)),
            text: String::new(),
            usage: None,
            done: false,
        }))
    }

    /// Waits (bounded by `guard`) until the ledger holds at least `n` records, and returns them.
    pub fn records(&self, n: usize, guard: Duration) -> Result<Vec<ReceiptRecord>, ChainError> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let records = if self.ledger.exists() {
                chrysalis_client::ledger::read(&self.ledger).map_err(|e| {
                    ChainError::BadResponse {
                        what: format!("ledger {}", self.ledger.display()),
                        detail: e.to_string(),
                    }
                })?
            } else {
                Vec::new()
            };
            if records.len() >= n {
                return Ok(records);
            }
            if start.elapsed() > guard {
                return Err(ChainError::Timeout {
                    what: format!("{n} ledger records (have {})", records.len()),
                    waited: guard,
                    logs: self.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the proxy (SIGINT, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// A chat completion request.
#[derive(Clone, Debug)]
pub struct Chat {
    /// The model id (`GET /v1/models`).
    pub model: String,
    /// The user message.
    pub prompt: String,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

impl Chat {
    fn body(&self, stream: bool) -> Value {
        let mut b = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        });
        if stream {
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    }
}

/// An HTTP answer from the proxy.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (a string value if it was not JSON).
    pub body: Value,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    /// The assistant's text of a chat completion.
    pub fn text(&self) -> Option<&str> {
        self.body["choices"][0]["message"]["content"].as_str()
    }

    /// The OpenAI-style error message, if this is an error answer.
    pub fn error_message(&self) -> Option<&str> {
        self.body["error"]["message"].as_str()
    }
}

fn send(url: &str, body: Option<Value>, guard: Duration) -> Result<Reply, ChainError> {
    check_interrupted()?;
    let start = Instant::now();
    let what = format!("{} {url}", if body.is_some() { "POST" } else { "GET" });
    let http = |e: ureq::Error| ChainError::Http {
        what: what.clone(),
        source: Box::new(e),
    };
    let agent = http_agent(guard);
    let resp = match body {
        Some(b) => agent
            .post(url)
            .content_type("application/json")
            .send(b.to_string()),
        None => agent.get(url).call(),
    }
    .map_err(http)?;
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().map_err(http)?;
    Ok(Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        elapsed: start.elapsed(),
    })
}

/// A streamed chat completion (server-sent events) as it arrives.
pub struct ChatStream {
    reader: BufReader<Box<dyn Read + Send>>,
    text: String,
    usage: Option<Value>,
    done: bool,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("text", &self.text)
            .field("done", &self.done)
            .finish()
    }
}

/// One event of a [`ChatStream`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A chunk (its text delta, possibly empty).
    Chunk(String),
    /// `data: [DONE]`: the completion is whole.
    Done,
}

impl ChatStream {
    /// The next event; an error when the stream breaks (the connection ends or fails before
    /// `[DONE]`).
    pub fn next_event(&mut self) -> Result<Event, ChainError> {
        let broken = |detail: String| ChainError::StreamBroken { detail };
        if self.done {
            return Ok(Event::Done);
        }
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| broken(e.to_string()))?;
            if n == 0 {
                return Err(broken("the stream ended before data: [DONE]".into()));
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.done = true;
                return Ok(Event::Done);
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| broken(format!("not a JSON chunk ({e}): {data}")))?;
            if !v["usage"].is_null() {
                self.usage = Some(v["usage"].clone());
            }
            if let Some(msg) = v["error"]["message"].as_str() {
                return Err(broken(format!("error event: {msg}")));
            }
            let delta = v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.text.push_str(&delta);
            return Ok(Event::Chunk(delta));
        }
    }

    /// Reads to `[DONE]` and drains the rest (the receipt trailer), returning the whole text.
    pub fn finish(mut self) -> Result<(String, Option<Value>), ChainError> {
        while self.next_event()? != Event::Done {}
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok((self.text, self.usage))
    }

    /// The text received so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

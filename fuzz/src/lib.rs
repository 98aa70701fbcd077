//! Shared fixtures of the chrysalis fuzz targets (see README.md).

#![forbid(unsafe_code)]

use chrysalis_guest::api::{Endpoint, ParsedRequest};
use chrysalis_guest::engine::{ResponseFormat, ToolChoice};
use serde_json::{Map, Value, json};

pub use chrysalis_testkit::fuzz as fixtures;
pub use chrysalis_testkit::fuzz::MODEL;

/// A canonical body for `req`: what a client would send to get exactly that request.
pub fn request_body(req: &ParsedRequest) -> Vec<u8> {
    let g = &req.generate;
    let mut o = Map::new();
    o.insert("model".into(), json!(g.model));
    match req.endpoint {
        Endpoint::Chat => {
            let messages = g.messages.as_deref().expect("a chat request has messages");
            let messages: Vec<Value> = messages
                .iter()
                .map(|m| {
                    let mut v = json!({"role": m.role, "content": m.content});
                    if !m.tool_calls.is_empty() {
                        v["tool_calls"] = m
                            .tool_calls
                            .iter()
                            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                            .collect();
                    }
                    if let Some(id) = &m.tool_call_id {
                        v["tool_call_id"] = json!(id);
                    }
                    v
                })
                .collect();
            o.insert("messages".into(), Value::Array(messages));
            match &g.response_format {
                None => {}
                Some(ResponseFormat::JsonObject) => {
                    o.insert("response_format".into(), json!({"type": "json_object"}));
                }
                Some(ResponseFormat::JsonSchema { name, schema }) => {
                    o.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}),
                    );
                }
            }
            if !g.tools.is_empty() {
                let tools: Vec<Value> = g
                    .tools
                    .iter()
                    .map(|t| {
                        let mut f = json!({"name": t.name, "parameters": t.parameters});
                        if let Some(d) = &t.description {
                            f["description"] = json!(d);
                        }
                        json!({"type": "function", "function": f})
                    })
                    .collect();
                o.insert("tools".into(), Value::Array(tools));
                let choice = match &g.tool_choice {
                    ToolChoice::None => json!("none"),
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Function(name) => {
                        json!({"type": "function", "function": {"name": name}})
                    }
                };
                o.insert("tool_choice".into(), choice);
            }
            if !g.parallel_tool_calls {
                o.insert("parallel_tool_calls".into(), json!(false));
            }
            if let Some(n) = g.logprobs {
                o.insert("logprobs".into(), json!(true));
                o.insert("top_logprobs".into(), json!(n));
            }
        }
        Endpoint::Completion => {
            o.insert("prompt".into(), json!(g.prompt));
        }
    }
    o.insert("max_tokens".into(), json!(g.max_tokens));
    if let Some(t) = g.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = g.top_p {
        o.insert("top_p".into(), json!(p));
    }
    if !g.stop.is_empty() {
        o.insert("stop".into(), json!(g.stop));
    }
    if let Some(s) = g.seed {
        o.insert("seed".into(), json!(s));
    }
    o.insert("stream".into(), json!(req.stream));
    if req.stream {
        o.insert(
            "stream_options".into(),
            json!({"include_usage": req.include_usage}),
        );
    }
    serde_json::to_vec(&Value::Object(o)).expect("a JSON object serializes")
}

/// Equal requests, floats compared to within a few ULPs: serde_json's default float parsing is
/// not guaranteed to round-trip the last bit.
pub fn same_request(a: &ParsedRequest, b: &ParsedRequest) -> bool {
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
        _ => false,
    };
    let (ga, gb) = (&a.generate, &b.generate);
    let mut ga2 = ga.clone();
    ga2.temperature = gb.temperature;
    ga2.top_p = gb.top_p;
    a.endpoint == b.endpoint
        && a.stream == b.stream
        && a.include_usage == b.include_usage
        && ga2 == *gb
        && close(ga.temperature, gb.temperature)
        && close(ga.top_p, gb.top_p)
}

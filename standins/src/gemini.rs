//! A scripted Gemini API: `models/<m>:streamGenerateContent?alt=sse` (and
//! `:generateContent`) answer from a script of steps, `:embedContent` and
//! `:batchEmbedContents` answer with embeddings that make similar texts
//! similar; every request is recorded whole.
//!
//! A step is a reply text, a function call (with the `thoughtSignature`
//! gemini-3 models need, else the gateway replays the call as text), or a
//! reply that quotes the last tool result the gateway sent back. Steps are
//! taken by agent turns only (requests that offer tools): side requests the
//! gateway makes on its own (titles, summaries) get the default reply, and
//! heartbeats get `NO_REPLY` (nothing needs attention), so neither eats
//! a test's script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hyper::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{self, Request, Resp};

/// The model id the overlay offers (the template's primary model).
pub const MODEL: &str = "gemini-3-flash-preview";

/// Dimensions of the stand-in's embeddings.
pub const DIMS: usize = 256;

/// What the model answers to one agent turn request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// A final answer.
    Text { text: String },
    /// A tool call, e.g. `read` with `{"path": …}` or `exec` with `{"command": …}`.
    Call { name: String, args: Value },
    /// A final answer: `prefix` followed by the last tool result's text.
    QuoteToolResult { prefix: String },
}

impl Step {
    pub fn text(t: &str) -> Step {
        Step::Text { text: t.into() }
    }
    pub fn call(name: &str, args: Value) -> Step {
        Step::Call {
            name: name.into(),
            args,
        }
    }
    pub fn quote(prefix: &str) -> Step {
        Step::QuoteToolResult {
            prefix: prefix.into(),
        }
    }
}

/// One request the stand-in saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub seq: usize,
    /// Path with query, e.g. `/v1beta/models/gemini-3-flash-preview:streamGenerateContent?alt=sse`.
    pub path: String,
    pub body: Value,
    /// The step it was answered with (agent turns only).
    pub step: Option<Step>,
}

impl Seen {
    pub fn is_generate(&self) -> bool {
        self.path.contains(":streamGenerateContent") || self.path.contains(":generateContent")
    }

    pub fn is_embed(&self) -> bool {
        self.path.contains(":embedContent") || self.path.contains(":batchEmbedContents")
    }

    /// The system prompt, all its text parts joined.
    pub fn system_text(&self) -> String {
        texts(&self.body["systemInstruction"]["parts"]).join("\n")
    }

    /// Names of the tools offered.
    pub fn tool_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.body["tools"].as_array().into_iter().flatten() {
            for f in t["functionDeclarations"].as_array().into_iter().flatten() {
                if let Some(n) = f["name"].as_str() {
                    out.push(n.to_string());
                }
            }
        }
        out
    }

    /// Every functionResponse part sent back, oldest first.
    pub fn function_responses(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for c in self.body["contents"].as_array().into_iter().flatten() {
            for p in c["parts"].as_array().into_iter().flatten() {
                if !p["functionResponse"].is_null() {
                    out.push(p["functionResponse"].clone());
                }
            }
        }
        out
    }

    /// The text of the last user content, past the context block the
    /// gateway appends after it (`<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>`).
    pub fn last_user_text(&self) -> String {
        self.body["contents"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .filter(|c| c["role"] == "user")
            .map(|c| texts(&c["parts"]).join("\n"))
            .find(|t| !t.is_empty() && !t.starts_with("<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"))
            .unwrap_or_default()
    }

    /// The texts an embedding request asked for.
    pub fn embed_texts(&self) -> Vec<String> {
        if let Some(reqs) = self.body["requests"].as_array() {
            reqs.iter()
                .flat_map(|r| texts(&r["content"]["parts"]))
                .collect()
        } else {
            texts(&self.body["content"]["parts"])
        }
    }
}

fn texts(parts: &Value) -> Vec<String> {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect()
}

/// The text of a tool result as the model would read it.
pub fn tool_result_text(fr: &Value) -> String {
    let r = &fr["response"];
    for k in ["output", "result", "content", "text"] {
        if let Some(s) = r[k].as_str() {
            return s.to_string();
        }
    }
    r.to_string()
}

#[derive(Default)]
pub struct Gemini {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    seen: Vec<Seen>,
}

impl Gemini {
    pub fn new() -> Gemini {
        Gemini::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends steps to the script.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.lock().script.extend(steps);
    }

    /// Steps not taken yet.
    pub fn remaining(&self) -> usize {
        self.lock().script.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Every agent-turn request so far.
    pub fn turns(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.step.is_some())
            .collect()
    }

    pub fn answer(self: Arc<Self>, req: Request) -> Resp {
        let path = req.path.clone();
        let body = req.json();
        let generate = path.contains(":streamGenerateContent") || path.contains(":generateContent");
        let mut g = self.lock();
        let seq = g.seen.len();
        let mut seen = Seen {
            seq,
            path: path.clone(),
            body: body.clone(),
            step: None,
        };
        if generate {
            // The gateway's heartbeat asks the model to answer NO_REPLY
            // when nothing needs attention; the stand-in does, so heartbeats
            // never reach the Human nor take a test's scripted steps.
            let asked = seen.last_user_text();
            let heartbeat = ["NO_REPLY", "HEARTBEAT_OK", "heartbeat_respond"]
                .iter()
                .any(|w| asked.contains(w));
            let agent_turn = !heartbeat && !seen.tool_names().is_empty();
            let step = if agent_turn {
                g.script.pop_front()
            } else {
                None
            }
            .unwrap_or_else(|| {
                Step::text(&if heartbeat {
                    "NO_REPLY".to_string()
                } else {
                    default_reply(&seen)
                })
            });
            let parts = match &step {
                Step::Text { text } => json!([{"text": text}]),
                Step::Call { name, args } => json!([{
                    "functionCall": {"name": name, "args": args},
                    "thoughtSignature": "c3RhbmQtaW4tc2lnbmF0dXJl"
                }]),
                Step::QuoteToolResult { prefix } => {
                    let last = seen.function_responses().last().map(tool_result_text);
                    json!([{"text": format!("{prefix}{}", last.unwrap_or_default())}])
                }
            };
            if agent_turn {
                seen.step = Some(step);
            }
            g.seen.push(seen);
            drop(g);
            let chunk = json!({
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 20, "totalTokenCount": 1020},
                "modelVersion": MODEL,
            });
            return if path.contains(":streamGenerateContent") {
                http::sse(&[chunk])
            } else {
                http::json(StatusCode::OK, &chunk)
            };
        }
        let texts = seen.embed_texts();
        g.seen.push(seen);
        drop(g);
        let dims = body["outputDimensionality"]
            .as_u64()
            .or_else(|| body["requests"][0]["outputDimensionality"].as_u64())
            .map_or(DIMS, |d| d as usize);
        if path.contains(":batchEmbedContents") {
            let all: Vec<Value> = texts
                .iter()
                .map(|t| json!({"values": embed(t, dims)}))
                .collect();
            http::json(StatusCode::OK, &json!({"embeddings": all}))
        } else if path.contains(":embedContent") {
            let t = texts.join("\n");
            http::json(
                StatusCode::OK,
                &json!({"embedding": {"values": embed(&t, dims)}}),
            )
        } else if path.contains(":countTokens") {
            http::json(
                StatusCode::OK,
                &json!({"totalTokens": body.to_string().len() / 4}),
            )
        } else if path.trim_end_matches('/').ends_with("/models") {
            http::json(
                StatusCode::OK,
                &json!({"models": [{"name": format!("models/{MODEL}")}]}),
            )
        } else {
            http::json(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": 404, "message": "not served by the stand-in", "status": "NOT_FOUND"}}),
            )
        }
    }
}

fn default_reply(seen: &Seen) -> String {
    let said = seen.last_user_text();
    let said = said.lines().last().unwrap_or("").trim();
    format!("(stand-in model) I read: {said}")
}

/// A bag-of-words embedding: each word hashed (FNV-1a) into one of `dims`
/// buckets, then L2-normalised, so texts sharing words are close and a
/// memory search finds the note that holds the query's words.
pub fn embed(text: &str, dims: usize) -> Vec<f64> {
    let dims = dims.max(1);
    let mut v = vec![0f64; dims];
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 2)
    {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in w.to_lowercase().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % dims as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        v[0] = 1.0;
    } else {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_that_share_words_are_closer_than_texts_that_do_not() {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let fact = embed("Roel's favourite colour is teal", DIMS);
        let query = embed("which colour is Roel's favourite?", DIMS);
        let other = embed("the weather in Amsterdam tomorrow", DIMS);
        assert!(dot(&fact, &query) > 0.5, "{}", dot(&fact, &query));
        assert!(dot(&fact, &other) < 0.2, "{}", dot(&fact, &other));
        assert!((dot(&fact, &fact) - 1.0).abs() < 1e-9);
    }
}

//! Chat template rendering with minijinja, set up to behave like transformers' Jinja
//! environment: `trim_blocks` + `lstrip_blocks`, loop controls, Python string/dict methods
//! (through `minijinja-contrib`'s pycompat), `raise_exception`, `strftime_now`, and a `tojson`
//! that prints like Python's `json.dumps(..., ensure_ascii=False)` (minijinja's own escapes
//! `<`, `>`, `&` and `'` for HTML, which would change tool schemas inside prompts).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One chat turn: its text, and how many images come with it (after the text, in the order
/// the request lists them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub images: usize,
    /// Other fields templates read from a turn, passed through as given (OpenAI tool calling:
    /// an assistant turn's `tool_calls`, a tool result's `tool_call_id` and `name`).
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), images: 0, fields: Default::default() }
    }

    /// A turn with `images` images after its text.
    pub fn with_images(role: impl Into<String>, content: impl Into<String>, images: usize) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), images, fields: Default::default() }
    }
}

/// What templates see: `content` is the text, or, with images, the parts list of the Hugging
/// Face convention (`[{"type": "text", "text": ...}, {"type": "image"}, ...]`), which vision
/// templates (gemma3, pixtral, ...) turn into their image placeholders. Text first, images
/// after, is the order mlx-vlm writes Gemma 3 prompts in (`"text<start_of_image>"`).
impl Serialize for ChatMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = serializer.serialize_map(None)?;
        m.serialize_entry("role", &self.role)?;
        if self.images == 0 {
            m.serialize_entry("content", &self.content)?;
        } else {
            let mut parts = vec![serde_json::json!({"type": "text", "text": self.content})];
            parts.extend(std::iter::repeat_n(serde_json::json!({"type": "image"}), self.images));
            m.serialize_entry("content", &parts)?;
        }
        for (k, v) in self.fields.iter().filter(|(k, _)| *k != "role" && *k != "content") {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Instructions a chat template may run per render: real templates need a few hundred per
/// message, so this allows conversations of thousands of turns, and stops a runaway template
/// (one shipped in a model's tokenizer_config.json runs on every chat request) in about a second.
#[cfg(not(fuzzing))]
pub const TEMPLATE_FUEL: u64 = 20_000_000;
/// Under cargo-fuzz (`--cfg fuzzing`) the budget is smaller: the instrumented build runs ten
/// times slower, and a fuzzer that spends ten seconds on every looping input finds nothing else.
#[cfg(fuzzing)]
pub const TEMPLATE_FUEL: u64 = 200_000;

/// Seconds a render may take. Fuel bounds instructions, not the work one instruction does (a
/// string concatenated onto itself copies more bytes each time), so the wall clock is bounded
/// too: past it the request fails, and the render, abandoned on its own thread, still stops
/// at the fuel limit.
pub const TEMPLATE_SECONDS: u64 = 10;

/// Marks errors raised by the template itself, so they are reported as such.
const RAISED: &str = "raise_exception: ";

/// Everything a render needs besides the template.
pub(super) struct RenderInput<'a> {
    pub messages: &'a [ChatMessage],
    pub add_generation_prompt: bool,
    pub extra: &'a serde_json::Map<String, serde_json::Value>,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// Set by another thread to abandon the render (a host whose client went away).
    pub cancel: Option<&'a AtomicBool>,
}

/// How often a waiting render looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Renders `template` (read from `source`, named in errors) within [`TEMPLATE_FUEL`] steps and
/// [`TEMPLATE_SECONDS`], or until `input.cancel` is set.
pub(super) fn render(source: &Path, template: &str, input: &RenderInput<'_>) -> Result<String> {
    let owned = (
        source.to_path_buf(),
        template.to_string(),
        input.messages.to_vec(),
        input.extra.clone(),
        input.bos_token.to_string(),
        input.eos_token.to_string(),
    );
    let add_generation_prompt = input.add_generation_prompt;
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("chat-template".into()).spawn(move || {
        let (source, template, messages, extra, bos_token, eos_token) = owned;
        let input = RenderInput {
            messages: &messages,
            add_generation_prompt,
            extra: &extra,
            bos_token: &bos_token,
            eos_token: &eos_token,
            cancel: None,
        };
        let _ = tx.send(render_now(&source, &template, &input));
    });
    let err = |reason: String| Error::ChatTemplate { path: source.to_path_buf(), reason };
    if let Err(e) = spawned {
        return Err(err(format!("cannot start rendering: {e}")));
    }
    let deadline = Instant::now() + Duration::from_secs(TEMPLATE_SECONDS);
    loop {
        if input.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(err("rendering was cancelled".into()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err(format!(
                "took more than {TEMPLATE_SECONDS} s to render and was abandoned (a runaway template?)"
            )));
        }
        match rx.recv_timeout(left.min(CANCEL_POLL)) {
            Ok(out) => return out,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(err("the render thread ended without a result".into())),
        }
    }
}

fn render_now(source: &Path, template: &str, input: &RenderInput<'_>) -> Result<String> {
    let err = |reason: String| Error::ChatTemplate { path: source.to_path_buf(), reason };
    let mut env = Environment::new();
    let syntax =
        SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| err(e.to_string()))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", |fmt: String| strftime(&fmt, now_unix()));
    env.add_filter("tojson", tojson);

    let text = neutralize_generation_tags(template);
    let tmpl = env.template_from_str(&text).map_err(|e| err(format!("cannot compile: {e}")))?;

    // Special tokens first, then the caller's extra arguments (which may override them), and
    // the conversation itself last, as transformers does.
    let mut ctx = serde_json::Map::new();
    ctx.insert("bos_token".into(), input.bos_token.into());
    ctx.insert("eos_token".into(), input.eos_token.into());
    ctx.extend(input.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let messages = serde_json::to_value(input.messages).map_err(|e| err(e.to_string()))?;
    ctx.insert("messages".into(), messages);
    ctx.insert("add_generation_prompt".into(), input.add_generation_prompt.into());
    let ctx = Value::from(minijinja::value::Serde(serde_json::Value::Object(ctx)));

    tmpl.render(ctx).map_err(|e| match e.detail() {
        Some(d) if d.starts_with(RAISED) => err(format!("raised an exception: {}", &d[RAISED.len()..])),
        _ if e.kind() == ErrorKind::OutOfFuel => {
            err(format!("ran more than {TEMPLATE_FUEL} steps and was stopped (a runaway loop?)"))
        }
        _ => err(format!("cannot render: {e}")),
    })
}

/// transformers' `{% generation %}...{% endgeneration %}` (it marks assistant text for
/// training masks) is not Jinja; it is rewritten to a no-op `{% if true %}...{% endif %}` that
/// keeps the tags' whitespace-control markers.
fn neutralize_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        // The closing `%}` is searched past the opening `{%`, which in `{%}` shares its `%`.
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_marker_front(inner);
        let (body, trail) = split_marker_back(body);
        match body.trim() {
            "generation" => write!(out, "{{%{lead} if true {trail}%}}").unwrap_or(()),
            "endgeneration" => write!(out, "{{%{lead} endif {trail}%}}").unwrap_or(()),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_marker_front(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

fn split_marker_back(s: &str) -> (&str, &str) {
    match s.as_bytes().last() {
        Some(b'-' | b'+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
        _ => (s, ""),
    }
}

/// `tojson(indent=None, sort_keys=False, separators=None)` printing like Python's json.dumps
/// with `ensure_ascii=False`: `", "` / `": "` separators by default, `","` before newlines when
/// indenting.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_str(), i64::try_from(v.clone())) {
            (Some(s), _) => Some(s.to_string()),
            (None, Ok(n)) => Some(" ".repeat(n.max(0) as usize)),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let item = v.get_item_by_index(0)?;
            let key = v.get_item_by_index(1)?;
            match (item.as_str(), key.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let fmt = JsonFmt { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    fmt.write(&mut out, &value, 0)?;
    Ok(Value::from(out))
}

struct JsonFmt {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonFmt {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, level: usize) -> Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => match f64::try_from(v.clone()) {
                Ok(f) if v.as_i64().is_none() && f.is_nan() => out.push_str("NaN"),
                Ok(f) if v.as_i64().is_none() && f.is_infinite() => {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
                }
                _ => out.push_str(&v.to_string()),
            },
            ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default()),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    match k.as_str() {
                        Some(s) => write_json_str(out, s),
                        None => write_json_str(out, &k.to_string()),
                    }
                    out.push_str(&self.key_sep);
                    self.write(out, &v.get_item(k)?, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
            _ => write_json_str(out, &v.to_string()),
        }
        Ok(())
    }
}

fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 in the proleptic Gregorian
/// calendar, by the usual 400-year-era arithmetic (eras start on March 1st so leap days fall
/// at the end of a cycle).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
    let mp = (5 * doy + 2) / 153; // March-based month, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A small `strftime` for `strftime_now` (templates print today's date into system prompts).
/// Uses UTC; unknown specifiers are kept verbatim.
pub(super) fn strftime(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + u32::from(is_leap && month > 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') | Some('h') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{m:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('F') => write!(out, "{year}-{month:02}-{day:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", 0), "1970-01-01 00:00:00");
        // 2024-02-29 12:34:56 UTC, a Thursday in a leap year.
        assert_eq!(strftime("%d %b %Y, %A %j %I%p", 1_709_210_096), "29 Feb 2024, Thursday 060 12PM");
        assert_eq!(strftime("%B %e %% %q", 951_782_400), "February 29 % %q"); // 2000-02-29
    }

    #[test]
    fn generation_tags_become_no_ops() {
        let src = "a{%- generation -%}b{% endgeneration %}c{% if x %}d{% endif %}";
        assert_eq!(neutralize_generation_tags(src), "a{%- if true -%}b{% endif %}c{% if x %}d{% endif %}");
    }

    #[test]
    fn a_tag_sharing_its_percent_sign_is_left_to_the_parser() {
        // Found by the chat_template fuzz target: `{%}` used to slice `tag[2..1]` and panic.
        assert_eq!(neutralize_generation_tags("a{%}b"), "a{%}b");
        assert_eq!(neutralize_generation_tags("{%}{% generation %}x{%}"), "{%}{% generation %}x{%}");
        assert_eq!(neutralize_generation_tags("{%%}"), "{%%}");
    }
}

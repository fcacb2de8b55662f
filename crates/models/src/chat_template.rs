//! Chat templates rendered like transformers' `apply_chat_template(..., tokenize=False)`.
//!
//! transformers compiles templates with Jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` plus loop controls, and adds `raise_exception`, `strftime_now` and its
//! own `tojson` (`json.dumps(..., ensure_ascii=False)`: no HTML escaping, Python separators).
//! The context holds `messages`, `tools`, `documents`, `add_generation_prompt`, the special
//! tokens that are set (`bos_token`, `eos_token`, ...) and any extra keyword arguments. This
//! module reproduces that on minijinja, including Python's way of printing `None`/`True`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

/// The templates a tokenizer carries: the default one and named ones (`tool_use`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatTemplates {
    default: Option<String>,
    named: BTreeMap<String, String>,
}

impl ChatTemplates {
    /// `chat_template` of a tokenizer_config.json: a string, or a list of `{name, template}`.
    pub fn from_tokenizer_config(config: &serde_json::Value) -> Result<ChatTemplates, String> {
        let mut t = ChatTemplates::default();
        match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => t.default = Some(s.clone()),
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    let name = item.get("name").and_then(|n| n.as_str());
                    let template = item.get("template").and_then(|n| n.as_str());
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(
                            "chat_template list entries need string \"name\" and \"template\""
                                .into(),
                        );
                    };
                    if name == "default" {
                        t.default = Some(template.to_string());
                    } else {
                        t.named.insert(name.to_string(), template.to_string());
                    }
                }
            }
            Some(_) => return Err("chat_template must be a string or a list".into()),
        }
        Ok(t)
    }

    pub fn set_default(&mut self, template: String) {
        self.default = Some(template);
    }

    pub fn insert(&mut self, name: &str, template: String) {
        if name == "default" {
            self.default = Some(template);
        } else {
            self.named.insert(name.to_string(), template);
        }
    }

    /// The named template, or the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Option<&str> {
        match name {
            None | Some("default") => self.default.as_deref(),
            Some(n) => self.named.get(n).map(String::as_str),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.default
            .iter()
            .map(|_| "default")
            .chain(self.named.keys().map(String::as_str))
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.named.is_empty()
    }
}

/// One chat turn with plain-text content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChatTemplateError {
    /// The template's own `raise_exception(message)`.
    #[error("{0}")]
    Raised(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the tokenizer has no chat template")]
    Missing,
}

/// What transformers puts in the template context besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    /// Tool schemas (`None` renders as Python `None`, as transformers passes it).
    pub tools: Option<serde_json::Value>,
    pub documents: Option<serde_json::Value>,
    /// Extra template variables (transformers' `**kwargs`), e.g. `date_string`.
    pub extra: BTreeMap<String, serde_json::Value>,
}

const RAISED: &str = "\u{1}raise_exception\u{1}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        // Python str/dict/list methods (`.strip()`, `.items()`, `.startswith()`, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", strip_generation_tags(source))
            .map_err(|e| ChatTemplateError::Template(format_error(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages` (a JSON list of `{role, content, ...}` objects).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        opts: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let mut ctx: Vec<(String, Value)> = Vec::new();
        // Special tokens and kwargs first: explicit arguments override them, as in
        // transformers' `render(messages=..., **template_kwargs)`.
        for (k, v) in [
            ("bos_token", &opts.bos_token),
            ("eos_token", &opts.eos_token),
            ("unk_token", &opts.unk_token),
            ("pad_token", &opts.pad_token),
        ] {
            if let Some(v) = v {
                ctx.push((k.to_string(), Value::from(v.as_str())));
            }
        }
        for (k, v) in &opts.extra {
            ctx.push((k.clone(), json_to_value(v)));
        }
        ctx.push(("messages".into(), json_to_value(messages)));
        ctx.push((
            "tools".into(),
            opts.tools.as_ref().map_or(Value::from(()), json_to_value),
        ));
        ctx.push((
            "documents".into(),
            opts.documents
                .as_ref()
                .map_or(Value::from(()), json_to_value),
        ));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(opts.add_generation_prompt),
        ));
        let ctx: BTreeMap<String, Value> = ctx.into_iter().collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Template(format_error(&e)))?;
        tmpl.render(Value::from(ctx))
            .map_err(|e| match find_raised(&e) {
                Some(msg) => ChatTemplateError::Raised(msg),
                None => ChatTemplateError::Template(format_error(&e)),
            })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let json = serde_json::Value::Array(
            messages
                .iter()
                .map(|m| {
                    let mut o = serde_json::Map::new();
                    o.insert("role".into(), m.role.clone().into());
                    o.insert("content".into(), m.content.clone().into());
                    serde_json::Value::Object(o)
                })
                .collect(),
        );
        self.render_json(&json, opts)
    }
}

impl crate::tokenizer::Tokenizer {
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` with this
    /// tokenizer's default template and special tokens.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let opts = self.render_options(add_generation_prompt);
        self.compile_chat_template(None)?.render(messages, &opts)
    }

    pub fn compile_chat_template(
        &self,
        name: Option<&str>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let source = self
            .chat_templates()
            .get(name)
            .ok_or(ChatTemplateError::Missing)?;
        ChatTemplate::new(source)
    }

    /// Render options filled with this tokenizer's special tokens.
    pub fn render_options(&self, add_generation_prompt: bool) -> RenderOptions {
        let s = self.special_tokens();
        RenderOptions {
            add_generation_prompt,
            bos_token: s.bos.as_ref().map(|t| t.0.clone()),
            eos_token: s.eos.as_ref().map(|t| t.0.clone()),
            unk_token: s.unk.as_ref().map(|t| t.0.clone()),
            pad_token: s.pad.as_ref().map(|t| t.0.clone()),
            ..RenderOptions::default()
        }
    }
}

fn format_error(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn find_raised(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<Error>()
            && let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED))
        {
            return Some(msg.to_string());
        }
        cur = err.source();
    }
    None
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `{{ x }}` as Python's `str(x)`: `None`, `True`, `False`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.write_str("None").map_err(Error::from),
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// JSON values into template values, keeping object key order.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from_pairs(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v))),
        ),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut indent: Option<usize> = None;
    // Jinja2's own tojson takes the indent positionally.
    if let Some(a) = args.first()
        && let Some(i) = a.as_i64()
    {
        indent = Some(i.max(0) as usize);
    }
    if let Some(v) = kwargs.get::<Option<Value>>("indent")?
        && !v.is_none()
    {
        indent = Some(v.as_i64().map(|i| i.max(0) as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be an integer",
            )
        })?);
    }
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        Some(s) => {
            let a: Vec<Value> = s.try_iter()?.collect();
            if a.len() != 2 {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair",
                ));
            }
            (a[0].to_string(), a[1].to_string())
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let cfg = JsonCfg {
        indent,
        item_sep,
        key_sep,
        sort_keys,
        ensure_ascii,
    };
    let mut out = String::new();
    write_py_json(&mut out, &value, &cfg, 0)?;
    Ok(Value::from(out))
}

struct JsonCfg {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_py_str(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline_indent(out: &mut String, cfg: &JsonCfg, level: usize) {
    if let Some(n) = cfg.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, always with a fraction or exponent.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust: 1e-5 / 1e16; Python: 1e-05 / 1e+16.
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn write_py_json(out: &mut String, v: &Value, cfg: &JsonCfg, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f: f64 = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => write_py_str(out, v.as_str().unwrap_or_default(), cfg.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if cfg.sort_keys {
                keys.sort_by_key(|a| a.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&cfg.item_sep);
                }
                newline_indent(out, cfg, level + 1);
                // Python converts non-string keys with str(); JSON keys are always strings.
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
                    _ => k.to_string(),
                };
                write_py_str(out, &key, cfg.ensure_ascii);
                out.push_str(&cfg.key_sep);
                write_py_json(out, &v.get_item(k)?, cfg, level + 1)?;
            }
            newline_indent(out, cfg, level);
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
                    out.push_str(&cfg.item_sep);
                }
                newline_indent(out, cfg, level + 1);
                write_py_json(out, item, cfg, level + 1)?;
            }
            newline_indent(out, cfg, level);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: {} is not JSON serializable", v.kind()),
            ));
        }
    }
    Ok(())
}

/// Drops transformers' `{% generation %}` / `{% endgeneration %}` markers (they only track
/// assistant-token masks and render nothing).
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let after = &rest[start + 2..];
        let inner_start = after.trim_start_matches(['-', '+']).trim_start();
        let word_end = inner_start
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(inner_start.len());
        let word = &inner_start[..word_end];
        if (word == "generation" || word == "endgeneration")
            && let Some(close) = after.find("%}")
        {
            let body = after[..close].trim_end_matches(['-', '+']).trim();
            let body = body.trim_start_matches(['-', '+']).trim();
            if body == word {
                out.push_str(&rest[..start]);
                // Keep whitespace control: `{%-` / `-%}` become an empty comment with the same.
                let lead = if after.starts_with('-') { "-" } else { "" };
                let trail = if after[..close].ends_with('-') {
                    "-"
                } else {
                    ""
                };
                let _ = write!(out, "{{#{lead} {trail}#}}");
                rest = &after[close + 2..];
                continue;
            }
        }
        out.push_str(&rest[..start + 2]);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `strftime_now(format)`: the current UTC time through a C `strftime` subset.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
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
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats unix time `secs` (UTC) with `%d %m %Y %y %b %B %a %A %H %M %S %j %e %%`; other
/// directives are kept literally.
pub fn strftime(format: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + u32::from(is_leap && m > 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => {
                let _ = write!(out, "{d:02}");
            }
            Some('e') => {
                let _ = write!(out, "{d:2}");
            }
            Some('m') => {
                let _ = write!(out, "{m:02}");
            }
            Some('Y') => {
                let _ = write!(out, "{y}");
            }
            Some('y') => {
                let _ = write!(out, "{:02}", y.rem_euclid(100));
            }
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('H') => {
                let _ = write!(out, "{:02}", sod / 3600);
            }
            Some('M') => {
                let _ = write!(out, "{:02}", sod % 3600 / 60);
            }
            Some('S') => {
                let _ = write!(out, "{:02}", sod % 60);
            }
            Some('j') => {
                let _ = write!(out, "{yday:03}");
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, messages: &[ChatMessage], agp: bool) -> Result<String, ChatTemplateError> {
        let opts = RenderOptions {
            add_generation_prompt: agp,
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..RenderOptions::default()
        };
        ChatTemplate::new(src)?.render(messages, &opts)
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %j %%", t),
            "Friday July 26, 24 12:34:56 208 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    }

    #[test]
    fn raise_exception_message_is_exact() {
        let err = render(
            "{% if messages|length > 1 %}{{ raise_exception('Only one message, got ' + messages|length|string) }}{% endif %}",
            &[ChatMessage::user("a"), ChatMessage::user("b")],
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ChatTemplateError::Raised("Only one message, got 2".into())
        );
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "{{ tools|tojson }}|{{ tools|tojson(indent=2) }}|{{ 'a<b>&\\'c'|tojson }}|{{ none|tojson }}",
        )
        .unwrap();
        let tools = serde_json::json!([{"name": "f", "x": 1.5, "y": [1, true, null], "z": {}}]);
        let opts = RenderOptions {
            tools: Some(tools),
            ..RenderOptions::default()
        };
        let out = t.render(&[], &opts).unwrap();
        // serde_json without preserve_order sorts keys; the order here is the Map's.
        assert_eq!(
            out,
            "[{\"name\": \"f\", \"x\": 1.5, \"y\": [1, true, null], \"z\": {}}]|[\n  {\n    \"name\": \"f\",\n    \"x\": 1.5,\n    \"y\": [\n      1,\n      true,\n      null\n    ],\n    \"z\": {}\n  }\n]|\"a<b>&'c\"|null"
        );
    }

    #[test]
    fn python_printing_loop_controls_namespace_and_methods() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() }}{% if loop.last %}{% break %}{% endif %},{% endfor %}|{{ ns.n }}|{{ none }}|{{ true }}|{{ tools }}";
        let out = render(
            src,
            &[
                ChatMessage::user(" a "),
                ChatMessage::assistant("b"),
                ChatMessage::user("c"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(out, "A,C|2|None|True|None");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {% if true %}\n{{ m.role }}: {{ m.content }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nassistant:\n{% endif %}\n";
        let out = render(src, &[ChatMessage::user("hi")], true).unwrap();
        assert_eq!(out, "user: hi\nassistant:\n");
    }

    #[test]
    fn generation_tags_are_ignored() {
        let src = "{% for m in messages %}{%- if m.role == 'assistant' -%}{% generation %}{{ m.content }}{% endgeneration %}{%- else -%}[{{ m.content }}]{%- endif -%}{% endfor %}";
        let out = render(
            src,
            &[ChatMessage::user("q"), ChatMessage::assistant("a")],
            false,
        )
        .unwrap();
        assert_eq!(out, "[q]a");
    }

    #[test]
    fn named_list_form() {
        let cfg = serde_json::json!({"chat_template": [
            {"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]});
        let t = ChatTemplates::from_tokenizer_config(&cfg).unwrap();
        assert_eq!(t.get(None), Some("D"));
        assert_eq!(t.get(Some("tool_use")), Some("T"));
        assert_eq!(t.names().collect::<Vec<_>>(), ["default", "tool_use"]);
        assert!(
            ChatTemplates::from_tokenizer_config(&serde_json::json!({"chat_template": 3})).is_err()
        );
    }
}

//! Values every section reads the same way: `${ENV}` references, secrets, addresses,
//! URLs and names.

use toml::Spanned;

use super::error::Collector;
use super::Env;
use crate::connstr::ConnString;

pub(super) fn interpolate(value: &str, env: &dyn Env) -> Result<String, Vec<String>> {
    let mut out = String::new();
    let mut missing = vec![];
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env.var(name) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(name.to_string()),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// True when the URL as written (before interpolation) carries a literal password.
pub(super) fn has_inline_password(raw: &str) -> bool {
    match url::Url::parse(raw.trim()) {
        Ok(u) => match u.password() {
            Some(p) => {
                let decoded = p.replace("%7B", "{").replace("%7D", "}");
                !decoded.contains("${") && !p.is_empty()
            }
            None => false,
        },
        Err(_) => false,
    }
}

pub(super) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 40
}

pub(super) fn dns_name(c: &mut Collector<'_>, field: &str, v: &Spanned<String>) -> Option<String> {
    let name = v
        .get_ref()
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        });
    if ok {
        Some(name)
    } else {
        c.push(
            v.span(),
            field,
            format!(
                "\"{}\" is not a DNS name; write it like \"www.example.com\"",
                v.get_ref()
            ),
        );
        None
    }
}

pub(super) fn socket_addr(
    c: &mut Collector<'_>,
    field: &str,
    v: &Spanned<String>,
    env: &dyn Env,
) -> Option<std::net::SocketAddr> {
    let text = match interpolate(v.get_ref(), env) {
        Ok(t) => t,
        Err(missing) => {
            for name in missing {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            return None;
        }
    };
    match text.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.push(
                v.span(),
                field,
                format!("\"{text}\" is not an address; write it as \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

pub(super) fn plain(v: &Option<Spanned<String>>) -> Option<String> {
    v.as_ref().map(|s| s.get_ref().clone())
}

/// An http(s) URL without a path, "${VAR}" allowed (not a secret).
pub(super) fn url_setting(
    c: &mut Collector<'_>,
    field: &str,
    v: &Option<Spanned<String>>,
    env: &dyn Env,
) -> Option<String> {
    let v = v.as_ref()?;
    let text = match interpolate(v.get_ref(), env) {
        Ok(t) => t,
        Err(missing) => {
            for name in missing {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            return None;
        }
    };
    match url::Url::parse(&text) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            if u.password().is_some() {
                c.push(
                    v.span(),
                    field,
                    "holds a password; give credentials in their own settings, by reference",
                );
                return None;
            }
            Some(text.trim_end_matches('/').to_string())
        }
        _ => {
            c.push(
                v.span(),
                field,
                format!("\"{text}\" is not an http(s) URL; write it like \"https://host:443\""),
            );
            None
        }
    }
}

pub(super) fn url(
    c: &mut Collector<'_>,
    field: &str,
    value: &Spanned<String>,
    env: &dyn Env,
) -> Option<ConnString> {
    let span = value.span();
    let raw = value.get_ref();
    if has_inline_password(raw) {
        c.push(
            span,
            field,
            "holds a password inline; keep secrets out of the plan: put the URL in an \
             environment variable and write url = \"${SOURCE_DATABASE_URL}\"",
        );
        return None;
    }
    let text = match interpolate(raw, env) {
        Ok(t) => t,
        Err(missing) => {
            for name in missing {
                c.push(
                    span.clone(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            return None;
        }
    };
    if text.trim().is_empty() {
        c.push(span, field, "is empty; set it to a postgres:// URL");
        return None;
    }
    match ConnString::parse(&text) {
        Ok(cs) => Some(cs),
        Err(e) => {
            c.push(span, field, e.to_string());
            None
        }
    }
}

/// A secret written by reference; an inline value is refused.
pub(super) fn secret(
    c: &mut Collector<'_>,
    field: &str,
    value: &Spanned<String>,
    env: &dyn Env,
) -> Option<crate::secret::Secret> {
    let raw = value.get_ref();
    if !raw.contains("${") {
        c.push(
            value.span(),
            field,
            "is written inline; keep secrets out of the plan: put it in an environment variable and write \"${NAME}\"",
        );
        return None;
    }
    match interpolate(raw, env) {
        Ok(v) if v.is_empty() => {
            c.push(
                value.span(),
                field,
                "is empty; set the environment variable it names",
            );
            None
        }
        Ok(v) => Some(crate::secret::Secret::new(v)),
        Err(missing) => {
            for name in missing {
                c.push(
                    value.span(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            None
        }
    }
}

/// A default value, at no place in the file.
pub(super) fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

//! A small HCL writer whose output is already in `terraform fmt` form.
//!
//! Generated Terraform is reviewed and committed by people, and CI commonly runs
//! `terraform fmt -check`; output that fails it is noise in every review. Rather than
//! template strings, the Terraform is built as a tree ([`Block`], [`Item`], [`Expr`]) and
//! printed with the canonical layout: two spaces per nesting level, one construct opening per
//! line, and the `=` of consecutive single-line attributes aligned, which is the rule
//! `terraform fmt` applies (a line whose value opens a bracket, a blank line, a comment or a
//! nested block ends the aligned run). The tests run `terraform fmt -check` on the output.

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal string; `${` and `%{` are escaped so nothing interpolates.
    Str(String),
    /// A string template: quotes and backslashes escaped, `${...}` kept.
    Tpl(String),
    /// A reference, number or bool written as is: `var.region`, `8080`, `true`.
    Raw(String),
    List(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    Call(String, Vec<Expr>),
}

/// A body item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Attr(String, Expr),
    Block(Block),
    Comment(String),
    Blank,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub kind: String,
    pub labels: Vec<String>,
    pub body: Vec<Item>,
}

pub fn s(v: impl Into<String>) -> Expr {
    Expr::Str(v.into())
}

pub fn tpl(v: impl Into<String>) -> Expr {
    Expr::Tpl(v.into())
}

pub fn raw(v: impl Into<String>) -> Expr {
    Expr::Raw(v.into())
}

pub fn list(items: Vec<Expr>) -> Expr {
    Expr::List(items)
}

pub fn obj(items: Vec<(&str, Expr)>) -> Expr {
    Expr::Object(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Call(name.to_string(), args)
}

pub fn attr(name: &str, e: Expr) -> Item {
    Item::Attr(name.to_string(), e)
}

pub fn block(kind: &str, labels: &[&str], body: Vec<Item>) -> Block {
    Block {
        kind: kind.to_string(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        body,
    }
}

pub fn nested(kind: &str, body: Vec<Item>) -> Item {
    Item::Block(block(kind, &[], body))
}

fn escape(v: &str, template: bool) -> String {
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if !template && chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn single_line(e: &Expr) -> bool {
    match e {
        Expr::Str(_) | Expr::Tpl(_) | Expr::Raw(_) => true,
        Expr::List(items) => items
            .iter()
            .all(|i| matches!(i, Expr::Str(_) | Expr::Tpl(_) | Expr::Raw(_))),
        Expr::Object(items) => items.is_empty(),
        Expr::Call(_, args) => args.iter().all(single_line),
    }
}

/// Renders an expression whose first line continues the current line at `indent` spaces.
fn expr(e: &Expr, indent: usize) -> String {
    let pad = " ".repeat(indent + 2);
    let close = " ".repeat(indent);
    match e {
        Expr::Str(v) => format!("\"{}\"", escape(v, false)),
        Expr::Tpl(v) => format!("\"{}\"", escape(v, true)),
        Expr::Raw(v) => v.clone(),
        Expr::List(items) if single_line(e) => {
            let inner: Vec<String> = items.iter().map(|i| expr(i, indent)).collect();
            format!("[{}]", inner.join(", "))
        }
        Expr::List(items) => {
            let mut out = String::from("[\n");
            for i in items {
                out.push_str(&format!("{pad}{},\n", expr(i, indent + 2)));
            }
            out.push_str(&format!("{close}]"));
            out
        }
        Expr::Object(items) if items.is_empty() => "{}".to_string(),
        Expr::Object(items) => {
            let mut out = String::from("{\n");
            for (k, v) in items {
                out.push_str(&format!("{pad}{k} = {}\n", expr(v, indent + 2)));
            }
            out.push_str(&format!("{close}}}"));
            out
        }
        Expr::Call(name, args) => {
            let inner: Vec<String> = args.iter().map(|a| expr(a, indent)).collect();
            format!("{name}({})", inner.join(", "))
        }
    }
}

fn body(items: &[Item], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Item::Attr(k, v) => out.push_str(&format!("{pad}{k} = {}\n", expr(v, indent))),
            Item::Block(b) => block_text(b, indent, out),
            Item::Comment(c) => out.push_str(&format!("{pad}# {c}\n")),
            Item::Blank => out.push('\n'),
        }
    }
}

fn block_text(b: &Block, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let labels: String = b
        .labels
        .iter()
        .map(|l| format!(" \"{}\"", escape(l, false)))
        .collect();
    if b.body.is_empty() {
        out.push_str(&format!("{pad}{}{labels} {{}}\n", b.kind));
        return;
    }
    out.push_str(&format!("{pad}{}{labels} {{\n", b.kind));
    body(&b.body, indent + 2, out);
    out.push_str(&format!("{pad}}}\n"));
}

/// A file of top-level blocks separated by blank lines, aligned as `terraform fmt` aligns.
pub fn file(header: &[&str], blocks: &[Block]) -> String {
    let mut out = String::new();
    for h in header {
        out.push_str(&format!("# {h}\n"));
    }
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 || !header.is_empty() {
            out.push('\n');
        }
        block_text(b, 0, &mut out);
    }
    align(&out)
}

/// Where a line's top-level `=` is, if the line is a whole single-line attribute: an `=`
/// outside strings (not part of `==`, `<=`, `>=`, `!=`, `=>`) after some text, with the
/// brackets from it to the end of the line balanced.
fn assign_at(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    let mut eq = None;
    let mut net = 0i32;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'#' => break,
                b'=' if eq.is_none() => {
                    let prev = if i > 0 { bytes[i - 1] } else { b' ' };
                    let next = bytes.get(i + 1).copied().unwrap_or(b' ');
                    if !b"=!<>".contains(&prev) && next != b'=' && next != b'>' {
                        eq = Some(i);
                    }
                }
                b'{' | b'[' | b'(' if eq.is_some() => net += 1,
                b'}' | b']' | b')' if eq.is_some() => net -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    let at = eq?;
    (net == 0 && !line[..at].trim().is_empty()).then_some(at)
}

/// Aligns the `=` of each run of consecutive single-line attributes.
pub fn align(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut i = 0;
    while i < lines.len() {
        if assign_at(lines[i]).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        while i < lines.len() && assign_at(lines[i]).is_some() {
            i += 1;
        }
        let width = lines[start..i]
            .iter()
            .map(|l| l[..assign_at(l).unwrap_or(0)].trim_end().len())
            .max()
            .unwrap_or(0);
        for (j, l) in lines.iter().enumerate().take(i).skip(start) {
            let at = assign_at(l).unwrap_or(0);
            let lead = l[..at].trim_end();
            let rest = l[at + 1..].trim_start();
            out[j] = format!("{lead:<width$} = {rest}");
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_runs_the_way_terraform_fmt_does() {
        let b = block(
            "resource",
            &["aws_lb_target_group", "web"],
            vec![
                attr("name", s("shop-web")),
                attr("port", raw("8080")),
                attr("target_type", s("ip")),
                attr(
                    "tags",
                    obj(vec![("Name", s("x")), ("Application", s("shop"))]),
                ),
                attr("deregistration_delay", raw("30")),
                Item::Blank,
                nested(
                    "health_check",
                    vec![attr("path", s("/")), attr("matcher", s("200-399"))],
                ),
            ],
        );
        assert_eq!(
            file(&[], &[b]),
            "resource \"aws_lb_target_group\" \"web\" {\n  name        = \"shop-web\"\n  port        = 8080\n  target_type = \"ip\"\n  tags = {\n    Name        = \"x\"\n    Application = \"shop\"\n  }\n  deregistration_delay = 30\n\n  health_check {\n    path    = \"/\"\n    matcher = \"200-399\"\n  }\n}\n"
        );
    }

    #[test]
    fn strings_escape_and_calls_nest() {
        assert_eq!(expr(&s("a \"b\" ${c} \\"), 0), r#""a \"b\" $${c} \\""#);
        assert_eq!(expr(&tpl("${var.arn}:X::"), 0), r#""${var.arn}:X::""#);
        let e = call(
            "jsonencode",
            vec![list(vec![obj(vec![("name", s("web")), ("cpu", raw("0"))])])],
        );
        assert_eq!(
            expr(&e, 2),
            "jsonencode([\n    {\n      name = \"web\"\n      cpu = 0\n    },\n  ])"
        );
        assert_eq!(assign_at("  a == b"), None);
        assert_eq!(assign_at("  x = jsonencode(["), None);
        assert_eq!(assign_at("  x = \"a=b\""), Some(4));
    }
}

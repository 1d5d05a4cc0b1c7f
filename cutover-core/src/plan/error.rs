//! What is wrong with a plan file, and where.

/// One thing wrong with the plan file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Everything wrong with the plan file.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan file {path}: {reason}; run `cutover init` to write one")]
    Read { path: String, reason: String },
    #[error("{}", render(.path, .problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

pub(super) fn render(path: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if p.line > 0 {
            out.push_str(&format!("{path}:{}:{}: ", p.line, p.column));
        } else {
            out.push_str(&format!("{path}: "));
        }
        if !p.field.is_empty() {
            out.push_str(&format!("{}: ", p.field));
        }
        out.push_str(&p.message);
    }
    out
}

impl PlanError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            PlanError::Invalid { problems, .. } => problems,
            PlanError::Read { .. } => &[],
        }
    }
}

/// Line and column (1-based) of a byte offset.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

pub(super) struct Collector<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Collector<'_> {
    pub(super) fn push(
        &mut self,
        span: std::ops::Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) {
        let (line, column) = if span.start == 0 && span.end == 0 {
            (0, 0)
        } else {
            position(self.text, span.start)
        };
        self.problems.push(Problem {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

//! Prompt templates: `Summarize: {text}` with `{column}` placeholders and `{{` / `}}` escapes.
//! A template is parsed once; rendering is a walk over its pieces, so a million rows cost a
//! million small string builds and nothing else. Values are inserted verbatim: a template is
//! never evaluated, so input text cannot inject anything.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A parsed prompt template.
///
/// ```
/// use bulkprompt::job::Template;
/// use std::borrow::Cow;
///
/// let t = Template::parse("Classify ({stars}★): {review} {{json}}").unwrap();
/// let row = |f: &str| match f {
///     "stars" => Some(Cow::Borrowed("5")),
///     "review" => Some(Cow::Borrowed("Great, really")),
///     _ => None,
/// };
/// assert_eq!(t.render(row).unwrap(), "Classify (5★): Great, really {json}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The text it was parsed from (kept in the output's meta for `status`).
    text: String,
}

/// Why a template text is not a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` opened at this byte offset and never closed.
    #[error("unclosed '{{' at character {0} (write '{{{{' for a literal brace)")]
    Unclosed(usize),
    /// `}` with no `{` before it.
    #[error("unmatched '}}' at character {0} (write '}}}}' for a literal brace)")]
    Unmatched(usize),
    /// `{}` or `{ }`.
    #[error("empty placeholder at character {0}")]
    Empty(usize),
}

impl Template {
    /// The text the template was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(at)),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, ch)) => name.push(ch),
                            None => return Err(TemplateError::Unclosed(at)),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(TemplateError::Empty(at));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(name.to_string()));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template {
            pieces,
            text: text.to_string(),
        })
    }

    /// The placeholder names, each once.
    pub fn fields(&self) -> BTreeSet<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field(f) => Some(f.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// Renders with `lookup`; the first field it cannot resolve is returned as the error.
    pub fn render<'a, F>(&'a self, mut lookup: F) -> Result<String, &'a str>
    where
        F: FnMut(&str) -> Option<std::borrow::Cow<'a, str>>,
    {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => match lookup(f) {
                    Some(v) => out.push_str(&v),
                    None => return Err(f),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn render(t: &str, vars: &[(&str, &str)]) -> Result<String, String> {
        let t = Template::parse(t).map_err(|e| e.to_string())?;
        let r = t.render(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| Cow::Owned(v.to_string()))
        });
        r.map_err(|f| format!("missing {f}"))
    }

    #[test]
    fn fills_fields_and_keeps_text() {
        assert_eq!(
            render(
                "Classify: {review} ({ stars })",
                &[("review", "Great"), ("stars", "5")]
            ),
            Ok("Classify: Great (5)".into())
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            render("{{\"a\": {x}}}", &[("x", "1")]),
            Ok("{\"a\": 1}".into())
        );
    }

    #[test]
    fn values_are_not_re_expanded() {
        assert_eq!(render("{a}", &[("a", "{b}")]), Ok("{b}".into()));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Template::parse("x {a"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("x } "), Err(TemplateError::Unmatched(2)));
        assert_eq!(Template::parse("{}"), Err(TemplateError::Empty(0)));
        assert_eq!(render("{a} {b}", &[("a", "1")]), Err("missing b".into()));
    }

    #[test]
    fn lists_fields_once() {
        let t = Template::parse("{a}{b}{a}").unwrap();
        assert_eq!(t.fields().into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    }
}

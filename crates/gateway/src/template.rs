//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use percent_encoding::percent_decode_str;

/// Why a template is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

/// One piece of a template, flattened: a variable's own segments follow its
/// start marker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A fixed segment.
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path (only last).
    Rest,
}

/// A variable and the tokens it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: Vec<String>,
    /// Index of its first token, and how many it covers.
    start: usize,
    len: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    tokens: Vec<Token>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// A variable's value taken from a matched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The request field it sets, e.g. `["account", "id"]`.
    pub field_path: Vec<String>,
    /// The percent-decoded value.
    pub value: String,
}

impl PathTemplate {
    /// Parses a template such as `/v1/accounts/{account.id}` or
    /// `/v1/orders/{order_id}:cancel`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let rest = template.strip_prefix('/').ok_or_else(|| fail("must start with /"))?;
        // The verb follows the last ':' outside braces.
        let (path, verb) = split_verb(rest);
        if verb.is_some_and(|v| v.is_empty() || v.contains('/')) {
            return Err(fail("the verb must be one non-empty segment"));
        }
        let mut parsed = PathTemplate {
            source: template.to_owned(),
            tokens: Vec::new(),
            variables: Vec::new(),
            verb: verb.map(str::to_owned),
        };
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let end = inner.find('}').ok_or_else(|| fail("unclosed {"))?;
                let (field, pattern) = match inner[..end].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..end], "*"),
                };
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|part| !is_ident(part)) {
                    return Err(fail("a variable names a field path such as a.b"));
                }
                let start = parsed.tokens.len();
                for segment in pattern.split('/') {
                    parsed
                        .tokens
                        .push(token(segment).ok_or_else(|| fail("a variable's pattern holds no variable"))?);
                }
                parsed.variables.push(Variable {
                    field_path,
                    start,
                    len: parsed.tokens.len() - start,
                });
                chars = &inner[end + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let segment = &chars[..end];
                parsed
                    .tokens
                    .push(token(segment).ok_or_else(|| fail("a segment is empty or malformed"))?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some("") => return Err(fail("a trailing / is not allowed")),
                Some(next) => chars = next,
                None if chars.is_empty() => {}
                None => return Err(fail("segments are separated by /")),
            }
        }
        if parsed.tokens.is_empty() {
            return Err(fail("no segments"));
        }
        if parsed.tokens[..parsed.tokens.len() - 1].contains(&Token::Rest) {
            return Err(fail("** may only end the path"));
        }
        Ok(parsed)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The template as an OpenAPI path: each variable becomes `{field_path}`
    /// (dots as underscores, since common tools read `{a.b}` as attribute
    /// access; its pattern, if any, dropped).
    pub fn openapi_path(&self) -> String {
        let mut path = String::with_capacity(self.source.len());
        let mut rest = self.source.as_str();
        while let Some(open) = rest.find('{') {
            path.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let variable = &rest[open + 1..open + close];
            let name = variable.split_once('=').map_or(variable, |(name, _)| name);
            path.push('{');
            path.push_str(&name.replace('.', "_"));
            path.push('}');
            rest = &rest[open + close + 1..];
        }
        path.push_str(rest);
        path
    }

    /// A concrete path this template matches (each variable and wildcard one
    /// segment `x`), for telling whether two templates overlap.
    pub fn sample_path(&self) -> String {
        let mut path = String::new();
        for token in &self.tokens {
            path.push('/');
            path.push_str(match token {
                Token::Literal(literal) => literal,
                Token::One | Token::Rest => "x",
            });
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// The field paths its variables bind.
    pub fn field_paths(&self) -> impl Iterator<Item = &[String]> {
        self.variables.iter().map(|v| v.field_path.as_slice())
    }

    /// Whether the template ends in a custom verb (`:cancel`).
    pub fn has_verb(&self) -> bool {
        self.verb.is_some()
    }

    /// Matches a request path (as sent: percent-encoded, without the query).
    /// Returns the variables' values, or None when the path does not match.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let mut spans = Vec::with_capacity(self.tokens.len());
        let mut at = 0;
        for token in &self.tokens {
            match token {
                Token::Literal(literal) => {
                    if segments.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Token::One => {
                    let segment = segments.get(at)?;
                    if segment.is_empty() {
                        return None;
                    }
                    spans.push((at, at + 1));
                    at += 1;
                }
                Token::Rest => {
                    spans.push((at, segments.len()));
                    at = segments.len();
                }
            }
        }
        if at != segments.len() {
            return None;
        }
        let bindings = self
            .variables
            .iter()
            .map(|variable| {
                let first = spans[variable.start].0;
                let last = spans[variable.start + variable.len - 1].1;
                let raw = segments[first..last].join("/");
                Some(Binding {
                    field_path: variable.field_path.clone(),
                    value: percent_decode_str(&raw).decode_utf8().ok()?.into_owned(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(bindings)
    }
}

/// Splits `path` at the verb's ':' (the last one outside braces).
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let mut depth = 0;
    let mut colon = None;
    for (i, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => colon = Some(i),
            _ => {}
        }
    }
    match colon {
        Some(i) if !path[i + 1..].contains('/') => (&path[..i], Some(&path[i + 1..])),
        _ => (path, None),
    }
}

fn token(segment: &str) -> Option<Token> {
    match segment {
        "*" => Some(Token::One),
        "**" => Some(Token::Rest),
        "" => None,
        literal if literal.contains(['{', '}', '*', '=']) => None,
        literal => Some(Token::Literal(literal.to_owned())),
    }
}

fn is_ident(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_paths_drop_variable_patterns() {
        let template = PathTemplate::parse("/v1/{name=shelves/*}/books/{book.id}:read").expect("parses");
        assert_eq!(template.openapi_path(), "/v1/{name}/books/{book_id}:read");
    }

    #[test]
    fn a_template_matches_its_own_sample_path() {
        for source in [
            "/v1/{name=shelves/*}/books/{book.id}:read",
            "/v1/files/**",
            "/v1/auth:login",
        ] {
            let template = PathTemplate::parse(source).expect("parses");
            assert!(template.matches(&template.sample_path()).is_some(), "{source}");
        }
    }

    fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let template = PathTemplate::parse(template).expect("a valid template");
        template.matches(path).map(|bindings| {
            bindings
                .into_iter()
                .map(|b| (b.field_path.join("."), b.value))
                .collect()
        })
    }

    #[test]
    fn literals_match_exactly() {
        assert_eq!(bind("/v1/accounts", "/v1/accounts"), Some(vec![]));
        assert_eq!(bind("/v1/accounts", "/v1/accounts/x"), None);
        assert_eq!(bind("/v1/accounts", "/v1/account"), None);
    }

    #[test]
    fn variables_bind_one_segment_by_default() {
        assert_eq!(
            bind("/v1/accounts/{account_id}/balance", "/v1/accounts/me/balance"),
            Some(vec![("account_id".into(), "me".into())])
        );
        assert_eq!(bind("/v1/accounts/{account_id}", "/v1/accounts/a/b"), None);
        assert_eq!(bind("/v1/accounts/{account_id}", "/v1/accounts/"), None);
    }

    #[test]
    fn nested_field_paths_and_percent_decoding() {
        assert_eq!(
            bind("/v1/accounts/{account.id}", "/v1/accounts/a%20b"),
            Some(vec![("account.id".into(), "a b".into())])
        );
    }

    #[test]
    fn custom_verbs_after_literals_and_variables() {
        assert_eq!(bind("/v1/auth:login", "/v1/auth:login"), Some(vec![]));
        assert_eq!(bind("/v1/auth:login", "/v1/auth:register"), None);
        assert_eq!(bind("/v1/auth:login", "/v1/auth"), None);
        assert_eq!(
            bind("/v1/orders/{order_id}:cancel", "/v1/orders/42:cancel"),
            Some(vec![("order_id".into(), "42".into())])
        );
        assert_eq!(bind("/v1/orders/{order_id}:cancel", "/v1/orders/42"), None);
    }

    #[test]
    fn variables_with_patterns_and_deep_wildcards() {
        assert_eq!(
            bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec![("name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/cds/2"), None);
        assert_eq!(
            bind("/v1/files/{path=**}", "/v1/files/a/b/c"),
            Some(vec![("path".into(), "a/b/c".into())])
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{x",
            "/v1/{x.}",
            "/v1//x",
            "/v1/x/",
            "/v1/**/x",
            "/v1/x:",
            "/",
            "/v1/{a={b}}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
